//! Installing bundles while the agent runs: stage, verify, validate, swap,
//! probation, commit or roll back (see the module above for the why).

use super::WIT_PACKAGE;
pub use super::error::InstallError;
use super::error::io;
use super::state::{Installed, State};
use super::validate::{bundle_config, validate};
use crate::config::{BundlesConfig, Config};
use crate::metrics::Metrics;
use crate::outbox::{NewRecord, Outbox};
use crate::runtime::Runtime;
use crate::wake::Wake;
use crate::worker::{Deployment, Slot};
use sluice_bundle::archive::{self, Limits};
use sluice_bundle::keys::PublicKey;
use sluice_bundle::{Manifest, Policy, Refusal};
use sluice_protocol::operator::ProbationMinimum;
use sluice_protocol::{BundleRef, InstallOutcome, InstallReport, RecordKind};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// A fault-injection seam for the crash tests: with
/// `SLUICE_FAULT_INJECT=install-crash:<step>` in the environment, the
/// process aborts at that step of an install (no destructor, no flush: what
/// a SIGKILL or a power cut leaves).
fn crash_point(step: &str) {
    if std::env::var("SLUICE_FAULT_INJECT").is_ok_and(|v| v == format!("install-crash:{step}")) {
        std::process::abort();
    }
}

/// A version swapped in and watched.
struct Probation {
    started: Instant,
    new: Arc<Deployment>,
    previous: Arc<Deployment>,
    version: u64,
    previous_version: Option<u64>,
    bundle_sha256: String,
    max_item_ms: u64,
    /// Items and seconds before it may commit: the device's settings, or
    /// more when the rollout that offered it asked for more.
    min_items: u64,
    min_secs: u64,
}

/// A bundle file in the drop folder, waiting to be unchanged for a while.
pub(super) struct Candidate {
    pub(super) len: u64,
    pub(super) modified: Option<std::time::SystemTime>,
    pub(super) since: Instant,
    /// Its SHA-256 once settled: a file left in the folder (a stick never
    /// removed) is hashed once, not at every look.
    pub(super) sha256: Option<String>,
    /// Offered, or reported as ignored, in this process: a file is said
    /// once per appearance.
    pub(super) handled: bool,
}

/// Installs bundles into a running agent's pipelines.
pub struct Installer {
    pub(super) base: Config,
    pub(super) settings: BundlesConfig,
    pub(super) dir: PathBuf,
    pub(super) trusted: Vec<PublicKey>,
    pub(super) device: String,
    pub(super) outbox: Arc<Outbox>,
    pub(super) slots: BTreeMap<String, Arc<Slot>>,
    pub(super) stored: Arc<Wake>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) state: State,
    probation: BTreeMap<String, Probation>,
    pub(super) candidates: BTreeMap<PathBuf, Candidate>,
    /// Unpacked bundles to delete once no deployment uses them.
    pub(super) garbage: Vec<(PathBuf, Weak<Deployment>)>,
    /// Asking the collector (through the uplink's transport), and when it
    /// was last asked.
    pub(super) collector: Option<Box<dyn crate::uplink::Offers>>,
    pub(super) last_asked: Option<Instant>,
}

impl Installer {
    /// An installer for the pipelines in `slots` of an agent running `base`;
    /// its state lives in `<data_dir>/bundles`. `collector`: where rollouts
    /// offer bundles (`bundles.from_collector`).
    pub(crate) fn new(
        base: &Config,
        outbox: Arc<Outbox>,
        slots: BTreeMap<String, Arc<Slot>>,
        stored: Arc<Wake>,
        metrics: Arc<Metrics>,
        collector: Option<Box<dyn crate::uplink::Offers>>,
    ) -> Result<Installer, InstallError> {
        let dir = base.device.data_dir.join("bundles");
        std::fs::create_dir_all(dir.join("v")).map_err(io(&dir))?;
        // A state file half-written when the power went.
        sluice_durable::remove_stale_temporaries(&dir);
        let trusted = base.bundles.trusted()?;
        let state = State::load(&dir).map_err(io(&dir))?;
        Ok(Installer {
            base: base.clone(),
            settings: base.bundles.clone(),
            dir,
            trusted,
            device: base.device.id.clone(),
            outbox,
            slots,
            stored,
            metrics,
            state,
            probation: BTreeMap::new(),
            candidates: BTreeMap::new(),
            garbage: Vec::new(),
            collector,
            last_asked: None,
        })
    }

