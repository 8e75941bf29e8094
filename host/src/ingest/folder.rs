//! The watched folder: files dropped into `[ingest] folder` become inputs
//! of `folder_pipeline`, and are deleted once durably accepted.
//!
//! Invariants:
//! * a file is first renamed into `<folder>/.sluice-claimed/` under a unique
//!   claim name; the claim name is committed with the journal row, so a crash
//!   between accepting and deleting the file never ingests it twice, and a
//!   claimed file not yet accepted is accepted at the next scan;
//! * only complete files are claimed: dot files are ignored (writers create
//!   files under a dot name and rename them when complete), and any other
//!   file only once its size and modification time stayed the same for
//!   `ingest.settle_ms` (measured on the monotonic clock, whatever the
//!   file's timestamps say);
//! * only regular files are read, opened without following links and
//!   without blocking (a FIFO or a device never stalls ingest), and never
//!   more than `max_input_bytes` of them;
//! * a file too large to accept is not silently deleted: it becomes a
//!   failed result (`refused`), counted and shipped like any other;
//! * files are accepted in groups, one transaction (one fsync) per group;
//! * one bad file (unreadable, a directory, a name too long, gone) fails
//!   alone, reported once: the others flow;
//! * when too many inputs wait (back-pressure), files stay in the folder.

use super::{Context, Incoming, IngestError, Running, Sink, Source};
use crate::config::IngestConfig;
use crate::outbox::NewInput;
use crate::wake::{Wake, backoff};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Subfolder of the ingest folder holding files being accepted.
pub const CLAIM_DIR: &str = ".sluice-claimed";

/// Claimed files accepted per transaction: one fsync for the group.
const ACCEPT_GROUP_FILES: usize = 256;
/// Bytes of claimed files read per transaction, at most (besides one file).
const ACCEPT_GROUP_BYTES: u64 = 16 << 20;
/// Longest file name most filesystems take (bytes).
const NAME_MAX: usize = 255;

/// The folder source.
pub struct FolderSource {
    folder: PathBuf,
    pipeline: Option<String>,
    poll: Duration,
    settle: Duration,
}

impl FolderSource {
    /// The folder source of `[ingest]`, if it names a folder. Files go to
    /// `folder_pipeline`, else to `default_pipeline`.
    pub fn from_config(
        config: &IngestConfig,
        default_pipeline: Option<&str>,
    ) -> Result<Option<FolderSource>, IngestError> {
        let Some(folder) = &config.folder else {
            return Ok(None);
        };
        Ok(Some(FolderSource {
            folder: folder.clone(),
            pipeline: config
                .folder_pipeline
                .clone()
                .or(default_pipeline.map(str::to_owned)),
            poll: Duration::from_millis(config.poll_ms),
            settle: Duration::from_millis(config.settle_ms),
        }))
    }
}

impl Source for FolderSource {
    fn describe(&self) -> String {
        format!("folder {}", self.folder.display())
    }

    fn start(self: Box<Self>, sink: Arc<Sink>, _: &Context) -> Result<Running, IngestError> {
        let name = self.describe();
        let setup = |message: String| IngestError::Setup {
            source_name: name.clone(),
            message,
        };
        let pipeline = self.pipeline.clone().ok_or_else(|| {
            setup("several pipelines run: choose one with ingest.folder_pipeline".into())
        })?;
        sink.check_pipeline(&pipeline)?;
        let claimed = self.folder.join(CLAIM_DIR);
        std::fs::create_dir_all(&claimed)
            .map_err(|e| setup(format!("cannot create {}: {e}", claimed.display())))?;
        let wake = Wake::new();
        let watcher = Watcher {
            folder: self.folder,
            claimed,
            pipeline,
            poll: self.poll,
            settle: self.settle,
            sink,
            wake: wake.clone(),
            counter: 0,
            seen: HashMap::new(),
            reported: HashSet::new(),
        };
        let thread = std::thread::Builder::new()
            .name("sluice-folder".into())
            .spawn(move || watcher.run())
            .map_err(|e| setup(format!("cannot start its thread: {e}")))?;
        Ok(Running::new(
            name,
            move || wake.stop(),
            move || {
                let _ = thread.join();
            },
        ))
    }
}

