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

use rusqlite::{OptionalExtension, Transaction, params};
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

/// The tables of schema 3 (added to schema 2's).
pub(crate) const TABLES: &str = "
CREATE TABLE fleet_devices(
    device TEXT PRIMARY KEY,
    last_seen_ms INTEGER NOT NULL,
    records INTEGER NOT NULL DEFAULT 0,
    status TEXT,
    sluice_version TEXT
);
CREATE TABLE fleet_traffic(
    device TEXT NOT NULL,
    minute_ms INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    PRIMARY KEY(device, minute_ms)
) WITHOUT ROWID;
CREATE TABLE fleet_backlog(
    device TEXT NOT NULL,
    minute_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    pending_records INTEGER NOT NULL,
    journal_items INTEGER NOT NULL,
    set_aside_records INTEGER NOT NULL,
    PRIMARY KEY(device, minute_ms)
) WITHOUT ROWID;
CREATE TABLE fleet_versions(
    device TEXT NOT NULL,
    what TEXT NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY(device, what, name, sha256)
);
CREATE TABLE fleet_drift(
    device TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    seq INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    alarm INTEGER NOT NULL,
    window TEXT NOT NULL,
    PRIMARY KEY(device, pipeline, seq)
);
CREATE INDEX fleet_drift_received ON fleet_drift(device, received_ms);
CREATE TABLE fleet_drift_latest(
    device TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    alarm INTEGER NOT NULL,
    window TEXT NOT NULL,
    PRIMARY KEY(device, pipeline)
);
";