    /// At start, before the workers: roll back a version found on
    /// probation (it may be what stopped the device), run each pipeline's
    /// committed version, delete the folders no version uses (half-staged
    /// bundles included).
    pub(crate) fn recover(&mut self) -> Result<(), InstallError> {
        // Bundles fetched from the collector and not yet offered (a
        // `partial-*` download stays: it resumes, and is checked whole).
        for entry in std::fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with("incoming-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let names: Vec<String> = self.state.pipelines.keys().cloned().collect();
        for name in names {
            let ps = self.state.pipelines.get_mut(&name).expect("listed");
            if let Some(current) = ps.current.clone().filter(|c| !c.committed) {
                ps.current = ps.last_good.take();
                let back = ps.current.as_ref().map(|c| c.version);
                self.save()?;
                let reason = format!(
                    "the device restarted while version {} was on probation",
                    current.version
                );
                tracing::warn!(pipeline = %name, "rolled back: {reason}");
                self.report(
                    &name,
                    current.version,
                    &current.bundle_sha256,
                    InstallOutcome::RolledBack,
                    Some(reason),
                    back,
                );
            }
            let Some(current) = self.state.pipelines[&name].current.clone() else {
                continue;
            };
            let Some(slot) = self.slots.get(&name) else {
                tracing::warn!(pipeline = %name, "bundle version {} installed for a pipeline the configuration no longer runs", current.version);
                continue;
            };
            let files = self.dir.join(&current.dir).join(archive::FILES);
            match self.deploy(&name, current.version, &files) {
                Ok(deployment) => {
                    slot.swap(Arc::new(deployment));
                    tracing::info!(pipeline = %name, version = current.version, "running installed bundle");
                }
                Err(e) => {
                    // The files of a committed version are damaged: the
                    // device's own configuration is all that is left.
                    let reason = format!("its files no longer start: {e}");
                    tracing::error!(pipeline = %name, "bundle version {} {reason}; running the device's own configuration", current.version);
                    let ps = self.state.pipelines.get_mut(&name).expect("listed");
                    ps.current = None;
                    ps.last_good = None;
                    self.save()?;
                    self.report(
                        &name,
                        current.version,
                        &current.bundle_sha256,
                        InstallOutcome::RolledBack,
                        Some(reason),
                        None,
                    );
                }
            }
        }
        let referenced = self.state.referenced();
        let versions = self.dir.join("v");
        for entry in std::fs::read_dir(&versions)
            .map_err(io(&versions))?
            .flatten()
        {
            let relative = PathBuf::from("v").join(entry.file_name());
            if !referenced.contains(&relative) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    /// Watch the drop folder and the versions on probation until `wake`
    /// stops.
    pub(crate) fn run(mut self, wake: &Wake) {
        while !wake.stopped() {
            self.watch_probation();
            // One change at a time: a bundle waits while another version of
            // anything is on probation.
            if self.probation.is_empty() {
                self.scan();
            }
            let due = self.last_asked.is_none_or(|t| {
                t.elapsed() >= Duration::from_secs(self.settings.collector_poll_secs)
            });
            if self.probation.is_empty() && self.collector.is_some() && due {
                self.last_asked = Some(Instant::now());
                self.ask_collector();
            }
            self.collect_garbage();
            wake.sleep(Duration::from_millis(self.settings.poll_ms));
        }
    }

    /// Offer `bundle` (a file) now, bypassing the drop folder: what the
    /// folder scan does for each settled file.
    pub(crate) fn offer(&mut self, bundle: &Path) -> Result<(), InstallError> {
        self.offer_with(bundle, None)
    }

    /// [`Installer::offer`], watching it on probation for at least
    /// `minimum` (a rollout's ask) besides the device's own settings.
    pub(crate) fn offer_with(
        &mut self,
        bundle: &Path,
        minimum: Option<ProbationMinimum>,
    ) -> Result<(), InstallError> {
        let (_, sha256) = sluice_bundle::sha256_of(bundle).map_err(io(bundle))?;
        // Unpacked where it will stay if it is installed (a running
        // version's files never move); a crash before the state names it
        // leaves a folder that the next start deletes.
        let relative = PathBuf::from("v").join(format!("b-{:016x}", rand::random::<u64>()));
        let staging = self.dir.join(&relative);
        // Name and version as the manifest claims them (unverified), for a
        // refusal's record; none when the file is not even a bundle.
        let mut claimed = None;
        let result = self.install(bundle, &sha256, &relative, &mut claimed, minimum);
        if let Err(e) = &result {
            let _ = std::fs::remove_dir_all(&staging);
            let (name, version) = claimed.unwrap_or_default();
            tracing::warn!(bundle = %bundle.display(), "bundle refused: {e}");
            self.state.saw(&sha256);
            self.save()?;
            let pipeline = if self.slots.contains_key(&name) {
                name
            } else {
                "-".into()
            };
            self.report(
                &pipeline,
                version,
                &sha256,
                InstallOutcome::Refused,
                Some(e.to_string()),
                None,
            );
        }
        result
    }

    /// Ask the collector for the bundle a rollout has for this device, and
    /// offer it. The bundles already handled are named in `If-None-Match`,
    /// so the same one is not downloaded again.
    fn install(
        &mut self,
        bundle: &Path,
        sha256: &str,
        relative: &Path,
        claimed_as: &mut Option<(String, u64)>,
        minimum: Option<ProbationMinimum>,
    ) -> Result<(), InstallError> {
        let unpacked = archive::unpack(bundle, &self.dir.join(relative), &Limits::default())?;
        crash_point("staged");
        // The name decides which installed version the bundle must be above;
        // it is believed only once the signature over these bytes checks.
        let claimed: Manifest =
            serde_json::from_slice(&unpacked.manifest).map_err(|e| Refusal::BadManifest {
                bundle: bundle.to_owned(),
                reason: e.to_string(),
            })?;
        *claimed_as = Some((claimed.name.clone(), claimed.version));
        let highest = self
            .state
            .pipelines
            .get(&claimed.name)
            .map(|p| p.highest)
            .filter(|h| *h > 0);
        let sluice_version =
            semver::Version::parse(sluice_types::VERSION).expect("our version is semver");
        let verified = sluice_bundle::verify(
            &unpacked,
            &Policy {
                trusted: &self.trusted,
                now_ms: sluice_types::now_ms(),
                installed: highest,
                sluice_version: &sluice_version,
                wit_package: WIT_PACKAGE,
            },
        )?;
        crash_point("verified");
        let (name, version) = (verified.manifest.name.clone(), verified.manifest.version);
        let Some(slot) = self.slots.get(&name).cloned() else {
            return Err(InstallError::NoSuchPipeline {
                name,
                configured: self.slots.keys().cloned().collect(),
            });
        };
        let deployment = self.deploy(&name, version, &verified.files)?;
        validate(&deployment, &verified)?;
        crash_point("validated");

        // Durable before it runs: the state naming it current, on probation.
        let ps = self.state.pipelines.entry(name.clone()).or_default();
        let previous_version = ps.current.as_ref().map(|c| c.version);
        if let Some(current) = ps.current.take().filter(|c| c.committed) {
            ps.last_good = Some(current);
        }
        ps.current = Some(Installed {
            version,
            dir: relative.to_string_lossy().into_owned(),
            committed: false,
            installed_at_ms: sluice_types::now_ms(),
            bundle_sha256: sha256.to_owned(),
        });
        ps.highest = version;
        self.state.saw(sha256);
        if let Err(e) = self.save() {
            self.roll_back_state(&name);
            return Err(e);
        }
        crash_point("recorded");
        let deployment = Arc::new(deployment);
        let previous = slot.swap(deployment.clone());
        crash_point("swapped");
        let (min_items, min_secs) = (
            self.settings
                .probation_min_items
                .max(minimum.map_or(0, |m| m.items)),
            self.settings
                .probation_secs
                .max(minimum.map_or(0, |m| m.secs)),
        );
        tracing::info!(pipeline = %name, version, "bundle installed; on probation for {min_secs} s and {min_items} items");
        self.metrics.install(&name, "installed");
        self.report(
            &name,
            version,
            sha256,
            InstallOutcome::Installed,
            None,
            previous_version,
        );
        self.probation.insert(
            name,
            Probation {
                started: Instant::now(),
                new: deployment,
                previous,
                version,
                previous_version,
                bundle_sha256: sha256.to_owned(),
                max_item_ms: verified.manifest.validation.max_item_ms,
                min_items,
                min_secs,
            },
        );
        Ok(())
    }

    /// A deployment of pipeline `name` from the bundle files at `files`.
    fn deploy(&self, name: &str, version: u64, files: &Path) -> Result<Deployment, InstallError> {
        let config = bundle_config(&self.base, files, name, version)?;
        let runtime = Runtime::start(config).map_err(|e| InstallError::Start {
            name: name.to_owned(),
            version,
            problem: e.to_string(),
        })?;
        if runtime.pipeline(Some(name)).is_err() {
            let problems: Vec<String> = runtime.problems().iter().map(|p| p.to_string()).collect();
            return Err(InstallError::Start {
                name: name.to_owned(),
                version,
                problem: problems.join("; "),
            });
        }
        Ok(Deployment::of(
            &Arc::new(runtime),
            name,
            Some(BundleRef {
                name: name.to_owned(),
                version,
            }),
        ))
    }

    fn watch_probation(&mut self) {
        let names: Vec<String> = self.probation.keys().cloned().collect();
        for name in names {
            let p = &self.probation[&name];
            let health = &p.new.health;
            if health.items() > 0 {
                crash_point("probation");
            }
            let (items, failed) = (health.items(), health.failed());
            let enough = items >= p.min_items;
            let rate = failed as f64 / items.max(1) as f64;
            let mean_ms = health.mean_item_us() as f64 / 1000.0;
            let verdict = if enough && rate > self.settings.probation_max_error_rate {
                Some(Err(format!(
                    "{failed} of {items} items failed on probation ({:.1} %, more than the {:.1} % allowed)",
                    rate * 100.0,
                    self.settings.probation_max_error_rate * 100.0
                )))
            } else if enough && mean_ms > p.max_item_ms as f64 {
                Some(Err(format!(
                    "{mean_ms:.1} ms per item on probation, over the bundle's budget of {} ms",
                    p.max_item_ms
                )))
            } else if let Some(reason) = drift_regression(p) {
                Some(Err(reason))
            } else if enough && p.started.elapsed().as_secs() >= p.min_secs {
                Some(Ok(()))
            } else {
                None
            };
            match verdict {
                Some(Ok(())) => self.commit(&name),
                Some(Err(reason)) => self.roll_back(&name, reason),
                None => {}
            }
        }
    }

    fn commit(&mut self, name: &str) {
        crash_point("committing");
        let before = self.state.clone();
        let ps = self.state.pipelines.entry(name.to_owned()).or_default();
        if let Some(current) = &mut ps.current {
            current.committed = true;
        }
        let old = ps.last_good.take();
        if let Err(e) = self.save() {
            // Still on probation, on disk and here: tried again next tick
            // (and rolled back at a restart, as an unconfirmed version is).
            self.state = before;
            tracing::error!(pipeline = name, "cannot record a commit: {e}");
            return;
        }
        let p = self.probation.remove(name).expect("on probation");
        // The version before is no longer needed once this one proved good.
        if let Some(old) = old {
            self.garbage
                .push((self.dir.join(&old.dir), Arc::downgrade(&p.previous)));
        }
        tracing::info!(pipeline = name, version = p.version, "bundle committed");
        self.metrics.install(name, "committed");
        self.report(
            name,
            p.version,
            &p.bundle_sha256,
            InstallOutcome::Committed,
            None,
            p.previous_version,
        );
    }

    fn roll_back(&mut self, name: &str, reason: String) {
        let p = self.probation.remove(name).expect("on probation");
        self.slots[name].swap(p.previous.clone());
        let dir = self.roll_back_state(name);
        if let Some(dir) = dir {
            self.garbage.push((dir, Arc::downgrade(&p.new)));
        }
        tracing::warn!(
            pipeline = name,
            version = p.version,
            "bundle rolled back: {reason}"
        );
        self.metrics.install(name, "rolled_back");
        self.report(
            name,
            p.version,
            &p.bundle_sha256,
            InstallOutcome::RolledBack,
            Some(reason),
            p.previous_version,
        );
    }

    /// Make the last good version current again in the state; the folder of
    /// the version left.
    fn roll_back_state(&mut self, name: &str) -> Option<PathBuf> {
        let ps = self.state.pipelines.entry(name.to_owned()).or_default();
        let left = ps.current.take().map(|c| self.dir.join(c.dir));
        ps.current = ps.last_good.take();
        if let Err(e) = self.save() {
            tracing::error!(pipeline = name, "cannot record the rollback: {e}");
        }
        left
    }

    fn collect_garbage(&mut self) {
        self.garbage.retain(|(dir, user)| {
            if user.strong_count() > 0 {
                return true;
            }
            let _ = std::fs::remove_dir_all(dir);
            false
        });
    }

    fn save(&self) -> Result<(), InstallError> {
        self.state.save(&self.dir).map_err(io(&self.dir))
    }

    /// An install record through the outbox (logged if it cannot be stored).
    pub(super) fn report(
        &self,
        pipeline: &str,
        version: u64,
        bundle_sha256: &str,
        outcome: InstallOutcome,
        reason: Option<String>,
        previous_version: Option<u64>,
    ) {
        if outcome == InstallOutcome::Refused {
            self.metrics.install(pipeline, "refused");
        }
        let stored = self.outbox.allocate_seq().and_then(|seq| {
            let outbox = self.outbox.instance();
            let record = InstallReport {
                kind: RecordKind::Install,
                id: sluice_protocol::result_id(&self.device, pipeline, outbox, seq),
                device: self.device.clone(),
                pipeline: pipeline.to_owned(),
                outbox: outbox.map(str::to_owned),
                seq,
                at_ms: sluice_types::now_ms(),
                version,
                bundle_sha256: bundle_sha256.to_owned(),
                outcome,
                reason,
                previous_version,
                sluice_version: sluice_types::VERSION.to_owned(),
            };
            self.outbox.append(vec![NewRecord {
                id: record.id.clone(),
                body: serde_json::to_vec(&record).expect("an install report serializes"),
            }])
        });
        match stored {
            Ok(_) => self.stored.wake(),
            Err(e) => tracing::error!(pipeline, "cannot store an install record: {e}"),
        }
    }
}

/// A drift alarm under the new version while the previous one, watched
/// the same way, never raised one: the new version, not the world, moved.
/// (When both alarm, the inputs drift, and rolling back would not help.)
fn drift_regression(p: &Probation) -> Option<String> {
    let (windows, alarms) = p.new.health.drift();
    let (before, before_alarms) = p.previous.health.drift();
    (alarms > 0 && before_alarms == 0).then(|| {
        format!(
            "drift alarm in {alarms} of {windows} window(s) on probation, none in the {before} window(s) of the version before"
        )
    })
}
