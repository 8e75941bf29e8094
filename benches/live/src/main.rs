//! `sluice-live-bench`: latency on the device under a steady stream.
//!
//! For each way in (`mqtt`: sensors publish
//! to the local broker and the results come back through it; `http`: a
//! synchronous call answered with the result), each rate and each round,
//! the two sides one after the other (alternating which goes first):
//! each with a real mosquitto of its own:
//! `sluice run` with `examples/mqtt/sluice.toml` (ports and data folder
//! moved), and the Python peer `benches/peer/live.py` (paho-mqtt,
//! onnxruntime, SQLite; the same journal-then-acknowledge and
//! store-then-answer discipline). Each side starts fresh, is warmed up
//! (100 inputs, not counted), then gets `rate` inputs a second for
//! `seconds` seconds, open loop. Prints one JSON object per run: sent,
//! received, p50/p99/max latency from each input's due time to its result,
//! the rate achieved, the side's CPU time per input and its peak RSS.
//! `benches/live.sh` turns them into BENCHMARKS.md's section.

mod load;

use anyhow::{Context, bail};
use clap::Parser;
use load::Measured;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    /// The `sluice` binary (a release build).
    #[arg(long)]
    sluice: PathBuf,
    /// The peer's Python (with benches/peer/requirements.txt).
    #[arg(long)]
    python: PathBuf,
    /// Rates, inputs per second.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    rates: Vec<u32>,
    /// Ways in: mqtt, http.
    #[arg(long, value_delimiter = ',', default_value = "mqtt,http")]
    modes: Vec<String>,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Rounds per mode and rate (the sides alternate which goes first).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// The sides to run: sluice, peer.
    #[arg(long, value_delimiter = ',', default_value = "sluice,peer")]
    sides: Vec<String>,
    /// Where the sides keep their state (and Sluice its compiled plugins).
    #[arg(long)]
    work_dir: PathBuf,
}

/// The repository's root (this crate is benches/live).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running side.
struct Side {
    child: Child,
    http_port: u16,
}

