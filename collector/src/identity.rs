//! Who is asking over HTTP: a device's bearer token, or, with mutual TLS
//! (`--tls-client-ca`), the client certificate it showed in the handshake.
//!
//! Invariants: a certificate counts only once rustls verified it against
//! the configured client CA (the server never sees an unverified one); it
//! names a device by its subject's common name, which must be a device the
//! collector knows (its token table: removing the device's line and
//! reloading revokes the certificate's access too, without waiting for the
//! certificate to expire); a request that shows a certificate and a token
//! of two different devices is refused.

use crate::shared::{Shared, error};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use sluice_serve::ClientCertificate;

/// The device `headers` (its bearer token) or `certificate` speak for.
pub(crate) fn device_of(
    shared: &Shared,
    headers: &HeaderMap,
    certificate: Option<&ClientCertificate>,
) -> Result<String, Response> {
    let tokens = shared.tokens();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let by_token = tokens.device_of(authorization);
    let Some(certificate) = certificate else {
        return by_token
            .map(str::to_owned)
            .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "missing or unknown bearer token"));
    };
    let named = common_name(&certificate.0).ok_or_else(|| {
        error(
            StatusCode::FORBIDDEN,
            "the client certificate's subject has no common name that is a device name",
        )
    })?;
    if !tokens.knows(&named) {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "the client certificate names device `{named}`, which this collector does not know (its tokens)"
            ),
        ));
    }
    match by_token {
        Some(other) if other != named => Err(error(
            StatusCode::FORBIDDEN,
            format!("the client certificate is device `{named}`'s but the token is `{other}`'s"),
        )),
        _ => Ok(named),
    }
}

/// The subject's common name of the certificate `der`, if it is a valid
/// device name.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = certificate
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    sluice_protocol::check_name(&name).ok()?;
    Some(name)
}
