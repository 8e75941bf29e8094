//! Assembles a running Sluice from its configuration: models and their
//! schedulers, the plugin host, plugins, and the pipelines joining them.
//!
//! A broken plugin or model disables only the pipelines that use it: start-up
//! reports each problem (naming the plugin or model and the cause) and goes
//! on with the rest.

use crate::config::Config;
use crate::infer::{Backend, read_model_file, tract::TractBackend};
use crate::pipeline::{Outcome, Pipeline};
use crate::plugin::{EngineOptions, Plugin, PluginHost, PluginKind, scheduler_nn};
use crate::schedule::{ExecutionCache, Scheduler};
use crate::types::RawItem;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct Runtime {
    pub config: Config,
    pub host: PluginHost,
    pub schedulers: BTreeMap<String, Scheduler>,
    pub pipelines: BTreeMap<String, Pipeline>,
    /// SHA-256 (hex) of each running model's file.
    pub model_sha256: BTreeMap<String, String>,
    /// What failed at start-up, one message each.
    pub problems: Vec<String>,
}

impl Runtime {
    /// Start everything `config` describes. Fails only if nothing usable is
    /// left; otherwise the problems are in [`Runtime::problems`].
    pub fn start(config: Config) -> anyhow::Result<Runtime> {
        let mut problems = Vec::new();
        let mut schedulers = BTreeMap::new();
        let mut model_sha256 = BTreeMap::new();
        for (name, model) in &config.models {
            let started = std::time::Instant::now();
            let scheduler = read_model_file(name, &model.path, model.sha256.as_deref()).and_then(|bytes| {
                // Already checked against the file when configured.
                let sha256 = model.sha256.clone().unwrap_or_else(|| hex::encode(Sha256::digest(&bytes))).to_ascii_lowercase();
                let loaded = TractBackend.load(name, &bytes, &model.input_shapes)?;
                tracing::debug!(model = %name, elapsed_ms = started.elapsed().as_millis() as u64, "model loaded");
                let remembered = ExecutionCache::new(&config.cache_dir(), &sha256);
                let scheduler = Scheduler::start_cached(loaded, model.batching.clone(), Some(&remembered))?;
                model_sha256.insert(name.clone(), sha256);
                Ok(scheduler)
            });
            match scheduler {
                Ok(scheduler) => {
                    schedulers.insert(name.clone(), scheduler);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }

        let host = PluginHost::with_nn(
            &EngineOptions::for_config(&config),
            scheduler_nn(&schedulers, config.runtime.guest_model_max_bytes),
        )?;
        // Each plugin is loaded once, as the kind its first pipeline needs.
        let mut plugins: BTreeMap<&str, Option<Arc<Plugin>>> = BTreeMap::new();
        for (name, pipeline) in &config.pipelines {
            for (plugin, kind) in [
                (&pipeline.preprocess, PluginKind::Preprocessor),
                (&pipeline.postprocess, PluginKind::Postprocessor),
            ] {
                plugins.entry(plugin).or_insert_with(|| {
                    match host.load(plugin, &config.plugins[plugin], kind) {
                        Ok(loaded) => Some(Arc::new(loaded)),
                        Err(e) => {
                            problems.push(format!("{e} (needed by pipeline `{name}`)"));
                            None
                        }
                    }
                });
            }
        }

        let mut pipelines = BTreeMap::new();
        for (name, pipeline) in &config.pipelines {
            let parts = (
                plugins[pipeline.preprocess.as_str()].as_ref(),
                schedulers.get(&pipeline.model),
                plugins[pipeline.postprocess.as_str()].as_ref(),
            );
            if let (Some(pre), Some(scheduler), Some(post)) = parts {
                pipelines.insert(
                    name.clone(),
                    Pipeline {
                        name: name.clone(),
                        preprocess: pre.clone(),
                        scheduler: scheduler.clone(),
                        postprocess: post.clone(),
                    },
                );
            } else {
                problems.push(format!(
                    "pipeline `{name}` is disabled: a plugin or model it needs did not start"
                ));
            }
        }
        for problem in &problems {
            tracing::error!("{problem}");
        }
        if pipelines.is_empty() && !config.pipelines.is_empty() {
            anyhow::bail!("no pipeline could start:\n  {}", problems.join("\n  "));
        }
        let pipelines_named = pipelines.keys().cloned().collect::<Vec<_>>();
        tracing::info!(pipelines = ?pipelines_named, "runtime started");
        Ok(Runtime {
            config,
            host,
            schedulers,
            pipelines,
            model_sha256,
            problems,
        })
    }

    /// The pipeline called `name`, or the only one when `name` is `None`.
    pub fn pipeline(&self, name: Option<&str>) -> anyhow::Result<&Pipeline> {
        match name {
            Some(name) => self.pipelines.get(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "no running pipeline `{name}` (running: {:?})",
                    self.pipelines.keys().collect::<Vec<_>>()
                )
            }),
            None if self.pipelines.len() == 1 => Ok(self.pipelines.values().next().unwrap()),
            None => anyhow::bail!(
                "the configuration has {} pipelines; choose one with --pipeline ({:?})",
                self.pipelines.len(),
                self.pipelines.keys().collect::<Vec<_>>()
            ),
        }
    }
}

/// Run `items` through `pipeline` in batches of the model's batch size, with
/// as many batches in flight as the scheduler has threads, so that batches
/// from concurrent callers merge. `progress` is called with each finished
/// batch's size. Outcomes come back in input order.
pub fn process_all(
    pipeline: &Pipeline,
    items: Vec<RawItem>,
    progress: &(dyn Fn(usize) + Sync),
) -> Vec<Outcome> {
    let batch = pipeline.scheduler.config().max_batch_size.max(1);
    let workers = pipeline.scheduler.config().threads.max(1);
    let chunks: Vec<Vec<RawItem>> = {
        let mut chunks = Vec::new();
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            chunks.push(items.by_ref().take(batch).collect());
        }
        chunks
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let chunks: Vec<std::sync::Mutex<Option<Vec<RawItem>>>> = chunks
        .into_iter()
        .map(|c| std::sync::Mutex::new(Some(c)))
        .collect();
    let mut done: Vec<(usize, Vec<Outcome>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.min(chunks.len()).max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let ix = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(chunk) = chunks.get(ix).and_then(|c| c.lock().unwrap().take())
                        else {
                            break;
                        };
                        let outcomes = pipeline.process(chunk);
                        progress(outcomes.len());
                        mine.push((ix, outcomes));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("pipeline worker panicked"))
            .collect()
    });
    done.sort_by_key(|(ix, _)| *ix);
    done.into_iter()
        .flat_map(|(_, outcomes)| outcomes)
        .collect()
}
