//! `sluice bundle build`: a bundle of one pipeline of a working
//! configuration.

use crate::config::{Config, PluginSource};
use crate::error::ConfigError;
use crate::ingest::files::{list_files, read_file_item};
use crate::runtime::Runtime;
use sluice_bundle::archive::{self, ArchiveError, Limits};
use sluice_bundle::{FileEntry, Manifest, Validation, sha256_of};
use std::path::{Path, PathBuf};

use super::{EXPECTED_JSON, Expected, PIPELINE_TOML, WIT_PACKAGE};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The configuration holding the pipeline.
    pub config: PathBuf,
    /// Which pipeline, when it has several.
    pub pipeline: Option<String>,
    /// The bundle's version (above every version built before under its name).
    pub version: u64,
    /// How long devices may accept it.
    pub expires_in: std::time::Duration,
    /// Input files (or folders) of the validation set.
    pub validation_inputs: Vec<PathBuf>,
    /// The devices' checks of the validation set.
    pub validation: Validation,
    /// The compiled-plugin cache's data directory (default: the config's).
    pub data_dir: Option<PathBuf>,
    /// The bundle file to write.
    pub out: PathBuf,
}

/// Why a bundle cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration cannot be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The pipeline cannot run here, so its validation set has no results.
    #[error("cannot run the pipeline to make the validation set: {0}")]
    Start(String),
    /// A plugin is named `bundled:NAME` but this binary has no such plugin.
    #[error("plugin `{plugin}`: this build has no bundled plugin `{name}`")]
    NoBundled {
        /// The plugin's name in the configuration.
        plugin: String,
        /// The bundled plugin's name.
        name: String,
    },
    /// More files or bytes than a device unpacks.
    #[error("the bundle would hold {what}, over the limit of {limit}")]
    TooLarge {
        /// What is over.
        what: String,
        /// The bound.
        limit: u64,
    },
    /// Writing the bundle failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Files going into a bundle: `(path under files/, source)`.
#[derive(Default)]
struct Contents(Vec<(String, PathBuf)>);

impl Contents {
    fn add(&mut self, name: String, source: PathBuf) {
        self.0.push((name, source));
    }

    /// Every file under `dir`, as `prefix/relative path`.
    fn add_dir(&mut self, prefix: &str, dir: &Path) -> Result<(), BuildError> {
        for file in list_files(&[dir.to_owned()]).map_err(io(dir))? {
            let relative = file.strip_prefix(dir).unwrap_or(&file);
            let relative: Vec<_> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            self.add(format!("{prefix}/{}", relative.join("/")), file);
        }
        Ok(())
    }
}

