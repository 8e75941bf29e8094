//! Kills and restarts: SIGTERM drains and exits 0; SIGKILL at random points
//! during ingest and sync loses no acknowledged input and stores none twice; a
//! batch acknowledged upstream but not recorded before the kill is not stored
//! twice; folder inputs are taken exactly once; a damaged outbox is moved
//! aside; an idempotency key keeps its id across a kill; a crash at any step of
//! a bundle install leaves one version running and loses nothing.

use super::harness::{
    Agent, check_recovered, collector, images, ingest, install_state, post_keyed, stored,
    wait_until, with_bundles, write_config,
};
use crate::common::{hex_sha256, http, repo_root};
use crate::fault_proxy::{Fault, FaultProxy};
use rand::{RngExt, SeedableRng};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn sigterm_drains_and_exits_zero_and_every_result_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let agent = Agent::start(&write_config(dir.path(), &collector.url(), None));
    let acked: BTreeSet<String> = images()
        .iter()
        .map(|img| ingest(&agent.url, img).expect("202"))
        .collect();
    assert_eq!(acked.len(), 64);
    // Unknown pipelines are refused by name.
    let (status, body) = http(
        reqwest::Client::new()
            .post(format!("{}/v1/ingest/nope", agent.url))
            .body("x"),
    );
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("`nope`"));

    assert!(
        wait_until(Duration::from_secs(30), || stored(&collector).len() == 64),
        "results did not arrive"
    );
    let results = stored(&collector);
    assert_eq!(results.keys().cloned().collect::<BTreeSet<_>>(), acked);
    let doc = results.values().next().unwrap();
    let model = std::fs::read(repo_root().join("models/digits/digits_mlp.onnx")).unwrap();
    assert_eq!(
        doc["provenance"]["model_sha256"],
        hex_sha256(&model),
        "the record names the model that made it"
    );
    assert_eq!(doc["kind"], "result");
    assert!(doc["result"]["body"]["label"].is_string(), "{doc}");
    assert!(doc["timings"]["batch_infer_us"].is_u64(), "{doc}");
    assert_eq!(agent.sigterm(), 0);

    // `outbox status` reads the file the agent left.
    let out = Command::new(crate::common::sluice_bin())
        .args(["outbox", "status", "--json", "--config"])
        .arg(dir.path().join("sluice.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["pending_records"], 0);
    assert_eq!(status["counters"]["uploaded"], 64);
}

#[test]
fn sigkill_at_random_points_loses_no_acknowledged_input() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    // The proxy fails some rounds' uploads so that results pile up in the
    // outbox and kills also land during retries and batch re-sends.
    let proxy = FaultProxy::start(collector.addr(), Fault::Pass);
    let config = write_config(dir.path(), &proxy.url(), None);
    let images = images();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut acked = BTreeSet::new();
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < 12 && started.elapsed() < Duration::from_secs(45) {
        rounds += 1;
        proxy.set(match rng.random_range(0..3) {
            0 => Fault::Status500,
            1 => Fault::CutAnswer,
            _ => Fault::Pass,
        });
        let agent = Agent::start(&config);
        let (tx, rx) = mpsc::channel();
        let (url, batch) = (agent.url.clone(), images.clone());
        let count = rng.random_range(5..40);
        let poster = std::thread::spawn(move || {
            for image in batch.iter().cycle().take(count) {
                match ingest(&url, image) {
                    Some(id) => tx.send(id).unwrap(),
                    None => break, // The agent died under us.
                }
            }
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(10..400)));
        agent.sigkill();
        poster.join().unwrap();
        acked.extend(rx.try_iter());
    }
    assert!(
        acked.len() > 20,
        "too few inputs were acknowledged to test anything: {}",
        acked.len()
    );

    // A last, clean run delivers everything.
    proxy.set(Fault::Pass);
    let agent = Agent::start(&config);
    let delivered = wait_until(Duration::from_secs(60), || {
        let stored = stored(&collector);
        acked.iter().all(|id| stored.contains_key(id))
    });
    let stderr = agent.stderr_text();
    assert_eq!(agent.sigterm(), 0);
    let stored = stored(&collector);
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        delivered && missing.is_empty(),
        "{} of {} acknowledged inputs missing after {rounds} kills: {missing:?}\n{stderr}",
        missing.len(),
        acked.len()
    );
    eprintln!(
        "{rounds} SIGKILL rounds: {} acknowledged, {} stored (each once)",
        acked.len(),
        stored.len()
    );
}

