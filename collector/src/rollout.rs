//! Staged rollout of signed bundles: the collector keeps bundles and, per
//! rollout, the devices to give a version to, in stages (e.g. 5 % → 50 % →
//! 100 % of them); devices poll for what they should run
//! (`GET /v1/devices/{id}/bundle`) and report every install step as an
//! `install` record through their normal uploads.
//!
//! Invariants:
//! * a stage advances only when every device of it reported the version
//!   committed (healthy through its probation);
//! * any device of the rollout reporting the version refused or rolled
//!   back halts it, by itself, naming the device and its reason: no further
//!   device is offered the version;
//! * the rollout is re-evaluated in the transaction of the batch that
//!   brought the reports, so what the devices are offered follows exactly
//!   what was acknowledged;
//! * one rollout per bundle name is running or paused at a time.
//!
//! The collector never trusts or distrusts a bundle itself: devices verify
//! it against the keys they pin. It only checks that the file is a bundle.

use crate::store::sql::{SqlError, Tx, args};
use serde::Serialize;

/// A bundle offered to a device: `(name, version, sha256, bytes)`.
pub type Offer = (String, u64, String, Vec<u8>);

/// The largest bundle a rollout takes: the collector answers a device's
/// request with the whole file from memory.
pub const MAX_BUNDLE_BYTES: u64 = 256 << 20;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RolloutState {
    /// Offering the version to the devices of the stages reached.
    Running,
    /// Held by the operator: nobody new is offered the version.
    Paused,
    /// Stopped by itself: a device refused or rolled back the version.
    Halted,
    /// Stopped by the operator.
    Aborted,
    /// Every device committed the version.
    Done,
}

impl RolloutState {
    fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Aborted => "aborted",
            RolloutState::Done => "done",
        }
    }

    fn parse(text: &str) -> RolloutState {
        match text {
            "running" => RolloutState::Running,
            "paused" => RolloutState::Paused,
            "halted" => RolloutState::Halted,
            "done" => RolloutState::Done,
            _ => RolloutState::Aborted,
        }
    }
}

/// One device of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceProgress {
    /// The device.
    pub device: String,
    /// Whether its stage was reached (it is offered the version).
    pub offered: bool,
    /// Its latest report for the version: `installed`, `committed`,
    /// `refused`, `rolled-back`, or none yet.
    pub outcome: Option<String>,
    /// Why, for a refusal or a rollback.
    pub reason: Option<String>,
}

/// A rollout and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rollout {
    /// Its id.
    pub id: i64,
    /// The bundle's name.
    pub name: String,
    /// The version rolled out.
    pub version: u64,
    /// Share of the devices in each stage, percent, increasing to 100.
    pub stages: Vec<u32>,
    /// The stage reached (index into `stages`).
    pub stage: usize,
    /// Where it is.
    pub state: RolloutState,
    /// Why it halted (or was aborted).
    pub reason: Option<String>,
    /// When it started and last changed, ms since the Unix epoch.
    pub created_ms: i64,
    /// See `created_ms`.
    pub updated_ms: i64,
    /// Its devices, in rollout order.
    pub devices: Vec<DeviceProgress>,
}

impl Rollout {
    /// How many of its devices committed the version.
    pub fn committed(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| d.outcome.as_deref() == Some("committed"))
            .count()
    }
}

/// A rollout's devices and stages, as stored (JSON text).
fn plan(devices: &str, stages: &str) -> (Vec<String>, Vec<u32>) {
    (
        serde_json::from_str(devices).unwrap_or_default(),
        serde_json::from_str(stages).unwrap_or_else(|_| vec![100]),
    )
}

/// Devices in the first `stage + 1` stages of `n` devices.
pub fn reached(n: usize, stages: &[u32], stage: usize) -> usize {
    let percent = stages.get(stage).copied().unwrap_or(100).min(100) as usize;
    (n * percent).div_ceil(100).clamp(n.min(1), n)
}