/// Build the bundle `request` asks for; its manifest.
pub fn build(request: &BuildRequest) -> Result<Manifest, BuildError> {
    let text = std::fs::read_to_string(&request.config).map_err(io(&request.config))?;
    let raw: toml::Table = toml::from_str(&text).map_err(ConfigError::Parse)?;
    let mut config = Config::load(&request.config)?;
    if let Some(dir) = &request.data_dir {
        config.device.data_dir = dir.clone();
    }
    let runtime = Runtime::start(config.clone()).map_err(|e| BuildError::Start(e.to_string()))?;
    let pipeline = runtime
        .pipeline(request.pipeline.as_deref())
        .map_err(|e| BuildError::Start(e.to_string()))?;
    let name = pipeline.name().to_owned();
    let spec = &config.pipelines[&name];

    let staging = tempfile::Builder::new()
        .prefix(".sluice-bundle-")
        .tempdir_in(
            request
                .out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .map_err(io(&request.out))?;
    let mut contents = Contents::default();
    let mut fragment = toml::Table::new();
    let section = |table: &str, key: &str| -> toml::Table {
        raw.get(table)
            .and_then(|t| t.get(key))
            .and_then(|t| t.as_table())
            .cloned()
            .unwrap_or_default()
    };

    // The plugins, each as a file, with the folders granted to it.
    let mut plugins = toml::Table::new();
    for plugin in [&spec.preprocess, &spec.postprocess] {
        let plugin_config = &config.plugins[plugin];
        let file = format!("plugins/{plugin}.wasm");
        let source = match &plugin_config.path {
            PluginSource::File(path) => path.clone(),
            PluginSource::Bundled(bundled) => {
                let bytes = crate::bundled::get(bundled).ok_or_else(|| BuildError::NoBundled {
                    plugin: plugin.clone(),
                    name: bundled.clone(),
                })?;
                let path = staging.path().join(format!("{plugin}.wasm"));
                std::fs::write(&path, bytes).map_err(io(&path))?;
                path
            }
        };
        contents.add(file.clone(), source);
        let mut table = section("plugins", plugin);
        table.insert("path".into(), file.into());
        if let Some(dirs) = table
            .get_mut("grants")
            .and_then(|g| g.get_mut("dirs"))
            .and_then(|d| d.as_array_mut())
        {
            for (ix, (dir, grant)) in dirs.iter_mut().zip(&plugin_config.grants.dirs).enumerate() {
                let prefix = format!("grants/{plugin}/{ix}");
                contents.add_dir(&prefix, &grant.host)?;
                if let Some(dir) = dir.as_table_mut() {
                    dir.insert("host".into(), prefix.into());
                }
            }
        }
        plugins.insert(plugin.clone(), table.into());
    }
    fragment.insert("plugins".into(), plugins.into());

    // The model, bound to its digest, and its drift profile.
    let model = &config.models[&spec.model];
    let model_file = format!(
        "models/{}.{}",
        spec.model,
        model
            .path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("onnx")
    );
    contents.add(model_file.clone(), model.path.clone());
    let mut table = section("models", &spec.model);
    table.insert("path".into(), model_file.clone().into());
    let (_, sha256) = sha256_of(&model.path).map_err(io(&model.path))?;
    table.insert("sha256".into(), sha256.into());
    table.remove("profile");
    let profile = model.profile_path();
    if profile.is_file() {
        let file = format!("{model_file}.profile.json");
        contents.add(file.clone(), profile);
        table.insert("profile".into(), file.into());
    }
    let mut models = toml::Table::new();
    models.insert(spec.model.clone(), table.into());
    fragment.insert("models".into(), models.into());
    // Its start-up sample comes along, so the device checks it too.
    let mut table = section("pipelines", &name);
    if let Some(sample) = &spec.sample {
        let file = format!("samples/{name}-{}", file_name(sample));
        contents.add(file.clone(), sample.clone());
        table.insert("sample".into(), file.into());
    }
    let mut pipelines = toml::Table::new();
    pipelines.insert(name.clone(), table.into());
    fragment.insert("pipelines".into(), pipelines.into());
    let fragment_path = staging.path().join(PIPELINE_TOML);
    let fragment_text = format!(
        "# Pipeline `{name}`, version {}: written by `sluice bundle build`; paths are relative to the bundle.\n{}",
        request.version,
        toml::to_string_pretty(&fragment).expect("a TOML table serializes")
    );
    std::fs::write(&fragment_path, fragment_text).map_err(io(&fragment_path))?;
    contents.add(PIPELINE_TOML.into(), fragment_path);

    // The validation set: inputs and what this build made of them.
    let inputs = list_files(&request.validation_inputs).map_err(io(&request.config))?;
    let mut items = Vec::with_capacity(inputs.len());
    let mut expected = Vec::with_capacity(inputs.len());
    for (ix, path) in inputs.iter().enumerate() {
        let item = read_file_item(path, format!("validation-{ix}")).map_err(io(path))?;
        let input = format!("validation/inputs/{ix:04}-{}", file_name(path));
        contents.add(input.clone(), path.clone());
        expected.push(Expected {
            input,
            content_type: item.meta.content_type.clone(),
            result: None,
            error: None,
        });
        items.push(item);
    }
    let outcomes = crate::pipeline::process_all(pipeline, items, &|_| {});
    for (expected, outcome) in expected.iter_mut().zip(outcomes) {
        match outcome.result {
            Ok(document) => {
                expected.result = Some(
                    serde_json::from_slice(&document.body)
                        .unwrap_or_else(|_| String::from_utf8_lossy(&document.body).into()),
                )
            }
            Err(e) => expected.error = Some(e.to_string()),
        }
    }
    drop(runtime);
    let expected_path = staging.path().join("expected.json");
    std::fs::write(
        &expected_path,
        serde_json::to_vec_pretty(&expected).expect("serializes"),
    )
    .map_err(io(&expected_path))?;
    contents.add(EXPECTED_JSON.into(), expected_path);

    // The manifest, within what a device will unpack.
    let limits = Limits::default();
    if contents.0.len() + 2 > limits.max_files {
        return Err(BuildError::TooLarge {
            what: format!("{} files", contents.0.len() + 2),
            limit: limits.max_files as u64,
        });
    }
    let mut files = Vec::with_capacity(contents.0.len());
    for (path, source) in &contents.0 {
        let (bytes, sha256) = sha256_of(source).map_err(io(source))?;
        files.push(FileEntry {
            path: path.clone(),
            sha256,
            bytes,
        });
    }
    // Half the device's bound: headroom for the archive's headers.
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    if total > limits.max_bytes / 2 {
        return Err(BuildError::TooLarge {
            what: format!("{total} bytes"),
            limit: limits.max_bytes / 2,
        });
    }
    let now = sluice_types::now_ms();
    let manifest = Manifest {
        format: sluice_bundle::FORMAT,
        name,
        version: request.version,
        created_at_ms: now,
        expires_at_ms: now
            .saturating_add(request.expires_in.as_millis().min(i64::MAX as u128) as i64),
        min_sluice_version: sluice_types::VERSION.to_owned(),
        wit_package: WIT_PACKAGE.to_owned(),
        validation: request.validation.clone(),
        files,
        reverts_to: None,
    };
    archive::write(&request.out, &manifest.to_bytes(), &[], &contents.0)?;
    Ok(manifest)
}

/// The last component of `path`, as text (empty for none).
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
