//! Embedding Sluice in your own daemon (see docs/embedding.md).
//!
//! `cargo run -p sluice-embed-example [CONFIG [PIPELINE [FILES...]]]`: starts
//! the device runtime on a configuration (default: the digits example),
//! feeds it files as inputs, waits for their results and prints one line per
//! input, then stops. The inputs are journaled before `accept` returns and
//! their results kept in the outbox, exactly as under `sluice run`: a crash
//! at any point loses nothing, and a restart on the same data directory
//! finishes what was accepted.

use anyhow::{Context, bail};
use sluice_agent::agent::Agent;
use sluice_agent::config::Config;
use sluice_agent::outbox::NewInput;
use sluice_protocol::Outcome;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the example waits for all results before it gives up.
const WAIT: Duration = Duration::from_secs(120);

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut args = std::env::args().skip(1);
    let config_path = args
        .next()
        .map_or_else(|| root.join("examples/digits/sluice.toml"), PathBuf::from);
    let pipeline = args.next().unwrap_or_else(|| "digits".to_owned());
    let mut files: Vec<PathBuf> = args.map(PathBuf::from).collect();
    if files.is_empty() {
        let heldout = root.join("models/digits/heldout");
        files = (0..20)
            .map(|i| heldout.join(format!("{i:04}.png")))
            .collect();
    }

    // 1. Start: a configuration as `sluice run` reads it. The state (journal,
    //    outbox, compiled plugins) goes wherever `device.data_dir` says;
    //    here a temporary folder, so that the example leaves nothing behind.
    let mut config =
        Config::load(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let data = tempfile::tempdir()?;
    config.device.data_dir = data.path().to_owned();
    let agent = Agent::start(config).context("starting the agent")?;

    // 2. Feed inputs: durably accepted (journaled, fsynced) in one
    //    transaction; each gets the id its result will carry.
    let inputs = files
        .iter()
        .map(|file| {
            Ok(NewInput {
                pipeline: pipeline.clone(),
                content_type: "image/png".to_owned(),
                attributes: vec![("file".to_owned(), file.display().to_string())],
                data: std::fs::read(file).with_context(|| format!("reading {}", file.display()))?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ids = agent.accept(&inputs)?;

    // 3. Read results: each is in the outbox once its pipeline stored it
    //    (and stays there until an upstream collector acknowledges it).
    let deadline = Instant::now() + WAIT;
    for (id, file) in ids.iter().zip(&files) {
        let record = loop {
            if let Some(record) = agent.result(id)? {
                break record;
            }
            if Instant::now() > deadline {
                bail!("no result for {} ({id}) within {WAIT:?}", file.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        match record.outcome {
            Outcome::Result(result) => println!("{name}: {}", result.body),
            Outcome::Error(failure) => {
                println!("{name}: failed ({}): {}", failure.kind, failure.message)
            }
            other => println!("{name}: {other:?}"),
        }
    }

    // 4. Stop: sources stop, every pipeline finishes its batch, the uploader
    //    its request; whatever is still journaled waits for the next start.
    agent.shutdown();
    Ok(())
}
