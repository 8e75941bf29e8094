//! The fleet view's tables: per device what an operator wants at a glance
//! (last seen, backlog, versions, throughput, drift), kept up to date in
//! the transaction that stores each batch, so the view is never ahead of or
//! behind what was acknowledged.
//!
//! Invariants:
//! * only records *newly* stored count (duplicates and replays were counted
//!   when first stored); a replayed or duplicate batch still refreshes last
//!   seen and the status, since it shows the device alive;
//! * everything is bounded per device, so a device's table rows cannot
//!   grow without end: time series (minute buckets, drift windows) by
//!   the retention ([`crate::Limits::fleet_retention`]), and by count where
//!   a hostile device could otherwise multiply rows ([`MAX_VERSIONS`],
//!   [`MAX_PIPELINES`], [`MAX_WINDOWS`]); strings from records are cut to
//!   [`MAX_TEXT_BYTES`], drift scores to the [`MAX_SCORES`] most drifted;
//! * record fields are untrusted: a record whose fleet fields do not have
//!   their protocol types still stores (the collector stores any record
//!   with a valid header) and counts toward nothing here.

mod bundles;

pub use bundles::{ERROR_RATE_WINDOW_MS, MAX_INSTALL_ROWS, MAX_INSTALLS};
pub(crate) use bundles::{install_counts, installs, trim_installs, version_counts};

use crate::store::sql::{SqlError, SqlRow, Tx, args};
use serde::Deserialize;
use sluice_protocol::{
    BacklogPoint, DeviceState, DeviceStatus, DriftPoint, DriftScore, DriftState, FleetSummary,
    RecordKind, TrafficBucket, VersionSeen,
};
use std::collections::BTreeSet;

/// Versions (Sluice, models, plugins with digests) kept per device; past
/// it the least recently seen are forgotten.
pub const MAX_VERSIONS: usize = 64;
/// Pipelines whose latest drift window is kept per device; past it the
/// least recently heard from are forgotten.
pub const MAX_PIPELINES: usize = 64;
/// Drift windows kept per device (also within the retention); past it the
/// oldest are forgotten.
pub const MAX_WINDOWS: usize = 10_000;
/// Scores kept per drift window: the most drifted (largest value over
/// threshold).
pub const MAX_SCORES: usize = 8;
/// Longest string taken from a record (names, versions, digests, features).
pub const MAX_TEXT_BYTES: usize = 200;
/// How far ahead of the collector's clock a device's timestamps may be and
/// still be believed; see [`bucket_time`].
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

const MINUTE_MS: i64 = 60_000;

/// Text cut to [`MAX_TEXT_BYTES`] on a character boundary.
fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The fields of a record the fleet view uses, of any kind; unknown fields
/// are skipped unread.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Facts {
    kind: RecordKind,
    completed_at_ms: Option<i64>,
    sluice_version: Option<String>,
    provenance: Option<ProvenanceFacts>,
    error: Option<serde::de::IgnoredAny>,
    // Drift windows.
    model: Option<String>,
    ended_at_ms: Option<i64>,
    items: Option<u64>,
    alarm: Option<bool>,
    scores: Option<Vec<DriftScore>>,
    // Install reports.
    version: Option<u64>,
    outcome: Option<String>,
    reason: Option<String>,
    at_ms: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ProvenanceFacts {
    bundle: Option<BundleFacts>,
    model: String,
    model_sha256: String,
    preprocess: String,
    preprocess_sha256: String,
    postprocess: String,
    postprocess_sha256: String,
}

#[derive(Deserialize)]
struct BundleFacts {
    name: String,
    version: u64,
}

/// A score's value over its threshold, finite (JSON has no infinities).
fn ratio(score: &DriftScore) -> f64 {
    let r = if score.threshold > 0.0 {
        score.value / score.threshold
    } else if score.drifted {
        1e6
    } else {
        0.0
    };
    if r.is_finite() {
        r.clamp(-1e6, 1e6)
    } else {
        0.0
    }
}

/// The minute a result counts in: when the device made it, if its clock is
/// plausible (within the retention before `now`, at most
/// [`MAX_CLOCK_SKEW_MS`] after), else when it arrived. Device time shows
/// the throughput as it was while the device was offline; arrival time
/// keeps boards without a real-time clock (1970) from vanishing.
fn bucket_time(completed_at_ms: Option<i64>, now: i64, retention_ms: i64) -> i64 {
    let t = completed_at_ms
        .filter(|t| *t >= now - retention_ms && *t <= now + MAX_CLOCK_SKEW_MS)
        .unwrap_or(now);
    t.div_euclid(MINUTE_MS) * MINUTE_MS
}

