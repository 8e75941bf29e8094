//! `/v1/rollouts`: start a staged rollout of an uploaded bundle to a group
//! or a list of devices, with a policy; pause, resume, abort; status.

use super::{Call, Remote, blocking, json, known_devices, read};
use crate::rollout::{Plan, RolloutError};
use crate::shared::{Shared, error};
use crate::store::RolloutActionError;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use sluice_protocol::operator::{ROLLOUT_ACTIONS, RolloutList, RolloutRequest};
use std::sync::Arc;

pub(super) async fn list(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    read(shared, &headers, |shared| {
        let rollouts = shared.store.rollouts().map_err(super::failed)?;
        Ok(RolloutList { rollouts })
    })
    .await
}

pub(super) async fn show(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    read(shared, &headers, move |shared| {
        shared
            .store
            .rollout(id)
            .map_err(super::failed)?
            .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no rollout {id}")))
    })
    .await
}

pub(super) async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    remote: Remote,
    body: axum::body::Bytes,
) -> Response {
    let call = match Call::writer(&shared, &headers, remote) {
        Ok(call) => call,
        Err(response) => return response,
    };
    blocking(move || {
        let request: Result<RolloutRequest, _> = serde_json::from_slice(&body);
        let (target, detail) = match &request {
            Ok(r) => (
                format!("bundle {}/{}", r.name, r.version),
                serde_json::to_value(r).unwrap_or_default(),
            ),
            Err(_) => (
                "rollout".to_owned(),
                serde_json::json!({ "bytes": body.len() }),
            ),
        };
        let answer = (|| {
            let request = request.map_err(|e| (StatusCode::BAD_REQUEST, format!("body: {e}")))?;
            let devices = match (&request.devices, &request.group) {
                (Some(devices), None) => devices.clone(),
                (None, Some(group)) => shared
                    .store
                    .groups(Some(group))
                    .map_err(super::failed)?
                    .pop()
                    .map(|g| g.devices)
                    .ok_or_else(|| {
                        (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            format!("no group `{group}`"),
                        )
                    })?,
                _ => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        "name the devices with exactly one of `devices` and `group`".to_owned(),
                    ));
                }
            };
            known_devices(&shared, &devices)?;
            let plan = Plan {
                name: request.name,
                version: request.version,
                devices,
                stages: request.stages,
                policy: request.policy,
            };
            let rollout = shared.store.create_rollout(&plan).map_err(refused)?;
            Ok(json(StatusCode::CREATED, &rollout))
        })();
        call.record(&shared, "rollout.create", target, detail, answer)
    })
    .await
}

pub(super) async fn action(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    remote: Remote,
    Path((id, action)): Path<(i64, String)>,
) -> Response {
    let call = match Call::writer(&shared, &headers, remote) {
        Ok(call) => call,
        Err(response) => return response,
    };
    let Some(action) = ROLLOUT_ACTIONS.into_iter().find(|a| *a == action) else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no rollout action `{action}`: {}",
                ROLLOUT_ACTIONS.join(", ")
            ),
        );
    };
    blocking(move || {
        let answer = shared
            .store
            .rollout_action(id, action)
            .map_err(refused)
            .and_then(|()| match shared.store.rollout(id) {
                Ok(Some(rollout)) => Ok(json(StatusCode::OK, &rollout)),
                Ok(None) => Err((StatusCode::NOT_FOUND, format!("no rollout {id}"))),
                Err(e) => Err(super::failed(e)),
            });
        call.record(
            &shared,
            &format!("rollout.{action}"),
            format!("rollout {id}"),
            serde_json::json!({}),
            answer,
        )
    })
    .await
}

/// The answer for a refused rollout command.
fn refused(e: RolloutActionError) -> (StatusCode, String) {
    match e {
        RolloutActionError::Refused(e) => {
            let status = match e {
                RolloutError::Unknown(_) => StatusCode::NOT_FOUND,
                RolloutError::Busy { .. } | RolloutError::State { .. } => StatusCode::CONFLICT,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            (status, e.to_string())
        }
        e => super::failed(e),
    }
}