#[test]
fn a_batch_acknowledged_but_not_recorded_before_a_kill_is_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let proxy = FaultProxy::start(collector.addr(), Fault::HoldAnswer);
    let config = write_config(dir.path(), &proxy.url(), None);
    let agent = Agent::start(&config);
    let acked: BTreeSet<String> = images()
        .iter()
        .take(10)
        .map(|img| ingest(&agent.url, img).expect("202"))
        .collect();
    // The collector stored a batch; its answer is held; kill the uploader now.
    assert!(FaultProxy::wait_for(
        &proxy.forwarded,
        1,
        Duration::from_secs(30)
    ));
    let first = stored(&collector).len();
    assert!(first > 0);
    agent.sigkill();

    proxy.set(Fault::Pass);
    let agent = Agent::start(&config);
    assert!(wait_until(Duration::from_secs(30), || stored(&collector)
        .len()
        == acked.len()));
    assert_eq!(agent.sigterm(), 0);
    let stored = stored(&collector);
    assert_eq!(stored.keys().cloned().collect::<BTreeSet<_>>(), acked);
}

#[test]
fn folder_inputs_are_taken_exactly_once_across_kills() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let config = write_config(dir.path(), &collector.url(), Some(&inbox));
    let images = images();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut names = BTreeSet::new();
    for round in 0..5 {
        for n in 0..20 {
            let name = format!("r{round}-{n:02}.png");
            // Write under a dot name, then rename: the agent never sees half a file.
            std::fs::write(inbox.join(format!(".{name}")), &images[n % images.len()]).unwrap();
            std::fs::rename(inbox.join(format!(".{name}")), inbox.join(&name)).unwrap();
            names.insert(name);
        }
        let agent = Agent::start(&config);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        agent.sigkill();
    }
    let agent = Agent::start(&config);
    let all_in = wait_until(Duration::from_secs(60), || {
        stored(&collector).len() >= names.len()
    });
    assert_eq!(agent.sigterm(), 0);
    assert!(
        all_in,
        "only {} of {} files arrived",
        stored(&collector).len(),
        names.len()
    );
    let files: Vec<String> = stored(&collector)
        .values()
        .map(|doc| {
            doc["input"]["attributes"]["file"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(files.len(), names.len(), "a file was ingested twice");
    assert_eq!(files.into_iter().collect::<BTreeSet<_>>(), names);
    let left: Vec<_> = std::fs::read_dir(&inbox)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from(".sluice-claimed")]);
}

#[test]
fn a_damaged_outbox_is_moved_aside_and_the_agent_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/outbox.sqlite"), vec![0x5a; 64 * 1024]).unwrap();
    let agent = Agent::start(&config);
    let id = ingest(&agent.url, &images()[0]).expect("202 on a fresh outbox");
    assert!(wait_until(Duration::from_secs(30), || stored(&collector)
        .contains_key(&id)));
    let stderr = agent.stderr_text();
    assert_eq!(agent.sigterm(), 0);
    assert!(
        stderr.contains("the outbox was damaged") && stderr.contains("moved it to"),
        "{stderr}"
    );
    let moved: Vec<String> = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("outbox.sqlite.damaged-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
}

#[test]
fn a_retry_with_the_same_idempotency_key_around_a_kill_makes_one_result() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);
    let images = images();
    let agent = Agent::start(&config);
    let (status, first) = post_keyed(&agent.url, &images[0], "client-42-req-7");
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["replayed"], false);
    // The agent dies; the client, not knowing whether it was taken, retries.
    agent.sigkill();
    let agent = Agent::start(&config);
    let (status, again) = post_keyed(&agent.url, &images[0], "client-42-req-7");
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["id"], first["id"], "the same input keeps its id");
    assert_eq!(again["replayed"], true);
    // The key bound to other bytes is refused; a malformed key too.
    let (status, conflict) = post_keyed(&agent.url, &images[1], "client-42-req-7");
    assert_eq!(status, 422, "{conflict}");
    assert!(
        conflict["error"]
            .as_str()
            .unwrap()
            .contains("client-42-req-7")
    );
    assert_eq!(post_keyed(&agent.url, &images[1], "bad key").0, 400);

    let id = first["id"].as_str().unwrap().to_owned();
    assert!(wait_until(Duration::from_secs(30), || stored(&collector)
        .contains_key(&id)));
    assert_eq!(agent.sigterm(), 0);
    let stored = stored(&collector);
    assert_eq!(
        stored.keys().cloned().collect::<Vec<_>>(),
        vec![id.clone()],
        "exactly one result upstream"
    );
    // It says where it came from, as a folder's results name their file.
    let input = &stored[&id]["input"];
    assert_eq!(input["content_type"], "image/png", "{input}");
    let attributes = &input["attributes"];
    assert_eq!(attributes["source"], "http", "{input}");
    assert_eq!(attributes["idempotency_key"], "client-42-req-7", "{input}");
    assert!(
        attributes["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{input}"
    );
}

