//! Power cuts, not SIGKILLs: the agent's data directory on a disk with a
//! volatile write cache (`sluice_testkit::VolatileDisk`, FUSE), cut under
//! HTTP load, during start-up and at each step of a bundle install, clean
//! and torn, then mounted again and the agent restarted. Every input the
//! agent acknowledged arrives upstream exactly once, idempotency keys keep
//! their ids across cuts, and the agent comes up after every cut. Also: a
//! torn compiled plugin in the cache is recompiled, not a crash.
//!
//! `SLUICE_POWER_CUTS=N` runs N cuts (default 6, a few seconds each);
//! `SLUICE_POWER_SEED=S` repeats a run (the seed is printed).

use crate::agent::{
    Agent, check_recovered, collector, images, install_state, stored, wait_until, with_bundles,
    write_config,
};
use rand::{RngExt, SeedableRng};
use sluice_testkit::{Cut, VolatileDisk, or_skip};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Python environment of the volatile filesystem, shared by the tests.
fn python_env() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("volatile-fs-python")
}

/// The disk of `dir`: `dir/disk` mounted at `dir/data` (the agent's
/// `data_dir` in [`write_config`]).
fn mount(dir: &Path) -> Result<VolatileDisk, sluice_testkit::Missing> {
    let (backing, mountpoint) = (dir.join("disk"), dir.join("data"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mountpoint).unwrap();
    VolatileDisk::mount(&python_env(), &backing, &mountpoint)
}

#[test]
fn the_volatile_disk_loses_what_was_not_synced() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &Path, bytes: &[u8], sync: bool| {
        use std::io::Write;
        let mut file = std::fs::File::create(path).unwrap();
        file.write_all(bytes).unwrap();
        if sync {
            file.sync_all().unwrap();
        }
    };
    let data = dir.path().join("data");
    let big: Vec<u8> = vec![0xab; 256 * 4096];
    for cut in [Cut::Clean, Cut::Torn(7)] {
        let mut disk = or_skip!(mount(dir.path()));
        write(&data.join("synced"), b"kept", true);
        write(&data.join("unsynced"), &big, false);
        std::fs::create_dir(data.join("folder")).unwrap();
        write(&data.join("rewritten"), b"old content", true);
        write(&data.join("rewritten.tmp"), b"new content", false);
        std::fs::rename(data.join("rewritten.tmp"), data.join("rewritten")).unwrap();
        // Until the cut, reads see everything written.
        assert_eq!(std::fs::read(data.join("unsynced")).unwrap(), big);
        assert_eq!(
            std::fs::read(data.join("rewritten")).unwrap(),
            b"new content"
        );
        let (files, blocks) = disk.unsynced();
        assert!(
            files >= 2 && blocks >= 257,
            "{files} files, {blocks} blocks"
        );
        eprintln!("{cut:?}: {}", disk.cut(cut));

        let _disk = mount(dir.path()).unwrap();
        // Metadata survived, synced data survived, unsynced data did not.
        assert_eq!(std::fs::read(data.join("synced")).unwrap(), b"kept");
        assert!(data.join("folder").is_dir());
        let unsynced = std::fs::read(data.join("unsynced")).unwrap();
        let renamed = std::fs::read(data.join("rewritten")).unwrap();
        match cut {
            Cut::Clean => {
                assert!(unsynced.is_empty(), "{} bytes kept", unsynced.len());
                assert!(
                    renamed.is_empty(),
                    "a rename over a synced file keeps no data"
                );
            }
            Cut::Torn(_) => {
                let blocks: Vec<&[u8]> = unsynced.chunks(4096).collect();
                let kept = blocks
                    .iter()
                    .filter(|b| b.iter().all(|&x| x == 0xab))
                    .count();
                let zeroed = blocks.iter().filter(|b| b.iter().all(|&x| x == 0)).count();
                assert_eq!(kept + zeroed, blocks.len(), "whole blocks kept or lost");
                assert!(kept > 64 && zeroed > 64, "{kept} kept, {zeroed} zeroed");
            }
        }
        for name in ["synced", "unsynced", "rewritten"] {
            std::fs::remove_file(data.join(name)).unwrap();
        }
        std::fs::remove_dir(data.join("folder")).unwrap();
    }
}

/// POST `image` with `key`: `Some((id, replayed))` once accepted, `None`
/// when the agent did not answer 202 (it may be dying).
fn post(url: &str, image: &[u8], key: &str) -> Option<(String, bool)> {
    let request = reqwest::Client::new()
        .post(format!("{url}/v1/ingest/digits"))
        .header("Content-Type", "image/png")
        .header("Idempotency-Key", key)
        .body(image.to_vec())
        .timeout(Duration::from_secs(5));
    let (status, body) = crate::common::tokio().block_on(async {
        let response = request.send().await.ok()?;
        Some((response.status().as_u16(), response.bytes().await.ok()?))
    })?;
    let body: serde_json::Value = serde_json::from_slice(&body).ok()?;
    (status == 202).then(|| {
        (
            body["id"].as_str().expect("an id").to_owned(),
            body["replayed"] == true,
        )
    })
}

