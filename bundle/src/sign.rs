//! Signing a bundle file in place.

use crate::archive::{self, ArchiveError, FILES, Limits};
use crate::keys::SecretKey;
use crate::manifest::Manifest;
use crate::verify::{Policy, Refusal, verify};
use std::path::{Path, PathBuf};

/// Why a bundle cannot be signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// It cannot be read or written.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Its manifest or files are not what a device would accept (a file
    /// changed since it was built, a bad manifest).
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// Add `key`'s signature to the bundle at `bundle` (replacing an earlier one
/// by the same key), after checking its files against its manifest: a
/// bundle whose files changed since it was built is not signed. Returns its
/// manifest and how many signatures it now has.
pub fn sign(bundle: &Path, key: &SecretKey, now_ms: i64) -> Result<(Manifest, usize), SignError> {
    let work = PathBuf::from(format!(
        "{}.signing-{:016x}",
        bundle.display(),
        rand::random::<u64>()
    ));
    let result = sign_in(bundle, key, now_ms, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn sign_in(
    bundle: &Path,
    key: &SecretKey,
    now_ms: i64,
    work: &Path,
) -> Result<(Manifest, usize), SignError> {
    let mut unpacked = archive::unpack(bundle, work, &Limits::default())?;
    let id = key.public().id();
    unpacked.signatures.retain(|s| s.key != id);
    unpacked.signatures.push(key.sign(&unpacked.manifest));
    let bad = |reason: String| Refusal::BadManifest {
        bundle: bundle.to_owned(),
        reason,
    };
    let manifest: Manifest =
        serde_json::from_slice(&unpacked.manifest).map_err(|e| bad(e.to_string()))?;
    let needs = semver::Version::parse(&manifest.min_sluice_version)
        .map_err(|e| bad(format!("min_sluice_version: {e}")))?;
    // Everything a device checks but trust and version.
    verify(
        &unpacked,
        &Policy {
            trusted: &[key.public()],
            now_ms,
            installed: None,
            sluice_version: &needs,
            wit_package: &manifest.wit_package,
        },
    )?;
    let files: Vec<(String, PathBuf)> = manifest
        .files
        .iter()
        .map(|f| (f.path.clone(), unpacked.dir.join(FILES).join(&f.path)))
        .collect();
    archive::write(bundle, &unpacked.manifest, &unpacked.signatures, &files)?;
    Ok((manifest, unpacked.signatures.len()))
}

/// Build at `out` a revert of the bundle at `earlier`: its files again,
/// under a new manifest with `version` (above every version of its name
/// the devices may have installed), `reverts_to` the earlier version, made
/// now and valid as long as the earlier one was, signed by `key`. A device
/// takes it like any bundle (signature, files, a version above its own),
/// so an attacker replaying the earlier file itself is still refused: only
/// a holder of a signing key can send a device back.
pub fn revert(
    earlier: &Path,
    out: &Path,
    version: u64,
    key: &SecretKey,
    now_ms: i64,
) -> Result<Manifest, SignError> {
    let work = PathBuf::from(format!(
        "{}.reverting-{:016x}",
        out.display(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let unpacked = archive::unpack(earlier, &work, &Limits::default())?;
        let bad = |reason: String| Refusal::BadManifest {
            bundle: earlier.to_owned(),
            reason,
        };
        let old: Manifest =
            serde_json::from_slice(&unpacked.manifest).map_err(|e| bad(e.to_string()))?;
        if version <= old.version {
            return Err(bad(format!(
                "a revert of version {} needs a higher version, not {version}",
                old.version
            ))
            .into());
        }
        let lifetime = old.expires_at_ms.saturating_sub(old.created_at_ms).max(0);
        let manifest = Manifest {
            version,
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(lifetime),
            reverts_to: Some(old.reverts_to.unwrap_or(old.version)),
            ..old
        };
        let files: Vec<(String, PathBuf)> = manifest
            .files
            .iter()
            .map(|f| (f.path.clone(), unpacked.dir.join(FILES).join(&f.path)))
            .collect();
        archive::write(out, &manifest.to_bytes(), &[], &files)?;
        sign(out, key, now_ms)?;
        Ok(manifest)
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}
