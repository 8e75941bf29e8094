//! `startup`: cold and warm time to the first result of `sluice infer` as a
//! new process, and its peak RSS.

use crate::common::{median, repo_root};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;

/// Spawn `sluice infer` on one digit; seconds to its first line of output,
/// and the process's peak RSS in MiB.
fn first_result(sluice: &Path, data_dir: &Path) -> Result<(f64, f64)> {
    use std::io::Read;
    let started = Instant::now();
    let mut child = std::process::Command::new(sluice)
        .current_dir(repo_root())
        .args([
            "infer",
            "--config",
            "examples/digits/sluice.toml",
            "--data-dir",
        ])
        .arg(data_dir)
        .arg("models/digits/heldout/0000.png")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| sluice.display().to_string())?;
    let mut stdout = child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    loop {
        anyhow::ensure!(
            stdout.read(&mut byte)? == 1,
            "{} printed no result",
            sluice.display()
        );
        if byte[0] == b'\n' {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // wait4 gives this child's own peak RSS (std's wait does not).
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pid of our own child and valid out-pointers.
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    anyhow::ensure!(
        waited > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{} failed",
        sluice.display()
    );
    Ok((seconds, usage.ru_maxrss as f64 / 1024.0))
}

/// Cold and warm start to the first result, alternating so noise hits both.
pub(crate) fn startup(sluice: &Path, runtime_only: Option<&Path>, runs: usize) -> Result<Value> {
    let warm_dir = tempfile::tempdir()?;
    first_result(sluice, warm_dir.path())?; // fills the caches
    let (mut cold, mut warm, mut lean) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let cold_dir = tempfile::tempdir()?;
        cold.push(first_result(sluice, cold_dir.path())?);
        warm.push(first_result(sluice, warm_dir.path())?);
        if let Some(lean_binary) = runtime_only {
            lean.push(first_result(lean_binary, warm_dir.path())?);
        }
    }
    let summary = |runs: &[(f64, f64)]| {
        (!runs.is_empty()).then(|| {
            json!({
                "median_ms": median(runs.iter().map(|r| r.0 * 1e3).collect()),
                "min_ms": runs.iter().map(|r| r.0 * 1e3).fold(f64::INFINITY, f64::min),
                "peak_rss_mib": median(runs.iter().map(|r| r.1).collect()),
            })
        })
    };
    Ok(json!({
        "runs": runs,
        "cold_compile": summary(&cold),
        "warm_cached": summary(&warm),
        "runtime_only_cached": summary(&lean),
    }))
}