impl Drop for Side {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
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

/// `sluice run` on the example, its ports and folders moved.
fn start_sluice(cli: &Cli, broker: u16, dir: &Path) -> anyhow::Result<Side> {
    let root = std::fs::canonicalize(repo())?;
    let http_port = sluice_testkit::free_port();
    let text = std::fs::read_to_string(root.join("examples/mqtt/sluice.toml"))?
        .replace("127.0.0.1:1883", &format!("127.0.0.1:{broker}"))
        .replace("127.0.0.1:8470", &format!("127.0.0.1:{http_port}"))
        .replace(
            "../../target/sluice-mqtt",
            &dir.join("data").display().to_string(),
        )
        .replace("../../", &format!("{}/", root.display()));
    let cache = cli.work_dir.join("sluice-cache");
    let text = text.replace(
        "[device]\n",
        &format!(
            "[runtime]\ncache_dir = {:?}\n\n[device]\n",
            cache.display().to_string()
        ),
    );
    let config = dir.join("sluice.toml");
    std::fs::write(&config, text)?;
    let child = Command::new(&cli.sluice)
        .args(["--log", "warn", "run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(if std::env::var("SLUICE_TIMING").is_ok() {
            Stdio::from(std::fs::File::create(dir.join("stderr"))?)
        } else {
            Stdio::inherit()
        })
        .spawn()
        .context("start sluice run")?;
    let side = Side { child, http_port };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if answers_200(http_port, "/readyz") {
            return Ok(side);
        }
        if Instant::now() > deadline {
            bail!("sluice run was not ready within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The Python peer, ready once it says so.
fn start_peer(cli: &Cli, broker: u16, dir: &Path) -> anyhow::Result<Side> {
    let http_port = sluice_testkit::free_port();
    let mut child = Command::new(&cli.python)
        .arg(repo().join("benches/peer/live.py"))
        .args([
            "--broker-port",
            &broker.to_string(),
            "--http-port",
            &http_port.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("start the peer")?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let side = Side { child, http_port };
    match lines.next() {
        Some(Ok(line)) if line.trim() == "ready" => Ok(side),
        other => bail!("the peer did not start: {other:?}"),
    }
}

/// Whether `GET path` on the loopback `port` is answered 200.
fn answers_200(port: u16, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = [0u8; 12];
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && answer.ends_with(b" 200")
}

/// Sluice's own p50/p99 per stage (`sluice_stage_latency_p50_seconds`...,
/// `sluice_consumer_latency_p99_seconds`...), in ms, from its `/metrics`.
fn stage_quantiles(port: u16) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut text = String::new();
    if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(
            stream,
            "GET /metrics HTTP/1.0\r\nAccept: text/plain\r\n\r\n"
        );
        let _ = stream.read_to_string(&mut text);
    }
    let mut stages = serde_json::Map::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let (family, q) = match name.strip_prefix("sluice_") {
            Some("stage_latency_p50_seconds") => ("stage", "p50"),
            Some("stage_latency_p99_seconds") => ("stage", "p99"),
            Some("consumer_latency_p50_seconds") => ("consumer", "p50"),
            Some("consumer_latency_p99_seconds") => ("consumer", "p99"),
            _ => continue,
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
        };
        let stage = match family {
            "stage" => label("stage"),
            _ => label("consumer").map(|c| format!("to consumer {c}")),
        };
        let (Some(stage), Ok(v)) = (stage, value.trim().parse::<f64>()) else {
            continue;
        };
        stages.insert(format!("{stage} {q}"), (v * 1000.0).into());
    }
    stages.into()
}

/// User and system CPU time of `pid`, and its peak RSS in MiB.
fn usage(pid: u32) -> (Duration, f64) {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some(Duration::from_secs_f64((user + system) / ticks))
        })
        .unwrap_or_default();
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0);
    (cpu, rss)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.work_dir)?;
    let images: Vec<Vec<u8>> = {
        let dir = repo().join("models/digits/heldout");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        names.sort();
        names.iter().map(std::fs::read).collect::<Result<_, _>>()?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut run = 0;
    for mode in &cli.modes {
        for &rate in &cli.rates {
            for round in 0..cli.rounds {
                let sides = if round % 2 == 0 {
                    ["sluice", "peer"]
                } else {
                    ["peer", "sluice"]
                };
                for side_name in sides
                    .into_iter()
                    .filter(|s| cli.sides.iter().any(|c| c == s))
                {
                    run += 1;
                    // A broker of its own: Sluice's session (kept by the broker
                    // across restarts, as it must be) would otherwise be sent
                    // what the run before published while it was away.
                    let broker =
                        sluice_testkit::Mosquitto::start().map_err(|e| anyhow::anyhow!("{e}"))?;
                    let dir = cli.work_dir.join(format!("run-{run}"));
                    let _ = std::fs::remove_dir_all(&dir);
                    std::fs::create_dir_all(&dir)?;
                    let side = match side_name {
                        "sluice" => start_sluice(&cli, broker.port(), &dir)?,
                        _ => start_peer(&cli, broker.port(), &dir)?,
                    };
                    let measure = |rate: u32, seconds: u32| -> anyhow::Result<Measured> {
                        runtime.block_on(async {
                            match mode.as_str() {
                                "mqtt" => load::mqtt(broker.port(), &images, rate, seconds).await,
                                "http" => {
                                    let url = format!(
                                        "http://127.0.0.1:{}/v1/infer/digits",
                                        side.http_port
                                    );
                                    load::http(&url, &images, rate, seconds).await
                                }
                                other => bail!("unknown mode {other}"),
                            }
                        })
                    };
                    measure(100, 1).context("warming up")?;
                    std::thread::sleep(Duration::from_millis(500));
                    let (cpu_before, _) = usage(side.child.id());
                    let mut measured = measure(rate, cli.seconds)?;
                    let (cpu_after, rss) = usage(side.child.id());
                    let stages = (side_name == "sluice").then(|| stage_quantiles(side.http_port));
                    drop(side);
                    measured.latencies.sort();
                    let received = measured.latencies.len();
                    let ms = |q| load::quantile_ms(&measured.latencies, q);
                    println!(
                        "{}",
                        serde_json::json!({
                            "mode": mode, "side": side_name, "rate": rate, "round": round,
                            "seconds": cli.seconds, "sent": measured.sent, "received": received,
                            "lost": measured.sent - received,
                            "p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": ms(1.0),
                            "achieved_per_s": received as f64 / measured.seconds.max(1e-9),
                            "cpu_ms_per_input": (cpu_after - cpu_before).as_secs_f64() * 1000.0 / received.max(1) as f64,
                            "peak_rss_mib": rss,
                            "stages_ms": stages,
                        })
                    );
                }
            }
        }
    }
    Ok(())
}
