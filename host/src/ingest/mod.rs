//! Ingest: where inputs enter the device. Every way in is a [`Source`]
//! (today the watched [`folder`] and the local [`http`] endpoint; an MQTT
//! subscription would be one new file) delivering into one [`Sink`].
//!
//! Invariants:
//! * an input is acknowledged to its sender (HTTP `202`, file deleted) only
//!   after [`Sink::accept`] returned, i.e. after its journal row is
//!   committed and fsynced in the outbox: an accepted input survives SIGKILL
//!   and power loss;
//! * its result id `<device>/<pipeline>/<seq>` is fixed at acceptance;
//! * back-pressure is never a result: when more than `max_pending_bytes` of
//!   inputs wait, sources stop taking new ones ([`IngestError::Busy`]) and
//!   nothing is stored or dropped;
//! * accepting wakes only the workers of the pipelines that got inputs;
//! * a pipeline whose worker died accepts nothing more
//!   ([`IngestError::PipelineDown`]), and readiness says so: no input is
//!   acknowledged into a pipeline that will never process it.

pub mod files;
pub mod folder;
mod group;
pub mod http;
pub mod infer;
pub mod mqtt;

use crate::config::{Config, IngestConfig};
use crate::outbox::{Delivery, KeyedAccept, NewInput, Outbox, OutboxError};
use crate::wake::Wake;
use std::collections::BTreeMap;
use std::sync::Arc;

pub use files::content_type_of;

/// Why an input was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// No running pipeline has this name.
    #[error("no running pipeline `{name}` (running: {running:?})")]
    UnknownPipeline {
        /// The name asked for.
        name: String,
        /// The pipelines that run.
        running: Vec<String>,
    },
    /// The input is larger than `ingest.max_input_bytes`.
    #[error("input of {bytes} bytes exceeds ingest.max_input_bytes ({max})")]
    TooLarge {
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// Too many bytes of inputs wait for their pipelines; retry later.
    #[error(
        "{pending} bytes of inputs are waiting (ingest.max_pending_bytes = {max}); retry later"
    )]
    Busy {
        /// Bytes waiting.
        pending: u64,
        /// The limit.
        max: u64,
    },
    /// The pipeline's worker died: nothing more is accepted for it, so that
    /// no input waits for a worker that will never take it.
    #[error(
        "pipeline `{name}` is down ({reason}); its inputs are not accepted until the agent restarts"
    )]
    PipelineDown {
        /// The pipeline.
        name: String,
        /// Why it is down.
        reason: String,
    },
    /// The outbox could not take the input (a full disk: retry later).
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The idempotency key was used before for another input.
    #[error("Idempotency-Key `{key}` was used before for a different input")]
    KeyConflict {
        /// The key.
        key: String,
    },
    /// The idempotency key is not 1 to 200 visible ASCII characters.
    #[error(
        "Idempotency-Key must be 1 to {} visible ASCII characters",
        sluice_protocol::MAX_KEY_LEN
    )]
    BadKey,
    /// A source could not be set up.
    #[error("{source_name}: {message}")]
    Setup {
        /// The source.
        source_name: String,
        /// What failed.
        message: String,
    },
}

/// An input offered to the [`Sink`].
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The input.
    pub input: NewInput,
    /// The claimed file it came from (folder source), remembered with it.
    pub claim: Option<String>,
}

/// What acceptance gave an input (also the body of HTTP ingest's `202`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    /// Its result id, `<device>/<pipeline>/<seq>`.
    pub id: String,
    /// Its sequence number in the journal.
    pub seq: i64,
    /// It was accepted before under the same idempotency key: this is that
    /// acceptance, and nothing new was stored.
    pub replayed: bool,
}

/// Where every source delivers: the outbox's journal, with the size and
/// back-pressure limits, and the wake-ups of the pipelines' workers.
pub struct Sink {
    device: String,
    pub(crate) outbox: Arc<Outbox>,
    workers: BTreeMap<String, Arc<Wake>>,
    max_input_bytes: u64,
    max_pending_bytes: u64,
    /// Pipelines whose worker died, and why.
    down: std::sync::Mutex<BTreeMap<String, String>>,
    /// What did not start (models, plugins), for readiness.
    startup_problems: Vec<String>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Synchronous calls waiting for their results (the workers tell).
    pub(crate) completions: Arc<crate::completions::Completions>,
    /// Inputs arriving one per request, committed together.
    group: group::GroupCommit,
}

