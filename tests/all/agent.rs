//! `sluice run` as a real child process against a real collector on
//! loopback: SIGTERM drains and exits 0; SIGKILL at random points during
//! ingest and sync, many times in a row, loses no acknowledged input and
//! stores none twice; a batch acknowledged upstream but not recorded before
//! the kill is not stored twice; folder inputs are taken exactly once; a
//! damaged outbox is moved aside at start-up; a crash at any step of a
//! bundle install leaves one version running and loses nothing.

use crate::common::{hex_sha256, http, repo_root};
use crate::fault_proxy::{Fault, FaultProxy};
use rand::{RngExt, SeedableRng};
use sluice_collector_core::Collector;
use std::collections::{BTreeMap, BTreeSet};
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
    memory: String,
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
    fn start_command(command: Command, config: &Path) -> Agent {
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

#[test]
fn sigterm_drains_and_exits_zero_and_every_result_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let agent = Agent::start(&write_config(dir.path(), &collector.url(), None));
    let acked: BTreeSet<String> = images()
        .iter()
        .map(|img| ingest(&agent.url, img).expect("202"))
        .collect();
    assert_eq!(acked.len(), 64);
    // Unknown pipelines are refused by name.
    let (status, body) = http(
        reqwest::Client::new()
            .post(format!("{}/v1/ingest/nope", agent.url))
            .body("x"),
    );
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("`nope`"));

    assert!(
        wait_until(Duration::from_secs(30), || stored(&collector).len() == 64),
        "results did not arrive"
    );
    let results = stored(&collector);
    assert_eq!(results.keys().cloned().collect::<BTreeSet<_>>(), acked);
    let doc = results.values().next().unwrap();
    let model = std::fs::read(repo_root().join("models/digits/digits_mlp.onnx")).unwrap();
    assert_eq!(
        doc["provenance"]["model_sha256"],
        hex_sha256(&model),
        "the record names the model that made it"
    );
    assert_eq!(doc["kind"], "result");
    assert!(doc["result"]["body"]["label"].is_string(), "{doc}");
    assert!(doc["timings"]["batch_infer_us"].is_u64(), "{doc}");
    assert_eq!(agent.sigterm(), 0);

    // `outbox status` reads the file the agent left.
    let out = Command::new(crate::common::sluice_bin())
        .args(["outbox", "status", "--json", "--config"])
        .arg(dir.path().join("sluice.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["pending_records"], 0);
    assert_eq!(status["counters"]["uploaded"], 64);
}

/// Set `section.key = value` in the configuration file `config`.
fn set(config: &Path, section: &str, key: &str, value: impl Into<toml::Value>) {
    let mut table: toml::Table = toml::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    table[section]
        .as_table_mut()
        .unwrap()
        .insert(key.into(), value.into());
    std::fs::write(config, toml::to_string(&table).unwrap()).unwrap();
}

#[test]
fn a_memory_budget_the_board_cannot_meet_refuses_to_start_naming_the_parts() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);

    // The digits example's plugins alone may hold 2 × 32 MiB per pipeline
    // thread, and HTTP ingest 4 × 16 MiB of bodies: 100 MiB cannot hold
    // them, and that is known before any model is loaded.
    set(&config, "device", "memory_budget_mb", 100);
    let started = Instant::now();
    let out = Command::new(crate::common::sluice_bin())
        .args(["--log", "error", "run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for needle in [
        "device.memory_budget_mb = 100 cannot be met",
        "plugins",
        "plugins.*.memory_mb",
        "runtime.workers",
        "ingest.max_concurrent_requests",
        "outbox",
        "baseline",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    assert!(
        !stderr.contains(", models "),
        "refused before loading models: {stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // With room, it starts and says what each part takes, the models'
    // weights and plans measured.
    set(&config, "device", "memory_budget_mb", 1024);
    let agent = Agent::start(&config);
    let line = agent.memory.clone();
    assert!(line.contains("device.memory_budget_mb = 1024"), "{line}");
    let mib = |part: &str| -> f64 {
        let at = line
            .find(&format!("{part} "))
            .unwrap_or_else(|| panic!("{part}: {line}"));
        line[at + part.len() + 1..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(mib("models") > 0.0, "{line}");
    assert!(mib("baseline") > 1.0, "{line}");
    assert!(mib("plugins") >= 2.0 * 32.0, "{line}");
    let total: f64 = line["sluice run: memory: ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(total <= 1024.0, "{line}");
    assert_eq!(agent.sigterm(), 0);
}

/// `sluice infer` on one digit, its address space limited to `gib` GiB
/// (`prlimit --as`, as `ulimit -v` does), or not limited.
fn infer_in_address_space(config: &Path, gib: Option<u64>) -> (String, String) {
    let mut command = match gib {
        Some(gib) => {
            let mut command = Command::new("prlimit");
            command
                .arg(format!("--as={}", gib << 30))
                .arg(crate::common::sluice_bin());
            command
        }
        None => Command::new(crate::common::sluice_bin()),
    };
    let out = command
        .args(["--log", "warn", "infer", "--config"])
        .arg(config)
        .arg(repo_root().join("models/digits/heldout/0000.png"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    if out.status.success() {
        let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        (line["result"]["body"]["label"].to_string(), stderr)
    } else {
        (String::new(), stderr)
    }
}

/// An address space (GiB) in which the digits agent's pool of wide memories
/// does not fit and one of compact memories does.
/// (The wide pool: 97 GiB; the compact one: 0.75 GiB, which must leave
/// 0.5 GiB free; the agent runs on demand in 0.75 GiB in all.)
const COMPACT_POOL_GIB: u64 = 4;
/// One in which neither pool fits, but the process and its plugins do.
const ON_DEMAND_GIB: u64 = 1;

#[test]
fn a_small_address_space_gets_compact_plugin_memories_and_the_same_results() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("SKIPPED: prlimit (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "http://127.0.0.1:9", None);
    // The pools' sizes depend on the pipeline threads, which default to the cores.
    set(&config, "runtime", "workers", 2);
    // Unlimited: a pool of wide memories (no bounds checks), nothing to say.
    let (label, stderr) = infer_in_address_space(&config, None);
    assert!(!label.is_empty(), "{stderr}");
    assert!(!stderr.contains("plugin memory"), "{stderr}");

    // A board whose address space cannot hold the wide pool (tens of GiB)
    // gets a pool of compact memories: the same result, and a log line.
    let (compact, stderr) = infer_in_address_space(&config, Some(COMPACT_POOL_GIB));
    assert_eq!(compact, label, "{stderr}");
    assert!(stderr.contains("plugin memory: PooledCompact"), "{stderr}");

    // Below the compact pool too: compact memories made on demand.
    let (on_demand, stderr) = infer_in_address_space(&config, Some(ON_DEMAND_GIB));
    assert_eq!(on_demand, label, "{stderr}");
    assert!(
        stderr.contains("plugin memory: OnDemandCompact"),
        "{stderr}"
    );

    // `runtime.pooling = "on"` asks for a pool: without one the command
    // fails, naming the key and why each pool was refused.
    set(&config, "runtime", "pooling", "on");
    let (refused, stderr) = infer_in_address_space(&config, Some(ON_DEMAND_GIB));
    assert!(refused.is_empty(), "{stderr}");
    for needle in ["runtime.pooling = \"on\"", "PooledWide", "PooledCompact"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}

#[test]
fn sigkill_at_random_points_loses_no_acknowledged_input() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    // The proxy fails some rounds' uploads so that results pile up in the
    // outbox and kills also land during retries and batch re-sends.
    let proxy = FaultProxy::start(collector.addr(), Fault::Pass);
    let config = write_config(dir.path(), &proxy.url(), None);
    let images = images();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut acked = BTreeSet::new();
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < 12 && started.elapsed() < Duration::from_secs(45) {
        rounds += 1;
        proxy.set(match rng.random_range(0..3) {
            0 => Fault::Status500,
            1 => Fault::CutAnswer,
            _ => Fault::Pass,
        });
        let agent = Agent::start(&config);
        let (tx, rx) = mpsc::channel();
        let (url, batch) = (agent.url.clone(), images.clone());
        let count = rng.random_range(5..40);
        let poster = std::thread::spawn(move || {
            for image in batch.iter().cycle().take(count) {
                match ingest(&url, image) {
                    Some(id) => tx.send(id).unwrap(),
                    None => break, // The agent died under us.
                }
            }
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(10..400)));
        agent.sigkill();
        poster.join().unwrap();
        acked.extend(rx.try_iter());
    }
    assert!(
        acked.len() > 20,
        "too few inputs were acknowledged to test anything: {}",
        acked.len()
    );

    // A last, clean run delivers everything.
    proxy.set(Fault::Pass);
    let agent = Agent::start(&config);
    let delivered = wait_until(Duration::from_secs(60), || {
        let stored = stored(&collector);
        acked.iter().all(|id| stored.contains_key(id))
    });
    let stderr = agent.stderr_text();
    assert_eq!(agent.sigterm(), 0);
    let stored = stored(&collector);
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        delivered && missing.is_empty(),
        "{} of {} acknowledged inputs missing after {rounds} kills: {missing:?}\n{stderr}",
        missing.len(),
        acked.len()
    );
    eprintln!(
        "{rounds} SIGKILL rounds: {} acknowledged, {} stored (each once)",
        acked.len(),
        stored.len()
    );
}

#[test]
fn a_batch_acknowledged_but_not_recorded_before_a_kill_is_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let proxy = FaultProxy::start(collector.addr(), Fault::HoldAnswer);
    let config = write_config(dir.path(), &proxy.url(), None);
    let agent = Agent::start(&config);
    let acked: BTreeSet<String> = images()
        .iter()
        .take(10)
        .map(|img| ingest(&agent.url, img).expect("202"))
        .collect();
    // The collector stored a batch; its answer is held; kill the uploader now.
    assert!(FaultProxy::wait_for(
        &proxy.forwarded,
        1,
        Duration::from_secs(30)
    ));
    let first = stored(&collector).len();
    assert!(first > 0);
    agent.sigkill();

    proxy.set(Fault::Pass);
    let agent = Agent::start(&config);
    assert!(wait_until(Duration::from_secs(30), || stored(&collector)
        .len()
        == acked.len()));
    assert_eq!(agent.sigterm(), 0);
    let stored = stored(&collector);
    assert_eq!(stored.keys().cloned().collect::<BTreeSet<_>>(), acked);
}

#[test]
fn folder_inputs_are_taken_exactly_once_across_kills() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let config = write_config(dir.path(), &collector.url(), Some(&inbox));
    let images = images();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut names = BTreeSet::new();
    for round in 0..5 {
        for n in 0..20 {
            let name = format!("r{round}-{n:02}.png");
            // Write under a dot name, then rename: the agent never sees half a file.
            std::fs::write(inbox.join(format!(".{name}")), &images[n % images.len()]).unwrap();
            std::fs::rename(inbox.join(format!(".{name}")), inbox.join(&name)).unwrap();
            names.insert(name);
        }
        let agent = Agent::start(&config);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        agent.sigkill();
    }
    let agent = Agent::start(&config);
    let all_in = wait_until(Duration::from_secs(60), || {
        stored(&collector).len() >= names.len()
    });
    assert_eq!(agent.sigterm(), 0);
    assert!(
        all_in,
        "only {} of {} files arrived",
        stored(&collector).len(),
        names.len()
    );
    let files: Vec<String> = stored(&collector)
        .values()
        .map(|doc| {
            doc["input"]["attributes"]["file"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(files.len(), names.len(), "a file was ingested twice");
    assert_eq!(files.into_iter().collect::<BTreeSet<_>>(), names);
    let left: Vec<_> = std::fs::read_dir(&inbox)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from(".sluice-claimed")]);
}

#[test]
fn a_damaged_outbox_is_moved_aside_and_the_agent_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/outbox.sqlite"), vec![0x5a; 64 * 1024]).unwrap();
    let agent = Agent::start(&config);
    let id = ingest(&agent.url, &images()[0]).expect("202 on a fresh outbox");
    assert!(wait_until(Duration::from_secs(30), || stored(&collector)
        .contains_key(&id)));
    let stderr = agent.stderr_text();
    assert_eq!(agent.sigterm(), 0);
    assert!(
        stderr.contains("the outbox was damaged") && stderr.contains("moved it to"),
        "{stderr}"
    );
    let moved: Vec<String> = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("outbox.sqlite.damaged-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
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

#[test]
fn a_retry_with_the_same_idempotency_key_around_a_kill_makes_one_result() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);
    let images = images();
    let agent = Agent::start(&config);
    let (status, first) = post_keyed(&agent.url, &images[0], "client-42-req-7");
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["replayed"], false);
    // The agent dies; the client, not knowing whether it was taken, retries.
    agent.sigkill();
    let agent = Agent::start(&config);
    let (status, again) = post_keyed(&agent.url, &images[0], "client-42-req-7");
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["id"], first["id"], "the same input keeps its id");
    assert_eq!(again["replayed"], true);
    // The key bound to other bytes is refused; a malformed key too.
    let (status, conflict) = post_keyed(&agent.url, &images[1], "client-42-req-7");
    assert_eq!(status, 422, "{conflict}");
    assert!(
        conflict["error"]
            .as_str()
            .unwrap()
            .contains("client-42-req-7")
    );
    assert_eq!(post_keyed(&agent.url, &images[1], "bad key").0, 400);

    let id = first["id"].as_str().unwrap().to_owned();
    assert!(wait_until(Duration::from_secs(30), || stored(&collector)
        .contains_key(&id)));
    assert_eq!(agent.sigterm(), 0);
    let stored = stored(&collector);
    assert_eq!(
        stored.keys().cloned().collect::<Vec<_>>(),
        vec![id.clone()],
        "exactly one result upstream"
    );
    // It says where it came from, as a folder's results name their file.
    let input = &stored[&id]["input"];
    assert_eq!(input["content_type"], "image/png", "{input}");
    let attributes = &input["attributes"];
    assert_eq!(attributes["source"], "http", "{input}");
    assert_eq!(attributes["idempotency_key"], "client-42-req-7", "{input}");
    assert!(
        attributes["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{input}"
    );
}

#[test]
fn results_expire_while_the_agent_runs_without_any_uplink() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "http://127.0.0.1:9", None);
    let mut config = sluice_agent::config::Config::load(&file).unwrap();
    config.sync = sluice_agent::config::SyncConfig::default();
    config.ingest = sluice_agent::config::IngestConfig::default();
    config.outbox.max_age_secs = 1;
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    let old: Vec<sluice_agent::outbox::NewRecord> = (0..5)
        .map(|n| sluice_agent::outbox::NewRecord {
            id: format!("{DEVICE}/digits/{n}"),
            body: b"{}".to_vec(),
        })
        .collect();
    agent.outbox().append(old).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || agent.outbox().pending().0 == 0),
        "nothing expired while running"
    );
    let expired = agent
        .outbox()
        .counter(sluice_agent::outbox::counter::EXPIRED)
        .unwrap();
    assert_eq!(expired, 5);
    agent.shutdown();
}

