//! URL paths of the collector's endpoints.

/// `POST`: an [`UploadBatch`](crate::UploadBatch).
pub const BATCHES: &str = "/v1/batches";
/// `GET`: `ok` when the service runs (no authentication).
pub const HEALTH: &str = "/v1/health";

/// `GET`: a [`DeviceCount`](crate::DeviceCount). `{id}`: the device (the
/// collector's route; [`device_count`] fills it in).
pub const DEVICE_COUNT: &str = "/v1/devices/{id}/count";

/// [`DEVICE_COUNT`] of `device`.
pub fn device_count(device: &str) -> String {
    DEVICE_COUNT.replace("{id}", device)
}

/// `GET ?after=SEQ&after_id=ID&limit=N`: a
/// [`DeviceResults`](crate::DeviceResults), a page of the device's
/// results in `(seq, id)` order; its `next` is the
/// [`ResultsCursor`](crate::ResultsCursor) of the following page.
pub const DEVICE_RESULTS: &str = "/v1/devices/{id}/results";

/// [`DEVICE_RESULTS`] of `device`.
pub fn device_results(device: &str) -> String {
    DEVICE_RESULTS.replace("{id}", device)
}

/// `GET` (the device's token): the signed bundle a staged rollout offers
/// the device now (`204` when none), its headers naming the bundle.
pub const DEVICE_BUNDLE: &str = "/v1/devices/{id}/bundle";

/// [`DEVICE_BUNDLE`] of `device`.
pub fn device_bundle(device: &str) -> String {
    DEVICE_BUNDLE.replace("{id}", device)
}

/// `GET` (operator token): a [`FleetView`](crate::FleetView).
pub const FLEET: &str = "/v1/fleet";

/// `GET ?since_ms=T` (operator token): a [`FleetDevice`](crate::FleetDevice).
pub const FLEET_DEVICE: &str = "/v1/fleet/devices/{id}";

/// [`FLEET_DEVICE`] of `device`.
pub fn fleet_device(device: &str) -> String {
    FLEET_DEVICE.replace("{id}", device)
}

/// `GET`: Prometheus metrics (collector: operator token; agent: its
/// ingest token, if any).
pub const METRICS: &str = "/metrics";

/// URL paths of a device agent's own HTTP endpoints (local ingest and
/// admin), for local clients and tests.
pub mod agent {
    /// `GET`: `ok` while the process runs (liveness).
    pub const HEALTHZ: &str = "/healthz";
    /// `GET`: `200` when every pipeline can take inputs, else `503` naming
    /// what is not ready (readiness).
    pub const READYZ: &str = "/readyz";
    /// `GET`: the device's outbox and pipelines, as JSON.
    pub const STATUS: &str = "/v1/status";
    /// `POST` an input for pipeline `{pipeline}`: `202` with its id once it
    /// is durably accepted. [`ingest`] fills the pipeline in.
    pub const INGEST: &str = "/v1/ingest/{pipeline}";

    /// [`INGEST`] of `pipeline`.
    pub fn ingest(pipeline: &str) -> String {
        INGEST.replace("{pipeline}", pipeline)
    }
}
