//! The agent (`sluice run`): the long-running device process. It only wires
//! the stages together; each has its own home:
//!
//! ```text
//! ingest (Sources) -> Sink -> journal in the outbox
//!    -> worker per pipeline -> Pipeline (preprocess, schedule, infer, postprocess)
//!    -> outbox (one transaction: results in, inputs out)
//!    -> uplink (Uploader over an Uplink) -> collector
//! ```
//!
//! Threads: one worker per pipeline, one per blocking source (the folder),
//! one uploader, one housekeeper (outbox retention, whether or not `[sync]`
//! is configured); HTTP ingest and the uplink's I/O run on the process's one
//! tokio runtime.
//!
//! Stopping ([`Agent::shutdown`], or dropping the agent): sources stop
//! taking inputs first, then every worker finishes the batch it is running
//! (its results are committed), then the uploader finishes its request.
//! Inputs still in the journal wait for the next start.

use crate::bundle::Installer;
use crate::config::Config;
use crate::ingest::{self, Context, Incoming, IngestError, Running, Sink};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Recovery};
use crate::runtime::Runtime;
use crate::uplink::{self, Uploader};
use crate::wake::Wake;
use crate::worker::{Deployment, Slot, Worker};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The outbox cannot be opened or created.
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
    /// No pipeline could start (each problem is named).
    #[error(transparent)]
    Runtime(#[from] crate::runtime::StartError),
    /// A source could not be set up.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The configuration does not fit `device.memory_budget_mb`.
    #[error(transparent)]
    Memory(#[from] crate::memory::OverBudget),
    /// The data volume cannot hold the disk reserve, the compiled-plugin
    /// cache and the outbox's working minimum.
    #[error(transparent)]
    Volume(#[from] crate::volume::TooSmall),
    /// The uplink's configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::error::ConfigError),
    /// The install state of bundles cannot be read or recovered.
    #[error(transparent)]
    Bundles(#[from] crate::bundle::InstallError),
    /// A thread or the async runtime could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// What was being started.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

fn spawn(what: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, AgentError> {
    std::thread::Builder::new()
        .name(what.into())
        .spawn(f)
        .map_err(|source| AgentError::Spawn {
            what: what.into(),
            source,
        })
}

/// A running agent.
pub struct Agent {
    runtime: Arc<Runtime>,
    outbox: Arc<Outbox>,
    sink: Arc<Sink>,
    ingest_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    sources: Vec<Running>,
    workers: Vec<(Arc<Wake>, JoinHandle<()>)>,
    /// What each pipeline's worker runs (an install swaps it).
    slots: BTreeMap<String, Arc<Slot>>,
    /// The uploader and the housekeeper.
    background: Vec<(Arc<Wake>, JoinHandle<()>)>,
    /// The tokio runtime, when the agent made its own.
    own_tokio: Option<tokio::runtime::Runtime>,
}

impl Agent {
    /// Start the agent of `config` on a tokio runtime of its own.
    pub fn start(config: Config) -> Result<Agent, AgentError> {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-io")
            .enable_all()
            .build()
            .map_err(|source| AgentError::Spawn {
                what: "the async runtime".into(),
                source,
            })?;
        let mut agent = Agent::start_on(config, tokio.handle())?;
        agent.own_tokio = Some(tokio);
        Ok(agent)
    }

    /// Start the agent of `config`, doing its async I/O on `tokio` (the
    /// process's one runtime): open the outbox, start the pipelines, their
    /// workers, the sources, the uploader and the housekeeper.
    pub fn start_on(config: Config, tokio: &tokio::runtime::Handle) -> Result<Agent, AgentError> {
        // The bounds and the baseline are known before anything is loaded: a
        // board that cannot hold them is told before models take minutes.
        config.require_pipelines()?;
        let budget = config.device.memory_budget_mb;
        let mut known = crate::memory::bounds(&config, 0);
        known.push(crate::memory::baseline());
        crate::memory::check(budget, &known)?;
        let outbox = Outbox::open_in(&config.device.data_dir, config.outbox.clone())?;
        // The volume is checked with the cache as found (a restart), then
        // once the plugins are compiled into it (a first start).
        crate::volume::check(&config)?;
        let outbox = Arc::new(outbox);
        let runtime = Arc::new(Runtime::start(config.clone())?);
        crate::memory::check(budget, runtime.memory())?;
        crate::volume::check(&config)?;
        let device = config.device.id.clone();
        let stored = Wake::new();
        let wakes: BTreeMap<String, Arc<Wake>> = runtime
            .pipelines()
            .map(|p| (p.name().to_owned(), Wake::new()))
            .collect();
        let metrics = Arc::new(Metrics::new(
            runtime.clone(),
            outbox.clone(),
            config.device.data_dir.clone(),
        ));
        let sink = Arc::new(
            Sink::new(
                &device,
                outbox.clone(),
                wakes.clone(),
                &config.ingest,
                metrics.clone(),
            )
            .with_startup_problems(runtime.problems().iter().map(|p| p.to_string()).collect()),
        );
        // From here on, dropping `agent` (on an error) stops what started.
        let mut agent = Agent {
            runtime: runtime.clone(),
            outbox: outbox.clone(),
            sink,
            ingest_addr: None,
            admin_addr: None,
            sources: Vec::new(),
            workers: Vec::new(),
            slots: BTreeMap::new(),
            background: Vec::new(),
            own_tokio: None,
        };
        for pipeline in runtime.pipelines() {
            let slot = Slot::new(Deployment::of(&runtime, pipeline.name(), None));
            agent
                .slots
                .insert(pipeline.name().to_owned(), Arc::new(slot));
        }
        // One connection to the collector (over MQTT the broker allows one
        // per device): the uploader's, and the installer asks through it.
        let uplink = uplink::from_config(&config.sync, &device, tokio)?;
        // Installed bundles run from the first group on: swapped into the
        // slots before any worker starts.
        if config.bundles.enabled() {
            let offers = uplink
                .as_ref()
                .filter(|_| config.bundles.from_collector)
                .map(|uplink| uplink.offers(&device));
            let mut installer = Installer::new(
                &config,
                outbox.clone(),
                agent.slots.clone(),
                stored.clone(),
                metrics.clone(),
                offers,
            )?;
            installer.recover()?;
            let wake = Wake::new();
            let thread = spawn("sluice-bundles", {
                let wake = wake.clone();
                move || installer.run(&wake)
            })?;
            agent.background.push((wake, thread));
        }
        for pipeline in runtime.pipelines() {
            let wake = wakes[pipeline.name()].clone();
            let name = pipeline.name().to_owned();
            let worker = Worker {
                device: device.clone(),
                name: name.clone(),
                slot: agent.slots[pipeline.name()].clone(),
                outbox: outbox.clone(),
                wake: wake.clone(),
                stored: stored.clone(),
                metrics: metrics.clone(),
                completions: agent.sink.completions.clone(),
                working: {
                    let (sink, name) = (agent.sink.clone(), name.clone());
                    Arc::new(move || sink.mark_up(&name))
                },
            };
            let thread = spawn(&format!("sluice-{name}"), {
                let sink = agent.sink.clone();
                move || {
                    // A worker that dies (a bug outside the pipeline, which
                    // catches its own) takes its pipeline's ingest down,
                    // visibly, until it is started again and works: inputs
                    // are not accepted for nobody, and those accepted wait
                    // in the journal.
                    crate::crash::supervise(
                        &name,
                        &worker.wake,
                        || worker.run(),
                        |why| sink.mark_down(&name, why),
                    );
                }
            })?;
            // Work left in the journal by the previous run starts at once.
            wake.wake();
            agent.workers.push((wake, thread));
        }

        if let Some(uplink) = uplink {
            if config.sync.ack_keys.is_empty() {
                tracing::warn!(
                    "sync.ack_keys is empty: acknowledgements from {} are believed unsigned, so a proxy or a host answering in its place could make this device delete results; pin the collector's key (`sluice-collector ack-key`)",
                    uplink.endpoint()
                );
            }
            let uploader = Uploader::new(outbox.clone(), uplink, &config.sync, &device)?
                .with_metrics(metrics.clone());
            stored.wake();
            let thread = spawn("sluice-uplink", {
                let stored = stored.clone();
                move || uploader.run(&stored)
            })?;
            agent.background.push((stored, thread));
        }

        let housekeeping = Wake::new();
        let thread = spawn("sluice-housekeeping", {
            let (outbox, wake, ingest) =
                (outbox.clone(), housekeeping.clone(), config.ingest.clone());
            move || housekeep(&outbox, &ingest, &wake)
        })?;
        agent.background.push((housekeeping, thread));

        let only = runtime.pipeline(None).ok().map(|p| p.name().to_owned());
        let context = Context {
            runtime: tokio.clone(),
            metrics: metrics.clone(),
        };
        for source in ingest::from_config(&config, only.as_deref())? {
            if let Some(addr) = source.address() {
                agent.ingest_addr = Some(addr);
            }
            agent
                .sources
                .push(source.start(agent.sink.clone(), &context)?);
        }
        agent.sources.extend(crate::consumers::start(
            &config,
            &outbox,
            &agent.sink.completions,
            &metrics,
            tokio,
        )?);
        if let Some((admin, addr)) = crate::admin::start(&config.admin, agent.sink.clone(), tokio)?
        {
            agent.admin_addr = Some(addr);
            agent.sources.push(admin);
        }
        Ok(agent)
    }

    /// The bound address of the admin endpoint (`[admin] listen`).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The bound address of the HTTP ingest endpoint.
    pub fn ingest_addr(&self) -> Option<SocketAddr> {
        self.ingest_addr
    }

    /// The outbox.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Set when the outbox found at start-up was damaged and moved aside.
    pub fn recovered(&self) -> Option<&Recovery> {
        self.outbox.recovered()
    }

    /// The pipelines, schedulers and plugins the agent runs.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Accept inputs durably, in one transaction, and wake their pipelines
    /// (the ingest of a program embedding the agent). Returns their result
    /// ids, in order. Each input must name a running pipeline.
    pub fn accept(&self, inputs: &[crate::outbox::NewInput]) -> Result<Vec<String>, IngestError> {
        let incoming: Vec<Incoming> = inputs
            .iter()
            .map(|input| Incoming {
                input: input.clone(),
                claim: None,
            })
            .collect();
        Ok(self
            .sink
            .accept(&incoming)?
            .into_iter()
            .map(|a| a.id)
            .collect())
    }

    /// The result of input `id` (an id [`Agent::accept`] returned) once its
    /// pipeline has stored it, while it is in the outbox (until the
    /// upstream acknowledges it, or the outbox's size cap or age limit
    /// drops it); `None` before. A stored result that does not read back as
    /// a result record (damage) is an error naming it.
    pub fn result(
        &self,
        id: &str,
    ) -> Result<Option<sluice_protocol::ResultRecord>, crate::outbox::OutboxError> {
        let Some(body) = self.outbox.record(id)? else {
            return Ok(None);
        };
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| crate::outbox::OutboxError::Damaged {
                path: self.outbox.path().to_owned(),
                reason: format!("record `{id}` is not a result record: {e}"),
            })
    }

    /// Stop taking inputs, finish in-flight batches and uploads, and return.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for source in &mut self.sources {
            source.stop();
        }
        for source in self.sources.drain(..) {
            source.join();
        }
        for (wake, _) in &self.workers {
            wake.stop();
        }
        for (_, thread) in self.workers.drain(..) {
            let _ = thread.join();
        }
        for (wake, _) in &self.background {
            wake.stop();
        }
        for (_, thread) in self.background.drain(..) {
            let _ = thread.join();
        }
        if let Some(tokio) = self.own_tokio.take() {
            tokio.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How often housekeeping looks at the outbox.
const HOUSEKEEPING_TICK: Duration = Duration::from_secs(1);

/// Outbox retention while the agent runs, whether or not anything uploads:
/// results older than `max_age_secs` are dropped (and counted), ingest
/// idempotency keys past their window or count are forgotten.
fn housekeep(outbox: &Outbox, ingest: &crate::config::IngestConfig, wake: &Wake) {
    let max_age = outbox.config().max_age_secs;
    // Often enough that nothing outlives its age by more than a tenth of
    // it (at most a minute), rarely enough to cost nothing.
    let expire_every = Duration::from_millis(max_age.saturating_mul(100).clamp(1_000, 60_000));
    let mut last_expiry: Option<std::time::Instant> = None;
    while !wake.stopped() {
        let now = sluice_types::now_ms();
        if max_age > 0 && last_expiry.is_none_or(|t| t.elapsed() >= expire_every) {
            last_expiry = Some(std::time::Instant::now());
            if let Err(e) = outbox.expire(now) {
                tracing::warn!("outbox expiry failed: {e}");
            }
        }
        outbox.ensure_reserve();
        let window_ms =
            i64::try_from(ingest.idempotency_window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        if let Err(e) =
            outbox.prune_ingest_keys(now.saturating_sub(window_ms), ingest.idempotency_max_keys)
        {
            tracing::warn!("forgetting old idempotency keys failed: {e}");
        }
        wake.sleep(HOUSEKEEPING_TICK);
    }
}
