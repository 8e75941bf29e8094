//! The operator API's types: bundles, device groups, rollouts with their
//! policies, and the audit trail (paths in [`crate::paths::operator`]).
//! The collector serves them; `sluice-collector`'s operator commands and
//! any other tool read and send them.

use serde::{Deserialize, Serialize};

/// The longest stage deadline a rollout policy takes: 30 days, ms.
pub const MAX_STAGE_DEADLINE_MS: u64 = 30 * 24 * 3600 * 1000;

/// The most probation items a rollout may ask of a device.
pub const MAX_PROBATION_ITEMS: u64 = 1_000_000;
/// The longest probation a rollout may ask of a device: 7 days, s.
pub const MAX_PROBATION_SECS: u64 = 7 * 24 * 3600;

/// The HTTP header (and, as [`crate::mqtt::PROBATION`], the MQTT user
/// property) with which a collector's offer asks the device for at least
/// this much probation ([`ProbationMinimum`]).
pub const PROBATION_HEADER: &str = "x-sluice-probation";

/// The least probation a rollout asks of each device before it commits
/// the version: at least `items` items processed and `secs` seconds. The
/// device takes the larger of this and its own `bundles.probation_*`: an
/// offer can make probation longer, never shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbationMinimum {
    /// Items processed by the new version.
    pub items: u64,
    /// Seconds on probation.
    pub secs: u64,
}

impl ProbationMinimum {
    /// As a header value: `items=20; secs=300`.
    pub fn to_text(&self) -> String {
        format!("items={}; secs={}", self.items, self.secs)
    }

    /// Read a header value (unknown parts ignored); each number capped at
    /// [`MAX_PROBATION_ITEMS`] and [`MAX_PROBATION_SECS`].
    pub fn parse(text: &str) -> Option<ProbationMinimum> {
        let (mut items, mut secs) = (None, None);
        for part in text.split(';') {
            match part.trim().split_once('=') {
                Some(("items", n)) => items = n.trim().parse::<u64>().ok(),
                Some(("secs", n)) => secs = n.trim().parse::<u64>().ok(),
                _ => {}
            }
        }
        if items.is_none() && secs.is_none() {
            return None;
        }
        Some(ProbationMinimum {
            items: items.unwrap_or(0).min(MAX_PROBATION_ITEMS),
            secs: secs.unwrap_or(0).min(MAX_PROBATION_SECS),
        })
    }
}

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
    /// Each device watches the version for at least this many items
    /// before it commits it (0: the device's own setting).
    pub min_probation_items: u64,
    /// ... and at least this many seconds.
    pub min_probation_secs: u64,
    /// Nothing is offered before this time (ms since the Unix epoch); the
    /// first stage's deadline counts from it.
    pub start_at_ms: Option<i64>,
    /// Devices are offered the version only within this daily window
    /// (UTC): a maintenance window.
    pub window: Option<Window>,
}

/// A daily window, UTC, `HH:MM` to `HH:MM` (the end excluded; past
/// midnight when the end is before the start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Its start, `HH:MM`.
    pub from: String,
    /// Its end, `HH:MM`.
    pub to: String,
}

impl Window {
    /// Its start and end, minutes after midnight.
    pub fn minutes(&self) -> Result<(u32, u32), String> {
        let parse = |t: &str| -> Result<u32, String> {
            let (h, m) = t
                .split_once(':')
                .ok_or_else(|| format!("window time `{t}`: give HH:MM"))?;
            match (h.parse::<u32>(), m.parse::<u32>()) {
                (Ok(h), Ok(m)) if h < 24 && m < 60 => Ok(h * 60 + m),
                _ => Err(format!("window time `{t}`: give HH:MM, 00:00 to 23:59")),
            }
        };
        let (from, to) = (parse(&self.from)?, parse(&self.to)?);
        if from == to {
            return Err(format!("window {}-{} is empty", self.from, self.to));
        }
        Ok((from, to))
    }