/// Schema 2 to 3, in the caller's transaction: the fleet tables, with what
/// can be rebuilt from stored batches and results: each device's last seen
/// and record count, and its throughput over the retention. Versions,
/// backlog and drift start with the first batch after the upgrade (the
/// records hold them, but rebuilding them is not worth a slow upgrade).
pub(crate) fn migrate_2_to_3(
    tx: &Transaction<'_>,
    now: i64,
    retention_ms: i64,
) -> rusqlite::Result<()> {
    tx.execute_batch(TABLES)?;
    tx.execute(
        "INSERT INTO fleet_devices(device, last_seen_ms, records)
         SELECT b.device, MAX(b.received_at_ms), (SELECT COUNT(*) FROM results r WHERE r.device = b.device)
         FROM batches b GROUP BY b.device",
        [],
    )?;
    // The same minute as `bucket_time`, with arrival for "now".
    tx.execute(
        "INSERT INTO fleet_traffic(device, minute_ms, ok, errors)
         SELECT device, (t / 60000) * 60000, SUM(failed IS NULL), SUM(failed IS NOT NULL) FROM (
             SELECT device,
                 CASE WHEN typeof(json_extract(body, '$.completed_at_ms')) = 'integer'
                      AND json_extract(body, '$.completed_at_ms') BETWEEN received_at_ms - :retention AND received_at_ms + :skew
                     THEN json_extract(body, '$.completed_at_ms') ELSE received_at_ms END AS t,
                 json_extract(body, '$.error') AS failed
             FROM results
             WHERE received_at_ms >= :now - :retention AND json_valid(body)
                 AND coalesce(json_extract(body, '$.kind'), 'result') = 'result'
         ) WHERE t >= :now - :retention
         GROUP BY device, (t / 60000) * 60000",
        rusqlite::named_params! {":now": now, ":retention": retention_ms, ":skew": MAX_CLOCK_SKEW_MS},
    )?;
    Ok(())
}

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
    model: String,
    model_sha256: String,
    preprocess: String,
    preprocess_sha256: String,
    postprocess: String,
    postprocess_sha256: String,
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
    tx: &Transaction<'_>,
    device: &str,
    now: i64,
    retention_ms: i64,
    status: Option<&DeviceStatus>,
    facts: &BatchFacts,
) -> rusqlite::Result<()> {
    let status_json = status.map(|s| {
        let mut s = s.clone();
        s.sluice_version = cut(&s.sluice_version);
        serde_json::to_string(&s).expect("a status serializes")
    });
    let version = status
        .map(|s| cut(&s.sluice_version))
        .filter(|v| !v.is_empty())
        .or_else(|| facts.sluice_version.clone());
    tx.prepare_cached(
        "INSERT INTO fleet_devices(device, last_seen_ms, records, status, sluice_version)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(device) DO UPDATE SET last_seen_ms = excluded.last_seen_ms,
            records = records + excluded.records,
            status = coalesce(excluded.status, status),
            sluice_version = coalesce(excluded.sluice_version, sluice_version)",
    )?
    .execute(params![
        device,
        now,
        facts.records as i64,
        status_json,
        version
    ])?;
    let cutoff = now - retention_ms;
    if let Some(s) = status {
        tx.prepare_cached("INSERT OR REPLACE INTO fleet_backlog VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
            .execute(params![
                device,
                now.div_euclid(MINUTE_MS) * MINUTE_MS,
                now,
                s.pending_records as i64,
                s.journal_items as i64,
                s.set_aside_records as i64
            ])?;
        if !s.sluice_version.is_empty() {
            upsert_version(tx, device, now, "sluice", &cut(&s.sluice_version), "")?;
        }
    }
    {
        let mut traffic = tx.prepare_cached(
            "INSERT INTO fleet_traffic VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(device, minute_ms) DO UPDATE SET ok = ok + excluded.ok, errors = errors + excluded.errors",
        )?;
        for (minute, (ok, errors)) in &facts.traffic {
            traffic.execute(params![device, minute, *ok as i64, *errors as i64])?;
        }
    }
    for (what, name, sha) in &facts.versions {
        upsert_version(tx, device, now, what, name, sha)?;
    }
    {
        let mut window = tx
            .prepare_cached("INSERT OR REPLACE INTO fleet_drift VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
        let mut latest = tx.prepare_cached(
            "INSERT OR REPLACE INTO fleet_drift_latest VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for w in &facts.windows {
            let json = serde_json::to_string(w).expect("a window serializes");
            window.execute(params![device, w.pipeline, w.seq, now, w.alarm, json])?;
            latest.execute(params![device, w.pipeline, now, w.alarm, json])?;
        }
    }
    // The bounds: by age, then by count.
    tx.prepare_cached("DELETE FROM fleet_traffic WHERE device = ?1 AND minute_ms < ?2")?
        .execute(params![device, cutoff])?;
    tx.prepare_cached("DELETE FROM fleet_backlog WHERE device = ?1 AND minute_ms < ?2")?
        .execute(params![device, cutoff])?;
    tx.prepare_cached("DELETE FROM fleet_drift WHERE device = ?1 AND received_ms < ?2")?
        .execute(params![device, cutoff])?;
    if !facts.versions.is_empty() || status.is_some() {
        tx.prepare_cached(
            "DELETE FROM fleet_versions WHERE device = ?1 AND rowid NOT IN
                (SELECT rowid FROM fleet_versions WHERE device = ?1 ORDER BY last_seen_ms DESC, rowid DESC LIMIT ?2)",
        )?
        .execute(params![device, MAX_VERSIONS as i64])?;
    }
    if !facts.windows.is_empty() {
        tx.prepare_cached(
            "DELETE FROM fleet_drift WHERE device = ?1 AND rowid NOT IN
                (SELECT rowid FROM fleet_drift WHERE device = ?1 ORDER BY received_ms DESC, rowid DESC LIMIT ?2)",
        )?
        .execute(params![device, MAX_WINDOWS as i64])?;
        tx.prepare_cached(
            "DELETE FROM fleet_drift_latest WHERE device = ?1 AND rowid NOT IN
                (SELECT rowid FROM fleet_drift_latest WHERE device = ?1 ORDER BY received_ms DESC, rowid DESC LIMIT ?2)",
        )?
        .execute(params![device, MAX_PIPELINES as i64])?;
    }
    Ok(())
}

fn upsert_version(
    tx: &Transaction<'_>,
    device: &str,
    now: i64,
    what: &str,
    name: &str,
    sha: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO fleet_versions VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT(device, what, name, sha256) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
    )?
    .execute(params![device, what, name, sha, now])?;
    Ok(())
}

fn window(json: String) -> rusqlite::Result<DriftPoint> {
    serde_json::from_str(&json).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

/// `device` at a glance, as of `now`.
pub(crate) fn summary(
    conn: &rusqlite::Connection,
    device: &str,
    now: i64,
    stale_after_ms: i64,
) -> rusqlite::Result<FleetSummary> {
    let row: Option<(i64, i64, Option<String>, Option<String>)> = conn
        .prepare_cached(
            "SELECT last_seen_ms, records, status, sluice_version FROM fleet_devices WHERE device = ?1",
        )?
        .query_row([device], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let drifting: Vec<String> = conn
        .prepare_cached(
            "SELECT pipeline FROM fleet_drift_latest WHERE device = ?1 AND alarm ORDER BY pipeline",
        )?
        .query_map([device], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let Some((last_seen, records, status, sluice_version)) = row else {
        return Ok(FleetSummary {
            device: device.to_owned(),
            state: DeviceState::Unseen,
            last_seen_ms: None,
            status: None,
            sluice_version: None,
            records: 0,
            drifting,
        });
    };
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
        status: status.and_then(|s| serde_json::from_str(&s).ok()),
        sluice_version,
        records: records.max(0) as u64,
        drifting,
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

pub(crate) fn history(
    conn: &rusqlite::Connection,
    device: &str,
    since_ms: i64,
) -> rusqlite::Result<History> {
    let traffic = conn
        .prepare_cached(
            "SELECT minute_ms, ok, errors FROM fleet_traffic WHERE device = ?1 AND minute_ms >= ?2 ORDER BY minute_ms",
        )?
        .query_map(params![device, since_ms], |r| {
            Ok(TrafficBucket {
                minute_ms: r.get(0)?,
                ok: r.get::<_, i64>(1)?.max(0) as u64,
                errors: r.get::<_, i64>(2)?.max(0) as u64,
            })
        })?
        .collect::<Result<_, _>>()?;
    let backlog = conn
        .prepare_cached(
            "SELECT received_ms, pending_records, journal_items, set_aside_records FROM fleet_backlog
             WHERE device = ?1 AND minute_ms >= ?2 ORDER BY minute_ms",
        )?
        .query_map(params![device, since_ms], |r| {
            Ok(BacklogPoint {
                received_ms: r.get(0)?,
                pending_records: r.get::<_, i64>(1)?.max(0) as u64,
                journal_items: r.get::<_, i64>(2)?.max(0) as u64,
                set_aside_records: r.get::<_, i64>(3)?.max(0) as u64,
            })
        })?
        .collect::<Result<_, _>>()?;
    let versions = conn
        .prepare_cached(
            "SELECT what, name, sha256, first_seen_ms, last_seen_ms FROM fleet_versions
             WHERE device = ?1 ORDER BY what, last_seen_ms DESC",
        )?
        .query_map([device], |r| {
            Ok(VersionSeen {
                what: r.get(0)?,
                name: r.get(1)?,
                sha256: r.get(2)?,
                first_seen_ms: r.get(3)?,
                last_seen_ms: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let drift = conn
        .prepare_cached(
            "SELECT pipeline, window FROM fleet_drift_latest WHERE device = ?1 ORDER BY pipeline",
        )?
        .query_map([device], |r| {
            Ok(DriftState {
                pipeline: r.get(0)?,
                window: window(r.get(1)?)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let windows = conn
        .prepare_cached(
            "SELECT window FROM fleet_drift WHERE device = ?1 AND received_ms >= ?2
             ORDER BY received_ms, pipeline, seq",
        )?
        .query_map(params![device, since_ms], |r| window(r.get(0)?))?
        .collect::<Result<_, _>>()?;
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
