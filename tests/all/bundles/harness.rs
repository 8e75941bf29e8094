//! The harness of the install tests (and of `agent` and `power`): the digits
//! example as a table, configurations and signed bundles made from it, the
//! drop folder, an in-process device, and polling its outbox.

use crate::common::repo_root;
use sluice_agent::config::Config;
use sluice_agent::outbox::NewInput;
use sluice_bundle::keys::SecretKey;
use std::path::Path;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The digits example as a TOML table with its paths made absolute, so a
/// copy written elsewhere still finds the models.
pub(crate) fn example_table() -> toml::Table {
    let example = repo_root().join("examples/digits");
    let mut table: toml::Table =
        toml::from_str(&std::fs::read_to_string(example.join("sluice.toml")).unwrap()).unwrap();
    let absolute = |v: &mut toml::Value| {
        let p = example.join(v.as_str().unwrap());
        *v = toml::Value::String(p.to_str().unwrap().to_owned());
    };
    absolute(&mut table["models"]["digits"]["path"]);
    absolute(&mut table["pipelines"]["digits"]["sample"]);
    for (_, plugin) in table["plugins"].as_table_mut().unwrap().iter_mut() {
        if let Some(dirs) = plugin.get_mut("grants").and_then(|g| g.get_mut("dirs")) {
            for dir in dirs.as_array_mut().unwrap() {
                absolute(&mut dir["host"]);
            }
        }
    }
    table.remove("ingest");
    table.remove("sync");
    table
}

/// `table` written as `dir/name.toml`; its path.
pub(crate) fn write_config(dir: &Path, name: &str, table: &toml::Table) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(table).unwrap()).unwrap();
    path
}

/// A signed bundle of `config`'s digits pipeline at `version`.
pub(crate) fn bundle_of(
    dir: &Path,
    config: &Path,
    version: u64,
    key: Option<&SecretKey>,
) -> PathBuf {
    let out = dir.join(format!("digits-{version}-{}.built", rand::random::<u32>()));
    sluice_agent::bundle::build(&sluice_agent::bundle::BuildRequest {
        config: config.to_owned(),
        pipeline: None,
        version,
        expires_in: Duration::from_secs(3600),
        validation_inputs: crate::common::digit_png_paths()[..8].to_vec(),
        validation: Default::default(),
        data_dir: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("bundle-data")),
        out: out.clone(),
    })
    .unwrap();
    if let Some(key) = key {
        sluice_bundle::sign(&out, key, sluice_types::now_ms()).unwrap();
    }
    out
}

/// Put `bundle` into the drop folder the way a copy tool does: under a
/// temporary name, then renamed to `*.bundle`.
pub(crate) fn drop_into(folder: &Path, bundle: &Path, name: &str) {
    std::fs::create_dir_all(folder).unwrap();
    let tmp = folder.join(format!("{name}.part"));
    std::fs::copy(bundle, &tmp).unwrap();
    std::fs::rename(&tmp, folder.join(format!("{name}.bundle"))).unwrap();
}

/// A device running the digits pipeline of `table`, trusting `key`.
pub(crate) fn device(
    dir: &Path,
    table: &toml::Table,
    key: &SecretKey,
) -> sluice_agent::agent::Agent {
    let mut config = Config::load(&write_config(dir, "device", table)).unwrap();
    config.device.id = "gw-bundles".into();
    config.device.data_dir = dir.join("device");
    config.runtime.cache_dir = Some(crate::common::shared_cache_dir());
    config.bundles.trusted_keys = vec![key.public().to_text()];
    config.bundles.folder = Some(dir.join("drop"));
    config.bundles.poll_ms = 20;
    config.bundles.settle_ms = 0;
    config.bundles.probation_secs = 1;
    config.bundles.probation_min_items = 10;
    sluice_agent::agent::Agent::start(config).unwrap()
}

/// Device `id` of a rollout: the digits pipeline of `base`, trusting
/// `key`, asking its collector for bundles every second, on a short
/// probation (1 s, 5 items); `sync` says how it reaches the collector.
pub(crate) fn rollout_device(
    dir: &Path,
    id: &str,
    base: &toml::Table,
    key: &SecretKey,
    sync: impl FnOnce(&mut Config),
) -> sluice_agent::agent::Agent {
    let mut config = Config::load(&write_config(dir, id, base)).unwrap();
    config.device.id = id.into();
    config.device.data_dir = dir.join(id);
    config.runtime.cache_dir = Some(crate::common::shared_cache_dir());
    sync(&mut config);
    config.sync.interval_ms = 50;
    config.bundles.trusted_keys = vec![key.public().to_text()];
    config.bundles.from_collector = true;
    config.bundles.collector_poll_secs = 1;
    config.bundles.poll_ms = 20;
    config.bundles.probation_secs = 1;
    config.bundles.probation_min_items = 5;
    sluice_agent::agent::Agent::start(config).unwrap()
}

pub(crate) fn accept(agent: &sluice_agent::agent::Agent, images: &[Vec<u8>]) {
    let inputs: Vec<NewInput> = images
        .iter()
        .map(|data| NewInput {
            pipeline: "digits".into(),
            content_type: "image/png".into(),
            attributes: Vec::new(),
            data: data.clone(),
        })
        .collect();
    agent.accept(&inputs).unwrap();
}

pub(crate) fn of_kind<'a>(all: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    all.iter()
        .filter(|r| r["kind"].as_str().unwrap_or("result") == kind)
        .collect()
}

/// Poll the agent's outbox until `done` holds (bounded); the records.
pub(crate) fn wait_until(
    agent: &sluice_agent::agent::Agent,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = crate::common::outbox_records(agent);
        if done(&all) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn installs(all: &[serde_json::Value], outcome: &str) -> usize {
    of_kind(all, "install")
        .iter()
        .filter(|r| r["outcome"] == outcome)
        .count()
}

/// `png` scaled up to 16 x 16 (another camera).
pub(crate) fn upscaled(png: &[u8]) -> Vec<u8> {
    let image = image::load_from_memory(png).unwrap().to_luma8();
    let big = image::imageops::resize(&image, 16, 16, image::imageops::FilterType::Nearest);
    let mut out = std::io::Cursor::new(Vec::new());
    big.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A device configuration that resizes whatever image it gets, and a signed
/// version 2 (the example as it is) that insists on 8 x 8: its validation
/// set (8 x 8 digits) passes, larger images fail on it.
pub(crate) fn tolerant_device_and_strict_v2(dir: &Path, key: &SecretKey) -> (toml::Table, PathBuf) {
    let mut base = example_table();
    base["plugins"]["digits-pre"]["config"]["resize"] = "exact".into();
    let v2 = bundle_of(
        dir,
        &write_config(dir, "v2", &example_table()),
        2,
        Some(key),
    );
    (base, v2)
}
