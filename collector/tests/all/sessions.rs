//! The dashboard's session cookie: `Secure` when the request came over
//! HTTPS (a TLS proxy says so) or `--secure-cookie`, and refused by the
//! collector once its lifetime is over, whatever the browser sends.

use crate::common::*;
use sha2::{Digest, Sha256};
use sluice_collector_core::Limits;
use sluice_collector_core::session::{COOKIE, session};

const OPERATOR: &str = "op-secret-1";

fn collector(limits: Limits) -> Running {
    let mut tokens = tokens();
    tokens.set_operator(OPERATOR).unwrap();
    Running::start_for(tokens, limits)
}

fn no_redirects() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `Set-Cookie` of logging in with `?token=`, with `headers` sent.
fn login(c: &Running, headers: &[(&str, &str)]) -> String {
    let mut request = no_redirects().get(format!("{}/dashboard?token={OPERATOR}", c.url()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().unwrap();
    assert_eq!(response.status(), 303);
    response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// The dashboard's status with `cookie` (`NAME=VALUE`), and its page.
fn dashboard(c: &Running, cookie: &str) -> (u16, String) {
    let response = no_redirects()
        .get(format!("{}/dashboard", c.url()))
        .header("Cookie", cookie)
        .send()
        .unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

fn is_secure(set_cookie: &str) -> bool {
    set_cookie
        .split(';')
        .any(|attribute| attribute.trim().eq_ignore_ascii_case("secure"))
}

#[test]
fn the_dashboard_cookie_is_secure_when_the_request_came_over_https() {
    let c = collector(Limits::default());
    assert!(!is_secure(&login(&c, &[])), "plain HTTP, no proxy");
    assert!(!is_secure(&login(&c, &[("X-Forwarded-Proto", "http")])));
    // Behind a TLS-terminating proxy that says so.
    for header in [
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=192.0.2.60;proto=https"),
    ] {
        let cookie = login(&c, &[header]);
        assert!(is_secure(&cookie), "{header:?}: {cookie}");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
    }
    // A proxy that says nothing: --secure-cookie.
    let always = collector(Limits {
        secure_cookie: true,
        ..Limits::default()
    });
    assert!(is_secure(&login(&always, &[])));
}

#[test]
fn an_expired_dashboard_cookie_is_refused_whatever_the_browser_sends() {
    let c = collector(Limits::default());
    // What collectors before session lifetimes set: a digest of the token
    // that never expired. No longer a session.
    let mut digest = Sha256::new();
    digest.update(b"sluice-operator-session\0");
    digest.update(OPERATOR.as_bytes());
    let legacy = format!("{COOKIE}={}", hex::encode(digest.finalize()));
    assert_eq!(dashboard(&c, &legacy).0, 401, "a cookie that never expires");

    // A fresh login works, and tells the browser the server's lifetime.
    let set_cookie = login(&c, &[]);
    assert!(set_cookie.contains("Max-Age=604800"), "{set_cookie}");
    let fresh = set_cookie.split(';').next().unwrap();
    assert_eq!(dashboard(&c, fresh).0, 200);

    // The same token's cookie, issued 8 days ago: refused, saying why.
    let now = sluice_collector_core::store::now_ms() as u64 / 1000;
    let old = format!("{COOKIE}={}", session(OPERATOR, now - 8 * 24 * 3600));
    let (status, page) = dashboard(&c, &old);
    assert_eq!(status, 401);
    assert!(page.contains("expired"), "{page}");
    // 6 days old is still within the week.
    let recent = format!("{COOKIE}={}", session(OPERATOR, now - 6 * 24 * 3600));
    assert_eq!(dashboard(&c, &recent).0, 200);
    // With a shorter lifetime, the same cookie is over.
    let short = collector(Limits {
        session_lifetime: std::time::Duration::from_secs(24 * 3600),
        ..Limits::default()
    });
    assert_eq!(dashboard(&short, &recent).0, 401);
    assert!(login(&short, &[]).contains("Max-Age=86400"));
}
