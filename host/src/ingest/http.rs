//! The local HTTP endpoint (`[ingest] listen`), served on the process's
//! tokio runtime:
//!
//! * `POST /v1/ingest/{pipeline}`: body = the raw input, `Content-Type` its
//!   media type, optional `Idempotency-Key`; the result carries the
//!   attributes `source = http`, `remote_addr` and `idempotency_key` (when
//!   given), as a folder's carry `file`; `202 {"id", "seq", "replayed"}`
//!   once durably accepted; `401` without the ingest token (when one is
//!   configured); `404` unknown pipeline; `413` too large; `503` too much
//!   waiting or too many requests at once (retry later, with `Retry-After`);
//!   `408` a body that does not arrive in time; `507` disk full; `400` a
//!   malformed key; `422` a key reused for a different input.
//!
//! A client that did not get its answer (the agent was killed mid-request,
//! the connection dropped) retries with the same `Idempotency-Key`: it gets
//! the same id, `"replayed": true`, and no second result is made.
//! * `POST /v1/infer/{pipeline}`: the same, then waits for the result and
//!   answers it ([`super::infer`]).
//! * the admin endpoint's routes ([`crate::admin`]): `/metrics`,
//!   `/healthz`, `/readyz`, `/v1/status`, guarded by the ingest token.
//!
//! Invariants:
//! * the token is checked from the headers before anything else: without
//!   it, nothing of the body is read;
//! * memory is bounded: at most `ingest.max_concurrent_requests` bodies are
//!   read or stored at once (more get `503` before their body is read),
//!   each at most `max_input_bytes` (a larger `Content-Length` is refused
//!   unread, a body that grows past it is cut off), so bodies take at most
//!   their product; connections are at most `ingest.max_connections`, each
//!   with a bounded header buffer ([`sluice_serve`]);
//! * time is bounded: a request head must arrive within
//!   `ingest.header_timeout_ms` and its body within `ingest.body_timeout_ms`;
//! * back-pressure is checked before the body is read into the journal, and
//!   the commit (an fsync) runs on a blocking thread, never on an async
//!   worker.

// The steps of a handler fail with the answer to send (a `Response`, 128
// bytes): once per request, not worth boxing.
#![allow(clippy::result_large_err)]

use super::{Context, Incoming, IngestError, Running, SHUTDOWN_GRACE, Sink, Source};
use crate::admin::json_error;
use crate::config::IngestConfig;
use crate::outbox::NewInput;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sluice_protocol::paths;
use sluice_serve::{BodyError, ServeLimits};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

use crate::memory::CONNECTION_BUFFER_BYTES;

/// The HTTP source, bound to its address.
pub struct HttpSource {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    token: Option<String>,
    max_concurrent_requests: usize,
    body_timeout: Duration,
    infer_timeout: Duration,
    max_waiting_calls: usize,
    serve: ServeLimits,
}

impl HttpSource {
    /// The HTTP source of `[ingest]`, bound now (so that its address is known
    /// before it starts), if `listen` is set.
    pub fn from_config(config: &IngestConfig) -> Result<Option<HttpSource>, IngestError> {
        let Some(listen) = &config.listen else {
            return Ok(None);
        };
        let source_name = format!("ingest.listen {listen}");
        let token = config.bearer_token().map_err(|e| IngestError::Setup {
            source_name: source_name.clone(),
            message: e.to_string(),
        })?;
        let setup = |e: std::io::Error| IngestError::Setup {
            source_name: source_name.clone(),
            message: format!("cannot listen: {e}"),
        };
        let listener = std::net::TcpListener::bind(listen).map_err(setup)?;
        listener.set_nonblocking(true).map_err(setup)?;
        let addr = listener.local_addr().map_err(setup)?;
        if token.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                "INSECURE: HTTP ingest on {addr} accepts inputs from anyone who can reach it (ingest.insecure_allow_anyone); set ingest.token"
            );
        }
        Ok(Some(HttpSource {
            listener,
            addr,
            token,
            max_concurrent_requests: config.max_concurrent_requests,
            body_timeout: Duration::from_millis(config.body_timeout_ms),
            infer_timeout: Duration::from_millis(config.infer_timeout_ms),
            max_waiting_calls: config.max_waiting_calls,
            serve: ServeLimits {
                max_connections: config.max_connections,
                header_read_timeout: Duration::from_millis(config.header_timeout_ms),
                max_buf_size: CONNECTION_BUFFER_BYTES,
                shutdown_grace: SHUTDOWN_GRACE,
            },
        }))
    }
}

pub(super) struct Shared {
    pub(super) sink: Arc<Sink>,
    /// `Bearer <token>`, if one is required.
    authorization: Option<String>,
    /// One permit per request reading or storing its body.
    requests: Arc<Semaphore>,
    max_concurrent_requests: usize,
    body_timeout: Duration,
    /// One permit per synchronous call waiting for its result.
    pub(super) calls: Arc<Semaphore>,
    pub(super) max_waiting_calls: usize,
    pub(super) infer_timeout: Duration,
}

impl Shared {
    /// The refusal of a request without the right token, if one is required.
    pub(super) fn unauthorized(&self, headers: &HeaderMap) -> Option<Response> {
        crate::admin::unauthorized(self.authorization.as_deref(), headers, "ingest.token")
    }
}

