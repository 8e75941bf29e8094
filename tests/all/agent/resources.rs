//! Memory, address space and disk: a memory budget the board cannot meet and
//! a data volume too small are refused naming the parts; a small address
//! space gets compact plugin memories and the same results; results expire
//! without an uplink.

use super::harness::{Agent, DEVICE, collector, set, wait_until, write_config};
use crate::common::repo_root;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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
