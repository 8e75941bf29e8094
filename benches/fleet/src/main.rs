//! `sluice-fleet-bench`: the upstream tier under a fleet's load, and
//! through its faults.
//!
//! Starts a real PostgreSQL (fsync on) and a real mosquitto, two
//! `sluice-collector` processes on that database (and on the broker's
//! shared subscription), then simulates N devices in this one process,
//! each with its own token, sending realistic result batches in a closed
//! loop (one batch in flight per device, the next when it is
//! acknowledged), over HTTP (device i to collector i mod 2, as a load
//! balancer would) or through the broker. For each transport and device
//! count it reports sustained results/s, acknowledgement latency (p50,
//! p99), the CPU seconds of the collectors, PostgreSQL, the broker and
//! the simulator.
//!
//! Then the fault phase: devices over both transports at once while a
//! collector is SIGKILLed and restarted, the broker restarted, PostgreSQL
//! crashed (`-m immediate`) and restarted, and the other collector
//! SIGKILLed; each fault's longest stall of acknowledgements is reported.
//!
//! At the end, the per-id check ([`exactly_once`]): every result each
//! device had acknowledged is stored once under its id, nothing else is.
//! A violation fails the program (exit 1).
//!
//! Prints one JSON object per run on stdout (and the check);
//! `benches/fleet.sh` turns them into BENCHMARKS.md's section.

mod devices;
mod exactly_once;
mod upstream;

use anyhow::{Context, bail, ensure};
use clap::Parser;
use devices::{Ledger, Run};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use upstream::{Collector, Collectors, cpu_seconds};

#[derive(Parser)]
#[command(
    about = "Load test of the collector tier: simulated devices, two collectors, PostgreSQL, mosquitto, and their faults"
)]
struct Cli {
    /// The `sluice-collector` binary (a release build).
    #[arg(long)]
    collector: PathBuf,
    /// Device counts to run over HTTP, in order.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    devices: Vec<usize>,
    /// Device counts to run through MQTT, in order.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    mqtt_devices: Vec<usize>,
    /// Transports to run: http, mqtt.
    #[arg(long, value_delimiter = ',', default_value = "http,mqtt")]
    transports: Vec<String>,
    /// Seconds each run sends for (after a warm-up of 2 s).
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Results per batch (a device uploading every few seconds).
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Batches each collector works on at once.
    #[arg(long, default_value_t = 32)]
    concurrent_batches: usize,
    /// PostgreSQL connections per collector.
    #[arg(long, default_value_t = 12)]
    pool: u32,
    /// Seconds of the fault phase (0: none); its four faults are spread
    /// over its first two thirds.
    #[arg(long, default_value_t = 45)]
    fault_seconds: u64,
    /// Devices per transport in the fault phase.
    #[arg(long, default_value_t = 50)]
    fault_devices: usize,
    /// Devices per transport in the sharing run (0: none): as many over
    /// HTTP as through MQTT at once, each transport's throughput counted
    /// apart, to compare with the same number alone.
    #[arg(long, default_value_t = 100)]
    shared_devices: usize,
    /// In the sharing runs, the pace of the paced devices: one batch per
    /// this many ms each (100 devices at 1000 ms: 5,000 results/s offered).
    #[arg(long, default_value_t = 1000)]
    paced_ms: u64,
}

/// Longest a device may take to finish its batch in flight once told to
/// stop: past it the device counts as unfinished.
const DRAIN: Duration = Duration::from_secs(120);

/// Everything the runs share.
struct Bench {
    cli: Cli,
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    ledgers: Vec<Arc<Ledger>>,
    pg: sluice_testkit::Postgres,
    broker: sluice_testkit::Mosquitto,
    upstream: Collectors,
    collectors: Vec<Collector>,
}

