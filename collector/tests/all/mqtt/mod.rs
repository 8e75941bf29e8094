//! Batches through a real mosquitto broker, end to end: the device's real
//! outbox and MQTT uplink, `sluice-collector` processes on a shared
//! subscription. [`delivery`]: whatever fails, every result is stored once
//! and leaves the device only when a collector answered. [`hostile`]: what
//! other clients of the broker can and cannot do. [`bundles`]: a rollout's
//! bundle fetched through the broker.

mod bundles;
mod delivery;
mod hostile;

use sluice_agent::config::{OutboxConfig, SyncConfig};
use sluice_agent::outbox::{NewRecord, Outbox};
use sluice_agent::uplink::Uploader;
use sluice_testkit::{Mosquitto, Postgres, or_skip};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub(super) const DEVICE: &str = "dev-1";
pub(super) const TOKEN: &str = "secret-1";
const OPERATOR: &str = "op-mqtt";

/// A `sluice-collector` process taking batches from `broker`.
pub(crate) struct CollectorProcess {
    server: sluice_testkit::Listening,
    pub(crate) url: String,
}

impl CollectorProcess {
    pub(super) fn start(db: &str, broker: &str, extra: &[&str], fault: bool) -> CollectorProcess {
        let mut command = Command::new(crate::common::collector_bin());
        command
            .args(["--listen", "127.0.0.1:0", "--db", db, "--mqtt", broker])
            .args(["--token", &format!("{DEVICE}={TOKEN}")])
            .args(["--operator-token", OPERATOR])
            .arg("--ack-key")
            .arg(&ack_key().0)
            .args(extra)
            .stderr(Stdio::inherit());
        if fault {
            command.env("SLUICE_COLLECTOR_FAULT", "abort-before-answer");
        }
        let server = sluice_testkit::Listening::spawn(&mut command);
        let url = server.url().to_owned();
        CollectorProcess { server, url }
    }

    /// The process.
    pub(crate) fn child(&mut self) -> &mut Child {
        self.server.child()
    }

    /// A collector on `broker` started with [`Mosquitto::shipped`]: as its
    /// account `collector-1`, taking a batch's device from its topic (no
    /// tokens through the broker), with `extra` flags.
    pub(crate) fn on_shipped(db: &Path, broker: &Mosquitto, extra: &[&str]) -> CollectorProcess {
        let password = broker.password_file("collector-1");
        let flags = [
            "--mqtt-username",
            "collector-1",
            "--mqtt-password-file",
            password.to_str().unwrap(),
            "--mqtt-device-from-topic",
        ];
        let flags: Vec<&str> = flags.iter().chain(extra).copied().collect();
        CollectorProcess::start(db.to_str().unwrap(), &broker.url(), &flags, false)
    }

    /// Batches answered with `outcome` (`stored`, `replayed`, `busy`...).
    pub(super) fn batches(&self, outcome: &str) -> u64 {
        let text = reqwest::blocking::Client::new()
            .get(format!("{}/metrics", self.url))
            .bearer_auth(OPERATOR)
            .send()
            .unwrap()
            .text()
            .unwrap();
        // One line per status: their sum.
        text.lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "sluice_collector_batches_total{{outcome=\"{outcome}\""
                ))
            })
            .filter_map(|l| l.rsplit(' ').next())
            .map(|n| n.parse::<u64>().unwrap())
            .sum()
    }

    /// Wait for the process to end by itself (the fault seam aborts it).
    pub(super) fn wait_dead(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child().try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the collector did not abort");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The collectors' acknowledgement key file, made once by
/// `sluice-collector ack-key`, and the public key it printed.
pub(super) fn ack_key() -> &'static (std::path::PathBuf, String) {
    static KEY: std::sync::OnceLock<(std::path::PathBuf, String)> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let file = dir.join("ack.key");
        let out = Command::new(crate::common::collector_bin())
            .args(["ack-key", "--key"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(public.starts_with("ed25519:"), "{public}");
        (file, public)
    })
}

pub(super) fn sync_config(broker: &str, user: Option<(&str, &str)>) -> SyncConfig {
    let mut mqtt = sluice_mqtt::Broker::default();
    if let Some((name, password)) = user {
        mqtt.username = Some(name.into());
        mqtt.password = Some(password.into());
    }
    SyncConfig {
        url: Some(broker.to_owned()),
        token: Some(TOKEN.into()),
        batch_max_records: 40,
        timeout_ms: 2_000,
        mqtt: Some(mqtt),
        ack_keys: vec![ack_key().1.clone()],
        ..SyncConfig::default()
    }
}

pub(super) fn outbox(dir: &Path, from: u64, to: u64) -> Arc<Outbox> {
    let outbox = Outbox::open_in(&dir.join("device"), OutboxConfig::default()).unwrap();
    append(&outbox, from, to);
    Arc::new(outbox)
}

pub(super) fn append(outbox: &Outbox, from: u64, to: u64) {
    append_for(outbox, DEVICE, from, to)
}

pub(super) fn append_for(outbox: &Outbox, device: &str, from: u64, to: u64) {
    outbox
        .append(
            (from..to)
                .map(|seq| {
                    let id = format!("{device}/p/{seq}");
                    let body = serde_json::json!({"id": id, "device": device, "pipeline": "p", "seq": seq, "result": {"label": seq % 10}});
                    NewRecord {
                        id,
                        body: body.to_string().into_bytes(),
                    }
                })
                .collect(),
        )
        .unwrap();
}

pub(super) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

pub(super) fn uploader(outbox: &Arc<Outbox>, config: &SyncConfig) -> Uploader {
    uploader_of(outbox, config, DEVICE)
}

pub(super) fn uploader_of(outbox: &Arc<Outbox>, config: &SyncConfig, device: &str) -> Uploader {
    let uplink = sluice_agent::uplink::from_config(config, device, runtime().handle())
        .unwrap()
        .unwrap();
    Uploader::new(outbox.clone(), uplink, config, device).expect("sync settings")
}

/// Sync until the outbox is empty, retrying failures, within `within`.
pub(super) fn sync_all(uploader: &Uploader, outbox: &Outbox, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while outbox.pending().0 > 0 {
        assert!(
            Instant::now() < deadline,
            "{} records still pending after {within:?}; last error: {last}",
            outbox.pending().0
        );
        if let Err(e) = uploader.sync_once(&AtomicBool::new(false)) {
            last = e.to_string();
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Every seq of `0..n` stored exactly once, read through `collector`.
pub(super) fn assert_all_once(collector_url: &str, n: u64) {
    assert_all_once_of(collector_url, DEVICE, n)
}

/// [`assert_all_once`] for `device`'s results (read with the operator's token).
pub(super) fn assert_all_once_of(collector_url: &str, device: &str, n: u64) {
    let body: serde_json::Value = reqwest::blocking::Client::new()
        .get(format!(
            "{collector_url}/v1/devices/{device}/results?limit=10000"
        ))
        .bearer_auth(OPERATOR)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let seqs: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (0..n).collect::<Vec<_>>(),
        "every result of {device} once, in order"
    );
}
