//! The local HTTP endpoint (`[ingest] listen`), served on the process's
//! tokio runtime:
//!
//! * `POST /v1/ingest/{pipeline}`: body = the raw input, `Content-Type` its
//!   media type, optional `Idempotency-Key`; `202 {"id", "seq", "replayed"}`
//!   once durably accepted; `404` unknown pipeline; `413` too large; `503`
//!   too much waiting (retry later, with `Retry-After`); `507` disk full;
//!   `400` a malformed key; `422` a key reused for a different input.
//!
//! A client that did not get its answer (the agent was killed mid-request,
//! the connection dropped) retries with the same `Idempotency-Key`: it gets
//! the same id, `"replayed": true`, and no second result is made.
//! * `GET /v1/status`: the outbox status as JSON. `GET /v1/health`: `ok`.
//!
//! Invariants: the body limit is enforced while reading (axum's
//! `DefaultBodyLimit`), back-pressure is checked before the body is read
//! into the journal, and the commit (an fsync) runs on a blocking thread,
//! never on an async worker.

use super::{Context, Incoming, IngestError, Running, Sink, Source};
use crate::config::IngestConfig;
use crate::outbox::{NewInput, Outbox};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sluice_protocol::ErrorBody;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The HTTP source, bound to its address.
pub struct HttpSource {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    max_input_bytes: usize,
}

impl HttpSource {
    /// The HTTP source of `[ingest]`, bound now (so that its address is known
    /// before it starts), if `listen` is set.
    pub fn from_config(config: &IngestConfig) -> Result<Option<HttpSource>, IngestError> {
        let Some(listen) = &config.listen else {
            return Ok(None);
        };
        let setup = |e: std::io::Error| IngestError::Setup {
            source_name: format!("ingest.listen {listen}"),
            message: format!("cannot listen: {e}"),
        };
        let listener = std::net::TcpListener::bind(listen).map_err(setup)?;
        listener.set_nonblocking(true).map_err(setup)?;
        let addr = listener.local_addr().map_err(setup)?;
        Ok(Some(HttpSource {
            listener,
            addr,
            max_input_bytes: config.max_input_bytes,
        }))
    }
}

struct Shared {
    sink: Arc<Sink>,
}

impl Source for HttpSource {
    fn describe(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn address(&self) -> Option<SocketAddr> {
        Some(self.addr)
    }

    fn start(self: Box<Self>, sink: Arc<Sink>, context: &Context) -> Result<Running, IngestError> {
        let app = axum::Router::new()
            .route("/v1/health", axum::routing::get(|| async { "ok" }))
            .route("/v1/status", axum::routing::get(get_status))
            .route("/v1/ingest/{pipeline}", axum::routing::post(post_ingest))
            .layer(DefaultBodyLimit::max(self.max_input_bytes))
            .with_state(Arc::new(Shared { sink }));
        let name = self.describe();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = self.listener;
        let task = context.runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(e) => return tracing::error!("ingest endpoint cannot start: {e}"),
            };
            let served = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = served.await {
                tracing::error!("ingest endpoint stopped: {e}");
            }
        });
        let runtime = context.runtime.clone();
        Ok(Running::new(
            name,
            move || {
                let _ = stop.send(());
            },
            move || {
                // Requests in flight finish; a client that never completes
                // its request is not waited for.
                let _ = runtime
                    .block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
            },
        ))
    }
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(ErrorBody::new(message))).into_response()
}

/// The answer for an input that was not accepted.
fn refusal(error: &IngestError) -> Response {
    let (status, retry_after) = match error {
        IngestError::UnknownPipeline { .. } => (StatusCode::NOT_FOUND, None),
        IngestError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, None),
        IngestError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, Some("1")),
        IngestError::BadKey => (StatusCode::BAD_REQUEST, None),
        IngestError::KeyConflict { .. } => (StatusCode::UNPROCESSABLE_ENTITY, None),
        IngestError::Outbox(e) if e.is_disk_full() => (StatusCode::INSUFFICIENT_STORAGE, Some("5")),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, None),
    };
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
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sink = &shared.sink;
    let checked = sink
        .check_pipeline(&pipeline)
        .and_then(|()| sink.check_size(body.len() as u64))
        .and_then(|()| sink.check_room(body.len() as u64));
    if let Err(e) = checked {
        return refusal(&e);
    }
    let key = match headers
        .get(sluice_protocol::IDEMPOTENCY_KEY)
        .map(|v| v.to_str())
    {
        None => None,
        Some(Ok(key)) => Some(key.to_owned()),
        Some(Err(_)) => return refusal(&IngestError::BadKey),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let input = NewInput {
        pipeline,
        content_type,
        attributes: Vec::new(),
        data: body.into(),
    };
    let sink = sink.clone();
    // The commit fsyncs: off the async workers.
    let accepted = tokio::task::spawn_blocking(move || match key {
        Some(key) => sink.accept_keyed(input, &key),
        None => {
            let incoming = Incoming { input, claim: None };
            sink.accept(std::slice::from_ref(&incoming))
                .map(|mut accepted| accepted.remove(0))
        }
    })
    .await;
    match accepted {
        Ok(Ok(accepted)) => (StatusCode::ACCEPTED, axum::Json(accepted)).into_response(),
        Ok(Err(e)) => refusal(&e),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("ingest task failed: {e}"),
        ),
    }
}

async fn get_status(State(shared): State<Arc<Shared>>) -> Response {
    let outbox: Arc<Outbox> = shared.sink.outbox.clone();
    match tokio::task::spawn_blocking(move || outbox.status()).await {
        Ok(Ok(status)) => axum::Json(status).into_response(),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
