//! The HTTP(S) uplink: `POST <sync.url>/v1/batches` with the device's bearer
//! token, the batch zstd-compressed, its key in `Idempotency-Key`; rustls,
//! no OpenSSL. Runs on the process's tokio runtime.
//!
//! Invariants: an answer counts as an acknowledgement only if it is a `2xx`
//! whose body, read in full and at most [`MAX_ANSWER_BYTES`], is a
//! [`BatchAck`]; every request has a deadline (`sync.timeout_ms`); no
//! request toward the collector follows a redirect ([`collector_client`]):
//! an acknowledgement must come from `sync.url` itself, not from whatever
//! host a `3xx` names (which could echo the key and make the device delete
//! results the collector never stored). A `3xx` is a failed attempt,
//! retried, naming the status and its `Location`.

mod bundle;

use super::{Offers, Uplink, UplinkError};
use crate::config::SyncConfig;
use crate::error::{ConfigError, upstream_text};
use sluice_protocol::{self as protocol, BatchAck, RawBatch};
use std::time::Duration;

/// Largest answer read from the collector: an acknowledgement is a few
/// hundred bytes; anything larger is not one, and must not fill memory.
pub const MAX_ANSWER_BYTES: usize = 64 << 10;

/// The HTTP client for every request the device makes toward its
/// collector (uploads, bundle downloads): it never follows redirects, so
/// only the configured address answers; `timeout` bounds each request,
/// `connect_timeout` each connection; `tls` says whom to trust and what to
/// show.
pub fn collector_client(
    timeout: Duration,
    connect_timeout: Duration,
    tls: &ClientTls,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")));
    if !tls.roots.is_empty() {
        builder = builder.tls_built_in_root_certs(false);
        for root in &tls.roots {
            builder = builder.add_root_certificate(root.clone());
        }
    }
    if let Some(identity) = &tls.identity {
        builder = builder.identity(identity.clone());
    }
    builder.build()
}

/// TLS toward the collector beyond the defaults: the fleet's own CA
/// (`sync.ca_file`, trusted instead of the public roots) and the device's
/// client certificate (`sync.client_cert_file`, `sync.client_key_file`).
#[derive(Clone, Default)]
pub struct ClientTls {
    roots: Vec<reqwest::Certificate>,
    identity: Option<reqwest::Identity>,
}

impl ClientTls {
    /// Read the files `config` names, refused naming the key and the file.
    pub fn of(config: &SyncConfig) -> Result<ClientTls, ConfigError> {
        // Bounded as the collector reads its own (a PEM file is small).
        let read = |key: &str, path: &std::path::Path| {
            sluice_serve::read_pem(path).map_err(|e| ConfigError::value(key, e.to_string()))
        };
        let mut tls = ClientTls::default();
        if let Some(path) = &config.ca_file {
            tls.roots = reqwest::Certificate::from_pem_bundle(&read("sync.ca_file", path)?)
                .map_err(|e| {
                    ConfigError::value("sync.ca_file", format!("{}: {e}", path.display()))
                })?;
            if tls.roots.is_empty() {
                return Err(ConfigError::value(
                    "sync.ca_file",
                    format!("{}: no certificate in it", path.display()),
                ));
            }
        }
        if let (Some(cert), Some(key)) = (&config.client_cert_file, &config.client_key_file) {
            let mut pem = read("sync.client_cert_file", cert)?;
            pem.extend(read("sync.client_key_file", key)?);
            tls.identity = Some(reqwest::Identity::from_pem(&pem).map_err(|e| {
                ConfigError::value(
                    "sync.client_cert_file",
                    format!("{} with {}: {e}", cert.display(), key.display()),
                )
            })?);
        }
        Ok(tls)
    }
}

/// The `Authorization` header of `token`, if there is one.
pub(crate) fn bearer(token: Option<&str>) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(value) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    headers
}

/// The status and `Location` (escaped, see [`upstream_text`]) of an
/// answer that redirects elsewhere: any `3xx` but `304 Not Modified`,
/// which names no other place.
pub fn redirect_of(response: &reqwest::Response) -> Option<(u16, String)> {
    let status = response.status();
    if !status.is_redirection() || status == reqwest::StatusCode::NOT_MODIFIED {
        return None;
    }
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .map_or_else(
            || "(no Location)".to_owned(),
            |l| upstream_text(l.as_bytes(), 300),
        );
    Some((status.as_u16(), location))
}

