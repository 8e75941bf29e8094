//! The uploader: ships pending results from the [`Outbox`] to the collector
//! (see [`crate::collector`] for the protocol) in zstd-compressed batches over
//! HTTP(S) (rustls), with the device's bearer token.
//!
//! Invariants:
//! * records leave the outbox only after the collector answered `200` for
//!   their batch ([`Outbox::ack_batch`]); a batch refused for good (a `4xx`
//!   other than 401/403/408/429) is dropped and counted as
//!   `rejected_upstream`, so one bad batch cannot block the queue forever;
//! * a batch is formed and committed in the outbox before it is sent, and the
//!   same batch (same `Idempotency-Key`, same records) is sent until it is
//!   acknowledged, across restarts: the collector stores it once;
//! * connectivity is found out by trying: every failure (refused, timeout,
//!   reset, 5xx, auth) is kept as the outbox's last error and retried after
//!   an exponential backoff (`backoff_initial_ms` doubling to
//!   `backoff_max_ms`) with jitter, so a fleet does not retry in lockstep;
//! * every request has a deadline (`timeout_ms`), so a hanging collector
//!   delays but never stops syncing.

use crate::config::SyncConfig;
use crate::outbox::{Batch, Outbox, OutboxError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No answer: refused, reset, timed out, closed mid-response.
    #[error("collector {url} unreachable: {message}")]
    Unreachable { url: String, message: String },
    /// The collector answered with an error that may pass (5xx, 401, 403, 408, 429).
    #[error("collector {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// What one [`Uploader::sync_once`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub batches: u64,
    pub records: u64,
    /// Records dropped because the collector refused their batch for good.
    pub rejected: u64,
}

/// Wakes an idle uploader when new results are stored, and stops it.
#[derive(Default)]
pub struct Signal {
    woken: Mutex<bool>,
    cond: Condvar,
    stop: AtomicBool,
}

impl Signal {
    pub fn new() -> Arc<Signal> {
        Arc::new(Signal::default())
    }

    /// New records are waiting.
    pub fn wake(&self) {
        *self.woken.lock().unwrap() = true;
        self.cond.notify_all();
    }

    /// Ask the uploader to stop after its current request.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Wait up to `timeout` for a wake-up or stop.
    pub fn wait(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut woken = self.woken.lock().unwrap();
        while !*woken && !self.stopped() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            woken = self.cond.wait_timeout(woken, left).unwrap().0;
        }
        *woken = false;
    }

    /// Sleep `duration` unless stopped first (wake-ups do not cut a backoff short).
    pub fn sleep(&self, duration: Duration) {
        let deadline = Instant::now() + duration;
        let mut woken = self.woken.lock().unwrap();
        while !self.stopped() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            woken = self.cond.wait_timeout(woken, left).unwrap().0;
        }
    }
}

/// Ships one device's outbox to one collector.
pub struct Uploader {
    outbox: Arc<Outbox>,
    config: SyncConfig,
    device: String,
    token: String,
    endpoint: String,
    client: reqwest::blocking::Client,
}

