//! The dashboard's session cookie: what `?token=OPERATOR_TOKEN` is
//! exchanged for, so that the token leaves the address bar.
//!
//! Invariants:
//! * the cookie never holds the operator token: its value is
//!   `v1.<issued>.<mac>`, `issued` the Unix time (seconds) it was issued
//!   and `mac` the HMAC-SHA256, keyed by the operator token (a secret only
//!   the collectors have), of the version and `issued`;
//! * its lifetime is the server's, not the browser's: a cookie is refused
//!   once `issued` is [`Limits::session_lifetime`](crate::Limits) old
//!   (default 7 days), whatever the browser keeps and sends (`Max-Age` only
//!   tells the browser the same); one issued more than [`CLOCK_SKEW_SECS`]
//!   in the future is refused too. Changing the operator token ends every
//!   session. Collectors sharing a store and an operator token accept each
//!   other's cookies;
//! * it is `HttpOnly`, `SameSite=Strict`, `Path=/dashboard`, and `Secure`
//!   when the request came over HTTPS: the collector serves plain HTTP, so
//!   that is what a TLS-terminating proxy says in `X-Forwarded-Proto:
//!   https` (or `Forwarded: proto=https`), or `--secure-cookie` for a
//!   proxy that says nothing. The header is believed without a flag: it
//!   can only add `Secure`, and a client that sends it over plain HTTP
//!   only makes its own browser withhold the cookie.

use axum::http::{HeaderMap, header};
use hmac::{KeyInit, Mac};
use std::time::Duration;

/// The dashboard's cookie.
pub const COOKIE: &str = "sluice_operator";

/// How far in the future a cookie's issue time may be, seconds: the clocks
/// of collectors sharing a store and an operator token may differ a bit.
pub const CLOCK_SKEW_SECS: u64 = 300;

type HmacSha256 = hmac::Hmac<sha2_v011::Sha256>;

/// What the MAC covers besides the issue time: the purpose and the
/// format's version, so the MAC cannot be taken for another one.
const CONTEXT: &[u8] = b"sluice-operator-session\0v1\0";

fn mac(token: &str, issued_secs: u64) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(CONTEXT);
    mac.update(issued_secs.to_string().as_bytes());
    mac
}

/// The cookie value for operator token `token`, issued at `issued_secs`
/// (Unix time, seconds).
pub fn session(token: &str, issued_secs: u64) -> String {
    let code = mac(token, issued_secs).finalize().into_bytes();
    format!("v1.{issued_secs}.{}", hex::encode(code))
}

/// Why a session cookie is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not one this operator token made (forged, another token's, an older
    /// format).
    Unknown,
    /// Made by this token, but older than the lifetime (or issued in the
    /// future).
    Expired,
}

/// Whether cookie `value` is a session of `token` still valid at
/// `now_secs` for `lifetime` (MAC compared in constant time).
pub fn check(value: &str, token: &str, now_secs: u64, lifetime: Duration) -> Result<(), Refused> {
    let mut parts = value.split('.');
    let (Some("v1"), Some(issued), Some(code), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refused::Unknown);
    };
    let issued_secs: u64 = issued.parse().map_err(|_| Refused::Unknown)?;
    let code = hex::decode(code).map_err(|_| Refused::Unknown)?;
    mac(token, issued_secs)
        .verify_slice(&code)
        .map_err(|_| Refused::Unknown)?;
    let young = now_secs.saturating_sub(issued_secs) < lifetime.as_secs();
    let not_future = issued_secs <= now_secs.saturating_add(CLOCK_SKEW_SECS);
    if young && not_future {
        Ok(())
    } else {
        Err(Refused::Expired)
    }
}

/// The request's session cookie, checked against `token`: `None` when it
/// sent none.
pub(crate) fn from_request(
    headers: &HeaderMap,
    token: &str,
    now_secs: u64,
    lifetime: Duration,
) -> Option<Result<(), Refused>> {
    let mut verdict = None;
    let pairs = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='));
    for (name, value) in pairs {
        if name != COOKIE {
            continue;
        }
        // A browser may send an old cookie beside a new one: any valid one
        // lets the request in.
        match check(value, token, now_secs, lifetime) {
            Ok(()) => return Some(Ok(())),
            Err(Refused::Expired) => verdict = Some(Err(Refused::Expired)),
            Err(Refused::Unknown) => {
                verdict.get_or_insert(Err(Refused::Unknown));
            }
        }
    }
    verdict
}

/// Whether the request reached the collector over HTTPS, as far as it can
/// tell: a proxy's `X-Forwarded-Proto: https` (its first value, the
/// client's side) or `Forwarded: proto=https`.
pub(crate) fn over_https(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|first| {
            first.split(';').any(|pair| {
                pair.trim().split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("proto")
                        && v.trim().trim_matches('"').eq_ignore_ascii_case("https")
                })
            })
        });
    forwarded_proto || forwarded
}

/// The `Set-Cookie` value of a session of `token` issued at `now_secs`.
pub(crate) fn set_cookie(token: &str, now_secs: u64, lifetime: Duration, secure: bool) -> String {
    format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/dashboard; Max-Age={}{}",
        session(token, now_secs),
        lifetime.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    #[test]
    fn a_session_lives_as_long_as_the_server_says_and_no_longer() {
        let now = 1_700_000_000;
        let fresh = session("op", now);
        assert!(!fresh.contains("op"), "{fresh}");
        assert_eq!(check(&fresh, "op", now, WEEK), Ok(()));
        assert_eq!(check(&fresh, "op", now + WEEK.as_secs() - 1, WEEK), Ok(()));
        assert_eq!(
            check(&fresh, "op", now + WEEK.as_secs(), WEEK),
            Err(Refused::Expired)
        );
        // Issued in the future beyond the skew: not believed.
        let ahead = session("op", now + CLOCK_SKEW_SECS + 1);
        assert_eq!(check(&ahead, "op", now, WEEK), Err(Refused::Expired));
        // Another token's, an edited issue time, garbage.
        assert_eq!(check(&fresh, "other", now, WEEK), Err(Refused::Unknown));
        let code = fresh.rsplit('.').next().unwrap();
        let edited = format!("v1.{}.{code}", now + 3600);
        assert_eq!(check(&edited, "op", now, WEEK), Err(Refused::Unknown));
        for junk in ["", "v1", "v1.x.00", "v2.1.00", "00", &format!("{fresh}.x")] {
            assert_eq!(
                check(junk, "op", now, WEEK),
                Err(Refused::Unknown),
                "{junk}"
            );
        }
    }

    #[test]
    fn https_is_what_the_proxy_says_first() {
        let with = |name: &'static str, value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.parse().unwrap());
            over_https(&headers)
        };
        assert!(with("x-forwarded-proto", "https"));
        assert!(with("x-forwarded-proto", "HTTPS, http"));
        assert!(!with("x-forwarded-proto", "http"));
        assert!(with("forwarded", "for=192.0.2.1;proto=https;by=x"));
        assert!(with("forwarded", "proto=\"https\""));
        assert!(!with("forwarded", "proto=http, proto=https"));
        assert!(!over_https(&HeaderMap::new()));
    }
}