/// What one batch adds to the fleet view, gathered before writing.
#[derive(Default)]
pub(crate) struct BatchFacts {
    traffic: std::collections::BTreeMap<i64, (u64, u64)>,
    versions: BTreeSet<(&'static str, String, String)>,
    sluice_version: Option<String>,
    windows: Vec<DriftPoint>,
    records: u64,
    /// Install reports: `(bundle name, version, outcome, reason, at_ms)`.
    pub(crate) installs: Vec<(String, u64, String, Option<String>, i64)>,
    /// The bundle each name's latest result ran with.
    bundles: std::collections::BTreeMap<String, u64>,
}

impl BatchFacts {
    /// Count a newly stored record of `pipeline` (`seq`), JSON text `body`.
    pub(crate) fn add(
        &mut self,
        pipeline: &str,
        seq: i64,
        body: &str,
        now: i64,
        retention_ms: i64,
    ) {
        self.records += 1;
        let Ok(facts) = serde_json::from_str::<Facts>(body) else {
            return;
        };
        if let Some(version) = &facts.sluice_version {
            let version = cut(version);
            self.versions
                .insert(("sluice", version.clone(), String::new()));
            self.sluice_version = Some(version);
        }
        match facts.kind {
            RecordKind::Result => {
                let minute = bucket_time(facts.completed_at_ms, now, retention_ms);
                let counts = self.traffic.entry(minute).or_default();
                if facts.error.is_some() {
                    counts.1 += 1;
                } else {
                    counts.0 += 1;
                }
                if let Some(p) = facts.provenance {
                    if let Some(b) = p.bundle {
                        self.bundles.insert(cut(&b.name), b.version);
                    }
                    for (what, name, sha) in [
                        ("model", p.model, p.model_sha256),
                        ("preprocess", p.preprocess, p.preprocess_sha256),
                        ("postprocess", p.postprocess, p.postprocess_sha256),
                    ] {
                        if !name.is_empty() || !sha.is_empty() {
                            self.versions.insert((what, cut(&name), cut(&sha)));
                        }
                    }
                }
            }
            RecordKind::DriftWindow => {
                let mut scores = facts.scores.unwrap_or_default();
                let scores_total = scores.len() as u64;
                scores.sort_by(|a, b| ratio(b).total_cmp(&ratio(a)));
                scores.truncate(MAX_SCORES);
                for s in &mut scores {
                    s.feature = cut(&s.feature);
                    s.statistic = cut(&s.statistic);
                }
                let max_ratio = scores.first().map(ratio).unwrap_or(0.0);
                self.windows.push(DriftPoint {
                    pipeline: pipeline.to_owned(),
                    seq,
                    model: cut(facts.model.as_deref().unwrap_or_default()),
                    ended_at_ms: facts.ended_at_ms.unwrap_or(0),
                    received_ms: now,
                    items: facts.items.unwrap_or(0),
                    alarm: facts.alarm.unwrap_or(false),
                    max_ratio,
                    scores,
                    scores_total,
                });
            }
            RecordKind::Install => {
                if let (Some(version), Some(outcome)) = (facts.version, facts.outcome) {
                    self.installs.push((
                        pipeline.to_owned(),
                        version,
                        cut(&outcome),
                        facts.reason.as_deref().map(cut),
                        facts.at_ms.unwrap_or(now),
                    ));
                }
            }
            _ => {}
        }
    }
}

/// Write what `device`'s batch adds (`facts`: nothing for a replay) and
/// its `status`, in the batch's transaction, then drop what is past the
/// retention or the caps.
pub(crate) fn write(
    tx: &mut dyn Tx,
    device: &str,
    now: i64,
    retention_ms: i64,
    status: Option<&DeviceStatus>,
    facts: &BatchFacts,
) -> Result<(), SqlError> {
    let status_json = status.map(|s| {
        let mut s = s.clone();
        s.sluice_version = cut(&s.sluice_version);
        serde_json::to_string(&s).expect("a status serializes")
    });
    let version = status
        .map(|s| cut(&s.sluice_version))
        .filter(|v| !v.is_empty())
        .or_else(|| facts.sluice_version.clone());
    tx.exec(
        "INSERT INTO fleet_devices(device, last_seen_ms, records, status, sluice_version)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(device) DO UPDATE SET last_seen_ms = excluded.last_seen_ms,
            records = fleet_devices.records + excluded.records,
            status = coalesce(excluded.status, fleet_devices.status),
            sluice_version = coalesce(excluded.sluice_version, fleet_devices.sluice_version)",
        args![
            device,
            now,
            facts.records as i64,
            status_json.as_deref(),
            version.as_deref()
        ],
    )?;
    let cutoff = now - retention_ms;
    if let Some(s) = status {
        tx.exec(
            "INSERT INTO fleet_backlog(device, minute_ms, received_ms, pending_records, journal_items, set_aside_records)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(device, minute_ms) DO UPDATE SET received_ms = excluded.received_ms,
                pending_records = excluded.pending_records, journal_items = excluded.journal_items,
                set_aside_records = excluded.set_aside_records",
            args![
                device,
                now.div_euclid(MINUTE_MS) * MINUTE_MS,
                now,
                s.pending_records as i64,
                s.journal_items as i64,
                s.set_aside_records as i64
            ],
        )?;
        if !s.sluice_version.is_empty() {
            upsert_version(tx, device, now, "sluice", &cut(&s.sluice_version), "")?;
        }
    }
    for (minute, (ok, errors)) in &facts.traffic {
        tx.exec(
            "INSERT INTO fleet_traffic(device, minute_ms, ok, errors) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(device, minute_ms) DO UPDATE SET ok = fleet_traffic.ok + excluded.ok,
                errors = fleet_traffic.errors + excluded.errors",
            args![device, *minute, *ok as i64, *errors as i64],
        )?;
    }
    for (what, name, sha) in &facts.versions {
        upsert_version(tx, device, now, what, name, sha)?;
    }
    bundles::write(tx, device, now, &facts.bundles)?;
    for w in &facts.windows {
        let json = serde_json::to_string(w).expect("a window serializes");
        tx.exec(
            "INSERT INTO fleet_drift(device, pipeline, seq, received_ms, alarm, \"window\") VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(device, pipeline, seq) DO UPDATE SET received_ms = excluded.received_ms,
                alarm = excluded.alarm, \"window\" = excluded.\"window\"",
            args![device, &w.pipeline, w.seq, now, w.alarm, json.as_str()],
        )?;
        tx.exec(
            "INSERT INTO fleet_drift_latest(device, pipeline, received_ms, alarm, \"window\") VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(device, pipeline) DO UPDATE SET received_ms = excluded.received_ms,
                alarm = excluded.alarm, \"window\" = excluded.\"window\"",
            args![device, &w.pipeline, now, w.alarm, json.as_str()],
        )?;
    }
    // The bounds: by age, then by count.
    tx.exec(
        "DELETE FROM fleet_traffic WHERE device = ?1 AND minute_ms < ?2",
        args![device, cutoff],
    )?;
    tx.exec(
        "DELETE FROM fleet_backlog WHERE device = ?1 AND minute_ms < ?2",
        args![device, cutoff],
    )?;
    tx.exec(
        "DELETE FROM fleet_drift WHERE device = ?1 AND received_ms < ?2",
        args![device, cutoff],
    )?;
    if !facts.versions.is_empty() || status.is_some() {
        tx.exec(
            "DELETE FROM fleet_versions WHERE device = ?1 AND (what, name, sha256) NOT IN
                (SELECT what, name, sha256 FROM fleet_versions WHERE device = ?1
                 ORDER BY last_seen_ms DESC, what, name, sha256 LIMIT ?2)",
            args![device, MAX_VERSIONS as i64],
        )?;
    }
    if !facts.windows.is_empty() {
        tx.exec(
            "DELETE FROM fleet_drift WHERE device = ?1 AND (pipeline, seq) NOT IN
                (SELECT pipeline, seq FROM fleet_drift WHERE device = ?1
                 ORDER BY received_ms DESC, seq DESC, pipeline LIMIT ?2)",
            args![device, MAX_WINDOWS as i64],
        )?;
        tx.exec(
            "DELETE FROM fleet_drift_latest WHERE device = ?1 AND pipeline NOT IN
                (SELECT pipeline FROM fleet_drift_latest WHERE device = ?1
                 ORDER BY received_ms DESC, pipeline LIMIT ?2)",
            args![device, MAX_PIPELINES as i64],
        )?;
    }
    Ok(())
}

fn upsert_version(
    tx: &mut dyn Tx,
    device: &str,
    now: i64,
    what: &str,
    name: &str,
    sha: &str,
) -> Result<(), SqlError> {
    tx.exec(
        "INSERT INTO fleet_versions(device, what, name, sha256, first_seen_ms, last_seen_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT(device, what, name, sha256) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
        args![device, what, name, sha, now],
    )?;
    Ok(())
}

fn window(row: &SqlRow, i: usize) -> Result<DriftPoint, SqlError> {
    serde_json::from_str(&row.text(i)?)
        .map_err(|e| SqlError::Decode(format!("a stored drift window: {e}")))
}

/// `device` at a glance, as of `now`.
pub(crate) fn summary(
    tx: &mut dyn Tx,
    device: &str,
    now: i64,
    stale_after_ms: i64,
) -> Result<FleetSummary, SqlError> {
    let row = tx.query_opt(
        "SELECT last_seen_ms, records, status, sluice_version FROM fleet_devices WHERE device = ?1",
        args![device],
    )?;
    let drifting: Vec<String> = tx
        .query(
            "SELECT pipeline FROM fleet_drift_latest WHERE device = ?1 AND alarm ORDER BY pipeline",
            args![device],
        )?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<_, _>>()?;
    let Some(row) = row else {
        return Ok(FleetSummary {
            device: device.to_owned(),
            state: DeviceState::Unseen,
            last_seen_ms: None,
            status: None,
            sluice_version: None,
            records: 0,
            drifting,
            error_rate: None,
            bundles: Vec::new(),
        });
    };
    let last_seen = row.int(0)?;
    let state = if !drifting.is_empty() {
        DeviceState::Drift
    } else if now - last_seen > stale_after_ms {
        DeviceState::Stale
    } else {
        DeviceState::Ok
    };
    Ok(FleetSummary {
        device: device.to_owned(),
        state,
        last_seen_ms: Some(last_seen),
        status: row.opt_text(2)?.and_then(|s| serde_json::from_str(&s).ok()),
        sluice_version: row.opt_text(3)?,
        records: row.int(1)?.max(0) as u64,
        drifting,
        error_rate: bundles::error_rate(tx, device, now)?,
        bundles: bundles::running(tx, device)?,
    })
}

/// `device`'s series since `since_ms`.
pub(crate) struct History {
    pub traffic: Vec<TrafficBucket>,
    pub backlog: Vec<BacklogPoint>,
    pub versions: Vec<VersionSeen>,
    pub drift: Vec<DriftState>,
    pub windows: Vec<DriftPoint>,
}

pub(crate) fn history(tx: &mut dyn Tx, device: &str, since_ms: i64) -> Result<History, SqlError> {
    let count = |r: &SqlRow, i| r.int(i).map(|v| v.max(0) as u64);
    let traffic = tx
        .query(
            "SELECT minute_ms, ok, errors FROM fleet_traffic WHERE device = ?1 AND minute_ms >= ?2 ORDER BY minute_ms",
            args![device, since_ms],
        )?
        .iter()
        .map(|r| {
            Ok(TrafficBucket {
                minute_ms: r.int(0)?,
                ok: count(r, 1)?,
                errors: count(r, 2)?,
            })
        })
        .collect::<Result<_, SqlError>>()?;
    let backlog = tx
        .query(
            "SELECT received_ms, pending_records, journal_items, set_aside_records FROM fleet_backlog
             WHERE device = ?1 AND minute_ms >= ?2 ORDER BY minute_ms",
            args![device, since_ms],
        )?
        .iter()
        .map(|r| {
            Ok(BacklogPoint {
                received_ms: r.int(0)?,
                pending_records: count(r, 1)?,
                journal_items: count(r, 2)?,
                set_aside_records: count(r, 3)?,
            })
        })
        .collect::<Result<_, SqlError>>()?;
    let versions = tx
        .query(
            "SELECT what, name, sha256, first_seen_ms, last_seen_ms FROM fleet_versions
             WHERE device = ?1 ORDER BY what, last_seen_ms DESC",
            args![device],
        )?
        .iter()
        .map(|r| {
            Ok(VersionSeen {
                what: r.text(0)?,
                name: r.text(1)?,
                sha256: r.text(2)?,
                first_seen_ms: r.int(3)?,
                last_seen_ms: r.int(4)?,
            })
        })
        .collect::<Result<_, SqlError>>()?;
    let drift = tx
        .query(
            "SELECT pipeline, \"window\" FROM fleet_drift_latest WHERE device = ?1 ORDER BY pipeline",
            args![device],
        )?
        .iter()
        .map(|r| {
            Ok(DriftState {
                pipeline: r.text(0)?,
                window: window(r, 1)?,
            })
        })
        .collect::<Result<_, SqlError>>()?;
    let windows = tx
        .query(
            "SELECT \"window\" FROM fleet_drift WHERE device = ?1 AND received_ms >= ?2
             ORDER BY received_ms, pipeline, seq",
            args![device, since_ms],
        )?
        .iter()
        .map(|r| window(r, 0))
        .collect::<Result<_, SqlError>>()?;
    Ok(History {
        traffic,
        backlog,
        versions,
        drift,
        windows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implausible_device_clocks_count_at_arrival() {
        let now = 1_000 * MINUTE_MS + 30_000;
        let day = 24 * 60 * MINUTE_MS;
        assert_eq!(
            bucket_time(Some(now - 5 * MINUTE_MS), now, day),
            995 * MINUTE_MS
        );
        assert_eq!(
            bucket_time(Some(0), now + day, day),
            (now + day) / MINUTE_MS * MINUTE_MS
        );
        assert_eq!(bucket_time(Some(now + day), now, day), 1_000 * MINUTE_MS);
        assert_eq!(bucket_time(None, now, day), 1_000 * MINUTE_MS);
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_TEXT_BYTES);
        let cut = cut(&long);
        assert!(cut.len() <= MAX_TEXT_BYTES && cut.chars().all(|c| c == 'é'));
    }
}
