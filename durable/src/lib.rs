//! # Files that survive a power cut
//!
//! An edge device loses power. Its disk (or SD card, or eMMC) keeps written
//! data in a volatile cache until the file is fsynced, while creating,
//! renaming and deleting a file reach the disk's metadata at once. So the
//! usual "write a temporary file, rename it over the old one" is not enough
//! by itself: after a cut the new name can point at a file that is empty,
//! or, on a torn cut, at a file of the right length whose blocks are partly
//! zeros. Every file the device writes outside SQLite (which does this
//! itself) goes through this crate:
//!
//! * [`write_atomically`]: write a temporary file, fsync it, rename it into
//!   place, fsync the directory. After a cut the path holds the old content
//!   or the new, whole.
//! * [`create_dir_all`] and [`sync_dir`]: a new directory, or a new name in
//!   one, survives only once its parent is fsynced.
//! * [`sealed`]: for what is read back and trusted (a compiled plugin, a
//!   remembered measurement): the bytes carry their length and SHA-256, and
//!   a file whose digest does not match is reported as damaged, never
//!   returned. A cache written through [`sealed::write`] is rebuilt after a
//!   cut, never trusted half-written.
//!
//! The crate depends on nothing of Sluice's: the device, the bundle
//! installer and the tools that build bundles all use it.

#![deny(missing_docs)]

use std::fs::File;
use std::io::Write;
use std::path::Path;

pub mod sealed;

/// Replace the file at `path` with `bytes`, durably: a temporary file in
/// the same directory is written and fsynced, renamed over `path`, and the
/// directory fsynced, so that after a power cut `path` holds either its old
/// content or `bytes`, whole. The directory must exist.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_parts_atomically(path, &[bytes])
}

/// [`write_atomically`] of the concatenation of `parts` (no copy of them).
pub(crate) fn write_parts_atomically(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    write_atomically_with(path, |file| {
        parts.iter().try_for_each(|part| file.write_all(part))
    })
}

/// [`write_atomically`] of what `fill` writes into the temporary file (for
/// content too large to hold in memory at once).
pub fn write_atomically_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = parent(path);
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    // The process id and a counter keep two writers of the same path (two
    // processes sharing a cache, two threads) off each other's temporary.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = File::create(&tmp).and_then(|mut file| {
        fill(&mut file)?;
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Remove the temporary files [`write_atomically`] left in `dir` when the
/// process writing them died (a crash or a power cut between writing and
/// renaming); those of live processes stay. Returns how many were removed.
/// Best effort: a folder that cannot be read removes nothing.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = temporary_writer(&name.to_string_lossy()) else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The process id in a temporary's name (`.<name>.tmp-<pid>-<n>`).
fn temporary_writer(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp-")?;
    let (pid, n) = tail.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Fsync the directory `dir`: the names created, renamed or removed in it
/// so far survive a power cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create `dir` and any missing parents, each new one made durable (its
/// parent fsynced after it was created).
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(up) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(up)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(parent(dir)),
        // Made meanwhile by another thread or process: durable or not is
        // its maker's business, and it syncs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// The directory holding `path` (`.` for a bare name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomically_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomically(&path, b"first, and longer").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn write_atomically_names_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_atomically(&dir.path().join("no/such/file"), b"x").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn stale_temporaries_of_dead_writers_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        };
        // No process has pid 0x7ffffffe (above the kernel's pid_max).
        file(".entry.cwasm.tmp-2147483646-0");
        file(&format!(".entry.cwasm.tmp-{}-3", std::process::id()));
        file("entry.cwasm");
        file(".entry.cwasm.tmp-notapid-1");
        assert_eq!(remove_stale_temporaries(dir.path()), 1);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                format!(".entry.cwasm.tmp-{}-3", std::process::id()),
                ".entry.cwasm.tmp-notapid-1".to_owned(),
                "entry.cwasm".to_owned(),
            ]
        );
        assert_eq!(remove_stale_temporaries(&dir.path().join("none")), 0);
    }

    #[test]
    fn create_dir_all_makes_every_level() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep).unwrap();
    }
}
