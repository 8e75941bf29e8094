//! Whether a device may trust an unpacked bundle.

use crate::archive::{FILES, Unpacked};
use crate::keys::PublicKey;
use crate::manifest::{FORMAT, Manifest};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// What the device holds a bundle against.
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    /// The keys it trusts (pinned in its configuration).
    pub trusted: &'a [PublicKey],
    /// Now, ms since the Unix epoch.
    pub now_ms: i64,
    /// The version installed under the bundle's name, if any.
    pub installed: Option<u64>,
    /// The device's Sluice.
    pub sluice_version: &'a semver::Version,
    /// The WIT package the device's plugin host implements.
    pub wit_package: &'a str,
}

/// Why a bundle is refused. Nothing on the device changes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No signature at all.
    #[error("bundle {}: unsigned", bundle.display())]
    Unsigned {
        /// The bundle file.
        bundle: PathBuf,
    },
    /// Signed, but by no key the device trusts.
    #[error("bundle {}: signed by unknown key(s) {} (trusted: {})", bundle.display(), keys.join(", "), trusted.join(", "))]
    UnknownKey {
        /// The bundle file.
        bundle: PathBuf,
        /// The ids of the keys that signed it.
        keys: Vec<String>,
        /// The ids of the keys the device trusts.
        trusted: Vec<String>,
    },
    /// A trusted key's signature does not match the manifest: it was
    /// changed after signing, or the signature is forged.
    #[error("bundle {}: the signature by key {key} does not match its manifest (changed after signing, or forged)", bundle.display())]
    BadSignature {
        /// The bundle file.
        bundle: PathBuf,
        /// The key id.
        key: String,
    },
    /// The signed manifest cannot be read.
    #[error("bundle {}: bad manifest: {reason}", bundle.display())]
    BadManifest {
        /// The bundle file.
        bundle: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file differs from what the manifest lists (changed, missing, extra).
    #[error("bundle {}: file `{path}` {problem}", bundle.display())]
    FileMismatch {
        /// The bundle file.
        bundle: PathBuf,
        /// The file, under `files/`.
        path: String,
        /// How it differs.
        problem: String,
    },
    /// Past its expiry.
    #[error("bundle {}: {name} version {version} expired at {} (now {})", bundle.display(), stamp(*expired_at_ms), stamp(*now_ms))]
    Expired {
        /// The bundle file.
        bundle: PathBuf,
        /// Its name.
        name: String,
        /// Its version.
        version: u64,
        /// Its expiry.
        expired_at_ms: i64,
        /// The device's clock.
        now_ms: i64,
    },
    /// Not above the installed version: a replay or a rollback.
    #[error("bundle {}: {name} version {version} is not above the installed version {installed} (a downgrade must be a new, higher version)", bundle.display())]
    NotNewer {
        /// The bundle file.
        bundle: PathBuf,
        /// Its name.
        name: String,
        /// Its version.
        version: u64,
        /// The version installed.
        installed: u64,
    },
    /// It needs a newer Sluice.
    #[error("bundle {}: needs Sluice {needs} or newer, this is {have}", bundle.display())]
    SluiceTooOld {
        /// The bundle file.
        bundle: PathBuf,
        /// What it needs.
        needs: String,
        /// What the device runs.
        have: String,
    },
    /// Its plugins target another WIT package.
    #[error("bundle {}: plugins built for WIT {needs}, this Sluice implements {have}", bundle.display())]
    WitMismatch {
        /// The bundle file.
        bundle: PathBuf,
        /// What it needs.
        needs: String,
        /// What the device implements.
        have: String,
    },
}

/// `ms` since the Unix epoch as an RFC 3339 UTC time (to the second).
pub fn stamp(ms: i64) -> String {
    u64::try_from(ms)
        .map(|ms| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
            .to_string()
        })
        .unwrap_or_else(|_| format!("{ms} ms"))
}

/// Size and SHA-256 (hex) of the file at `path`, read in a stream.
pub fn sha256_of(path: &std::path::Path) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// A bundle that passed [`verify`].
#[derive(Debug, Clone)]
pub struct Verified {
    /// Its manifest.
    pub manifest: Manifest,
    /// The trusted key whose signature was checked.
    pub key: String,
    /// The directory of its files (`files/` of the unpacked bundle).
    pub files: PathBuf,
}

