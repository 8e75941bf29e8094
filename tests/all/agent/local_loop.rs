//! The README's loop on one machine, from `examples/mqtt/sluice.toml` as
//! written (only its ports and data folder moved): a sensor publishes an
//! image to the local broker (with MQTT 3.1.1), Sluice publishes the result
//! back (retained),
//! and a synchronous call answers with the result in the response.

use super::consumers::{received, subscribe};
use crate::common::{http, repo_root};
use std::time::Duration;

/// Publish `payload` on `topic` at QoS 1 with an MQTT 3.1.1 client, once
/// the broker acknowledged it.
fn publish_311(port: u16, topic: &str, payload: Vec<u8>) {
    use sluice_mqtt::rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let options = MqttOptions::new("sensor-311", "127.0.0.1", port);
    let (client, mut connection) = Client::new(options, 8);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(std::time::Instant::now() < deadline, "no PUBACK");
        if let Ok(Ok(Event::Incoming(Packet::PubAck(_)))) =
            connection.recv_timeout(Duration::from_millis(100))
        {
            break;
        }
    }
    let _ = client.disconnect();
}

#[test]
fn the_examples_loop_sensor_to_broker_to_sluice_to_broker_and_the_synchronous_call() {
    let broker = sluice_testkit::or_skip!(sluice_testkit::Mosquitto::start());
    let dir = tempfile::tempdir().unwrap();
    let example = repo_root().join("examples/mqtt/sluice.toml");
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("127.0.0.1:1883", &format!("127.0.0.1:{}", broker.port()))
        .replace("127.0.0.1:8470", "127.0.0.1:0");
    let mut config = sluice_agent::config::Config::parse(&text, example.parent().unwrap()).unwrap();
    config.device.data_dir = dir.path().to_owned();
    let (_reader, mut results) = subscribe(broker.port(), "sluice/results/#");
    std::thread::sleep(Duration::from_millis(300));
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // 0000.png is a 2, 0001.png a 0 (models/digits/heldout/labels.csv).
    let heldout = repo_root().join("models/digits/heldout");
    let image = |name: &str| std::fs::read(heldout.join(name)).unwrap();
    // The sensor speaks MQTT 3.1.1 (Sluice itself speaks 5 to the broker).
    publish_311(broker.port(), "sensors/cam-1/image", image("0000.png"));
    let got = received(&mut results, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "{got:?}");
    let record = &got[0].record;
    assert_eq!(got[0].topic, "sluice/results/digits");
    assert_eq!(record["result"]["body"]["label"], "2", "{record}");
    assert_eq!(
        record["input"]["attributes"]["mqtt_topic"],
        "sensors/cam-1/image"
    );

    let url = format!("http://{}/v1/infer/digits", agent.ingest_addr().unwrap());
    let (status, body) = http(
        reqwest::Client::new()
            .post(url)
            .header("content-type", "image/png")
            .body(image("0001.png")),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["result"]["body"]["label"], "0", "{answer}");
    agent.shutdown();
}
