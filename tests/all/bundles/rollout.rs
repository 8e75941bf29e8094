//! Rollouts: a staged rollout advances on commits and halts when a device
//! rolls back, with devices reaching the collector over HTTP and through
//! the MQTT broker; a version raising drift alarms the previous one never raised is
//! rolled back.

use super::harness::{
    accept, bundle_of, device, drop_into, example_table, installs, of_kind, rollout_device,
    tolerant_device_and_strict_v2, upscaled, wait_until, write_config,
};
use sluice_agent::config::Config;
use sluice_bundle::keys::SecretKey;
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn a_staged_rollout_over_http_advances_on_commits_and_halts_when_a_device_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("collector.sqlite");
    let mut tokens = sluice_collector_core::Tokens::default();
    for d in DEVICES {
        tokens.insert(d, &format!("{d}-secret")).unwrap();
    }
    let collector = sluice_collector_core::Collector::start(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        &db,
        tokens,
    )
    .unwrap();
    let url = collector.url().to_string();
    staged_rollout(dir.path(), &db, &url, |config, d| {
        config.sync.url = Some(url.clone());
        config.sync.token = Some(format!("{d}-secret"));
    });
    collector.shutdown();
}

/// The same rollout with devices whose uplink is MQTT, on the shipped
/// broker: offers and bundles reach them through the broker, in chunks,
/// identified by their broker accounts (no token), the collector's
/// answers verified with its pinned key.
#[test]
fn a_staged_rollout_over_mqtt_advances_on_commits_and_halts_when_a_device_rolls_back() {
    let broker = sluice_testkit::or_skip!(sluice_testkit::Mosquitto::shipped(
        &DEVICES,
        &["collector-1"]
    ));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("collector.sqlite");
    let ack_key = dir.path().join("ack.key");
    let signer = SecretKey::generate();
    signer.write_new(&ack_key).unwrap();
    let public = signer.public();
    let mut collector = std::process::Command::new(sluice_testkit::cargo_bin(
        "sluice-collector",
        "sluice-collector",
        &[],
    ));
    collector
        .args(["--listen", "127.0.0.1:0", "--mqtt", &broker.url()])
        .args(["--mqtt-username", "collector-1", "--mqtt-device-from-topic"])
        .arg("--mqtt-password-file")
        .arg(broker.password_file("collector-1"))
        .arg("--db")
        .arg(&db)
        .arg("--ack-key")
        .arg(&ack_key);
    for d in DEVICES {
        collector.args(["--token", &format!("{d}={d}-secret")]);
    }
    let collector = sluice_testkit::Listening::spawn(&mut collector);
    let url = collector.url().to_owned();
    staged_rollout(dir.path(), &db, &url, |config, d| {
        config.sync.url = Some(broker.url());
        config.sync.token = None;
        config.sync.ack_keys = vec![public.to_text()];
        config.sync.mqtt = Some(sluice_mqtt::Broker {
            username: Some(d.to_owned()),
            password_file: Some(broker.password_file(d)),
            ..Default::default()
        });
    });
}

const DEVICES: [&str; 4] = ["r1", "r2", "r3", "r4"];

/// Four devices, a rollout of version 2 in stages of 25, 50 and 100 % that
/// r2 (whose camera breaks version 2) rolls back: it halts in the second
/// stage, r3 and r4 are never offered it. `collector`: the collector's
/// HTTP address (for the results); `sync`: how each device reaches it.
fn staged_rollout(dir: &Path, db: &Path, collector: &str, sync: impl Fn(&mut Config, &str)) {
    let key = SecretKey::generate();
    // r2's camera (16 x 16) breaks version 2: r2 will roll it back.
    let (base, v2) = tolerant_device_and_strict_v2(dir, &key);
    let agents: Vec<sluice_agent::agent::Agent> = DEVICES
        .iter()
        .map(|d| rollout_device(dir, d, &base, &key, |config| sync(config, d)))
        .collect();

    // Stages of 25, 50 and 100 % of the four: r1, then r1 and r2, then all.
    let store = sluice_collector_core::Store::open(db).unwrap();
    let started = store
        .start_rollout(&v2, DEVICES.map(String::from).to_vec(), &[25, 50, 100])
        .unwrap();
    assert_eq!(started.devices.iter().filter(|d| d.offered).count(), 1);
    let small = crate::common::digit_pngs();
    let big: Vec<Vec<u8>> = small[..20].iter().map(|p| upscaled(p)).collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    let halted = loop {
        for (agent, d) in agents.iter().zip(DEVICES) {
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
    for d in DEVICES {
        let (status, body) = crate::common::http(
            reqwest::Client::new()
                .get(format!("{collector}/v1/devices/{d}/results?limit=1000"))
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
