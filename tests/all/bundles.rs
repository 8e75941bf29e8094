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
    let out = ok(&["bundle", "sign", "--key", s(&key), s(&bundle)]);
    assert!(out.contains("signed by key"), "{out}");
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

// --- Installing on a running agent -----------------------------------------

use sluice_agent::config::Config;
use sluice_agent::outbox::NewInput;
use sluice_bundle::keys::SecretKey;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The digits example as a TOML table with its paths made absolute, so a
/// copy written elsewhere still finds the models.
pub(crate) fn example_table() -> toml::Table {
    let example = repo_root().join("examples/digits");
    let mut table: toml::Table =
        toml::from_str(&std::fs::read_to_string(example.join("sluice.toml")).unwrap()).unwrap();
    let absolute = |v: &mut toml::Value| {
        let p = example.join(v.as_str().unwrap());
        *v = toml::Value::String(p.to_str().unwrap().to_owned());
    };
    absolute(&mut table["models"]["digits"]["path"]);
    absolute(&mut table["pipelines"]["digits"]["sample"]);
    for (_, plugin) in table["plugins"].as_table_mut().unwrap().iter_mut() {
        if let Some(dirs) = plugin.get_mut("grants").and_then(|g| g.get_mut("dirs")) {
            for dir in dirs.as_array_mut().unwrap() {
                absolute(&mut dir["host"]);
            }
        }
    }
    table.remove("ingest");
    table.remove("sync");
    table
}

/// `table` written as `dir/name.toml`; its path.
pub(crate) fn write_config(dir: &Path, name: &str, table: &toml::Table) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(table).unwrap()).unwrap();
    path
}

/// A signed bundle of `config`'s digits pipeline at `version`.
pub(crate) fn bundle_of(
    dir: &Path,
    config: &Path,
    version: u64,
    key: Option<&SecretKey>,
) -> PathBuf {
    let out = dir.join(format!("digits-{version}-{}.built", rand::random::<u32>()));
    sluice_agent::bundle::build(&sluice_agent::bundle::BuildRequest {
        config: config.to_owned(),
        pipeline: None,
        version,
        expires_in: Duration::from_secs(3600),
        validation_inputs: crate::common::digit_png_paths()[..8].to_vec(),
        validation: Default::default(),
        data_dir: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("bundle-data")),
        out: out.clone(),
    })
    .unwrap();
    if let Some(key) = key {
        sluice_bundle::sign(&out, key, sluice_types::now_ms()).unwrap();
    }
    out
}

/// Put `bundle` into the drop folder the way a copy tool does: under a
/// temporary name, then renamed to `*.bundle`.
pub(crate) fn drop_into(folder: &Path, bundle: &Path, name: &str) {
    std::fs::create_dir_all(folder).unwrap();
    let tmp = folder.join(format!("{name}.part"));
    std::fs::copy(bundle, &tmp).unwrap();
    std::fs::rename(&tmp, folder.join(format!("{name}.bundle"))).unwrap();
}

/// A device running the digits pipeline of `table`, trusting `key`.
fn device(dir: &Path, table: &toml::Table, key: &SecretKey) -> sluice_agent::agent::Agent {
    let mut config = Config::load(&write_config(dir, "device", table)).unwrap();
    config.device.id = "gw-bundles".into();
    config.device.data_dir = dir.join("device");
    config.runtime.cache_dir = Some(crate::common::shared_cache_dir());
    config.bundles.trusted_keys = vec![key.public().to_text()];
    config.bundles.folder = Some(dir.join("drop"));
    config.bundles.poll_ms = 20;
    config.bundles.settle_ms = 0;
    config.bundles.probation_secs = 1;
    config.bundles.probation_min_items = 10;
    sluice_agent::agent::Agent::start(config).unwrap()
}

fn accept(agent: &sluice_agent::agent::Agent, images: &[Vec<u8>]) {
    let inputs: Vec<NewInput> = images
        .iter()
        .map(|data| NewInput {
            pipeline: "digits".into(),
            content_type: "image/png".into(),
            attributes: Vec::new(),
            data: data.clone(),
        })
        .collect();
    agent.accept(&inputs).unwrap();
}

