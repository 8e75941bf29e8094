//! The collector's HTTP API (see the crate documentation for the endpoints).
//!
//! Invariants: every request but `/v1/health` is authenticated by its bearer
//! token, from its headers, before anything else is done with it (no byte
//! of a batch is read for an unknown token); a token acts only for its own
//! device; the fleet view, the dashboard and metrics take only the
//! operator's token (or the dashboard's cookie derived from it), never a
//! device's; what a batch can make the collector hold is bounded by
//! [`Limits`] (body, decompressed text, records, batches at once, time);
//! the store is only touched from blocking threads, never from async workers.

// The steps of a handler fail with the answer to send (a `Response`, 128
// bytes): once per request, not worth boxing.
#![allow(clippy::result_large_err)]

use crate::accept;
use crate::identity::device_of;
use crate::limits::{Limits, RETRY_AFTER_SECS};
use crate::operator::{DashboardQuery, dashboard_auth, operator, operator_check};
pub(crate) use crate::shared::{Shared, error, page};
use crate::store::{After, Store, now_ms};
use crate::tokens::{TokenTable, Tokens};
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_protocol::{self as protocol, DeviceCount, DeviceResults, FleetView};
use sluice_serve::{BodyError, ClientCertificate};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

pub use crate::session::COOKIE;

/// How far back the fleet endpoints look by default: one day.
pub const DEFAULT_SINCE_MS: i64 = 24 * 3600 * 1000;

/// The collector's routes over `store`, for `tokens`, with the default
/// [`Limits`].
pub fn router(store: Store, tokens: Tokens) -> Router {
    router_with(store, tokens, Limits::default())
}

/// The collector's routes over `store`, for `tokens`, within `limits` (the
/// connection limit and header timeout are the server's: see
/// [`serve_with`](crate::serve_with)).
pub fn router_with(store: Store, tokens: Tokens, limits: Limits) -> Router {
    router_shared(Shared::new(
        store,
        TokenTable::new(tokens),
        limits,
        Vec::new(),
    ))
}

pub(crate) fn router_shared(shared: Arc<Shared>) -> Router {
    let metrics = shared.metrics.clone();
    Router::new()
        .route(protocol::paths::HEALTH, get(|| async { "ok" }))
        .route(protocol::paths::BATCHES, post(post_batch))
        .route(protocol::paths::DEVICE_COUNT, get(get_count))
        .route(protocol::paths::DEVICE_RESULTS, get(get_results))
        .route(protocol::paths::DEVICE_BUNDLE, get(get_bundle))
        .route(protocol::paths::FLEET, get(get_fleet))
        .route(protocol::paths::FLEET_DEVICE, get(get_fleet_device))
        .route(protocol::paths::METRICS, get(get_metrics))
        .route("/dashboard", get(dashboard_fleet))
        .route("/dashboard/devices/{id}", get(dashboard_device))
        .merge(crate::api::routes())
        .with_state(shared)
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let guard = metrics.request();
                async move {
                    let response = next.run(request).await;
                    drop(guard);
                    response
                }
            },
        ))
}

/// The client certificate of the request's connection, if it showed one
/// (mutual TLS).
type Certificate = Option<Extension<ClientCertificate>>;

/// A reader of device `device`'s results: that device (its token or
/// certificate), or the operator (who sees every device).
fn authorize_reader(
    shared: &Shared,
    headers: &HeaderMap,
    certificate: &Certificate,
    device: &str,
) -> Result<(), Response> {
    if operator_check(shared, headers).is_ok() {
        return Ok(());
    }
    authorize(shared, headers, certificate, device)
}

/// The device named in the path, if the caller is that device.
fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    certificate: &Certificate,
    device: &str,
) -> Result<(), Response> {
    match device_of(shared, headers, certificate.as_deref())? {
        own if own != device => Err(error(
            StatusCode::FORBIDDEN,
            format!("this token is device `{own}`'s, not `{device}`'s"),
        )),
        _ => Ok(()),
    }
}

