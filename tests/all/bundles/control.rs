//! The control plane as an operator uses it from another machine, with
//! nothing but the collector's URL and an API token: upload signed
//! bundles, make a group, run a staged rollout with a failure threshold and
//! stage deadlines, watch it halt on a failing device, revert the group to
//! the previous version, and read the audit trail of all of it, with real
//! agents and the real `sluice-collector` binary.

use super::harness::{
    accept, bundle_of, rollout_device, tolerant_device_and_strict_v2, upscaled, write_config,
};
use sluice_bundle::keys::SecretKey;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const DEVICES: [&str; 4] = ["r1", "r2", "r3", "r4"];

/// `sluice-collector ARGS --url URL --token-file TOKEN`: what it printed,
/// asserting it succeeded.
fn operator(url: &str, token: &Path, args: &[&str]) -> String {
    let out = Command::new(sluice_testkit::cargo_bin(
        "sluice-collector",
        "sluice-collector",
        &[],
    ))
    .args(args)
    .arg("--url")
    .arg(url)
    .arg("--token-file")
    .arg(token)
    .output()
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{args:?}: {text}");
    text
}

/// Rollout `id`'s status as JSON, through the API.
fn status(url: &str, token: &Path, id: u64) -> serde_json::Value {
    let text = operator(
        url,
        token,
        &["rollout", "status", &id.to_string(), "--json"],
    );
    serde_json::from_str::<serde_json::Value>(&text).unwrap()[0].clone()
}

