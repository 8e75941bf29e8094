//! `sluice demo`: the whole mission on bundled defaults, on one machine.
//!
//! 1. starts the collector (`sluice-collector`, the upstream, a separate
//!    program as in production) on a free loopback port, with its own SQLite
//!    store (from a checkout, `cargo run` builds it first if it is missing);
//! 2. starts the device agent of `examples/digits/sluice.toml` (bundled image
//!    preprocessor -> tract MLP -> bundled classification postprocessor),
//!    syncing to that collector;
//! 3. drops the 450 held-out digit images of `models/digits/heldout/` into
//!    the agent's watched folder;
//! 4. waits until every result is in the outbox and then acknowledged by the
//!    collector, reads the results back from the collector and reports what
//!    was processed, stored and delivered, and the accuracy against the
//!    known labels.
//!
//! The demo works in `<data_dir>/demo/` (inbox, outbox, collector database,
//! results) and starts it empty each time, so runs are comparable and never
//! touch the state of a `sluice run` agent using the same configuration.

use anyhow::{Context, bail};
use sluice_agent::agent::Agent;
use sluice_agent::outbox::counter;
use sluice_protocol::{DeviceCount, DeviceResults, Outcome, ResultRecord, paths};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The demo configuration, relative to the repository root.
const DEMO_CONFIG: &str = "examples/digits/sluice.toml";

/// How long the demo waits for every result to be delivered.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(120);

/// Find the demo configuration: in the working directory, else in the source
/// tree this binary was built from.
fn default_config() -> anyhow::Result<PathBuf> {
    let source_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    [Path::new(".").to_path_buf(), source_root]
        .into_iter()
        .map(|root| root.join(DEMO_CONFIG))
        .find(|p| p.exists())
        .with_context(|| {
            format!("cannot find {DEMO_CONFIG}; run from the repository root or pass --config")
        })
}

