//! The uplink: ships pending results from the [`Outbox`] upstream, batch by
//! batch, through an [`Uplink`] ([`http::HttpUplink`], zstd-compressed
//! JSON over HTTP(S) with rustls; [`mqtt::MqttUplink`], the same through an
//! MQTT 5 broker).
//!
//! The [`Uploader`] owns what does not depend on the transport:
//! * records leave the outbox only when the uplink returns an
//!   acknowledgement of *that* batch (its key) that accounts for every
//!   record sent (`stored + duplicates` equal to the batch's records,
//!   [`BatchAck::accounts_for`]) and, when the device pins the collector's
//!   keys (`sync.ack_keys`), that one of them signed for this device and
//!   exactly these records ([`BatchAck::acknowledges`]: a broker client or
//!   a proxy cannot forge or replay one); any other answer deletes nothing, is
//!   counted (`sluice_upload_batches_total{outcome="miscounted"}` for wrong
//!   counts) and is retried with backoff;
//! * only the configured upstream answers: a redirect is not followed but
//!   is a failed attempt ([`UplinkError::Redirected`]);
//! * text from upstream (answers, headers) is escaped before it is logged
//!   or kept as the last error ([`crate::error::upstream_text`]);
//! * a batch the collector refuses as invalid ([`UplinkError::is_about_content`]:
//!   `400`, `409`, `413`, `422`, or a stored record that cannot be sent) is
//!   split in halves under new keys until the refused record is alone, and
//!   only that record is set aside (kept, counted, reported): one bad record
//!   neither blocks the queue nor takes good records with it. Every other
//!   refusal (auth, a wrong URL, overload) is retried with backoff, keeping
//!   everything;
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
pub mod mqtt;
mod offers;

pub use offers::{Offered, Offers};

use crate::config::SyncConfig;
use crate::outbox::{Batch, Outbox, OutboxError, Split};
use crate::wake::{Wake, backoff, retry_delay};
use serde_json::value::RawValue;
use sluice_protocol::keys::PublicKey;
use sluice_protocol::{
    AckMismatch, BatchAck, DeviceStatus, PROTOCOL_VERSION, RawBatch, UploadBatch, records_digest,
};
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
    /// The upstream refused the batch.
    #[error("{endpoint} answered {status}: {body}")]
    Refused {
        /// Where it was sent.
        endpoint: String,
        /// The answer's status.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// The upstream has no room for the batch now and said when to come
    /// back (`503` with `Retry-After` over HTTP, with
    /// [`sluice_protocol::mqtt::RETRY_AFTER_MS`] through MQTT): the same
    /// batch is sent again after that wait (at most `sync.backoff_max_ms`,
    /// plus up to half of it as jitter) instead of the growing backoff,
    /// counted `outcome="busy"`.
    #[error("{endpoint} is busy, retrying in {} ms or more: {body}", retry_after.as_millis())]
    Busy {
        /// Where it was sent.
        endpoint: String,
        /// How long the upstream asked the device to wait.
        retry_after: Duration,
        /// The start of the answer's body.
        body: String,
    },
    /// A stored record cannot be put on the wire (not JSON): the batch is
    /// split like one the collector refused.
    #[error("batch {key} cannot be sent: {problem}")]
    Unsendable {
        /// The batch's key.
        key: String,
        /// Which record, and what is wrong with it.
        problem: String,
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
    /// The answer looks like an acknowledgement but is not signed by a
    /// pinned collector key for this device and these records (forged,
    /// replayed, or from a collector whose key is not pinned): nothing is
    /// deleted, counted `outcome="unverified"`.
    #[error("{endpoint} did not acknowledge batch {key} verifiably: {problem}")]
    Unverified {
        /// Where it was sent.
        endpoint: String,
        /// The batch's key.
        key: String,
        /// What was wrong with the answer.
        problem: String,
    },
    /// The upstream answered with a redirect (`3xx`). Uploads never follow
    /// one: the acknowledgement must come from `sync.url` itself, and
    /// another host could echo the key without storing anything.
    #[error(
        "{endpoint} answered {status} redirecting to {location}; uploads do not follow redirects (the acknowledgement must come from sync.url itself): set sync.url to the collector's address"
    )]
    Redirected {
        /// Where it was sent.
        endpoint: String,
        /// The answer's status.
        status: u16,
        /// Where it pointed (escaped).
        location: String,
    },
    /// The acknowledgement names the batch but does not account for every
    /// record sent: nothing is deleted, the batch is sent again.
    #[error(
        "{endpoint} acknowledged batch {key} with {stored} stored + {duplicates} duplicate(s), not the {sent} record(s) sent; nothing deleted, the batch is sent again"
    )]
    Miscounted {
        /// Where it was sent.
        endpoint: String,
        /// The batch's key.
        key: String,
        /// Records sent.
        sent: u64,
        /// Records the answer says were stored.
        stored: u64,
        /// Records the answer says were already stored.
        duplicates: u64,
    },
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