#[test]
fn a_full_model_queue_holds_inputs_back_and_never_becomes_a_result() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let file = write_config(dir.path(), &collector.url(), Some(&inbox));
    let mut config = sluice_agent::config::Config::load(&file).unwrap();
    config.ingest.listen = None;
    // Four pipeline threads send batches of one into a queue of one: three
    // of four find it full, over and over.
    config.runtime.workers = 4;
    let batching = &mut config.models.get_mut("digits").unwrap().batching;
    batching.max_batch_size = 1;
    batching.queue_capacity = 1;
    batching.max_queue_delay_ms = 0;
    let images = images();
    for (n, image) in images.iter().enumerate() {
        std::fs::write(inbox.join(format!(".{n:02}.png")), image).unwrap();
        std::fs::rename(
            inbox.join(format!(".{n:02}.png")),
            inbox.join(format!("{n:02}.png")),
        )
        .unwrap();
    }
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    let arrived = wait_until(Duration::from_secs(60), || {
        stored(&collector).len() == images.len()
    });
    agent.shutdown();
    assert!(
        arrived,
        "only {} of {} arrived",
        stored(&collector).len(),
        images.len()
    );
    let failed: Vec<String> = stored(&collector)
        .values()
        .filter_map(|doc| doc.get("error").map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "back-pressure stored as results: {failed:?}"
    );
}

