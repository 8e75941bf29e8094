//! What the collector's handlers share, whatever carried the request
//! (HTTP routes, operator pages, the MQTT consumer): the state and the
//! shapes of an error answer and of a page. Below `http`, `operator` and
//! `mqtt`, so that they need not import each other.

use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tokens::{TokenTable, Tokens};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sluice_protocol::ErrorBody;
use sluice_protocol::keys::PublicKey;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// What every request (and the MQTT consumer, [`crate::mqtt`]) works with.
pub(crate) struct Shared {
    pub(crate) store: Store,
    /// Reloadable: read it through [`Shared::tokens`].
    pub(crate) token_table: Arc<TokenTable>,
    pub(crate) limits: Limits,
    pub(crate) metrics: Metrics,
    /// One permit per batch being read, decoded or stored, whatever
    /// carried it.
    pub(crate) batches: Arc<Semaphore>,
    /// What the MQTT consumer must hold besides one of `batches`: half of
    /// them (at least one). HTTP takes a permit only when one is free and
    /// answers `503` otherwise, while the MQTT consumer waits in line for
    /// one, and the semaphore hands a freed permit to whoever waits first:
    /// without this cap a busy broker kept every permit and HTTP devices
    /// got nearly nothing. With it, HTTP always has the other half.
    pub(crate) mqtt_batches: Arc<Semaphore>,
    /// One per MQTT batch held, in progress or waiting for the permits
    /// above ([`Limits::mqtt_max_held`]): the MQTT consumer answers `503`
    /// at once when none is left, instead of queueing without limit.
    pub(crate) mqtt_held: Arc<Semaphore>,
    /// The keys the fleet's devices pin for bundles (`--bundle-key`): an
    /// upload no device would accept is refused ([`crate::api`]).
    pub(crate) bundle_keys: Vec<PublicKey>,
    /// One bundle upload at a time.
    pub(crate) bundle_uploads: Arc<Semaphore>,
}

impl Shared {
    pub(crate) fn new(
        mut store: Store,
        tokens: Arc<TokenTable>,
        limits: Limits,
        bundle_keys: Vec<PublicKey>,
    ) -> Arc<Shared> {
        store.set_fleet_retention(limits.fleet_retention);
        Arc::new(Shared {
            bundle_keys,
            bundle_uploads: Arc::new(Semaphore::new(1)),
            store,
            token_table: tokens,
            batches: Arc::new(Semaphore::new(limits.max_concurrent_batches)),
            mqtt_batches: Arc::new(Semaphore::new(limits.mqtt_share())),
            mqtt_held: Arc::new(Semaphore::new(limits.mqtt_max_held())),
            limits,
            metrics: Metrics::default(),
        })
    }
}

impl Shared {
    /// The tokens now (the table may be replaced between two requests).
    pub(crate) fn tokens(&self) -> Arc<Tokens> {
        self.token_table.current()
    }
}

/// An error answer: `status` with the JSON body devices and tools read.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(ErrorBody::new(message))).into_response()
}

/// An HTML page answer, with headers that let nothing on it run or load
/// from elsewhere.
pub(crate) fn page(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Nothing on these pages runs or loads from elsewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}