impl Sink {
    /// A sink into `outbox` for `device`, waking `workers` (one per running
    /// pipeline, by name).
    pub fn new(
        device: &str,
        outbox: Arc<Outbox>,
        workers: BTreeMap<String, Arc<Wake>>,
        config: &IngestConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Sink {
        Sink {
            device: device.to_owned(),
            outbox,
            workers,
            max_input_bytes: config.max_input_bytes as u64,
            max_pending_bytes: config.max_pending_bytes,
            down: Default::default(),
            startup_problems: Vec::new(),
            metrics,
            completions: Default::default(),
            group: Default::default(),
        }
    }

    /// Note what did not start (a model or plugin refused at start-up): the
    /// agent runs what it can, but is not ready.
    pub fn with_startup_problems(mut self, problems: Vec<String>) -> Sink {
        self.startup_problems = problems;
        self
    }

    /// What keeps the agent from being ready, empty when it is: pipelines
    /// down, what did not start, an outbox that cannot be written, a backlog
    /// at its bound (`ingest.max_pending_bytes`).
    pub fn readiness(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .down()
            .into_iter()
            .map(|(pipeline, reason)| format!("pipeline `{pipeline}` is down: {reason}"))
            .collect();
        problems.extend(
            self.startup_problems
                .iter()
                .map(|p| format!("not started: {p}")),
        );
        if let Some(failure) = self.outbox.write_failure() {
            problems.push(format!("the outbox cannot be written: {failure}"));
        }
        if let Err(e) = self.check_room(0) {
            problems.push(format!("backlog at its bound: {e}"));
        }
        problems
    }

    /// The agent's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Take no more inputs for `pipeline`: its worker died (`reason`).
    pub fn mark_down(&self, pipeline: &str, reason: &str) {
        self.lock_down()
            .insert(pipeline.to_owned(), reason.to_owned());
    }

    /// Take inputs for `pipeline` again: its worker works again.
    pub fn mark_up(&self, pipeline: &str) {
        if self.lock_down().remove(pipeline).is_some() {
            tracing::info!(
                pipeline,
                "its worker works again; taking inputs for it again"
            );
        }
    }

    /// The pipelines that are down, with why.
    pub fn down(&self) -> BTreeMap<String, String> {
        self.lock_down().clone()
    }

    fn lock_down(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running pipelines' names.
    pub fn pipelines(&self) -> Vec<String> {
        self.workers.keys().cloned().collect()
    }

    /// Check that `pipeline` runs.
    pub fn check_pipeline(&self, pipeline: &str) -> Result<(), IngestError> {
        if let Some(reason) = self.lock_down().get(pipeline) {
            return Err(IngestError::PipelineDown {
                name: pipeline.to_owned(),
                reason: reason.clone(),
            });
        }
        if self.workers.contains_key(pipeline) {
            Ok(())
        } else {
            Err(IngestError::UnknownPipeline {
                name: pipeline.to_owned(),
                running: self.pipelines(),
            })
        }
    }

    /// The largest input accepted.
    pub fn max_input_bytes(&self) -> u64 {
        self.max_input_bytes
    }

    /// Check an input's size against `ingest.max_input_bytes`.
    pub fn check_size(&self, bytes: u64) -> Result<(), IngestError> {
        if bytes > self.max_input_bytes {
            return Err(IngestError::TooLarge {
                bytes,
                max: self.max_input_bytes,
            });
        }
        Ok(())
    }

    /// Check that `bytes` more of inputs may wait (`ingest.max_pending_bytes`).
    /// Cheap and lock-free: async handlers call it.
    pub fn check_room(&self, bytes: u64) -> Result<(), IngestError> {
        let pending = self.outbox.journal_bytes();
        if pending.saturating_add(bytes) > self.max_pending_bytes {
            return Err(IngestError::Busy {
                pending,
                max: self.max_pending_bytes,
            });
        }
        Ok(())
    }

    /// Accept `inputs` durably, in one transaction (one fsync), all or none,
    /// and wake their pipelines' workers. Blocks: call it off async workers.
    pub fn accept(&self, inputs: &[Incoming]) -> Result<Vec<Accepted>, IngestError> {
        for incoming in inputs {
            self.check_pipeline(&incoming.input.pipeline)?;
            self.check_size(incoming.input.data.len() as u64)?;
        }
        let started = std::time::Instant::now();
        let seqs = self.outbox.accept_many(
            &inputs
                .iter()
                .map(|i| (&i.input, i.claim.as_deref()))
                .collect::<Vec<_>>(),
        )?;
        let took = started.elapsed();
        let mut woken = Vec::new();
        for incoming in inputs {
            let pipeline = incoming.input.pipeline.as_str();
            if !woken.contains(&pipeline) {
                woken.push(pipeline);
                self.workers[pipeline].wake();
                let n = inputs
                    .iter()
                    .filter(|i| i.input.pipeline == pipeline)
                    .count() as u64;
                self.metrics.accepted(pipeline, n);
                self.metrics.stage(pipeline, "ingest_accept", took, n);
            }
        }
        Ok(inputs
            .iter()
            .zip(seqs)
            .map(|(incoming, seq)| Accepted {
                id: self
                    .outbox
                    .result_id(&self.device, &incoming.input.pipeline, seq),
                seq,
                replayed: false,
            })
            .collect())
    }

    /// Accept one input of a request in a group commit with the others
    /// that arrive meanwhile (see `group.rs`). Blocks.
    pub fn accept_one(&self, incoming: Incoming) -> Result<Accepted, IngestError> {
        self.group.accept(self, incoming)
    }

    /// Record durably that `input` (given without its data) was refused
    /// for `reason`: its result will be that failure, counted and shipped
    /// like any other. Blocks (fsync).
    pub fn refuse(
        &self,
        input: &NewInput,
        reason: &str,
        claim: Option<&str>,
    ) -> Result<Accepted, IngestError> {
        self.check_pipeline(&input.pipeline)?;
        let seq = self.outbox.accept_refused(input, reason, claim)?;
        self.workers[&input.pipeline].wake();
        self.metrics.refused("too_large");
        Ok(Accepted {
            id: self.outbox.result_id(&self.device, &input.pipeline, seq),
            seq,
            replayed: false,
        })
    }

    /// Accept `input` durably under idempotency `key`: a retry of an
    /// accepted input (same key, same pipeline, type and bytes) gets the
    /// first acceptance back and stores nothing. Blocks (fsync).
    pub fn accept_keyed(&self, input: NewInput, key: &str) -> Result<Accepted, IngestError> {
        check_key(key)?;
        self.check_pipeline(&input.pipeline)?;
        self.check_size(input.data.len() as u64)?;
        let started = std::time::Instant::now();
        let (seq, replayed) = match self.outbox.accept_keyed(&input, key)? {
            KeyedAccept::New(seq) => {
                self.workers[&input.pipeline].wake();
                self.metrics.accepted(&input.pipeline, 1);
                self.metrics
                    .stage(&input.pipeline, "ingest_accept", started.elapsed(), 1);
                (seq, false)
            }
            KeyedAccept::Replayed(seq) => (seq, true),
            _ => {
                return Err(IngestError::KeyConflict {
                    key: key.to_owned(),
                });
            }
        };
        Ok(Accepted {
            id: self.outbox.result_id(&self.device, &input.pipeline, seq),
            seq,
            replayed,
        })
    }
}

impl Sink {
    /// Accept what a message broker delivered, durably, in one transaction
    /// (all or none), each new or the acceptance it repeats
    /// ([`Delivery`]); wake the pipelines that got new inputs. Blocks.
    /// An input with a refusal (a payload over the limit, given without
    /// its data) is journaled as refused: its result is that failure.
    pub fn accept_deliveries(
        &self,
        inputs: &[(&NewInput, Delivery<'_>, Option<&str>)],
    ) -> Result<Vec<Accepted>, IngestError> {
        let mut bytes = 0u64;
        for (input, _, _) in inputs {
            self.check_pipeline(&input.pipeline)?;
            self.check_size(input.data.len() as u64)?;
            bytes += input.data.len() as u64;
        }
        self.check_room(bytes)?;
        let started = std::time::Instant::now();
        let accepted = self.outbox.accept_deliveries(inputs)?;
        let took = started.elapsed();
        let mut out = Vec::with_capacity(inputs.len());
        let mut woken: Vec<&str> = Vec::new();
        for ((input, _, _), how) in inputs.iter().zip(accepted) {
            let (seq, replayed) = match how {
                KeyedAccept::New(seq) => (seq, false),
                KeyedAccept::Replayed(seq) => (seq, true),
                _ => unreachable!("deliveries never conflict"),
            };
            if !replayed {
                self.metrics.accepted(&input.pipeline, 1);
                self.metrics
                    .stage(&input.pipeline, "ingest_accept", took, 1);
                if !woken.contains(&input.pipeline.as_str()) {
                    woken.push(&input.pipeline);
                    self.workers[&input.pipeline].wake();
                }
            }
            out.push(Accepted {
                id: self.outbox.result_id(&self.device, &input.pipeline, seq),
                seq,
                replayed,
            });
        }
        Ok(out)
    }
}

/// An idempotency key is 1 to [`sluice_protocol::MAX_KEY_LEN`] visible
/// ASCII characters (as HTTP header values can carry them unescaped).
pub fn check_key(key: &str) -> Result<(), IngestError> {
    let ok = (1..=sluice_protocol::MAX_KEY_LEN).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_graphic());
    if ok { Ok(()) } else { Err(IngestError::BadKey) }
}

/// What sources run with.
pub struct Context {
    /// The process's tokio runtime (for sources that serve async I/O).
    pub runtime: tokio::runtime::Handle,
    /// The agent's metrics (served by sources that speak HTTP).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// A way inputs come in. Implementations live one per file in this module
/// and are listed in [`from_config`].
pub trait Source: Send {
    /// What it is, for messages (`folder /var/spool/sluice`).
    fn describe(&self) -> String;

    /// The network address it listens on, if it does.
    fn address(&self) -> Option<std::net::SocketAddr> {
        None
    }

    /// Start delivering into `sink` in the background; return at once.
    fn start(self: Box<Self>, sink: Arc<Sink>, context: &Context) -> Result<Running, IngestError>;
}

/// How long requests in flight may finish after the agent is told to stop
/// (its HTTP endpoints).
pub(crate) const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A started source: how to stop it and wait for it.
pub struct Running {
    name: String,
    stop: Option<Box<dyn FnOnce() + Send>>,
    join: Option<Box<dyn FnOnce() + Send>>,
}

impl Running {
    /// A source running as `stop` (ask it to end) and `join` (wait until it has).
    pub fn new(
        name: String,
        stop: impl FnOnce() + Send + 'static,
        join: impl FnOnce() + Send + 'static,
    ) -> Running {
        Running {
            name,
            stop: Some(Box::new(stop)),
            join: Some(Box::new(join)),
        }
    }

    /// `app` served on `listener` (`what` in log lines) within `limits`,
    /// on `runtime`: stopping it lets requests in flight finish within
    /// the limits' grace; a client that never completes its request is
    /// not waited for.
    pub(crate) fn serve(
        name: String,
        what: &'static str,
        listener: std::net::TcpListener,
        app: axum::Router,
        limits: sluice_serve::ServeLimits,
        runtime: &tokio::runtime::Handle,
    ) -> Running {
        let grace = limits.shutdown_grace + std::time::Duration::from_secs(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(e) => return tracing::error!("{what} endpoint cannot start: {e}"),
            };
            sluice_serve::serve(what, listener, app, &limits, None, async {
                let _ = stopped.await;
            })
            .await;
        });
        let runtime = runtime.clone();
        Running::new(
            name,
            move || {
                let _ = stop.send(());
            },
            move || {
                let _ = runtime.block_on(async { tokio::time::timeout(grace, task).await });
            },
        )
    }

    /// What it is.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stop taking inputs (returns at once).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }

    /// Stop, and wait until inputs in flight are accepted or refused.
    pub fn join(mut self) {
        self.stop();
        if let Some(join) = self.join.take() {
            join();
        }
    }
}

/// The sources a configuration asks for, not started yet.
pub fn from_config(
    config: &Config,
    default_pipeline: Option<&str>,
) -> Result<Vec<Box<dyn Source>>, IngestError> {
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    if let Some(source) = folder::FolderSource::from_config(&config.ingest, default_pipeline)? {
        sources.push(Box::new(source));
    }
    if let Some(source) = http::HttpSource::from_config(&config.ingest)? {
        sources.push(Box::new(source));
    }
    if let Some(source) = mqtt::MqttSource::from_config(config)? {
        sources.push(Box::new(source));
    }
    Ok(sources)
}