#[test]
fn one_bad_file_fails_alone_and_a_file_still_being_written_waits() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let inbox = dir.path().join("inbox");
    let claimed = inbox.join(".sluice-claimed");
    std::fs::create_dir_all(&claimed).unwrap();
    let file = write_config(dir.path(), &collector.url(), Some(&inbox));
    let mut config = sluice_agent::config::Config::load(&file).unwrap();
    config.ingest.listen = None;
    config.ingest.settle_ms = 400;
    config.ingest.max_input_bytes = 4096;
    let images = images();
    // Good files, one with a name too long to carry a claim prefix.
    for n in 0..5 {
        std::fs::write(inbox.join(format!("good-{n}.png")), &images[n]).unwrap();
    }
    let long = format!("{}.png", "x".repeat(240));
    std::fs::write(inbox.join(&long), &images[5]).unwrap();
    // Too large: a failed result, not a silent deletion.
    std::fs::write(inbox.join("huge.png"), vec![7u8; 10_000]).unwrap();
    // Neither FIFOs nor a directory stall anything.
    for fifo in [inbox.join("pipe.png"), claimed.join("00-000000-pipe.png")] {
        assert!(
            Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
    }
    std::fs::create_dir(claimed.join("00-000001-dir.png")).unwrap();
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    // A file written slowly, in three parts: taken only once complete.
    let slow = inbox.join("slow.png");
    let image = images[6].clone();
    let third = image.len() / 3;
    for part in [
        &image[..third],
        &image[third..2 * third],
        &image[2 * third..],
    ] {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&slow)
            .unwrap();
        f.write_all(part).unwrap();
        drop(f);
        std::thread::sleep(Duration::from_millis(150));
    }
    let arrived = wait_until(Duration::from_secs(30), || stored(&collector).len() == 8);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        agent.shutdown();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(30)).is_ok(),
        "shutdown hung"
    );
    let results = stored(&collector);
    assert!(
        arrived,
        "{} of 8 arrived: {:?}",
        results.len(),
        results.keys()
    );
    let by_file: BTreeMap<String, &serde_json::Value> = results
        .values()
        .map(|doc| {
            (
                doc["input"]["attributes"]["file"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                doc,
            )
        })
        .collect();
    let huge = by_file["huge.png"];
    assert_eq!(huge["error"]["kind"], "refused", "{huge}");
    assert!(
        huge["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_input_bytes"),
        "{huge}"
    );
    let slow = by_file["slow.png"];
    assert!(slow.get("result").is_some(), "taken half-written: {slow}");
    assert_eq!(slow["input"]["bytes"], image.len());
    let long_one = by_file
        .keys()
        .find(|name| name.starts_with("xxxx"))
        .expect("the long name");
    assert!(by_file[long_one].get("result").is_some());
    for n in 0..5 {
        assert!(by_file[&format!("good-{n}.png")].get("result").is_some());
    }
    // What could not be taken is still there, untouched.
    assert!(claimed.join("00-000001-dir.png").is_dir());
    assert!(inbox.join("pipe.png").exists());
}