    /// Whether `ms` (since the Unix epoch) falls inside.
    pub fn contains(&self, ms: i64) -> bool {
        let Ok((from, to)) = self.minutes() else {
            return false;
        };
        let minute = (ms.rem_euclid(86_400_000) / 60_000) as u32;
        if from < to {
            (from..to).contains(&minute)
        } else {
            minute >= from || minute < to
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_failed_percent: 0,
            min_failed: 1,
            stage_deadline_ms: None,
            on_deadline: OnDeadline::Skip,
            min_probation_items: 0,
            min_probation_secs: 0,
            start_at_ms: None,
            window: None,
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
        if self.min_probation_items > MAX_PROBATION_ITEMS {
            return Err(format!(
                "min_probation_items {} is over {MAX_PROBATION_ITEMS}",
                self.min_probation_items
            ));
        }
        if self.min_probation_secs > MAX_PROBATION_SECS {
            return Err(format!(
                "min_probation_secs {} is over {MAX_PROBATION_SECS} (7 days)",
                self.min_probation_secs
            ));
        }
        if let Some(window) = &self.window {
            window.minutes()?;
        }
        match self.stage_deadline_ms {
            Some(0) => Err("stage_deadline_ms must be above 0".into()),
            Some(ms) if ms > MAX_STAGE_DEADLINE_MS => Err(format!(
                "stage_deadline_ms {ms} is over {MAX_STAGE_DEADLINE_MS} (30 days)"
            )),
            _ => Ok(()),
        }
    }

    /// What the devices are asked for on probation, if anything.
    pub fn probation(&self) -> Option<ProbationMinimum> {
        (self.min_probation_items > 0 || self.min_probation_secs > 0).then_some(ProbationMinimum {
            items: self.min_probation_items,
            secs: self.min_probation_secs,
        })
    }

    /// Whether the version may be offered at `now` (ms since the Unix
    /// epoch): after the start, inside the window.
    pub fn offers_at(&self, now: i64) -> bool {
        self.start_at_ms.is_none_or(|at| now >= at)
            && self.window.as_ref().is_none_or(|w| w.contains(now))
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
        for (from, to) in [
            ("25:00", "02:00"),
            ("02:00", "02:00"),
            ("2", "3:00"),
            ("02:60", "03:00"),
        ] {
            let window = Window {
                from: from.into(),
                to: to.into(),
            };
            let policy = Policy {
                window: Some(window),
                ..Policy::default()
            };
            assert!(policy.check().is_err(), "{from}-{to}");
        }
        let too_long = Policy {
            min_probation_secs: MAX_PROBATION_SECS + 1,
            ..Policy::default()
        };
        assert!(too_long.check().is_err());
    }

    #[test]
    fn windows_and_starts_decide_when_a_version_is_offered() {
        let at = |h: i64, m: i64| 20_000 * 86_400_000 + (h * 60 + m) * 60_000;
        let night = Window {
            from: "22:30".into(),
            to: "04:00".into(),
        };
        assert!(night.contains(at(23, 0)) && night.contains(at(3, 59)));
        assert!(!night.contains(at(4, 0)) && !night.contains(at(12, 0)));
        let day = Window {
            from: "09:00".into(),
            to: "17:00".into(),
        };
        assert!(day.contains(at(9, 0)) && !day.contains(at(17, 0)));
        let policy = Policy {
            start_at_ms: Some(at(10, 0)),
            window: Some(day),
            ..Policy::default()
        };
        assert!(!policy.offers_at(at(9, 30)), "before the start");
        assert!(policy.offers_at(at(10, 0)));
        assert!(
            !policy.offers_at(at(18, 0) + 86_400_000),
            "outside the window"
        );
        assert_eq!(Policy::default().probation(), None);
    }

    #[test]
    fn probation_minimums_read_back_and_are_capped() {
        let m = ProbationMinimum {
            items: 20,
            secs: 300,
        };
        assert_eq!(ProbationMinimum::parse(&m.to_text()), Some(m));
        assert_eq!(
            ProbationMinimum::parse("secs=99999999999; other=1"),
            Some(ProbationMinimum {
                items: 0,
                secs: MAX_PROBATION_SECS
            })
        );
        assert_eq!(ProbationMinimum::parse("nonsense"), None);
    }
}