/// Run `f` on a blocking thread (the store fsyncs).
async fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("handler failed: {e}"),
        )
    })
}

fn too_large(what: &str, limit: usize, flag: &str) -> Response {
    accept::Refusal::too_large(what, limit, flag).into_response()
}

async fn post_batch(
    State(shared): State<Arc<Shared>>,
    certificate: Certificate,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = receive_batch(shared.clone(), headers, certificate, body).await;
    // Batches that reached the store are counted there.
    if response.status() != StatusCode::OK && response.extensions().get::<Counted>().is_none() {
        shared.metrics.batch("refused", response.status().as_u16());
    }
    response
}

/// Marks an answer already counted by [`accept::store`].
#[derive(Clone, Copy)]
struct Counted;

async fn receive_batch(
    shared: Arc<Shared>,
    headers: HeaderMap,
    certificate: Certificate,
    body: Body,
) -> Response {
    // The token (or certificate) first, from the headers alone: an unknown
    // client makes the collector read nothing.
    let device = match device_of(&shared, &headers, certificate.as_deref()) {
        Ok(device) => device.to_owned(),
        Err(response) => return response,
    };
    let limits = &shared.limits;
    let declared = sluice_serve::content_length(&headers);
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return too_large(
            "the request body",
            limits.max_body_bytes,
            "--max-body-bytes",
        );
    }
    // Taken before reading, held until the answer: the memory of batches in
    // progress is bounded by this count times the per-batch limits.
    let Ok(permit) = shared.batches.clone().try_acquire_owned() else {
        return busy(limits);
    };
    let body = match sluice_serve::read_body(
        body,
        declared,
        limits.max_body_bytes,
        limits.body_read_timeout,
    )
    .await
    {
        Ok(body) => body,
        Err(BodyError::TooLarge { .. }) => {
            return too_large(
                "the request body",
                limits.max_body_bytes,
                "--max-body-bytes",
            );
        }
        Err(e @ BodyError::TimedOut { .. }) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!("{e} (collector flag --body-timeout)"),
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    blocking(move || {
        let _permit: OwnedSemaphorePermit = permit;
        store_batch(&shared, &device, &headers, body)
    })
    .await
}

fn store_batch(shared: &Shared, device: &str, headers: &HeaderMap, body: Vec<u8>) -> Response {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let key = headers
        .get(protocol::IDEMPOTENCY_KEY)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let batch = accept::Received {
        device,
        key,
        encoding,
        body,
    };
    let mut response = match accept::store(&shared.store, &shared.metrics, &shared.limits, batch) {
        Ok(ack) => (StatusCode::OK, axum::Json(ack)).into_response(),
        Err(refusal) => refusal.into_response(),
    };
    response.extensions_mut().insert(Counted);
    response
}

impl IntoResponse for accept::Refusal {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, axum::Json(self.body)).into_response()
    }
}

async fn get_count(
    State(shared): State<Arc<Shared>>,
    certificate: Certificate,
    headers: HeaderMap,
    UrlPath(device): UrlPath<String>,
) -> Response {
    if let Err(response) = authorize_reader(&shared, &headers, &certificate, &device) {
        return response;
    }
    blocking(move || match shared.store.count(&device) {
        Ok(count) => axum::Json(DeviceCount { device, count }).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    })
    .await
}

/// The bundle the device should run now (a staged rollout reached it):
/// `200` with the bundle file, `ETag` its SHA-256 and `X-Sluice-Bundle`
/// `NAME/VERSION`; `304` when `If-None-Match` names that SHA-256 (the
/// device has it); `204` when there is none.
async fn get_bundle(
    State(shared): State<Arc<Shared>>,
    certificate: Certificate,
    headers: HeaderMap,
    UrlPath(device): UrlPath<String>,
) -> Response {
    if let Err(response) = authorize(&shared, &headers, &certificate, &device) {
        return response;
    }
    // A bundle is read whole (up to `rollout::MAX_BUNDLE_BYTES`): it takes
    // one of the permits of batches in progress, so devices asking at once
    // cannot hold more memory than as many batches.
    let Ok(permit) = shared.batches.clone().try_acquire_owned() else {
        return busy(&shared.limits);
    };
    let seen = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    blocking(move || {
        let _permit: OwnedSemaphorePermit = permit;
        bundle_answer(shared.store.bundle_for(&device), &seen)
    })
    .await
}

