//! What a worker runs: a [`Deployment`] of one pipeline version (from the
//! device's configuration or from a bundle), with what its records name and
//! how it is doing, held in a [`Slot`] that an install swaps between groups.
//! Made here for the agent at start and for the installer (a bundle's
//! version), so that neither reaches into the other.

use crate::pipeline::Pipeline;
use crate::runtime::Runtime;
use sluice_protocol::Provenance;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a worker runs: one version of its pipeline (from the device's
/// configuration or from a bundle), what its results name, and how it is
/// doing (for an install's probation).
pub struct Deployment {
    /// The pipeline, observed by `drift` when there is one.
    pub pipeline: Pipeline,
    /// Written into every result.
    pub provenance: Provenance,
    /// Drift detection, when the model has a profile; it already observes
    /// `pipeline`, the worker ships its closed windows.
    pub drift: Option<Arc<crate::drift::Drift>>,
    /// Items it has made results of, and how they went.
    pub health: Health,
    /// What keeps a bundle's own models and plugins running while in use.
    pub _runtime: Option<Arc<crate::runtime::Runtime>>,
}

/// Counts of what a deployment did, for an install's probation.
#[derive(Debug, Default)]
pub struct Health {
    items: AtomicU64,
    failed: AtomicU64,
    busy_us: AtomicU64,
    drift_windows: AtomicU64,
    drift_alarms: AtomicU64,
}

impl Health {
    /// `ran` items went through the pipeline in `busy`, `failed` of them
    /// failing there.
    pub(crate) fn ran(&self, ran: u64, failed: u64, busy: Duration) {
        self.items.fetch_add(ran, Ordering::Relaxed);
        self.failed.fetch_add(failed, Ordering::Relaxed);
        self.busy_us
            .fetch_add(busy.as_micros() as u64, Ordering::Relaxed);
    }

    /// A drift window closed (raising an alarm or not).
    pub(crate) fn drift_window(&self, alarm: bool) {
        self.drift_windows.fetch_add(1, Ordering::Relaxed);
        if alarm {
            self.drift_alarms.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Items it made results of.
    pub fn items(&self) -> u64 {
        self.items.load(Ordering::Relaxed)
    }

    /// Of those, the ones that failed in the pipeline (not refused at ingest).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Mean time in the pipeline per item, µs (0 before any).
    pub fn mean_item_us(&self) -> u64 {
        self.busy_us.load(Ordering::Relaxed) / self.items().max(1)
    }

    /// Drift windows closed, and of those the ones that raised an alarm.
    pub fn drift(&self) -> (u64, u64) {
        (
            self.drift_windows.load(Ordering::Relaxed),
            self.drift_alarms.load(Ordering::Relaxed),
        )
    }
}

/// The deployment a worker runs now. An install swaps it; the worker takes
/// the new one at its next group (the group in flight finishes on the old).
pub struct Slot(Mutex<Arc<Deployment>>);

impl Slot {
    /// A slot holding `deployment`.
    pub fn new(deployment: Deployment) -> Slot {
        Slot(Mutex::new(Arc::new(deployment)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<Deployment>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What runs now.
    pub fn current(&self) -> Arc<Deployment> {
        self.lock().clone()
    }

    /// Run `deployment` from the next group on; the one it replaces.
    pub fn swap(&self, deployment: Arc<Deployment>) -> Arc<Deployment> {
        std::mem::replace(&mut *self.lock(), deployment)
    }
}

impl Deployment {
    /// What runs pipeline `name` of `runtime`: its pipeline watched by drift
    /// detection when its model has a usable profile. `runtime` is kept alive
    /// by the deployment when it is a bundle's own (`bundle`).
    pub fn of(
        runtime: &Arc<Runtime>,
        name: &str,
        bundle: Option<sluice_protocol::BundleRef>,
    ) -> Deployment {
        let pipeline = runtime
            .pipeline(Some(name))
            .expect("a deployment is made for a running pipeline");
        let drift = drift_of(runtime, name).map(Arc::new);
        let mut observed = pipeline.clone();
        if let Some(drift) = &drift {
            observed = observed.with_observer(drift.clone());
        }
        let mut provenance = runtime
            .provenance(name)
            .expect("every running pipeline has its parts");
        let own = bundle.is_some().then(|| runtime.clone());
        provenance.bundle = bundle;
        Deployment {
            pipeline: observed,
            provenance,
            drift,
            health: Default::default(),
            _runtime: own,
        }
    }
}

/// Drift detection for pipeline `name`, if its model has a profile that
/// fits it. A missing profile means no drift watching (said at info level);
/// one that cannot be used (unreadable, or made for another model file) is
/// said as a warning naming both digests, and the pipeline runs without.
fn drift_of(runtime: &Runtime, name: &str) -> Option<crate::drift::Drift> {
    let config = runtime.config();
    let model = &config.pipelines.get(name)?.model;
    let path = config.models.get(model)?.profile_path();
    if !path.exists() {
        tracing::info!(pipeline = name, profile = %path.display(), "no drift profile: drift is not watched (make one with `sluice model profile`)");
        return None;
    }
    let sha256 = runtime.model_sha256(model)?;
    match crate::drift::Drift::load(&path, model, name, sha256, &config.drift) {
        Ok(drift) => {
            tracing::info!(pipeline = name, profile = %path.display(), features = drift.profile().features.len(), "watching drift");
            Some(drift)
        }
        Err(e) => {
            tracing::warn!(
                pipeline = name,
                "{e}; the pipeline runs without drift detection"
            );
            None
        }
    }
}