/// `sluice demo`.
pub fn run(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    dashboard: bool,
) -> anyhow::Result<()> {
    let config_path = match config {
        Some(path) => path,
        None => default_config()?,
    };
    let mut config = super::load_config(&config_path, data_dir)?;
    let base = config_path.parent().unwrap_or(Path::new("."));
    let heldout = base.join("../../models/digits/heldout");
    let labels = read_labels(&heldout.join("labels.csv"))?;
    let images: Vec<PathBuf> = sluice_agent::ingest::files::list_files(&[heldout.clone()])?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();

    // A fresh device state and upstream for this run; compiled plugins stay
    // cached where the configuration keeps them.
    let work = config.device.data_dir.join("demo");
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("cannot clear {}", work.display()))?;
    }
    let inbox = work.join("inbox");
    std::fs::create_dir_all(&inbox)
        .with_context(|| format!("cannot create {}", inbox.display()))?;
    config.runtime.cache_dir = Some(config.cache_dir());
    config.device.data_dir = work.clone();
    let device = config.device.id.clone();

    let token = config
        .sync
        .bearer_token()?
        .unwrap_or_else(|| "demo-token".into());
    let collector_db = work.join("collector.sqlite");
    // The collector signs its acknowledgements; the device pins the key and
    // deletes nothing on an answer it cannot verify.
    let ack_key = work.join("collector-ack.key");
    let signer = sluice_bundle::keys::SecretKey::generate();
    signer
        .write_new(&ack_key)
        .with_context(|| format!("cannot write {}", ack_key.display()))?;
    let collector = Collector::start(&collector_db, &ack_key, &device, &token)?;
    config.sync.ack_keys = vec![signer.public().to_text()];
    config.sync.url = Some(collector.url.clone());
    config.sync.token = Some(token.clone());
    config.sync.token_file = None;
    config.ingest.folder = Some(inbox.clone());
    config.ingest.folder_pipeline = None;
    config.ingest.listen = None;
    // Inputs arrive as a writer should deliver them: written under a dot
    // name, then renamed, so the agent never reads a half-written file and
    // need not wait for files to settle.
    config.ingest.settle_ms = 0;

    for image in &images {
        let name = image.file_name().unwrap();
        let partial = inbox.join(format!(".{}", name.to_string_lossy()));
        std::fs::copy(image, &partial)
            .with_context(|| format!("cannot copy {}", image.display()))?;
        std::fs::rename(&partial, inbox.join(name))?;
    }

    let tokio = super::tokio_runtime()?;
    let started = Instant::now();
    let agent = Agent::start_on(config, tokio.handle())?;
    let startup = started.elapsed();
    // Like every client of the device toward a collector: no redirects.
    let client = sluice_agent::uplink::http::collector_client(
        Duration::from_secs(10),
        Duration::from_secs(10),
        &Default::default(),
    )?;
    let get = |path: String| {
        let request = client
            .get(format!("{}{path}", collector.url))
            .bearer_auth(&token);
        tokio.block_on(async { request.send().await?.error_for_status()?.bytes().await })
    };
    let count_path = paths::device_count(&device);
    let n = images.len() as u64;
    let (mut processed_after, mut delivered_after) = (None, None);
    loop {
        let status = agent.outbox().status()?;
        let stored = status.counters.get(counter::STORED).copied().unwrap_or(0) as u64;
        if processed_after.is_none() && stored >= n {
            processed_after = Some(started.elapsed());
        }
        let delivered: DeviceCount = serde_json::from_slice(&get(count_path.clone())?)?;
        if delivered_after.is_none() && delivered.count >= n {
            delivered_after = Some(started.elapsed());
        }
        // Done once the device has recorded the collector's acknowledgements.
        if delivered_after.is_some() && status.pending_records == 0 {
            break;
        }
        if started.elapsed() > DELIVERY_DEADLINE {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = agent.outbox().status()?;
    let pipeline = agent.runtime().pipeline(None)?;
    let stats = pipeline.scheduler().stats();
    let choice = pipeline.scheduler().execution().clone();
    let problems: Vec<String> = agent
        .runtime()
        .problems()
        .iter()
        .map(|p| p.to_string())
        .collect();
    agent.shutdown();

    let results: DeviceResults<ResultRecord> = serde_json::from_slice(&get(format!(
        "{}?limit=10000",
        paths::device_results(&device)
    ))?)?;
    let results = results.results;

    let results_path = work.join("results.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&results_path)?);
    let (mut ok, mut correct) = (0, 0);
    for record in &results {
        if let Outcome::Result(result) = &record.outcome {
            ok += 1;
            let label = record
                .input
                .attributes
                .get("file")
                .and_then(|file| labels.get(file));
            correct += usize::from(label.is_some_and(|l| result.body["label"] == *l));
        }
        serde_json::to_writer(&mut out, record)?;
        writeln!(out)?;
    }
    out.flush()?;

    let ms = |d: Option<Duration>| {
        d.map_or("not within the deadline".to_owned(), |d| {
            format!("{:.0} ms", d.as_secs_f64() * 1e3)
        })
    };
    let count = |name: &str| status.counters.get(name).copied().unwrap_or(0);
    println!("Sluice demo: digits pipeline ({})", config_path.display());
    println!(
        "  inputs:      {n} PNG images dropped into the watched folder {}",
        inbox.display()
    );
    println!(
        "  start-up:    {:.0} ms (plugins compiled or loaded from the cache; model planned, its execution measured or remembered)",
        startup.as_secs_f64() * 1e3
    );
    println!(
        "  processed:   {} results in the outbox after {}",
        count(counter::STORED),
        ms(processed_after)
    );
    println!(
        "  execution:   chunks of up to {} item(s) on {} thread(s), chosen by measurement",
        choice.chunk, choice.threads
    );
    println!(
        "  batches:     {} ({:?})",
        stats.batches,
        stats
            .batch_size_histogram
            .iter()
            .filter(|(_, c)| *c > 0)
            .collect::<Vec<_>>()
    );
    println!(
        "  delivered:   {} results acknowledged by the collector at {} after {} (answers signed by its key {}, checked by the device)",
        count(counter::UPLOADED),
        collector_db.display(),
        ms(delivered_after),
        signer.public().id()
    );
    println!(
        "  pending:     {} results left in the outbox {}",
        status.pending_records,
        status.path.display()
    );
    println!(
        "  upstream:    {} results stored for device `{device}`, one per input",
        results.len()
    );
    println!(
        "  accuracy:    {:.4} ({correct}/{} match labels.csv; {ok} succeeded)",
        correct as f64 / n.max(1) as f64,
        n
    );
    println!("  results:     {}", results_path.display());
    for problem in &problems {
        println!("  problem:     {problem}");
    }
    if dashboard {
        // Listen for Ctrl-C before saying so: a Ctrl-C between the two
        // would otherwise kill the demo instead of stopping it.
        #[cfg(unix)]
        let mut interrupt = {
            let _runtime = tokio.enter();
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?
        };
        println!(
            "  fleet view:  {}/dashboard?token={} (serving until Ctrl-C)",
            collector.url, collector.operator_token
        );
        use std::io::Write as _;
        std::io::stdout().flush()?;
        #[cfg(unix)]
        tokio.block_on(interrupt.recv());
        #[cfg(not(unix))]
        tokio.block_on(tokio::signal::ctrl_c())?;
    } else {
        println!(
            "  fleet view:  `sluice demo --dashboard` keeps the collector and its dashboard up"
        );
    }
    collector.stop();
    anyhow::ensure!(
        results.len() as u64 == n,
        "{} of {n} results reached the collector; see `sluice outbox status`",
        results.len()
    );
    anyhow::ensure!(
        ok as u64 == n,
        "{} item(s) failed; see {}",
        n - ok as u64,
        results_path.display()
    );
    Ok(())
}

/// `file,label` lines into a map.
fn read_labels(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(','))
        .map(|(file, label)| (file.trim().to_owned(), label.trim().to_owned()))
        .collect())
}