/// An in-process agent with loopback HTTP ingest tuned by `edit`, no uplink.
fn ingest_agent(
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

#[test]
fn ingest_with_a_token_refuses_everyone_without_it_before_reading_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, url) = ingest_agent(dir.path(), |ingest| {
        ingest.token = Some("ingest-secret".into());
    });
    let image = images()[0].clone();
    let post = |auth: Option<&str>| {
        let mut request = reqwest::Client::new()
            .post(format!("{url}/v1/ingest/digits"))
            .header("Content-Type", "image/png")
            .body(image.clone());
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        http(request).0
    };
    assert_eq!(post(None), 401);
    assert_eq!(post(Some("Bearer wrong")), 401);
    assert_eq!(post(Some("Bearer ingest-secret")), 202);
    assert_eq!(
        http(reqwest::Client::new().get(format!("{url}/v1/status"))).0,
        401
    );
    assert_eq!(
        http(reqwest::Client::new().get(format!("{url}/v1/health"))).0,
        200
    );
    // An unauthenticated client announcing a huge body is answered at once.
    let mut stream = std::net::TcpStream::connect(agent.ingest_addr().unwrap()).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "POST /v1/ingest/digits HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000000\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 401");
    agent.shutdown();
}

#[test]
fn ingest_bounds_requests_at_once_and_the_time_a_body_may_take() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (agent, url) = ingest_agent(dir.path(), |ingest| {
        ingest.max_concurrent_requests = 1;
        ingest.body_timeout_ms = 500;
    });
    // A client that announces a body and sends half of it holds the only slot.
    let mut slow = std::net::TcpStream::connect(agent.ingest_addr().unwrap()).unwrap();
    write!(
        slow,
        "POST /v1/ingest/digits HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    )
    .unwrap();
    slow.write_all(&[0u8; 500]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (status, body) = post_image(&url, &images()[0]);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("ingest.max_concurrent_requests"));
    // The slow body times out, and its slot frees.
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = [0u8; 12];
    slow.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 408");
    let (status, _) = post_image(&url, &images()[0]);
    assert_eq!(status, 202);
    agent.shutdown();
}

