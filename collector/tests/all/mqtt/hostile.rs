//! Other clients of the broker: on an open broker, answers forged,
//! replayed or taken from another device delete nothing (the signed
//! acknowledgements); on the shipped broker setup, a hostile device can
//! neither read, take nor answer anything that is not its own.

use super::*;
use sluice_agent::uplink::UplinkError;

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

    /// A genuine acknowledgement seen for `device`'s batches.
    fn genuine(&self, device: &str) -> sluice_protocol::BatchAck {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(d, _, _)| d == device)
            .find_map(|(_, _, payload)| serde_json::from_slice(payload).ok())
            .expect("an acknowledgement seen")
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
    // A collector that identifies devices by token refuses a batch without
    // one: on an open broker the topic proves nothing.
    let tokenless = SyncConfig {
        token: None,
        ..config.clone()
    };
    let refused = uploader(&outbox, &tokenless);
    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        let error = refused.sync_once(&AtomicBool::new(false)).unwrap_err();
        if !matches!(error, UplinkError::Unreachable { .. }) || Instant::now() > deadline {
            break error.to_string();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        error.contains("401") && error.contains("bearer token"),
        "{error}"
    );
    assert_eq!(outbox.pending().0, 40);
    // Its client id is the next uploader's.
    drop(refused);
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
    while mallory.seen.lock().unwrap().len() < 3 {
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

/// An MQTT client that reports what the broker answered: SUBACK reason
/// codes, PUBACK reason codes, whether it was let in.
struct Probe {
    client: sluice_mqtt::rumqttc::v5::Client,
    events: std::sync::mpsc::Receiver<String>,
}

impl Probe {
    fn connect(url: &str, username: &str, password: &str, client_id: &str) -> Probe {
        use sluice_mqtt::rumqttc::v5::{Client, Event};
        let broker = sluice_mqtt::Broker {
            username: Some(username.into()),
            password: Some(password.into()),
            ..Default::default()
        };
        let options = sluice_mqtt::options(url, client_id, &broker, 1 << 20).unwrap();
        let (client, mut connection) = Client::new(options, 64);
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                let text = match event {
                    Ok(Event::Incoming(packet)) => format!("{packet:?}"),
                    Ok(Event::Outgoing(_)) => continue,
                    Err(e) => format!("error: {e}"),
                };
                let stop = text.starts_with("error");
                if tx.send(text).is_err() || stop {
                    break;
                }
            }
        });
        Probe { client, events }
    }

    /// The next event whose text contains `what`, within 10 s.
    fn expect(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(event) if event.contains(what) => return event,
                Ok(event) => seen.push(event),
                Err(_) => break,
            }
        }
        panic!("no `{what}` from the broker; saw {seen:?}")
    }
}

/// The shipped broker setup (`deploy/mosquitto/`) against a device that
/// turned hostile (its own, valid account): it cannot read other devices'
/// batches or answers (`#`, a wildcard, another device's topic), join the
/// collectors' shared subscription, publish on another device's topics or
/// connect under another device's client id. Meanwhile a real device,
/// identified by its account alone (no token in its messages), gets all
/// its results in once, without a stall.
#[test]
fn a_hostile_device_on_the_shipped_broker_can_do_nothing_but_its_own() {
    use sluice_mqtt::rumqttc::v5::mqttbytes::QoS;
    let broker = or_skip!(Mosquitto::shipped(&[DEVICE, "dev-2"], &["collector-1"]));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let collector = CollectorProcess::on_shipped(&db, &broker, &[]);

    let mallory = Probe::connect(
        &broker.url(),
        "dev-2",
        &broker.password("dev-2"),
        "sluice-dev-2",
    );
    mallory.expect("ConnAck");
    for filter in [
        "#",
        "sluice/v1/devices/+/batches",
        "sluice/v1/devices/dev-1/batches",
        "sluice/v1/devices/dev-1/acks",
        "$share/sluice-collectors/sluice/v1/devices/+/batches",
        "$share/sluice-collectors/sluice/v1/devices/+/bundle",
        "sluice/v1/devices/dev-1/bundle",
        "$share/mallory/#",
    ] {
        mallory.client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        let suback = mallory.expect("SubAck");
        assert!(suback.contains("NotAuthorized"), "{filter}: {suback}");
    }
    // Its own answers it may read.
    mallory
        .client
        .subscribe("sluice/v1/devices/dev-2/acks", QoS::AtLeastOnce)
        .unwrap();
    assert!(mallory.expect("SubAck").contains("Success"));

    // The real device uploads while Mallory publishes on its topics.
    let password = broker.password(DEVICE);
    let mut config = sync_config(&broker.url(), Some((DEVICE, &password)));
    config.batch_max_records = 20;
    // The broker's account is the device's identity: no token travels.
    config.token = None;
    let outbox = outbox(dir.path(), 0, 200);
    let uploader = uploader(&outbox, &config);
    for topic in [
        "sluice/v1/devices/dev-1/acks",
        "sluice/v1/devices/dev-1/batches",
        "sluice/v1/devices/dev-1/bundle",
    ] {
        mallory
            .client
            .publish(topic, QoS::AtLeastOnce, false, b"{}".to_vec())
            .unwrap();
        let puback = mallory.expect("PubAck");
        assert!(puback.contains("NotAuthorized"), "{topic}: {puback}");
    }
    // Another device's client id (the device's session) is not Mallory's.
    let thief = Probe::connect(
        &broker.url(),
        "dev-2",
        &broker.password("dev-2"),
        "sluice-dev-1",
    );
    let refused = thief.expect("error");
    assert!(
        refused.contains("NotAuthorized") || refused.contains("refused"),
        "{refused}"
    );
    // Nor do an unknown account or a wrong password get in.
    let stranger = Probe::connect(&broker.url(), "dev-1", "guess", "sluice-dev-1");
    assert!(stranger.expect("error").contains("refused"));

    sync_all(&uploader, &outbox, Duration::from_secs(30));
    assert_all_once(&collector.url, 200);
    assert_eq!(
        collector.batches("stored"),
        10,
        "every batch reached the collector the first time"
    );
}
