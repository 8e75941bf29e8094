//! The collector's HTTP API (see the crate documentation for the endpoints).
//!
//! Invariants: every request but `/v1/health` is authenticated by its bearer
//! token, from its headers, before anything else is done with it (no byte
//! of a batch is read for an unknown token); a token acts only for its own
//! device; what a batch can make the collector hold is bounded by
//! [`Limits`] (body, decompressed text, records, batches at once, time);
//! the store is only touched from blocking threads, never from async workers.

// The steps of a handler fail with the answer to send (a `Response`, 128
// bytes): once per request, not worth boxing.
#![allow(clippy::result_large_err)]

use crate::limits::Limits;
use crate::store::{BatchError, Row, Store};
use crate::tokens::Tokens;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;
use sluice_protocol::{
    self as protocol, DeviceCount, DeviceResults, ErrorBody, PROTOCOL_VERSION, RecordHeader,
};
use sluice_serve::BodyError;
use std::io::Read;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a device is told to wait, in seconds, when too many batches are in
/// progress (`503`): long enough for a batch to finish, short enough not to
/// hold results back.
pub const RETRY_AFTER_SECS: u32 = 1;

struct Shared {
    store: Store,
    tokens: Tokens,
    limits: Limits,
    /// One permit per batch being read, decoded or stored.
    batches: Arc<Semaphore>,
}

/// The collector's routes over `store`, for `tokens`, with the default
/// [`Limits`].
pub fn router(store: Store, tokens: Tokens) -> Router {
    router_with(store, tokens, Limits::default())
}

/// The collector's routes over `store`, for `tokens`, within `limits` (the
/// connection limit and header timeout are the server's: see
/// [`serve_with`](crate::serve_with)).
pub fn router_with(store: Store, tokens: Tokens, limits: Limits) -> Router {
    let batches = Arc::new(Semaphore::new(limits.max_concurrent_batches));
    let shared = Arc::new(Shared {
        store,
        tokens,
        limits,
        batches,
    });
    Router::new()
        .route(protocol::paths::HEALTH, get(|| async { "ok" }))
        .route(protocol::paths::BATCHES, post(post_batch))
        .route("/v1/devices/{id}/count", get(get_count))
        .route("/v1/devices/{id}/results", get(get_results))
        .with_state(shared)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(ErrorBody::new(message))).into_response()
}

fn record_error(status: StatusCode, index: usize, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(ErrorBody::for_record(index as u64, message)),
    )
        .into_response()
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

fn too_large(what: &str, limit: usize, flag: &str) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("{what} exceeds the limit of {limit} (collector flag {flag}); split the batch"),
    )
}

async fn post_batch(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    // The token first, from the headers alone: an unknown client makes the
    // collector read nothing.
    let device = match device_of(&shared, &headers) {
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
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} batches are already in progress (collector flag --max-concurrent-batches); retry after {RETRY_AFTER_SECS} s",
                limits.max_concurrent_batches
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        return response;
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

/// The batch's JSON text: the body itself, or the body decompressed within
/// [`Limits::max_decompressed_bytes`].
fn decode(headers: &HeaderMap, body: Vec<u8>, limits: &Limits) -> Result<Vec<u8>, Response> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    let limit = limits.max_decompressed_bytes;
    match encoding {
        protocol::CONTENT_ENCODING => {
            let bad = |e: std::io::Error| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not a valid zstd stream: {e}"),
                )
            };
            // A frame that declares its size up front is refused before
            // decompressing anything if that is too much.
            let declared = zstd::zstd_safe::get_frame_content_size(&body)
                .ok()
                .flatten();
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(too_large(
                    "the decompressed batch",
                    limit,
                    "--max-decompressed-bytes",
                ));
            }
            let decoder = zstd::Decoder::with_buffer(&body[..]).map_err(bad)?;
            let mut out = Vec::with_capacity(declared.unwrap_or(0) as usize);
            decoder
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(bad)?;
            if out.len() > limit {
                return Err(too_large(
                    "the decompressed batch",
                    limit,
                    "--max-decompressed-bytes",
                ));
            }
            Ok(out)
        }
        "identity" => {
            if body.len() > limit {
                return Err(too_large("the batch", limit, "--max-decompressed-bytes"));
            }
            Ok(body)
        }
        other => Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding `{other}` is not supported (zstd or none)"),
        )),
    }
}

