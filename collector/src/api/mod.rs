//! The operator API: bundles, device groups, rollouts and the audit trail,
//! as JSON under `/v1/` (paths and types in
//! [`sluice_protocol::paths::operator`] and [`sluice_protocol::operator`];
//! prose in `docs/operator-api.md`). `sluice-collector`'s operator
//! commands are clients of it, so an operator needs only the URL and a
//! token, from any machine.
//!
//! Invariants:
//! * every call is authenticated by an API token before anything else
//!   (`operator.rs`): reads take any role, changes the operator
//!   role; device tokens get nothing here;
//! * every state-changing call that was authenticated is recorded in the
//!   audit trail (who, when, from where, what, and `ok` or why it was
//!   refused), in the store, in the transaction's wake: a change is never
//!   answered `ok` without its entry being written first;
//! * a bundle is stored only when a key the fleet pins (`--bundle-key`)
//!   signed it, its files are as listed and it has not expired: what every
//!   device checks first, so a rollout no device would install is refused
//!   at upload, not at its first device;
//! * a rollout names only devices with a token (an unknown name could
//!   never report, and would hold its stage forever);
//! * one bundle upload at a time, of at most [`crate::Limits::max_bundle_bytes`].

// Handlers fail with the answer to send: once per request, not worth
// boxing.
#![allow(clippy::result_large_err)]

mod bundles;
mod groups;
mod rollouts;

use crate::operator::{operator, writer};
use crate::shared::{Shared, error};
use crate::store::AuditRecord;
use crate::tokens::Caller;
use axum::Router;
use axum::extract::{ConnectInfo, Extension, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sluice_protocol::paths::operator as paths;
use std::net::SocketAddr;
use std::sync::Arc;

/// The largest page of the audit trail.
pub const MAX_AUDIT_PAGE: u32 = 1000;

/// The operator API's routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(paths::BUNDLES, get(bundles::list).post(bundles::upload))
        .route(paths::BUNDLE, get(bundles::show))
        .route(paths::GROUPS, get(groups::list))
        .route(
            paths::GROUP,
            get(groups::show).put(groups::set).delete(groups::delete),
        )
        .route(paths::ROLLOUTS, get(rollouts::list).post(rollouts::create))
        .route(paths::ROLLOUT, get(rollouts::show))
        .route(paths::ROLLOUT_ACTION, post(rollouts::action))
        .route(paths::AUDIT, get(audit))
}

/// The client's address (the collector's listener puts it in every
/// request).
type Remote = Option<Extension<ConnectInfo<SocketAddr>>>;

/// Who made a state-changing call, and from where.
pub(crate) struct Call {
    caller: Caller,
    remote: Option<String>,
}

impl Call {
    /// The caller, when it may change things (else the answer to send).
    fn writer(shared: &Shared, headers: &HeaderMap, remote: Remote) -> Result<Call, Response> {
        Ok(Call {
            caller: writer(shared, headers)?,
            remote: remote.map(|Extension(ConnectInfo(addr))| addr.to_string()),
        })
    }

    /// Record the call in the audit trail, then answer: `answer` as it is
    /// when the entry was written, a `500` naming the failure (and the
    /// change that was made without its entry) when it was not.
    fn record(
        &self,
        shared: &Shared,
        action: &str,
        target: String,
        detail: serde_json::Value,
        answer: Result<Response, (StatusCode, String)>,
    ) -> Response {
        let outcome = match &answer {
            Ok(_) => "ok".to_owned(),
            Err((status, why)) => format!("refused ({}): {why}", status.as_u16()),
        };
        let record = AuditRecord {
            actor: self.caller.name.clone(),
            role: self.caller.role.name().to_owned(),
            remote: self.remote.clone(),
            action: action.to_owned(),
            target: target.clone(),
            detail,
            outcome,
        };
        if let Err(e) = shared.store.audit(&record) {
            tracing::error!("audit trail: cannot record {action} {target}: {e}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "{action} {target}: {}, but the audit trail could not record it: {e}",
                    if answer.is_ok() { "done" } else { "refused" }
                ),
            );
        }
        answer.unwrap_or_else(|(status, why)| error(status, why))
    }
}

/// A JSON answer.
fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    (status, axum::Json(value)).into_response()
}

/// A store failure, for an answer.
fn failed(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Answer a read (any role): `f` on a blocking thread, its value as JSON,
/// or the error it names.
async fn read<T: serde::Serialize>(
    shared: Arc<Shared>,
    headers: &HeaderMap,
    f: impl FnOnce(&Shared) -> Result<T, (StatusCode, String)> + Send + 'static,
) -> Response {
    if let Err(response) = operator(&shared, headers) {
        return response;
    }
    blocking(move || match f(&shared) {
        Ok(value) => json(StatusCode::OK, &value),
        Err((status, why)) => error(status, why),
    })
    .await
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

/// Devices among `devices` that have no token, or the answer naming them.
fn known_devices(shared: &Shared, devices: &[String]) -> Result<(), (StatusCode, String)> {
    let tokens = shared.tokens();
    let unknown: Vec<&str> = devices
        .iter()
        .filter(|d| !tokens.knows(d))
        .map(String::as_str)
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "unknown device(s) {}: the collector has no token for them",
                unknown.join(", ")
            ),
        ))
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

async fn audit(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<AuditQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_AUDIT_PAGE);
    read(shared, &headers, move |shared| {
        shared
            .store
            .audit_page(query.after.unwrap_or(0), limit)
            .map_err(failed)
    })
    .await
}
