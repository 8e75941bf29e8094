//! The harness of the agent tests (and of `agent_hostile` and `power`): the
//! `sluice` binary as a child process ([`Agent`]), its configuration, a
//! collector on loopback, posting inputs, reading what the collector stored,
//! polling with a bound, and the bundle-install helpers.

use crate::common::{http, repo_root};
use sluice_collector_core::Collector;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(crate) const DEVICE: &str = "dev-agent";
pub(crate) const TOKEN: &str = "agent-secret";

/// The first 64 digit images, to post.
pub(crate) fn images() -> Vec<Vec<u8>> {
    crate::common::digit_pngs().into_iter().take(64).collect()
}

pub(crate) fn collector(dir: &Path) -> Collector {
    crate::common::collector_for(dir, DEVICE, TOKEN)
}

/// The digits example with absolute paths, a test data dir, a shared plugin
/// cache, loopback ingest and quick sync retries: edited as TOML values,
/// never as text.
pub(crate) fn write_config(dir: &Path, sync_url: &str, folder: Option<&Path>) -> PathBuf {
    use toml::Value;
    let example = repo_root().join("examples/digits");
    let text = std::fs::read_to_string(example.join("sluice.toml")).unwrap();
    let mut config: toml::Table = toml::from_str(&text).unwrap();
    let path = |p: &Path| Value::String(p.display().to_string());
    let absolute = |v: &mut Value| {
        let relative = v.as_str().expect("a path").to_owned();
        if !relative.starts_with("bundled:") {
            *v = path(&example.join(relative));
        }
    };
    for (_, model) in config["models"].as_table_mut().unwrap().iter_mut() {
        absolute(&mut model["path"]);
    }
    for (_, pipeline) in config["pipelines"].as_table_mut().unwrap().iter_mut() {
        if let Some(sample) = pipeline.get_mut("sample") {
            absolute(sample);
        }
    }
    for (_, plugin) in config["plugins"].as_table_mut().unwrap().iter_mut() {
        absolute(&mut plugin["path"]);
        if let Some(dirs) = plugin
            .get_mut("grants")
            .and_then(|g| g.get_mut("dirs"))
            .and_then(Value::as_array_mut)
        {
            for grant in dirs {
                absolute(&mut grant["host"]);
            }
        }
    }
    let table = |pairs: Vec<(&str, Value)>| {
        Value::Table(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    };
    config.insert(
        "device".into(),
        table(vec![
            ("id", DEVICE.into()),
            ("data_dir", path(&dir.join("data"))),
        ]),
    );
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent-plugin-cache");
    config.insert("runtime".into(), table(vec![("cache_dir", path(&cache))]));
    let mut ingest = vec![("listen", "127.0.0.1:0".into())];
    if let Some(folder) = folder {
        ingest.extend([("folder", path(folder)), ("poll_ms", 20.into())]);
    }
    config.insert("ingest".into(), table(ingest));
    config.insert(
        "sync".into(),
        table(vec![
            ("url", sync_url.into()),
            ("token", TOKEN.into()),
            ("timeout_ms", 1000.into()),
            ("backoff_initial_ms", 20.into()),
            ("backoff_max_ms", 200.into()),
            ("interval_ms", 50.into()),
            ("batch_max_records", 16.into()),
        ]),
    );
    config.remove("outbox");
    let file = dir.join("sluice.toml");
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    // What the agent will load must be what the test meant.
    let loaded = sluice_agent::config::Config::load(&file).unwrap();
    assert_eq!(loaded.device.id, DEVICE);
    assert_eq!(loaded.device.data_dir, dir.join("data"));
    file
}

pub(crate) struct Agent {
    pub(crate) child: Child,
    pub(crate) url: String,
    stderr: mpsc::Receiver<String>,
    /// What it said about its memory at start.
    pub(crate) memory: String,
}

/// An agent a test did not stop (a failed assertion, a forgotten
/// `sigterm`) is killed with the test, never left running.
impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Agent {
    /// Start `sluice run` and wait (bounded) until it is ready.
    pub(crate) fn start(config: &Path) -> Agent {
        Agent::start_with(config, &[])
    }

    /// [`Agent::start`] with more environment variables.
    pub(crate) fn start_with(config: &Path, env: &[(&str, &str)]) -> Agent {
        let mut command = Command::new(crate::common::sluice_bin());
        command.envs(env.iter().copied());
        Agent::start_command(command, config)
    }

    /// Start `command` (the `sluice` binary, or a wrapper running it) with
    /// `run --config CONFIG`, and wait (bounded) until it is ready.
    pub(crate) fn start_command(command: Command, config: &Path) -> Agent {
        Agent::start_logging(command, config, "error")
    }

    /// [`Agent::start_command`], logging at `log` (a `--log` filter).
    pub(crate) fn start_logging(mut command: Command, config: &Path, log: &str) -> Agent {
        let mut child = command
            .args(["--log", log, "run", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice run");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let (etx, erx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = etx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut url = None;
        let mut memory = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("sluice run: ingest listening on ") => {
                    url = Some(
                        line.trim_start_matches("sluice run: ingest listening on ")
                            .to_owned(),
                    )
                }
                Ok(line) if line.starts_with("sluice run: memory: ") => memory = line,
                Ok(line) if line == "sluice run: ready" => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let errors: Vec<String> = erx.try_iter().collect();
                    panic!("sluice run did not become ready: {}", errors.join("\n"));
                }
            }
        }
        Agent {
            child,
            url: url.expect("ingest address printed"),
            stderr: erx,
            memory,
        }
    }

    pub(crate) fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM; returns the exit code (bounded wait).
    pub(crate) fn sigterm(mut self) -> i32 {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sluice run did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn stderr_text(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }
}

/// POST one image to the digits pipeline: the status and the answer.
pub(crate) fn post_image(url: &str, image: &[u8]) -> (u16, Vec<u8>) {
    http(
        reqwest::Client::new()
            .post(format!("{url}/v1/ingest/digits"))
            .header("Content-Type", "image/png")
            .body(image.to_vec()),
    )
}

/// POST one image; the id if it was acknowledged.
pub(crate) fn ingest(url: &str, image: &[u8]) -> Option<String> {
    let request = reqwest::Client::new()
        .post(format!("{url}/v1/ingest/digits"))
        .header("Content-Type", "image/png")
        .body(image.to_vec())
        .timeout(Duration::from_secs(5));
    let (status, body) = crate::common::tokio().block_on(async {
        let response = request.send().await.ok()?;
        Some((response.status().as_u16(), response.bytes().await.ok()?))
    })?;
    if status != 202 {
        return None;
    }
    let body: serde_json::Value = serde_json::from_slice(&body).ok()?;
    body["id"].as_str().map(str::to_owned)
}

/// All results stored for the device: id -> document, each once.
pub(crate) fn stored(collector: &Collector) -> BTreeMap<String, serde_json::Value> {
    crate::common::device_results(&collector.url(), DEVICE, TOKEN)
}

/// A configuration for an in-process agent taking inputs only from
/// `<dir>/inbox` (made here), syncing to `sync_url` (none: not syncing),
/// serving `[admin]` on a free loopback port: the configuration and the
/// inbox.
pub(crate) fn folder_only(
    dir: &Path,
    sync_url: Option<&str>,
) -> (sluice_agent::config::Config, PathBuf) {
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let file = write_config(dir, sync_url.unwrap_or("http://127.0.0.1:9"), Some(&inbox));
    let mut config = sluice_agent::config::Config::load(&file).unwrap();
    if sync_url.is_none() {
        config.sync = sluice_agent::config::SyncConfig::default();
    }
    config.ingest.listen = None;
    config.admin.listen = Some("127.0.0.1:0".into());
    (config, inbox)
}

/// Poll until `done` holds (bounded).
pub(crate) fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Set `section.key = value` in the configuration file `config` (the
/// section made if missing).
pub(crate) fn set(config: &Path, section: &str, key: &str, value: impl Into<toml::Value>) {
    let mut table: toml::Table = toml::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .unwrap()
        .insert(key.into(), value.into());
    std::fs::write(config, toml::to_string(&table).unwrap()).unwrap();
}

/// POST `body` to the digits pipeline with an `Idempotency-Key`.
pub(crate) fn post_keyed(url: &str, body: &[u8], key: &str) -> (u16, serde_json::Value) {
    let (status, answer) = http(
        reqwest::Client::new()
            .post(format!("{url}/v1/ingest/digits"))
            .header("Content-Type", "image/png")
            .header("Idempotency-Key", key)
            .body(body.to_vec()),
    );
    (
        status,
        serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null),
    )
}

/// An in-process agent with loopback HTTP ingest tuned by `edit`, no uplink.
pub(crate) fn ingest_agent(
    dir: &Path,
    edit: impl FnOnce(&mut sluice_agent::config::IngestConfig),
) -> (sluice_agent::agent::Agent, String) {
    let file = write_config(dir, "http://127.0.0.1:9", None);
    let mut config = sluice_agent::config::Config::load(&file).unwrap();
    config.sync = sluice_agent::config::SyncConfig::default();
    edit(&mut config.ingest);
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    let url = format!("http://{}", agent.ingest_addr().unwrap());
    (agent, url)
}

/// Peak resident memory of process `pid`, in MiB (`VmHWM`).
pub(crate) fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024.0
}