/// A batch as read before its records are checked: the records stay one
/// borrowed slice of the text until [`Records`] splits them.
#[derive(Deserialize)]
struct BatchText<'a> {
    #[serde(default = "version_one")]
    protocol: u32,
    device: String,
    key: String,
    #[serde(borrow)]
    records: &'a RawValue,
}

fn version_one() -> u32 {
    1
}

/// The records of a batch as borrowed JSON slices, refusing more than
/// `max` while reading them, so a batch of millions of tiny records is
/// refused before their bookkeeping is allocated.
struct Records<'m> {
    max: usize,
    over: &'m std::cell::Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Records<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Records<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut records = Vec::new();
        while let Some(record) = seq.next_element::<&'de RawValue>()? {
            if records.len() == self.max {
                self.over.set(true);
                return Err(serde::de::Error::custom("too many records"));
            }
            records.push(record);
        }
        Ok(records)
    }
}

/// Check record `index` of `device`'s batch and turn it into a row: `422`
/// naming the record if it is not acceptable.
fn row<'a>(device: &str, index: usize, raw: &'a RawValue) -> Result<Row<'a>, Response> {
    let invalid = |message: String| {
        record_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            index,
            format!("record {index}: {message}"),
        )
    };
    let header: RecordHeader = serde_json::from_str(raw.get()).map_err(|e| {
        invalid(format!(
            "needs to be an object with string `id`, `device`, `pipeline` and integer `seq`: {e}"
        ))
    })?;
    header
        .check(device)
        .map_err(|e| invalid(format!("{e}; this token is device `{device}`'s")))?;
    protocol::check_name(&header.pipeline)
        .map_err(|e| invalid(format!("pipeline name `{}` {e}", header.pipeline)))?;
    Ok(Row {
        id: header.id,
        pipeline: header.pipeline,
        seq: header.seq,
        body: raw.get(),
    })
}

fn store_batch(shared: &Shared, device: &str, headers: &HeaderMap, body: Vec<u8>) -> Response {
    let limits = &shared.limits;
    let json = match decode(headers, body, limits) {
        Ok(json) => json,
        Err(response) => return response,
    };
    let batch: BatchText = match serde_json::from_slice(&json) {
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
        .map(|v| v.to_str().unwrap_or("(not text)"))
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
            format!(
                "batch key has {} bytes; it must have 1 to {}",
                batch.key.len(),
                protocol::MAX_KEY_LEN
            ),
        );
    }
    let over = std::cell::Cell::new(false);
    let seed = Records {
        max: limits.max_batch_records,
        over: &over,
    };
    let records =
        match seed.deserialize(&mut serde_json::Deserializer::from_str(batch.records.get())) {
            Ok(records) => records,
            Err(_) if over.get() => {
                return too_large(
                    "the number of records",
                    limits.max_batch_records,
                    "--max-batch-records",
                );
            }
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("batch `records` must be an array: {e}"),
                );
            }
        };
    let rows = match records
        .iter()
        .enumerate()
        .map(|(index, raw)| row(device, index, raw))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(rows) => rows,
        Err(response) => return response,
    };
    match shared.store.store_batch(device, &batch.key, &rows) {
        Ok(ack) => (StatusCode::OK, axum::Json(ack)).into_response(),
        Err(e @ BatchError::KeyReused { .. }) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ BatchError::IdConflict { index, .. }) => {
            record_error(StatusCode::CONFLICT, index, e.to_string())
        }
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
    let limit = query
        .limit
        .unwrap_or(100)
        .clamp(1, shared.limits.max_results_page);
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