/// Check `unpacked` against `policy`: the signature first (nothing of the
/// manifest is believed before it), then the files, then expiry, version
/// and requirements.
pub fn verify(unpacked: &Unpacked, policy: &Policy) -> Result<Verified, Refusal> {
    let verified = verify_signed(unpacked, policy.trusted, policy.now_ms)?;
    let bundle = unpacked.source.clone();
    let manifest = verified.manifest;
    if let Some(installed) = policy.installed.filter(|i| manifest.version <= *i) {
        return Err(Refusal::NotNewer {
            bundle,
            name: manifest.name,
            version: manifest.version,
            installed,
        });
    }
    let needs =
        semver::Version::parse(&manifest.min_sluice_version).map_err(|e| Refusal::BadManifest {
            bundle: bundle.clone(),
            reason: format!("min_sluice_version: {e}"),
        })?;
    if &needs > policy.sluice_version {
        return Err(Refusal::SluiceTooOld {
            bundle,
            needs: needs.to_string(),
            have: policy.sluice_version.to_string(),
        });
    }
    if manifest.wit_package != policy.wit_package {
        return Err(Refusal::WitMismatch {
            bundle,
            needs: manifest.wit_package,
            have: policy.wit_package.to_owned(),
        });
    }
    Ok(Verified {
        manifest,
        ..verified
    })
}

/// What every device that pins `trusted` would check of `unpacked`
/// whatever it has installed and runs: a signature by one of the keys, the
/// files exactly as listed, not expired at `now_ms`. The collector checks
/// this when a bundle is uploaded, so that a bundle no device would accept
/// is refused before it reaches one.
pub fn verify_signed(
    unpacked: &Unpacked,
    trusted: &[PublicKey],
    now_ms: i64,
) -> Result<Verified, Refusal> {
    let bundle = unpacked.source.clone();
    if unpacked.signatures.is_empty() {
        return Err(Refusal::Unsigned { bundle });
    }
    let mut tried = None;
    let mut key = None;
    for signature in &unpacked.signatures {
        let Some(trusted) = trusted.iter().find(|k| k.id() == signature.key) else {
            continue;
        };
        if trusted.verifies(&unpacked.manifest, signature) {
            key = Some(signature.key.clone());
            break;
        }
        tried = Some(signature.key.clone());
    }
    let Some(key) = key else {
        return Err(match tried {
            Some(key) => Refusal::BadSignature { bundle, key },
            None => Refusal::UnknownKey {
                bundle,
                keys: unpacked.signatures.iter().map(|s| s.key.clone()).collect(),
                trusted: trusted.iter().map(PublicKey::id).collect(),
            },
        });
    };
    let bad = |reason: String| Refusal::BadManifest {
        bundle: bundle.clone(),
        reason,
    };
    let manifest: Manifest =
        serde_json::from_slice(&unpacked.manifest).map_err(|e| bad(e.to_string()))?;
    if manifest.format != FORMAT {
        return Err(bad(format!(
            "format {} (this Sluice reads {FORMAT})",
            manifest.format
        )));
    }
    let files = unpacked.dir.join(FILES);
    let mismatch = |path: &str, problem: String| Refusal::FileMismatch {
        bundle: bundle.clone(),
        path: path.to_owned(),
        problem,
    };
    let mut listed = std::collections::BTreeSet::new();
    for entry in &manifest.files {
        if !listed.insert(entry.path.as_str()) {
            return Err(bad(format!("`{}` listed twice", entry.path)));
        }
        if !unpacked.files.contains(&entry.path) {
            return Err(mismatch(&entry.path, "is missing".into()));
        }
        let (size, sha) = sha256_of(&files.join(&entry.path))
            .map_err(|e| mismatch(&entry.path, format!("cannot be read: {e}")))?;
        if size != entry.bytes {
            return Err(mismatch(
                &entry.path,
                format!("is {size} bytes, the manifest says {}", entry.bytes),
            ));
        }
        if !sha.eq_ignore_ascii_case(&entry.sha256) {
            return Err(mismatch(
                &entry.path,
                format!("has SHA-256 {sha}, the manifest says {}", entry.sha256),
            ));
        }
    }
    if let Some(extra) = unpacked.files.iter().find(|f| !listed.contains(f.as_str())) {
        return Err(mismatch(extra, "is not in the manifest".into()));
    }
    if now_ms > manifest.expires_at_ms {
        return Err(Refusal::Expired {
            bundle,
            name: manifest.name,
            version: manifest.version,
            expired_at_ms: manifest.expires_at_ms,
            now_ms,
        });
    }
    Ok(Verified {
        manifest,
        key,
        files,
    })
}
