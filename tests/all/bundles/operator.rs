//! Signed bundles as an operator makes them with the real `sluice` binary:
//! keygen, build from the digits example (with a validation set), inspect,
//! sign, verify; and what a device would refuse: unsigned, an unknown key,
//! a replay of the installed version.

use crate::common::{repo_root, sluice};
use std::path::Path;
use std::process::Output;

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn ok(args: &[&str]) -> String {
    let out = sluice(args);
    assert!(out.status.success(), "sluice {args:?}: {}", text(&out));
    text(&out)
}

fn refused(args: &[&str]) -> String {
    let out = sluice(args);
    assert!(
        !out.status.success(),
        "sluice {args:?} should fail: {}",
        text(&out)
    );
    text(&out)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn an_operator_builds_signs_and_verifies_a_bundle_and_devices_refuse_what_they_must() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("operator.key");
    let out = ok(&["bundle", "keygen", "--out", s(&key)]);
    assert!(out.contains("key id:"), "{out}");
    let public = dir.path().join("operator.key.pub");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the secret key is readable by others: {mode:o}"
        );
    }
    // A key is never overwritten.
    refused(&["bundle", "keygen", "--out", s(&key)]);

    let heldout = repo_root().join("models/digits/heldout");
    let mut validation: Vec<_> = std::fs::read_dir(&heldout)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    validation.sort();
    validation.truncate(8);
    let bundle = dir.path().join("digits-7.bundle");
    let data = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bundle-data");
    let config = repo_root().join("examples/digits/sluice.toml");
    let mut args = vec![
        "bundle",
        "build",
        "--config",
        s(&config),
        "--version",
        "7",
        "--out",
        s(&bundle),
        "--data-dir",
        s(&data),
    ];
    for v in &validation {
        args.extend(["--validation", s(v)]);
    }
    let out = ok(&args);
    assert!(out.contains("bundle `digits` version 7"), "{out}");
    assert!(out.contains("validation set of 8 item(s)"), "{out}");

    let inspected: serde_json::Value =
        serde_json::from_str(&ok(&["bundle", "inspect", "--json", s(&bundle)])).unwrap();
    let manifest = &inspected["manifest"];
    assert_eq!(manifest["name"], "digits");
    assert_eq!(manifest["version"], 7);
    assert_eq!(manifest["wit_package"], "sluice:plugin@0.1.0");
    assert_eq!(inspected["signed_by"], serde_json::json!([]));
    let paths: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    // The bundled plugins are written out, the granted labels folder and
    // the model come along, with the configuration, the start-up sample
    // and the validation set.
    for expected in [
        "samples/digits-0000.png",
        "plugins/digits-pre.wasm",
        "plugins/digits-post.wasm",
        "grants/digits-post/0/labels.txt",
        "models/digits.onnx",
        "pipeline.toml",
        "validation/expected.json",
        "validation/inputs/0000-",
    ] {
        assert!(
            paths.iter().any(|p| p.starts_with(expected)),
            "{expected} not in {paths:?}"
        );
    }

    // Unsigned: refused. Signed: OK for a device that pins the key.
    let trust = ["--trust", s(&public)];
    let out = refused(&[&["bundle", "verify"][..], &trust, &[s(&bundle)]].concat());
    assert!(out.contains("unsigned"), "{out}");
    // Signed by its bare name from its own folder, as the README does (the
    // folder of a one-component path is the current one).
    let folder = bundle.parent().unwrap();
    let name = bundle.file_name().unwrap().to_str().unwrap();
    let out = std::process::Command::new(crate::common::sluice_bin())
        .args(["bundle", "sign", "--key", s(&key), name])
        .current_dir(folder)
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out).contains("signed by key"),
        "{}",
        text(&out)
    );
    let out = ok(&[&["bundle", "verify"][..], &trust, &[s(&bundle)]].concat());
    assert!(out.contains("OK, `digits` version 7"), "{out}");
    // Installed 7 already: a replay. Installed 6: an upgrade.
    let out = refused(
        &[
            &["bundle", "verify", "--installed-version", "7"][..],
            &trust,
            &[s(&bundle)],
        ]
        .concat(),
    );
    assert!(out.contains("not above the installed version 7"), "{out}");
    ok(&[
        &["bundle", "verify", "--installed-version", "6"][..],
        &trust,
        &[s(&bundle)],
    ]
    .concat());
    // Another operator's key: unknown.
    let other = dir.path().join("other.key");
    ok(&["bundle", "keygen", "--out", s(&other)]);
    let other_public = std::fs::read_to_string(dir.path().join("other.key.pub")).unwrap();
    let out = refused(&[
        "bundle",
        "verify",
        "--trust",
        other_public.trim(),
        s(&bundle),
    ]);
    assert!(out.contains("unknown key"), "{out}");

    // The validation set's expected results are this build's results.
    let unpacked = dir.path().join("unpacked");
    let unpacked = sluice_bundle::archive::unpack(&bundle, &unpacked, &Default::default()).unwrap();
    let expected: Vec<sluice_agent::bundle::Expected> = serde_json::from_slice(
        &std::fs::read(
            unpacked
                .dir
                .join("files")
                .join(sluice_agent::bundle::EXPECTED_JSON),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(expected.len(), 8);
    for e in &expected {
        assert!(e.error.is_none(), "{e:?}");
        assert!(
            e.result.as_ref().unwrap()["top"][0]["label"].is_string(),
            "{e:?}"
        );
    }
    let fragment = std::fs::read_to_string(
        unpacked
            .dir
            .join("files")
            .join(sluice_agent::bundle::PIPELINE_TOML),
    )
    .unwrap();
    assert!(
        fragment.contains("path = \"models/digits.onnx\""),
        "{fragment}"
    );
    assert!(
        fragment.contains("host = \"grants/digits-post/0\""),
        "{fragment}"
    );
}
