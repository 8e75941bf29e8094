//! The uplink: ships pending results from the [`Outbox`] upstream, batch by
//! batch, through an [`Uplink`] (today [`http::HttpUplink`], zstd-compressed
//! JSON over HTTP(S) with rustls; an MQTT uplink would be one new file).
//!
//! The [`Uploader`] owns what does not depend on the transport:
//! * records leave the outbox only when the uplink returns an
//!   acknowledgement of *that* batch (its key); a batch refused for good is
//!   dropped and counted as `rejected_upstream`, so one bad batch cannot
//!   block the queue forever;
//! * a batch is formed and committed in the outbox before it is sent, and
//!   the same batch (same key, same records) is sent until it is
//!   acknowledged, across restarts: the collector stores it once;
//! * connectivity is found out by trying: every failure is kept as the
//!   outbox's last error and retried after an exponential backoff
//!   (`backoff_initial_ms` doubling to `backoff_max_ms`) with jitter, so a
//!   fleet does not retry in lockstep;
//! * every delivery has a deadline (`timeout_ms`), so a hanging collector
//!   delays but never stops syncing.

pub mod http;

use crate::config::SyncConfig;
use crate::outbox::{Batch, Outbox, OutboxError};
use crate::wake::{Wake, backoff};
use serde_json::value::RawValue;
use sluice_protocol::{BatchAck, PROTOCOL_VERSION, RawBatch, UploadBatch};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UplinkError {
    /// No answer: refused, reset, timed out, closed mid-answer.
    #[error("{endpoint} unreachable: {message}")]
    Unreachable {
        /// Where it was sent.
        endpoint: String,
        /// What happened, with its causes.
        message: String,
    },
    /// The upstream refused the batch. `permanent`: retrying the same batch
    /// cannot help (a malformed batch), as opposed to auth or overload.
    #[error("{endpoint} answered {status}: {body}")]
    Refused {
        /// Where it was sent.
        endpoint: String,
        /// The answer's status.
        status: u16,
        /// The start of the answer's body.
        body: String,
        /// Whether retrying can help.
        permanent: bool,
    },
    /// The answer is not an acknowledgement of the batch sent (a proxy's or
    /// captive portal's page, another batch's key): nothing is deleted.
    #[error("{endpoint} did not acknowledge batch {key}: {problem}")]
    NotAcknowledged {
        /// Where it was sent.
        endpoint: String,
        /// The batch's key.
        key: String,
        /// What was wrong with the answer.
        problem: String,
    },
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// A transport that delivers batches upstream.
pub trait Uplink: Send + Sync {
    /// Where it delivers, for messages.
    fn endpoint(&self) -> &str;

    /// Deliver `batch`; returns the upstream's answer. Blocks until the
    /// answer or the deadline; must not be called from an async worker.
    fn deliver(&self, batch: &RawBatch) -> Result<BatchAck, UplinkError>;
}

/// The uplink a configuration asks for (`sync.url`'s scheme chooses it),
/// or `None` without `sync.url`.
pub fn from_config(
    config: &SyncConfig,
    runtime: &tokio::runtime::Handle,
) -> Result<Option<Box<dyn Uplink>>, crate::error::ConfigError> {
    let Some(url) = &config.url else {
        return Ok(None);
    };
    let Some(token) = config.bearer_token()? else {
        return Err(crate::error::ConfigError::value(
            "sync.token",
            "sync.url is set but neither sync.token nor sync.token_file is",
        ));
    };
    Ok(Some(Box::new(http::HttpUplink::new(
        url,
        token,
        config,
        runtime.clone(),
    )?)))
}

/// What one [`Uploader::sync_once`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Batches acknowledged.
    pub batches: u64,
    /// Records acknowledged.
    pub records: u64,
    /// Records dropped because the collector refused their batch for good.
    pub rejected: u64,
}

/// Ships one device's outbox through one uplink.
pub struct Uploader {
    outbox: Arc<Outbox>,
    uplink: Box<dyn Uplink>,
    config: SyncConfig,
    device: String,
}

