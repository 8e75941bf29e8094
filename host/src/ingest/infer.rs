//! `POST /v1/infer/{pipeline}`: a synchronous call for local consumers
//! that need the decision now (a reject gate, a valve). The input goes the
//! way of every other (journaled, batched with whatever else is queued,
//! its result stored and synced upstream); the call waits for that result
//! and answers it.
//!
//! Answers: `200` with the result record (`X-Sluice-Outcome: ok` or
//! `error`: a failed item is a result too); `504` with the input's id when
//! the result did not come within `ingest.infer_timeout_ms` (it is still
//! made and synced; read it later with `GET /v1/results` when
//! `outbox.local_max_bytes` keeps results); `503` when
//! `ingest.max_waiting_calls` calls already wait; otherwise what `POST
//! /v1/ingest` answers for an input it does not accept.
//!
//! Invariants: the answer is sent only once its result is committed; a
//! retried call with the same `Idempotency-Key` gets the same result, not
//! a second one; a call that gives up leaves nothing waiting.

use super::http::{Shared, busy, receive};
use crate::admin::json_error;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;

/// The header that says whether the result is a failure.
pub const OUTCOME_HEADER: &str = "x-sluice-outcome";

pub(super) async fn post_infer(
    State(shared): State<Arc<Shared>>,
    UrlPath(pipeline): UrlPath<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(denied) = shared.unauthorized(&headers) {
        return denied;
    }
    let Ok(_call) = shared.calls.clone().try_acquire_owned() else {
        return busy(format!(
            "{} calls already wait for their results (ingest.max_waiting_calls); retry later",
            shared.max_waiting_calls
        ));
    };
    let accepted = match receive(&shared, pipeline, peer, &headers, body).await {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    let mut waiter = shared.sink.completions.wait(&accepted.id);
    // Committed already (between the acceptance and the wait, or a retry
    // of a call whose result was made)? Asked after waiting begins, so a
    // commit in between is seen one way or the other.
    let (outbox, id) = (shared.sink.outbox.clone(), accepted.id.clone());
    let stored = tokio::task::spawn_blocking(move || {
        outbox
            .record(&id)
            .and_then(|found| found.map_or_else(|| outbox.local_record(&id), |r| Ok(Some(r))))
    })
    .await;
    if let Ok(Ok(Some(record))) = stored {
        return answer(record);
    }
    match tokio::time::timeout(shared.infer_timeout, &mut waiter.result).await {
        Ok(Ok(record)) => answer(record),
        _ => {
            let mut response = json_error(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "no result for input {} within {} ms (ingest.infer_timeout_ms); it is journaled: its result will be stored and synced (and readable at /v1/results when outbox.local_max_bytes keeps results)",
                    accepted.id,
                    shared.infer_timeout.as_millis()
                ),
            );
            if let Ok(id) = HeaderValue::from_str(&accepted.id) {
                response.headers_mut().insert("x-sluice-id", id);
            }
            response
        }
    }
}

/// `200` with the result record.
fn answer(record: Vec<u8>) -> Response {
    // The record is the agent's own JSON: whether it failed is a field.
    let failed = serde_json::from_slice::<serde_json::Value>(&record)
        .map(|r| r.get("error").is_some_and(|e| !e.is_null()))
        .unwrap_or(false);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (
                header::HeaderName::from_static(OUTCOME_HEADER),
                if failed { "error" } else { "ok" },
            ),
        ],
        record,
    )
        .into_response()
}