#[test]
fn idle_and_half_open_connections_cannot_lock_ingest_out() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (agent, url) = ingest_agent(dir.path(), |ingest| {
        ingest.max_connections = 4;
        ingest.header_timeout_ms = 300;
    });
    // Twice the connection limit, each stuck in the middle of its headers.
    let stuck: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(agent.ingest_addr().unwrap()).unwrap();
            let _ = write!(s, "POST /v1/ingest/digits HTTP/1.1\r\nHost: x\r\n");
            s
        })
        .collect();
    let started = Instant::now();
    let (status, _) = post_image(&url, &images()[0]);
    assert_eq!(status, 202);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(stuck);
    agent.shutdown();
}

/// Peak resident memory of process `pid`, in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024.0
}

#[test]
fn forty_concurrent_large_posts_stay_within_the_ingest_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let agent = Agent::start(&write_config(dir.path(), &collector.url(), None));
    let pid = agent.child.id();
    let before = peak_rss_mib(pid);
    // 40 clients post 15 MB each at once (under the default 16 MiB limit);
    // at most ingest.max_concurrent_requests (4) bodies are read at a time,
    // the others are told to retry.
    let body = vec![0x42u8; 15 << 20];
    let statuses: Vec<u16> = crate::common::tokio().block_on(async {
        let client = reqwest::Client::new();
        let posts = (0..40).map(|_| {
            client
                .post(format!("{}/v1/ingest/digits", agent.url))
                .header("Content-Type", "image/png")
                .body(body.clone())
                .timeout(Duration::from_secs(60))
                .send()
        });
        futures_join_all(posts).await
    });
    let peak = peak_rss_mib(pid);
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    // Refused before its body was read, a client still sending may see the
    // connection close (0) rather than the 503.
    assert!(
        statuses.iter().all(|s| [0, 202, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(accepted >= 1, "{statuses:?}");
    // Bodies: 4 x 16 MiB; the journal write copies one at a time; plus what
    // the agent had before.
    let bound = before + 4.0 * 16.0 * 2.5 + 64.0;
    eprintln!(
        "ingest under 40 x 15 MB: peak RSS {peak:.0} MiB (before {before:.0}, bound {bound:.0}); {accepted} accepted"
    );
    assert!(
        peak < bound,
        "peak RSS {peak:.0} MiB over the bound {bound:.0} MiB"
    );
    assert_eq!(agent.sigterm(), 0);
}

/// Await every post, in order (without a `futures` dependency); the status
/// of each, 0 for a connection closed before the answer.
async fn futures_join_all(
    posts: impl Iterator<
        Item = impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + Send + 'static,
    >,
) -> Vec<u16> {
    let tasks: Vec<_> = posts.map(tokio::spawn).collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(match task.await.unwrap() {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        });
    }
    statuses
}

#[test]
fn a_dead_worker_takes_readiness_and_its_ingest_down_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);
    let agent = Agent::start_with(&config, &[("SLUICE_FAULT_INJECT", "worker-panic:digits")]);
    let ready = || http(reqwest::Client::new().get(format!("{}/readyz", agent.url)));
    assert_eq!(ready().0, 200);
    let id = ingest(&agent.url, &images()[0]).expect("accepted before the worker dies");
    assert!(
        wait_until(Duration::from_secs(10), || ready().0 == 503),
        "readiness did not go down"
    );
    let (_, body) = ready();
    assert!(
        String::from_utf8_lossy(&body).contains("pipeline `digits` is down"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // No more inputs are taken for a pipeline nobody processes.
    let (status, body) = post_image(&agent.url, &images()[1]);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("worker died"));
    agent.sigkill();
    // The accepted input waited in the journal: a healthy restart delivers it.
    let agent = Agent::start(&config);
    assert!(wait_until(Duration::from_secs(30), || stored(&collector)
        .contains_key(&id)));
    assert_eq!(agent.sigterm(), 0);
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn as_an_unprivileged_user_an_unreadable_file_is_left_alone_and_the_others_flow() {
    // Root reads every file: the agent runs as `nobody` when the tests run
    // as root (as CI does), as itself otherwise.
    let root = unsafe { libc::geteuid() } == 0;
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o777);
    let collector = collector(dir.path());
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    chmod(&inbox, 0o777);
    let file = write_config(dir.path(), &collector.url(), Some(&inbox));
    // Its own plugin cache (writable by the agent's user), warm if the
    // shared one is.
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let shared = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent-plugin-cache");
    for entry in std::fs::read_dir(&shared).into_iter().flatten().flatten() {
        let _ = std::fs::copy(entry.path(), cache.join(entry.file_name()));
    }
    let mut config: toml::Table = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    config["runtime"]["cache_dir"] = cache.display().to_string().into();
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    for path in std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .chain([cache.clone()])
    {
        chmod(&path, 0o777);
    }
    chmod(&file, 0o644);
    let images = images();
    for n in 0..3 {
        std::fs::write(inbox.join(format!("good-{n}.png")), &images[n]).unwrap();
    }
    std::fs::write(inbox.join("secret.png"), &images[3]).unwrap();
    chmod(&inbox.join("secret.png"), 0o000);
    let command = if root {
        // setpriv execs the agent in its place, so signals reach it.
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            crate::common::sluice_bin(),
        ]);
        c
    } else {
        Command::new(crate::common::sluice_bin())
    };
    let agent = Agent::start_command(command, &file);
    let arrived = wait_until(Duration::from_secs(30), || stored(&collector).len() == 3);
    // Several scans later, the unreadable file was reported once.
    std::thread::sleep(Duration::from_millis(1500));
    let stderr = agent.stderr_text();
    assert_eq!(agent.sigterm(), 0);
    assert!(
        arrived,
        "{} of 3 arrived\n{stderr}",
        stored(&collector).len()
    );
    let reports = stderr.matches("cannot take it").count();
    assert_eq!(reports, 1, "{stderr}");
    assert!(
        stderr.contains("secret.png") && stderr.contains("Permission denied"),
        "{stderr}"
    );
    let claimed: Vec<String> = std::fs::read_dir(inbox.join(".sluice-claimed"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        claimed.len() == 1 && claimed[0].ends_with("secret.png"),
        "{claimed:?}"
    );
}

