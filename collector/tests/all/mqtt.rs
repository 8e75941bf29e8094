//! Batches through a real mosquitto broker, end to end: the device's real
//! outbox and MQTT uplink, `sluice-collector` processes on a shared
//! subscription. Whatever fails (broker down at start, broker restarted
//! and its sessions lost, the connection cut in the middle of a batch, a
//! collector killed between its commit and its answer), every result is
//! stored once and leaves the device only when a collector answered.

use sluice_agent::config::{OutboxConfig, SyncConfig};
use sluice_agent::outbox::{NewRecord, Outbox};
use sluice_agent::uplink::Uploader;
use sluice_testkit::{Mosquitto, Postgres, or_skip};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DEVICE: &str = "dev-1";
const TOKEN: &str = "secret-1";
const OPERATOR: &str = "op-mqtt";

/// A `sluice-collector` process taking batches from `broker`.
struct CollectorProcess {
    child: Child,
    url: String,
}

impl CollectorProcess {
    fn start(db: &str, broker: &str, extra: &[&str], fault: bool) -> CollectorProcess {
        let mut command = Command::new(crate::common::collector_bin());
        command
            .args(["--listen", "127.0.0.1:0", "--db", db, "--mqtt", broker])
            .args(["--token", &format!("{DEVICE}={TOKEN}")])
            .args(["--operator-token", OPERATOR])
            .arg("--ack-key")
            .arg(&ack_key().0)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if fault {
            command.env("SLUICE_COLLECTOR_FAULT", "abort-before-answer");
        }
        let mut child = command.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap()
            .trim_end_matches(',')
            .to_owned();
        // Keep reading so the collector never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        CollectorProcess { child, url }
    }