#[test]
fn a_crash_at_any_install_step_leaves_one_version_running_and_loses_no_input() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);
    let drop = dir.path().join("drop");
    let key = sluice_bundle::keys::SecretKey::generate();
    with_bundles(&config, &drop, &key);
    let source =
        crate::bundles::write_config(dir.path(), "bundle-src", &crate::bundles::example_table());
    let steps = [
        "staged",
        "verified",
        "validated",
        "recorded",
        "swapped",
        "probation",
        "committing",
    ];
    // One version per round, each above any version a round recorded;
    // then one that commits, then a crash over that committed version.
    let bundles: Vec<PathBuf> = (0..steps.len() + 2)
        .map(|i| crate::bundles::bundle_of(dir.path(), &source, 2 + i as u64, Some(&key)))
        .collect();
    let images = images();
    let mut acked = BTreeSet::new();
    // The agent with `fault`, fed inputs until it dies at that step (or,
    // without one, until `done`); the bundle is then pulled from the folder.
    let round = |acked: &mut BTreeSet<String>,
                 version: usize,
                 fault: Option<&str>,
                 done: &dyn Fn() -> bool| {
        let env = fault.map(|step| ("SLUICE_FAULT_INJECT", format!("install-crash:{step}")));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut agent = Agent::start_with(&config, &env);
        let name = format!("v{version}");
        crate::bundles::drop_into(&drop, &bundles[version], &name);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let died = agent.child.try_wait().unwrap().is_some();
            if died || (fault.is_none() && done()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never reached {fault:?}: {}",
                agent.stderr_text()
            );
            if let Some(id) = ingest(&agent.url, &images[acked.len() % images.len()]) {
                acked.insert(id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::remove_file(drop.join(format!("{name}.bundle"))).unwrap();
        if fault.is_none() {
            assert_eq!(agent.sigterm(), 0);
        } else {
            assert!(agent.child.try_wait().unwrap().is_some(), "{fault:?}");
        }
    };
    for (ix, step) in steps.iter().enumerate() {
        round(&mut acked, ix, Some(step), &|| false);
        let agent = Agent::start(&config);
        acked.extend(check_recovered(dir.path(), &agent, &collector, step));
        assert_eq!(agent.sigterm(), 0);
    }
    let committed = steps.len();
    round(&mut acked, committed, None, &|| {
        install_state(dir.path())["pipelines"]["digits"]["current"]["committed"] == true
    });
    round(&mut acked, committed + 1, Some("swapped"), &|| false);
    let agent = Agent::start(&config);
    acked.extend(check_recovered(
        dir.path(),
        &agent,
        &collector,
        "swapped over a committed version",
    ));
    assert_eq!(
        install_state(dir.path())["pipelines"]["digits"]["current"]["version"],
        2 + committed as u64
    );

    // Every acknowledged input arrives, once (`stored` checks "once").
    let delivered = wait_until(Duration::from_secs(60), || {
        let stored = stored(&collector);
        acked.iter().all(|id| stored.contains_key(id))
    });
    assert!(
        delivered,
        "{} acknowledged, {} stored",
        acked.len(),
        stored(&collector).len()
    );
    // Each crash after the state named a version on probation is reported
    // upstream as a rollback: recorded, swapped, probation, committing, and
    // the crash over the committed version.
    let restarted = wait_until(Duration::from_secs(30), || {
        stored(&collector)
            .values()
            .filter(|r| r["kind"] == "install" && r["outcome"] == "rolled-back")
            .filter(|r| {
                r["reason"]
                    .as_str()
                    .unwrap()
                    .contains("restarted while version")
            })
            .count()
            == 5
    });
    assert!(
        restarted,
        "{:#?}",
        stored(&collector)
            .values()
            .filter(|r| r["kind"] == "install")
            .collect::<Vec<_>>()
    );
    assert_eq!(agent.sigterm(), 0);
}
