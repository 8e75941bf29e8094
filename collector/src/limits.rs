//! Every bound the collector puts on what clients can make it hold: bytes,
//! records, requests in progress, connections and time.
//!
//! Each has a default ([`Limits::DEFAULT`]), a `sluice-collector` flag (named
//! in the field's documentation and in the error a client gets at the
//! limit), and a row in `docs/limits.md`. The point of having all of them:
//! what one client, authenticated or not, can make the collector allocate
//! or keep open is bounded, so a broken or hostile device cannot take the
//! collector down for the others ([`Limits::memory_bound`]).

use std::time::Duration;

/// The collector's bounds. Build with `Limits { field: value,
/// ..Limits::default() }` (a field added later then gets its default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body read, as sent (compressed), in bytes
    /// (`--max-body-bytes`). Past it: `413`, without reading further.
    pub max_body_bytes: usize,
    /// Largest bundle file an operator uploads, in bytes
    /// (`--max-bundle-bytes`, at most [`crate::rollout::MAX_BUNDLE_BYTES`]).
    /// Past it: `413`. One upload at a time.
    pub max_bundle_bytes: usize,
    /// Largest batch after decompression, in bytes
    /// (`--max-decompressed-bytes`): the guard against compression bombs.
    /// Past it: `413`.
    pub max_decompressed_bytes: usize,
    /// Most records in one batch (`--max-batch-records`). Past it: `413`.
    /// Bounds the per-record bookkeeping, which is not covered by the byte
    /// limits (a batch of 10 million empty records fits in 32 MiB).
    pub max_batch_records: usize,
    /// Most batches read, decoded and stored at once
    /// (`--max-concurrent-batches`). Past it a batch is answered `503` with
    /// `Retry-After` at once, before its body is read: devices retry anyway,
    /// and answering beats queueing, whose memory would be unbounded or
    /// whose waits would run into the devices' own timeouts.
    pub max_concurrent_batches: usize,
    /// Most batches from the MQTT broker waiting in the collector, beyond
    /// those the MQTT share of [`Limits::max_concurrent_batches`] lets in
    /// (`--mqtt-max-waiting`; [`Limits::mqtt_max_held`]). Past it a batch
    /// is answered `503` with [`sluice_protocol::mqtt::RETRY_AFTER_MS`] at
    /// once and dropped: the device sends it again after that wait. A few
    /// waiting keep the permits busy between two batches; more would only
    /// hold memory and push waits towards the devices' timeouts.
    pub mqtt_max_waiting: usize,
    /// Most open connections (`--max-connections`). Past it new connections
    /// wait, unaccepted, in the kernel's listen queue until one closes; the
    /// timeouts below make sure one does.
    pub max_connections: usize,
    /// Longest wait for a request's headers (`--header-timeout`), counted
    /// from when the connection starts waiting for them: from the accept,
    /// and on a kept-alive connection from the end of the previous answer,
    /// so it is also the idle keep-alive timeout (that is how hyper's timer
    /// works). Past it the connection is closed without an answer.
    pub header_read_timeout: Duration,
    /// Longest time to read a batch's body (`--body-timeout`), from the
    /// handler's start. Past it: `408`.
    pub body_read_timeout: Duration,
    /// Most results one `GET .../results` returns (`--max-results-page`);
    /// a larger `limit` is lowered to it.
    pub max_results_page: u32,
    /// Longest wait, on shutdown, for requests in flight to finish
    /// (`--shutdown-grace`).
    pub shutdown_grace: Duration,
    /// How long the fleet view keeps its series: per-minute throughput,
    /// backlog and drift windows (`--fleet-retention`). Older rows are
    /// deleted as each device's batches arrive; it bounds what the fleet
    /// endpoints and the dashboard return for a device (one row per minute).
    pub fleet_retention: Duration,
    /// A device without an accepted batch for this long is shown `stale`
    /// (`--stale-after`). Devices upload only when they have records, so
    /// make it longer than an idle device's quietest stretch.
    pub stale_after: Duration,
    /// How long a dashboard session cookie is accepted after it was issued
    /// (`--session-lifetime`), checked by the collector whatever the
    /// browser keeps ([`crate::session`]). Past it the dashboard answers
    /// `401` and the operator opens `?token=` again.
    pub session_lifetime: Duration,
    /// Mark the session cookie `Secure` on every request
    /// (`--secure-cookie`), for a TLS-terminating proxy that does not send
    /// `X-Forwarded-Proto: https` (with one that does, it is marked
    /// `Secure` anyway). Not a bound, but the dashboard's only setting.
    pub secure_cookie: bool,
}

