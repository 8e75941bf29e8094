//! Asking the collector for the bundle a rollout has for this device
//! (`GET <sync.url>/v1/devices/{id}/bundle`), written to disk as it
//! arrives: a bundle may be far larger than the memory a small device can
//! spare.
//!
//! Invariants: the request goes through a client like the uploads'
//! ([`super::collector_client`]), which follows no redirect:
//! a bundle comes from the configured collector or not at all (it is
//! verified against the pinned keys anyway, but a redirect would also send
//! the device's token elsewhere); a `3xx` is an error naming its status and
//! `Location`; the download is bounded by `limit` bytes, declared or not.

use super::redirect_of;
use crate::uplink::{Offered, Offers};
use sluice_protocol::operator::ProbationMinimum;
use std::path::Path;
use std::time::Duration;

/// Asks the collector over HTTP(S).
pub(crate) struct HttpOffers {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    runtime: tokio::runtime::Handle,
}

impl HttpOffers {
    /// Asking `<base>/v1/devices/{device}/bundle` with `token`, on
    /// `runtime`: a download may take up to 5 minutes.
    pub(crate) fn new(
        base: &str,
        device: &str,
        token: Option<&str>,
        tls: &super::ClientTls,
        runtime: tokio::runtime::Handle,
    ) -> HttpOffers {
        HttpOffers {
            client: super::collector_client(Duration::from_secs(300), Duration::from_secs(10), tls)
                .expect("a client with rustls builds, as the uplink's did"),
            url: format!(
                "{}{}",
                base.trim_end_matches('/'),
                sluice_protocol::paths::device_bundle(device)
            ),
            token: token.map(str::to_owned),
            runtime,
        }
    }
}

impl Offers for HttpOffers {
    fn endpoint(&self) -> &str {
        &self.url
    }

    fn fetch(&self, seen: &[String], path: &Path, limit: u64) -> Result<Option<Offered>, String> {
        self.runtime.block_on(fetch(
            &self.client,
            &self.url,
            self.token.as_deref(),
            seen,
            path,
            limit,
        ))
    }
}

/// Fetch the bundle offered at `url` into `path`: `Ok(Some(_))` when one
/// was written, `Ok(None)` when there is none or the device has it already
/// (`204`, `304`: `seen`, the SHA-256s it handled, go in `If-None-Match`).
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    seen: &[String],
    path: &Path,
    limit: u64,
) -> Result<Option<Offered>, String> {
    let mut response = client
        .get(url)
        .headers(super::bearer(token))
        .header(reqwest::header::IF_NONE_MATCH, seen.join(", "))
        .send()
        .await
        .map_err(|e| crate::error::chain_text(&e))?;
    if let Some((status, location)) = redirect_of(&response) {
        return Err(format!(
            "answered {status} redirecting to {location}; bundle downloads do not follow redirects: set sync.url to the collector's address"
        ));
    }
    match response.status().as_u16() {
        200 => {}
        204 | 304 => return Ok(None),
        status => return Err(format!("answered {status}")),
    }
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(format!("offered a bundle over {limit} bytes"));
    }
    let offered = Offered {
        probation: response
            .headers()
            .get(sluice_protocol::operator::PROBATION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(ProbationMinimum::parse),
    };
    let mut file = std::fs::File::create(path)
        .map_err(|e| format!("cannot keep it at {}: {e}", path.display()))?;
    let mut written = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        written = written.saturating_add(chunk.len() as u64);
        if written > limit {
            return Err(format!("offered a bundle over {limit} bytes"));
        }
        std::io::Write::write_all(&mut file, &chunk)
            .map_err(|e| format!("cannot keep it at {}: {e}", path.display()))?;
    }
    Ok(Some(offered))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Serve `app` on a loopback port of the current runtime; its base URL.
    async fn serve(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    #[tokio::test]
    async fn a_redirect_to_another_host_is_not_followed() {
        // Another host that would hand out a bundle and see the token.
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        let elsewhere = serve(Router::new().route(
            "/bundle",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { "not a bundle from the collector" }
            }),
        ))
        .await;
        let target = format!("{elsewhere}/bundle");
        let location = target.clone();
        let collector = serve(Router::new().route(
            "/v1/devices/d/bundle",
            get(move || async move {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, location)],
                )
            }),
        ))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("incoming.bundle");
        let client = super::super::collector_client(
            Duration::from_secs(10),
            Duration::from_secs(10),
            &Default::default(),
        )
        .unwrap();
        let url = format!("{collector}/v1/devices/d/bundle");
        let error = fetch(&client, &url, Some("secret"), &[], &path, 1 << 20)
            .await
            .unwrap_err();
        assert!(error.contains("307") && error.contains(&target), "{error}");
        assert_eq!(asked.load(Ordering::SeqCst), 0, "the other host was asked");
        assert!(!path.exists(), "nothing was written");
    }
}
