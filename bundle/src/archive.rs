//! The bundle file: a zstd-compressed tar of `manifest.json`,
//! `signatures.json` and `files/...`.
//!
//! Writing goes through a temporary file renamed into place, so a bundle
//! on disk is always whole. Reading assumes the file is hostile: entries
//! are read in a stream with every size bounded ([`Limits`], counted on the
//! decompressed bytes, so a zstd bomb stops at the bound), only regular
//! files with plain relative paths are accepted (no `..`, no absolute
//! paths, no links, no devices, no duplicates), and they are written only
//! under a directory that did not exist before.
//!
//! Both are durable: an unpacked bundle's files and folders are fsynced
//! before [`unpack`] returns (the installer then records the version as
//! current; after a power cut its files must be there, whole), and a
//! written bundle is fsynced before its rename, its folder after.

use crate::keys::Signature;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

/// The manifest's entry.
pub const MANIFEST: &str = "manifest.json";
/// The signatures' entry.
pub const SIGNATURES: &str = "signatures.json";
/// The folder of the bundle's files.
pub const FILES: &str = "files";

/// Bounds on what reading a bundle may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Decompressed bytes of all entries together.
    pub max_bytes: u64,
    /// Entries.
    pub max_files: usize,
    /// Bytes of `manifest.json` (and of `signatures.json`).
    pub max_manifest_bytes: u64,
    /// Bytes of an entry's path.
    pub max_path_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 30,
            max_files: 1024,
            max_manifest_bytes: 1 << 20,
            max_path_bytes: 255,
        }
    }
}

/// Why a bundle file cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// Reading or writing failed.
    #[error("bundle {}: {source}", path.display())]
    Io {
        /// The bundle file or the directory being written.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a bundle, or a damaged or hostile one.
    #[error("bundle {}: {reason}", path.display())]
    Malformed {
        /// The bundle file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A bundle read from its file into a directory: nothing in it is trusted
/// before [`crate::verify`].
#[derive(Debug)]
pub struct Unpacked {
    /// The bundle file it came from.
    pub source: PathBuf,
    /// The exact bytes of `manifest.json`.
    pub manifest: Vec<u8>,
    /// `signatures.json`, parsed (empty if absent).
    pub signatures: Vec<Signature>,
    /// The directory holding `files/...` as they were in the bundle.
    pub dir: PathBuf,
    /// The relative paths under `files/` of the files unpacked.
    pub files: BTreeSet<String>,
}

/// A reader that fails once more than `left` bytes have gone through it.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "decompressed size over the limit",
            )
        })?;
        Ok(n)
    }
}

/// A plain relative `/`-separated path: only normal components.
fn plain(path: &str, limits: &Limits) -> Option<PathBuf> {
    if path.is_empty() || path.len() > limits.max_path_bytes || path.contains('\\') {
        return None;
    }
    let path = Path::new(path);
    path.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| path.to_owned())
}

