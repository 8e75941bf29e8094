//! Who calls the operator's side: an API token (the operator token or a
//! named one, [`Caller`]) as a bearer header, or the dashboard's session
//! cookie ([`crate::session`]) that `?token=` is exchanged for. A device
//! token is never a caller here. The cookie only reads (a viewer): every
//! change needs the bearer header, so no page can be made to send one.

use crate::session;
use crate::shared::{Shared, error, page};
use crate::store::now_ms;
use crate::tokens::{Caller, Role};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// Why a request is not the operator's.
pub(crate) enum NotOperator {
    /// No or unknown credentials (or no operator token configured).
    Unknown(&'static str),
    /// A device's token.
    Device,
}

pub(crate) fn operator_check(shared: &Shared, headers: &HeaderMap) -> Result<Caller, NotOperator> {
    let tokens = shared.tokens();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(token) = bearer {
        if let Some(caller) = tokens.caller(token) {
            return Ok(caller);
        }
        if tokens
            .device_of(Some(format!("Bearer {token}").as_str()))
            .is_some()
        {
            return Err(NotOperator::Device);
        }
    }
    let Some(op) = tokens.operator() else {
        return Err(NotOperator::Unknown(
            "missing or unknown API token (start the collector with --operator-token-file or --api-tokens)",
        ));
    };
    match session::from_request(headers, op, now_secs(), shared.limits.session_lifetime) {
        Some(Ok(())) => Ok(Caller {
            name: "dashboard".into(),
            role: Role::Viewer,
        }),
        Some(Err(session::Refused::Expired)) => Err(NotOperator::Unknown(
            "the dashboard session expired (collector flag --session-lifetime): open /dashboard?token=OPERATOR_TOKEN again",
        )),
        _ => Err(NotOperator::Unknown("missing or unknown operator token")),
    }
}

/// Now, in seconds since the Unix epoch.
fn now_secs() -> u64 {
    now_ms().max(0) as u64 / 1000
}

/// A caller allowed to read (any role), or the JSON error answer.
pub(crate) fn operator(shared: &Shared, headers: &HeaderMap) -> Result<Caller, Response> {
    operator_check(shared, headers).map_err(|e| match e {
        NotOperator::Unknown(why) => error(StatusCode::UNAUTHORIZED, why),
        NotOperator::Device => error(
            StatusCode::FORBIDDEN,
            "a device token cannot read the fleet; use an API token",
        ),
    })
}

/// A caller allowed to change things (the operator role), or the JSON
/// error answer (`403` for a viewer).
pub(crate) fn writer(shared: &Shared, headers: &HeaderMap) -> Result<Caller, Response> {
    let caller = operator(shared, headers)?;
    if caller.role < Role::Operator {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "token `{}` is a {}: this call needs an operator token",
                caller.name,
                caller.role.name()
            ),
        ));
    }
    Ok(caller)
}

#[derive(Deserialize)]
pub(crate) struct DashboardQuery {
    token: Option<String>,
}

/// The dashboard's authentication: `?token=` (a browser cannot be made to
/// send a bearer header by following a link) is exchanged for a session
/// cookie ([`session`]: HttpOnly, SameSite=Strict, Secure over HTTPS,
/// expiring on the server's word) and a redirect to the same page without
/// it, so the token leaves the address bar, history and `Referer`; after
/// that the cookie (or a bearer header) authenticates. `Err`: the answer
/// to send instead of the page.
pub(crate) fn dashboard_auth(
    shared: &Shared,
    headers: &HeaderMap,
    path: &str,
    query: &DashboardQuery,
) -> Result<(), Response> {
    if let Some(token) = &query.token {
        if !shared.tokens().is_operator(token.trim()) {
            return Err(page(
                StatusCode::UNAUTHORIZED,
                crate::dashboard::denied("This is not the operator token."),
            ));
        }
        let secure = shared.limits.secure_cookie || session::over_https(headers);
        let cookie = session::set_cookie(
            token.trim(),
            now_secs(),
            shared.limits.session_lifetime,
            secure,
        );
        let mut response = StatusCode::SEE_OTHER.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::LOCATION,
            HeaderValue::from_str(path).expect("paths from the router are header-safe"),
        );
        headers.insert(
            header::SET_COOKIE,
            HeaderValue::from_str(&cookie).expect("a session cookie is header-safe"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Err(response);
    }
    operator_check(shared, headers).map(drop).map_err(|e| {
        let why = match e {
            NotOperator::Unknown(why) => why,
            NotOperator::Device => "a device token cannot read the fleet",
        };
        page(StatusCode::UNAUTHORIZED, crate::dashboard::denied(why))
    })
}
