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

/// The collector's operator API ([`crate::operator`]): an API token as
/// `Authorization: Bearer`; reads need any role, changes the operator role.
pub mod operator {
    /// `GET`: a [`BundleList`](crate::operator::BundleList). `POST` a
    /// signed bundle file (`application/octet-stream`): `201`
    /// [`BundleInfo`](crate::operator::BundleInfo) when a key the fleet
    /// pins signed it.
    pub const BUNDLES: &str = "/v1/bundles";
    /// `GET`: one bundle's [`BundleInfo`](crate::operator::BundleInfo);
    /// with `Accept: application/octet-stream`, the file.
    pub const BUNDLE: &str = "/v1/bundles/{name}/{version}";
    /// `GET`: a [`GroupList`](crate::operator::GroupList).
    pub const GROUPS: &str = "/v1/groups";
    /// `GET` a [`Group`](crate::operator::Group); `PUT`
    /// [`GroupDevices`](crate::operator::GroupDevices); `DELETE`.
    pub const GROUP: &str = "/v1/groups/{name}";
    /// `GET`: a [`RolloutList`](crate::operator::RolloutList); `POST` a
    /// [`RolloutRequest`](crate::operator::RolloutRequest): `201`
    /// [`Rollout`](crate::operator::Rollout).
    pub const ROLLOUTS: &str = "/v1/rollouts";
    /// `GET`: a [`Rollout`](crate::operator::Rollout).
    pub const ROLLOUT: &str = "/v1/rollouts/{id}";
    /// `POST` (empty body): pause, resume or abort the rollout
    /// ([`ROLLOUT_ACTIONS`](crate::operator::ROLLOUT_ACTIONS)).
    pub const ROLLOUT_ACTION: &str = "/v1/rollouts/{id}/{action}";
    /// `GET ?after=ID&limit=N`: an [`AuditPage`](crate::operator::AuditPage).
    pub const AUDIT: &str = "/v1/audit";

    /// [`BUNDLE`] of `name` and `version`.
    pub fn bundle(name: &str, version: u64) -> String {
        format!("/v1/bundles/{name}/{version}")
    }

    /// [`GROUP`] of `name`.
    pub fn group(name: &str) -> String {
        GROUP.replace("{name}", name)
    }

    /// [`ROLLOUT`] of `id`.
    pub fn rollout(id: i64) -> String {
        format!("/v1/rollouts/{id}")
    }

    /// [`ROLLOUT_ACTION`] of `id`.
    pub fn rollout_action(id: i64, action: &str) -> String {
        format!("/v1/rollouts/{id}/{action}")
    }
}

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
    /// `GET ?after=POS&limit=N`: results kept on the device, in completion
    /// order ([`LocalResults`](crate::local::LocalResults)).
    pub const RESULTS: &str = "/v1/results";
    /// `POST` an input for pipeline `{pipeline}`: `202` with its id once it
    /// is durably accepted. [`ingest`] fills the pipeline in.
    pub const INGEST: &str = "/v1/ingest/{pipeline}";

    /// [`INGEST`] of `pipeline`.
    pub fn ingest(pipeline: &str) -> String {
        INGEST.replace("{pipeline}", pipeline)
    }

    /// `POST` an input for pipeline `{pipeline}` and wait for its result:
    /// `200` with the result record once it is committed (still synced
    /// upstream like any other), `504` with the input's id past
    /// `ingest.infer_timeout_ms`. [`infer`] fills the pipeline in.
    pub const INFER: &str = "/v1/infer/{pipeline}";

    /// [`INFER`] of `pipeline`.
    pub fn infer(pipeline: &str) -> String {
        INFER.replace("{pipeline}", pipeline)
    }
}