/// A claim name: `<ms since epoch, 20 digits>-<counter, 6 digits>-<original name>`,
/// unique within the folder and sorting in arrival order. An original name
/// too long to fit is cut (keeping its extension, which tells its type).
fn claim_name(now_ms: i64, counter: u64, original: &str) -> String {
    let prefix = format!("{now_ms:020}-{:06}-", counter % 1_000_000);
    let room = NAME_MAX - prefix.len();
    if original.len() <= room {
        return prefix + original;
    }
    let extension = Path::new(original)
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .filter(|e| e.len() < 32)
        .unwrap_or_default();
    let mut cut = room - extension.len() - 1;
    while !original.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{prefix}{}~{extension}", &original[..cut])
}

/// The original file name inside a claim name.
fn original_name(claim: &str) -> &str {
    claim.splitn(3, '-').nth(2).unwrap_or(claim)
}

/// Why a claimed file is not an input.
enum Unusable {
    /// Not now (unreadable, not a regular file): leave it where it is.
    Keep(String),
    /// Never (too large): its result is this failure.
    Refuse(String),
}

/// What a file looked like when first seen unchanged.
struct Sighting {
    len: u64,
    modified: Option<SystemTime>,
    since: Instant,
}

struct Watcher {
    folder: PathBuf,
    claimed: PathBuf,
    pipeline: String,
    poll: Duration,
    settle: Duration,
    sink: Arc<Sink>,
    wake: Arc<Wake>,
    counter: u64,
    /// Files of the folder not yet claimed, as last seen (bounded by the
    /// folder's contents: forgotten once gone).
    seen: HashMap<PathBuf, Sighting>,
    /// Claims that cannot be taken and were reported (reported once).
    reported: HashSet<String>,
}

impl Watcher {
    fn run(mut self) {
        let mut failures = 0u32;
        while !self.wake.stopped() {
            self.claim_new_files();
            match self.accept_claimed_files() {
                Ok(()) => {
                    failures = 0;
                    self.wake.sleep(self.poll);
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(folder = %self.folder.display(), "folder ingest: {e:#}");
                    let poll = self.poll.as_millis() as u64;
                    self.wake.sleep(backoff(poll, 30_000.max(poll), failures));
                }
            }
        }
    }

