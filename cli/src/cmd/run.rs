//! `sluice run` (the agent until SIGTERM) and `sluice outbox status`.

use sluice_agent::agent::Agent;
use sluice_agent::config::Config;
use sluice_agent::outbox::{Outbox, Status};
use sluice_types::now_ms;
use std::io::Write;
use std::path::Path;

/// `sluice run --config FILE`: run until SIGTERM or Ctrl-C, then drain.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let mut config = Config::load_device(config_path)?;
    super::use_machine_cache(&mut config);
    let tokio = super::tokio_runtime()?;
    // Register the handlers before start-up (loading models and plugins
    // takes a while), so an early SIGTERM drains too.
    let (mut term, mut int) = {
        let _guard = tokio.enter();
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    let agent = Agent::start_on(config, tokio.handle())?;
    if let Some(recovery) = agent.recovered() {
        eprintln!(
            "sluice run: the outbox was damaged ({}); moved it to {} and started a fresh one",
            recovery.reason,
            recovery.moved_to.display()
        );
    }
    let memory = agent.runtime().memory();
    let budget = match agent.runtime().config().device.memory_budget_mb {
        0 => "no device.memory_budget_mb".to_owned(),
        mb => format!("device.memory_budget_mb = {mb}"),
    };
    println!(
        "sluice run: memory: {} ({}; {budget})",
        sluice_agent::memory::mib(sluice_agent::memory::total(memory)),
        sluice_agent::memory::describe(memory),
    );
    for problem in agent.runtime().problems() {
        eprintln!("sluice run: problem: {problem}");
    }
    if let Some(addr) = agent.ingest_addr() {
        println!("sluice run: ingest listening on http://{addr}");
    }
    println!("sluice run: ready");
    std::io::stdout().flush()?;
    tokio.block_on(async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
    eprintln!("sluice run: stopping: finishing in-flight batches");
    agent.shutdown();
    eprintln!("sluice run: stopped");
    Ok(())
}

/// `sluice outbox status --config FILE`: read-only, safe while the agent runs.
pub fn outbox_status(config_path: &Path, json: bool) -> anyhow::Result<()> {
    let status = open_read_only(config_path)?.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", format_status(&status, now_ms()));
    }
    Ok(())
}

fn open_read_only(config_path: &Path) -> anyhow::Result<Outbox> {
    let config = Config::load(config_path)?;
    let path = config.device.data_dir.join(sluice_agent::outbox::FILE_NAME);
    Ok(Outbox::open_read_only(&path, config.outbox)?)
}

/// `sluice outbox set-aside`: the records the collector refused.
pub fn outbox_set_aside(config_path: &Path, json: bool) -> anyhow::Result<()> {
    let records = open_read_only(config_path)?.set_aside_records(u32::MAX)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    if records.is_empty() {
        println!("no results set aside");
    }
    let now = now_ms();
    for record in records {
        println!(
            "{}  ({} bytes, {:.0} s ago)\n  {}",
            record.id,
            record.bytes,
            (now - record.set_aside_at_ms) as f64 / 1000.0,
            record.reason
        );
    }
    Ok(())
}

/// `sluice outbox requeue`: send the set-aside records again.
pub fn outbox_requeue(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let outbox = Outbox::open_in(&config.device.data_dir, config.outbox)?;
    let report = outbox.requeue_set_aside()?;
    println!(
        "requeued {} result(s) ({} already pending, {} refused by the outbox's cap)",
        report.stored,
        report.duplicates,
        report.rejected_full + report.rejected_too_large
    );
    Ok(())
}

/// The status for people.
fn format_status(status: &Status, now: i64) -> String {
    let ago = |ms: Option<i64>| match ms {
        Some(t) => format!("{:.1} s ago", (now - t) as f64 / 1000.0),
        None => "never".into(),
    };
    let mut text = format!(
        "outbox:        {}\npending:       {} result(s), {} of {} bytes ({:.1}%)\noldest:        {}\nin flight:     {} batch(es)\nset aside:     {} result(s) refused upstream, {} bytes (sluice outbox set-aside)\njournal:       {} input(s) waiting, {} bytes\nlast sync:     {}\nlast error:    {}\n",
        status.path.display(),
        status.pending_records,
        status.pending_bytes,
        status.max_bytes,
        status.pending_bytes as f64 * 100.0 / status.max_bytes.max(1) as f64,
        match status.oldest_created_at_ms {
            Some(t) => ago(Some(t)),
            None => "-".into(),
        },
        status.batches_in_flight,
        status.set_aside_records,
        status.set_aside_bytes,
        status.journal_items,
        status.journal_bytes,
        ago(status.last_sync_at_ms),
        match (&status.last_error, status.last_error_at_ms) {
            (Some(e), at) => format!("{e} ({})", ago(at)),
            (None, _) => "none".into(),
        },
    );
    text.push_str("counters:\n");
    for (name, value) in &status.counters {
        text.push_str(&format!("  {name:<20} {value}\n"));
    }
    text
}
