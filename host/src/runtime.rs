//! Assembles a running Sluice from its configuration: models and their
//! schedulers, the plugin host, plugins, and the pipelines joining them.
//!
//! A broken plugin or model disables only the pipelines that use it: start-up
//! records each [`Problem`] (naming the plugin or model and the cause) and
//! goes on with the rest.

use crate::config::Config;
use crate::error::{EngineError, PluginError};
use crate::infer::{ModelError, read_model_file};
use crate::memory;
use crate::pipeline::Pipeline;
use crate::plugin::{EngineOptions, Plugin, PluginHost, PluginKind, scheduler_nn};
use crate::schedule::{ExecutionCache, ModelSource, Scheduler, start_model};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Something that failed at start-up; the rest started without it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// A model could not be read, checked, loaded or measured.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A plugin could not be loaded.
    #[error("{error} (needed by pipeline `{pipeline}`)")]
    Plugin {
        /// Why.
        #[source]
        error: PluginError,
        /// The first pipeline that needs it.
        pipeline: String,
    },
    /// A pipeline lacks a plugin or model that failed.
    #[error("pipeline `{pipeline}` is disabled: a plugin or model it needs did not start")]
    PipelineDisabled {
        /// The pipeline.
        pipeline: String,
    },
    /// A pipeline's `sample` input failed: its parts do not fit together.
    #[error("pipeline `{pipeline}` is disabled: its sample input {} failed: {error}", sample.display())]
    SampleFailed {
        /// The pipeline.
        pipeline: String,
        /// The sample input.
        sample: std::path::PathBuf,
        /// Why (unreadable, or the error the pipeline gave it).
        error: String,
    },
}

/// Why nothing could start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The plugin engine could not be set up.
    #[error("cannot set up the plugin engine: {0}")]
    Engine(#[source] EngineError),
    /// The pipeline threads could not be started.
    #[error("cannot start the pipeline threads: {0}")]
    Threads(#[source] rayon::ThreadPoolBuildError),
    /// The configuration has pipelines, and none could start.
    #[error("no pipeline could start:\n  {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    NoPipeline {
        /// What failed.
        problems: Vec<Problem>,
    },
}

/// Models, plugins and pipelines of one configuration, running.
pub struct Runtime {
    pub(crate) config: Config,
    host: PluginHost,
    schedulers: BTreeMap<String, Scheduler>,
    pipelines: BTreeMap<String, Pipeline>,
    /// SHA-256 (hex) of each running model's file.
    pub(crate) model_sha256: BTreeMap<String, String>,
    problems: Vec<Problem>,
    /// What the process holds, part by part (see [`crate::memory`]).
    memory: Vec<memory::Part>,
}

impl Runtime {
    /// Start everything `config` describes, measuring what it holds
    /// ([`Runtime::memory`]). Fails only if nothing usable is left;
    /// otherwise the problems are in [`Runtime::problems`].
    pub fn start(config: Config) -> Result<Runtime, StartError> {
        let baseline = memory::baseline();
        let mut model_bytes = 0;
        let mut problems = Vec::new();
        let mut schedulers = BTreeMap::new();
        let mut model_sha256 = BTreeMap::new();
        crate::infer::use_native_libraries(config.runtime.onnxruntime_library.as_deref());
        for (name, model) in &config.models {
            let started = std::time::Instant::now();
            let scheduler = read_model_file(name, &model.path, model.sha256.as_deref()).and_then(|bytes| {
                // Already checked against the file when configured.
                let sha256 = model.sha256.clone().unwrap_or_else(|| hex::encode(Sha256::digest(&bytes))).to_ascii_lowercase();
                let remembered = ExecutionCache::new(&config.cache_dir(), &sha256);
                let source = ModelSource {
                    name,
                    bytes: &bytes,
                    engine: &model.engine,
                    shapes: &model.input_shapes,
                };
                let (scheduler, grew) = memory::growth(|| start_model(&source, model.batching.clone(), Some(&remembered)));
                let scheduler = scheduler?;
                model_bytes += grew;
                tracing::debug!(model = %name, engine = scheduler.model().engine(), elapsed_ms = started.elapsed().as_millis() as u64, resident_bytes = grew, "model ready");
                model_sha256.insert(name.clone(), sha256);
                Ok(scheduler)
            });
            match scheduler {
                Ok(scheduler) => {
                    schedulers.insert(name.clone(), scheduler);
                }
                Err(e) => problems.push(Problem::Model(e)),
            }
        }

        let host = PluginHost::with_nn(
            &engine_options(&config),
            scheduler_nn(&schedulers, config.runtime.guest_model_max_bytes),
        )
        .map_err(StartError::Engine)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.runtime.resolved_workers())
            .thread_name(|ix| format!("sluice-pipeline-{ix}"))
            .build()
            .map(Arc::new)
            .map_err(StartError::Threads)?;
        // Each plugin is loaded once, as the kind its pipelines need (the
        // configuration guarantees a plugin has one role).
        let mut plugins: BTreeMap<&str, Option<Arc<Plugin>>> = BTreeMap::new();
        for (name, pipeline) in &config.pipelines {
            for (plugin, kind) in [
                (&pipeline.preprocess, PluginKind::Preprocessor),
                (&pipeline.postprocess, PluginKind::Postprocessor),
            ] {
                plugins.entry(plugin).or_insert_with(|| {
                    match host.load(plugin, &config.plugins[plugin], kind) {
                        Ok(loaded) => Some(Arc::new(loaded)),
                        Err(error) => {
                            problems.push(Problem::Plugin {
                                error,
                                pipeline: name.clone(),
                            });
                            None
                        }
                    }
                });
            }
        }