impl Limits {
    /// What [`sluice_serve::serve`] needs of these.
    pub fn serve(&self) -> sluice_serve::ServeLimits {
        sluice_serve::ServeLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            max_buf_size: CONNECTION_BUFFER_BYTES,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

/// Size of the buffer hyper reads one connection's headers and body chunks
/// into (its `max_buf_size`; hyper's default is ~400 KiB). Headers larger
/// than this are refused (`431`); it is what an idle or slow connection
/// costs at most, so it multiplies [`Limits::max_connections`].
pub const CONNECTION_BUFFER_BYTES: usize = 64 << 10;

/// What one accepted record costs besides its bytes: its borrowed JSON
/// slice, its parsed header (id and pipeline, at most ~150 bytes once
/// checked) and the row built from it. An over-estimate, for
/// [`Limits::memory_bound`].
pub const RECORD_OVERHEAD_BYTES: usize = 512;

/// What a device is told to wait, in seconds, when the collector has no
/// room for its batch (`503`, over either transport): long enough for a
/// batch to finish, short enough not to hold results back.
pub const RETRY_AFTER_SECS: u32 = 1;

/// Room for the MQTT header and properties around a batch's body: an MQTT
/// batch message is at most `max_body_bytes` plus this.
pub const MQTT_PACKET_OVERHEAD: usize = 64 << 10;

/// Messages the MQTT client reads off the connection before the collector
/// looks at them: rumqttc parses up to 10 per read, plus the one being
/// read. Each is at most an MQTT batch message.
pub const MQTT_READ_AHEAD: usize = 11;

/// How long a bundle upload's body may take to arrive: bundles are large
/// and operators' links slow, and only one is read at a time.
pub const BUNDLE_UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// How often running rollouts are looked at by the clock (stage
/// deadlines), besides whenever a device reports.
pub const ROLLOUT_TICK: Duration = Duration::from_secs(1);

impl Limits {
    /// The defaults of `sluice-collector`.
    pub const DEFAULT: Limits = Limits {
        max_body_bytes: 16 << 20,
        max_decompressed_bytes: 32 << 20,
        max_bundle_bytes: 64 << 20,
        max_batch_records: 10_000,
        max_concurrent_batches: 8,
        mqtt_max_waiting: 4,
        max_connections: 512,
        header_read_timeout: Duration::from_secs(10),
        body_read_timeout: Duration::from_secs(60),
        max_results_page: 10_000,
        shutdown_grace: Duration::from_secs(10),
        fleet_retention: Duration::from_secs(7 * 24 * 3600),
        stale_after: Duration::from_secs(15 * 60),
        session_lifetime: Duration::from_secs(7 * 24 * 3600),
        secure_cookie: false,
    };

    /// What requests can make the collector hold at once, in bytes, beyond
    /// its baseline (code, SQLite's cache, threads): every batch in
    /// progress with its compressed body, its decompressed text and its
    /// records' bookkeeping, plus every connection's buffer (a plain JSON
    /// batch is not copied: its body is its text), plus what the MQTT
    /// consumer holds ([`Limits::mqtt_memory_bound`]), plus one bundle
    /// upload (its body, and the copy the database is handed).
    pub fn memory_bound(&self) -> u64 {
        let per_batch = self.max_body_bytes as u64
            + self.max_decompressed_bytes as u64
            + (self.max_batch_records * RECORD_OVERHEAD_BYTES) as u64;
        self.max_concurrent_batches as u64 * per_batch
            + self.max_connections as u64 * CONNECTION_BUFFER_BYTES as u64
            + self.mqtt_memory_bound()
            + self.bundle_memory_bound()
    }

    /// What one bundle upload holds (one at a time): its body, and the
    /// copy the database is handed.
    pub fn bundle_memory_bound(&self) -> u64 {
        2 * self.max_bundle_bytes as u64
    }

    /// Batches MQTT may take of [`Limits::max_concurrent_batches`]: half
    /// (at least one), so that HTTP always has the other half.
    pub fn mqtt_share(&self) -> usize {
        (self.max_concurrent_batches / 2).max(1)
    }

    /// Most MQTT batches held at once, in progress or waiting: the MQTT
    /// share plus [`Limits::mqtt_max_waiting`].
    pub fn mqtt_max_held(&self) -> usize {
        self.mqtt_share().saturating_add(self.mqtt_max_waiting)
    }

    /// What the MQTT consumer holds besides the batches in progress (which
    /// [`Limits::memory_bound`] counts with HTTP's): the messages it holds
    /// ([`Limits::mqtt_max_held`], their compressed bodies counted again)
    /// and those read ahead ([`MQTT_READ_AHEAD`]), each a whole message.
    /// Whatever the broker's queue (the receive maximum), the rest stays
    /// with the broker or in the kernel's socket buffer. A collector
    /// without `--mqtt` holds none of it.
    pub fn mqtt_memory_bound(&self) -> u64 {
        (self.mqtt_max_held() + MQTT_READ_AHEAD) as u64
            * (self.max_body_bytes + MQTT_PACKET_OVERHEAD) as u64
    }

    /// Refuse limits that would make the collector unusable (a zero).
    pub fn check(&self) -> Result<(), String> {
        let zero = [
            (
                "max_body_bytes (--max-body-bytes)",
                self.max_body_bytes == 0,
            ),
            (
                "max_decompressed_bytes (--max-decompressed-bytes)",
                self.max_decompressed_bytes == 0,
            ),
            (
                "max_bundle_bytes (--max-bundle-bytes)",
                self.max_bundle_bytes == 0
                    || self.max_bundle_bytes as u64 > crate::rollout::MAX_BUNDLE_BYTES,
            ),
            (
                "max_batch_records (--max-batch-records)",
                self.max_batch_records == 0,
            ),
            (
                "max_concurrent_batches (--max-concurrent-batches)",
                self.max_concurrent_batches == 0,
            ),
            (
                "max_connections (--max-connections)",
                self.max_connections == 0,
            ),
            (
                "header_read_timeout (--header-timeout)",
                self.header_read_timeout.is_zero(),
            ),
            (
                "body_read_timeout (--body-timeout)",
                self.body_read_timeout.is_zero(),
            ),
            (
                "max_results_page (--max-results-page)",
                self.max_results_page == 0,
            ),
            (
                "fleet_retention (--fleet-retention)",
                self.fleet_retention.is_zero(),
            ),
            ("stale_after (--stale-after)", self.stale_after.is_zero()),
            (
                "session_lifetime (--session-lifetime)",
                self.session_lifetime.as_secs() == 0,
            ),
        ];
        match zero.iter().find(|(_, is_zero)| *is_zero) {
            Some((name, _)) => Err(format!(
                "limit {name} must be more than 0{}",
                if name.starts_with("max_bundle_bytes") {
                    format!(" and at most {}", crate::rollout::MAX_BUNDLE_BYTES)
                } else {
                    String::new()
                }
            )),
            None => Ok(()),
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}
