//! The operator API's types: bundles, device groups, rollouts with their
//! policies, and the audit trail (paths in [`crate::paths::operator`]).
//! The collector serves them; `sluice-collector`'s operator commands and
//! any other tool read and send them.

use serde::{Deserialize, Serialize};

/// The longest stage deadline a rollout policy takes: 30 days, ms.
pub const MAX_STAGE_DEADLINE_MS: u64 = 30 * 24 * 3600 * 1000;

/// A bundle the collector keeps for rollouts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleInfo {
    /// Its name (the pipeline it installs).
    pub name: String,
    /// Its version.
    pub version: u64,
    /// The SHA-256 of the file, hex.
    pub sha256: String,
    /// The file's size.
    pub bytes: u64,
    /// When it was built and when it expires, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// See `created_at_ms`.
    pub expires_at_ms: i64,
    /// The version whose content it carries again, for a revert.
    pub reverts_to: Option<u64>,
    /// The ids of the keys that signed it.
    pub signed_by: Vec<String>,
    /// When the collector stored it, ms since the Unix epoch.
    pub stored_ms: i64,
}

/// `GET` [`crate::paths::operator::BUNDLES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleList {
    /// Every stored bundle, by name then version.
    pub bundles: Vec<BundleInfo>,
}

/// A device group: a name for a set of devices. A device may be in any
/// number of groups, so a group also serves as a tag (`site-berlin`,
/// `camera-v2`, `canary`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Its name ([`crate::check_name`]).
    pub name: String,
    /// Its devices, by name.
    pub devices: Vec<String>,
}

/// `GET` [`crate::paths::operator::GROUPS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupList {
    /// Every group, by name.
    pub groups: Vec<Group>,
}

/// `PUT` [`crate::paths::operator::GROUP`]: the group's devices, replacing
/// what it had (every device must have a token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDevices {
    /// The devices.
    pub devices: Vec<String>,
}

/// `POST` [`crate::paths::operator::ROLLOUTS`]: start rolling out an
/// uploaded bundle. Exactly one of `devices` and `group` names the devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// The bundle's name.
    pub name: String,
    /// Its version (uploaded before).
    pub version: u64,
    /// The devices, in rollout order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    /// Or a group's devices, in name order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Share of the devices in each stage, percent, increasing to 100
    /// (default one stage of 100).
    #[serde(default = "all_at_once")]
    pub stages: Vec<u32>,
    /// When to halt and when a stage is over.
    #[serde(default)]
    pub policy: Policy,
}

fn all_at_once() -> Vec<u32> {
    vec![100]
}

/// `POST` [`crate::paths::operator::ROLLOUT`]`/{action}`'s actions.
pub const ROLLOUT_ACTIONS: [&str; 3] = ["pause", "resume", "abort"];

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RolloutState {
    /// Offering the version to the devices of the stages reached.
    Running,
    /// Held by the operator: nobody new is offered the version.
    Paused,
    /// Stopped by itself: more devices failed than its policy tolerates.
    Halted,
    /// Stopped by the operator.
    Aborted,
    /// Every device is done with the version.
    Done,
}

impl RolloutState {
    /// Its name, as stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Aborted => "aborted",
            RolloutState::Done => "done",
        }
    }

    /// The state named `text` (an unknown name reads as aborted: nothing
    /// more is offered).
    pub fn parse(text: &str) -> RolloutState {
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProgress {
    /// The device.
    pub device: String,
    /// Whether its stage was reached (it is offered the version).
    pub offered: bool,
    /// Its latest report for the version: `installed`, `committed`,
    /// `refused`, `rolled-back`, or none yet.
    pub outcome: Option<String>,
    /// Skipped at a stage's deadline: the rollout went on without it (it
    /// is still offered the version).
    pub skipped: bool,
    /// Why, for a refusal or a rollback.
    pub reason: Option<String>,
}

/// A rollout and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Its policy.
    pub policy: Policy,
    /// When its current stage was reached, ms since the Unix epoch (the
    /// stage's deadline counts from here).
    pub stage_started_ms: i64,
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

/// `GET` [`crate::paths::operator::ROLLOUTS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutList {
    /// Every rollout, newest first.
    pub rollouts: Vec<Rollout>,
}

