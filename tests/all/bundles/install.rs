//! Installing on a running device: a dropped bundle is verified, validated,
//! swapped in and committed; a version failing on live traffic is rolled back
//! keeping every result; a bundle that traps, fails validation or does not
//! start is refused before any swap.

use super::harness::{
    accept, bundle_of, device, drop_into, example_table, installs, of_kind,
    tolerant_device_and_strict_v2, upscaled, wait_until, write_config,
};
use sluice_bundle::keys::SecretKey;
use std::path::Path;
use std::path::PathBuf;

#[test]
fn a_bundle_dropped_on_a_running_device_is_verified_validated_swapped_in_and_committed() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    let base = example_table();
    // Version 2 lists two classes per result instead of three.
    let mut v2 = base.clone();
    v2["plugins"]["digits-post"]["config"]["top_k"] = 2.into();
    let v2_config = write_config(dir.path(), "v2", &v2);
    let signed = bundle_of(dir.path(), &v2_config, 2, Some(&key));
    let unsigned = bundle_of(dir.path(), &v2_config, 2, None);

    let agent = device(dir.path(), &base, &key);
    let images = crate::common::digit_pngs();
    accept(&agent, &images[..10]);
    wait_until(&agent, "10 results", |all| {
        of_kind(all, "result").len() == 10
    });

    // Unsigned: refused, reported, nothing changed.
    drop_into(&dir.path().join("drop"), &unsigned, "a-unsigned");
    let all = wait_until(&agent, "a refusal", |all| installs(all, "refused") == 1);
    let refusal = of_kind(&all, "install")[0];
    assert!(
        refusal["reason"].as_str().unwrap().contains("unsigned"),
        "{refusal}"
    );
    assert_eq!(refusal["pipeline"], "digits");

    drop_into(&dir.path().join("drop"), &signed, "b-signed");
    wait_until(&agent, "the install", |all| installs(all, "installed") == 1);
    accept(&agent, &images[10..40]);
    let all = wait_until(&agent, "the commit", |all| {
        installs(all, "committed") == 1 && of_kind(all, "result").len() == 40
    });
    let results = of_kind(&all, "result");
    for (ix, r) in results.iter().enumerate() {
        let (bundle, top) = (
            &r["provenance"]["bundle"],
            r["result"]["body"]["top"].as_array().unwrap().len(),
        );
        if ix < 10 {
            assert!(bundle.is_null() && top == 3, "before the install: {r}");
        } else {
            assert_eq!(
                bundle,
                &serde_json::json!({"name": "digits", "version": 2}),
                "{r}"
            );
            assert_eq!(top, 2, "{r}");
        }
    }
    let installed = of_kind(&all, "install")
        .into_iter()
        .find(|r| r["outcome"] == "installed")
        .unwrap();
    assert_eq!(installed["version"], 2);
    assert!(installed["previous_version"].is_null(), "{installed}");
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("device/bundles/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["pipelines"]["digits"]["current"]["version"], 2);
    assert_eq!(state["pipelines"]["digits"]["current"]["committed"], true);
    agent.shutdown();

    // After a restart the committed version runs from the first input.
    let agent = device(dir.path(), &base, &key);
    accept(&agent, &images[40..45]);
    let all = wait_until(&agent, "45 results", |all| {
        of_kind(all, "result").len() == 45
    });
    for r in &of_kind(&all, "result")[40..] {
        assert_eq!(r["provenance"]["bundle"]["version"], 2, "{r}");
    }
    // Another build of version 2 (other bytes): a replay, refused.
    let again = bundle_of(dir.path(), &v2_config, 2, Some(&key));
    drop_into(&dir.path().join("drop"), &again, "c-replay");
    let all = wait_until(&agent, "the replay's refusal", |all| {
        installs(all, "refused") == 2
    });
    let replay = of_kind(&all, "install")
        .into_iter()
        .filter(|r| r["outcome"] == "refused")
        .last()
        .unwrap();
    assert!(
        replay["reason"]
            .as_str()
            .unwrap()
            .contains("not above the installed version 2"),
        "{replay}"
    );
    // The same file again, under another name: handled before, so
    // ignored, and said once (the running version's file, still in the
    // folder, is no news).
    drop_into(&dir.path().join("drop"), &again, "d-copy");
    wait_until(&agent, "the copy ignored", |all| {
        of_kind(all, "install")
            .iter()
            .any(|r| r["outcome"] == "ignored" && r["reason"].as_str().unwrap().contains("d-copy"))
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let all = wait_until(&agent, "the records", |_| true);
    let ignored: Vec<&serde_json::Value> = of_kind(&all, "install")
        .into_iter()
        .filter(|r| r["outcome"] == "ignored")
        .collect();
    assert!(
        ignored
            .iter()
            .all(|r| !r["reason"].as_str().unwrap().contains("b-signed")),
        "{ignored:#?}"
    );
    assert_eq!(
        ignored
            .iter()
            .filter(|r| r["reason"].as_str().unwrap().contains("d-copy"))
            .count(),
        1,
        "once: {ignored:#?}"
    );
    agent.shutdown();
}

#[test]
fn a_version_that_fails_on_live_traffic_is_rolled_back_and_every_result_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    let (base, v2) = tolerant_device_and_strict_v2(dir.path(), &key);

    let agent = device(dir.path(), &base, &key);
    drop_into(&dir.path().join("drop"), &v2, "v2");
    wait_until(&agent, "the install", |all| installs(all, "installed") == 1);
    let big: Vec<Vec<u8>> = crate::common::digit_pngs()[..40]
        .iter()
        .map(|p| upscaled(p))
        .collect();
    accept(&agent, &big[..20]);
    let all = wait_until(&agent, "the rollback", |all| {
        installs(all, "rolled-back") == 1
    });
    let rollback = of_kind(&all, "install")
        .into_iter()
        .find(|r| r["outcome"] == "rolled-back")
        .unwrap();
    assert!(
        rollback["reason"]
            .as_str()
            .unwrap()
            .contains("failed on probation"),
        "{rollback}"
    );
    accept(&agent, &big[20..]);
    let all = wait_until(&agent, "40 results", |all| {
        of_kind(all, "result").len() == 40
    });
    let results = of_kind(&all, "result");
    // Every input has its result: failed ones on version 2, then good ones
    // on the device's own configuration again.
    let failed_on_v2 = results
        .iter()
        .filter(|r| r["provenance"]["bundle"]["version"] == 2)
        .inspect(|r| assert!(r["error"].is_object(), "{r}"))
        .count();
    assert!(failed_on_v2 >= 10, "{failed_on_v2}");
    for r in &results[20..] {
        assert!(
            r["provenance"]["bundle"].is_null() && r["result"].is_object(),
            "{r}"
        );
    }
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("device/bundles/state.json")).unwrap(),
    )
    .unwrap();
    assert!(state["pipelines"]["digits"]["current"].is_null(), "{state}");
    agent.shutdown();
}

