//! `sluice plugin ...`: inspect, compile, try on sample data, and scaffold
//! plugins. `run` is how an author tries a plugin without a model or a
//! device: the same host, limits and grants as the agent, one plugin alone.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sluice_agent::config::{Config, Grants, PluginSource};
use sluice_agent::ingest::files::{list_files, read_file_item};
use sluice_agent::plugin::{
    CacheOutcome, EngineOptions, PluginHost, PluginKind, inspect_component, read_wasm,
};
use sluice_agent::types::{DType, Inferred, ItemError, Metadata, Tensor};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `sluice plugin compile`: fill the compiled-plugin cache for every plugin
/// of a configuration (for devices running a runtime-only build).
pub fn compile(config: &Path, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let config = super::load_config(config, data_dir)?;
    let host = PluginHost::new(&sluice_agent::runtime::engine_options(&config))?;
    let mut failed = 0;
    for (name, plugin) in &config.plugins {
        let outcome = super::with_spinner(&format!("compiling plugin {name}"), || {
            host.precompile(name, plugin)
        });
        match outcome {
            Ok(CacheOutcome::Hit) => println!("{name}: already compiled"),
            Ok(CacheOutcome::Compiled) => println!("{name}: compiled"),
            Ok(other) => println!("{name}: {other:?}"),
            Err(e) => {
                failed += 1;
                println!("{name}: {e}");
            }
        }
    }
    println!("cache: {}", config.cache_dir().display());
    anyhow::ensure!(failed == 0, "{failed} plugin(s) could not be compiled");
    Ok(())
}

/// `sluice plugin inspect`. Compiled components are kept in the
/// configuration's cache, else in `cache_dir` (the machine's): a second
/// inspection of an 18 MB Python component takes milliseconds, not seconds.
pub fn inspect(
    file: &str,
    config: Option<(&Path, &str)>,
    cache_dir: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    // With a configuration: its grants, and its compiled-plugin cache.
    let (grants, cache_dir) = match config {
        Some((path, name)) => {
            let mut config = Config::load(path)?;
            super::use_machine_cache(&mut config);
            let Some(plugin) = config.plugins.get(name) else {
                bail!("{} configures no plugin named `{name}`", path.display());
            };
            (plugin.grants.clone(), Some(config.cache_dir()))
        }
        None => (Grants::default(), cache_dir),
    };
    let wasm = read_wasm(&PluginSource::parse(file)).with_context(|| file.to_owned())?;
    let host = PluginHost::new(&EngineOptions {
        cache_dir,
        ..EngineOptions::default()
    })?;
    let report = super::with_spinner(&format!("compiling {file}"), || {
        inspect_component(&host, &wasm, &grants)
    })
    .with_context(|| file.to_owned())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("plugin:   {file}\n{report}");
    }
    // The report is printed either way; the exit code says whether Sluice
    // can run it (scripts and build steps check it).
    if let Some(e) = &report.link_error {
        bail!("{file} cannot run in Sluice: it does not link: {e}");
    }
    if report.world.is_none() {
        bail!("{file} cannot run in Sluice: it exports no sluice:plugin interface");
    }
    Ok(())
}

/// A tensor as `plugin run` reads and prints it: elements as JSON numbers.
/// A preprocessor's output lines are valid postprocessor inputs.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorJson {
    name: String,
    /// `fp16`, `fp32`, `fp64`, `bf16`, `u8`, `i32` or `i64`, as in the WIT.
    dtype: String,
    shape: Vec<usize>,
    data: Vec<serde_json::Number>,
}

/// A postprocessor input file for `plugin run`: a model's outputs for one item.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputsJson {
    tensors: Vec<TensorJson>,
    #[serde(default)]
    content_type: Option<String>,
}

/// The most elements `plugin run` reads from one JSON tensor (64 Mi).
const MAX_JSON_ELEMENTS: usize = 64 << 20;

const DTYPES: [(&str, DType); 7] = [
    ("fp16", DType::F16),
    ("fp32", DType::F32),
    ("fp64", DType::F64),
    ("bf16", DType::BF16),
    ("u8", DType::U8),
    ("i32", DType::I32),
    ("i64", DType::I64),
];

fn dtype_name(dtype: DType) -> &'static str {
    DTYPES
        .iter()
        .find(|(_, d)| *d == dtype)
        .map_or("?", |(name, _)| name)
}