#[test]
fn an_operator_uploads_groups_rolls_out_watches_it_halt_reverts_and_reads_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let key = SecretKey::generate();
    // Version 1: what the devices run (tolerant of r2's camera); version 2
    // breaks on r2's camera (16 x 16): r2 will roll it back.
    let (base, v2) = tolerant_device_and_strict_v2(dir, &key);
    let v1 = bundle_of(dir, &write_config(dir, "v1", &base), 1, Some(&key));
    let key_file = dir.join("ops.key");
    key.write_new(&key_file).unwrap();

    // The collector, pinning the fleet's bundle key; alice is an operator.
    let api_tokens = dir.join("api-tokens");
    std::fs::write(&api_tokens, "alice:operator=alice-secret\n").unwrap();
    let token = dir.join("alice.token");
    std::fs::write(&token, "alice-secret\n").unwrap();
    let mut collector = Command::new(sluice_testkit::cargo_bin(
        "sluice-collector",
        "sluice-collector",
        &[],
    ));
    collector
        .args([
            "--listen",
            "127.0.0.1:0",
            "--bundle-key",
            &key.public().to_text(),
        ])
        .arg("--db")
        .arg(dir.join("collector.sqlite"))
        .arg("--api-tokens")
        .arg(&api_tokens);
    for d in DEVICES {
        collector.args(["--token", &format!("{d}={d}-secret")]);
    }
    let collector = sluice_testkit::Listening::spawn(&mut collector);
    let url = collector.url().to_owned();

    let agents: Vec<sluice_agent::agent::Agent> = DEVICES
        .iter()
        .map(|d| {
            rollout_device(dir, d, &base, &key, |config| {
                config.sync.url = Some(url.clone());
                config.sync.token = Some(format!("{d}-secret"));
            })
        })
        .collect();
    let small = crate::common::digit_pngs();
    let big: Vec<Vec<u8>> = small[..20].iter().map(|p| upscaled(p)).collect();
    // Traffic (r2's camera is big) until rollout `id` is out of `state`.
    let traffic_until = |id: u64, what: &str, done: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            for (agent, d) in agents.iter().zip(DEVICES) {
                accept(agent, if d == "r2" { &big[..2] } else { &small[..2] });
            }
            let rollout = status(&url, &token, id);
            if done(&rollout) {
                return rollout;
            }
            assert!(Instant::now() < deadline, "{what}: {rollout:#}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // Upload both versions, group the fleet, and put every device on version 1.
    for file in [&v1, &v2] {
        let text = operator(&url, &token, &["bundle", "upload", file.to_str().unwrap()]);
        assert!(text.contains("stored"), "{text}");
    }
    operator(
        &url,
        &token,
        &["group", "set", "line-3", "--devices", "r1,r2,r3,r4"],
    );
    let text = operator(
        &url,
        &token,
        &[
            "rollout",
            "start",
            "--name",
            "digits",
            "--version",
            "1",
            "--group",
            "line-3",
            "--stages",
            "100",
        ],
    );
    assert!(
        text.contains("rollout 1:") && text.contains("now offered to 4"),
        "{text}"
    );
    traffic_until(1, "everyone on version 1", &|r| r["state"] == "done");

    // Version 2 in stages of 25, 50 and 100 %, halting when more than a
    // third of the devices offered it fail, each stage given 2 minutes.
    let text = operator(
        &url,
        &token,
        &[
            "rollout",
            "start",
            "--name",
            "digits",
            "--version",
            "2",
            "--group",
            "line-3",
            "--stages",
            "25,50,100",
            "--max-failed-percent",
            "33",
            "--stage-deadline",
            "2m",
        ],
    );
    assert!(
        text.contains("rollout 2:") && text.contains("now offered to 1"),
        "{text}"
    );
    let halted = traffic_until(2, "the halt", &|r| r["state"] != "running");
    assert_eq!(halted["state"], "halted", "{halted:#}");
    let reason = halted["reason"].as_str().unwrap();
    assert!(
        reason.contains("device `r2` rolled-back version 2") && reason.contains("1 of 2 device(s)"),
        "{reason}"
    );
    assert_eq!(
        halted["devices"][0]["outcome"], "committed",
        "r1 took version 2"
    );
    for d in &halted["devices"].as_array().unwrap()[2..] {
        assert_eq!(
            (d["offered"].as_bool(), d["outcome"].as_str()),
            (Some(false), None)
        );
    }

    // Back to version 1 for the whole group: a signed revert (version 3
    // carrying version 1's files), rolled out like any bundle.
    let text = operator(
        &url,
        &token,
        &[
            "rollout",
            "revert",
            "--name",
            "digits",
            "--to",
            "1",
            "--key",
            key_file.to_str().unwrap(),
            "--group",
            "line-3",
            "--stages",
            "50,100",
            "--max-failed-percent",
            "33",
            "--min-probation-items",
            "12",
        ],
    );
    assert!(text.contains("version 3 made: version 1's files"), "{text}");
    let reverted = traffic_until(3, "the revert", &|r| r["state"] != "running");
    assert_eq!(reverted["state"], "done", "{reverted:#}");
    assert_eq!(reverted["devices"].as_array().unwrap().len(), 4);
    // r1 ran version 2 and now runs the revert; r2's camera works again.
    let results = |d: &str| -> Vec<serde_json::Value> {
        let (status, body) = crate::common::http(
            reqwest::Client::new()
                .get(format!("{url}/v1/devices/{d}/results?limit=10000"))
                .bearer_auth(format!("{d}-secret")),
        );
        assert_eq!(status, 200);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["results"]
            .as_array()
            .unwrap()
            .clone()
    };
    for d in ["r1", "r2"] {
        let on_v3 = results(d)
            .into_iter()
            .filter(|r| r["provenance"]["bundle"]["version"] == 3)
            .collect::<Vec<_>>();
        assert!(!on_v3.is_empty(), "{d} ran the revert");
        assert!(
            on_v3.iter().any(|r| r["error"].is_null()),
            "{d}: {:#}",
            on_v3[0]
        );
    }

    // The revert asked for 12 items of probation (the devices' own
    // setting is 5): r3 made at least 12 results with it before committing.
    let (status, body) = crate::common::http(
        reqwest::Client::new()
            .get(format!("{url}/v1/fleet/devices/r3"))
            .bearer_auth("alice-secret"),
    );
    assert_eq!(status, 200);
    let device: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let committed = device["installs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["version"] == 3 && i["outcome"] == "committed")
        .unwrap_or_else(|| panic!("{device:#}"))["at_ms"]
        .as_i64()
        .unwrap();
    let before_commit = results("r3")
        .iter()
        .filter(|r| {
            r["provenance"]["bundle"]["version"] == 3
                && r["completed_at_ms"].as_i64().unwrap() <= committed
        })
        .count();
    assert!(before_commit >= 12, "{before_commit} items on probation");

    // The audit trail: every change, by alice, from this machine.
    let trail = operator(&url, &token, &["audit", "--json"]);
    let entries: Vec<serde_json::Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let what: Vec<(String, String)> = entries
        .iter()
        .map(|e| {
            assert_eq!(
                (e["actor"].as_str(), e["outcome"].as_str()),
                (Some("alice"), Some("ok"))
            );
            assert!(
                e["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
                "{e}"
            );
            (
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("bundle.upload", "bundle digits/1"),
        ("bundle.upload", "bundle digits/2"),
        ("group.set", "group line-3"),
        ("rollout.create", "bundle digits/1"),
        ("rollout.create", "bundle digits/2"),
        ("bundle.upload", "bundle digits/3"),
        ("rollout.create", "bundle digits/3"),
    ];
    assert_eq!(
        what,
        expected.map(|(a, t)| (a.to_owned(), t.to_owned())).to_vec(),
        "{trail}"
    );
    for agent in agents {
        agent.shutdown();
    }
}