impl UplinkError {
    /// Whether the batch's content was refused (some record in it is
    /// invalid, conflicts with one stored, or the batch is too large), as
    /// opposed to the device (auth), the address, or the collector's load:
    /// splitting the batch can get its good records through.
    pub fn is_about_content(&self) -> bool {
        match self {
            UplinkError::Refused { status, .. } => matches!(status, 400 | 409 | 413 | 422),
            UplinkError::Unsendable { .. } => true,
            _ => false,
        }
    }
}

/// A transport that delivers batches upstream.
pub trait Uplink: Send + Sync {
    /// Where it delivers, for messages.
    fn endpoint(&self) -> &str;

    /// Deliver `batch`; returns the upstream's answer. Blocks until the
    /// answer or the deadline; must not be called from an async worker.
    fn deliver(&self, batch: &RawBatch) -> Result<BatchAck, UplinkError>;

    /// Asking the same collector, the same way, for the bundle a rollout
    /// offers `device`.
    fn offers(&self, device: &str) -> Box<dyn Offers>;
}

/// The uplink a configuration asks for (`sync.url`'s scheme chooses it:
/// `http(s)://` a collector, `mqtt(s)://` a broker) for `device`, or
/// `None` without `sync.url`.
pub fn from_config(
    config: &SyncConfig,
    device: &str,
    runtime: &tokio::runtime::Handle,
) -> Result<Option<Box<dyn Uplink>>, crate::error::ConfigError> {
    let Some(url) = &config.url else {
        return Ok(None);
    };
    let token = config.bearer_token()?;
    if config.transport()? == Some(crate::config::Transport::Mqtt) {
        return Ok(Some(Box::new(mqtt::MqttUplink::new(
            url,
            device,
            token,
            config,
            runtime.clone(),
        )?)));
    }
    if token.is_none() && config.client_cert_file.is_none() {
        return Err(crate::error::ConfigError::value(
            "sync.token",
            "sync.url is set but neither sync.token nor sync.token_file (nor sync.client_cert_file) is",
        ));
    }
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
    /// Batches split because the collector refused their content.
    pub splits: u64,
    /// Records the collector refused, each found alone and set aside.
    pub set_aside: u64,
}