impl TensorJson {
    fn from_tensor(t: &Tensor) -> TensorJson {
        let n = |v: f64| serde_json::Number::from_f64(v).unwrap_or_else(|| 0.into());
        let data = match t.dtype {
            DType::U8 => t.data.iter().map(|&b| b.into()).collect(),
            DType::I32 => le::<4>(&t.data)
                .map(|b| i32::from_le_bytes(b).into())
                .collect(),
            DType::I64 => le::<8>(&t.data)
                .map(|b| i64::from_le_bytes(b).into())
                .collect(),
            DType::F32 => le::<4>(&t.data)
                .map(|b| n(f32::from_le_bytes(b) as f64))
                .collect(),
            DType::F64 => le::<8>(&t.data).map(|b| n(f64::from_le_bytes(b))).collect(),
            DType::F16 => le::<2>(&t.data)
                .map(|b| n(half::f16::from_le_bytes(b).to_f64()))
                .collect(),
            DType::BF16 => le::<2>(&t.data)
                .map(|b| n(half::bf16::from_le_bytes(b).to_f64()))
                .collect(),
        };
        TensorJson {
            name: t.name.clone(),
            dtype: dtype_name(t.dtype).into(),
            shape: t.shape.clone(),
            data,
        }
    }

    fn into_tensor(self) -> Result<Tensor, String> {
        let name = &self.name;
        let Some(&(_, dtype)) = DTYPES.iter().find(|(n, _)| *n == self.dtype) else {
            return Err(format!(
                "tensor `{name}`: unknown dtype `{}` (one of fp16, fp32, fp64, bf16, u8, i32, i64)",
                self.dtype
            ));
        };
        let count = self
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .filter(|&n| n <= MAX_JSON_ELEMENTS)
            .ok_or_else(|| format!("tensor `{name}`: shape {:?} is too large", self.shape))?;
        if count != self.data.len() {
            return Err(format!(
                "tensor `{name}`: shape {:?} holds {count} elements, data has {}",
                self.shape,
                self.data.len()
            ));
        }
        let mut data = Vec::with_capacity(count * dtype.size());
        for (i, v) in self.data.iter().enumerate() {
            let bad = || {
                format!(
                    "tensor `{name}`: element {i} ({v}) is not a valid {}",
                    self.dtype
                )
            };
            let f = || v.as_f64().ok_or_else(bad);
            match dtype {
                DType::U8 => {
                    let b = v
                        .as_u64()
                        .and_then(|b| u8::try_from(b).ok())
                        .ok_or_else(bad)?;
                    data.push(b);
                }
                DType::I32 => {
                    let x = v
                        .as_i64()
                        .and_then(|x| i32::try_from(x).ok())
                        .ok_or_else(bad)?;
                    data.extend(x.to_le_bytes());
                }
                DType::I64 => data.extend(v.as_i64().ok_or_else(bad)?.to_le_bytes()),
                DType::F32 => data.extend((f()? as f32).to_le_bytes()),
                DType::F64 => data.extend(f()?.to_le_bytes()),
                DType::F16 => data.extend(half::f16::from_f64(f()?).to_le_bytes()),
                DType::BF16 => data.extend(half::bf16::from_f64(f()?).to_le_bytes()),
            }
        }
        Ok(Tensor {
            name: self.name,
            dtype,
            shape: self.shape,
            data,
        })
    }
}

/// Little-endian chunks of `N` bytes.
fn le<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    data.chunks_exact(N)
        .map(|c| c.try_into().expect("chunk of N"))
}

/// The largest postprocessor input file `plugin run` reads.
const MAX_JSON_INPUT_BYTES: u64 = 256 << 20;

