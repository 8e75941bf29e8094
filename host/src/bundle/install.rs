//! Installing bundles while the agent runs: stage, verify, validate, swap,
//! probation, commit or roll back (see the module above for the why).

use super::state::{Installed, State};
use super::{EXPECTED_JSON, Expected, PIPELINE_TOML, WIT_PACKAGE};
use crate::config::{BundlesConfig, Config, PluginSource};
use crate::error::ConfigError;
use crate::metrics::Metrics;
use crate::outbox::{NewRecord, Outbox};
use crate::runtime::Runtime;
use crate::types::{Metadata, RawItem};
use crate::wake::Wake;
use crate::worker::{Deployment, Slot};
use sluice_bundle::archive::{self, ArchiveError, Limits};
use sluice_bundle::keys::PublicKey;
use sluice_bundle::{Manifest, Policy, Refusal, Verified};
use sluice_protocol::{BundleRef, InstallOutcome, InstallReport, RecordKind};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Why a bundle was not installed. Nothing on the device changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// The bundle file is not a bundle, or a damaged or hostile one.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Signature, files, expiry, version or requirements.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// It names a pipeline this device does not have.
    #[error("bundle `{name}`: this device has no pipeline `{name}` (configured: {configured:?})")]
    NoSuchPipeline {
        /// The bundle's name.
        name: String,
        /// The device's pipelines.
        configured: Vec<String>,
    },
    /// Its configuration fragment is unusable.
    #[error("bundle `{name}` version {version}: its {PIPELINE_TOML}: {problem}")]
    Fragment {
        /// The bundle's name.
        name: String,
        /// Its version.
        version: u64,
        /// What is wrong.
        problem: String,
    },
    /// Its pipeline does not start here.
    #[error("bundle `{name}` version {version}: its pipeline does not start: {problem}")]
    Start {
        /// The bundle's name.
        name: String,
        /// Its version.
        version: u64,
        /// Why.
        problem: String,
    },
    /// Its validation set does not give the expected results here.
    #[error("bundle `{name}` version {version} failed validation: {problem}")]
    Validation {
        /// The bundle's name.
        name: String,
        /// Its version.
        version: u64,
        /// The first difference.
        problem: String,
    },
    /// The device's own files (the install state, the bundles folder).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bundle settings are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

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
}

/// A bundle file in the drop folder, waiting to be unchanged for a while.
struct Candidate {
    len: u64,
    modified: Option<std::time::SystemTime>,
    since: Instant,
    /// Its SHA-256 once settled: a file left in the folder (a stick never
    /// removed) is hashed once, not at every look.
    sha256: Option<String>,
}

/// Installs bundles into a running agent's pipelines.
pub struct Installer {
    base: Config,
    settings: BundlesConfig,
    dir: PathBuf,
    trusted: Vec<PublicKey>,
    device: String,
    outbox: Arc<Outbox>,
    slots: BTreeMap<String, Arc<Slot>>,
    stored: Arc<Wake>,
    metrics: Arc<Metrics>,
    state: State,
    probation: BTreeMap<String, Probation>,
    candidates: BTreeMap<PathBuf, Candidate>,
    /// Unpacked bundles to delete once no deployment uses them.
    garbage: Vec<(PathBuf, Weak<Deployment>)>,
    /// Asking the collector: its client, the runtime it runs on, and when
    /// it was last asked.
    collector: Option<(reqwest::Client, tokio::runtime::Handle)>,
    last_asked: Option<Instant>,
}