/// Ships one device's outbox through one uplink.
pub struct Uploader {
    outbox: Arc<Outbox>,
    uplink: Box<dyn Uplink>,
    config: SyncConfig,
    device: String,
    /// The collector keys an answer must be signed by (none: unchecked).
    ack_keys: Vec<PublicKey>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Uploader {
    /// An uploader of `device`'s `outbox` through `uplink`, with the batch
    /// sizes, backoff and pinned acknowledgement keys of `config`
    /// (refused as [`SyncConfig::pinned_ack_keys`] refuses them).
    pub fn new(
        outbox: Arc<Outbox>,
        uplink: Box<dyn Uplink>,
        config: &SyncConfig,
        device: &str,
    ) -> Result<Uploader, crate::error::ConfigError> {
        Ok(Uploader {
            outbox,
            uplink,
            ack_keys: config.pinned_ack_keys()?,
            config: config.clone(),
            device: device.to_owned(),
            metrics: Default::default(),
        })
    }

    /// Count uploads in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Uploader {
        self.metrics = metrics;
        self
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
                    let records = self.outbox.ack_batch(batch.id)?;
                    let bytes = batch
                        .records
                        .iter()
                        .map(|(_, body)| body.len() as u64)
                        .sum();
                    self.metrics.upload("acknowledged");
                    self.metrics
                        .uploaded(&batch.stored_at_ms, bytes, sluice_types::now_ms());
                    report.records += records;
                    report.batches += 1;
                }
                Err(e) if e.is_about_content() => {
                    let reason = e.to_string();
                    match self.outbox.split_batch(batch.id, &reason)? {
                        Split::Halved { first, second } => {
                            self.metrics.upload("split");
                            report.splits += 1;
                            tracing::warn!(
                                "{reason}; looking for the refused record: sending it again as {first} + {second} record(s)"
                            );
                        }
                        Split::SetAside { id } => {
                            self.metrics.upload("set_aside");
                            report.set_aside += 1;
                            tracing::error!(
                                "record `{id}` refused upstream, set aside (see `sluice outbox set-aside`): {reason}"
                            );
                        }
                        _ => {}
                    }
                }
                Err(e) => {
                    self.metrics.upload(match e {
                        UplinkError::Miscounted { .. } => "miscounted",
                        UplinkError::Unverified { .. } => "unverified",
                        UplinkError::Busy { .. } => "busy",
                        _ => "failed",
                    });
                    let _ = self.outbox.record_sync_error(&e.to_string());
                    return Err(e);
                }
            }
        }
        Ok(report)
    }

    /// Deliver one batch; `Ok` only on an acknowledgement of its key that
    /// accounts for every record sent. Checked here, for every uplink.
    fn send(&self, batch: &Batch) -> Result<(), UplinkError> {
        let mut wire = to_wire(&self.device, batch).map_err(|problem| UplinkError::Unsendable {
            key: batch.key.clone(),
            problem,
        })?;
        wire.status = self.device_status(batch);
        let ack = self.uplink.deliver(&wire)?;
        // Only a signed answer is checked against the ids: without pinned
        // keys, no need to read every record again on every attempt.
        let digest = if self.ack_keys.is_empty() {
            String::new()
        } else {
            wire_digest(&wire, batch)
        };
        match ack.acknowledges(
            &self.device,
            &batch.key,
            wire.records.len(),
            &digest,
            &self.ack_keys,
        ) {
            Ok(()) => Ok(()),
            Err(AckMismatch::Counts {
                sent,
                stored,
                duplicates,
            }) => Err(UplinkError::Miscounted {
                endpoint: self.uplink.endpoint().to_owned(),
                key: batch.key.clone(),
                sent,
                stored,
                duplicates,
            }),
            Err(other) => {
                let (endpoint, key, problem) = (
                    self.uplink.endpoint().to_owned(),
                    batch.key.clone(),
                    crate::error::upstream_text(other.to_string().as_bytes(), 300),
                );
                Err(if other.is_unverified() {
                    UplinkError::Unverified {
                        endpoint,
                        key,
                        problem,
                    }
                } else {
                    UplinkError::NotAcknowledged {
                        endpoint,
                        key,
                        problem,
                    }
                })
            }
        }
    }

    /// How the device is doing, for the collector: the backlog it will have
    /// once `batch` is stored (none if the outbox cannot be read).
    fn device_status(&self, batch: &Batch) -> Option<DeviceStatus> {
        let backlog = self.outbox.backlog_after(batch).ok()?;
        let now = sluice_types::now_ms();
        Some(DeviceStatus {
            sluice_version: sluice_types::VERSION.to_owned(),
            at_ms: now,
            pending_records: backlog.pending_records,
            journal_items: backlog.journal_items,
            set_aside_records: backlog.set_aside_records,
            oldest_pending_ms: backlog.oldest_created_at_ms.map(|t| (now - t).max(0)),
        })
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
                    let delay = match &e {
                        // Asked to come back later: not a failure to back
                        // off from, a wait to honour (bounded: an answer
                        // cannot park the device for longer than its own
                        // longest backoff).
                        // Normal under load: not worth a warning each time.
                        UplinkError::Busy { retry_after, .. } => {
                            let delay = retry_delay(*retry_after, self.config.backoff_max_ms);
                            tracing::debug!(retry_in_ms = delay.as_millis() as u64, "{e}");
                            delay
                        }
                        _ => {
                            failures = failures.saturating_add(1);
                            let delay = backoff(
                                self.config.backoff_initial_ms,
                                self.config.backoff_max_ms,
                                failures,
                            );
                            tracing::warn!(
                                retry_in_ms = delay.as_millis() as u64,
                                "sync failed: {e}"
                            );
                            delay
                        }
                    };
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
        status: None,
    })
}

