//! The same protocol over MQTT 5, through a broker: a batch is a QoS 1
//! PUBLISH of the [`UploadBatch`](crate::UploadBatch) (zstd-compressed
//! JSON, as over HTTP) to [`mqtt::batches`], with the MQTT 5
//! request/response properties: the response topic [`mqtt::acks`] and the
//! batch key as correlation data; the device's bearer token and the body's
//! encoding go in user properties. A collector (one of several, on the
//! shared subscription [`mqtt::shared_batches`]) answers on the response
//! topic once the batch is committed: user property [`mqtt::STATUS`] (the
//! HTTP status the same batch would get), the batch key as correlation
//! data, and as payload a [`BatchAck`](crate::BatchAck) (`200`) or an
//! [`ErrorBody`](crate::ErrorBody). A collector that has no room for a
//! batch answers `503` at once with [`mqtt::RETRY_AFTER_MS`] rather than
//! keep it waiting.

/// The default first topic level.
pub const DEFAULT_PREFIX: &str = "sluice";
/// User property: `Bearer <device token>`.
pub const AUTHORIZATION: &str = "authorization";
/// User property: `zstd` or absent (the payload as it is).
pub const CONTENT_ENCODING: &str = "content-encoding";
/// User property of an answer: its HTTP status code, e.g. `200`.
pub const STATUS: &str = "status";
/// User property of a `503` answer: how long the device should wait before
/// sending the batch again, in milliseconds (HTTP's `Retry-After`). The
/// collector is busy and did not keep the batch.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
/// The shared subscription group collectors join by default.
pub const DEFAULT_GROUP: &str = "sluice-collectors";

/// Where `device` publishes its batches.
pub fn batches(prefix: &str, device: &str) -> String {
    format!("{prefix}/v1/devices/{device}/batches")
}

/// Where the answers to `device`'s batches go.
pub fn acks(prefix: &str, device: &str) -> String {
    format!("{prefix}/v1/devices/{device}/acks")
}

/// The shared subscription collectors of `group` take batches from:
/// the broker gives each batch to one of them.
pub fn shared_batches(prefix: &str, group: &str) -> String {
    format!("$share/{group}/{prefix}/v1/devices/+/batches")
}

/// The device a batches topic names, if it is one.
pub fn device_of_batches<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    topic
        .strip_prefix(prefix)?
        .strip_prefix("/v1/devices/")?
        .strip_suffix("/batches")
        .filter(|d| crate::check_name(d).is_ok())
}