fn of_kind<'a>(all: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    all.iter()
        .filter(|r| r["kind"].as_str().unwrap_or("result") == kind)
        .collect()
}

/// Poll the agent's outbox until `done` holds (bounded); the records.
fn wait_until(
    agent: &sluice_agent::agent::Agent,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = crate::common::outbox_records(agent);
        if done(&all) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn installs(all: &[serde_json::Value], outcome: &str) -> usize {
    of_kind(all, "install")
        .iter()
        .filter(|r| r["outcome"] == outcome)
        .count()
}

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
    agent.shutdown();
}

/// `png` scaled up to 16 x 16 (another camera).
fn upscaled(png: &[u8]) -> Vec<u8> {
    let image = image::load_from_memory(png).unwrap().to_luma8();
    let big = image::imageops::resize(&image, 16, 16, image::imageops::FilterType::Nearest);
    let mut out = std::io::Cursor::new(Vec::new());
    big.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A device configuration that resizes whatever image it gets, and a signed
/// version 2 (the example as it is) that insists on 8 x 8: its validation
/// set (8 x 8 digits) passes, larger images fail on it.
fn tolerant_device_and_strict_v2(dir: &Path, key: &SecretKey) -> (toml::Table, PathBuf) {
    let mut base = example_table();
    base["plugins"]["digits-pre"]["config"]["resize"] = "exact".into();
    let v2 = bundle_of(
        dir,
        &write_config(dir, "v2", &example_table()),
        2,
        Some(key),
    );
    (base, v2)
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

#[test]
fn a_staged_rollout_advances_on_commits_and_halts_when_a_device_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    let devices = ["r1", "r2", "r3", "r4"];
    let mut tokens = sluice_collector_core::Tokens::default();
    for d in devices {
        tokens.insert(d, &format!("{d}-secret")).unwrap();
    }
    let db = dir.path().join("collector.sqlite");
    let collector = sluice_collector_core::Collector::start(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        &db,
        tokens,
    )
    .unwrap();
    // r2's camera (16 x 16) breaks version 2: r2 will roll it back.
    let (base, v2) = tolerant_device_and_strict_v2(dir.path(), &key);
    let agents: Vec<sluice_agent::agent::Agent> = devices
        .iter()
        .map(|d| {
            let mut config = Config::load(&write_config(dir.path(), d, &base)).unwrap();
            config.device.id = (*d).into();
            config.device.data_dir = dir.path().join(d);
            config.runtime.cache_dir = Some(crate::common::shared_cache_dir());
            config.sync.url = Some(collector.url().to_string());
            config.sync.token = Some(format!("{d}-secret"));
            config.sync.interval_ms = 50;
            config.bundles.trusted_keys = vec![key.public().to_text()];
            config.bundles.from_collector = true;
            config.bundles.collector_poll_secs = 1;
            config.bundles.poll_ms = 20;
            config.bundles.probation_secs = 1;
            config.bundles.probation_min_items = 5;
            sluice_agent::agent::Agent::start(config).unwrap()
        })
        .collect();

    // Stages of 25, 50 and 100 % of the four: r1, then r1 and r2, then all.
    let store = sluice_collector_core::Store::open(&db).unwrap();
    let started = store
        .start_rollout(
            &v2,
            Some(devices.map(String::from).to_vec()),
            &[25, 50, 100],
        )
        .unwrap();
    assert_eq!(started.devices.iter().filter(|d| d.offered).count(), 1);
    let small = crate::common::digit_pngs();
    let big: Vec<Vec<u8>> = small[..20].iter().map(|p| upscaled(p)).collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    let halted = loop {
        for (agent, d) in agents.iter().zip(devices) {
            accept(agent, if d == "r2" { &big[..2] } else { &small[..2] });
        }
        let rollout = store.rollouts().unwrap().remove(0);
        if rollout.state != sluice_collector_core::rollout::RolloutState::Running {
            break rollout;
        }
        assert!(Instant::now() < deadline, "{rollout:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        halted.state,
        sluice_collector_core::rollout::RolloutState::Halted,
        "{halted:#?}"
    );
    let reason = halted.reason.clone().unwrap();
    assert!(
        reason.contains("`r2` rolled-back version 2") && reason.contains("failed on probation"),
        "{reason}"
    );
    let by_device = |d: &str| {
        halted
            .devices
            .iter()
            .find(|p| p.device == d)
            .unwrap()
            .clone()
    };
    assert_eq!(by_device("r1").outcome.as_deref(), Some("committed"));
    assert_eq!(halted.stage, 1, "stopped in the second stage");
    for d in ["r3", "r4"] {
        let p = by_device(d);
        assert!(!p.offered && p.outcome.is_none(), "{p:?}");
    }
    // Upstream: r1 and r2 made results with it, r3 and r4 never.
    for d in devices {
        let (status, body) = crate::common::http(
            reqwest::Client::new()
                .get(format!(
                    "{}/v1/devices/{d}/results?limit=1000",
                    collector.url()
                ))
                .bearer_auth(format!("{d}-secret")),
        );
        assert_eq!(status, 200);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let ran_v2 = body["results"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["provenance"]["bundle"]["version"] == 2);
        assert_eq!(ran_v2, d == "r1" || d == "r2", "{d}");
    }
    for agent in agents {
        agent.shutdown();
    }
    collector.shutdown();
}

#[test]
fn a_version_that_raises_drift_alarms_the_previous_never_raised_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    // Version 2 ships a reference profile of inverted digits: on the
    // ordinary digits the device sees, its drift detector alarms. The
    // device's own version watches drift too (same windows), quietly.
    let runtime =
        sluice_agent::runtime::Runtime::start(crate::drift::example_config("digits", dir.path()))
            .unwrap();
    let pngs = crate::common::digit_pngs();
    let profile_of = |images: &[Vec<u8>], name: &str| {
        let observed = crate::drift::observe(&runtime, images, "image/png");
        let pairs: Vec<_> = observed
            .iter()
            .map(|(i, o)| (i.as_slice(), o.as_slice()))
            .collect();
        let sha = runtime.model_sha256("digits").unwrap();
        let profile = sluice_agent::drift::Profile::build("digits", sha, "digits", &pairs).unwrap();
        let path = dir.path().join(name);
        profile.write(&path).unwrap();
        path
    };
    let inverted: Vec<Vec<u8>> = pngs[200..]
        .iter()
        .map(|p| crate::drift::inverted(p))
        .collect();
    let wrong_profile = profile_of(&inverted, "inverted.profile.json");
    let right_profile = profile_of(&pngs[200..], "digits.profile.json");
    drop(runtime);
    let mut v2 = example_table();
    let set_profile = |table: &mut toml::Table, path: &Path| {
        table["models"]["digits"]
            .as_table_mut()
            .unwrap()
            .insert("profile".into(), path.to_str().unwrap().into());
    };
    set_profile(&mut v2, &wrong_profile);
    let bundle = bundle_of(
        dir.path(),
        &write_config(dir.path(), "v2", &v2),
        2,
        Some(&key),
    );
    let mut base = example_table();
    set_profile(&mut base, &right_profile);
    // A false alarm under the old version would excuse the new one: make
    // one all but impossible (the inverted profile still alarms at once).
    base.insert(
        "drift".into(),
        toml::toml! {
            window_items = 10
            false_alarm_rate = 1e-6
        }
        .into(),
    );

    let agent = device(dir.path(), &base, &key);
    accept(&agent, &pngs[..20]);
    wait_until(&agent, "quiet windows", |all| {
        of_kind(all, "drift-window").len() == 2
    });
    drop_into(&dir.path().join("drop"), &bundle, "v2");
    wait_until(&agent, "the install", |all| installs(all, "installed") == 1);
    accept(&agent, &pngs[20..60]);
    let all = wait_until(&agent, "the rollback", |all| {
        installs(all, "rolled-back") == 1
    });
    let rollback = of_kind(&all, "install")
        .into_iter()
        .find(|r| r["outcome"] == "rolled-back")
        .unwrap();
    let reason = rollback["reason"].as_str().unwrap();
    assert!(
        reason.contains("drift alarm")
            && reason.contains("none in the 2 window(s) of the version before"),
        "{reason}"
    );
    assert_eq!(installs(&all, "committed"), 0);
    agent.shutdown();
}