/// `503` with `Retry-After`: every permit of batches (and bundle
/// downloads) in progress is taken.
fn busy(limits: &Limits) -> Response {
    let mut response = error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "{} batches or bundle downloads are already in progress (collector flag --max-concurrent-batches); retry after {RETRY_AFTER_SECS} s",
            limits.max_concurrent_batches
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}

/// The answer to a device asking for its bundle (`seen`: its `If-None-Match`).
fn bundle_answer(
    offered: Result<Option<crate::rollout::Offer>, crate::store::StoreError>,
    seen: &str,
) -> Response {
    match offered {
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Ok(Some(offer)) => {
            let etag = format!("\"{}\"", offer.sha256);
            if crate::rollout::seen_by(seen, &offer.sha256) {
                return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
            }
            let mut response = (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (header::ETAG, etag),
                    (
                        header::HeaderName::from_static("x-sluice-bundle"),
                        format!("{}/{}", offer.name, offer.version),
                    ),
                ],
                offer.body,
            )
                .into_response();
            if let Some(minimum) = offer.probation {
                response.headers_mut().insert(
                    protocol::operator::PROBATION_HEADER,
                    HeaderValue::from_str(&minimum.to_text()).expect("digits and ASCII"),
                );
            }
            response
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct ResultsQuery {
    after: Option<i64>,
    after_id: Option<String>,
    limit: Option<u32>,
}

async fn get_results(
    State(shared): State<Arc<Shared>>,
    certificate: Certificate,
    headers: HeaderMap,
    UrlPath(device): UrlPath<String>,
    Query(query): Query<ResultsQuery>,
) -> Response {
    if let Err(response) = authorize_reader(&shared, &headers, &certificate, &device) {
        return response;
    }
    let limit = query
        .limit
        .unwrap_or(100)
        .clamp(1, shared.limits.max_results_page);
    let after = match (query.after, query.after_id) {
        (None, None) => After::Start,
        (Some(seq), None) => After::Seq(seq),
        (Some(after), Some(after_id)) => After::Cursor(protocol::ResultsCursor { after, after_id }),
        (None, Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "`after_id` needs `after` (the cursor is the pair, as `next` gives it)",
            );
        }
    };
    blocking(
        move || match shared.store.results_page(&device, &after, limit) {
            Ok(page) => {
                // Stored bodies went through the JSON parser on the way in.
                let results: Vec<Box<RawValue>> = page
                    .results
                    .into_iter()
                    .filter_map(|b| RawValue::from_string(b).ok())
                    .collect();
                axum::Json(DeviceResults {
                    device,
                    results,
                    next: page.next,
                })
                .into_response()
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
    )
    .await
}

fn stale_after_ms(limits: &Limits) -> i64 {
    limits.stale_after.as_millis().min(i64::MAX as u128) as i64
}

fn fleet_view(shared: &Shared) -> Result<FleetView, Response> {
    let now = now_ms();
    let stale_after_ms = stale_after_ms(&shared.limits);
    let devices = shared.tokens().devices();
    let store = &shared.store;
    store
        .fleet(&devices, now, stale_after_ms)
        .and_then(|summaries| {
            Ok(FleetView {
                at_ms: now,
                stale_after_ms,
                devices: summaries,
                versions: store.fleet_versions(&devices)?,
            })
        })
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn get_fleet(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(response) = operator(&shared, &headers) {
        return response;
    }
    blocking(move || match fleet_view(&shared) {
        Ok(view) => axum::Json(view).into_response(),
        Err(response) => response,
    })
    .await
}

#[derive(Deserialize)]
struct WindowQuery {
    window: Option<String>,
}

#[derive(Deserialize)]
struct SinceQuery {
    since_ms: Option<i64>,
}

/// `device`'s view since `since_ms` (default: a day back; never before
/// the retention, which holds nothing older), or `404` for a device
/// without a token.
fn fleet_device(
    shared: &Shared,
    device: &str,
    since_ms: Option<i64>,
) -> Result<protocol::FleetDevice, Response> {
    if !shared.tokens().knows(device) {
        return Err(error(
            StatusCode::NOT_FOUND,
            "no device of that name has a token",
        ));
    }
    let now = now_ms();
    let retention = shared
        .limits
        .fleet_retention
        .as_millis()
        .min(i64::MAX as u128) as i64;
    let since = since_ms
        .unwrap_or(now - DEFAULT_SINCE_MS)
        .max(now.saturating_sub(retention));
    shared
        .store
        .fleet_device(device, since, now, stale_after_ms(&shared.limits))
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn get_fleet_device(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(device): UrlPath<String>,
    Query(query): Query<SinceQuery>,
) -> Response {
    if let Err(response) = operator(&shared, &headers) {
        return response;
    }
    blocking(
        move || match fleet_device(&shared, &device, query.since_ms) {
            Ok(view) => axum::Json(view).into_response(),
            Err(response) => response,
        },
    )
    .await
}

async fn get_metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(response) = operator(&shared, &headers) {
        return response;
    }
    blocking(move || {
        let installs = shared
            .store
            .install_counts(&shared.tokens().devices())
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
        match (fleet_view(&shared), installs) {
            (Ok(view), Ok(installs)) => {
                sluice_serve::metrics::answer(&headers, shared.metrics.encode(&view, &installs))
            }
            (Err(response), _) | (_, Err(response)) => response,
        }
    })
    .await
}

/// Recent changes the fleet page shows.
const AUDIT_SHOWN: u32 = 20;

async fn dashboard_fleet(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<DashboardQuery>,
    Query(filter): Query<crate::dashboard::Filter>,
) -> Response {
    if let Err(response) = dashboard_auth(&shared, &headers, "/dashboard", &query) {
        return response;
    }
    blocking(move || {
        let view = match fleet_view(&shared) {
            Ok(view) => view,
            Err(response) => return response,
        };
        let store = &shared.store;
        let parts = (|| {
            Ok::<_, crate::StoreError>((
                store.rollouts()?,
                store.groups(None)?,
                store.audit_latest(AUDIT_SHOWN)?,
            ))
        })();
        match parts {
            Ok((rollouts, groups, audit)) => page(
                StatusCode::OK,
                crate::dashboard::fleet(&crate::dashboard::FleetPage {
                    view: &view,
                    rollouts: &rollouts,
                    groups: &groups,
                    audit: &audit,
                    filter: &filter,
                }),
            ),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    })
    .await
}

async fn dashboard_device(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(device): UrlPath<String>,
    Query(query): Query<DashboardQuery>,
    Query(window): Query<WindowQuery>,
) -> Response {
    // Device names are restricted to URL-safe characters; any other is no
    // device, and is not echoed into a header.
    if protocol::check_name(&device).is_err() {
        return page(
            StatusCode::NOT_FOUND,
            crate::dashboard::denied("No such device."),
        );
    }
    let path = format!("/dashboard/devices/{device}");
    if let Err(response) = dashboard_auth(&shared, &headers, &path, &query) {
        return response;
    }
    // A week back (the widest chart window); the page charts what it needs.
    let since = now_ms() - crate::dashboard::WINDOWS[3].1;
    blocking(move || match fleet_device(&shared, &device, Some(since)) {
        Ok(view) => page(
            StatusCode::OK,
            crate::dashboard::device(&view, now_ms(), window.window.as_deref()),
        ),
        Err(response) => {
            let status = response.status();
            page(status, crate::dashboard::denied("No such device."))
        }
    })
    .await
}
