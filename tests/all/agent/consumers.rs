//! Local consumers (`[consumers.NAME]`) against a real mosquitto and a
//! real web hook on loopback: every result reaches the broker (QoS 1, the
//! last retained) and the hook; a hook that is down falls behind (its lag
//! is a metric) and gets what it missed when back, one result it refuses
//! for good is skipped alone; after a restart each consumer goes on from
//! its cursor (nothing sent again), and the latencies are in `/metrics`.

use super::harness::{folder_only, images, wait_until};
use crate::common::{http, tokio};
use sluice_agent::config::{ConsumerConfig, MqttConsumerConfig, WebhookConsumerConfig};
use sluice_mqtt::rumqttc::v5::mqttbytes::QoS;
use sluice_mqtt::rumqttc::v5::mqttbytes::v5::Packet;
use sluice_mqtt::rumqttc::v5::{Client, Connection, Event, MqttOptions};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A web hook: answers `status` (the third distinct result with 400 when
/// it is 200), noting every result id posted and its answer.
#[derive(Default)]
struct Hook {
    status: AtomicU16,
    posts: Mutex<Vec<(String, u16)>>,
}

impl Hook {
    fn start() -> (Arc<Hook>, String) {
        let hook = Arc::new(Hook {
            status: AtomicU16::new(503),
            ..Hook::default()
        });
        let listener = tokio()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}/results", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/results",
            axum::routing::post({
                let hook = hook.clone();
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    let id = headers["x-sluice-id"].to_str().unwrap().to_owned();
                    let record: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(record["id"], id.as_str(), "the body is the result's record");
                    let mut posts = hook.posts.lock().unwrap();
                    let mut status = hook.status.load(Ordering::SeqCst);
                    let mut seen: Vec<&String> = posts.iter().map(|(i, _)| i).collect();
                    seen.dedup();
                    if status == 200
                        && (seen.len() == 2 && !seen.contains(&&id)
                            || posts.iter().any(|(i, s)| *i == id && *s == 400))
                    {
                        status = 400;
                    }
                    posts.push((id, status));
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        tokio().spawn(async move { axum::serve(listener, app).await });
        (hook, url)
    }

    /// Distinct ids answered `status`.
    fn answered(&self, status: u16) -> Vec<String> {
        let mut ids: Vec<String> = self
            .posts
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| *s == status)
            .map(|(i, _)| i.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// A subscriber to `filter` on the broker at `port`.
pub(super) fn subscribe(port: u16, filter: &str) -> (Client, Connection) {
    let options = MqttOptions::new(
        format!("reader-{}", rand::random::<u32>()),
        "127.0.0.1",
        port,
    );
    let (client, connection) = Client::new(options, 16);
    client.subscribe(filter, QoS::AtLeastOnce).unwrap();
    (client, connection)
}

/// A message a subscriber received.
#[derive(Debug)]
pub(super) struct Message {
    pub(super) topic: String,
    /// Its user property `id`.
    pub(super) property: String,
    /// The record's `id`.
    pub(super) id: String,
    pub(super) retained: bool,
    pub(super) record: serde_json::Value,
}

/// Messages received within `wait`.
pub(super) fn received(connection: &mut Connection, wait: Duration) -> Vec<Message> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
            connection.recv_timeout(Duration::from_millis(100))
        {
            let property = p
                .properties
                .unwrap_or_default()
                .user_properties
                .into_iter()
                .find(|(k, _)| k == "id")
                .map(|(_, v)| v)
                .unwrap_or_default();
            let record: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
            got.push(Message {
                topic: String::from_utf8(p.topic.to_vec()).unwrap(),
                property,
                id: record["id"].as_str().unwrap().to_owned(),
                retained: p.retain,
                record,
            });
        }
    }
    got
}

fn metrics(url: &str) -> String {
    let (status, body) = http(reqwest::Client::new().get(format!("{url}/metrics")));
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn results_reach_a_local_broker_and_a_web_hook_that_catches_up_and_neither_repeats_after_a_restart()
{
    let broker = sluice_testkit::or_skip!(sluice_testkit::Mosquitto::start());
    let (hook, hook_url) = Hook::start();
    let dir = tempfile::tempdir().unwrap();
    let (mut config, inbox) = folder_only(dir.path(), None);
    let consumer = |mqtt, webhook| ConsumerConfig {
        pipelines: vec!["digits".into()],
        max_backoff_ms: 200,
        mqtt,
        webhook,
    };
    config.consumers = BTreeMap::from([
        (
            "bus".to_owned(),
            consumer(
                Some(MqttConsumerConfig {
                    url: broker.url(),
                    client_id: None,
                    topic: "sluice/results/{pipeline}".into(),
                    retain: true,
                    ack_timeout_ms: 5000,
                    broker: Default::default(),
                }),
                None,
            ),
        ),
        (
            "app".to_owned(),
            consumer(
                None,
                Some(WebhookConsumerConfig {
                    url: hook_url,
                    token_file: None,
                    ca_file: None,
                    timeout_ms: 2000,
                }),
            ),
        ),
    ]);
    let (_subscriber, mut messages) = subscribe(broker.port(), "sluice/results/#");
    std::thread::sleep(Duration::from_millis(300));
    let agent = sluice_agent::agent::Agent::start(config.clone()).unwrap();
    let url = format!("http://{}", agent.admin_addr().unwrap());
    let images = images();
    for (i, image) in images[..10].iter().enumerate() {
        std::fs::write(inbox.join(format!("a{i}.png")), image).unwrap();
    }

    // The broker gets all ten at once, each id as its property.
    let mut got = Vec::new();
    assert!(wait_until(Duration::from_secs(60), || {
        got.extend(received(&mut messages, Duration::from_millis(200)));
        got.len() >= 10
    }));
    for message in &got {
        assert_eq!(message.topic, "sluice/results/digits");
        assert_eq!(message.property, message.id);
    }
    let first: Vec<String> = got.iter().map(|m| m.id.clone()).collect();

    // The hook is down: it falls behind by all ten, visibly.
    assert!(wait_until(Duration::from_secs(10), || metric(
        &metrics(&url),
        "sluice_consumer_lag{consumer=\"app\"}"
    ) == Some(10.0)));
    assert!(hook.answered(200).is_empty());
    // Back: it gets what it missed; the one it refuses is skipped alone.
    hook.status.store(200, Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(30), || hook
        .answered(200)
        .len()
        == 9));
    assert_eq!(hook.answered(400).len(), 1);
    let text = metrics(&url);
    assert!(wait_until(Duration::from_secs(5), || metric(
        &metrics(&url),
        "sluice_consumer_lag{consumer=\"app\"}"
    ) == Some(0.0)));
    assert_eq!(
        metric(
            &text,
            "sluice_consumer_results_total{consumer=\"app\",outcome=\"refused\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "sluice_consumer_results_total{consumer=\"bus\",outcome=\"delivered\"}"
        ),
        Some(10.0)
    );
    let p99 = metric(
        &text,
        "sluice_consumer_latency_p99_seconds{consumer=\"bus\"}",
    )
    .expect("the latency to the broker is reported");
    assert!((0.0..60.0).contains(&p99), "{p99}");
    assert!(
        text.contains("sluice_stage_latency_p50_seconds{pipeline=\"digits\",stage=\"end_to_end\"}"),
        "{text}"
    );
    agent.shutdown();

    // Restarted: each goes on from its cursor.
    let posts_before = hook.posts.lock().unwrap().len();
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    for (i, image) in images[10..15].iter().enumerate() {
        std::fs::write(inbox.join(format!("b{i}.png")), image).unwrap();
    }
    let mut later = Vec::new();
    assert!(wait_until(Duration::from_secs(60), || {
        later.extend(received(&mut messages, Duration::from_millis(200)));
        later.len() >= 5 && hook.answered(200).len() == 14
    }));
    std::thread::sleep(Duration::from_millis(500));
    later.extend(received(&mut messages, Duration::from_millis(300)));
    assert_eq!(
        later.len(),
        5,
        "nothing sent to the broker again: {later:?}"
    );
    assert!(later.iter().all(|m| !first.contains(&m.id)));
    let posts = hook.posts.lock().unwrap();
    assert_eq!(
        posts.len() - posts_before,
        5,
        "nothing posted again: {posts:?}"
    );
    drop(posts);
    agent.shutdown();

    // The broker kept the last result for a later subscriber.
    let last = later.last().unwrap().id.clone();
    let (_late, mut connection) = subscribe(broker.port(), "sluice/results/digits");
    let retained = received(&mut connection, Duration::from_secs(2));
    assert_eq!(retained.len(), 1, "{retained:?}");
    assert!(retained[0].retained);
    assert_eq!(retained[0].id, last);
}
