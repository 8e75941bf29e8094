//! Staged rollout of signed bundles: the collector keeps bundles and, per
//! rollout, the devices to give a version to, in stages (e.g. 5 % → 50 % →
//! 100 % of them); devices poll for what they should run
//! (`GET /v1/devices/{id}/bundle`) and report every install step as an
//! `install` record through their normal uploads.
//!
//! Invariants:
//! * a stage advances only when every device of it is done with the
//!   version: committed it (healthy through its probation), failed within
//!   the rollout's [`Policy`], or was skipped at the stage's deadline;
//! * a rollout halts by itself, naming the devices and their reasons, as
//!   soon as more of its devices failed than its policy tolerates (by
//!   default the first refusal or rollback): no further device is offered
//!   the version;
//! * the rollout is re-evaluated in the transaction of the batch that
//!   brought the reports, so what the devices are offered follows exactly
//!   what was acknowledged, and by the collector's clock for deadlines
//!   ([`advance`]);
//! * one rollout per bundle name is running or paused at a time, and the
//!   newest rollout of a name decides what its devices are offered
//!   ([`offer`]).
//!
//! The collector never trusts a bundle for the devices: they verify it
//! against the keys they pin. It checks when a bundle is uploaded that
//! those keys would accept its signature ([`crate::api`]), so that a
//! rollout no device would install is refused before it starts.

mod offer;
mod policy;

pub use offer::Chunk;
pub(crate) use offer::{offer, offer_chunk, seen_by};
pub(crate) use policy::{advance, deadline_due};
pub use sluice_protocol::operator::{DeviceProgress, OnDeadline, Policy, Rollout, RolloutState};

use crate::store::sql::{SqlError, Tx, args};

/// A bundle offered to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u64,
    /// The file's SHA-256, hex.
    pub sha256: String,
    /// The file.
    pub body: Vec<u8>,
    /// The least probation its rollout asks of the device.
    pub probation: Option<sluice_protocol::operator::ProbationMinimum>,
}

/// The largest bundle a rollout takes: the collector answers a device's
/// request with the whole file from memory.
pub const MAX_BUNDLE_BYTES: u64 = 256 << 20;

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
    /// Devices the collector has no token for: they could never report.
    #[error("unknown device(s) {}: the collector has no token for them", .0.join(", "))]
    UnknownDevices(Vec<String>),
    /// The bundle was never uploaded.
    #[error("no bundle `{name}` version {version}: upload it first")]
    NoBundle {
        /// Its name.
        name: String,
        /// Its version.
        version: u64,
    },
    /// The policy cannot be followed.
    #[error("policy: {0}")]
    Policy(String),
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

/// What a new rollout is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The bundle's name.
    pub name: String,
    /// The version, already uploaded.
    pub version: u64,
    /// The devices, in rollout order.
    pub devices: Vec<String>,
    /// Share of the devices in each stage, percent, increasing to 100.
    pub stages: Vec<u32>,
    /// When to halt and when a stage is over.
    pub policy: Policy,
}

/// Start a rollout of an uploaded bundle. (The outer error is the
/// database's, the inner one the request's.)
pub(crate) fn start(
    tx: &mut dyn Tx,
    plan: &Plan,
    now: i64,
) -> Result<Result<i64, RolloutError>, SqlError> {
    let stages = &plan.stages;
    if stages.is_empty()
        || stages.last() != Some(&100)
        || !stages.windows(2).all(|w| w[0] < w[1])
        || stages[0] == 0
    {
        return Ok(Err(RolloutError::Stages(stages.to_vec())));
    }
    if plan.devices.is_empty() {
        return Ok(Err(RolloutError::NoDevices));
    }
    if let Err(why) = plan.policy.check() {
        return Ok(Err(RolloutError::Policy(why)));
    }
    let (name, version) = (plan.name.as_str(), plan.version as i64);
    if tx
        .query_opt(
            "SELECT 1 FROM bundles WHERE name = ?1 AND version = ?2",
            args![name, version],
        )?
        .is_none()
    {
        return Ok(Err(RolloutError::NoBundle {
            name: name.to_owned(),
            version: plan.version,
        }));
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
    let devices = serde_json::to_string(&plan.devices).expect("serializes");
    let stages = serde_json::to_string(stages).expect("serializes");
    let policy = serde_json::to_string(&plan.policy).expect("serializes");
    // A scheduled start: the first stage's clock starts then.
    let stage_started = plan.policy.start_at_ms.unwrap_or(now).max(now);
    let id = tx
        .query_opt(
            "INSERT INTO rollouts(name, version, devices, stages, stage, state, created_ms, updated_ms, policy, stage_started_ms)
             VALUES (?1, ?2, ?3, ?4, 0, 'running', ?5, ?5, ?6, ?7) RETURNING id",
            args![name, version, &devices, &stages, now, &policy, stage_started],
        )?
        .ok_or_else(|| SqlError::Decode("INSERT ... RETURNING gave no row".into()))?
        .int(0)?;
    advance(tx, now)?;
    Ok(Ok(id))
}

/// Pause, resume or abort rollout `id`. A resumed stage's deadline counts
/// again from the resume: the pause is the operator's, not the devices'.
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
        "UPDATE rollouts SET state = ?1, updated_ms = ?2, reason = COALESCE(reason, ?3),
             stage_started_ms = CASE WHEN ?1 = 'running' THEN ?2 ELSE stage_started_ms END
         WHERE id = ?4",
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

/// Rollouts (newest first), only those in `state` when given (and only
/// `id` when given), with each device's progress.
pub(crate) fn list(
    tx: &mut dyn Tx,
    state: Option<&str>,
    id: Option<i64>,
) -> Result<Vec<Rollout>, SqlError> {
    let rows = tx.query(
        "SELECT id, name, version, devices, stages, stage, state, reason, created_ms, updated_ms,
                policy, stage_started_ms, skipped
         FROM rollouts WHERE (state = ?1 OR ?2) AND (id = ?3 OR ?4) ORDER BY id DESC",
        args![
            state.unwrap_or_default(),
            state.is_none(),
            id.unwrap_or_default(),
            id.is_none()
        ],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (id, name, version) = (r.int(0)?, r.text(1)?, r.int(2)?);
        let (devices, stages) = plan(&r.text(3)?, &r.text(4)?);
        let skipped: Vec<String> = serde_json::from_str(&r.text(12)?).unwrap_or_default();
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
                skipped: skipped.contains(&device),
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
            // A policy this collector cannot read (a newer one wrote it)
            // is the strictest: halt at the first failure, no deadline.
            policy: serde_json::from_str(&r.text(10)?).unwrap_or_default(),
            stage_started_ms: r.int(11)?,
        });
    }
    Ok(out)
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