impl Source for HttpSource {
    fn describe(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn address(&self) -> Option<SocketAddr> {
        Some(self.addr)
    }

    fn start(self: Box<Self>, sink: Arc<Sink>, context: &Context) -> Result<Running, IngestError> {
        let name = self.describe();
        // The admin routes too, for agents without `[admin]`.
        let admin = crate::admin::routes(sink.clone(), self.token.clone(), "ingest.token");
        let app = axum::Router::new()
            .route(paths::agent::INGEST, axum::routing::post(post_ingest))
            .route(
                paths::agent::INFER,
                axum::routing::post(super::infer::post_infer),
            )
            .with_state(Arc::new(Shared {
                sink,
                authorization: self.token.map(|t| format!("Bearer {t}")),
                requests: Arc::new(Semaphore::new(self.max_concurrent_requests)),
                max_concurrent_requests: self.max_concurrent_requests,
                body_timeout: self.body_timeout,
                calls: Arc::new(Semaphore::new(self.max_waiting_calls)),
                max_waiting_calls: self.max_waiting_calls,
                infer_timeout: self.infer_timeout,
            }))
            .merge(admin);
        Ok(Running::serve(
            name,
            "ingest",
            self.listener,
            app,
            self.serve,
            &context.runtime,
        ))
    }
}

/// `503` saying `why`, to come back in a second: a request refused before
/// its body is read, for want of a permit.
pub(super) fn busy(why: String) -> Response {
    let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, why);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The answer for an input that was not accepted, counted by reason.
pub(super) fn refused(sink: &Sink, error: &IngestError) -> Response {
    use StatusCode as S;
    let (status, retry_after, reason) = match error {
        IngestError::UnknownPipeline { .. } => (S::NOT_FOUND, None, "unknown_pipeline"),
        IngestError::TooLarge { .. } => (S::PAYLOAD_TOO_LARGE, None, "too_large"),
        IngestError::Busy { .. } => (S::SERVICE_UNAVAILABLE, Some("1"), "busy"),
        IngestError::PipelineDown { .. } => (S::SERVICE_UNAVAILABLE, Some("60"), "pipeline_down"),
        IngestError::BadKey => (S::BAD_REQUEST, None, "bad_key"),
        IngestError::KeyConflict { .. } => (S::UNPROCESSABLE_ENTITY, None, "key_conflict"),
        IngestError::Outbox(e) if e.is_disk_full() => {
            (S::INSUFFICIENT_STORAGE, Some("5"), "disk_full")
        }
        _ => (S::INTERNAL_SERVER_ERROR, None, "other"),
    };
    sink.metrics().refused(reason);
    let mut response = json_error(status, error.to_string());
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
    }
    response
}

async fn post_ingest(
    State(shared): State<Arc<Shared>>,
    UrlPath(pipeline): UrlPath<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match receive(&shared, pipeline, peer, &headers, body).await {
        Ok(accepted) => (StatusCode::ACCEPTED, axum::Json(accepted)).into_response(),
        Err(response) => response,
    }
}

/// Check, read and durably accept the input a request carries for
/// `pipeline`: its acceptance, or the answer to send instead.
pub(super) async fn receive(
    shared: &Arc<Shared>,
    pipeline: String,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
) -> Result<super::Accepted, Response> {
    let refuse = |sink: &Sink, e: &IngestError| Err(refused(sink, e));
    if let Some(denied) = shared.unauthorized(headers) {
        return Err(denied);
    }
    let sink = &shared.sink;
    let declared = sluice_serve::content_length(headers);
    let checked = sink
        .check_pipeline(&pipeline)
        .and_then(|()| sink.check_size(declared.unwrap_or(0)))
        .and_then(|()| sink.check_room(declared.unwrap_or(0)));
    if let Err(e) = checked {
        return refuse(sink, &e);
    }
    // Held until the answer: bodies in memory are bounded by the permits
    // times the size limit.
    let Ok(permit) = shared.requests.clone().try_acquire_owned() else {
        return Err(busy(format!(
            "{} inputs are already being received (ingest.max_concurrent_requests); retry later",
            shared.max_concurrent_requests
        )));
    };
    let limit = usize::try_from(sink.max_input_bytes()).unwrap_or(usize::MAX);
    let body = match sluice_serve::read_body(body, declared, limit, shared.body_timeout).await {
        Ok(body) => body,
        Err(BodyError::TooLarge { .. }) => {
            return refuse(
                sink,
                &IngestError::TooLarge {
                    bytes: declared.unwrap_or(limit as u64 + 1),
                    max: limit as u64,
                },
            );
        }
        Err(e @ BodyError::TimedOut { .. }) => {
            return Err(json_error(
                StatusCode::REQUEST_TIMEOUT,
                format!("{e} (ingest.body_timeout_ms)"),
            ));
        }
        Err(e) => return Err(json_error(StatusCode::BAD_REQUEST, e.to_string())),
    };
    if let Err(e) = sink.check_room(body.len() as u64) {
        return refuse(sink, &e);
    }
    let key = match headers
        .get(sluice_protocol::IDEMPOTENCY_KEY)
        .map(|v| v.to_str())
    {
        None => None,
        Some(Ok(key)) => Some(key.to_owned()),
        Some(Err(_)) => return refuse(sink, &IngestError::BadKey),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    // Where the input came from, as the folder source names the file.
    let mut attributes = vec![
        ("source".to_owned(), "http".to_owned()),
        ("remote_addr".to_owned(), peer.to_string()),
    ];
    if let Some(key) = &key {
        attributes.push(("idempotency_key".to_owned(), key.clone()));
    }
    let input = NewInput {
        pipeline,
        content_type,
        attributes,
        data: body,
    };
    let sink = sink.clone();
    let answer_sink = sink.clone();
    // The commit fsyncs: off the async workers.
    let accepted = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        match key {
            Some(key) => sink.accept_keyed(input, &key),
            None => sink.accept_one(Incoming { input, claim: None }),
        }
    })
    .await;
    match accepted {
        Ok(Ok(accepted)) => Ok(accepted),
        Ok(Err(e)) => refuse(&answer_sink, &e),
        Err(e) => Err(json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("ingest task failed: {e}"),
        )),
    }
}
