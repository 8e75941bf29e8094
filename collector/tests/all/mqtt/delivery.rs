//! Delivery through the broker under faults: broker down at start,
//! restarted with its sessions lost, the connection cut in the middle of a
//! batch, a collector killed between its commit and its answer, two
//! collectors sharing the subscription, a collector with no room.

use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicUsize;

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
    while doomed.child().try_wait().unwrap().is_none() {
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

/// A collector with room for one MQTT batch at a time and twelve devices
/// sending at once on the shipped broker: the batches it has no room for
/// are answered `503` with `retry-after-ms` at once (not queued in the
/// collector), and every result of every device still lands once.
#[test]
fn a_full_collector_answers_busy_and_every_result_still_lands_once() {
    let devices: Vec<String> = (0..12).map(|i| format!("dev-b{i}")).collect();
    let names: Vec<&str> = devices.iter().map(String::as_str).collect();
    let broker = or_skip!(Mosquitto::shipped(&names, &["collector-1"]));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let collector = CollectorProcess::on_shipped(
        &db,
        &broker,
        &["--mqtt-max-waiting", "0", "--max-concurrent-batches", "2"],
    );
    let senders: Vec<_> = devices
        .iter()
        .map(|device| {
            let (device, url, password) = (device.clone(), broker.url(), broker.password(device));
            let dir = dir.path().join(&device);
            std::thread::spawn(move || {
                let mut config = sync_config(&url, Some((&device, &password)));
                config.token = None;
                config.batch_max_records = 20;
                let outbox = outbox(&dir, 0, 0);
                append_for(&outbox, &device, 0, 100);
                let uploader = uploader_of(&outbox, &config, &device);
                sync_all(&uploader, &outbox, Duration::from_secs(120));
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    for device in &devices {
        assert_all_once_of(&collector.url, device, 100);
    }
    assert_eq!(collector.batches("stored"), 12 * 5);
    assert!(
        collector.batches("busy") > 0,
        "twelve devices at once never found the collector full"
    );
}

/// The shipped broker's TLS listener (8883 in `deploy/mosquitto/`, here on
/// a loopback port with a certificate from the fleet's own CA): devices
/// and collectors that trust the CA (`sync.mqtt.ca_file`,
/// `--mqtt-ca-file`) deliver every result once; a device that trusts only
/// the public roots does not connect, and keeps everything.
#[test]
fn through_the_shipped_tls_listener_every_result_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = sluice_testkit::Pki::new(dir.path(), "fleet");
    let server = pki.server("broker");
    let broker = or_skip!(Mosquitto::shipped_tls(&[DEVICE], &["collector-1"], &server));
    assert!(broker.url().starts_with("mqtts://"));
    let ca = pki.ca_file();
    let collector = CollectorProcess::on_shipped(
        &dir.path().join("c.db"),
        &broker,
        &["--mqtt-ca-file", ca.to_str().unwrap()],
    );
    let device_password = broker.password(DEVICE);
    let mut config = sync_config(&broker.url(), Some((DEVICE, &device_password)));
    config.token = None;
    let outbox = outbox(dir.path(), 0, 100);

    let untrusting = uploader(&outbox, &config);
    std::thread::sleep(Duration::from_secs(1));
    let error = untrusting
        .sync_once(&AtomicBool::new(false))
        .unwrap_err()
        .to_string();
    assert!(error.contains("unreachable"), "{error}");
    assert_eq!(outbox.pending().0, 100);

    config.mqtt.as_mut().unwrap().ca_file = Some(ca.clone());
    let uploader = uploader(&outbox, &config);
    sync_all(&uploader, &outbox, Duration::from_secs(30));
    assert_all_once(&collector.url, 100);
}