/// Why an operator's rollout command is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// The stages are not increasing percentages ending at 100.
    #[error("stages {0:?}: give increasing percentages ending at 100, e.g. 5,50,100")]
    Stages(Vec<u32>),
    /// No device to roll out to.
    #[error("no devices to roll out to")]
    NoDevices,
    /// Another rollout of the same bundle is running or paused.
    #[error("rollout {id} of `{name}` is {state}: abort it first")]
    Busy {
        /// Its id.
        id: i64,
        /// The bundle's name.
        name: String,
        /// Its state.
        state: String,
    },
    /// No such rollout.
    #[error("no rollout {0}")]
    Unknown(i64),
    /// The command does not apply in the rollout's state.
    #[error("rollout {id} is {state}: cannot {action} it")]
    State {
        /// Its id.
        id: i64,
        /// Its state.
        state: String,
        /// What was asked.
        action: &'static str,
    },
}

/// A new bundle name and version, a distinct `sha256` and `body`; start a
/// rollout of it to `devices` in `stages`. (The outer error is the
/// database's, the inner one the request's.)
#[allow(clippy::too_many_arguments)]
pub(crate) fn start(
    tx: &mut dyn Tx,
    name: &str,
    version: u64,
    sha256: &str,
    body: &[u8],
    devices: &[String],
    stages: &[u32],
    now: i64,
) -> Result<Result<i64, RolloutError>, SqlError> {
    if stages.is_empty()
        || stages.last() != Some(&100)
        || !stages.windows(2).all(|w| w[0] < w[1])
        || stages[0] == 0
    {
        return Ok(Err(RolloutError::Stages(stages.to_vec())));
    }
    if devices.is_empty() {
        return Ok(Err(RolloutError::NoDevices));
    }
    if let Some(busy) = tx.query_opt(
        "SELECT id, state FROM rollouts WHERE name = ?1 AND state IN ('running', 'paused')",
        args![name],
    )? {
        return Ok(Err(RolloutError::Busy {
            id: busy.int(0)?,
            name: name.to_owned(),
            state: busy.text(1)?,
        }));
    }
    tx.exec(
        "INSERT INTO bundles(name, version, sha256, body, stored_ms) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(name, version) DO UPDATE SET sha256 = excluded.sha256, body = excluded.body, stored_ms = excluded.stored_ms",
        args![name, version as i64, sha256, body, now],
    )?;
    let devices = serde_json::to_string(devices).expect("serializes");
    let stages = serde_json::to_string(stages).expect("serializes");
    let id = tx
        .query_opt(
            "INSERT INTO rollouts(name, version, devices, stages, stage, state, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, 0, 'running', ?5, ?5) RETURNING id",
            args![name, version as i64, &devices, &stages, now],
        )?
        .ok_or_else(|| SqlError::Decode("INSERT ... RETURNING gave no row".into()))?
        .int(0)?;
    advance(tx, now)?;
    Ok(Ok(id))
}

/// Pause, resume or abort rollout `id`.
pub(crate) fn set(
    tx: &mut dyn Tx,
    id: i64,
    action: &'static str,
    now: i64,
) -> Result<Result<(), RolloutError>, SqlError> {
    let Some(row) = tx.query_opt("SELECT state FROM rollouts WHERE id = ?1", args![id])? else {
        return Ok(Err(RolloutError::Unknown(id)));
    };
    let state = row.text(0)?;
    let next = match (action, state.as_str()) {
        ("pause", "running") => "paused",
        ("resume", "paused") => "running",
        ("abort", "running" | "paused" | "halted") => "aborted",
        _ => {
            return Ok(Err(RolloutError::State { id, state, action }));
        }
    };
    let reason = (next == "aborted").then_some("aborted by the operator");
    tx.exec(
        "UPDATE rollouts SET state = ?1, updated_ms = ?2, reason = COALESCE(reason, ?3) WHERE id = ?4",
        args![next, now, reason, id],
    )?;
    advance(tx, now)?;
    Ok(Ok(()))
}