    /// Batches answered with `outcome` (`stored`, `replayed`).
    fn batches(&self, outcome: &str) -> u64 {
        let text = reqwest::blocking::Client::new()
            .get(format!("{}/metrics", self.url))
            .bearer_auth(OPERATOR)
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "sluice_collector_batches_total{{outcome=\"{outcome}\""
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// Wait for the process to end by itself (the fault seam aborts it).
    fn wait_dead(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the collector did not abort");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The collectors' acknowledgement key file, made once by
/// `sluice-collector ack-key`, and the public key it printed.
fn ack_key() -> &'static (std::path::PathBuf, String) {
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

fn sync_config(broker: &str, user: Option<(&str, &str)>) -> SyncConfig {
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

fn outbox(dir: &Path, from: u64, to: u64) -> Arc<Outbox> {
    let outbox = Outbox::open_in(&dir.join("device"), OutboxConfig::default()).unwrap();
    append(&outbox, from, to);
    Arc::new(outbox)
}

fn append(outbox: &Outbox, from: u64, to: u64) {
    append_for(outbox, DEVICE, from, to)
}

fn append_for(outbox: &Outbox, device: &str, from: u64, to: u64) {
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

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

fn uploader(outbox: &Arc<Outbox>, config: &SyncConfig) -> Uploader {
    uploader_of(outbox, config, DEVICE)
}

fn uploader_of(outbox: &Arc<Outbox>, config: &SyncConfig, device: &str) -> Uploader {
    let uplink = sluice_agent::uplink::from_config(config, device, runtime().handle())
        .unwrap()
        .unwrap();
    Uploader::new(outbox.clone(), uplink, config, device).expect("sync settings")
}

/// Sync until the outbox is empty, retrying failures, within `within`.
fn sync_all(uploader: &Uploader, outbox: &Outbox, within: Duration) {
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
fn assert_all_once(collector_url: &str, n: u64) {
    let body: serde_json::Value = reqwest::blocking::Client::new()
        .get(format!(
            "{collector_url}/v1/devices/{DEVICE}/results?limit=10000"
        ))
        .bearer_auth(TOKEN)
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
        "every result once, in order"
    );
}

/// A TCP relay to `target` that cuts every connection once `budget`
/// bytes went from the client, once (then relays untouched).
struct CuttingRelay {
    port: u16,
    cuts: Arc<AtomicUsize>,
}

impl CuttingRelay {
    fn start(target: u16, budget: usize) -> CuttingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cuts = Arc::new(AtomicUsize::new(0));
        let armed = Arc::new(AtomicBool::new(true));
        let c = cuts.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (c, armed) = (c.clone(), armed.clone());
                let (mut client_r, mut server_w) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut server_r, mut client_w) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server_r, &mut client_w);
                    let _ = client_w.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let mut sent = 0;
                    let mut buf = [0u8; 1024];
                    loop {
                        let Ok(n) = client_r.read(&mut buf) else {
                            break;
                        };
                        if n == 0 {
                            break;
                        }
                        if armed.load(Ordering::SeqCst) && sent + n > budget {
                            // Half of what would cross the budget, then cut.
                            let _ =
                                server_w.write_all(&buf[..(budget - sent.min(budget)).min(n) / 2]);
                            armed.store(false, Ordering::SeqCst);
                            c.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        sent += n;
                        if server_w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = server_w.shutdown(std::net::Shutdown::Both);
                    let _ = client_r.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingRelay { port, cuts }
    }
}

#[test]
fn through_mosquitto_results_leave_only_on_the_collectors_answer() {
    let broker = or_skip!(Mosquitto::with_users(&[
        ("device", "pw-d"),
        ("collector", "pw-c")
    ]));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let config = sync_config(&broker.url(), Some(("device", "pw-d")));
    let outbox = outbox(dir.path(), 0, 100);
    let uploader = uploader(&outbox, &config);

    // The broker takes the batch (PUBACK) but no collector is there: the
    // records stay on the device.
    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        match uploader.sync_once(&AtomicBool::new(false)) {
            Err(e) if e.to_string().contains("no answer") => break e.to_string(),
            _ if Instant::now() > deadline => panic!("no timeout error"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(error.contains("is a collector subscribed"), "{error}");
    assert_eq!(
        outbox.pending().0,
        100,
        "the broker's PUBACK deleted nothing"
    );

    // A wrong broker password is refused at the broker.
    let wrong = sync_config(&broker.url(), Some(("device", "nope")));
    let wrong_uploader = uploader_for(&outbox, &wrong);
    let e = wrong_uploader
        .sync_once(&AtomicBool::new(false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not connected") || e.contains("broker"), "{e}");

    let password = dir.path().join("broker-password");
    std::fs::write(&password, "pw-c\n").unwrap();
    let collector = CollectorProcess::start(
        db.to_str().unwrap(),
        &broker.url(),
        &[
            "--mqtt-username",
            "collector",
            "--mqtt-password-file",
            password.to_str().unwrap(),
        ],
        false,
    );
    sync_all(&uploader, &outbox, Duration::from_secs(30));
    assert_all_once(&collector.url, 100);
}

fn uploader_for(outbox: &Arc<Outbox>, config: &SyncConfig) -> Uploader {
    let uploader = uploader(outbox, config);
    // Give the connection its chance to be refused.
    std::thread::sleep(Duration::from_millis(500));
    uploader
}

#[test]
fn broker_down_restarted_or_cut_mid_batch_loses_and_duplicates_nothing() {
    let mut broker = or_skip!(Mosquitto::start());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let collector = CollectorProcess::start(db.to_str().unwrap(), &broker.url(), &[], false);

    // Down at the device's start.
    broker.stop();
    let relay = CuttingRelay::start(broker.port(), 1_000);
    let config = sync_config(&format!("mqtt://127.0.0.1:{}", relay.port), None);
    let outbox = outbox(dir.path(), 0, 120);
    let uploader = uploader(&outbox, &config);
    let e = uploader
        .sync_once(&AtomicBool::new(false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("127.0.0.1"), "names the broker: {e}");
    assert_eq!(outbox.pending().0, 120);

    // Up: the first connection is cut in the middle of a batch (the relay
    // lets 1000 bytes through, then half a packet); the uplink reconnects
    // and sends it again.
    broker.restart();
    sync_all(&uploader, &outbox, Duration::from_secs(60));
    assert_eq!(
        relay.cuts.load(Ordering::SeqCst),
        1,
        "the connection was cut once"
    );
    assert_all_once(&collector.url, 120);

    // Restarted without persistence: every session is lost, the device's
    // subscription to its answers too; new results still arrive once.
    broker.restart();
    append(&outbox, 120, 200);
    sync_all(&uploader, &outbox, Duration::from_secs(60));
    assert_all_once(&collector.url, 200);
}

#[test]
fn a_collector_killed_between_commit_and_answer_stores_nothing_twice() {
    let broker = or_skip!(Mosquitto::start());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let mut doomed = CollectorProcess::start(db.to_str().unwrap(), &broker.url(), &[], true);
    let config = sync_config(&broker.url(), None);
    let outbox = outbox(dir.path(), 0, 40);
    let uploader = uploader(&outbox, &config);
    // The collector commits the batch and dies before answering.
    let deadline = Instant::now() + Duration::from_secs(20);
    while doomed.child.try_wait().unwrap().is_none() {
        let _ = uploader.sync_once(&AtomicBool::new(false));
        assert!(Instant::now() < deadline, "no batch reached the collector");
    }
    doomed.wait_dead();
    assert_eq!(outbox.pending().0, 40, "unanswered: kept on the device");
    let collector = CollectorProcess::start(db.to_str().unwrap(), &broker.url(), &[], false);
    sync_all(&uploader, &outbox, Duration::from_secs(30));
    assert_all_once(&collector.url, 40);
    assert_eq!(
        collector.batches("replayed"),
        1,
        "the batch committed before the kill is answered as a replay"
    );
}

/// Two collectors on one PostgreSQL database share the broker's
/// subscription: both take batches, each result is stored once.
#[test]
fn collectors_on_a_shared_subscription_split_the_batches() {
    let broker = or_skip!(Mosquitto::start());
    let pg = or_skip!(Postgres::start(false));
    let db = pg.database("fleet");
    let collectors: Vec<_> = (0..2)
        .map(|_| CollectorProcess::start(&db, &broker.url(), &[], false))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut config = sync_config(&broker.url(), None);
    config.batch_max_records = 10;
    let outbox = outbox(dir.path(), 0, 400);
    let uploader = uploader(&outbox, &config);
    sync_all(&uploader, &outbox, Duration::from_secs(60));
    assert_all_once(&collectors[0].url, 400);
    let split: Vec<u64> = collectors.iter().map(|c| c.batches("stored")).collect();
    assert_eq!(split.iter().sum::<u64>(), 40, "{split:?}");
    assert!(
        split.iter().all(|n| *n > 0),
        "both collectors took batches: {split:?}"
    );
    assert_eq!(
        pg.psql("fleet", "SELECT COUNT(*), COUNT(DISTINCT id) FROM results"),
        "400|400"
    );
}

/// What a hostile client of an open broker sees and sends: it reads every
/// device's batches and answers, and answers a device's batches itself.
struct Mallory {
    client: sluice_mqtt::rumqttc::v5::Client,
    /// Genuine answers seen, by device: (batch key, payload).
    seen: Arc<std::sync::Mutex<Vec<(String, String, Vec<u8>)>>>,
    /// Batch keys `dev-1` published while Mallory answers them.
    batches: std::sync::mpsc::Receiver<String>,
    answering: Arc<AtomicBool>,
}

impl Mallory {
    fn connect(url: &str) -> Mallory {
        use sluice_mqtt::rumqttc::v5::{Client, Event, Incoming, mqttbytes::QoS};
        let options = sluice_mqtt::options(url, "mallory", &Default::default(), 1 << 20).unwrap();
        let (client, mut connection) = Client::new(options, 64);
        client
            .subscribe("sluice/v1/devices/+/acks", QoS::AtLeastOnce)
            .unwrap();
        client
            .subscribe(
                format!("sluice/v1/devices/{DEVICE}/batches"),
                QoS::AtLeastOnce,
            )
            .unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let answering = Arc::new(AtomicBool::new(false));
        let (tx, batches) = std::sync::mpsc::channel();
        let (seen2, answering2) = (seen.clone(), answering.clone());
        std::thread::spawn(move || {
            for event in connection.iter() {
                let Ok(Event::Incoming(Incoming::Publish(p))) = event else {
                    continue;
                };
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                let key = p
                    .properties
                    .and_then(|p| p.correlation_data)
                    .map(|k| String::from_utf8_lossy(&k).into_owned())
                    .unwrap_or_default();
                if topic.ends_with("/acks") {
                    let device = topic.split('/').nth(3).unwrap().to_owned();
                    seen2
                        .lock()
                        .unwrap()
                        .push((device, key, p.payload.to_vec()));
                } else if answering2.load(Ordering::SeqCst) && tx.send(key).is_err() {
                    break;
                }
            }
        });
        Mallory {
            client,
            seen,
            batches,
            answering,
        }
    }

    /// A genuine answer seen for `device`'s batches.
    fn genuine(&self, device: &str) -> sluice_protocol::BatchAck {
        let seen = self.seen.lock().unwrap();
        let (_, _, payload) = seen
            .iter()
            .find(|(d, _, _)| d == device)
            .expect("an answer seen");
        serde_json::from_slice(payload).unwrap()
    }

    /// Answer `dev-1`'s batch `key` with `ack`, as a collector would.
    fn answer(&self, key: &str, ack: &sluice_protocol::BatchAck) {
        use sluice_mqtt::rumqttc::v5::mqttbytes::{QoS, v5::PublishProperties};
        let properties = PublishProperties {
            correlation_data: Some(key.as_bytes().to_vec().into()),
            user_properties: vec![("status".into(), "200".into())],
            ..Default::default()
        };
        self.client
            .publish_with_properties(
                sluice_protocol::mqtt::acks("sluice", DEVICE),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(ack).unwrap(),
                properties,
            )
            .unwrap();
    }
}

/// On an open broker (anonymous clients, no ACL: the worst case), a
/// client that reads every device's traffic answers a device's batches
/// while no collector runs: unsigned, signed by its own key, another
/// batch's genuine answer, one re-labelled with this batch's key, another
/// device's genuine answer. The device deletes nothing on any of them, and
/// everything arrives once when a collector is back.
#[test]
fn forged_replayed_and_other_devices_answers_delete_nothing() {
    use sluice_protocol::BatchAck;
    use sluice_protocol::keys::SecretKey;
    let broker = or_skip!(Mosquitto::start());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let mallory = Mallory::connect(&broker.url());
    let collector = CollectorProcess::start(
        db.to_str().unwrap(),
        &broker.url(),
        &["--token", "dev-2=secret-2"],
        false,
    );
    let config = sync_config(&broker.url(), None);
    let outbox = outbox(dir.path(), 0, 40);
    let uploader = uploader(&outbox, &config);
    sync_all(&uploader, &outbox, Duration::from_secs(30));
    let other =
        Arc::new(Outbox::open_in(&dir.path().join("dev-2"), OutboxConfig::default()).unwrap());
    append_for(&other, "dev-2", 0, 40);
    let config_2 = SyncConfig {
        token: Some("secret-2".into()),
        ..config.clone()
    };
    sync_all(
        &uploader_of(&other, &config_2, "dev-2"),
        &other,
        Duration::from_secs(30),
    );
    drop(collector);
    let deadline = Instant::now() + Duration::from_secs(10);
    while mallory.seen.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "Mallory saw no answers");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mine, theirs) = (mallory.genuine(DEVICE), mallory.genuine("dev-2"));
    assert!(mine.signature.is_some(), "the collector signs: {mine:?}");

    // The next batch: Mallory answers it, each time another way.
    append(&outbox, 40, 80);
    mallory.answering.store(true, Ordering::SeqCst);
    let ids: Vec<String> = (40..80).map(|seq| format!("{DEVICE}/p/{seq}")).collect();
    let digest = sluice_protocol::records_digest(ids.iter().map(String::as_str));
    let forgeries: Vec<(&str, Box<dyn Fn(&str) -> BatchAck>)> = vec![
        (
            "is not signed",
            Box::new(|key| BatchAck::new(key, 40, 0, false)),
        ),
        (
            "which this device does not pin",
            Box::new(|key| {
                let mut ack = BatchAck::new(key, 40, 0, false);
                ack.sign(DEVICE, digest.clone(), &SecretKey::generate());
                ack
            }),
        ),
        ("acknowledges batch", Box::new(|_| mine.clone())),
        (
            "does not verify",
            Box::new(|key| BatchAck {
                key: key.into(),
                stored: 40,
                ..mine.clone()
            }),
        ),
        ("acknowledges batch", Box::new(|_| theirs.clone())),
        (
            "does not verify",
            Box::new(|key| BatchAck {
                key: key.into(),
                stored: 40,
                ..theirs.clone()
            }),
        ),
    ];
    for (expected, forge) in &forgeries {
        let attempt = std::thread::scope(|scope| {
            let sync = scope.spawn(|| uploader.sync_once(&AtomicBool::new(false)));
            let key = mallory
                .batches
                .recv_timeout(Duration::from_secs(10))
                .expect("the device sent its batch");
            mallory.answer(&key, &forge(&key));
            sync.join().unwrap()
        });
        let error = attempt
            .expect_err("a forged answer acknowledges nothing")
            .to_string();
        assert!(error.contains(expected), "expected `{expected}`: {error}");
        assert_eq!(
            outbox.pending().0,
            40,
            "deleted on a forged answer: {error}"
        );
    }
    mallory.answering.store(false, Ordering::SeqCst);

    let collector = CollectorProcess::start(db.to_str().unwrap(), &broker.url(), &[], false);
    sync_all(&uploader, &outbox, Duration::from_secs(30));
    assert_all_once(&collector.url, 80);
}
