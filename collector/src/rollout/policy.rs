//! When a rollout halts and when a stage is over: the failure threshold
//! and the stage deadline, applied by [`advance`] whenever a device
//! reports and on the collector's clock.

use super::{OnDeadline, Policy, Rollout, list, reached};
use crate::store::sql::{SqlError, Tx, args};

/// How many failing devices a halt reason names; the rest are counted.
const NAMED_IN_REASON: usize = 5;

/// Whether a running rollout's stage deadline has passed at `now`: only
/// then does the clock change anything (reports are evaluated as they
/// arrive). One query, without reading every device's progress.
pub(crate) fn deadline_due(tx: &mut dyn Tx, now: i64) -> Result<bool, SqlError> {
    for r in tx.query(
        "SELECT policy, stage_started_ms FROM rollouts WHERE state = 'running'",
        &[],
    )? {
        let policy: Policy = serde_json::from_str(&r.text(0)?).unwrap_or_default();
        if let Some(ms) = policy.stage_deadline_ms
            && now >= r.int(1)?.saturating_add(ms as i64)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Re-evaluate every running rollout at `now`: skip or fail the devices
/// late for their stage's deadline, halt past the failure threshold,
/// advance a stage whose devices are all done with the version.
pub(crate) fn advance(tx: &mut dyn Tx, now: i64) -> Result<(), SqlError> {
    for rollout in list(tx, Some("running"), None)? {
        let n = reached(rollout.devices.len(), &rollout.stages, rollout.stage);
        let offered = &rollout.devices[..n];
        let policy = &rollout.policy;
        let late_at = policy
            .stage_deadline_ms
            .map(|ms| rollout.stage_started_ms.saturating_add(ms as i64));
        let is_final = |o: Option<&str>| matches!(o, Some("committed" | "refused" | "rolled-back"));
        let late: Vec<&str> = match late_at {
            Some(at) if now >= at => offered
                .iter()
                .filter(|d| !d.skipped && !is_final(d.outcome.as_deref()))
                .map(|d| d.device.as_str())
                .collect(),
            _ => Vec::new(),
        };
        let mut failures: Vec<String> = offered
            .iter()
            .filter(|d| matches!(d.outcome.as_deref(), Some("refused" | "rolled-back")))
            .map(|d| {
                format!(
                    "device `{}` {} version {}: {}",
                    d.device,
                    d.outcome.as_deref().unwrap_or_default(),
                    rollout.version,
                    d.reason.as_deref().unwrap_or("no reason given")
                )
            })
            .collect();
        if policy.on_deadline == OnDeadline::Fail {
            failures.extend(late.iter().map(|d| {
                format!(
                    "device `{d}` did not commit version {} within the stage deadline of {} ms",
                    rollout.version,
                    policy.stage_deadline_ms.unwrap_or_default()
                )
            }));
        }
        if policy.halts(failures.len(), n) {
            halt(tx, &rollout, &failures, n, now)?;
            continue;
        }
        if policy.on_deadline == OnDeadline::Skip && !late.is_empty() {
            let mut skipped: Vec<&str> = rollout
                .devices
                .iter()
                .filter(|d| d.skipped)
                .map(|d| d.device.as_str())
                .collect();
            tracing::warn!(
                rollout = rollout.id,
                "stage deadline passed: skipping {}",
                late.join(", ")
            );
            skipped.extend(&late);
            tx.exec(
                "UPDATE rollouts SET skipped = ?1, updated_ms = ?2 WHERE id = ?3",
                args![
                    &serde_json::to_string(&skipped).expect("serializes"),
                    now,
                    rollout.id
                ],
            )?;
        }
        // Late devices are done with this stage either way (skipped, or
        // failed within the threshold).
        let stage_done = offered.iter().all(|d| {
            is_final(d.outcome.as_deref()) || d.skipped || late.contains(&d.device.as_str())
        });
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
                "UPDATE rollouts SET stage = stage + 1, updated_ms = ?1, stage_started_ms = ?1 WHERE id = ?2",
                args![now, rollout.id],
            )?;
        }
    }
    Ok(())
}

/// Halt `rollout`: the reason names the first failures and counts them
/// against the devices offered.
fn halt(
    tx: &mut dyn Tx,
    rollout: &Rollout,
    failures: &[String],
    offered: usize,
    now: i64,
) -> Result<(), SqlError> {
    let mut reason = failures[..failures.len().min(NAMED_IN_REASON)].join("; ");
    if failures.len() > NAMED_IN_REASON {
        reason += &format!("; and {} more", failures.len() - NAMED_IN_REASON);
    }
    if failures.len() > 1 || rollout.policy.max_failed_percent > 0 {
        reason += &format!(
            " ({} of {offered} device(s) offered the version failed; the policy tolerates {} %)",
            failures.len(),
            rollout.policy.max_failed_percent
        );
    }
    tracing::warn!(rollout = rollout.id, "rollout halted: {reason}");
    tx.exec(
        "UPDATE rollouts SET state = 'halted', reason = ?1, updated_ms = ?2 WHERE id = ?3",
        args![&reason, now, rollout.id],
    )?;
    Ok(())
}
