//! The agent's memory budget (`device.memory_budget_mb`): one number an
//! operator sets for the board, split across what a running agent holds,
//! and checked when the agent starts. A board that cannot hold the
//! configuration is told so at once, naming the part that does not fit,
//! rather than finding out from the kernel's OOM killer under load.
//!
//! The parts, and how each is known:
//! * **plugins**: bounded by the sandbox: each plugin's `memory_mb` times the
//!   instances it may have alive (one per pipeline thread,
//!   `runtime.workers`: a thread holds one instance of a plugin at a time,
//!   and idle instances are only ever ones that were busy at once), plus
//!   their compiled code and data, as mapped;
//! * **models**: measured: what the process grew by while each model was
//!   loaded, measured and warmed up (its weights and plans);
//! * **ingest**: bounded: HTTP bodies being read
//!   (`ingest.max_concurrent_requests × ingest.max_input_bytes`) and each
//!   connection's buffer, plus each pipeline's group of inputs taken from the
//!   journal ([`GROUP_MAX_BYTES`]);
//! * **outbox**: bounded: SQLite's page cache ([`OUTBOX_CACHE_BYTES`]) and
//!   one upload (`sync.batch_max_bytes` as records, as JSON and compressed);
//! * **baseline**: measured: the process's resident memory before the first
//!   model is loaded (its code, the runtime's threads).
//!
//! Invariant: an agent whose budget is set does not start unless the sum of
//! the parts is within it. [`crate::runtime::Runtime`] measures its parts
//! whenever it starts; only the agent holds them to the budget (a one-shot
//! command, a bundle built or installed beside a running agent, is not an
//! agent start). The bounds are upper bounds; the measured parts
//! are what start-up saw, so the budget needs headroom for the allocator's
//! fragmentation (the documented minimum boards keep a quarter free).
//! Installing a bundle holds the outgoing and the incoming version at once
//! while it swaps: not checked against the budget.

use crate::config::Config;

use sluice_outbox::CACHE_BYTES as OUTBOX_CACHE_BYTES;

/// Bytes of inputs a worker takes from the journal at once, at most (a
/// single larger input still goes alone). With the group waiting for its
/// commit and the copies handed to the plugins, this bounds the memory of
/// inputs in a worker to a small multiple of it, whatever their sizes.
/// Defined here, with the budget that counts it; the worker keeps to it.
pub const GROUP_MAX_BYTES: u64 = 16 << 20;

/// Bytes of request head buffered per HTTP ingest connection (hyper's
/// `max_buf_size`); the HTTP source keeps to it.
pub const CONNECTION_BUFFER_BYTES: usize = 64 << 10;

/// One part of the agent's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// `plugins`, `models`, `ingest`, `outbox` or `baseline`.
    pub name: &'static str,
    /// Bytes it may hold (a bound) or held at start (measured).
    pub bytes: u64,
    /// Where the number comes from: the keys that set it, or "measured".
    pub how: String,
}

/// Why the agent does not start within its budget.
#[derive(Debug, thiserror::Error)]
#[error(
    "device.memory_budget_mb = {budget_mb} cannot be met: the agent may need {} ({}); raise the budget or lower the largest part",
    mib(self.total()),
    self.parts.iter().map(|p| format!("{} {} from {}", p.name, mib(p.bytes), p.how)).collect::<Vec<_>>().join(", ")
)]
pub struct OverBudget {
    /// The budget, MiB.
    pub budget_mb: u64,
    /// The parts, each with its bytes.
    pub parts: Vec<Part>,
}

impl OverBudget {
    fn total(&self) -> u64 {
        total(&self.parts)
    }
}

/// The sum of `parts`.
pub fn total(parts: &[Part]) -> u64 {
    parts.iter().map(|p| p.bytes).sum()
}