impl Installer {
    /// An installer for the pipelines in `slots` of an agent running `base`;
    /// its state lives in `<data_dir>/bundles`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        base: &Config,
        outbox: Arc<Outbox>,
        slots: BTreeMap<String, Arc<Slot>>,
        stored: Arc<Wake>,
        metrics: Arc<Metrics>,
        tokio: &tokio::runtime::Handle,
    ) -> Result<Installer, InstallError> {
        let dir = base.device.data_dir.join("bundles");
        std::fs::create_dir_all(dir.join("v")).map_err(io(&dir))?;
        // A state file half-written when the power went.
        sluice_durable::remove_stale_temporaries(&dir);
        let trusted = base.bundles.trusted()?;
        let state = State::load(&dir).map_err(io(&dir))?;
        let collector = base.bundles.from_collector.then(|| {
            let client = crate::uplink::http::collector_client(
                Duration::from_secs(300),
                Duration::from_secs(10),
            )
            .expect("a client with rustls builds");
            (client, tokio.clone())
        });
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
        // Bundles fetched from the collector and not yet offered.
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
        let (_, sha256) = sluice_bundle::sha256_of(bundle).map_err(io(bundle))?;
        // Unpacked where it will stay if it is installed (a running
        // version's files never move); a crash before the state names it
        // leaves a folder that the next start deletes.
        let relative = PathBuf::from("v").join(format!("b-{:016x}", rand::random::<u64>()));
        let staging = self.dir.join(&relative);
        // Name and version as the manifest claims them (unverified), for a
        // refusal's record; none when the file is not even a bundle.
        let mut claimed = None;
        let result = self.install(bundle, &sha256, &relative, &mut claimed);
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
    fn ask_collector(&mut self) {
        let Some((client, tokio)) = self.collector.clone() else {
            return;
        };
        let (Some(url), Ok(Some(token))) = (&self.base.sync.url, self.base.sync.bearer_token())
        else {
            return;
        };
        let url = format!(
            "{}{}",
            url.trim_end_matches('/'),
            sluice_protocol::paths::device_bundle(&self.device)
        );
        let seen: Vec<String> = self
            .state
            .seen
            .iter()
            .rev()
            .take(32)
            .map(|s| format!("\"{s}\""))
            .collect();
        let limit = Limits::default().max_bytes;
        let path = self
            .dir
            .join(format!("incoming-{:016x}.bundle", rand::random::<u64>()));
        let fetched = tokio.block_on(super::fetch::fetch(
            &client, &url, &token, &seen, &path, limit,
        ));
        match fetched {
            Ok(false) => {}
            // Refusals are reported by `offer`.
            Ok(true) => drop(self.offer(&path)),
            Err(e) => tracing::warn!("asking {url} for a bundle: {e}"),
        }
        let _ = std::fs::remove_file(&path);
    }

    fn scan(&mut self) {
        let Some(folder) = self.settings.folder.clone() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&folder) else {
            return;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "bundle") && p.is_file())
            .collect();
        files.sort();
        self.candidates.retain(|path, _| files.contains(path));
        let settle = Duration::from_millis(self.settings.settle_ms);
        for path in files {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let (len, modified) = (meta.len(), meta.modified().ok());
            let fresh = || Candidate {
                len,
                modified,
                since: Instant::now(),
                sha256: None,
            };
            let candidate = self.candidates.entry(path.clone()).or_insert_with(fresh);
            if candidate.len != len || candidate.modified != modified {
                *candidate = fresh();
                continue;
            }
            if candidate.since.elapsed() < settle {
                continue;
            }
            if candidate.sha256.is_none() {
                candidate.sha256 = sluice_bundle::sha256_of(&path).ok().map(|(_, sha)| sha);
            }
            let Some(sha256) = candidate.sha256.clone() else {
                continue;
            };
            if self.state.seen.contains(&sha256) {
                continue;
            }
            // Refusals are reported by `offer`; one install at a time.
            if self.offer(&path).is_ok() {
                break;
            }
        }
    }

    fn install(
        &mut self,
        bundle: &Path,
        sha256: &str,
        relative: &Path,
        claimed_as: &mut Option<(String, u64)>,
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
        tracing::info!(pipeline = %name, version, "bundle installed; on probation for {} s", self.settings.probation_secs);
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
            let enough = items >= self.settings.probation_min_items;
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
            } else if enough && p.started.elapsed().as_secs() >= self.settings.probation_secs {
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
    fn report(
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

/// The device's configuration with pipeline `name` (only) as the bundle at
/// `files` defines it. Every path the fragment names must lie inside the
/// bundle: a bundle brings its files, it does not reach into the device's.
fn bundle_config(
    base: &Config,
    files: &Path,
    name: &str,
    version: u64,
) -> Result<Config, InstallError> {
    let problem = |problem: String| InstallError::Fragment {
        name: name.to_owned(),
        version,
        problem,
    };
    let path = files.join(PIPELINE_TOML);
    let text = std::fs::read_to_string(&path).map_err(|e| problem(e.to_string()))?;
    let fragment = Config::parse(&text, files).map_err(|e| problem(e.to_string()))?;
    if fragment.pipelines.keys().ne([name]) {
        return Err(problem(format!(
            "it must define exactly pipeline `{name}`, it defines {:?}",
            fragment.pipelines.keys().collect::<Vec<_>>()
        )));
    }
    let inside = |what: String, p: &Path| {
        if p.starts_with(files) {
            Ok(())
        } else {
            Err(problem(format!(
                "{what} `{}` is outside the bundle",
                p.display()
            )))
        }
    };
    for (plugin, config) in &fragment.plugins {
        match &config.path {
            PluginSource::File(p) => inside(format!("plugins.{plugin}.path"), p)?,
            PluginSource::Bundled(b) => {
                return Err(problem(format!(
                    "plugins.{plugin}.path is `bundled:{b}`: a bundle carries its plugins"
                )));
            }
        }
        for dir in &config.grants.dirs {
            inside(format!("plugins.{plugin}.grants.dirs"), &dir.host)?;
        }
    }
    for (pipeline, config) in &fragment.pipelines {
        if let Some(sample) = &config.sample {
            inside(format!("pipelines.{pipeline}.sample"), sample)?;
        }
    }
    for (model, config) in &fragment.models {
        inside(format!("models.{model}.path"), &config.path)?;
        if let Some(profile) = &config.profile {
            inside(format!("models.{model}.profile"), profile)?;
        }
    }
    let mut config = base.clone();
    config.plugins = fragment.plugins;
    config.models = fragment.models;
    config.pipelines = fragment.pipelines;
    Ok(config)
}

/// Run the validation set through `deployment`: the expected results
/// (numbers within the manifest's tolerance), expected failures, and the
/// per-item time budget.
fn validate(deployment: &Deployment, verified: &Verified) -> Result<(), InstallError> {
    let manifest = &verified.manifest;
    let failed = |problem: String| InstallError::Validation {
        name: manifest.name.clone(),
        version: manifest.version,
        problem,
    };
    let text = std::fs::read(verified.files.join(EXPECTED_JSON))
        .map_err(|e| failed(format!("{EXPECTED_JSON}: {e}")))?;
    let expected: Vec<Expected> =
        serde_json::from_slice(&text).map_err(|e| failed(format!("{EXPECTED_JSON}: {e}")))?;
    let mut items = Vec::with_capacity(expected.len());
    for (ix, e) in expected.iter().enumerate() {
        let listed = manifest.files.iter().any(|f| f.path == e.input);
        if !listed {
            return Err(failed(format!(
                "input `{}` is not a file of the bundle",
                e.input
            )));
        }
        let data = std::fs::read(verified.files.join(&e.input))
            .map_err(|err| failed(format!("{}: {err}", e.input)))?;
        items.push(RawItem {
            meta: Metadata::new(format!("validation-{ix}"), e.content_type.clone()),
            data,
        });
    }
    if items.is_empty() {
        return Ok(());
    }
    let n = items.len();
    let started = Instant::now();
    let outcomes = crate::pipeline::process_all(&deployment.pipeline, items, &|_| {});
    let per_item_ms = started.elapsed().as_secs_f64() * 1000.0 / n as f64;
    for (e, outcome) in expected.iter().zip(&outcomes) {
        match (&e.result, &outcome.result) {
            (Some(want), Ok(document)) => {
                let got: serde_json::Value = serde_json::from_slice(&document.body)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&document.body).into());
                if let Some(difference) = differ(want, &got, manifest.validation.tolerance, "") {
                    return Err(failed(format!("`{}`: {difference}", e.input)));
                }
            }
            (Some(_), Err(error)) => {
                return Err(failed(format!("`{}` failed: {error}", e.input)));
            }
            (None, Ok(_)) => {
                return Err(failed(format!(
                    "`{}` was expected to fail ({}) and gave a result",
                    e.input,
                    e.error.as_deref().unwrap_or("")
                )));
            }
            (None, Err(_)) => {}
        }
    }
    if per_item_ms > manifest.validation.max_item_ms as f64 {
        return Err(failed(format!(
            "{per_item_ms:.1} ms per item, over the budget of {} ms",
            manifest.validation.max_item_ms
        )));
    }
    Ok(())
}

