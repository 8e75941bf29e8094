//! `sluice bundle keygen | build | sign | verify | inspect`: the operator's
//! side of signed bundles (see `sluice_agent::bundle` and `sluice-bundle`).

use anyhow::{Context, bail};
use sluice_agent::bundle::{BuildRequest, WIT_PACKAGE};
use sluice_bundle::archive::{self, Limits, Unpacked};
use sluice_bundle::keys::{PublicKey, SecretKey};
use sluice_bundle::{Manifest, Policy, stamp};
use std::path::{Path, PathBuf};

/// `sluice bundle keygen`: a new signing key at `out` (readable by its
/// owner only) and its public key at `out.pub`.
pub fn keygen(out: &Path) -> anyhow::Result<()> {
    let public_path = PathBuf::from(format!("{}.pub", out.display()));
    let key = SecretKey::generate();
    key.write_new(out)
        .with_context(|| format!("{} (an existing key is never overwritten)", out.display()))?;
    std::fs::write(&public_path, format!("{}\n", key.public().to_text()))
        .with_context(|| public_path.display().to_string())?;
    println!(
        "secret key: {} (keep it offline)\npublic key: {} (pin it on devices: bundles.trusted_keys)\nkey id:     {}",
        out.display(),
        public_path.display(),
        key.public().id()
    );
    Ok(())
}

/// `sluice bundle build`.
pub fn build(request: &BuildRequest) -> anyhow::Result<()> {
    let manifest = sluice_agent::bundle::build(request)?;
    let expected = request.validation_inputs.len();
    println!(
        "{}: bundle `{}` version {}, {} file(s), {} bytes, expires {}; validation set of {} item(s){}",
        request.out.display(),
        manifest.name,
        manifest.version,
        manifest.files.len(),
        manifest.files.iter().map(|f| f.bytes).sum::<u64>(),
        stamp(manifest.expires_at_ms),
        manifest
            .files
            .iter()
            .filter(|f| f.path.starts_with("validation/inputs/"))
            .count(),
        if expected == 0 {
            " (none given: devices will only check that it loads)"
        } else {
            ""
        },
    );
    println!(
        "unsigned: sign it with `sluice bundle sign --key KEY {}`",
        request.out.display()
    );
    Ok(())
}

fn read_key(path: &Path) -> anyhow::Result<SecretKey> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Ok(SecretKey::parse(&text).with_context(|| path.display().to_string())?)
}

/// A public key given as its text or as a file holding it.
pub fn read_public(text_or_path: &str) -> anyhow::Result<PublicKey> {
    if let Ok(key) = PublicKey::parse(text_or_path) {
        return Ok(key);
    }
    let text = std::fs::read_to_string(text_or_path)
        .with_context(|| format!("`{text_or_path}` is neither a public key nor a readable file"))?;
    Ok(PublicKey::parse(&text).with_context(|| text_or_path.to_owned())?)
}

/// Unpack `bundle` into a fresh temporary directory.
fn open(bundle: &Path) -> anyhow::Result<(tempfile::TempDir, Unpacked)> {
    let dir = tempfile::tempdir()?;
    let unpacked = archive::unpack(bundle, &dir.path().join("b"), &Limits::default())?;
    Ok((dir, unpacked))
}

fn manifest_of(unpacked: &Unpacked) -> anyhow::Result<Manifest> {
    serde_json::from_slice(&unpacked.manifest)
        .with_context(|| format!("bundle {}: bad manifest", unpacked.source.display()))
}

/// `sluice bundle sign`: add the signature of `key` (replacing an earlier
/// one by the same key), after checking that the files are the listed ones.
pub fn sign(bundle: &Path, key: &Path) -> anyhow::Result<()> {
    let key = read_key(key)?;
    let (manifest, signatures) = sluice_bundle::sign(bundle, &key, sluice_types::now_ms())?;
    println!(
        "{}: `{}` version {} signed by key {} ({signatures} signature(s))",
        bundle.display(),
        manifest.name,
        manifest.version,
        key.public().id(),
    );
    Ok(())
}

/// `sluice bundle verify`: what a device would decide, offline.
pub fn verify(bundle: &Path, trusted: &[String], installed: Option<u64>) -> anyhow::Result<()> {
    if trusted.is_empty() {
        bail!("no trusted key: give the public keys devices pin with --trust");
    }
    let trusted = trusted
        .iter()
        .map(|t| read_public(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (_dir, unpacked) = open(bundle)?;
    let sluice_version = semver::Version::parse(sluice_types::VERSION)?;
    let verified = sluice_bundle::verify(
        &unpacked,
        &Policy {
            trusted: &trusted,
            now_ms: sluice_types::now_ms(),
            installed,
            sluice_version: &sluice_version,
            wit_package: WIT_PACKAGE,
        },
    )?;
    println!(
        "{}: OK, `{}` version {} signed by key {}, {} file(s) as listed, expires {}",
        bundle.display(),
        verified.manifest.name,
        verified.manifest.version,
        verified.key,
        verified.manifest.files.len(),
        stamp(verified.manifest.expires_at_ms)
    );
    Ok(())
}

/// `sluice bundle inspect`: what a bundle says about itself (nothing
/// checked: see `verify`).
pub fn inspect(bundle: &Path, json: bool) -> anyhow::Result<()> {
    let (_dir, unpacked) = open(bundle)?;
    let manifest = manifest_of(&unpacked)?;
    let keys: Vec<&str> = unpacked.signatures.iter().map(|s| s.key.as_str()).collect();
    if json {
        let value = serde_json::json!({ "manifest": manifest, "signed_by": keys });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("bundle:     {}", bundle.display());
    println!("name:       {}", manifest.name);
    println!("version:    {}", manifest.version);
    println!("created:    {}", stamp(manifest.created_at_ms));
    println!("expires:    {}", stamp(manifest.expires_at_ms));
    println!(
        "needs:      Sluice >= {}, WIT {}",
        manifest.min_sluice_version, manifest.wit_package
    );
    println!(
        "validation: tolerance {}, {} ms per item at most",
        manifest.validation.tolerance, manifest.validation.max_item_ms
    );
    println!(
        "signed by:  {}",
        if keys.is_empty() {
            "nobody (unsigned)".to_owned()
        } else {
            keys.join(", ")
        }
    );
    println!("files:");
    for f in &manifest.files {
        println!(
            "  {:>10}  {}  {}",
            f.bytes,
            &f.sha256[..f.sha256.len().min(16)],
            f.path
        );
    }
    Ok(())
}