impl Uploader {
    /// An uploader to `config.url`; fails if the configuration has no URL or token.
    pub fn new(outbox: Arc<Outbox>, config: &SyncConfig, device: &str) -> anyhow::Result<Uploader> {
        let Some(url) = &config.url else {
            anyhow::bail!("sync.url is not configured")
        };
        let Some(token) = config.bearer_token()? else {
            anyhow::bail!("sync.token (or sync.token_file) is not configured")
        };
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms))
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Uploader {
            outbox,
            config: config.clone(),
            device: device.to_owned(),
            token,
            endpoint: format!("{}/v1/batches", url.trim_end_matches('/')),
            client,
        })
    }

    /// Upload batches until the outbox is empty, `stop` is set, or a batch
    /// fails (that error is returned and kept as the outbox's last error).
    pub fn sync_once(&self, stop: &AtomicBool) -> Result<SyncReport, SyncError> {
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
                Err(SyncError::Status { status, body, url }) if is_permanent(status) => {
                    let reason = format!(
                        "collector {url} refused batch {} for good ({status}): {body}",
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

    /// POST one batch; `Ok` only on a `2xx` answer read in full.
    fn send(&self, batch: &Batch) -> Result<(), SyncError> {
        let body = encode_batch(&self.device, batch, self.config.zstd_level);
        let unreachable = |e: reqwest::Error| SyncError::Unreachable {
            url: self.endpoint.clone(),
            message: error_chain(&e),
        };
        let response = self
            .client
            .post(&self.endpoint)
            .bearer_auth(&self.token)
            .header("Idempotency-Key", &batch.key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::CONTENT_ENCODING, "zstd")
            .body(body)
            .send()
            .map_err(unreachable)?;
        let status = response.status();
        // Read the whole answer: a connection closed mid-response is not an
        // acknowledgement.
        let text = response.text().map_err(unreachable)?;
        if status.is_success() {
            Ok(())
        } else {
            Err(SyncError::Status {
                url: self.endpoint.clone(),
                status: status.as_u16(),
                body: text.chars().take(500).collect(),
            })
        }
    }

    /// Sync until `signal` stops: after each pass wait for new records (or
    /// `interval_ms`); after a failure back off with jitter.
    pub fn run(&self, signal: &Signal) {
        let mut failures = 0u32;
        while !signal.stopped() {
            if let Err(e) = self.outbox.expire(crate::outbox::now_ms()) {
                tracing::warn!("outbox expiry failed: {e}");
            }
            match self.sync_once(&signal.stop) {
                Ok(report) => {
                    if failures > 0 {
                        tracing::info!("collector reachable again");
                    }
                    failures = 0;
                    if report.batches > 0 {
                        tracing::debug!(?report, "uploaded");
                    }
                    signal.wait(Duration::from_millis(self.config.interval_ms));
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff(
                        self.config.backoff_initial_ms,
                        self.config.backoff_max_ms,
                        failures,
                    );
                    tracing::warn!(retry_in_ms = delay.as_millis() as u64, "sync failed: {e}");
                    signal.sleep(delay);
                }
            }
        }
    }
}

/// Run the uploader on its own thread until `signal` stops.
pub fn spawn(uploader: Uploader, signal: Arc<Signal>) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("sluice-sync".into())
        .spawn(move || uploader.run(&signal))
        .expect("spawn the sync thread")
}

/// 4xx answers that retrying cannot fix.
fn is_permanent(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 401 | 403 | 408 | 429)
}

/// The delay before retry number `failures` (1-based): `initial * 2^(n-1)`
/// capped at `max`, then "equal jitter": half fixed, half random, so retries
/// spread out yet never come back at once.
pub fn backoff(initial_ms: u64, max_ms: u64, failures: u32) -> Duration {
    let exp = initial_ms
        .saturating_mul(1u64 << failures.saturating_sub(1).min(32))
        .min(max_ms)
        .max(1);
    let half = exp / 2;
    Duration::from_millis(half + rand::random_range(0..=exp - half))
}

/// The batch as the collector expects it: `{"device","key","records":[...]}`
/// (records are stored JSON, spliced in without re-parsing), zstd-compressed.
pub fn encode_batch(device: &str, batch: &Batch, level: i32) -> Vec<u8> {
    let size: usize = batch.records.iter().map(|(_, b)| b.len() + 1).sum();
    let mut json = Vec::with_capacity(size + 128);
    json.extend_from_slice(b"{\"device\":");
    json.extend_from_slice(serde_json::to_string(device).expect("string").as_bytes());
    json.extend_from_slice(b",\"key\":");
    json.extend_from_slice(
        serde_json::to_string(&batch.key)
            .expect("string")
            .as_bytes(),
    );
    json.extend_from_slice(b",\"records\":[");
    for (ix, (_, body)) in batch.records.iter().enumerate() {
        if ix > 0 {
            json.push(b',');
        }
        json.extend_from_slice(body);
    }
    json.extend_from_slice(b"]}");
    zstd::encode_all(&json[..], level).expect("zstd into memory cannot fail")
}

/// An error with its causes, one line (reqwest hides the useful part in `source`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