/// Record `device`'s install reports (`(name, version, outcome, reason,
/// at_ms)`) from a stored batch.
pub(crate) fn record(
    tx: &mut dyn Tx,
    device: &str,
    reports: &[(String, u64, String, Option<String>, i64)],
) -> Result<(), SqlError> {
    for (name, version, outcome, reason, at_ms) in reports {
        tx.exec(
            "INSERT INTO installs(device, name, version, outcome, reason, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(device, name, version, outcome) DO NOTHING",
            args![device, name, *version as i64, outcome, reason.as_deref(), *at_ms],
        )?;
    }
    Ok(())
}

/// Re-evaluate every running rollout: halt on a refusal or rollback,
/// advance a stage whose devices all committed.
pub(crate) fn advance(tx: &mut dyn Tx, now: i64) -> Result<(), SqlError> {
    for rollout in list(tx, Some("running"))? {
        let reached_n = reached(rollout.devices.len(), &rollout.stages, rollout.stage);
        let failed = rollout
            .devices
            .iter()
            .find(|d| matches!(d.outcome.as_deref(), Some("refused" | "rolled-back")));
        if let Some(d) = failed {
            let reason = format!(
                "device `{}` {} version {}: {}",
                d.device,
                d.outcome.as_deref().unwrap_or_default(),
                rollout.version,
                d.reason.as_deref().unwrap_or("no reason given")
            );
            tracing::warn!(rollout = rollout.id, "rollout halted: {reason}");
            tx.exec(
                "UPDATE rollouts SET state = 'halted', reason = ?1, updated_ms = ?2 WHERE id = ?3",
                args![&reason, now, rollout.id],
            )?;
            continue;
        }
        let stage_done = rollout.devices[..reached_n]
            .iter()
            .all(|d| d.outcome.as_deref() == Some("committed"));
        if !stage_done {
            continue;
        }
        if rollout.stage + 1 >= rollout.stages.len() {
            tx.exec(
                "UPDATE rollouts SET state = 'done', updated_ms = ?1 WHERE id = ?2",
                args![now, rollout.id],
            )?;
        } else {
            tx.exec(
                "UPDATE rollouts SET stage = stage + 1, updated_ms = ?1 WHERE id = ?2",
                args![now, rollout.id],
            )?;
        }
    }
    Ok(())
}

/// Rollouts (newest first), only those in `state` when given, with each
/// device's progress.
pub(crate) fn list(tx: &mut dyn Tx, state: Option<&str>) -> Result<Vec<Rollout>, SqlError> {
    let rows = tx.query(
        "SELECT id, name, version, devices, stages, stage, state, reason, created_ms, updated_ms
         FROM rollouts WHERE state = ?1 OR ?2 ORDER BY id DESC",
        args![state.unwrap_or_default(), state.is_none()],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (id, name, version) = (r.int(0)?, r.text(1)?, r.int(2)?);
        let (devices, stages) = plan(&r.text(3)?, &r.text(4)?);
        let stage = r.int(5)?.max(0) as usize;
        let n = reached(devices.len(), &stages, stage);
        let mut progress = Vec::with_capacity(devices.len());
        for (ix, device) in devices.into_iter().enumerate() {
            let report = tx.query_opt(
                "SELECT outcome, reason FROM installs WHERE device = ?1 AND name = ?2 AND version = ?3
                 ORDER BY CASE outcome WHEN 'installed' THEN 0 ELSE 1 END DESC, at_ms DESC LIMIT 1",
                args![&device, &name, version],
            )?;
            let (outcome, reason) = match report {
                Some(r) => (Some(r.text(0)?), r.opt_text(1)?),
                None => (None, None),
            };
            progress.push(DeviceProgress {
                device,
                offered: ix < n,
                outcome,
                reason,
            });
        }
        out.push(Rollout {
            id,
            name,
            version: version.max(0) as u64,
            stages,
            stage,
            state: RolloutState::parse(&r.text(6)?),
            reason: r.opt_text(7)?,
            created_ms: r.int(8)?,
            updated_ms: r.int(9)?,
            devices: progress,
        });
    }
    Ok(out)
}

