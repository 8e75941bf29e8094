//! The disk reserve: a file of `outbox.disk_reserve_bytes` beside the
//! outbox, given back to the disk when an operation that frees space finds
//! it full.
//!
//! Why: on a full disk SQLite cannot even delete (a delete writes pages to
//! the WAL), so without room an acknowledged batch could never leave the
//! outbox, and the device would stay full for good. With the reserve, the
//! operations on the way to freeing space (forming a batch, acknowledging
//! it, setting a record aside, expiring, forgetting claims, noting the sync
//! outcome) release it and retry once; inputs and new results never do, so
//! they cannot eat it.
//!
//! Once given back, its space stays kept for those operations, not for new
//! intake: until the reserve is made again, new inputs and new records may
//! reuse the outbox file's free pages (an acknowledgement frees some) but
//! grow the file only into the free space beyond the reserve's size
//! ([`Reserve::intake_headroom`]). Otherwise, with the collector down, the
//! first note of a failed upload on a full disk would hand the reserve to
//! the next inputs, and the acknowledgement that comes back later would
//! find the disk full again.
//!
//! Invariants: the reserve is (re)made only when the disk has at least
//! twice its size free, so making it never fills the disk itself; it is
//! written in full and synced before it takes its name, so its blocks are
//! really allocated, also after a power cut.

use std::io::Write;
use std::path::{Path, PathBuf};

/// What the outbox's write-ahead log may take on the disk: it is cut back to
/// 1 MiB (`journal_size_limit`, see `schema.rs`) after a checkpoint, and a
/// full disk's checkpoint cuts it to nothing.
const WAL_BYTES: u64 = 1 << 20;

/// The reserve file of one outbox.
#[derive(Debug)]
pub(super) struct Reserve {
    path: PathBuf,
    bytes: u64,
}

impl Reserve {
    /// The reserve of the outbox at `outbox`, of `bytes` (0: none).
    pub(super) fn new(outbox: &Path, bytes: u64) -> Reserve {
        Reserve {
            path: PathBuf::from(format!("{}.reserve", outbox.display())),
            bytes,
        }
    }

    /// Make the reserve if it is missing and the disk has room for it.
    pub(super) fn ensure(&self) {
        if self.bytes == 0 || self.path.exists() {
            return;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if free_bytes(dir).is_none_or(|free| free < self.bytes.saturating_mul(2)) {
            return;
        }
        if let Err(e) = self.write() {
            let _ = std::fs::remove_file(&self.path);
            tracing::warn!(reserve = %self.path.display(), "cannot make the disk reserve: {e}");
        }
    }

    /// Written under another name and renamed once synced: after a power
    /// cut the reserve is there in full or not at all (a name alone, its
    /// blocks never written, would reserve nothing).
    fn write(&self) -> std::io::Result<()> {
        sluice_durable::write_atomically_with(&self.path, |file| {
            let chunk = vec![0u8; 1 << 20];
            let mut left = self.bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                file.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            Ok(())
        })
    }

    /// How many bytes intake may grow the outbox file by: no bound (`None`)
    /// while the reserve's file holds its space, or without a reserve;
    /// otherwise half the free space beyond the reserve's size and
    /// [`WAL_BYTES`]: the pages a transaction adds pass through the
    /// write-ahead log too, so the disk sees them twice.
    pub(super) fn intake_headroom(&self) -> Option<u64> {
        if self.bytes == 0 || self.path.exists() {
            return None;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let beyond = free_bytes(dir)?.saturating_sub(self.bytes.saturating_add(WAL_BYTES));
        Some(beyond / 2)
    }

    /// Give the reserve back to the disk; whether there was one.
    pub(super) fn release(&self) -> bool {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(
                    reserve = %self.path.display(),
                    bytes = self.bytes,
                    "disk full: released the outbox's disk reserve so that uploads can free space"
                );
                true
            }
            Err(_) => false,
        }
    }
}

/// Bytes free for unprivileged writers on the filesystem of `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = statvfs(dir)?;
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// The size of the filesystem of `dir`, in bytes.
pub fn volume_bytes(dir: &Path) -> Option<u64> {
    let stat = statvfs(dir)?;
    Some((stat.f_blocks as u64).saturating_mul(stat.f_frsize as u64))
}

fn statvfs(dir: &Path) -> Option<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stat` a valid buffer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat)
}
