//! The collector's HTTP API (see the crate documentation for the endpoints).
//!
//! Invariants: every request but `/v1/health` is authenticated by its bearer
//! token before anything else is done with it; a token acts only for its own
//! device; a batch is decompressed with a bound (no compression bombs); the
//! store is only touched from blocking threads, never from async workers.

use crate::store::{Row, Store};
use crate::tokens::Tokens;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_protocol::{
    self as protocol, DeviceCount, DeviceResults, ErrorBody, PROTOCOL_VERSION, RawBatch,
    RecordHeader,
};
use std::io::Read;
use std::sync::Arc;

/// Largest request body accepted (compressed).
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// Largest batch after decompression: a guard against compression bombs.
pub const MAX_DECOMPRESSED_BYTES: u64 = 256 << 20;
/// Most results one `GET .../results` returns.
pub const MAX_RESULTS_LIMIT: u32 = 10_000;

struct Shared {
    store: Store,
    tokens: Tokens,
}

/// The collector's routes over `store`, for `tokens`.
pub fn router(store: Store, tokens: Tokens) -> Router {
    let shared = Arc::new(Shared { store, tokens });
    Router::new()
        .route(protocol::paths::HEALTH, get(|| async { "ok" }))
        .route(protocol::paths::BATCHES, post(post_batch))
        .route("/v1/devices/{id}/count", get(get_count))
        .route("/v1/devices/{id}/results", get(get_results))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(ErrorBody::new(message))).into_response()
}

fn device_of<'a>(shared: &'a Shared, headers: &HeaderMap) -> Result<&'a str, Response> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    shared
        .tokens
        .device_of(authorization)
        .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "missing or unknown bearer token"))
}

/// The device named in the path, if the token is that device's.
fn authorize(shared: &Shared, headers: &HeaderMap, device: &str) -> Result<(), Response> {
    match device_of(shared, headers)? {
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

async fn post_batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let device = match device_of(&shared, &headers) {
        Ok(device) => device.to_owned(),
        Err(response) => return response,
    };
    blocking(move || store_batch(&shared, &device, &headers, &body)).await
}

fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, Response> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    match encoding {
        protocol::CONTENT_ENCODING => {
            let decoder = zstd::Decoder::new(body)
                .map_err(|e| error(StatusCode::BAD_REQUEST, format!("zstd body: {e}")))?;
            let mut out = Vec::new();
            decoder
                .take(MAX_DECOMPRESSED_BYTES + 1)
                .read_to_end(&mut out)
                .map_err(|e| error(StatusCode::BAD_REQUEST, format!("zstd body: {e}")))?;
            if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("batch exceeds {MAX_DECOMPRESSED_BYTES} bytes decompressed"),
                ));
            }
            Ok(out)
        }
        "identity" => Ok(body.to_vec()),
        other => Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding `{other}` is not supported (zstd or none)"),
        )),
    }
}

/// Check every record of `batch` and turn it into a row.
fn rows(device: &str, batch: &RawBatch) -> Result<Vec<Row>, Response> {
    batch
        .records
        .iter()
        .enumerate()
        .map(|(ix, raw)| {
            let header: RecordHeader = serde_json::from_str(raw.get()).map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("record {ix}: needs string `id`, `device`, `pipeline` and integer `seq`: {e}"),
                )
            })?;
            header.check(device).map_err(|e| {
                let status = match e {
                    protocol::RecordError::OtherDevice { .. } => StatusCode::FORBIDDEN,
                    _ => StatusCode::BAD_REQUEST,
                };
                error(status, format!("record {ix}: {e}; this token is device `{device}`'s"))
            })?;
            Ok(Row {
                id: header.id,
                pipeline: header.pipeline,
                seq: header.seq,
                body: raw.get().to_owned(),
            })
        })
        .collect()
}

fn store_batch(shared: &Shared, device: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let json = match decode(headers, body) {
        Ok(json) => json,
        Err(response) => return response,
    };
    let batch: RawBatch = match serde_json::from_slice(&json) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("batch is not valid JSON of the expected shape: {e}"),
            );
        }
    };
    if batch.protocol > PROTOCOL_VERSION {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "batch uses protocol version {}; this collector speaks up to {PROTOCOL_VERSION}",
                batch.protocol
            ),
        );
    }
    if batch.device != device {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "batch claims device `{}`; this token is device `{device}`'s",
                batch.device
            ),
        );
    }
    if let Some(key) = headers
        .get(protocol::IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        && key != batch.key
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "{} `{key}` differs from the body's key `{}`",
                protocol::IDEMPOTENCY_KEY,
                batch.key
            ),
        );
    }
    if batch.key.is_empty() || batch.key.len() > protocol::MAX_KEY_LEN {
        return error(
            StatusCode::BAD_REQUEST,
            format!("batch key must have 1 to {} bytes", protocol::MAX_KEY_LEN),
        );
    }
    let rows = match rows(device, &batch) {
        Ok(rows) => rows,
        Err(response) => return response,
    };
    match shared.store.store_batch(device, &batch.key, &rows) {
        Ok(ack) => (StatusCode::OK, axum::Json(ack)).into_response(),
        Err(e) => {
            tracing::error!(device, "cannot store batch: {e}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot store the batch: {e}"),
            )
        }
    }
}

async fn get_count(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(device): UrlPath<String>,
) -> Response {
    if let Err(response) = authorize(&shared, &headers, &device) {
        return response;
    }
    blocking(move || match shared.store.count(&device) {
        Ok(count) => axum::Json(DeviceCount { device, count }).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    })
    .await
}

#[derive(Deserialize)]
struct ResultsQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

async fn get_results(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(device): UrlPath<String>,
    Query(query): Query<ResultsQuery>,
) -> Response {
    if let Err(response) = authorize(&shared, &headers, &device) {
        return response;
    }
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_RESULTS_LIMIT);
    let after = query.after.unwrap_or(i64::MIN);
    blocking(move || match shared.store.results(&device, after, limit) {
        Ok(bodies) => {
            // Stored bodies went through the JSON parser on the way in.
            let results: Vec<Box<RawValue>> = bodies
                .into_iter()
                .filter_map(|b| RawValue::from_string(b).ok())
                .collect();
            axum::Json(DeviceResults { device, results }).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    })
    .await
}
