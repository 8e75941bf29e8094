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
/// User property of a bundle request: the byte of the bundle to start from
/// (decimal). Of a chunk answer: where its payload starts.
pub const OFFSET: &str = "offset";
/// User property of a bundle request: the SHA-256s of bundles the device
/// already handled, as HTTP's `If-None-Match` (`"hex", "hex"`).
pub const IF_NONE_MATCH: &str = "if-none-match";
/// User property of a chunk answer: the SHA-256 (hex) of the whole bundle.
pub const SHA256: &str = "sha256";
/// User property of a chunk answer: the whole bundle's size in bytes.
pub const TOTAL: &str = "total";
/// User property of a chunk answer: `NAME/VERSION` of the bundle.
pub const BUNDLE: &str = "bundle";
/// User property of a chunk answer: the least probation the rollout asks
/// of the device ([`crate::operator::ProbationMinimum`], as text).
pub const PROBATION: &str = "probation";
/// Most bytes in one chunk answer's payload: a bundle of N bytes takes
/// N / this requests, each answered by one message.
pub const BUNDLE_CHUNK_BYTES: usize = 256 << 10;

/// The shared subscription group collectors join by default.
pub const DEFAULT_GROUP: &str = "sluice-collectors";

/// Where `device` publishes its batches.
pub fn batches(prefix: &str, device: &str) -> String {
    format!("{prefix}/v1/devices/{device}/batches")
}

/// Where the answers to `device`'s batches and bundle requests go.
pub fn acks(prefix: &str, device: &str) -> String {
    format!("{prefix}/v1/devices/{device}/acks")
}

/// Where `device` asks for a chunk of the bundle a rollout offers it: an
/// empty message with [`OFFSET`] and [`IF_NONE_MATCH`], answered on
/// [`acks`] with [`STATUS`] `200` and the chunk ([`SHA256`], [`TOTAL`],
/// [`BUNDLE`], [`OFFSET`]), `204` (nothing offered) or `304` (offered, but
/// in its `if-none-match`).
pub fn bundle_requests(prefix: &str, device: &str) -> String {
    format!("{prefix}/v1/devices/{device}/bundle")
}

/// The shared subscription collectors of `group` take bundle requests from.
pub fn shared_bundle_requests(prefix: &str, group: &str) -> String {
    format!("$share/{group}/{prefix}/v1/devices/+/bundle")
}

/// The device a bundle requests topic names, if it is one.
pub fn device_of_bundle_requests<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    device_of(prefix, topic, "/bundle")
}

/// The shared subscription collectors of `group` take batches from:
/// the broker gives each batch to one of them.
pub fn shared_batches(prefix: &str, group: &str) -> String {
    format!("$share/{group}/{prefix}/v1/devices/+/batches")
}

/// The device a batches topic names, if it is one.
pub fn device_of_batches<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    device_of(prefix, topic, "/batches")
}

fn device_of<'a>(prefix: &str, topic: &'a str, suffix: &str) -> Option<&'a str> {
    topic
        .strip_prefix(prefix)?
        .strip_prefix("/v1/devices/")?
        .strip_suffix(suffix)
        .filter(|d| crate::check_name(d).is_ok())
}
