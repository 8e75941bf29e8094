//! Folder inputs: one bad file fails alone and a file still being written
//! waits; an unreadable file is left alone (as an unprivileged user); a 2 GiB
//! file is refused without being read.

use super::harness::{Agent, collector, images, peak_rss_mib, stored, wait_until, write_config};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn one_bad_file_fails_alone_and_a_file_still_being_written_waits() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let inbox = dir.path().join("inbox");
    let claimed = inbox.join(".sluice-claimed");
    std::fs::create_dir_all(&claimed).unwrap();
    let file = write_config(dir.path(), &collector.url(), Some(&inbox));
    let mut config = sluice_agent::config::Config::load(&file).unwrap();
    config.ingest.listen = None;
    config.ingest.settle_ms = 400;
    config.ingest.max_input_bytes = 4096;
    let images = images();
    // Good files, one with a name too long to carry a claim prefix.
    for n in 0..5 {
        std::fs::write(inbox.join(format!("good-{n}.png")), &images[n]).unwrap();
    }
    let long = format!("{}.png", "x".repeat(240));
    std::fs::write(inbox.join(&long), &images[5]).unwrap();
    // Too large: a failed result, not a silent deletion.
    std::fs::write(inbox.join("huge.png"), vec![7u8; 10_000]).unwrap();
    // Neither FIFOs nor a directory stall anything.
    for fifo in [inbox.join("pipe.png"), claimed.join("00-000000-pipe.png")] {
        assert!(
            Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
    }
    std::fs::create_dir(claimed.join("00-000001-dir.png")).unwrap();
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    // A file written slowly, in three parts: taken only once complete.
    let slow = inbox.join("slow.png");
    let image = images[6].clone();
    let third = image.len() / 3;
    for part in [
        &image[..third],
        &image[third..2 * third],
        &image[2 * third..],
    ] {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&slow)
            .unwrap();
        f.write_all(part).unwrap();
        drop(f);
        std::thread::sleep(Duration::from_millis(150));
    }
    let arrived = wait_until(Duration::from_secs(30), || stored(&collector).len() == 8);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        agent.shutdown();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(30)).is_ok(),
        "shutdown hung"
    );
    let results = stored(&collector);
    assert!(
        arrived,
        "{} of 8 arrived: {:?}",
        results.len(),
        results.keys()
    );
    let by_file: BTreeMap<String, &serde_json::Value> = results
        .values()
        .map(|doc| {
            (
                doc["input"]["attributes"]["file"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                doc,
            )
        })
        .collect();
    let huge = by_file["huge.png"];
    assert_eq!(huge["error"]["kind"], "refused", "{huge}");
    assert!(
        huge["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_input_bytes"),
        "{huge}"
    );
    let slow = by_file["slow.png"];
    assert!(slow.get("result").is_some(), "taken half-written: {slow}");
    assert_eq!(slow["input"]["bytes"], image.len());
    let long_one = by_file
        .keys()
        .find(|name| name.starts_with("xxxx"))
        .expect("the long name");
    assert!(by_file[long_one].get("result").is_some());
    for n in 0..5 {
        assert!(by_file[&format!("good-{n}.png")].get("result").is_some());
    }
    // What could not be taken is still there, untouched.
    assert!(claimed.join("00-000001-dir.png").is_dir());
    assert!(inbox.join("pipe.png").exists());
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn as_an_unprivileged_user_an_unreadable_file_is_left_alone_and_the_others_flow() {
    // Root reads every file: the agent runs as `nobody` when the tests run
    // as root (as CI does), as itself otherwise.
    let root = unsafe { libc::geteuid() } == 0;
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o777);
    let collector = collector(dir.path());
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    chmod(&inbox, 0o777);
    let file = write_config(dir.path(), &collector.url(), Some(&inbox));
    // Its own plugin cache (writable by the agent's user), warm if the
    // shared one is.
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let shared = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent-plugin-cache");
    for entry in std::fs::read_dir(&shared).into_iter().flatten().flatten() {
        let _ = std::fs::copy(entry.path(), cache.join(entry.file_name()));
    }
    let mut config: toml::Table = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    config["runtime"]["cache_dir"] = cache.display().to_string().into();
    std::fs::write(&file, toml::to_string(&config).unwrap()).unwrap();
    for path in std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .chain([cache.clone()])
    {
        chmod(&path, 0o777);
    }
    chmod(&file, 0o644);
    let images = images();
    for n in 0..3 {
        std::fs::write(inbox.join(format!("good-{n}.png")), &images[n]).unwrap();
    }
    std::fs::write(inbox.join("secret.png"), &images[3]).unwrap();
    chmod(&inbox.join("secret.png"), 0o000);
    let command = if root {
        // setpriv execs the agent in its place, so signals reach it.
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            crate::common::sluice_bin(),
        ]);
        c
    } else {
        Command::new(crate::common::sluice_bin())
    };
    let agent = Agent::start_command(command, &file);
    let arrived = wait_until(Duration::from_secs(30), || stored(&collector).len() == 3);
    // Several scans later, the unreadable file was reported once.
    std::thread::sleep(Duration::from_millis(1500));
    let stderr = agent.stderr_text();
    assert_eq!(agent.sigterm(), 0);
    assert!(
        arrived,
        "{} of 3 arrived\n{stderr}",
        stored(&collector).len()
    );
    let reports = stderr.matches("cannot take it").count();
    assert_eq!(reports, 1, "{stderr}");
    assert!(
        stderr.contains("secret.png") && stderr.contains("Permission denied"),
        "{stderr}"
    );
    let claimed: Vec<String> = std::fs::read_dir(inbox.join(".sluice-claimed"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        claimed.len() == 1 && claimed[0].ends_with("secret.png"),
        "{claimed:?}"
    );
}

#[test]
fn a_two_gib_file_in_the_folder_is_refused_without_being_read() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let config = write_config(dir.path(), &collector.url(), Some(&inbox));
    // Sparse: 2 GiB to whoever reads it, no disk used.
    std::fs::File::create(inbox.join("big.png"))
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    std::fs::write(inbox.join("small.png"), &images()[0]).unwrap();
    let agent = Agent::start(&config);
    let arrived = wait_until(Duration::from_secs(30), || stored(&collector).len() == 2);
    let peak = peak_rss_mib(agent.child.id());
    assert_eq!(agent.sigterm(), 0);
    assert!(arrived, "{} of 2 arrived", stored(&collector).len());
    eprintln!("a 2 GiB folder file: agent peak RSS {peak:.0} MiB");
    assert!(peak < 200.0, "peak RSS {peak:.0} MiB: the file was read");
    let refused: Vec<serde_json::Value> = stored(&collector)
        .into_values()
        .filter(|doc| doc["input"]["attributes"]["file"] == "big.png")
        .collect();
    assert_eq!(refused[0]["error"]["kind"], "refused", "{refused:?}");
    assert!(!inbox.join("big.png").exists());
}
