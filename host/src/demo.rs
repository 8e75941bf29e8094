//! `sluice demo`: the whole mission on bundled defaults, on one machine.
//!
//! 1. starts an embedded collector (the upstream) on a free loopback port;
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

use crate::agent::Agent;
use crate::collector::{Collector, Tokens};
use crate::config::Config;
use crate::outbox::counter;
use anyhow::Context;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
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

pub fn run(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let config_path = match config {
        Some(path) => path,
        None => default_config()?,
    };
    let mut config = Config::load(&config_path)?;
    if let Some(dir) = data_dir {
        config.device.data_dir = dir;
    }
    let base = config_path.parent().unwrap_or(Path::new("."));
    let heldout = base.join("../../models/digits/heldout");
    let labels = read_labels(&heldout.join("labels.csv"))?;
    let images: Vec<PathBuf> = crate::ingest::list_files(&[heldout.clone()])?
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
    let mut tokens = Tokens::default();
    tokens.insert(&device, &token);
    let collector_db = work.join("collector.sqlite");
    let collector = Collector::start(
        std::net::TcpListener::bind("127.0.0.1:0")?,
        &collector_db,
        tokens,
    )?;
    config.sync.url = Some(collector.url());
    config.sync.token = Some(token.clone());
    config.sync.token_file = None;
    config.ingest.folder = Some(inbox.clone());
    config.ingest.folder_pipeline = None;
    config.ingest.listen = None;

    // Inputs arrive as a writer should deliver them: written under a dot
    // name, then renamed, so the agent never reads a half-written file.
    for image in &images {
        let name = image.file_name().unwrap();
        let partial = inbox.join(format!(".{}", name.to_string_lossy()));
        std::fs::copy(image, &partial)
            .with_context(|| format!("cannot copy {}", image.display()))?;
        std::fs::rename(&partial, inbox.join(name))?;
    }

    let started = Instant::now();
    let agent = Agent::start(config)?;
    let startup = started.elapsed();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let count_url = format!("{}/v1/devices/{device}/count", collector.url());
    let n = images.len() as u64;
    let (mut processed_after, mut delivered_after) = (None, None);
    loop {
        let status = agent.outbox().status()?;
        let stored = status.counters.get(counter::STORED).copied().unwrap_or(0) as u64;
        if processed_after.is_none() && stored >= n {
            processed_after = Some(started.elapsed());
        }
        let delivered: serde_json::Value = client
            .get(&count_url)
            .bearer_auth(&token)
            .send()?
            .error_for_status()?
            .json()?;
        if delivered_after.is_none() && delivered["count"].as_u64().unwrap_or(0) >= n {
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
    let stats = agent.runtime().pipeline(None)?.scheduler.stats();
    let choice = agent
        .runtime()
        .pipeline(None)?
        .scheduler
        .execution()
        .clone();
    let problems = agent.runtime().problems.clone();
    agent.shutdown();

    let results: serde_json::Value = client
        .get(format!(
            "{}/v1/devices/{device}/results?limit=10000",
            collector.url()
        ))
        .bearer_auth(&token)
        .send()?
        .error_for_status()?
        .json()?;
    let results = results["results"].as_array().cloned().unwrap_or_default();
    collector.shutdown();

    let results_path = work.join("results.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&results_path)?);
    let (mut ok, mut correct) = (0, 0);
    for doc in &results {
        if doc.get("result").is_some() {
            ok += 1;
            let file = doc["input"]["attributes"]["file"]
                .as_str()
                .unwrap_or_default();
            correct += usize::from(
                labels
                    .get(file)
                    .is_some_and(|l| doc["result"]["body"]["label"] == *l),
            );
        }
        writeln!(out, "{doc}")?;
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
        "  delivered:   {} results acknowledged by the collector at {} after {}",
        count(counter::UPLOADED),
        collector_db.display(),
        ms(delivered_after)
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