/// What the client knows: the id each key was acknowledged with, and the
/// keys it sent without an answer (to send again, as a client would).
#[derive(Default)]
struct Client {
    next: usize,
    acked: BTreeMap<String, String>,
    unanswered: BTreeSet<String>,
}

impl Client {
    /// Send the unanswered keys again, then new ones, until `stop` or a
    /// request goes unanswered (the agent is gone).
    fn feed(&mut self, url: &str, images: &[Vec<u8>], mut stop: impl FnMut() -> bool) {
        loop {
            if stop() {
                return;
            }
            let key = match self.unanswered.first() {
                Some(key) => key.clone(),
                None => {
                    self.next += 1;
                    format!("power-{}", self.next)
                }
            };
            let n: usize = key.trim_start_matches("power-").parse().unwrap();
            match post(url, &images[n % images.len()], &key) {
                Some((id, replayed)) => {
                    self.unanswered.remove(&key);
                    if let Some(first) = self.acked.get(&key) {
                        assert!(replayed, "{key} accepted twice without replay");
                        assert_eq!(first, &id, "{key} changed its id across a cut");
                    }
                    self.acked.insert(key, id);
                }
                None => {
                    self.unanswered.insert(key);
                    return;
                }
            }
        }
    }
}

#[test]
fn power_cuts_under_load_at_start_up_and_during_installs_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut disk = Some(or_skip!(mount(dir.path())));
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);
    // Compiled plugins on the volatile disk too (`<data_dir>/cache`), so
    // cuts tear them; bundles from a drop folder, signed by a trusted key.
    let mut table: toml::Table =
        toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    cache_in_data_dir(&mut table);
    std::fs::write(&config, toml::to_string(&table).unwrap()).unwrap();
    let drop_folder = dir.path().join("drop");
    let key = sluice_bundle::keys::SecretKey::generate();
    with_bundles(&config, &drop_folder, &key);
    let source =
        crate::bundles::write_config(dir.path(), "bundle-src", &crate::bundles::example_table());

    let rounds: usize = std::env::var("SLUICE_POWER_CUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("SLUICE_POWER_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("power cuts: {rounds}, SLUICE_POWER_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let images = images();
    let mut client = Client::default();
    let mut installs_seen = Vec::new();
    let mut version = 2u64;

    for round in 0..rounds {
        let cut = if round % 2 == 0 {
            Cut::Clean
        } else {
            Cut::Torn(rng.random())
        };
        let what = match round % 3 {
            // Under load: inputs posted until the cut.
            0 => {
                let agent = Agent::start(&config);
                let until = Instant::now() + Duration::from_millis(rng.random_range(200..1500));
                client.feed(&agent.url, &images, || Instant::now() > until);
                agent.sigkill();
                "under load".to_owned()
            }
            // During start-up: opening the outbox, loading (or compiling)
            // plugins, measuring models, replaying the journal.
            1 => {
                let mut child = Command::new(crate::common::sluice_bin())
                    .args(["--log", "error", "run", "--config"])
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                std::thread::sleep(Duration::from_millis(rng.random_range(0..1500)));
                child.kill().unwrap();
                child.wait().unwrap();
                "during start-up".to_owned()
            }
            // At a step of a bundle install, under load.
            _ => {
                let steps = ["staged", "verified", "validated", "recorded", "swapped"];
                let step = steps[rng.random_range(0..steps.len())];
                let agent = Agent::start_with(
                    &config,
                    &[("SLUICE_FAULT_INJECT", &format!("install-crash:{step}"))],
                );
                let bundle = crate::bundles::bundle_of(dir.path(), &source, version, Some(&key));
                version += 1;
                crate::bundles::drop_into(&drop_folder, &bundle, "next");
                let mut agent = agent;
                let deadline = Instant::now() + Duration::from_secs(90);
                let child = &mut agent.child;
                client.feed(&agent.url, &images, || {
                    child.try_wait().unwrap().is_some() || Instant::now() > deadline
                });
                assert!(
                    wait_until(Duration::from_secs(90), || agent
                        .child
                        .try_wait()
                        .unwrap()
                        .is_some()),
                    "the install never reached {step}"
                );
                std::fs::remove_file(drop_folder.join("next.bundle")).unwrap();
                installs_seen.push(step);
                format!("at install step {step}")
            }
        };
        let lost = disk.take().unwrap().cut(cut);
        eprintln!("cut {round} ({cut:?}) {what}: {lost}");
        disk = Some(mount(dir.path()).expect("the disk mounts again"));
        // The agent comes up after every cut (`start` fails the test if it
        // is not ready in time), runs a committed version or the device's
        // own configuration, and takes inputs.
        let agent = Agent::start(&config);
        let fresh = check_recovered(dir.path(), &agent, &collector, &what);
        assert_eq!(fresh.len(), 3);
        agent.sigkill();
    }

    // A last, clean run: the client sends what went unanswered, and every
    // acknowledged input arrives.
    let agent = Agent::start(&config);
    let unanswered: Vec<String> = client.unanswered.iter().cloned().collect();
    for key in unanswered {
        let n: usize = key.trim_start_matches("power-").parse().unwrap();
        let (id, _) = post(&agent.url, &images[n % images.len()], &key).expect("accepted");
        client.unanswered.remove(&key);
        client.acked.entry(key).or_insert(id);
    }
    let delivered = wait_until(Duration::from_secs(120), || {
        let stored = stored(&collector);
        client.acked.values().all(|id| stored.contains_key(id))
    });
    let stderr = agent.stderr_text();
    assert_eq!(agent.sigterm(), 0);
    let stored = stored(&collector);
    let missing: Vec<&String> = client
        .acked
        .values()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        delivered && missing.is_empty(),
        "{} of {} acknowledged inputs lost after {rounds} power cuts (seed {seed}): {missing:?}\n{stderr}",
        missing.len(),
        client.acked.len()
    );
    // Exactly once: `stored` refuses an id twice; no key made two results.
    let mut by_key: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for (id, record) in &stored {
        if let Some(key) = record["input"]["attributes"]["idempotency_key"].as_str() {
            by_key.entry(key).or_default().push(id);
        }
    }
    for (key, ids) in &by_key {
        assert_eq!(ids.len(), 1, "{key} made {ids:?} (seed {seed})");
        if let Some(acked) = client.acked.get(*key) {
            assert_eq!(ids[0], acked, "{key} (seed {seed})");
        }
    }
    assert!(
        client.acked.len() > 20,
        "too few inputs acknowledged to test anything: {}",
        client.acked.len()
    );
    eprintln!(
        "{rounds} power cuts (installs cut at {installs_seen:?}): {} acknowledged, {} results stored, each once; last state {}",
        client.acked.len(),
        stored.len(),
        install_state(dir.path())["pipelines"]["digits"]["current"]
    );
    drop(disk);
}

