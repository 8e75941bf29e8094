//! The collector's metrics, for Prometheus at `GET /metrics` (OpenMetrics
//! text through `prometheus-client`, as the device's agent does), with the
//! operator token: per-device series name the fleet.
//!
//! Names have the `sluice_collector_` prefix and base units. Events
//! (batches, records, conflicts) are counted as they happen, a relaxed
//! atomic add each; per-device state (last seen, backlog, drift) is read
//! from the store when scraped.
//!
//! Invariant: labels take fixed vocabularies (outcomes, HTTP status codes,
//! conflict kinds) or device names from the token table, so the number of
//! series is bounded by the number of tokens.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sluice_protocol::{DeviceState, FleetView};
use std::sync::atomic::AtomicU64;

/// Labels: pairs of a fixed name and a value.
type Labels = Vec<(&'static str, String)>;

/// The collector's event counters. Clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    batches: Family<Labels, Counter>,
    records: Family<Labels, Counter>,
    conflicts: Family<Labels, Counter>,
    in_progress: Gauge,
}

/// Decrements the in-progress gauge when the request is answered (or
/// dropped).
pub struct InProgress(Gauge);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// A batch was answered `status` with `outcome` (`stored`, `replayed`,
    /// `refused`).
    pub fn batch(&self, outcome: &'static str, status: u16) {
        self.batches
            .get_or_create(&vec![
                ("outcome", outcome.to_owned()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    /// A stored batch had `stored` new records and `duplicates`.
    pub fn records(&self, stored: u64, duplicates: u64) {
        for (outcome, n) in [("stored", stored), ("duplicate", duplicates)] {
            self.records
                .get_or_create(&vec![("outcome", outcome.to_owned())])
                .inc_by(n);
        }
    }

    /// A batch was refused with `409` for `kind` (`key_reused`, `id_conflict`).
    pub fn conflict(&self, kind: &'static str) {
        self.conflicts
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
    }

    /// A request started; it is in progress until the guard drops.
    pub fn request(&self) -> InProgress {
        self.in_progress.inc();
        InProgress(self.in_progress.clone())
    }

    /// Everything as OpenMetrics text (`sluice_serve::metrics` answers it,
    /// or the Prometheus text format), with the state of the fleet in
    /// `view` and its install steps (`(device, outcome, count)`).
    pub fn encode(&self, view: &FleetView, installs: &[(String, String, u64)]) -> String {
        let (devices, now) = (&view.devices, view.at_ms);
        // A registry per scrape: the counters are shared clones, the
        // per-device gauges are made from the store's state of the moment
        // (so a device's series is exactly its token's, never a leftover).
        let mut registry = Registry::with_prefix("sluice_collector");
        registry.register(
            "batches",
            "Batches answered, by outcome (stored, replayed, refused) and HTTP status",
            self.batches.clone(),
        );
        registry.register(
            "records",
            "Records of stored batches, by outcome (stored: new, duplicate: stored before)",
            self.records.clone(),
        );
        registry.register(
            "conflicts",
            "Batches refused 409, by kind (key_reused, id_conflict)",
            self.conflicts.clone(),
        );
        registry.register(
            "requests_in_progress",
            "HTTP requests being answered",
            self.in_progress.clone(),
        );
        let age = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let backlog = Family::<Labels, Gauge>::default();
        let drift = Family::<Labels, Gauge>::default();
        let errors = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for d in devices {
            if let Some(rate) = d.error_rate {
                errors
                    .get_or_create(&vec![("device", d.device.clone())])
                    .set(rate);
            }
            let device = vec![("device", d.device.clone())];
            let seen = d
                .last_seen_ms
                .map(|t| (now - t).max(0) as f64 / 1000.0)
                .unwrap_or(-1.0);
            age.get_or_create(&device).set(seen);
            if let Some(status) = &d.status {
                backlog
                    .get_or_create(&device)
                    .set(status.pending_records.min(i64::MAX as u64) as i64);
            }
            drift
                .get_or_create(&device)
                .set((d.state == DeviceState::Drift) as i64);
        }
        registry.register(
            "device_last_seen_age_seconds",
            "Time since the device's last accepted batch (-1: never), per device with a token",
            age,
        );
        registry.register(
            "device_pending_records",
            "Records waiting on the device, as its last batch reported",
            backlog,
        );
        registry.register(
            "device_drift",
            "1 when the latest drift window of one of the device's pipelines raised an alarm",
            drift,
        );
        registry.register(
            "device_error_ratio",
            "Share of the device's results of the last hour that failed (absent: no results then)",
            errors,
        );
        let steps = Family::<Labels, Gauge>::default();
        for (device, outcome, count) in installs {
            steps
                .get_or_create(&vec![
                    ("device", device.clone()),
                    ("outcome", outcome.clone()),
                ])
                .set((*count).min(i64::MAX as u64) as i64);
        }
        registry.register(
            "device_install_steps",
            "Bundle install steps the device reported, by outcome (installed, committed, refused, rolled-back, ignored)",
            steps,
        );
        let versions = Family::<Labels, Gauge>::default();
        for v in &view.versions {
            versions
                .get_or_create(&vec![
                    ("bundle", v.name.clone()),
                    ("version", v.version.to_string()),
                ])
                .set(v.devices.min(i64::MAX as u64) as i64);
        }
        registry.register(
            "bundle_devices",
            "Devices whose latest results ran this bundle version: which version runs where",
            versions,
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }
}