/// Read the bundle at `bundle` into `dir`, which must not exist yet.
pub fn unpack(bundle: &Path, dir: &Path, limits: &Limits) -> Result<Unpacked, ArchiveError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ArchiveError::Io { path, source }
    };
    let malformed = |reason: String| ArchiveError::Malformed {
        path: bundle.to_owned(),
        reason,
    };
    let file = File::open(bundle).map_err(io(bundle))?;
    std::fs::create_dir(dir).map_err(io(dir))?;
    // Folders that got new names, fsynced once everything is written.
    let mut touched: BTreeSet<PathBuf> = BTreeSet::new();
    // A relative `dir` of one component has the empty path as its parent:
    // the current folder.
    if let Some(parent) = dir.parent() {
        let parent = Some(parent).filter(|p| !p.as_os_str().is_empty());
        touched.insert(parent.unwrap_or(Path::new(".")).to_owned());
    }
    let decoder = zstd::Decoder::new(BufReader::new(file))
        .map_err(|e| malformed(format!("not zstd: {e}")))?;
    let mut archive = tar::Archive::new(Bounded {
        inner: decoder,
        left: limits.max_bytes,
    });
    let mut unpacked = Unpacked {
        source: bundle.to_owned(),
        manifest: Vec::new(),
        signatures: Vec::new(),
        dir: dir.to_owned(),
        files: BTreeSet::new(),
    };
    let (mut manifest, mut signatures) = (None, None);
    let entries = archive
        .entries()
        .map_err(|e| malformed(format!("not a tar archive: {e}")))?;
    for (count, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| malformed(format!("damaged: {e}")))?;
        if count >= limits.max_files {
            return Err(malformed(format!("more than {} entries", limits.max_files)));
        }
        let name = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| malformed("an entry's path is not UTF-8".into()))?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(malformed(format!(
                "`{name}` is not a regular file ({kind:?})"
            )));
        }
        let small = |entry: &mut tar::Entry<_>, what: &str| -> Result<Vec<u8>, ArchiveError> {
            if entry.size() > limits.max_manifest_bytes {
                return Err(malformed(format!(
                    "{what} is {} bytes, over {}",
                    entry.size(),
                    limits.max_manifest_bytes
                )));
            }
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| malformed(format!("{what}: {e}")))?;
            Ok(bytes)
        };
        if name == MANIFEST && manifest.is_none() {
            manifest = Some(small(&mut entry, MANIFEST)?);
        } else if name == SIGNATURES && signatures.is_none() {
            signatures = Some(small(&mut entry, SIGNATURES)?);
        } else if let Some(relative) = name.strip_prefix(&format!("{FILES}/")) {
            let path = plain(relative, limits)
                .ok_or_else(|| malformed(format!("unsafe or too long path `{name}`")))?;
            if !unpacked.files.insert(relative.to_owned()) {
                return Err(malformed(format!("`{name}` appears twice")));
            }
            let target = dir.join(FILES).join(&path);
            if let Some(parent) = target.parent() {
                sluice_durable::create_dir_all(parent).map_err(io(parent))?;
                touched.insert(parent.to_owned());
            }
            // `create_new`: a path that is a prefix of another (a file and
            // a folder of one name) cannot overwrite or escape.
            let mut out = File::options()
                .write(true)
                .create_new(true)
                .open(&target)
                .map_err(|e| malformed(format!("`{name}`: {e}")))?;
            std::io::copy(&mut entry, &mut out).map_err(|e| match e.kind() {
                std::io::ErrorKind::FileTooLarge => {
                    malformed(format!("over {} bytes unpacked", limits.max_bytes))
                }
                _ => malformed(format!("`{name}`: {e}")),
            })?;
            out.sync_all().map_err(io(&target))?;
        } else {
            return Err(malformed(format!("unexpected entry `{name}`")));
        }
    }
    for folder in &touched {
        sluice_durable::sync_dir(folder).map_err(io(folder))?;
    }
    unpacked.manifest = manifest.ok_or_else(|| malformed(format!("no {MANIFEST}")))?;
    if let Some(bytes) = signatures {
        unpacked.signatures =
            serde_json::from_slice(&bytes).map_err(|e| malformed(format!("{SIGNATURES}: {e}")))?;
    }
    Ok(unpacked)
}

/// Write a bundle to `out`: `manifest` (its exact bytes), `signatures`, and
/// each `(path under files/, source file)`.
pub fn write(
    out: &Path,
    manifest: &[u8],
    signatures: &[Signature],
    files: &[(String, PathBuf)],
) -> Result<(), ArchiveError> {
    let tmp = PathBuf::from(format!("{}.tmp", out.display()));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ArchiveError::Io { path, source }
    };
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let encoder = zstd::Encoder::new(BufWriter::new(file), 19).map_err(io(&tmp))?;
    let mut tar = tar::Builder::new(encoder);
    let mut add = |name: &str, size: u64, data: &mut dyn Read| {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        // No times, owners or order from the build machine: the same
        // content makes the same bundle.
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, name, data)
    };
    add(MANIFEST, manifest.len() as u64, &mut &manifest[..]).map_err(io(&tmp))?;
    let signatures = serde_json::to_vec_pretty(signatures).expect("signatures serialize");
    add(SIGNATURES, signatures.len() as u64, &mut &signatures[..]).map_err(io(&tmp))?;
    for (name, source) in files {
        let mut file = File::open(source).map_err(io(source))?;
        let size = file.metadata().map_err(io(source))?.len();
        add(&format!("{FILES}/{name}"), size, &mut file).map_err(io(source))?;
    }
    let encoder = tar.into_inner().map_err(io(&tmp))?;
    let mut writer = encoder.finish().map_err(io(&tmp))?;
    writer.flush().map_err(io(&tmp))?;
    writer
        .into_inner()
        .map_err(|e| ArchiveError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?
        .sync_all()
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, out).map_err(io(out))?;
    let folder = out.parent().filter(|p| !p.as_os_str().is_empty());
    sluice_durable::sync_dir(folder.unwrap_or(Path::new("."))).map_err(io(out))
}