/// `good` with its files changed by `edit`, re-listed and signed by `key`
/// (a build machine that shipped something else than it validated).
fn tampered(dir: &Path, good: &Path, key: &SecretKey, name: &str, edit: impl Fn(&Path)) -> PathBuf {
    let work = dir.join(format!("work-{name}"));
    let unpacked = sluice_bundle::archive::unpack(good, &work, &Default::default()).unwrap();
    let files = unpacked.dir.join("files");
    edit(&files);
    let mut manifest: sluice_bundle::Manifest = serde_json::from_slice(&unpacked.manifest).unwrap();
    for f in &mut manifest.files {
        let (bytes, sha256) = sluice_bundle::sha256_of(&files.join(&f.path)).unwrap();
        (f.bytes, f.sha256) = (bytes, sha256);
    }
    let bytes = manifest.to_bytes();
    let listed: Vec<(String, PathBuf)> = manifest
        .files
        .iter()
        .map(|f| (f.path.clone(), files.join(&f.path)))
        .collect();
    let out = dir.join(format!("{name}.built"));
    sluice_bundle::archive::write(&out, &bytes, &[key.sign(&bytes)], &listed).unwrap();
    out
}

#[test]
fn a_bundle_that_traps_fails_validation_or_does_not_start_is_refused_before_any_swap() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    let base = example_table();
    let good = bundle_of(dir.path(), &write_config(dir.path(), "v2", &base), 2, None);
    // Expected results that this pipeline does not give: the first
    // validation item's best label changed.
    let wrong = tampered(dir.path(), &good, &key, "wrong", |files| {
        let path = files.join(sluice_agent::bundle::EXPECTED_JSON);
        let mut expected: Vec<sluice_agent::bundle::Expected> =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let top = &mut expected[0].result.as_mut().unwrap()["top"][0]["label"];
        *top = if top == "7" { "1" } else { "7" }.into();
        std::fs::write(&path, serde_json::to_vec(&expected).unwrap()).unwrap();
    });
    // Another preprocessor than the configured one (a test plugin that
    // refuses the configuration): the pipeline does not even start.
    let broken = tampered(dir.path(), &good, &key, "broken", |files| {
        std::fs::copy(
            crate::common::plugin_path("misbehave"),
            files.join("plugins/digits-pre.wasm"),
        )
        .unwrap();
    });

    // A validation input on which the preprocessor traps (a 6000 x 6000
    // image: its decoding hits the plugin's memory cap), still expected to
    // give a result: only running it on the device shows the trap.
    let trapping = tampered(dir.path(), &good, &key, "trapping", |files| {
        let path = files.join(sluice_agent::bundle::EXPECTED_JSON);
        let expected: Vec<sluice_agent::bundle::Expected> =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let mut bomb = std::io::Cursor::new(Vec::new());
        image::GrayImage::new(6000, 6000)
            .write_to(&mut bomb, image::ImageFormat::Png)
            .unwrap();
        std::fs::write(files.join(&expected[0].input), bomb.into_inner()).unwrap();
    });

    // A start-up sample outside the bundle (a file of the device's).
    let escaping = tampered(dir.path(), &good, &key, "escaping", |files| {
        let path = files.join("pipeline.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replace("samples/digits-0000.png", "/etc/hostname");
        assert_ne!(text, edited, "the bundle has a sample: {text}");
        std::fs::write(&path, edited).unwrap();
    });

    let agent = device(dir.path(), &base, &key);
    let mut all = Vec::new();
    for (n, (bundle, name, why)) in [
        (&trapping, "0-trapping", ["failed validation", "memory cap"]),
        (&wrong, "a-wrong", ["failed validation", ".top[0].label"]),
        (&broken, "b-broken", ["does not start", "digits-pre"]),
        (
            &escaping,
            "c-escaping",
            ["pipelines.digits.sample", "outside the bundle"],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        drop_into(&dir.path().join("drop"), bundle, name);
        all = wait_until(&agent, name, |all| installs(all, "refused") == n + 1);
        let reason = of_kind(&all, "install")[n]["reason"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(why.iter().all(|w| reason.contains(w)), "{name}: {reason}");
    }
    assert_eq!(installs(&all, "installed"), 0);
    accept(&agent, &crate::common::digit_pngs()[..5]);
    let all = wait_until(&agent, "5 results", |all| of_kind(all, "result").len() == 5);
    for r in of_kind(&all, "result") {
        assert!(
            r["provenance"]["bundle"].is_null() && r["result"].is_object(),
            "{r}"
        );
    }
    // Nothing of them stays on the device.
    let versions: Vec<_> = std::fs::read_dir(dir.path().join("device/bundles/v"))
        .unwrap()
        .collect();
    assert!(versions.is_empty(), "{versions:?}");
    agent.shutdown();
}