/// `config` with bundles installed from `drop`, trusting `key`, with a
/// short probation.
pub(crate) fn with_bundles(config: &Path, drop: &Path, key: &sluice_bundle::keys::SecretKey) {
    let mut table: toml::Table = toml::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    let bundles: toml::Table = toml::from_str(&format!(
        "trusted_keys = [{:?}]\nfolder = {:?}\npoll_ms = 20\nsettle_ms = 0\nprobation_secs = 1\nprobation_min_items = 5\n",
        key.public().to_text(),
        drop.display().to_string()
    ))
    .unwrap();
    table.insert("bundles".into(), toml::Value::Table(bundles));
    std::fs::write(config, toml::to_string(&table).unwrap()).unwrap();
}

/// The device's install state, as JSON (null before any install).
pub(crate) fn install_state(dir: &Path) -> serde_json::Value {
    std::fs::read(dir.join("data/bundles/state.json"))
        .map(|bytes| serde_json::from_slice(&bytes).unwrap())
        .unwrap_or(serde_json::Value::Null)
}

/// After a restart: the version the state names runs every new input, and
/// no folder of an unrecorded version is left. Returns the ids posted.
pub(crate) fn check_recovered(
    dir: &Path,
    agent: &Agent,
    collector: &Collector,
    step: &str,
) -> Vec<String> {
    let state = install_state(dir);
    let current = &state["pipelines"]["digits"]["current"];
    assert!(
        current.is_null() || current["committed"] == true,
        "after a crash at {step}, the state names a version on probation: {state}"
    );
    let expected = if current.is_null() {
        serde_json::Value::Null
    } else {
        serde_json::json!({"name": "digits", "version": current["version"]})
    };
    let fresh: Vec<String> = images()[..3]
        .iter()
        .map(|image| ingest(&agent.url, image).expect("accepted"))
        .collect();
    assert!(wait_until(Duration::from_secs(60), || {
        let stored = stored(collector);
        fresh.iter().all(|id| stored.contains_key(id))
    }));
    let stored = stored(collector);
    for id in &fresh {
        assert_eq!(
            stored[id]["provenance"]["bundle"], expected,
            "after a crash at {step}"
        );
    }
    let referenced: Vec<String> = ["current", "last_good"]
        .iter()
        .filter_map(|k| {
            state["pipelines"]["digits"][k]["dir"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir.join("data/bundles/v")) {
        for entry in entries {
            let name = format!("v/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(
                referenced.contains(&name),
                "after a crash at {step}: {name} left over"
            );
        }
    }
    fresh
}