impl Bench {
    /// Start device `i` over `transport` in `run`.
    fn spawn(
        &self,
        transport: &str,
        i: usize,
        run: &Arc<Run>,
    ) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let (ledger, run) = (self.ledgers[i].clone(), run.clone());
        match transport {
            "http" => self.runtime.spawn(devices::http_device(
                i,
                self.collectors[i % 2].url(),
                self.http.clone(),
                self.cli.batch,
                ledger,
                run,
            )),
            _ => self.runtime.spawn(devices::mqtt_device(
                i,
                self.broker.url(),
                self.broker.password(&devices::device(i)),
                self.cli.batch,
                ledger,
                run,
            )),
        }
    }

    /// Wait until `n` MQTT devices are subscribed (at most 90 s).
    fn wait_subscribed(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while devices::READY.load(Ordering::SeqCst) < n as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        devices::READY.store(0, Ordering::SeqCst);
    }

    /// Tell `run`'s devices to stop and wait for each to finish its batch
    /// in flight (at most [`DRAIN`] in all): how many could not.
    fn stop(
        &self,
        run: &Run,
        tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    ) -> anyhow::Result<usize> {
        run.stop.store(true, Ordering::SeqCst);
        let mut unfinished = 0;
        let deadline = Instant::now() + DRAIN;
        for task in tasks {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .runtime
                .block_on(async { tokio::time::timeout(left, task).await })
            {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => bail!("{e:#}"),
                _ => unfinished += 1,
            }
        }
        Ok(unfinished)
    }

    fn cpu(&self) -> [f64; 4] {
        let collectors: Vec<u32> = self.collectors.iter().map(Collector::pid).collect();
        [
            cpu_seconds(&collectors),
            cpu_seconds(&[self.pg.pid().unwrap_or(0)]),
            cpu_seconds(&[self.broker.pid().unwrap_or(0)]),
            cpu_seconds(&[std::process::id()]),
        ]
    }

    /// One measured run: `n` devices over `transport`.
    fn measure(&self, transport: &str, n: usize) -> anyhow::Result<serde_json::Value> {
        Ok(self
            .measure_groups(&[(transport, 0..n, transport, None)])?
            .remove(0))
    }

    /// One measured run of several groups of devices at once, each
    /// `(transport, device indexes, label, pace)`, counted apart: one line
    /// each.
    fn measure_groups(
        &self,
        groups: &[(&str, std::ops::Range<usize>, &str, Option<Duration>)],
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut running = Vec::new();
        for (transport, devices, _, pace) in groups {
            let run = Arc::new(Run {
                pace: *pace,
                ..Run::default()
            });
            let tasks: Vec<_> = devices
                .clone()
                .map(|i| self.spawn(transport, i, &run))
                .collect();
            running.push((run, tasks));
        }
        // Warm-up: every device connected (MQTT), then 2 s.
        let mqtt: usize = groups
            .iter()
            .filter(|g| g.0 == "mqtt")
            .map(|g| g.1.len())
            .sum();
        if mqtt > 0 {
            self.wait_subscribed(mqtt);
        }
        std::thread::sleep(Duration::from_secs(2));
        let before = self.cpu();
        for (run, _) in &running {
            run.measuring.store(true, Ordering::SeqCst);
        }
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(self.cli.seconds));
        for (run, _) in &running {
            run.measuring.store(false, Ordering::SeqCst);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let after = self.cpu();
        let cpu = |k: usize| (after[k] - before[k]) / elapsed;
        let mut lines = Vec::new();
        for ((run, tasks), (_, devices, label, _)) in running.into_iter().zip(groups) {
            let unfinished = self.stop(&run, tasks)?;
            let mut latencies = std::mem::take(&mut *run.latencies_us.lock().unwrap());
            latencies.sort_unstable();
            let results = run.results.load(Ordering::Relaxed);
            lines.push(serde_json::json!({
                "transport": label,
                "devices": devices.len(),
                "seconds": elapsed,
                "results_per_s": results as f64 / elapsed,
                "batches": run.batches.load(Ordering::Relaxed),
                "batch_results": self.cli.batch,
                "ack_p50_ms": percentile(&latencies, 0.50),
                "ack_p99_ms": percentile(&latencies, 0.99),
                "busy_503": run.busy.load(Ordering::Relaxed),
                "errors": run.errors.load(Ordering::Relaxed),
                "unfinished": unfinished,
                "cpu_collectors": cpu(0),
                "cpu_postgres": cpu(1),
                "cpu_broker": cpu(2),
                "cpu_simulator": cpu(3),
                "mqtt_published": devices::PUBLISHED.load(Ordering::Relaxed),
                "mqtt_answers": devices::RECEIVED.load(Ordering::Relaxed),
                "mqtt_unmatched": devices::UNMATCHED.load(Ordering::Relaxed),
            }));
        }
        Ok(lines)
    }

    /// Kill collector `k` (SIGKILL) and start it again on its port.
    fn restart_collector(&mut self, k: usize) -> anyhow::Result<()> {
        let port = self.collectors[k].port();
        self.collectors[k].kill();
        self.collectors[k] = self.upstream.start(port)?;
        Ok(())
    }

    /// The fault phase: `fault_devices` devices over each transport at
    /// once, four faults, then every device finishes its batch.
    fn faults(&mut self) -> anyhow::Result<serde_json::Value> {
        let k = self.cli.fault_devices;
        let run = Arc::new(Run::default());
        let mut tasks: Vec<_> = (0..k).map(|i| self.spawn("http", i, &run)).collect();
        tasks.extend((k..2 * k).map(|i| self.spawn("mqtt", i, &run)));
        self.wait_subscribed(k);
        let phase = Duration::from_secs(self.cli.fault_seconds);
        let started = Instant::now();
        // Acknowledged results every 50 ms, on a thread of its own (a
        // fault blocks this one), to see how long each fault stalled the
        // fleet.
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = std::thread::spawn({
            let sampling = sampling.clone();
            move || {
                let mut samples = Vec::new();
                while sampling.load(Ordering::SeqCst) {
                    let acked = devices::ACKED.load(Ordering::Relaxed);
                    samples.push((started.elapsed().as_secs_f64(), acked));
                    std::thread::sleep(Duration::from_millis(50));
                }
                samples
            }
        });
        type Fault = fn(&mut Bench) -> anyhow::Result<()>;
        let schedule: [(&str, Fault); 4] = [
            ("collector 1 SIGKILLed and restarted", |b| {
                b.restart_collector(0)
            }),
            (
                "mosquitto SIGKILLed and restarted (sessions and queued messages lost)",
                |b| {
                    b.broker.restart();
                    Ok(())
                },
            ),
            (
                "PostgreSQL crashed (pg_ctl stop -m immediate) and restarted",
                |b| {
                    b.pg.crash_and_restart();
                    Ok(())
                },
            ),
            ("collector 2 SIGKILLed and restarted", |b| {
                b.restart_collector(1)
            }),
        ];
        let mut done = Vec::new();
        for (n, (what, fault)) in schedule.into_iter().enumerate() {
            std::thread::sleep((phase * (n as u32 + 1) / 6).saturating_sub(started.elapsed()));
            let began = started.elapsed().as_secs_f64();
            eprintln!("fault phase, {began:.1} s: {what}");
            fault(self).with_context(|| what.to_owned())?;
            done.push((what, began, started.elapsed().as_secs_f64()));
        }
        std::thread::sleep(phase.saturating_sub(started.elapsed()));
        let unfinished = self.stop(&run, tasks)?;
        sampling.store(false, Ordering::SeqCst);
        let samples = sampler.join().expect("the sampler");
        let faults: Vec<serde_json::Value> = done
            .iter()
            .enumerate()
            .map(|(n, (what, at, back))| {
                let until = done.get(n + 1).map_or(phase.as_secs_f64(), |next| next.1);
                serde_json::json!({
                    "fault": what,
                    "at_s": at,
                    "took_s": back - at,
                    "longest_stall_s": longest_stall(&samples, *at, until),
                })
            })
            .collect();
        Ok(serde_json::json!({
            "phase": "faults",
            "devices_http": k,
            "devices_mqtt": k,
            "seconds": started.elapsed().as_secs_f64(),
            "acknowledged": devices::ACKED.load(Ordering::Relaxed),
            "busy": run.busy.load(Ordering::Relaxed),
            "errors": run.errors.load(Ordering::Relaxed),
            "unfinished": unfinished,
            "faults": faults,
        }))
    }
}