/// Keep the compiled plugins at `<data_dir>/cache` (the `sluice` command
/// would use the machine's cache): where the test tears them.
fn cache_in_data_dir(table: &mut toml::Table) {
    let data_dir = table["device"]["data_dir"].as_str().unwrap().to_owned();
    let mut runtime = toml::Table::new();
    runtime.insert("cache_dir".into(), format!("{data_dir}/cache").into());
    table.insert("runtime".into(), runtime.into());
}

#[test]
fn a_torn_compiled_plugin_in_the_cache_is_recompiled_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "http://127.0.0.1:9", None);
    let mut table: toml::Table =
        toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    cache_in_data_dir(&mut table);
    table.remove("sync");
    std::fs::write(&config, toml::to_string(&table).unwrap()).unwrap();
    let sluice = |args: &[&str]| {
        let out = Command::new(crate::common::sluice_bin())
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = sluice(&["plugin", "compile"]);
    assert_eq!(code, Some(0), "{stderr}");
    let cache = dir.path().join("data/cache");
    let entries: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    // What a torn power cut left before entries were sealed: wasmtime's
    // own file, its header intact, every other 4 KiB block zeroed (this
    // made wasmtime panic at every start).
    for entry in &entries {
        let compiled = sluice_durable::sealed::read(entry, u64::MAX)
            .unwrap()
            .unwrap();
        let mut torn = compiled.clone();
        for block in torn.chunks_mut(4096).skip(1).step_by(2) {
            block.fill(0);
        }
        std::fs::write(entry, torn).unwrap();
    }
    let heldout = crate::common::digit_png_paths();
    let (code, stderr) = {
        let out = Command::new(crate::common::sluice_bin())
            .args(["infer", "--config"])
            .arg(&config)
            .arg(&heldout[0])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stderr
            .matches("discarding compiled plugin, recompiling")
            .count(),
        2,
        "one line per plugin: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Recompiled and sealed again: the next start loads them silently.
    let (code, stderr) = sluice(&["plugin", "compile"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("discarding"), "{stderr}");
}
