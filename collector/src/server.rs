//! The accept loop: hyper's HTTP/1 server under the connection limit and
//! the header read timeout of [`Limits`], with graceful shutdown.
//!
//! `axum::serve` would be shorter but sets neither a header read timeout
//! nor a connection limit, and 1,100 idle half-open connections were enough
//! to take the collector down. Devices speak HTTP/1.1 (plain HTTP has no
//! HTTP/2 negotiation), so only HTTP/1 is served.

use crate::limits::{CONNECTION_BUFFER_BYTES, Limits};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long to pause accepting after an accept error that is not about one
/// connection (out of file descriptors, say): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);

/// Serve `app` on `listener` until `shutdown` resolves, then let requests
/// in flight finish for at most [`Limits::shutdown_grace`].
pub(crate) async fn run(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(CONNECTION_BUFFER_BYTES);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Take the connection's slot before accepting it: past the limit,
        // connections wait in the listen queue, costing the collector nothing.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!("collector cannot accept connections: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Timeouts and clients going away: nothing to act on.
                tracing::debug!("connection closed: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(
                "requests still in flight after {:?} (--shutdown-grace): stopping anyway",
                limits.shutdown_grace
            );
        }
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
