//! `/v1/groups`: named sets of devices (a device may be in several, so a
//! group is also a tag), to roll out to.

use super::{Call, Remote, blocking, json, known_devices, read};
use crate::shared::Shared;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use sluice_protocol::operator::{Group, GroupDevices, GroupList};
use std::sync::Arc;

/// The most devices a group holds.
pub const MAX_GROUP_DEVICES: usize = 100_000;

pub(super) async fn list(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    read(shared, &headers, |shared| {
        let groups = shared.store.groups(None).map_err(super::failed)?;
        Ok(GroupList { groups })
    })
    .await
}

pub(super) async fn show(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    read(shared, &headers, move |shared| {
        let mut groups = shared.store.groups(Some(&name)).map_err(super::failed)?;
        groups
            .pop()
            .ok_or_else(|| (StatusCode::NOT_FOUND, format!("no group `{name}`")))
    })
    .await
}

/// `PUT`: the group becomes exactly the devices given (an empty list
/// deletes it).
pub(super) async fn set(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    remote: Remote,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let call = match Call::writer(&shared, &headers, remote) {
        Ok(call) => call,
        Err(response) => return response,
    };
    blocking(move || {
        let target = format!("group {name}");
        let request: Result<GroupDevices, _> = serde_json::from_slice(&body);
        let detail = match &request {
            Ok(r) => serde_json::json!({ "devices": r.devices }),
            Err(_) => serde_json::json!({ "bytes": body.len() }),
        };
        let answer = (|| {
            sluice_protocol::check_name(&name)
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("group `{name}`: {e}")))?;
            let mut devices = request
                .map_err(|e| (StatusCode::BAD_REQUEST, format!("body: {e}")))?
                .devices;
            if devices.len() > MAX_GROUP_DEVICES {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "{} devices: a group holds at most {MAX_GROUP_DEVICES}",
                        devices.len()
                    ),
                ));
            }
            devices.sort();
            devices.dedup();
            known_devices(&shared, &devices)?;
            shared
                .store
                .set_group(&name, &devices)
                .map_err(super::failed)?;
            Ok(json(
                StatusCode::OK,
                &Group {
                    name: name.clone(),
                    devices,
                },
            ))
        })();
        call.record(&shared, "group.set", target, detail, answer)
    })
    .await
}

pub(super) async fn delete(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    remote: Remote,
    Path(name): Path<String>,
) -> Response {
    let call = match Call::writer(&shared, &headers, remote) {
        Ok(call) => call,
        Err(response) => return response,
    };
    blocking(move || {
        let answer = shared
            .store
            .set_group(&name, &[])
            .map(|()| axum::response::IntoResponse::into_response(StatusCode::NO_CONTENT))
            .map_err(super::failed);
        call.record(
            &shared,
            "group.delete",
            format!("group {name}"),
            serde_json::json!({}),
            answer,
        )
    })
    .await
}