/// The [`records_digest`] a signed answer must name: of the ids the
/// collector reads, those inside the records sent (the outbox row's id,
/// normally the same, where a record has none: the collector refuses it).
fn wire_digest(wire: &RawBatch, batch: &Batch) -> String {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    let ids: Vec<std::borrow::Cow<'_, str>> = wire
        .records
        .iter()
        .zip(&batch.records)
        .map(
            |(raw, (row_id, _))| match serde_json::from_str::<Id>(raw.get()) {
                Ok(record) => record.id,
                Err(_) => std::borrow::Cow::Borrowed(row_id.as_str()),
            },
        )
        .collect();
    records_digest(ids.iter().map(|id| id.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutboxConfig;
    use crate::outbox::NewRecord;

    /// An uplink (any transport) whose answers come from `answer`.
    struct Fixed(fn(&RawBatch) -> BatchAck);

    impl Uplink for Fixed {
        fn endpoint(&self) -> &str {
            "fixed"
        }
        fn deliver(&self, batch: &RawBatch) -> Result<BatchAck, UplinkError> {
            Ok((self.0)(batch))
        }
        fn offers(&self, _: &str) -> Box<dyn Offers> {
            unreachable!("these tests ask for no bundle")
        }
    }

    fn ack(batch: &RawBatch, stored: u64, duplicates: u64) -> BatchAck {
        BatchAck::new(&batch.key, stored, duplicates, true)
    }

    /// Whatever the transport, an acknowledgement is checked in one place:
    /// counts that do not add up delete nothing.
    #[test]
    fn every_uplink_deletes_only_what_the_answer_accounts_for() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Arc::new(Outbox::open_in(dir.path(), OutboxConfig::default()).unwrap());
        let records = (0..5)
            .map(|seq| NewRecord {
                id: format!("d/p/{seq}"),
                body: format!(r#"{{"id":"d/p/{seq}","device":"d","pipeline":"p","seq":{seq}}}"#)
                    .into_bytes(),
            })
            .collect();
        outbox.append(records).unwrap();
        let config = SyncConfig::default();
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let run = |answer: fn(&RawBatch) -> BatchAck| {
            Uploader::new(outbox.clone(), Box::new(Fixed(answer)), &config, "d")
                .unwrap()
                .with_metrics(metrics.clone())
                .sync_once(&AtomicBool::new(false))
        };
        let error = run(|b| ack(b, 0, 0)).unwrap_err();
        assert!(
            matches!(error, UplinkError::Miscounted { sent: 5, .. }),
            "{error}"
        );
        assert_eq!(outbox.pending().0, 5);
        let error = run(|b| ack(b, 2, 2)).unwrap_err();
        assert!(matches!(error, UplinkError::Miscounted { .. }), "{error}");
        let error = run(|b| BatchAck {
            key: "another".into(),
            ..ack(b, 5, 0)
        })
        .unwrap_err();
        assert!(
            matches!(error, UplinkError::NotAcknowledged { .. }),
            "{error}"
        );
        assert_eq!(outbox.pending().0, 5);
        assert!(
            metrics
                .encode()
                .contains("sluice_upload_batches_total{outcome=\"miscounted\"} 2")
        );
        // A replay's answer repeats the batch's counts: accounted for.
        assert_eq!(run(|b| ack(b, 3, 2)).unwrap().records, 5);
        assert_eq!(outbox.pending().0, 0);
    }
}
