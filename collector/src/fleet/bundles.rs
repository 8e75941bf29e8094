//! What the fleet view says about bundles and health: which bundle version
//! each device runs (by its latest results), the fleet's version
//! distribution, each device's install history, and its recent error rate.

use super::{MAX_PIPELINES, MINUTE_MS, cut};
use crate::store::sql::{SqlError, Tx, args};
use sluice_protocol::{BundleRunning, InstallEvent, VersionCount};
use std::collections::BTreeMap;

/// Install steps a device page shows: the newest.
pub const MAX_INSTALLS: usize = 100;
/// Install steps kept per device; past it the oldest are forgotten (a
/// hostile device cannot grow the table by reporting ever new versions).
pub const MAX_INSTALL_ROWS: usize = 1000;
/// The window of [`sluice_protocol::FleetSummary::error_rate`].
pub const ERROR_RATE_WINDOW_MS: i64 = 60 * MINUTE_MS;

/// Record that `device`'s latest results ran `bundles` (name → version).
pub(crate) fn write(
    tx: &mut dyn Tx,
    device: &str,
    now: i64,
    bundles: &BTreeMap<String, u64>,
) -> Result<(), SqlError> {
    for (name, version) in bundles {
        tx.exec(
            "INSERT INTO fleet_bundles(device, name, version, last_seen_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(device, name) DO UPDATE SET version = excluded.version, last_seen_ms = excluded.last_seen_ms",
            args![device, &cut(name), i64::try_from(*version).unwrap_or(i64::MAX), now],
        )?;
    }
    if !bundles.is_empty() {
        tx.exec(
            "DELETE FROM fleet_bundles WHERE device = ?1 AND name NOT IN
                (SELECT name FROM fleet_bundles WHERE device = ?1 ORDER BY last_seen_ms DESC, name LIMIT ?2)",
            args![device, MAX_PIPELINES as i64],
        )?;
    }
    Ok(())
}

/// Forget all but the newest [`MAX_INSTALL_ROWS`] install steps of `device`.
pub(crate) fn trim_installs(tx: &mut dyn Tx, device: &str) -> Result<(), SqlError> {
    tx.exec(
        "DELETE FROM installs WHERE device = ?1 AND (name, version, outcome) NOT IN
            (SELECT name, version, outcome FROM installs WHERE device = ?1
             ORDER BY at_ms DESC, name, version, outcome LIMIT ?2)",
        args![device, MAX_INSTALL_ROWS as i64],
    )?;
    Ok(())
}

/// The bundle versions `device` runs, by name.
pub(crate) fn running(tx: &mut dyn Tx, device: &str) -> Result<Vec<BundleRunning>, SqlError> {
    tx.query(
        "SELECT name, version FROM fleet_bundles WHERE device = ?1 ORDER BY name",
        args![device],
    )?
    .iter()
    .map(|r| {
        Ok(BundleRunning {
            name: r.text(0)?,
            version: r.int(1)?.max(0) as u64,
        })
    })
    .collect()
}

/// The share of `device`'s results of the last hour that failed.
pub(crate) fn error_rate(tx: &mut dyn Tx, device: &str, now: i64) -> Result<Option<f64>, SqlError> {
    let row = tx.query_opt(
        // Cast: PostgreSQL sums BIGINTs as NUMERIC.
        "SELECT CAST(COALESCE(SUM(ok), 0) AS BIGINT), CAST(COALESCE(SUM(errors), 0) AS BIGINT)
         FROM fleet_traffic WHERE device = ?1 AND minute_ms >= ?2",
        args![device, now - ERROR_RATE_WINDOW_MS],
    )?;
    let (ok, errors) = match row {
        Some(r) => (r.int(0)?, r.int(1)?),
        None => (0, 0),
    };
    let total = ok.saturating_add(errors);
    Ok((total > 0).then(|| errors as f64 / total as f64))
}

/// `device`'s install history, newest first.
pub(crate) fn installs(tx: &mut dyn Tx, device: &str) -> Result<Vec<InstallEvent>, SqlError> {
    tx.query(
        "SELECT name, version, outcome, reason, at_ms FROM installs WHERE device = ?1
         ORDER BY at_ms DESC, name, version DESC LIMIT ?2",
        args![device, MAX_INSTALLS as i64],
    )?
    .iter()
    .map(|r| {
        Ok(InstallEvent {
            name: r.text(0)?,
            version: r.int(1)?.max(0) as u64,
            outcome: r.text(2)?,
            reason: r.opt_text(3)?,
            at_ms: r.int(4)?,
        })
    })
    .collect()
}

/// Devices per bundle name and version, among `devices`.
pub(crate) fn version_counts(
    tx: &mut dyn Tx,
    devices: &[String],
) -> Result<Vec<VersionCount>, SqlError> {
    let known: std::collections::HashSet<&str> = devices.iter().map(String::as_str).collect();
    let mut counts: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for r in tx.query("SELECT device, name, version FROM fleet_bundles", &[])? {
        if known.contains(r.text(0)?.as_str()) {
            *counts
                .entry((r.text(1)?, r.int(2)?.max(0) as u64))
                .or_default() += 1;
        }
    }
    Ok(counts
        .into_iter()
        .map(|((name, version), devices)| VersionCount {
            name,
            version,
            devices,
        })
        .collect())
}

/// Install steps per device and outcome, among `devices` (the kept rows,
/// [`MAX_INSTALL_ROWS`] per device).
pub(crate) fn install_counts(
    tx: &mut dyn Tx,
    devices: &[String],
) -> Result<Vec<(String, String, u64)>, SqlError> {
    let known: std::collections::HashSet<&str> = devices.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for r in tx.query(
        "SELECT device, outcome, COUNT(*) FROM installs GROUP BY device, outcome ORDER BY device, outcome",
        &[],
    )? {
        let device = r.text(0)?;
        if known.contains(device.as_str()) {
            out.push((device, r.text(1)?, r.int(2)?.max(0) as u64));
        }
    }
    Ok(out)
}