/// Delivers batches to a collector over HTTP(S).
pub struct HttpUplink {
    /// The collector's base URL (`sync.url`).
    base: String,
    tls: ClientTls,
    endpoint: String,
    /// None: the client certificate identifies the device (mutual TLS).
    token: Option<String>,
    zstd_level: i32,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl HttpUplink {
    /// An uplink to the collector at `url` (its base URL), authenticating
    /// with `token`, or with the client certificate of `config` alone.
    pub fn new(
        url: &str,
        token: Option<String>,
        config: &SyncConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<HttpUplink, ConfigError> {
        let endpoint = format!("{}{}", url.trim_end_matches('/'), protocol::paths::BATCHES);
        reqwest::Url::parse(&endpoint)
            .map_err(|e| ConfigError::value("sync.url", format!("`{url}` is not a URL: {e}")))?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let tls = ClientTls::of(config)?;
        let client = collector_client(timeout, timeout, &tls)
            .map_err(|e| ConfigError::value("sync.url", format!("cannot set up HTTP: {e}")))?;
        Ok(HttpUplink {
            base: url.to_owned(),
            tls,
            endpoint,
            token,
            zstd_level: config.zstd_level,
            client,
            runtime,
        })
    }

    async fn post(&self, batch: &RawBatch) -> Result<BatchAck, UplinkError> {
        let json = serde_json::to_vec(batch).expect("a raw batch serializes");
        let body =
            zstd::encode_all(&json[..], self.zstd_level).expect("zstd into memory cannot fail");
        let unreachable = |e: reqwest::Error| UplinkError::Unreachable {
            endpoint: self.endpoint.clone(),
            // reqwest hides the useful part (refused, reset) in `source`.
            message: crate::error::chain_text(&e),
        };
        let mut response = self
            .client
            .post(&self.endpoint)
            .headers(bearer(self.token.as_deref()))
            .header(protocol::IDEMPOTENCY_KEY, &batch.key)
            .header(reqwest::header::CONTENT_TYPE, protocol::CONTENT_TYPE)
            .header(
                reqwest::header::CONTENT_ENCODING,
                protocol::CONTENT_ENCODING,
            )
            .body(body)
            .send()
            .await
            .map_err(unreachable)?;
        if let Some((status, location)) = redirect_of(&response) {
            return Err(UplinkError::Redirected {
                endpoint: self.endpoint.clone(),
                status,
                location,
            });
        }
        let status = response.status();
        let retry_after = retry_after(&response);
        // Read the whole answer, bounded: a connection closed mid-answer is
        // not an acknowledgement, and a huge answer is not one either.
        let mut answer = Vec::new();
        let mut oversize = false;
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                oversize = true;
                break;
            }
            answer.extend_from_slice(&chunk);
        }
        if let Some(retry_after) = retry_after {
            return Err(UplinkError::Busy {
                endpoint: self.endpoint.clone(),
                retry_after,
                body: upstream_text(&answer, 500),
            });
        }
        if !status.is_success() {
            let code = status.as_u16();
            return Err(UplinkError::Refused {
                endpoint: self.endpoint.clone(),
                status: code,
                body: upstream_text(&answer, 500),
            });
        }
        let not_ack = |problem: String| UplinkError::NotAcknowledged {
            endpoint: self.endpoint.clone(),
            key: batch.key.clone(),
            problem,
        };
        if oversize {
            return Err(not_ack(format!(
                "the answer is larger than {MAX_ANSWER_BYTES} bytes"
            )));
        }
        serde_json::from_slice::<BatchAck>(&answer).map_err(|e| {
            not_ack(format!(
                "the answer is not an acknowledgement ({}): {}",
                upstream_text(e.to_string().as_bytes(), 300),
                upstream_text(&answer, 200)
            ))
        })
    }
}

/// The wait a `503` or `429` answer asks for in whole seconds
/// (`Retry-After: 1`); `None` for any other answer, or a date (a collector
/// sends seconds).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    if !matches!(response.status().as_u16(), 429 | 503) {
        return None;
    }
    let seconds: u64 = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

impl Uplink for HttpUplink {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn deliver(&self, batch: &RawBatch) -> Result<BatchAck, UplinkError> {
        self.runtime.block_on(self.post(batch))
    }

    fn offers(&self, device: &str) -> Box<dyn Offers> {
        Box::new(bundle::HttpOffers::new(
            &self.base,
            device,
            self.token.as_deref(),
            &self.tls,
            self.runtime.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA file is read only up to its bound: a huge one (a wrong path,
    /// a device file) is refused naming the key, not read into memory.
    #[test]
    fn an_oversized_ca_file_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, vec![b'A'; sluice_serve::MAX_PEM_BYTES as usize + 1]).unwrap();
        let config = SyncConfig {
            ca_file: Some(file),
            ..SyncConfig::default()
        };
        let error = ClientTls::of(&config).err().expect("refused").to_string();
        assert!(
            error.contains("sync.ca_file") && error.contains("larger than"),
            "{error}"
        );
    }
}