/// Where `got` differs from `want` (numbers within `tolerance` relative to
/// the larger magnitude, absolute below 1), as `at: want ... got ...`.
fn differ(
    want: &serde_json::Value,
    got: &serde_json::Value,
    tolerance: f64,
    at: &str,
) -> Option<String> {
    use serde_json::Value;
    let here = || {
        if at.is_empty() {
            "the result".to_owned()
        } else {
            at.to_owned()
        }
    };
    match (want, got) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64()?, b.as_f64()?);
            let bound = tolerance * a.abs().max(b.abs()).max(1.0);
            ((a - b).abs() > bound || !b.is_finite())
                .then(|| format!("{}: expected {a}, got {b}", here()))
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Some(format!(
                    "{}: expected {} elements, got {}",
                    here(),
                    a.len(),
                    b.len()
                ));
            }
            a.iter()
                .zip(b)
                .enumerate()
                .find_map(|(i, (a, b))| differ(a, b, tolerance, &format!("{at}[{i}]")))
        }
        (Value::Object(a), Value::Object(b)) => {
            if a.len() != b.len() || a.keys().any(|k| !b.contains_key(k)) {
                return Some(format!(
                    "{}: expected fields {:?}, got {:?}",
                    here(),
                    a.keys().collect::<Vec<_>>(),
                    b.keys().collect::<Vec<_>>()
                ));
            }
            a.iter()
                .find_map(|(k, v)| differ(v, &b[k], tolerance, &format!("{at}.{k}")))
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("{}: expected {a}, got {b}", here())),
    }
}

