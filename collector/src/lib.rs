//! # sluice-collector: the upstream receiver of Sluice results
//!
//! Devices running `sluice run` upload their results here, over HTTP or
//! through an MQTT 5 broker ([`mqtt`]); the collector authenticates each
//! device by its bearer token and stores every result exactly once, in one
//! SQLite file or in a PostgreSQL database several collectors share
//! ([`store`]). It is a separate program
//! (`sluice-collector`) and crate: the device binary contains none of it.
//! The wire types are in [`sluice_protocol`].
//!
//! Endpoints (every one but health needs `Authorization: Bearer <device
//! token>`; a token belongs to exactly one device):
//!
//! * `POST /v1/batches`: an [`UploadBatch`](sluice_protocol::UploadBatch).
//!   Headers: `Idempotency-Key` (the batch key), `Content-Encoding: zstd` (or
//!   none), `Content-Type: application/json`. The token is checked before
//!   any of the body is read. Answers `200`
//!   [`BatchAck`](sluice_protocol::BatchAck) once the batch is durably
//!   stored; `401` without a known token; `403` when the batch claims
//!   another device than the token's; `400` for a malformed batch; `422`
//!   for an invalid record (the [`ErrorBody`](sluice_protocol::ErrorBody)
//!   names its index); `409` for a key already used for other records, or
//!   a record id already stored with another body; `413` past the
//!   [`Limits`] on size and record count; `408` when the body is not read
//!   in time; `503` with `Retry-After` when too many batches are in progress.
//! * `GET /v1/devices/{id}/count` (the device's token or the operator's):
//!   [`DeviceCount`](sluice_protocol::DeviceCount).
//! * `GET /v1/devices/{id}/results?after=SEQ&after_id=ID&limit=N` (the
//!   device's token or the operator's):
//!   [`DeviceResults`](sluice_protocol::DeviceResults) in `(seq, id)` order
//!   after the cursor (default: from the first; `after` alone: `seq >
//!   after`), at most `limit` (default 100, at most
//!   [`Limits::max_results_page`]); a full page carries `next`, the cursor
//!   of the following one.
//! * `GET /v1/devices/{id}/bundle`: the bundle a staged rollout has for
//!   the device ([`rollout`]): `200` with the file (`ETag` its SHA-256,
//!   `X-Sluice-Bundle: NAME/VERSION`), `304` when `If-None-Match` names it,
//!   `204` when there is none.
//! * `GET /v1/health`: `ok`, without authentication.
//!
//! The fleet view, for operators (the operator token, set with
//! [`Tokens::set_operator`], distinct from every device's; a device token
//! is refused with `403`):
//!
//! * `GET /v1/fleet`: [`FleetView`](sluice_protocol::FleetView), every
//!   device with a token: state (ok, stale, drift, unseen), last seen,
//!   backlog, version.
//! * `GET /v1/fleet/devices/{id}?since_ms=T`:
//!   [`FleetDevice`](sluice_protocol::FleetDevice), one device with its
//!   per-minute throughput and errors, backlog, versions and drift windows
//!   since `T` (default a day back, never before
//!   [`Limits::fleet_retention`]).
//! * `GET /metrics`: OpenMetrics text for Prometheus ([`metrics`]).
//! * `GET /dashboard`, `GET /dashboard/devices/{id}`: the same as HTML
//!   pages with inline SVG charts ([`dashboard`]); `?token=OPERATOR_TOKEN`
//!   once sets a session cookie (see [`session`]).
//!
//! Storage invariants are in [`store`]; every bound on what a client can
//! make the collector hold is in [`Limits`].

#![deny(missing_docs)]

pub mod accept;
pub mod api;
pub mod dashboard;
pub mod fleet;
pub mod http;
mod identity;
mod limits;
pub mod metrics;
pub mod mqtt;
mod operator;
pub mod rollout;
pub mod session;
mod shared;
pub mod store;
mod tokens;

pub use limits::{CONNECTION_BUFFER_BYTES, Limits, RECORD_OVERHEAD_BYTES};
pub use sluice_serve::{Tls, TlsError, TlsFiles, constant_time_eq};
pub use store::{BatchError, Store, StoreError};
pub use tokens::{TokenError, TokenTable, Tokens};

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// Why a collector cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectorError {
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A limit is unusable (zero).
    #[error("{0}")]
    Limits(String),
    /// The MQTT settings cannot be used.
    #[error("MQTT: {0}")]
    Mqtt(sluice_mqtt::MqttConfigError),
    /// No device has a token: nothing could ever be stored.
    #[error("no device tokens: give --tokens FILE or --token DEVICE=TOKEN")]
    NoTokens,
    /// The listener or the runtime could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// `error` and its causes, each said once, for a person: this crate's
/// errors put their cause in their own message (so that `to_string()` or
/// a log line alone is complete) and also expose it as their `source()`,
/// so printing the whole chain, as anyhow's `{:#}` does, would repeat
/// every cause. A cause whose text is already in the message is left out.
pub fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        next = cause.source();
    }
    text
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CollectorError {
    let what = what.into();
    move |source| CollectorError::Io { what, source }
}

/// A collector running in the background of the calling process (tests,
/// embedding); `sluice-collector` runs [`serve`] instead.
pub struct Collector {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    /// Serve on `listener` (already bound), storing into `db` (created if
    /// missing), on a runtime thread of its own, with the default
    /// [`Limits`].
    pub fn start(
        listener: std::net::TcpListener,
        db: &Path,
        tokens: Tokens,
    ) -> Result<Collector, CollectorError> {
        Collector::start_with(listener, db, tokens, Limits::default())
    }