        let plugin_code = plugins.values().flatten().map(|p| p.code_bytes()).sum();
        let mut memory = memory::bounds(&config, plugin_code);
        memory.push(memory::measured(
            "models",
            model_bytes,
            "resident growth while loading, measuring and warming up the models",
        ));
        memory.push(baseline);

        let mut pipelines = BTreeMap::new();
        for (name, pipeline) in &config.pipelines {
            let parts = (
                plugins[pipeline.preprocess.as_str()].as_ref(),
                schedulers.get(&pipeline.model),
                plugins[pipeline.postprocess.as_str()].as_ref(),
            );
            if let (Some(pre), Some(scheduler), Some(post)) = parts {
                let built = Pipeline::new(
                    name.clone(),
                    pre.clone(),
                    scheduler.clone(),
                    post.clone(),
                    pool.clone(),
                );
                match pipeline
                    .sample
                    .as_deref()
                    .map(|sample| try_sample(&built, sample))
                {
                    Some(Err(error)) => problems.push(Problem::SampleFailed {
                        pipeline: name.clone(),
                        sample: pipeline.sample.clone().expect("tried"),
                        error,
                    }),
                    _ => {
                        pipelines.insert(name.clone(), built);
                    }
                }
            } else {
                problems.push(Problem::PipelineDisabled {
                    pipeline: name.clone(),
                });
            }
        }
        for problem in &problems {
            tracing::error!("{problem}");
        }
        if pipelines.is_empty() && !config.pipelines.is_empty() {
            return Err(StartError::NoPipeline { problems });
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
            memory,
        })
    }

    /// What the agent may hold, part by part: bounds and what start-up
    /// measured (see [`crate::memory`]).
    pub fn memory(&self) -> &[memory::Part] {
        &self.memory
    }

    /// The configuration it runs.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The plugin host.
    pub fn host(&self) -> &PluginHost {
        &self.host
    }

    /// The scheduler of model `name`, if it runs.
    pub fn scheduler(&self, name: &str) -> Option<&Scheduler> {
        self.schedulers.get(name)
    }

    /// The running pipelines, by name.
    pub fn pipelines(&self) -> impl Iterator<Item = &Pipeline> {
        self.pipelines.values()
    }

    /// What failed at start-up.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// SHA-256 (hex) of running model `name`'s file.
    pub fn model_sha256(&self, name: &str) -> Option<&str> {
        self.model_sha256.get(name).map(String::as_str)
    }

    /// The pipeline called `name`, or the only one when `name` is `None`.
    pub fn pipeline(&self, name: Option<&str>) -> Result<&Pipeline, PipelineChoiceError> {
        choose(&self.pipelines, name).map(|(_, pipeline)| pipeline)
    }
}

