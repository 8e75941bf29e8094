//! Inputs from a local MQTT broker (`[ingest.mqtt]`), with real mosquitto
//! and `sluice run` as a child process: every message published (QoS 1)
//! makes exactly one result, with its topic among the input's attributes,
//! although the agent is killed mid-stream and the broker restarted while
//! it is down.

use super::harness::{Agent, collector, images, stored, wait_until, write_config};
use sluice_mqtt::rumqttc::v5::mqttbytes::QoS;
use sluice_mqtt::rumqttc::v5::mqttbytes::v5::Packet;
use sluice_mqtt::rumqttc::v5::{Client, Event, MqttOptions};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Publish each `(topic, payload)` at QoS 1 to `port`, each once the
/// broker acknowledged the one before.
fn publish(port: u16, messages: &[(String, Vec<u8>)]) {
    let mut options = MqttOptions::new(
        format!("publisher-{}", rand::random::<u32>()),
        "127.0.0.1",
        port,
    );
    options.set_max_packet_size(Some(1 << 20));
    let (client, mut connection) = Client::new(options, 16);
    for (topic, payload) in messages {
        client
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no PUBACK for {topic}");
            match connection.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
                Ok(Err(e)) => panic!("publishing {topic}: {e}"),
                _ => {}
            }
        }
    }
    let _ = client.disconnect();
}

#[test]
fn every_message_makes_one_result_through_an_agent_kill_and_a_broker_restart() {
    let mut broker = sluice_testkit::or_skip!(sluice_testkit::Mosquitto::persistent());
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);
    let mut table: toml::Table =
        toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let mqtt: toml::Table = toml::from_str(&format!(
        "url = {:?}\nmax_inflight = 8\n[[topics]]\nfilter = \"cam/+\"\npipeline = \"digits\"\ncontent_type = \"image/png\"\n",
        broker.url()
    ))
    .unwrap();
    table["ingest"]
        .as_table_mut()
        .unwrap()
        .insert("mqtt".into(), mqtt.into());
    std::fs::write(&config, toml::to_string(&table).unwrap()).unwrap();

    let images = images();
    let messages: Vec<(String, Vec<u8>)> = (0..60)
        .map(|i| (format!("cam/{i}"), images[i].clone()))
        .collect();
    // The first agent dies right after journaling its first messages,
    // before acknowledging them: the broker sends them again (DUP) to the
    // next one, which must not make second results of them.
    let mut agent = Agent::start_with(&config, &[("SLUICE_FAULT_INJECT", "mqtt-crash:journaled")]);
    // Subscribed: its session exists before anything is published.
    std::thread::sleep(Duration::from_millis(500));
    publish(broker.port(), &messages[..20]);
    let died = wait_until(Duration::from_secs(10), || {
        agent.child.try_wait().unwrap().is_some()
    });
    assert!(died, "the agent journaled and stopped before acknowledging");
    publish(broker.port(), &messages[20..40]);
    broker.restart_gracefully();
    publish(broker.port(), &messages[40..]);
    let command = std::process::Command::new(crate::common::sluice_bin());
    let agent = Agent::start_logging(command, &config, "warn");

    let done = wait_until(Duration::from_secs(90), || stored(&collector).len() >= 60);
    let results = stored(&collector);
    let mut by_topic: BTreeMap<String, usize> = BTreeMap::new();
    for record in results.values() {
        let attributes = record["input"]["attributes"].as_object().unwrap();
        assert_eq!(attributes["source"], "mqtt", "{record}");
        *by_topic
            .entry(attributes["mqtt_topic"].as_str().unwrap().to_owned())
            .or_default() += 1;
        assert!(record["error"].is_null(), "{record}");
    }
    assert!(
        done,
        "{} results of 60: {by_topic:?}\n{}",
        results.len(),
        agent.stderr_text()
    );
    let lost: Vec<&String> = messages
        .iter()
        .map(|(t, _)| t)
        .filter(|t| !by_topic.contains_key(*t))
        .collect();
    let twice: Vec<(&String, &usize)> = by_topic.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        lost.is_empty() && twice.is_empty(),
        "lost {lost:?}, duplicated {twice:?}"
    );
    assert_eq!(results.len(), 60);
}