    /// [`Collector::start`] with `limits`.
    pub fn start_with(
        listener: std::net::TcpListener,
        db: &Path,
        tokens: Tokens,
        limits: Limits,
    ) -> Result<Collector, CollectorError> {
        Collector::start_store(listener, Store::open(db)?, tokens, limits)
    }

    /// [`Collector::start_with`] on an open `store` (SQLite or
    /// PostgreSQL).
    pub fn start_store(
        listener: std::net::TcpListener,
        store: Store,
        tokens: Tokens,
        limits: Limits,
    ) -> Result<Collector, CollectorError> {
        Collector::start_serving(listener, store, tokens, limits, Serving::default())
    }

    /// [`Collector::start_store`], serving as `serving` says (bundle keys
    /// for the operator API, MQTT, TLS).
    pub fn start_serving(
        listener: std::net::TcpListener,
        store: Store,
        tokens: Tokens,
        limits: Limits,
        serving: Serving,
    ) -> Result<Collector, CollectorError> {
        if tokens.is_empty() {
            return Err(CollectorError::NoTokens);
        }
        limits.check().map_err(CollectorError::Limits)?;
        let addr = listener.local_addr().map_err(io("collector listener"))?;
        listener
            .set_nonblocking(true)
            .map_err(io("collector listener"))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-collector")
            .enable_all()
            .build()
            .map_err(io("collector runtime"))?;
        let thread = std::thread::Builder::new()
            .name("sluice-collector".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("a bound, non-blocking std listener converts");
                    let stop = async {
                        let _ = rx.await;
                    };
                    let served = serve_all(
                        listener,
                        store,
                        TokenTable::new(tokens),
                        limits,
                        serving,
                        stop,
                    );
                    if let Err(e) = served.await {
                        tracing::error!("collector: {}", error_text(&e));
                    }
                });
                // Do not wait for connections that a client left hanging.
                runtime.shutdown_timeout(std::time::Duration::from_millis(100));
            })
            .map_err(io("collector thread"))?;
        Ok(Collector {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the base URL devices sync to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting, finish requests in flight, and return.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serve on `listener`, storing into `store`, until `shutdown` resolves;
/// then finish the requests in flight. Runs on the caller's tokio runtime,
/// with the default [`Limits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Store,
    tokens: Tokens,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), CollectorError> {
    serve_with(listener, store, tokens, Limits::default(), shutdown).await
}

/// [`serve`] with `limits`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    store: Store,
    tokens: Tokens,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), CollectorError> {
    let serving = Serving::default();
    serve_all(
        listener,
        store,
        TokenTable::new(tokens),
        limits,
        serving,
        shutdown,
    )
    .await
}

/// How [`serve_all`] serves, besides its HTTP routes.
#[derive(Default)]
pub struct Serving {
    /// Also take batches from an MQTT broker ([`mqtt`]).
    pub mqtt: Option<mqtt::MqttSettings>,
    /// HTTPS only, with this certificate (and client CA), reloadable.
    pub tls: Option<Arc<sluice_serve::Tls>>,
    /// The public keys the fleet's devices pin for bundles: the operator
    /// API takes only bundles one of them signed ([`api`]).
    pub bundle_keys: Vec<sluice_protocol::keys::PublicKey>,
}

/// [`serve_with`] answering with `tokens` (which the caller may replace
/// while it serves, [`TokenTable::replace`]), as `serving` says.
pub async fn serve_all(
    listener: tokio::net::TcpListener,
    store: Store,
    tokens: Arc<TokenTable>,
    limits: Limits,
    serving: Serving,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), CollectorError> {
    if tokens.current().is_empty() {
        return Err(CollectorError::NoTokens);
    }
    let Serving {
        mqtt,
        tls,
        bundle_keys,
    } = serving;
    limits.check().map_err(CollectorError::Limits)?;
    let shared = http::Shared::new(store, tokens, limits.clone(), bundle_keys);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(tick_rollouts(shared.clone(), stopped.clone()));
    let consumer = match mqtt {
        Some(settings) => {
            // Settings are checked before serving anything.
            sluice_mqtt::options(&settings.url, &settings.client_id, &settings.broker, 1)
                .map_err(CollectorError::Mqtt)?;
            Some(tokio::spawn(mqtt::consume(
                settings,
                shared.clone(),
                stopped,
            )))
        }
        None => None,
    };
    let app = http::router_shared(shared);
    sluice_serve::serve("collector", listener, app, &limits.serve(), tls, shutdown).await;
    let _ = stop.send(true);
    if let Some(consumer) = consumer
        && let Ok(Err(e)) = consumer.await
    {
        return Err(CollectorError::Mqtt(e));
    }
    Ok(())
}

/// Look at the running rollouts every [`limits::ROLLOUT_TICK`] until
/// `stopped`: a stage's deadline passes whether or not a device reports.
async fn tick_rollouts(shared: Arc<http::Shared>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(limits::ROLLOUT_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        let shared = shared.clone();
        match tokio::task::spawn_blocking(move || shared.store.tick_rollouts()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("rollouts: cannot look at stage deadlines: {e}"),
            Err(e) => tracing::warn!("rollouts: the deadline check failed: {e}"),
        }
    }
}