/// Why [`Runtime::pipeline`] found none.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineChoiceError {
    /// No (running) pipeline has that name.
    #[error("no pipeline `{name}` (there are: {running:?})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The running pipelines.
        running: Vec<String>,
    },
    /// No name was given and there is not exactly one pipeline.
    #[error("choose a pipeline with --pipeline (there are: {running:?})")]
    Ambiguous {
        /// The running pipelines.
        running: Vec<String>,
    },
}

/// Keep only pipeline `name` (or the only one) of `config`, with the plugins
/// and the model it uses: a one-shot command then loads nothing else, and a
/// wrong or missing `--pipeline` fails before anything is loaded.
pub fn narrow_to_pipeline(
    config: &mut Config,
    name: Option<&str>,
) -> Result<(), PipelineChoiceError> {
    let chosen = choose(&config.pipelines, name)?.0.clone();
    config.pipelines.retain(|name, _| *name == chosen);
    let pipeline = &config.pipelines[&chosen];
    config
        .plugins
        .retain(|name, _| *name == pipeline.preprocess || *name == pipeline.postprocess);
    config.models.retain(|name, _| *name == pipeline.model);
    Ok(())
}

/// The entry of `pipelines` called `name`, or the only one when `name` is
/// `None`: how both a running runtime and a configuration choose.
fn choose<'a, P>(
    pipelines: &'a BTreeMap<String, P>,
    name: Option<&str>,
) -> Result<(&'a String, &'a P), PipelineChoiceError> {
    let running = || pipelines.keys().cloned().collect::<Vec<_>>();
    match name {
        Some(name) => pipelines
            .get_key_value(name)
            .ok_or_else(|| PipelineChoiceError::Unknown {
                name: name.to_owned(),
                running: running(),
            }),
        None if pipelines.len() == 1 => Ok(pipelines.iter().next().expect("one")),
        None => Err(PipelineChoiceError::Ambiguous { running: running() }),
    }
}

/// Run one sample input through `pipeline`; the error it gets, if any.
fn try_sample(pipeline: &Pipeline, sample: &std::path::Path) -> Result<(), String> {
    let item =
        crate::ingest::files::read_file_item(sample, "sample".into()).map_err(|e| e.to_string())?;
    let outcome = pipeline
        .process(vec![item])
        .pop()
        .expect("one outcome per item");
    outcome.result.map(drop).map_err(|e| e.to_string())
}

impl Runtime {
    /// What pipeline `name` is made of (model and plugins by name and
    /// SHA-256), as every record it makes names it; `None` for a pipeline
    /// that is not running.
    pub fn provenance(&self, name: &str) -> Option<sluice_protocol::Provenance> {
        let pipeline = self.pipeline(Some(name)).ok()?;
        let spec = self.config.pipelines.get(name)?;
        Some(sluice_protocol::Provenance {
            model: spec.model.clone(),
            model_sha256: self.model_sha256.get(&spec.model)?.clone(),
            preprocess: spec.preprocess.clone(),
            preprocess_sha256: pipeline.preprocess().digest().to_owned(),
            postprocess: spec.postprocess.clone(),
            postprocess_sha256: pipeline.postprocess().digest().to_owned(),
            bundle: None,
        })
    }
}

/// What the plugins of `config` need of the plugin engine: its pooling, the
/// largest memory cap, instances for every worker of every plugin, the
/// compiled-plugin cache.
pub fn engine_options(config: &Config) -> EngineOptions {
    EngineOptions {
        pooling: config.runtime.pooling,
        max_memory_bytes: config
            .plugins
            .values()
            .map(|p| p.memory_bytes())
            .max()
            .unwrap_or(64 << 20),
        max_instances: crate::plugin::instances_for(
            config.plugins.len(),
            config.runtime.resolved_workers(),
        ),
        cache_dir: Some(config.cache_dir()),
        cache_max_bytes: config.runtime.cache_max_bytes(),
    }
}

#[cfg(test)]
mod engine_options_tests {
    #[test]
    fn every_worker_can_hold_an_instance_of_every_plugin() {
        let config = crate::config::Config::parse(
            "[runtime]\nworkers = 40\n[plugins.a]\npath = \"a.wasm\"\n[plugins.b]\npath = \"b.wasm\"\n",
            std::path::Path::new("/"),
        )
        .unwrap();
        assert!(super::engine_options(&config).max_instances >= 80);
    }
}