/// `parts` on one line, for people.
pub fn describe(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| format!("{} {}", p.name, mib(p.bytes)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `bytes` in MiB, for people.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// The bounded parts of `config`'s agent: plugins' linear memories, ingest
/// and the outbox. `plugin_code`: the loaded plugins' compiled code and data.
pub fn bounds(config: &Config, plugin_code: u64) -> Vec<Part> {
    let workers = config.runtime.resolved_workers().max(1) as u64;
    let caps: u64 = config
        .plugins
        .values()
        .map(|p| p.memory_bytes() as u64)
        .sum();
    let ingest = &config.ingest;
    let http = if ingest.listen.is_some() {
        ingest.max_concurrent_requests as u64 * ingest.max_input_bytes as u64
            + ingest.max_connections as u64 * CONNECTION_BUFFER_BYTES as u64
    } else {
        0
    };
    // The admin endpoint reads no bodies: its connections' buffers.
    let admin = match config.admin.listen {
        Some(_) => config.admin.max_connections as u64 * CONNECTION_BUFFER_BYTES as u64,
        None => 0,
    };
    let http = http + admin;
    // The MQTT source holds at most its receive maximum of messages, each
    // at most the largest packet the broker is told of, and a copy of a
    // group while it is journaled.
    let mqtt = config.ingest.mqtt.as_ref().map_or(0, |m| {
        2 * m.max_inflight as u64
            * (ingest.max_input_bytes as u64 + crate::ingest::mqtt::OVERSIZE_SLACK as u64)
    });
    let groups = config.pipelines.len() as u64 * GROUP_MAX_BYTES;
    // An upload holds its records, their JSON and the compressed body.
    let upload = if config.sync.url.is_some() {
        3 * config.sync.batch_max_bytes as u64
    } else {
        0
    };
    vec![
        Part {
            name: "plugins",
            bytes: workers * caps + plugin_code,
            how: format!(
                "{workers} instance(s) per plugin (runtime.workers) × {} of plugins.*.memory_mb{}",
                mib(caps),
                match plugin_code {
                    0 => String::new(),
                    code => format!(" + {} of compiled code", mib(code)),
                }
            ),
        },
        Part {
            name: "ingest",
            bytes: http + mqtt + groups,
            how: format!(
                "{} HTTP bodies (ingest.max_concurrent_requests × ingest.max_input_bytes, ingest.max_connections and admin.max_connections buffers) + {} of MQTT messages (2 × ingest.mqtt.max_inflight × (ingest.max_input_bytes + 1 MiB)) + {} of inputs per pipeline in work",
                mib(http),
                mib(mqtt),
                mib(GROUP_MAX_BYTES)
            ),
        },
        Part {
            name: "outbox",
            bytes: OUTBOX_CACHE_BYTES + upload,
            how: format!(
                "{} page cache + {} for an upload (3 × sync.batch_max_bytes)",
                mib(OUTBOX_CACHE_BYTES),
                mib(upload)
            ),
        },
    ]
}

/// The process's resident memory now, as the `baseline` part: what it
/// holds before any model or plugin is loaded.
pub fn baseline() -> Part {
    measured(
        "baseline",
        resident_bytes().unwrap_or(0),
        "resident before loading models and plugins",
    )
}

/// A measured part.
pub fn measured(name: &'static str, bytes: u64, what: &str) -> Part {
    Part {
        name,
        bytes,
        how: format!("measured: {what}"),
    }
}

/// Whether `parts` fit `budget_mb` (0: no budget, always).
pub fn check(budget_mb: u64, parts: &[Part]) -> Result<(), OverBudget> {
    if budget_mb == 0 || total(parts) <= budget_mb.saturating_mul(1 << 20) {
        Ok(())
    } else {
        Err(OverBudget {
            budget_mb,
            parts: parts.to_vec(),
        })
    }
}

/// The process's resident memory now, in bytes (`/proc/self/statm`); `None`
/// where the platform does not say (measured parts then count 0, and the
/// budget covers only the bounds).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// What the process grew by while `f` ran (0 if it shrank or cannot say).
/// Memory `f` freed is handed back to the system first where the allocator
/// can (glibc keeps freed memory otherwise, and it would count).
pub fn growth<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = resident_bytes();
    let out = f();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
    let grew = match (before, resident_bytes()) {
        (Some(before), Some(after)) => after.saturating_sub(before),
        _ => 0,
    };
    (out, grew)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("/etc/sluice")).unwrap()
    }

    const DIGITS: &str = "[runtime]\nworkers = 2\n[plugins.pre]\npath = \"a.wasm\"\nmemory_mb = 16\n[plugins.post]\npath = \"b.wasm\"\nmemory_mb = 8\n[models.m]\npath = \"m.onnx\"\n[pipelines.p]\npreprocess = \"pre\"\nmodel = \"m\"\npostprocess = \"post\"\n";

    #[test]
    fn plugins_count_every_thread_s_instance_at_its_cap() {
        let parts = bounds(&parse(DIGITS), 3 << 20);
        assert_eq!(parts[0].name, "plugins");
        assert_eq!(parts[0].bytes, 2 * (16 + 8) * (1 << 20) + (3 << 20));
        // No HTTP ingest, no sync: one pipeline's group, the page cache.
        assert_eq!(parts[1].bytes, GROUP_MAX_BYTES);
        assert_eq!(parts[2].bytes, OUTBOX_CACHE_BYTES);
    }

    #[test]
    fn http_ingest_and_sync_are_counted_when_configured() {
        let text = format!(
            "{DIGITS}[ingest]\nlisten = \"127.0.0.1:0\"\nmax_concurrent_requests = 2\nmax_input_bytes = 1048576\nmax_connections = 16\n[sync]\nurl = \"https://c:1\"\ntoken = \"t\"\nbatch_max_bytes = 65536\n"
        );
        let parts = bounds(&parse(&text), 0);
        assert_eq!(
            parts[1].bytes,
            2 * (1 << 20) + 16 * (64 << 10) + GROUP_MAX_BYTES
        );
        assert_eq!(parts[2].bytes, OUTBOX_CACHE_BYTES + 3 * 65536);
    }

    #[test]
    fn a_budget_below_the_sum_is_refused_naming_every_part() {
        let mut parts = bounds(&parse(DIGITS), 0);
        parts.push(measured("models", 40 << 20, "weights and plans"));
        let mb = total(&parts) >> 20;
        // Exactly enough, and no budget at all, pass.
        assert!(check(mb + 1, &parts).is_ok());
        assert!(check(0, &parts).is_ok());
        let refused = check(mb - 1, &parts).unwrap_err().to_string();
        for needle in [
            "device.memory_budget_mb",
            "plugins",
            "runtime.workers",
            "models 40.0 MiB from measured",
            "ingest",
            "outbox",
        ] {
            assert!(refused.contains(needle), "{needle}: {refused}");
        }
    }

    #[test]
    fn growth_sees_memory_touched_while_measuring() {
        if resident_bytes().is_none() {
            eprintln!("SKIPPED: no /proc/self/statm on this platform");
            return;
        }
        let (kept, grew) = growth(|| vec![1u8; 64 << 20]);
        assert!(grew >= 32 << 20, "grew {grew}");
        drop(kept);
    }
}
