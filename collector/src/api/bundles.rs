//! `/v1/bundles`: upload (checked against the fleet's pinned keys), list,
//! inspect and download.

use super::{Call, Remote, blocking, json, read};
use crate::operator::operator;
use crate::shared::{Shared, error};
use crate::store::BundleError;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sluice_protocol::operator::BundleList;
use sluice_serve::BodyError;
use std::sync::Arc;

pub(super) async fn upload(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    remote: Remote,
    body: Body,
) -> Response {
    let call = match Call::writer(&shared, &headers, remote) {
        Ok(call) => call,
        Err(response) => return response,
    };
    let limit = shared.limits.max_bundle_bytes;
    // One upload at a time: what uploads hold is one bundle, twice.
    let Ok(permit) = shared.bundle_uploads.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "another bundle is being uploaded; try again when it is done",
        );
    };
    let read = sluice_serve::read_body(
        body,
        sluice_serve::content_length(&headers),
        limit,
        crate::limits::BUNDLE_UPLOAD_TIMEOUT,
    )
    .await;
    blocking(move || {
        let _permit = permit;
        let body = match read {
            Ok(body) => body,
            Err(e) => {
                let status = match e {
                    BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    BodyError::TimedOut { .. } => StatusCode::REQUEST_TIMEOUT,
                    _ => StatusCode::BAD_REQUEST,
                };
                let why = match e {
                    BodyError::TooLarge { .. } => {
                        format!("{e} (collector flag --max-bundle-bytes)")
                    }
                    e => e.to_string(),
                };
                return call.record(&shared, "bundle.upload", "bundle".into(), serde_json::json!({}), Err((status, why)));
            }
        };
        let detail = serde_json::json!({ "bytes": body.len() });
        let answer = if shared.bundle_keys.is_empty() {
            Err((
                StatusCode::CONFLICT,
                "this collector pins no bundle keys, so it cannot tell whether devices would accept a bundle: start it with --bundle-key (the public keys the devices pin)".to_owned(),
            ))
        } else {
            match shared.store.put_bundle(&body, Some(&shared.bundle_keys)) {
                Ok((info, new)) => {
                    let status = if new { StatusCode::CREATED } else { StatusCode::OK };
                    let target = format!("bundle {}/{}", info.name, info.version);
                    let detail = serde_json::json!({
                        "bytes": info.bytes, "sha256": info.sha256,
                        "signed_by": info.signed_by, "reverts_to": info.reverts_to, "new": new,
                    });
                    return call.record(&shared, "bundle.upload", target, detail, Ok(json(status, &info)));
                }
                Err(e) => Err(match e {
                    BundleError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
                    BundleError::VersionTaken { .. } => (StatusCode::CONFLICT, e.to_string()),
                    BundleError::Archive(_) | BundleError::Refused(_) => {
                        (StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
                    }
                    e => super::failed(e),
                }),
            }
        };
        call.record(&shared, "bundle.upload", "bundle".into(), detail, answer)
    })
    .await
}

pub(super) async fn list(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    read(shared, &headers, |shared| {
        let bundles = shared.store.bundles().map_err(super::failed)?;
        Ok(BundleList { bundles })
    })
    .await
}

/// One bundle: its facts as JSON, or the file itself when the client
/// asks for `application/octet-stream` (a revert is built from it).
pub(super) async fn show(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, u64)>,
) -> Response {
    let missing = move |name: &str| {
        (
            StatusCode::NOT_FOUND,
            format!("no bundle `{name}` version {version}"),
        )
    };
    let file = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/octet-stream"));
    if !file {
        // The facts alone: the file may be hundreds of MiB.
        return read(shared, &headers, move |shared| {
            let all = shared.store.bundles().map_err(super::failed)?;
            all.into_iter()
                .find(|b| b.name == name && b.version == version)
                .ok_or_else(|| missing(&name))
        })
        .await;
    }
    if let Err(response) = operator(&shared, &headers) {
        return response;
    }
    blocking(move || match shared.store.bundle(&name, version) {
        Ok(Some((_, body))) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
        }
        Ok(None) => {
            let (status, why) = missing(&name);
            error(status, why)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    })
    .await
}