#[cfg(test)]
mod tests {
    use super::differ;
    use serde_json::json;

    #[test]
    fn results_compare_within_the_tolerance_and_name_the_first_difference() {
        let want = json!({"top": [{"label": "3", "score": 0.9}], "n": 1000.0});
        assert_eq!(
            differ(
                &want,
                &json!({"top": [{"label": "3", "score": 0.90005}], "n": 1000.05}),
                1e-4,
                ""
            ),
            None
        );
        let d = differ(
            &want,
            &json!({"top": [{"label": "3", "score": 0.8}], "n": 1000.0}),
            1e-4,
            "",
        )
        .unwrap();
        assert!(d.starts_with(".top[0].score: expected 0.9, got 0.8"), "{d}");
        let d = differ(
            &want,
            &json!({"top": [{"label": "5", "score": 0.9}], "n": 1000.0}),
            1e-4,
            "",
        )
        .unwrap();
        assert!(d.contains(".top[0].label"), "{d}");
        assert!(differ(&want, &json!({"top": [], "n": 1000.0}), 1e-4, "").is_some());
        assert!(
            differ(
                &want,
                &json!({"top": [{"label": "3", "score": 0.9}]}),
                1e-4,
                ""
            )
            .is_some()
        );
        assert!(differ(&json!(1.0), &json!(null), 1e-4, "").is_some());
    }
}
