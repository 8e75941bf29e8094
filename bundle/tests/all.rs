//! Bundles as a device meets them: a signed one verifies; unsigned, an
//! unknown key, a changed manifest or file, an extra or missing file,
//! expiry, a replay or downgrade, a Sluice or WIT the device does not meet
//! are each refused naming the cause; hostile archives (path traversal,
//! links, a decompression bomb, too many entries) are refused before
//! anything is written outside a fresh directory.

use sluice_bundle::archive::{self, ArchiveError, Limits};
use sluice_bundle::keys::{PublicKey, SecretKey, Signature};
use sluice_bundle::{FileEntry, Manifest, Policy, Refusal, Validation, sha256_of, verify};
use std::io::Write;
use std::path::{Path, PathBuf};

const NOW: i64 = 1_800_000_000_000;
const WIT: &str = "sluice:plugin@0.1.0";

fn sluice() -> semver::Version {
    semver::Version::new(0, 4, 0)
}

struct Fixture {
    dir: tempfile::TempDir,
    files: Vec<(String, PathBuf)>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (name, content) in [
            ("pipeline.toml", b"[pipelines.p]\nmodel = \"m\"\n".to_vec()),
            ("models/m.onnx", (0..=255u8).cycle().take(10_000).collect()),
            ("plugins/pre.wasm", b"\0asm\x0d\0\x01\0".to_vec()),
        ] {
            let path = dir.path().join("src").join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, content).unwrap();
            files.push((name.to_owned(), path));
        }
        Fixture { dir, files }
    }

    fn manifest(&self, version: u64) -> Manifest {
        Manifest {
            format: sluice_bundle::FORMAT,
            name: "p".into(),
            version,
            created_at_ms: NOW - 1000,
            expires_at_ms: NOW + 86_400_000,
            min_sluice_version: "0.3.0".into(),
            wit_package: WIT.into(),
            validation: Validation::default(),
            files: self
                .files
                .iter()
                .map(|(name, path)| {
                    let (bytes, sha256) = sha256_of(path).unwrap();
                    FileEntry {
                        path: name.clone(),
                        sha256,
                        bytes,
                    }
                })
                .collect(),
            reverts_to: None,
        }
    }

    /// Write a bundle of `manifest` bytes, `signatures` and `files`.
    fn write(
        &self,
        manifest: &[u8],
        signatures: &[Signature],
        files: &[(String, PathBuf)],
    ) -> PathBuf {
        let out = self.dir.path().join(format!("b-{}.bundle", rand_name()));
        archive::write(&out, manifest, signatures, files).unwrap();
        out
    }

    fn signed(&self, manifest: &Manifest, key: &SecretKey) -> PathBuf {
        let bytes = manifest.to_bytes();
        self.write(&bytes, &[key.sign(&bytes)], &self.files)
    }

    fn check(
        &self,
        bundle: &Path,
        trusted: &[PublicKey],
        installed: Option<u64>,
    ) -> Result<sluice_bundle::Verified, Refusal> {
        let unpacked = archive::unpack(
            bundle,
            &self.dir.path().join(rand_name()),
            &Limits::default(),
        )
        .unwrap();
        verify(
            &unpacked,
            &Policy {
                trusted,
                now_ms: NOW,
                installed,
                sluice_version: &sluice(),
                wit_package: WIT,
            },
        )
    }
}

fn rand_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("u{}", N.fetch_add(1, Ordering::Relaxed))
}

#[test]
fn a_signed_bundle_verifies_and_its_files_are_the_listed_ones() {
    let f = Fixture::new();
    let key = SecretKey::generate();
    let bundle = f.signed(&f.manifest(3), &key);
    let verified = f.check(&bundle, &[key.public()], Some(2)).unwrap();
    assert_eq!(
        (verified.manifest.version, verified.key.as_str()),
        (3, key.public().id().as_str())
    );
    for (name, source) in &f.files {
        assert_eq!(
            std::fs::read(verified.files.join(name)).unwrap(),
            std::fs::read(source).unwrap()
        );
    }
    // The same content makes the same bundle (no times or owners inside).
    let again = f.signed(&f.manifest(3), &key);
    assert_eq!(
        std::fs::read(&bundle).unwrap(),
        std::fs::read(&again).unwrap()
    );
}