#[test]
fn a_two_gib_file_in_the_folder_is_refused_without_being_read() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let config = write_config(dir.path(), &collector.url(), Some(&inbox));
    // Sparse: 2 GiB to whoever reads it, no disk used.
    std::fs::File::create(inbox.join("big.png"))
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    std::fs::write(inbox.join("small.png"), &images()[0]).unwrap();
    let agent = Agent::start(&config);
    let arrived = wait_until(Duration::from_secs(30), || stored(&collector).len() == 2);
    let peak = peak_rss_mib(agent.child.id());
    assert_eq!(agent.sigterm(), 0);
    assert!(arrived, "{} of 2 arrived", stored(&collector).len());
    eprintln!("a 2 GiB folder file: agent peak RSS {peak:.0} MiB");
    assert!(peak < 200.0, "peak RSS {peak:.0} MiB: the file was read");
    let refused: Vec<serde_json::Value> = stored(&collector)
        .into_values()
        .filter(|doc| doc["input"]["attributes"]["file"] == "big.png")
        .collect();
    assert_eq!(refused[0]["error"]["kind"], "refused", "{refused:?}");
    assert!(!inbox.join("big.png").exists());
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus server scraping `target` every 500 ms, in `dir`; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    fn start(dir: &Path, target: std::net::SocketAddr) -> Option<Prometheus> {
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let ready = wait_until(Duration::from_secs(30), || {
            get_status(&format!("{}/-/ready", prometheus.url)) == Some(200)
        });
        assert!(ready, "prometheus did not become ready");
        Some(prometheus)
    }

    /// The value of the one series `query` returns, if it returns one.
    fn query(&self, query: &str) -> Option<f64> {
        let (status, body) = http(
            reqwest::Client::new()
                .get(format!("{}/api/v1/query", self.url))
                .query(&[("query", query)]),
        );
        let body: serde_json::Value = serde_json::from_slice(&body).ok()?;
        if status != 200 {
            return None;
        }
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of a GET, or `None` if there was no answer.
fn get_status(url: &str) -> Option<u16> {
    crate::common::tokio().block_on(async {
        let response = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    })
}

#[test]
fn prometheus_scrapes_the_agent_and_counts_every_item() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, url) = ingest_agent(dir.path(), |_| {});
    let Some(prometheus) = Prometheus::start(dir.path(), agent.ingest_addr().unwrap()) else {
        eprintln!(
            "SKIPPED prometheus_scrapes_the_agent_and_counts_every_item: no prometheus binary (Debian package `prometheus`; .ci/run installs it)"
        );
        agent.shutdown();
        return;
    };
    let images = images();
    for image in &images[..20] {
        assert_eq!(post_image(&url, image).0, 202);
    }
    // The agent's own answer names the series, in OpenMetrics text.
    let text =
        String::from_utf8(http(reqwest::Client::new().get(format!("{url}/metrics"))).1).unwrap();
    for series in [
        "sluice_items_total",
        "sluice_stage_seconds_bucket",
        "sluice_batch_size_bucket",
        "sluice_outbox_pending_records",
        "sluice_disk_free_bytes",
        "sluice_plugin_instance_restarts_total",
        "sluice_build_info",
        // Which engine runs the model, and how its batches run.
        r#"sluice_execution_choice{model="digits",engine="tract",chunk="#,
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    let ok = r#"sum(sluice_items_total{job="sluice",pipeline="digits",outcome="ok"})"#;
    let counted = wait_until(Duration::from_secs(30), || {
        prometheus.query(ok) == Some(20.0)
    });
    let inference = r#"sum(sluice_stage_seconds_count{pipeline="digits",stage="inference"})"#;
    let timed = prometheus.query(inference);
    agent.shutdown();
    assert!(counted, "PromQL {ok} = {:?}, not 20", prometheus.query(ok));
    assert_eq!(timed, Some(20.0), "{inference}");
}