/// A rollout's policy. The default is the strictest: the first refusal or
/// rollback halts, and a stage waits for every device however long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Halt when more than this share (percent) of the devices offered the
    /// version so far failed it (refused, rolled back, or late with
    /// [`OnDeadline::Fail`]); 0 halts at the first failure.
    pub max_failed_percent: u32,
    /// ... and at least this many failed (at least 1): a threshold of 10 %
    /// should not halt a 5-device stage at its first failure.
    pub min_failed: u32,
    /// How long a stage may take, ms from when it was reached; `None`: it
    /// waits for every device.
    pub stage_deadline_ms: Option<u64>,
    /// What a device of the stage that has not committed by the deadline
    /// counts as.
    pub on_deadline: OnDeadline,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_failed_percent: 0,
            min_failed: 1,
            stage_deadline_ms: None,
            on_deadline: OnDeadline::Skip,
        }
    }
}

/// What a device late for its stage's deadline counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDeadline {
    /// Skipped: the rollout goes on without it; it is still offered the
    /// version and installs it when it comes back (an offline device does
    /// not hold the others).
    Skip,
    /// Failed: counted against the failure threshold.
    Fail,
}

impl Policy {
    /// Why the policy cannot be followed, if so.
    pub fn check(&self) -> Result<(), String> {
        if self.max_failed_percent > 100 {
            return Err(format!(
                "max_failed_percent {} is over 100",
                self.max_failed_percent
            ));
        }
        if self.min_failed == 0 {
            return Err("min_failed must be at least 1".into());
        }
        match self.stage_deadline_ms {
            Some(0) => Err("stage_deadline_ms must be above 0".into()),
            Some(ms) if ms > MAX_STAGE_DEADLINE_MS => Err(format!(
                "stage_deadline_ms {ms} is over {MAX_STAGE_DEADLINE_MS} (30 days)"
            )),
            _ => Ok(()),
        }
    }

    /// Whether `failed` failures among `offered` devices halt.
    pub fn halts(&self, failed: usize, offered: usize) -> bool {
        failed >= self.min_failed.max(1) as usize
            && failed * 100 > self.max_failed_percent as usize * offered
    }
}

/// One state-changing call, as the audit trail keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its place in the trail: unique, increasing.
    pub id: i64,
    /// When, ms since the Unix epoch (collector clock).
    pub at_ms: i64,
    /// The API token's name.
    pub actor: String,
    /// Its role.
    pub role: String,
    /// The client's address, as the collector saw it.
    pub remote: Option<String>,
    /// What was asked: `bundle.upload`, `group.set`, `rollout.create`,
    /// `rollout.pause`, ...
    pub action: String,
    /// What it was asked of: `bundle digits/3`, `group canary`, `rollout 7`.
    pub target: String,
    /// The request's particulars, JSON.
    pub detail: serde_json::Value,
    /// `ok`, or why it was refused.
    pub outcome: String,
}

/// `GET` [`crate::paths::operator::AUDIT`]`?after=ID&limit=N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    /// Entries after the cursor, oldest first.
    pub entries: Vec<AuditEntry>,
    /// The `after` of the next page, when this one is full.
    pub next: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_needs_both_the_share_and_the_count() {
        let strict = Policy::default();
        assert!(!strict.halts(0, 4) && strict.halts(1, 100));
        let tolerant = Policy {
            max_failed_percent: 25,
            min_failed: 2,
            ..Policy::default()
        };
        assert!(!tolerant.halts(1, 2), "one failure is below min_failed");
        assert!(!tolerant.halts(2, 8), "2 of 8 is 25 %: not more");
        assert!(tolerant.halts(3, 8));
        assert!(tolerant.halts(2, 4));
    }

    #[test]
    fn unusable_policies_are_refused() {
        for bad in [
            Policy {
                max_failed_percent: 101,
                ..Policy::default()
            },
            Policy {
                min_failed: 0,
                ..Policy::default()
            },
            Policy {
                stage_deadline_ms: Some(0),
                ..Policy::default()
            },
            Policy {
                stage_deadline_ms: Some(MAX_STAGE_DEADLINE_MS + 1),
                ..Policy::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<Policy>(r#"{"max_failed":3}"#).is_err());
        let read: Policy =
            serde_json::from_str(r#"{"stage_deadline_ms":5000,"on_deadline":"fail"}"#).unwrap();
        assert_eq!(read.on_deadline, OnDeadline::Fail);
        assert_eq!(read.min_failed, 1);
    }
}