/// The bundle `device` should be offered: `(name, version, sha256, body)`
/// of a running rollout whose reached stages include it. Asked by every
/// device at every poll: it reads the running rollouts' device lists, not
/// every device's progress.
pub(crate) fn offer(tx: &mut dyn Tx, device: &str) -> Result<Option<Offer>, SqlError> {
    first_offered(tx, device, |tx, name, version| {
        let Some(bundle) = tx.query_opt(
            "SELECT sha256, body FROM bundles WHERE name = ?1 AND version = ?2",
            args![name, version],
        )?
        else {
            return Ok(None);
        };
        Ok(Some((
            name.to_owned(),
            version.max(0) as u64,
            bundle.text(0)?,
            bundle.blob(1)?,
        )))
    })
}

/// A part of the bundle offered to `device`: up to `len` bytes from
/// `offset`, read by the database (a device fetching a bundle in chunks
/// does not make the collector read the whole bundle for each).
pub(crate) fn offer_chunk(
    tx: &mut dyn Tx,
    device: &str,
    offset: u64,
    len: usize,
) -> Result<Option<Chunk>, SqlError> {
    // SQL counts from 1; both engines take an int4 here.
    let (from, len) = (
        i64::try_from(offset.saturating_add(1))
            .unwrap_or(i64::MAX)
            .min(i32::MAX as i64),
        (len as i64).min(i32::MAX as i64),
    );
    first_offered(tx, device, |tx, name, version| {
        let Some(bundle) = tx.query_opt(
            "SELECT sha256, length(body), substr(body, ?3, ?4) FROM bundles WHERE name = ?1 AND version = ?2",
            args![name, version, from, len],
        )?
        else {
            return Ok(None);
        };
        Ok(Some(Chunk {
            name: name.to_owned(),
            version: version.max(0) as u64,
            sha256: bundle.text(0)?,
            total: bundle.int(1)?.max(0) as u64,
            bytes: bundle.blob(2)?,
        }))
    })
}

/// Whether `if_none_match` (a device's `If-None-Match`: `"hex", "hex"`)
/// names the bundle of SHA-256 `sha256`: the device handled it already.
pub(crate) fn seen_by(if_none_match: &str, sha256: &str) -> bool {
    if_none_match.split(',').any(|tag| {
        tag.trim()
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            == Some(sha256)
    })
}

/// A part of an offered bundle ([`offer_chunk`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The bundle's name.
    pub name: String,
    /// Its version.
    pub version: u64,
    /// The SHA-256 (hex) of the whole bundle.
    pub sha256: String,
    /// The whole bundle's size.
    pub total: u64,
    /// The bytes asked for (fewer at the end, none past it).
    pub bytes: Vec<u8>,
}

/// `read` of the first running rollout whose reached stages include
/// `device` and that finds its bundle.
fn first_offered<T>(
    tx: &mut dyn Tx,
    device: &str,
    mut read: impl FnMut(&mut dyn Tx, &str, i64) -> Result<Option<T>, SqlError>,
) -> Result<Option<T>, SqlError> {
    let running = tx.query(
        "SELECT name, version, devices, stages, stage FROM rollouts WHERE state = 'running' ORDER BY id",
        &[],
    )?;
    for r in running {
        let (name, version) = (r.text(0)?, r.int(1)?);
        let (devices, stages) = plan(&r.text(2)?, &r.text(3)?);
        let n = reached(devices.len(), &stages, r.int(4)?.max(0) as usize);
        if !devices[..n].iter().any(|d| d == device) {
            continue;
        }
        if let Some(found) = read(tx, &name, version)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

impl RolloutState {
    /// Its name, as stored and shown.
    pub fn name(self) -> &'static str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::reached;

    #[test]
    fn stages_take_at_least_one_device_and_end_with_all() {
        assert_eq!(reached(20, &[5, 50, 100], 0), 1);
        assert_eq!(reached(20, &[5, 50, 100], 1), 10);
        assert_eq!(reached(20, &[5, 50, 100], 2), 20);
        assert_eq!(reached(3, &[5, 50, 100], 0), 1);
        assert_eq!(reached(3, &[5, 50, 100], 1), 2);
        assert_eq!(reached(0, &[100], 0), 0);
    }
}