#[test]
fn readiness_says_when_the_outbox_cannot_be_written_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, url) = ingest_agent(dir.path(), |_| {});
    let ready = || {
        let (status, body) = http(reqwest::Client::new().get(format!("{url}/readyz")));
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(ready().0, 200, "{}", ready().1);
    // No room left in the file: inputs are refused with 507 ...
    let pages: u64 = std::fs::metadata(agent.outbox().path()).unwrap().len() / 4096 + 2;
    agent.outbox().limit_file_pages(pages).unwrap();
    let big = vec![0u8; 64 << 10];
    let mut status = 0;
    for _ in 0..20 {
        status = post_image(&url, &big).0;
        if status == 507 {
            break;
        }
    }
    assert_eq!(status, 507);
    // ... and readiness says why.
    let (code, body) = ready();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("the outbox cannot be written"), "{body}");
    // Room again: the next write succeeds and readiness comes back.
    agent.outbox().limit_file_pages(1 << 30).unwrap();
    assert_eq!(post_image(&url, &images()[0]).0, 202);
    assert_eq!(ready().0, 200, "{}", ready().1);
    agent.shutdown();
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

#[test]
fn a_crash_at_any_install_step_leaves_one_version_running_and_loses_no_input() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);
    let drop = dir.path().join("drop");
    let key = sluice_bundle::keys::SecretKey::generate();
    with_bundles(&config, &drop, &key);
    let source =
        crate::bundles::write_config(dir.path(), "bundle-src", &crate::bundles::example_table());
    let steps = [
        "staged",
        "verified",
        "validated",
        "recorded",
        "swapped",
        "probation",
        "committing",
    ];
    // One version per round, each above any version a round recorded;
    // then one that commits, then a crash over that committed version.
    let bundles: Vec<PathBuf> = (0..steps.len() + 2)
        .map(|i| crate::bundles::bundle_of(dir.path(), &source, 2 + i as u64, Some(&key)))
        .collect();
    let images = images();
    let mut acked = BTreeSet::new();
    // The agent with `fault`, fed inputs until it dies at that step (or,
    // without one, until `done`); the bundle is then pulled from the folder.
    let round = |acked: &mut BTreeSet<String>,
                 version: usize,
                 fault: Option<&str>,
                 done: &dyn Fn() -> bool| {
        let env = fault.map(|step| ("SLUICE_FAULT_INJECT", format!("install-crash:{step}")));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut agent = Agent::start_with(&config, &env);
        let name = format!("v{version}");
        crate::bundles::drop_into(&drop, &bundles[version], &name);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let died = agent.child.try_wait().unwrap().is_some();
            if died || (fault.is_none() && done()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never reached {fault:?}: {}",
                agent.stderr_text()
            );
            if let Some(id) = ingest(&agent.url, &images[acked.len() % images.len()]) {
                acked.insert(id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::remove_file(drop.join(format!("{name}.bundle"))).unwrap();
        if fault.is_none() {
            assert_eq!(agent.sigterm(), 0);
        } else {
            assert!(agent.child.try_wait().unwrap().is_some(), "{fault:?}");
        }
    };
    for (ix, step) in steps.iter().enumerate() {
        round(&mut acked, ix, Some(step), &|| false);
        let agent = Agent::start(&config);
        acked.extend(check_recovered(dir.path(), &agent, &collector, step));
        assert_eq!(agent.sigterm(), 0);
    }
    let committed = steps.len();
    round(&mut acked, committed, None, &|| {
        install_state(dir.path())["pipelines"]["digits"]["current"]["committed"] == true
    });
    round(&mut acked, committed + 1, Some("swapped"), &|| false);
    let agent = Agent::start(&config);
    acked.extend(check_recovered(
        dir.path(),
        &agent,
        &collector,
        "swapped over a committed version",
    ));
    assert_eq!(
        install_state(dir.path())["pipelines"]["digits"]["current"]["version"],
        2 + committed as u64
    );

    // Every acknowledged input arrives, once (`stored` checks "once").
    let delivered = wait_until(Duration::from_secs(60), || {
        let stored = stored(&collector);
        acked.iter().all(|id| stored.contains_key(id))
    });
    assert!(
        delivered,
        "{} acknowledged, {} stored",
        acked.len(),
        stored(&collector).len()
    );
    // Each crash after the state named a version on probation is reported
    // upstream as a rollback: recorded, swapped, probation, committing, and
    // the crash over the committed version.
    let restarted = wait_until(Duration::from_secs(30), || {
        stored(&collector)
            .values()
            .filter(|r| r["kind"] == "install" && r["outcome"] == "rolled-back")
            .filter(|r| {
                r["reason"]
                    .as_str()
                    .unwrap()
                    .contains("restarted while version")
            })
            .count()
            == 5
    });
    assert!(
        restarted,
        "{:#?}",
        stored(&collector)
            .values()
            .filter(|r| r["kind"] == "install")
            .collect::<Vec<_>>()
    );
    assert_eq!(agent.sigterm(), 0);
}

/// Inputs a previous run left in the journal of `config`'s data dir.
fn journal_digits(config: &sluice_agent::config::Config, n: usize) {
    let outbox =
        sluice_agent::outbox::Outbox::open_in(&config.device.data_dir, config.outbox.clone())
            .unwrap();
    for image in images().into_iter().take(n) {
        outbox
            .accept(&sluice_agent::outbox::NewInput {
                pipeline: "digits".into(),
                content_type: "image/png".into(),
                attributes: Vec::new(),
                data: image,
            })
            .unwrap();
    }
}

#[test]
fn a_request_timeout_within_the_queue_delay_never_starves_journaled_inputs() {
    // The loader refuses this pair, naming both keys; a program building
    // its configuration in code can still run it, and then too every
    // journaled input must be processed, never timed out forever.
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "http://127.0.0.1:9", None);
    let mut config = sluice_agent::config::Config::load(&file).unwrap();
    config.sync = sluice_agent::config::SyncConfig::default();
    config.ingest = sluice_agent::config::IngestConfig::default();
    let batching = &mut config.models.get_mut("digits").unwrap().batching;
    batching.request_timeout_ms = 1;
    batching.max_queue_delay_ms = 2;
    // No sample run at start: what is tested is the journal's inputs.
    config.pipelines.get_mut("digits").unwrap().sample = None;
    journal_digits(&config, 8);
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    let processed = wait_until(Duration::from_secs(30), || {
        agent.outbox().journal_bytes() == 0 && agent.outbox().pending().0 == 8
    });
    let stats = agent
        .runtime()
        .pipeline(Some("digits"))
        .unwrap()
        .scheduler()
        .stats();
    let (journal, pending) = (agent.outbox().journal_bytes(), agent.outbox().pending());
    agent.shutdown();
    assert!(
        processed,
        "journal {journal} bytes, {pending:?} results pending, {} timed out",
        stats.timed_out
    );
    assert_eq!(stats.timed_out, 0);
}