#[test]
fn keys_rotate_by_pinning_several() {
    let f = Fixture::new();
    let (old, new) = (SecretKey::generate(), SecretKey::generate());
    let trusted = [old.public(), new.public()];
    f.check(&f.signed(&f.manifest(1), &old), &trusted, None)
        .unwrap();
    f.check(&f.signed(&f.manifest(2), &new), &trusted, Some(1))
        .unwrap();
    // Signed by both: a device that pins either accepts it.
    let bytes = f.manifest(3).to_bytes();
    let both = f.write(&bytes, &[old.sign(&bytes), new.sign(&bytes)], &f.files);
    f.check(&both, &[new.public()], Some(2)).unwrap();
    f.check(&both, &[old.public()], Some(2)).unwrap();
}

#[test]
fn unsigned_unknown_key_and_changed_manifest_are_refused() {
    let f = Fixture::new();
    let key = SecretKey::generate();
    let bytes = f.manifest(1).to_bytes();
    let unsigned = f.write(&bytes, &[], &f.files);
    assert!(matches!(
        f.check(&unsigned, &[key.public()], None),
        Err(Refusal::Unsigned { .. })
    ));

    let stranger = SecretKey::generate();
    let err = f
        .check(&f.signed(&f.manifest(1), &stranger), &[key.public()], None)
        .unwrap_err();
    assert!(
        matches!(&err, Refusal::UnknownKey { keys, .. } if keys == &[stranger.public().id()]),
        "{err}"
    );
    assert!(
        err.to_string().contains(&key.public().id()),
        "names the trusted keys: {err}"
    );

    // The manifest changed after signing (a higher version claimed).
    let signature = key.sign(&bytes);
    let forged = f.manifest(99).to_bytes();
    let err = f
        .check(
            &f.write(&forged, &[signature.clone()], &f.files),
            &[key.public()],
            None,
        )
        .unwrap_err();
    assert!(matches!(err, Refusal::BadSignature { .. }), "{err}");
    // A signature with garbage in it.
    let garbage = Signature {
        key: signature.key.clone(),
        signature: "AAAA".into(),
    };
    let err = f
        .check(
            &f.write(&bytes, &[garbage], &f.files),
            &[key.public()],
            None,
        )
        .unwrap_err();
    assert!(matches!(err, Refusal::BadSignature { .. }), "{err}");
}

#[test]
fn one_changed_byte_a_missing_or_an_extra_file_is_refused() {
    let f = Fixture::new();
    let key = SecretKey::generate();
    let bytes = f.manifest(1).to_bytes();
    let signature = [key.sign(&bytes)];

    // One byte of the model flipped.
    let model = f.dir.path().join("changed.onnx");
    let mut content = std::fs::read(&f.files[1].1).unwrap();
    content[5000] ^= 1;
    std::fs::write(&model, content).unwrap();
    let mut files = f.files.clone();
    files[1].1 = model;
    let err = f
        .check(&f.write(&bytes, &signature, &files), &[key.public()], None)
        .unwrap_err();
    assert!(
        matches!(&err, Refusal::FileMismatch { path, .. } if path == "models/m.onnx"),
        "{err}"
    );
    assert!(err.to_string().contains("SHA-256"), "{err}");

    let missing = f.write(&bytes, &signature, &f.files[..2]);
    let err = f.check(&missing, &[key.public()], None).unwrap_err();
    assert!(
        matches!(&err, Refusal::FileMismatch { path, .. } if path == "plugins/pre.wasm"),
        "{err}"
    );

    let mut extra = f.files.clone();
    extra.push(("plugins/evil.wasm".into(), f.files[2].1.clone()));
    let err = f
        .check(&f.write(&bytes, &signature, &extra), &[key.public()], None)
        .unwrap_err();
    assert!(
        matches!(&err, Refusal::FileMismatch { path, .. } if path == "plugins/evil.wasm"),
        "{err}"
    );
}

#[test]
fn expired_replayed_downgraded_or_unmet_requirements_are_refused() {
    let f = Fixture::new();
    let key = SecretKey::generate();
    let trusted = [key.public()];
    let mut expired = f.manifest(5);
    expired.expires_at_ms = NOW - 1;
    let err = f
        .check(&f.signed(&expired, &key), &trusted, None)
        .unwrap_err();
    assert!(matches!(err, Refusal::Expired { .. }), "{err}");

    let bundle = f.signed(&f.manifest(5), &key);
    for installed in [5, 6] {
        let err = f.check(&bundle, &trusted, Some(installed)).unwrap_err();
        assert!(matches!(err, Refusal::NotNewer { version: 5, .. }), "{err}");
    }

    let mut newer = f.manifest(5);
    newer.min_sluice_version = "0.5.0".into();
    let err = f
        .check(&f.signed(&newer, &key), &trusted, None)
        .unwrap_err();
    assert!(
        matches!(&err, Refusal::SluiceTooOld { needs, have, .. } if needs == "0.5.0" && have == "0.4.0"),
        "{err}"
    );

    let mut other_wit = f.manifest(5);
    other_wit.wit_package = "sluice:plugin@0.2.0".into();
    let err = f
        .check(&f.signed(&other_wit, &key), &trusted, None)
        .unwrap_err();
    assert!(matches!(err, Refusal::WitMismatch { .. }), "{err}");
}