/// `sluice plugin run`: call one plugin of `config` on sample inputs, one
/// batch, and print one JSON line per input, in order. A preprocessor gets
/// the files' bytes; a postprocessor gets JSON files of tensors (the shape a
/// preprocessor's lines have).
pub fn run(
    config: &Path,
    plugin: Option<&str>,
    inputs: &[PathBuf],
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let path = config;
    let config = super::load_config(path, data_dir)?;
    let name = match plugin {
        Some(name) => name.to_owned(),
        None => match config.plugins.keys().collect::<Vec<_>>()[..] {
            [only] => only.clone(),
            [] => bail!("{} configures no plugin", path.display()),
            ref several => bail!(
                "{} configures several plugins ({}): choose one with --plugin",
                path.display(),
                several
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    let Some(plugin_config) = config.plugins.get(&name) else {
        bail!("{} configures no plugin named `{name}`", path.display());
    };
    let files = list_files(inputs)?;
    let host = PluginHost::new(&sluice_agent::runtime::engine_options(&config))?;
    let plugin = super::with_spinner(&format!("loading plugin {name}"), || {
        host.load_any(&name, plugin_config)
    })?;
    let lines: Vec<Outcome> = match plugin.kind() {
        PluginKind::Preprocessor => {
            let items = files
                .iter()
                .enumerate()
                .map(|(ix, file)| read_file_item(file, format!("sample-{ix}")))
                .collect::<Result<Vec<_>, _>>()?;
            plugin
                .preprocess(&items)
                .into_iter()
                .map(|r| match r {
                    Ok(ts) => Outcome::Tensors {
                        tensors: ts.iter().map(TensorJson::from_tensor).collect(),
                    },
                    Err(e) => Outcome::error(&e),
                })
                .collect()
        }
        PluginKind::Postprocessor => {
            let items = files
                .iter()
                .enumerate()
                .map(|(ix, file)| read_outputs(file, ix))
                .collect::<anyhow::Result<Vec<_>>>()?;
            plugin
                .postprocess(&items)
                .into_iter()
                .map(|r| match r {
                    Ok(doc) => Outcome::Document {
                        document: document_json(&doc),
                    },
                    Err(e) => Outcome::error(&e),
                })
                .collect()
        }
        _ => bail!("plugin `{name}` is of a kind `plugin run` does not know"),
    };
    /// One output line: the input first, then what became of it.
    #[derive(Serialize)]
    struct Line {
        input: String,
        #[serde(flatten)]
        outcome: Outcome,
    }
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    for (file, outcome) in files.iter().zip(lines) {
        failed += usize::from(matches!(outcome, Outcome::Error { .. }));
        let input = file.display().to_string();
        serde_json::to_writer(&mut out, &Line { input, outcome })?;
        writeln!(out)?;
    }
    // The lines above say which and why; the status says whether any did,
    // for a script or a CI job.
    anyhow::ensure!(failed == 0, "{failed} of {} input(s) failed", files.len());
    Ok(())
}

fn read_outputs(file: &Path, ix: usize) -> anyhow::Result<Inferred> {
    let context = || {
        format!(
            "{}: a postprocessor input (JSON: {{\"tensors\": [...]}})",
            file.display()
        )
    };
    let meta = std::fs::metadata(file).with_context(context)?;
    anyhow::ensure!(
        meta.len() <= MAX_JSON_INPUT_BYTES,
        "{}: larger than {MAX_JSON_INPUT_BYTES} bytes",
        file.display()
    );
    let text = std::fs::read(file).with_context(context)?;
    let outputs: OutputsJson = serde_json::from_slice(&text).with_context(context)?;
    let tensors = outputs
        .tensors
        .into_iter()
        .map(TensorJson::into_tensor)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)
        .with_context(context)?;
    let meta = Metadata::new(
        format!("sample-{ix}"),
        outputs
            .content_type
            .unwrap_or_else(|| "application/octet-stream".into()),
    )
    .with_attribute("file", file.display().to_string());
    Ok(Inferred { meta, tensors })
}

/// A document as JSON: its body parsed when it is JSON, else text.
fn document_json(doc: &sluice_agent::types::Document) -> serde_json::Value {
    let body = match serde_json::from_slice::<serde_json::Value>(&doc.body) {
        Ok(value) if doc.content_type.starts_with("application/json") => value,
        _ => String::from_utf8_lossy(&doc.body).into_owned().into(),
    };
    serde_json::json!({"content_type": doc.content_type, "body": body})
}

/// What became of one input in `plugin run`.
#[derive(Serialize)]
#[serde(untagged)]
enum Outcome {
    Tensors { tensors: Vec<TensorJson> },
    Document { document: serde_json::Value },
    Error { error: serde_json::Value },
}

impl Outcome {
    fn error(e: &ItemError) -> Outcome {
        Outcome::Error {
            error: serde_json::json!({"kind": e.kind(), "message": e.to_string()}),
        }
    }
}