/// The demo's upstream: a `sluice-collector` process.
struct Collector {
    child: Child,
    url: String,
    /// Opens its dashboard (random per run).
    operator_token: String,
}

impl Collector {
    /// Start `sluice-collector` on a free loopback port for `device`.
    fn start(db: &Path, ack_key: &Path, device: &str, token: &str) -> anyhow::Result<Collector> {
        let program = collector_program()?;
        let operator_token = format!("{:032x}", rand::random::<u128>());
        let mut child = Command::new(&program)
            .args(["--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            .arg("--ack-key")
            .arg(ack_key)
            .arg("--token")
            .arg(format!("{device}={token}"))
            .arg("--operator-token")
            .arg(&operator_token)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut collector = Collector {
            child,
            url: String::new(),
            operator_token,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .context("sluice-collector did not start within 30 s")?;
        collector.url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .map(|w| w.trim_end_matches(',').to_owned())
            .with_context(|| {
                format!(
                    "sluice-collector said `{}`, not where it listens",
                    line.trim()
                )
            })?;
        Ok(collector)
    }

    /// SIGTERM, and wait (bounded) for it to finish its requests.
    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        #[cfg(unix)]
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Where `sluice-collector` is: `$SLUICE_COLLECTOR`, beside this binary, or
/// (when run by `cargo run` from a checkout) built now with cargo; else on
/// the `PATH`.
fn collector_program() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_COLLECTOR") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let beside = exe.with_file_name(format!("sluice-collector{}", std::env::consts::EXE_SUFFIX));
    // `cargo run` sets CARGO and CARGO_MANIFEST_DIR for the program it runs.
    // From a checkout the collector is built every time (a no-op when it is
    // up to date): one left beside this binary by an older checkout would
    // not speak this demo's protocol.
    if let (Some(cargo), Some(manifest_dir)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) {
        if !beside.exists() {
            eprintln!("sluice demo: building sluice-collector, the demo's upstream (once)");
        }
        let mut build = Command::new(cargo);
        // `cargo run` describes our package to us in CARGO_PKG_*,
        // CARGO_MANIFEST_* and the like. A build script that watches one of
        // them (ring's does) would see it change between this nested build
        // and the user's next `cargo` command, and both would rebuild it and
        // everything above it (rustls, reqwest, ...).
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            {
                build.env_remove(&*name);
            }
        }
        build.current_dir(manifest_dir).args([
            "build",
            "--quiet",
            "-p",
            "sluice-collector",
            "--bin",
            "sluice-collector",
        ]);
        if exe
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|d| d == "release")
        {
            build.arg("--release");
        }
        let status = build.status().context("cannot run cargo")?;
        if !status.success() || !beside.exists() {
            bail!("building sluice-collector failed (try `cargo build -p sluice-collector`)");
        }
        return Ok(beside);
    }
    if beside.exists() {
        return Ok(beside);
    }
    Ok(PathBuf::from("sluice-collector"))
}