impl Uploader {
    /// An uploader of `device`'s `outbox` through `uplink`, with the batch
    /// sizes and backoff of `config`.
    pub fn new(
        outbox: Arc<Outbox>,
        uplink: Box<dyn Uplink>,
        config: &SyncConfig,
        device: &str,
    ) -> Uploader {
        Uploader {
            outbox,
            uplink,
            config: config.clone(),
            device: device.to_owned(),
        }
    }

    /// Upload batches until the outbox is empty, `stop` is set, or a batch
    /// fails (that error is returned and kept as the outbox's last error).
    pub fn sync_once(&self, stop: &AtomicBool) -> Result<SyncReport, UplinkError> {
        let mut report = SyncReport::default();
        while !stop.load(Ordering::SeqCst) {
            let Some(batch) = self
                .outbox
                .next_batch(self.config.batch_max_records, self.config.batch_max_bytes)?
            else {
                self.outbox.record_sync_ok()?;
                break;
            };
            match self.send(&batch) {
                Ok(()) => {
                    report.records += self.outbox.ack_batch(batch.id)?;
                    report.batches += 1;
                }
                Err(UplinkError::Refused {
                    endpoint,
                    status,
                    body,
                    permanent: true,
                }) => {
                    let reason = format!(
                        "{endpoint} refused batch {} for good ({status}): {body}",
                        batch.key
                    );
                    tracing::error!("{reason}; dropping its {} record(s)", batch.records.len());
                    report.rejected += self.outbox.reject_batch(batch.id, &reason)?;
                }
                Err(e) => {
                    let _ = self.outbox.record_sync_error(&e.to_string());
                    return Err(e);
                }
            }
        }
        Ok(report)
    }

    /// Deliver one batch; `Ok` only on an acknowledgement of its key.
    fn send(&self, batch: &Batch) -> Result<(), UplinkError> {
        let wire = match to_wire(&self.device, batch) {
            Ok(wire) => wire,
            Err(problem) => {
                // Never sendable as it is: refused for good, like a 400.
                return Err(UplinkError::Refused {
                    endpoint: self.uplink.endpoint().to_owned(),
                    status: 400,
                    body: problem,
                    permanent: true,
                });
            }
        };
        let ack = self.uplink.deliver(&wire)?;
        if ack.key != batch.key {
            return Err(UplinkError::NotAcknowledged {
                endpoint: self.uplink.endpoint().to_owned(),
                key: batch.key.clone(),
                problem: format!("the answer acknowledges batch `{}`", ack.key),
            });
        }
        Ok(())
    }

    /// Sync until `wake` stops: after each pass wait for new records (or
    /// `interval_ms`); after a failure back off with jitter.
    pub fn run(&self, wake: &Wake) {
        let mut failures = 0u32;
        while !wake.stopped() {
            match self.sync_once(wake.stop_flag()) {
                Ok(report) => {
                    if failures > 0 {
                        tracing::info!("{} reachable again", self.uplink.endpoint());
                    }
                    failures = 0;
                    if report.batches > 0 {
                        tracing::debug!(?report, "uploaded");
                    }
                    wake.wait(Duration::from_millis(self.config.interval_ms));
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(
                        self.config.backoff_initial_ms,
                        self.config.backoff_max_ms,
                        failures,
                    );
                    tracing::warn!(retry_in_ms = delay.as_millis() as u64, "sync failed: {e}");
                    wake.sleep(delay);
                }
            }
        }
    }
}

/// A stored batch as it goes on the wire: the stored records verbatim (each
/// checked to be JSON), under the batch key.
pub fn to_wire(device: &str, batch: &Batch) -> Result<RawBatch, String> {
    let records = batch
        .records
        .iter()
        .map(|(id, body)| {
            let text = String::from_utf8(body.clone())
                .map_err(|_| format!("stored record `{id}` is not UTF-8"))?;
            RawValue::from_string(text)
                .map_err(|e| format!("stored record `{id}` is not JSON: {e}"))
        })
        .collect::<Result<Vec<Box<RawValue>>, String>>()?;
    Ok(UploadBatch {
        protocol: PROTOCOL_VERSION,
        device: device.to_owned(),
        key: batch.key.clone(),
        records,
    })
}
