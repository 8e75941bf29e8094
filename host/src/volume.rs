//! The data volume (the file system of `device.data_dir`) must hold what
//! the agent keeps there whatever happens: the outbox's disk reserve, the
//! compiled-plugin cache when it is on the same volume, and a working
//! minimum for the outbox itself. A smaller volume is refused at start,
//! naming each part and the volume's size: on it, the reserve and the cache
//! would fill the disk, and the outbox could not even fold its write-ahead
//! log back, let alone store and ship a result.

use crate::config::Config;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What the outbox needs on the volume besides its reserve: its
/// write-ahead log (kept at 1 MiB, see `outbox/schema.rs`) and room for the
/// file to hold inputs and results while uploads catch up.
pub const WORKING_MIN_BYTES: u64 = 4 << 20;

/// The data volume cannot hold what the agent keeps on it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the data volume of {} is {}: too small for {} = {}; use a larger volume, lower outbox.disk_reserve_bytes, or keep the compiled-plugin cache on another volume (runtime.cache_dir)",
    data_dir.display(),
    crate::memory::mib(*volume_bytes),
    parts.iter().map(|(what, bytes)| format!("{what} {}", crate::memory::mib(*bytes))).collect::<Vec<_>>().join(" + "),
    crate::memory::mib(total(parts)),
)]
pub struct TooSmall {
    /// `device.data_dir`.
    pub data_dir: PathBuf,
    /// The size of its file system.
    pub volume_bytes: u64,
    /// What must fit on it, each with its size.
    pub parts: Vec<(String, u64)>,
}

impl TooSmall {
    /// The parts added up.
    pub fn needed(&self) -> u64 {
        total(&self.parts)
    }
}

fn total(parts: &[(String, u64)]) -> u64 {
    parts
        .iter()
        .fold(0u64, |sum, (_, bytes)| sum.saturating_add(*bytes))
}

/// Check that the volume of `config.device.data_dir` (which exists) holds
/// the disk reserve, the compiled-plugin cache as it is now (when on the
/// same volume) and [`WORKING_MIN_BYTES`]. A volume whose size cannot be
/// read is not checked.
pub fn check(config: &Config) -> Result<(), TooSmall> {
    let data_dir = &config.device.data_dir;
    let Some(volume_bytes) = crate::outbox::volume_bytes(data_dir) else {
        return Ok(());
    };
    let mut parts = vec![(
        "the disk reserve (outbox.disk_reserve_bytes)".to_owned(),
        config.outbox.disk_reserve_bytes,
    )];
    let cache = config.cache_dir();
    if same_volume(data_dir, &cache) {
        parts.push((
            format!("the compiled-plugin cache ({})", cache.display()),
            size_of(&cache),
        ));
    }
    parts.push(("the outbox's working minimum".to_owned(), WORKING_MIN_BYTES));
    let report = TooSmall {
        data_dir: data_dir.clone(),
        volume_bytes,
        parts,
    };
    if report.needed() > volume_bytes {
        return Err(report);
    }
    Ok(())
}

/// Whether `path` (or, while it does not exist, its nearest existing
/// ancestor) is on the file system of `dir`.
fn same_volume(dir: &Path, path: &Path) -> bool {
    let Ok(dir) = std::fs::metadata(dir) else {
        return true;
    };
    path.ancestors()
        .find_map(|p| std::fs::metadata(p).ok())
        .is_none_or(|m| m.dev() == dir.dev())
}

/// Bytes of the files under `dir` (links are not followed).
fn size_of(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => size_of(&entry.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .fold(0u64, u64::saturating_add)
}