    /// Move complete files (regular files, not dot files) into the claim
    /// folder under unique names, while there is room for them.
    fn claim_new_files(&mut self) {
        let entries = match std::fs::read_dir(&self.folder) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(folder = %self.folder.display(), "cannot list the ingest folder: {e}");
                return;
            }
        };
        let now = Instant::now();
        let mut present = HashSet::new();
        let mut files: Vec<PathBuf> = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            if !entry.file_type().is_ok_and(|t| t.is_file())
                || entry.file_name().to_string_lossy().starts_with('.')
            {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let path = entry.path();
            present.insert(path.clone());
            let (len, modified) = (meta.len(), meta.modified().ok());
            let settled = match self.seen.get(&path) {
                Some(s) if s.len == len && s.modified == modified => {
                    now.duration_since(s.since) >= self.settle
                }
                _ => {
                    self.seen.insert(
                        path.clone(),
                        Sighting {
                            len,
                            modified,
                            since: now,
                        },
                    );
                    self.settle.is_zero()
                }
            };
            if settled {
                files.push(path);
            }
        }
        self.seen.retain(|path, _| present.contains(path));
        files.sort();
        for path in files {
            if self.sink.check_room(0).is_err() {
                break; // Back-pressure: the files wait in the folder.
            }
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            self.counter += 1;
            let claim = claim_name(sluice_types::now_ms(), self.counter, &name);
            match std::fs::rename(&path, self.claimed.join(&claim)) {
                Ok(()) => {
                    self.seen.remove(&path);
                }
                // Gone meanwhile, or not ours to move: the others go on.
                Err(e) => {
                    if self.reported.insert(path.display().to_string()) {
                        tracing::error!(file = %path.display(), "cannot claim it ({e}); the others go on");
                    }
                }
            }
        }
    }

    /// Read one claimed file as an input, or say why not now, or never.
    fn read_claim(&self, claim: &str) -> Result<Vec<u8>, Unusable> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.claimed.join(claim);
        let keep = |e: std::io::Error| Unusable::Keep(e.to_string());
        // Not following links, not blocking: whatever sits under this name
        // now (a FIFO, a device, a link swapped in after the listing) is
        // looked at through this handle only.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(keep)?;
        let meta = file.metadata().map_err(keep)?;
        if !meta.is_file() {
            return Err(Unusable::Keep("not a regular file".into()));
        }
        // Checked before reading, and the read is bounded: a huge file (or
        // one still growing) is never read into memory.
        let too_large = |e: IngestError| Unusable::Refuse(e.to_string());
        self.sink.check_size(meta.len()).map_err(too_large)?;
        let max = self.sink.max_input_bytes();
        let mut data = Vec::with_capacity(meta.len() as usize);
        (&mut file)
            .take(max + 1)
            .read_to_end(&mut data)
            .map_err(keep)?;
        self.sink.check_size(data.len() as u64).map_err(too_large)?;
        Ok(data)
    }

    /// The input a claimed file makes, with `data`.
    fn input(&self, claim: &str, data: Vec<u8>) -> NewInput {
        let original = original_name(claim).to_owned();
        NewInput {
            pipeline: self.pipeline.clone(),
            content_type: super::content_type_of(Path::new(&original)).to_owned(),
            attributes: vec![("file".into(), original)],
            data,
        }
    }

    /// Accept every claimed file into the journal, then delete it, in groups.
    fn accept_claimed_files(&mut self) -> Result<(), IngestError> {
        let mut names: Vec<String> = std::fs::read_dir(&self.claimed)
            .map_err(|e| IngestError::Setup {
                source_name: format!("folder {}", self.folder.display()),
                message: format!("cannot list {}: {e}", self.claimed.display()),
            })?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut names = names.into_iter().peekable();
        while names.peek().is_some() && !self.wake.stopped() {
            // The next group: claims to accept now, and claims already
            // accepted (by a run that crashed before deleting the file), to
            // delete only.
            let (mut group, mut done, mut bytes) = (Vec::new(), Vec::new(), 0u64);
            while group.len() < ACCEPT_GROUP_FILES && bytes < ACCEPT_GROUP_BYTES {
                let Some(claim) = names.next() else { break };
                if self.sink.outbox.is_claimed(&claim)? {
                    done.push(claim);
                    continue;
                }
                match self.read_claim(&claim) {
                    Ok(data) => {
                        bytes += data.len() as u64;
                        group.push(Incoming {
                            input: self.input(&claim, data),
                            claim: Some(claim),
                        });
                    }
                    Err(Unusable::Refuse(reason)) => {
                        tracing::warn!(
                            file = original_name(&claim),
                            "refused ({reason}); its result says so"
                        );
                        self.sink
                            .refuse(&self.input(&claim, Vec::new()), &reason, Some(&claim))?;
                        done.push(claim);
                    }
                    Err(Unusable::Keep(reason)) => {
                        if self.reported.insert(claim.clone()) {
                            tracing::error!(
                                file = %self.claimed.join(&claim).display(),
                                "cannot take it ({reason}); left in place, the others go on"
                            );
                        }
                    }
                }
            }
            if !group.is_empty() {
                self.sink.accept(&group)?;
            }
            done.extend(group.into_iter().filter_map(|i| i.claim));
            for claim in &done {
                let path = self.claimed.join(claim);
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::error!(file = %path.display(), "cannot delete: {e}");
                }
            }
            // The deletions must be on disk before the claims are forgotten,
            // or a power cut could bring a file back unclaimed.
            sluice_durable::sync_dir(&self.claimed).map_err(|e| IngestError::Setup {
                source_name: format!("folder {}", self.folder.display()),
                message: format!("cannot sync {}: {e}", self.claimed.display()),
            })?;
            self.sink.outbox.forget_claims(&done)?;
        }
        // Forget reports of claims that are gone (bounded by the folder).
        let left: HashSet<String> = std::fs::read_dir(&self.claimed)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let seen = &self.seen;
        self.reported
            .retain(|name| left.contains(name) || seen.contains_key(Path::new(name)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_name_keeps_the_original_name_and_sorts_by_arrival() {
        let a = claim_name(1_700_000_000_000, 7, "x-1.png");
        let b = claim_name(1_700_000_000_000, 8, "a.png");
        assert_eq!(original_name(&a), "x-1.png");
        assert_eq!(original_name(&b), "a.png");
        assert!(a < b);
        assert!(claim_name(999, 1_000_001, "z") < claim_name(1000, 0, "a"));
    }

    #[test]
    fn a_claim_name_always_fits_a_file_name_and_keeps_the_extension() {
        let long = format!("{}.png", "ä".repeat(120)); // 244 bytes
        let claim = claim_name(1_700_000_000_000, 1, &long);
        assert!(claim.len() <= NAME_MAX, "{}", claim.len());
        assert!(claim.ends_with("~.png"), "{claim}");
        assert!(original_name(&claim).starts_with("ää"));
    }
}