/// A tar entry written header field by header field (the `tar` crate's
/// builder refuses the hostile paths these tests need).
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>) {
    let mut header = tar::Header::new_old();
    let field = &mut header.as_old_mut().name;
    field[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(link) = link {
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn hostile(dir: &Path, entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> PathBuf {
    let mut tar = Vec::new();
    raw_entry(
        &mut tar,
        "manifest.json",
        tar::EntryType::Regular,
        b"{}",
        None,
    );
    for (name, kind, data, link) in entries {
        raw_entry(&mut tar, name, *kind, data, *link);
    }
    tar.extend_from_slice(&[0; 1024]);
    let path = dir.join(format!("{}.bundle", rand_name()));
    std::fs::write(&path, zstd::encode_all(&tar[..], 3).unwrap()).unwrap();
    path
}

fn unpack_err(bundle: &Path, into: &Path, limits: &Limits) -> String {
    match archive::unpack(bundle, into, limits) {
        Err(ArchiveError::Malformed { reason, .. }) => reason,
        other => panic!("not refused as malformed: {other:?}"),
    }
}

#[test]
fn hostile_archives_are_refused_and_write_nothing_outside_a_fresh_directory() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits::default();
    let regular = tar::EntryType::Regular;
    for (name, kind, link, why) in [
        ("files/../../escaped", regular, None, "unsafe"),
        ("files//etc/passwd", regular, None, "unsafe"),
        (
            "files/link",
            tar::EntryType::Symlink,
            Some("/etc/passwd"),
            "not a regular file",
        ),
        (
            "files/hard",
            tar::EntryType::Link,
            Some("manifest.json"),
            "not a regular file",
        ),
        (
            "files/dev",
            tar::EntryType::Char,
            None,
            "not a regular file",
        ),
        ("elsewhere.txt", regular, None, "unexpected entry"),
    ] {
        let bundle = hostile(dir.path(), &[(name, kind, b"x", link)]);
        let into = dir.path().join(rand_name());
        let reason = unpack_err(&bundle, &into, &limits);
        assert!(
            reason.contains(why) && reason.contains(name),
            "{name}: {reason}"
        );
    }
    assert!(
        !dir.path().join("escaped").exists()
            && !dir.path().parent().unwrap().join("escaped").exists()
    );

    let twice = hostile(
        dir.path(),
        &[
            ("files/a", regular, b"1", None),
            ("files/a", regular, b"2", None),
        ],
    );
    assert!(unpack_err(&twice, &dir.path().join(rand_name()), &limits).contains("twice"));

    // A bomb: 64 MiB of zeros compress to a few KiB; the bound stops it.
    let zeros = vec![0u8; 64 << 20];
    let bomb = hostile(dir.path(), &[("files/zeros", regular, &zeros, None)]);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 64 << 10);
    let small = Limits {
        max_bytes: 1 << 20,
        ..limits
    };
    assert!(unpack_err(&bomb, &dir.path().join(rand_name()), &small).contains("over"));

    let many: Vec<String> = (0..20).map(|i| format!("files/{i}")).collect();
    let entries: Vec<_> = many
        .iter()
        .map(|n| (n.as_str(), regular, &b"x"[..], None))
        .collect();
    let crowded = hostile(dir.path(), &entries);
    let few = Limits {
        max_files: 10,
        ..limits
    };
    assert!(unpack_err(&crowded, &dir.path().join(rand_name()), &few).contains("entries"));

    let not_a_bundle = dir.path().join("plain.txt");
    std::fs::File::create(&not_a_bundle)
        .unwrap()
        .write_all(b"hello")
        .unwrap();
    unpack_err(&not_a_bundle, &dir.path().join(rand_name()), &limits);

    // The target directory must be new: nothing is unpacked over files.
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    assert!(matches!(
        archive::unpack(&twice, &existing, &limits),
        Err(ArchiveError::Io { .. })
    ));
}
