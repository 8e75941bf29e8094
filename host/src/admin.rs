//! The agent's own endpoint for operators and monitoring (`[admin]
//! listen`): `GET /metrics` (OpenMetrics, or the Prometheus text format
//! when only that is asked for), `/healthz` (the process serves),
//! `/readyz` (`200 {"ready": true}`, or `503` with `"problems"`: pipelines
//! down, models or plugins that did not start, an outbox that cannot be
//! written, a backlog at its bound), `/v1/status` (the outbox, as JSON) and
//! `/v1/results?after=POS` (results kept on the device for its own
//! consumers, in completion order, synced upstream or not), whatever the
//! inputs come from: a folder-only agent is monitored like any other. The
//! HTTP ingest endpoint serves the same routes ([`routes`]).
//!
//! Invariants: `/metrics`, `/v1/status` and `/v1/results` need the token when one is set
//! (checked from the headers, in constant time); the endpoint reads, never
//! writes; connections and request heads are bounded ([`sluice_serve`]);
//! scraping reads SQLite off the async workers.

use crate::config::AdminConfig;
use crate::ingest::{IngestError, Running, SHUTDOWN_GRACE, Sink};
use crate::outbox::Outbox;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sluice_protocol::{ErrorBody, paths};
use sluice_serve::ServeLimits;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What the routes answer with.
struct Admin {
    sink: Arc<Sink>,
    /// `Bearer <token>`, if one is required.
    authorization: Option<String>,
    /// The key that sets the token, for the refusal's message.
    key: &'static str,
}

/// The read-only routes over `sink`, guarded by `token` (set by the
/// configuration key `key`) when there is one.
pub(crate) fn routes(sink: Arc<Sink>, token: Option<String>, key: &'static str) -> axum::Router {
    axum::Router::new()
        .route(paths::HEALTH, axum::routing::get(|| async { "ok" }))
        .route(paths::agent::HEALTHZ, axum::routing::get(|| async { "ok" }))
        .route(paths::agent::READYZ, axum::routing::get(get_ready))
        .route(paths::METRICS, axum::routing::get(get_metrics))
        .route(paths::agent::STATUS, axum::routing::get(get_status))
        .route(paths::agent::RESULTS, axum::routing::get(get_results))
        .with_state(Arc::new(Admin {
            sink,
            authorization: token.map(|t| format!("Bearer {t}")),
            key,
        }))
}

/// The refusal of a request without `expected` (`Bearer <token>`), if one
/// is required; `key` names the setting in the message.
pub(crate) fn unauthorized(
    expected: Option<&str>,
    headers: &HeaderMap,
    key: &str,
) -> Option<Response> {
    let expected = expected?;
    let given = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if given.is_some_and(|given| sluice_serve::constant_time_eq(given, expected.as_bytes())) {
        return None;
    }
    let mut response = json_error(
        StatusCode::UNAUTHORIZED,
        format!("missing or wrong bearer token ({key})"),
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

/// Serve `[admin]` on `runtime`, if `listen` is set: the running endpoint
/// and its bound address.
pub(crate) fn start(
    config: &AdminConfig,
    sink: Arc<Sink>,
    runtime: &tokio::runtime::Handle,
) -> Result<Option<(Running, SocketAddr)>, IngestError> {
    let Some(listen) = &config.listen else {
        return Ok(None);
    };
    let setup = |message: String| IngestError::Setup {
        source_name: format!("admin.listen {listen}"),
        message,
    };
    let token = config.bearer_token().map_err(|e| setup(e.to_string()))?;
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| setup(format!("cannot listen: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| setup(format!("cannot listen: {e}")))?;
    let app = routes(sink, token, "admin.token");
    let limits = ServeLimits {
        max_connections: config.max_connections,
        header_read_timeout: Duration::from_millis(config.header_timeout_ms),
        max_buf_size: crate::memory::CONNECTION_BUFFER_BYTES,
        shutdown_grace: SHUTDOWN_GRACE,
    };
    let name = format!("admin http://{addr}");
    let running = Running::serve(name, "admin", listener, app, limits, runtime);
    Ok(Some((running, addr)))
}

/// An error answer: `status` with the JSON body clients read.
pub(crate) fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(ErrorBody::new(message))).into_response()
}

async fn get_metrics(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(refused) = unauthorized(admin.authorization.as_deref(), &headers, admin.key) {
        return refused;
    }
    let sink = admin.sink.clone();
    // Scraping reads the outbox (SQLite): off the async workers.
    match tokio::task::spawn_blocking(move || sink.metrics().encode()).await {
        Ok(text) => sluice_serve::metrics::answer(&headers, text),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get_ready(State(admin): State<Arc<Admin>>) -> Response {
    let problems = admin.sink.readiness();
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({ "ready": problems.is_empty(), "problems": problems });
    (status, axum::Json(body)).into_response()
}

async fn get_status(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(refused) = unauthorized(admin.authorization.as_deref(), &headers, admin.key) {
        return refused;
    }
    let outbox: Arc<Outbox> = admin.sink.outbox.clone();
    match tokio::task::spawn_blocking(move || outbox.status()).await {
        Ok(Ok(status)) => axum::Json(status).into_response(),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(serde::Deserialize)]
struct ResultsQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

/// Results kept on the device after `after`, oldest first.
async fn get_results(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Query(query): Query<ResultsQuery>,
) -> Response {
    use sluice_protocol::local::{LocalResult, LocalResults, MAX_LOCAL_PAGE};
    if let Some(refused) = unauthorized(admin.authorization.as_deref(), &headers, admin.key) {
        return refused;
    }
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LOCAL_PAGE);
    let outbox: Arc<Outbox> = admin.sink.outbox.clone();
    if outbox.config().local_max_bytes == 0 {
        return json_error(
            StatusCode::CONFLICT,
            "results are not kept for local readers: set outbox.local_max_bytes (and local_max_age_secs)",
        );
    }
    let page = match tokio::task::spawn_blocking(move || outbox.local_after(after, limit)).await {
        Ok(Ok(page)) => page,
        Ok(Err(e)) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let missed = page
        .first
        .is_some_and(|first| first > after.saturating_add(1))
        && page.last.is_some_and(|last| last > after);
    let next = page.items.last().map_or(after, |(pos, _)| *pos);
    let results = page
        .items
        .into_iter()
        .filter_map(|(pos, body)| {
            let record = String::from_utf8(body)
                .ok()
                .and_then(|text| serde_json::value::RawValue::from_string(text).ok());
            if record.is_none() {
                tracing::warn!(pos, "a result kept for local readers is not JSON; skipped");
            }
            Some(LocalResult {
                pos,
                record: record?,
            })
        })
        .collect();
    axum::Json(LocalResults {
        results,
        next,
        missed,
    })
    .into_response()
}