/// The longest time acknowledgements stood still, in seconds, among
/// `samples` (seconds, acknowledged so far) in a stretch that overlaps
/// `from..until`.
fn longest_stall(samples: &[(f64, u64)], from: f64, until: f64) -> f64 {
    let mut longest: f64 = 0.0;
    let mut start = 0;
    for i in 1..=samples.len() {
        if i == samples.len() || samples[i].1 != samples[start].1 {
            let (still_from, still_until) = (samples[start].0, samples[i - 1].0);
            if still_until >= from && still_from < until {
                longest = longest.max(still_until - still_from);
            }
            start = i;
        }
    }
    longest
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let ix = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[ix] as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let max_devices = cli
        .devices
        .iter()
        .chain(&cli.mqtt_devices)
        .copied()
        .chain([2 * cli.fault_devices * usize::from(cli.fault_seconds > 0)])
        .chain([2 * cli.shared_devices])
        .max()
        .unwrap_or(0);
    ensure!(max_devices > 0, "no devices");
    let dir = std::env::temp_dir().join(format!("sluice-fleet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        (0..max_devices)
            .map(|i| format!("{}={}\n", devices::device(i), devices::token(i)))
            .collect::<String>(),
    )?;
    let pg = sluice_testkit::Postgres::start(true).map_err(|m| anyhow::anyhow!("{m}"))?;
    // The shipped broker setup (deploy/mosquitto/): an account per device,
    // bound to its topics and client id; the collectors' account alone on
    // the shared subscription.
    let names: Vec<String> = (0..max_devices).map(devices::device).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let broker = sluice_testkit::Mosquitto::shipped(&names, &["collector"])
        .map_err(|m| anyhow::anyhow!("{m}"))?;
    // The collectors sign their answers; the devices check the signature.
    let ack_key = dir.join("ack.key");
    let signer = sluice_protocol::keys::SecretKey::generate();
    signer.write_new(&ack_key)?;
    devices::ACK_KEY
        .set(signer.public())
        .map_err(|_| anyhow::anyhow!("one bench per process"))?;
    let upstream = Collectors {
        bin: cli.collector.clone(),
        db: pg.database("fleet"),
        tokens,
        ack_key,
        mqtt_password_file: broker.password_file("collector"),
        broker: broker.url(),
        concurrent_batches: cli.concurrent_batches,
        pool: cli.pool,
    };
    let collectors = vec![
        upstream.start(sluice_testkit::free_port())?,
        upstream.start(sluice_testkit::free_port())?,
    ];
    let mut bench = Bench {
        runtime: tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(max_devices)
            .timeout(Duration::from_secs(60))
            .build()?,
        ledgers: (0..max_devices).map(|_| Arc::default()).collect(),
        cli,
        pg,
        broker,
        upstream,
        collectors,
    };
    let runs: Vec<(String, usize)> = bench
        .cli
        .transports
        .iter()
        .flat_map(|t| {
            let counts = if t == "mqtt" {
                &bench.cli.mqtt_devices
            } else {
                &bench.cli.devices
            };
            counts.iter().map(|&n| (t.clone(), n))
        })
        .collect();
    for (transport, n) in runs {
        let line = bench.measure(&transport, n)?;
        println!("{line}");
        eprintln!("{line}");
    }
    let n = bench.cli.shared_devices;
    if n > 0 {
        // Both saturating; then each transport's devices at a real
        // device's pace, alone and beside the other's saturating ones.
        let pace = Some(Duration::from_millis(bench.cli.paced_ms));
        let runs: [&[(&str, std::ops::Range<usize>, &str, Option<Duration>)]; 5] = [
            &[
                ("http", 0..n, "http beside mqtt", None),
                ("mqtt", n..2 * n, "mqtt beside http", None),
            ],
            &[("http", 0..n, "http paced", pace)],
            &[
                ("http", 0..n, "http paced beside mqtt", pace),
                ("mqtt", n..2 * n, "mqtt beside http paced", None),
            ],
            &[("mqtt", n..2 * n, "mqtt paced", pace)],
            &[
                ("mqtt", n..2 * n, "mqtt paced beside http", pace),
                ("http", 0..n, "http beside mqtt paced", None),
            ],
        ];
        for groups in runs {
            for line in bench.measure_groups(groups)? {
                println!("{line}");
                eprintln!("{line}");
            }
        }
    }
    let mut unfinished = 0;
    if bench.cli.fault_seconds > 0 {
        let line = bench.faults()?;
        unfinished = line["unfinished"].as_u64().unwrap_or(0);
        println!("{line}");
        eprintln!("{line}");
    }
    let verdict = exactly_once::check(&bench.pg, "fleet", &bench.ledgers);
    let mut check = serde_json::to_value(&verdict)?;
    check["check"] = "exactly-once".into();
    check["replayed_batches"] = devices::REPLAYED.load(Ordering::Relaxed).into();
    println!("{check}");
    eprintln!("{check}");
    ensure!(verdict.holds(), "exactly-once violated: {verdict:?}");
    ensure!(
        unfinished == 0,
        "{unfinished} devices could not finish their batch within {DRAIN:?} after the faults"
    );
    drop(bench);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
