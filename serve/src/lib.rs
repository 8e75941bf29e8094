//! # sluice-serve: HTTP endpoints that a hostile client cannot exhaust
//!
//! Sluice answers HTTP in two places, the collector and the device's local
//! ingest endpoint, and both face clients that may be careless or hostile.
//! This crate is what they share: [`serve`] runs an axum [`Router`] on
//! hyper's HTTP/1 server under a connection limit and a header read
//! deadline, with graceful shutdown bounded in time; [`read_body`] reads a
//! request body into memory under a size limit and a deadline; [`Tls`]
//! serves it over HTTPS (rustls), with client certificates if asked,
//! reloadable while serving.
//!
//! Why not `axum::serve`: it sets neither a header read timeout nor a
//! connection limit, and 1,100 idle half-open connections were enough to
//! take the collector down. Plain-HTTP clients speak HTTP/1.1 (there is no
//! HTTP/2 negotiation without TLS), so only HTTP/1 is served.
//!
//! Invariants:
//! * at most [`ServeLimits::max_connections`] connections are open; past it
//!   new ones wait in the kernel's listen queue, costing nothing;
//! * a connection that does not complete its request head within
//!   [`ServeLimits::header_read_timeout`] is closed (this also bounds how long
//!   an idle keep-alive connection is kept);
//! * each connection buffers at most [`ServeLimits::max_buf_size`] bytes
//!   of request head;
//! * after shutdown is asked for, requests in flight get
//!   [`ServeLimits::shutdown_grace`], then the server returns regardless.

#![deny(missing_docs)]

pub mod metrics;
mod tls;
pub use tls::{ClientCertificate, MAX_PEM_BYTES, Tls, TlsError, TlsFiles, read_pem};

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long to pause accepting after an accept error that is not about one
/// connection (out of file descriptors, say): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);

/// The bounds of [`serve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections open at once, at most.
    pub max_connections: usize,
    /// Deadline for a request head, from the connection's start or the end
    /// of the previous request.
    pub header_read_timeout: Duration,
    /// Bytes of request head buffered per connection, at most.
    pub max_buf_size: usize,
    /// How long requests in flight may still run after shutdown.
    pub shutdown_grace: Duration,
}

/// Serve `app` on `listener` until `shutdown` resolves, then let requests
/// in flight finish for at most [`ServeLimits::shutdown_grace`]. `name`
/// says whose server it is in log lines. Every request carries its peer's
/// address as `axum::extract::ConnectInfo<SocketAddr>`. With `tls`, HTTPS
/// only: each connection is accepted with the configuration current then,
/// its handshake bounded by the header read timeout, and requests of a
/// client that presented a certificate carry it ([`ClientCertificate`]).
pub async fn serve(
    name: &str,
    listener: TcpListener,
    app: Router,
    limits: &ServeLimits,
    tls: Option<Arc<Tls>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_buf_size);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Take the connection's slot before accepting it: past the limit,
        // connections wait in the listen queue, costing the server nothing.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!("{name} cannot accept connections: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let (builder, app, watcher) = (builder.clone(), app.clone(), graceful.watcher());
        let handshake = tls
            .as_ref()
            .map(|tls| (tls.acceptor(), limits.header_read_timeout));
        tokio::spawn(async move {
            let _permit = permit;
            let Some((acceptor, deadline)) = handshake else {
                return connection(builder, stream, app, peer, None, watcher).await;
            };
            let stream = match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!("TLS handshake with {peer} failed: {e}"),
                Err(_) => {
                    return tracing::debug!("TLS handshake with {peer} took over {deadline:?}");
                }
            };
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|c| ClientCertificate(c.to_vec()));
            connection(builder, stream, app, peer, certificate, watcher).await
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(
                "{name}: requests still in flight after {:?}: stopping anyway",
                limits.shutdown_grace
            );
        }
    }
}

/// Serve one connection's requests until it closes.
async fn connection<I>(
    builder: http1::Builder,
    io: I,
    app: Router,
    peer: SocketAddr,
    certificate: Option<ClientCertificate>,
    watcher: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Handlers see the client's address as axum's `ConnectInfo`, and its
    // certificate if it showed one.
    let service = TowerToHyperService::new(tower::ServiceExt::map_request(
        app,
        move |mut request: hyper::Request<hyper::body::Incoming>| {
            let extensions = request.extensions_mut();
            extensions.insert(axum::extract::ConnectInfo(peer));
            if let Some(certificate) = &certificate {
                extensions.insert(certificate.clone());
            }
            request
        },
    ));
    if let Err(e) = watcher
        .watch(builder.serve_connection(TokioIo::new(io), service))
        .await
    {
        // Timeouts and clients going away: nothing to act on.
        tracing::debug!("connection closed: {e}");
    }
}

/// Errors about one connection (reset before it was accepted), after which
/// accepting goes on at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Why [`read_body`] returned no body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// More than the limit arrived (or was announced).
    #[error("the request body exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The whole body did not arrive within the deadline.
    #[error("the request body was not received within {timeout:?}")]
    TimedOut {
        /// The deadline.
        timeout: Duration,
    },
    /// The connection failed while reading.
    #[error("cannot read the request body: {0}")]
    Read(String),
}

/// Read `body` into one buffer of at most `limit` bytes, within `timeout`.
/// `declared` is the request's `Content-Length`, if any: a body announced
/// larger than `limit` is refused before a byte of it is read, and the
/// buffer is sized once (never more than `limit`). (Not
/// `Collected::to_bytes`, which copies a body that came in several chunks:
/// twice the memory at its peak.)
pub async fn read_body(
    body: Body,
    declared: Option<u64>,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, BodyError> {
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let capacity = declared.unwrap_or(0) as usize;
    tokio::time::timeout(timeout, read_all(body, capacity, limit))
        .await
        .unwrap_or(Err(BodyError::TimedOut { timeout }))
}

async fn read_all(mut body: Body, capacity: usize, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::with_capacity(capacity.min(limit));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// Compare secrets (tokens, session cookies) in time that depends only on
/// their lengths, so that response times do not tell an attacker how much
/// of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The request's `Content-Length`, if it has a valid one.
pub fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