#[test]
fn a_data_volume_too_small_for_the_reserve_and_the_plugin_cache_is_refused_naming_each_part() {
    let Some(disk) = crate::common::SmallDisk::mount(8 << 20) else {
        eprintln!(
            "SKIPPED a_data_volume_too_small_for_the_reserve_and_the_plugin_cache_is_refused_naming_each_part: cannot mount a tmpfs (needs root, as CI runs)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "http://127.0.0.1:9", None);
    let mut config = sluice_agent::config::Config::load(&file).unwrap();
    config.sync = sluice_agent::config::SyncConfig::default();
    config.ingest = sluice_agent::config::IngestConfig::default();
    config.device.data_dir = disk.dir.path().join("data");
    // The compiled plugins go to the data volume, beside the outbox and its
    // 4 MiB reserve.
    config.runtime.cache_dir = None;
    let err = match sluice_agent::agent::Agent::start(config.clone()) {
        Ok(_) => panic!("started on an 8 MiB volume"),
        Err(e) => e.to_string(),
    };
    for needle in [
        "the data volume of",
        "is 8.0 MiB: too small for",
        "the disk reserve (outbox.disk_reserve_bytes) 4.0 MiB",
        "the compiled-plugin cache (",
        "the outbox's working minimum 4.0 MiB",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    // With the cache on another volume and a smaller reserve, it fits.
    std::fs::remove_dir_all(config.cache_dir()).unwrap();
    config.runtime.cache_dir =
        Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent-plugin-cache"));
    config.outbox.disk_reserve_bytes = 1 << 20;
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    agent.shutdown();
}
