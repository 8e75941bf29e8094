//! The host configuration: one TOML file describing the device, its plugins,
//! its models and the pipelines that join them.
//!
//! Invariants after [`Config::load`]:
//! * unknown keys have been refused with an error naming the key and line;
//! * every relative path is resolved against the configuration file's folder,
//!   so the agent behaves the same whatever its working directory;
//! * every pipeline names plugins and models that exist.

use crate::error::ConfigError;
use serde::Deserialize;
pub use sluice_outbox::{FullPolicy, OutboxConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod admin;
mod bundles;
mod consumers;
mod device;
mod ingest;
pub mod keys;
mod models;
mod plugins;
mod sync;
pub mod text;

pub use admin::AdminConfig;
pub use bundles::BundlesConfig;
pub use consumers::{ConsumerConfig, MAX_CONSUMERS, MqttConsumerConfig, WebhookConsumerConfig};
pub use device::{DeviceConfig, RuntimeConfig};
pub use ingest::{IngestConfig, MAX_MQTT_TOPICS, MqttIngestConfig, MqttTopic};
pub use models::{ModelConfig, PipelineConfig};
pub use plugins::{DirGrant, Grants, PluginConfig, PluginSource, Pooling};
pub use sync::{MqttAck, SyncConfig, Transport};
use text::normalize;
#[cfg(test)]
mod keys_tests;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[device]`: who this device is and where it keeps its state.
    #[serde(default)]
    pub device: DeviceConfig,
    /// `[runtime]`: the plugin engine and the pipeline threads.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// `[plugins.NAME]`: the plugins, by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// `[models.NAME]`: the models, by name.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    /// `[pipelines.NAME]`: the pipelines, by name.
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineConfig>,
    /// The on-device store of results awaiting upload (`sluice run`).
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Where and how results are shipped upstream (`sluice run`).
    #[serde(default)]
    pub sync: SyncConfig,
    /// Where `sluice run` takes its inputs from.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// `[admin]`: the agent's endpoint for operators and monitoring.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Drift windows against each model's reference profile (`sluice run`).
    #[serde(default)]
    pub drift: crate::drift::DriftConfig,
    /// Signed bundles: which keys to trust, where they arrive, how a new
    /// version is watched (`sluice run`).
    #[serde(default)]
    pub bundles: BundlesConfig,
    /// `[consumers.NAME]`: where results go on the device (`sluice run`).
    #[serde(default)]
    pub consumers: BTreeMap<String, ConsumerConfig>,
}

impl Config {
    /// Read, parse and check a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|e| e.in_file(path))
    }

    /// [`Config::load`] for running the device (`sluice run`): the file
    /// must configure a pipeline ([`Config::require_pipelines`]). Commands
    /// that only read the device's state (`sluice outbox status`) take any.
    pub fn load_device(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::load(path)?;
        config.require_pipelines().map_err(|e| e.in_file(path))?;
        Ok(config)
    }

    /// Parse configuration text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(ConfigError::Parse)?;
        config.resolve_paths(base);
        config.check().map_err(|e| e.located(text))?;
        Ok(config)
    }

    /// A device's configuration runs at least one pipeline: without one
    /// (an empty file, a file of another program) nothing would ever be
    /// processed, and `sluice run` would start and look healthy.
    pub fn require_pipelines(&self) -> Result<(), ConfigError> {
        if self.pipelines.is_empty() {
            return Err(ConfigError::value(
                "pipelines",
                "no pipeline is configured: add a [pipelines.NAME] with preprocess, model and postprocess (`sluice new` writes a complete example)",
            ));
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = normalize(&base.join(&*p));
            }
        };
        resolve(&mut self.device.data_dir);
        if let Some(folder) = &mut self.ingest.folder {
            resolve(folder);
        }
        let sync = &mut self.sync;
        for file in [
            &mut sync.token_file,
            &mut sync.ca_file,
            &mut sync.client_cert_file,
            &mut sync.client_key_file,
        ]
        .into_iter()
        .flatten()
        {
            resolve(file);
        }
        if let Some(mqtt) = &mut sync.mqtt {
            mqtt.files_mut().for_each(resolve);
        }
        if let Some(file) = &mut self.ingest.token_file {
            resolve(file);
        }
        if let Some(mqtt) = &mut self.ingest.mqtt {
            mqtt.broker.files_mut().for_each(resolve);
        }
        if let Some(file) = &mut self.admin.token_file {
            resolve(file);
        }
        for consumer in self.consumers.values_mut() {
            for file in consumer.files() {
                resolve(file);
            }
        }
        if let Some(dir) = &mut self.runtime.cache_dir {
            resolve(dir);
        }
        if let Some(library) = &mut self.runtime.onnxruntime_library {
            resolve(library);
        }
        if let Some(folder) = &mut self.bundles.folder {
            resolve(folder);
        }
        for plugin in self.plugins.values_mut() {
            if let PluginSource::File(path) = &mut plugin.path {
                resolve(path);
            }
            for dir in &mut plugin.grants.dirs {
                resolve(&mut dir.host);
            }
        }
        for pipeline in self.pipelines.values_mut() {
            if let Some(sample) = &mut pipeline.sample {
                resolve(sample);
            }
        }
        for model in self.models.values_mut() {
            resolve(&mut model.path);
            if let Some(profile) = &mut model.profile {
                resolve(profile);
            }
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        let value = |key: &str, problem: String| Err(ConfigError::value(key, problem));
        // Every number against its range (`keys::LIMITS`, which
        // `docs/limits.md` is tested against): a value outside it is refused
        // at load, naming the key, never found out by running out of memory
        // or time.
        keys::check(self)?;
        self.check_bundles()?;
        let pipelines: Vec<&str> = self.pipelines.keys().map(String::as_str).collect();
        consumers::check(
            &self.consumers,
            &pipelines,
            self.outbox.local_max_bytes,
            &self.device.id,
        )?;
        if let Err(e) = sluice_protocol::check_name(&self.device.id) {
            return value("device.id", format!("`{}` {e}", self.device.id));
        }
        // A plugin is loaded once, as one kind: it cannot be a preprocessor
        // in one place and a postprocessor in another.
        let mut roles: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
        for (name, pipeline) in &self.pipelines {
            if let Err(e) = sluice_protocol::check_name(name) {
                return value(&format!("pipelines.{name}"), format!("the name {e}"));
            }
            for (role, plugin) in [
                ("preprocess", &pipeline.preprocess),
                ("postprocess", &pipeline.postprocess),
            ] {
                let key = format!("pipelines.{name}.{role}");
                if !self.plugins.contains_key(plugin) {
                    return value(
                        &key,
                        format!("names plugin `{plugin}`, which is not configured under [plugins]"),
                    );
                }
                match roles.insert(plugin, (role, name)) {
                    Some((other_role, other)) if other_role != role => {
                        return value(
                            &key,
                            format!(
                                "plugin `{plugin}` is already the {other_role} plugin of pipeline `{other}`; a plugin is either a preprocessor or a postprocessor"
                            ),
                        );
                    }
                    _ => {}
                }
            }
            if !self.models.contains_key(&pipeline.model) {
                return value(
                    &format!("pipelines.{name}.model"),
                    format!(
                        "names model `{}`, which is not configured under [models]",
                        pipeline.model
                    ),
                );
            }
        }
        for (name, model) in &self.models {
            if model.engine != crate::infer::AUTO
                && !crate::infer::ENGINES.contains(&model.engine.as_str())
            {
                return value(
                    &format!("models.{name}.engine"),
                    format!(
                        "`{}` is not an engine of this build (engines: {}, or `{}`){}",
                        model.engine,
                        crate::infer::ENGINES.join(", "),
                        crate::infer::AUTO,
                        if model.engine == "onnxruntime" {
                            "; onnxruntime needs a build with `--features onnxruntime`"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
        self.check_store_and_forward()
    }

    fn check_store_and_forward(&self) -> Result<(), ConfigError> {
        let value = |key: &str, problem: String| Err(ConfigError::value(key, problem));
        if let Some(url) = &self.sync.url {
            if self.sync.transport()? == Some(Transport::Mqtt) {
                let broker = self.sync.mqtt.clone().unwrap_or_default();
                if let Err(e) = sluice_mqtt::options(url, &self.device.id, &broker, 1) {
                    return value("sync.mqtt", e.to_string());
                }
            } else if self.sync.mqtt.is_some() {
                return value(
                    "sync.mqtt",
                    format!("is set but sync.url `{url}` is not mqtt:// or mqtts://"),
                );
            }
            self.sync.pinned_ack_keys()?;
            if self.sync.client_cert_file.is_some() != self.sync.client_key_file.is_some() {
                return value(
                    "sync.client_cert_file",
                    "set both sync.client_cert_file and sync.client_key_file, or neither".into(),
                );
            }
            // Over MQTT the broker's account may be the device's identity
            // (a collector with --mqtt-device-from-topic): no token needed.
            // Over HTTPS a client certificate may be the identity (a
            // collector with --tls-client-ca).
            if self.sync.transport()? != Some(Transport::Mqtt)
                && self.sync.token.is_none()
                && self.sync.token_file.is_none()
                && self.sync.client_cert_file.is_none()
            {
                return value(
                    "sync.url",
                    "is set but neither sync.token nor sync.token_file (nor sync.client_cert_file) is".into(),
                );
            }
        }
        if self.sync.token.is_some() && self.sync.token_file.is_some() {
            return value(
                "sync.token",
                "set one of sync.token and sync.token_file, not both".into(),
            );
        }
        let ingest = &self.ingest;
        let open = ingest.token.is_none() && ingest.token_file.is_none();
        check_listen(
            "ingest",
            ingest.listen.as_deref(),
            open,
            ingest.insecure_allow_anyone,
        )?;
        let admin = &self.admin;
        let open = admin.token.is_none() && admin.token_file.is_none();
        check_listen(
            "admin",
            admin.listen.as_deref(),
            open,
            admin.insecure_allow_anyone,
        )?;
        if admin.token.is_some() && admin.token_file.is_some() {
            return value(
                "admin.token",
                "set one of admin.token and admin.token_file, not both".into(),
            );
        }
        if self.ingest.token.is_some() && self.ingest.token_file.is_some() {
            return value(
                "ingest.token",
                "set one of ingest.token and ingest.token_file, not both".into(),
            );
        }
        if let Some(pipeline) = &self.ingest.folder_pipeline
            && !self.pipelines.contains_key(pipeline)
        {
            return value(
                "ingest.folder_pipeline",
                format!("names pipeline `{pipeline}`, which is not configured under [pipelines]"),
            );
        }
        if let Some(mqtt) = &self.ingest.mqtt {
            if mqtt.topics.is_empty() || mqtt.topics.len() > MAX_MQTT_TOPICS {
                return value(
                    "ingest.mqtt.topics",
                    format!(
                        "give 1 to {MAX_MQTT_TOPICS} topics, not {}",
                        mqtt.topics.len()
                    ),
                );
            }
            for (i, topic) in mqtt.topics.iter().enumerate() {
                if !self.pipelines.contains_key(&topic.pipeline) {
                    return value(
                        &format!("ingest.mqtt.topics[{i}].pipeline"),
                        format!(
                            "names pipeline `{}`, which is not configured under [pipelines]",
                            topic.pipeline
                        ),
                    );
                }
                if topic.filter.is_empty() {
                    return value(
                        &format!("ingest.mqtt.topics[{i}].filter"),
                        "give a topic filter, e.g. `line-3/+/image`".into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// What `[bundles]` needs besides numbers in range: keys that parse,
    /// and a source only with a key to check it against.
    fn check_bundles(&self) -> Result<(), ConfigError> {
        let bundles = &self.bundles;
        bundles.trusted()?;
        if bundles.from_collector && self.sync.url.is_none() {
            return Err(ConfigError::value(
                "bundles.from_collector",
                "is set but [sync] has no url: there is no collector to ask",
            ));
        }
        if (bundles.folder.is_some() || bundles.from_collector) && !bundles.enabled() {
            return Err(ConfigError::value(
                "bundles",
                "a source (folder or from_collector) is set but bundles.trusted_keys is empty: no bundle could ever be installed",
            ));
        }
        Ok(())
    }

    /// Where compiled plugins are cached.
    pub fn cache_dir(&self) -> PathBuf {
        self.runtime
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.device.data_dir.join("cache"))
    }
}

/// `SECTION.listen`: an `ip:port`, beyond loopback only with a token
/// (`open`: none) or `SECTION.insecure_allow_anyone`.
fn check_listen(
    section: &str,
    listen: Option<&str>,
    open: bool,
    insecure: bool,
) -> Result<(), ConfigError> {
    let Some(listen) = listen else {
        return Ok(());
    };
    let key = format!("{section}.listen");
    let Ok(addr) = listen.parse::<std::net::SocketAddr>() else {
        return Err(ConfigError::value(
            &key,
            format!("`{listen}` is not an ip:port address"),
        ));
    };
    if !addr.ip().is_loopback() && open && !insecure {
        return Err(ConfigError::value(
            &key,
            format!(
                "`{listen}` is reachable beyond this machine: set {section}.token (or {section}.token_file) so that only clients with it are answered, or {section}.insecure_allow_anyone = true"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
