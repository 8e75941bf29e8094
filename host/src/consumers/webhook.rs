//! `[consumers.NAME.webhook]`: each result POSTed to a local URL as its
//! JSON record, one request per result, in order, with the result's id in
//! `Idempotency-Key` and `X-Sluice-Id` (and a bearer token when
//! `token_file` is set).
//!
//! A `2xx` answer takes the result. `408`, `429` and `5xx`, and no answer
//! within `timeout_ms`, are failures tried again with backoff. Any other
//! answer (`4xx`: the hook will never take this one) refuses that result
//! alone: it is logged, counted and skipped, and the next goes on.

use super::{Consumer, Delivery, Kept, Taken};
use crate::config::WebhookConsumerConfig;
use crate::ingest::IngestError;
use std::time::Duration;

/// The most of a refusing answer's body read, to quote it.
const MAX_ANSWER_BYTES: usize = 4096;

/// A consumer posting to a local web hook.
pub(super) struct WebhookConsumer {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl WebhookConsumer {
    pub(super) fn new(
        name: &str,
        config: &WebhookConsumerConfig,
    ) -> Result<WebhookConsumer, IngestError> {
        let setup = |message: String| IngestError::Setup {
            source_name: format!("consumer {name}"),
            message,
        };
        let mut client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            // A local hook has no business sending the results elsewhere.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| setup(format!("cannot read {}: {e}", path.display())))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| setup(format!("{}: {e}", path.display())))?;
            for certificate in certificates {
                client = client.add_root_certificate(certificate);
            }
        }
        let token = match &config.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| setup(format!("cannot read {}: {e}", path.display())))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        Ok(WebhookConsumer {
            client: client.build().map_err(|e| setup(e.to_string()))?,
            url: config.url.clone(),
            token,
        })
    }

    async fn post_all(&self, results: &[Kept]) -> Taken {
        let mut taken = Taken::default();
        for result in results {
            let mut request = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("idempotency-key", &result.id)
                .header("x-sluice-id", &result.id)
                .body(result.body.clone());
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            match request.send().await {
                Ok(answer) if answer.status().is_success() => {}
                Ok(mut answer) => {
                    let status = answer.status();
                    // Only the start of what it says, however much it sends.
                    let mut body = Vec::new();
                    while body.len() < MAX_ANSWER_BYTES {
                        match answer.chunk().await {
                            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                            _ => break,
                        }
                    }
                    let why = format!(
                        "{} answered {status}: {}",
                        self.url,
                        crate::error::upstream_text(&body, 200)
                    );
                    if status.is_server_error()
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                    {
                        taken.failure = Some(why);
                        return taken;
                    }
                    taken.refused.push((result.id.clone(), why));
                }
                Err(e) => {
                    taken.failure = Some(format!("{}: {e}", self.url));
                    return taken;
                }
            }
            taken.done += 1;
        }
        taken
    }
}

impl Consumer for WebhookConsumer {
    fn describe(&self) -> String {
        format!("webhook {}", self.url)
    }

    fn deliver<'a>(&'a mut self, results: &'a [Kept]) -> Delivery<'a> {
        Box::pin(self.post_all(results))
    }
}
