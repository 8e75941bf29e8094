//! `[consumers.NAME.mqtt]`: each result published at QoS 1 to a local
//! broker, on `topic` (`{pipeline}` replaced), optionally retained, with
//! the result's id as the MQTT 5 user property `id` and content type
//! `application/json`.
//!
//! A result is taken when the broker's PUBACK for it says success (or "no
//! matching subscribers": the broker has it, retained or not). Acks are
//! matched to results by order, which MQTT guarantees on one connection
//! (a receiver sends PUBACKs in the order the PUBLISHes came). A connection
//! is therefore used only while nothing went wrong on it: any error, a
//! refusal or a missing PUBACK drops it and the next attempt starts a new
//! one, so an acknowledgement of an old connection's message can never be
//! taken for a new one's.

use super::{Consumer, Delivery, Kept, Taken};
use crate::config::MqttConsumerConfig;
use crate::ingest::IngestError;
use sluice_mqtt::rumqttc::v5::mqttbytes::QoS;
use sluice_mqtt::rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PublishProperties};
use sluice_mqtt::rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// What the connection's task reports, in the order it happened.
enum Report {
    Connected,
    /// A PUBACK: `Ok`, or the broker's refusal.
    Acked(Result<(), String>),
    /// The connection failed (the task has ended).
    Lost(String),
}

/// One connection, used while nothing goes wrong on it.
struct Link {
    client: AsyncClient,
    reports: mpsc::UnboundedReceiver<Report>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A consumer publishing to a local broker.
pub(super) struct MqttConsumer {
    options: MqttOptions,
    endpoint: String,
    topic: String,
    retain: bool,
    ack_timeout: Duration,
    runtime: Handle,
    link: Option<Link>,
}

impl MqttConsumer {
    pub(super) fn new(
        name: &str,
        config: &MqttConsumerConfig,
        device: &str,
        runtime: &Handle,
    ) -> Result<MqttConsumer, IngestError> {
        let client_id = config
            .client_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{device}-{name}"));
        // It sends results and receives only acknowledgements.
        let options = sluice_mqtt::options(&config.url, &client_id, &config.broker, 64 << 10)
            .map_err(|e| IngestError::Setup {
                source_name: format!("consumer {name}"),
                message: e.to_string(),
            })?;
        Ok(MqttConsumer {
            options,
            endpoint: sluice_mqtt::endpoint(&config.url).to_owned(),
            topic: config.topic.clone(),
            retain: config.retain,
            ack_timeout: Duration::from_millis(config.ack_timeout_ms),
            runtime: runtime.clone(),
            link: None,
        })
    }

    /// A connected link: the current one, or a new one.
    async fn connected(&mut self) -> Result<&mut Link, String> {
        // A link that failed while idle (the broker restarted) is replaced
        // now, not found out by a page that gets no acknowledgement.
        if let Some(link) = &mut self.link
            && matches!(
                link.reports.try_recv(),
                Ok(Report::Lost(_)) | Err(mpsc::error::TryRecvError::Disconnected)
            )
        {
            self.link = None;
        }
        if self.link.is_none() {
            let (client, mut events) =
                AsyncClient::new(self.options.clone(), 2 * super::PAGE as usize);
            let (tx, mut reports) = mpsc::unbounded_channel();
            let task = self.runtime.spawn(async move {
                loop {
                    let report = match events.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => Report::Connected,
                        Ok(Event::Incoming(Packet::PubAck(ack))) => {
                            Report::Acked(match ack.reason {
                                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                                    Ok(())
                                }
                                other => Err(format!("the broker refused it: PUBACK {other:?}")),
                            })
                        }
                        Ok(Event::Incoming(Packet::Disconnect(d))) => {
                            Report::Lost(format!("the broker disconnected: {:?}", d.reason_code))
                        }
                        Ok(_) => continue,
                        Err(e) => Report::Lost(e.to_string()),
                    };
                    let lost = matches!(report, Report::Lost(_));
                    if tx.send(report).is_err() || lost {
                        return;
                    }
                }
            });
            match tokio::time::timeout(self.ack_timeout, reports.recv()).await {
                Ok(Some(Report::Connected)) => {}
                Ok(Some(Report::Lost(why))) => return Err(why),
                Ok(_) => return Err("the connection ended".into()),
                Err(_) => {
                    task.abort();
                    return Err(format!(
                        "no CONNACK within {} ms (ack_timeout_ms)",
                        self.ack_timeout.as_millis()
                    ));
                }
            }
            self.link = Some(Link {
                client,
                reports,
                task,
            });
        }
        Ok(self.link.as_mut().expect("just made"))
    }

    async fn publish_all(&mut self, results: &[Kept]) -> Taken {
        let (topic, retain, timeout) = (self.topic.clone(), self.retain, self.ack_timeout);
        let link = match self.connected().await {
            Ok(link) => link,
            Err(why) => {
                return Taken {
                    failure: Some(why),
                    ..Taken::default()
                };
            }
        };
        let mut failure = None;
        let mut sent = 0;
        for result in results {
            let properties = PublishProperties {
                content_type: Some("application/json".into()),
                user_properties: vec![("id".into(), result.id.clone())],
                ..PublishProperties::default()
            };
            let to = topic.replace("{pipeline}", &result.pipeline);
            match link
                .client
                .publish_with_properties(
                    to,
                    QoS::AtLeastOnce,
                    retain,
                    result.body.clone(),
                    properties,
                )
                .await
            {
                Ok(()) => sent += 1,
                Err(e) => {
                    failure = Some(format!("cannot publish: {e}"));
                    break;
                }
            }
        }
        let mut done = 0;
        while done < sent {
            match tokio::time::timeout(timeout, link.reports.recv()).await {
                Ok(Some(Report::Acked(Ok(())))) => done += 1,
                Ok(Some(Report::Acked(Err(why)))) => {
                    failure = Some(why);
                    break;
                }
                Ok(Some(Report::Connected)) => {}
                Ok(Some(Report::Lost(why))) => {
                    failure = Some(why);
                    break;
                }
                Ok(None) => {
                    failure = Some("the connection ended".into());
                    break;
                }
                Err(_) => {
                    failure = Some(format!(
                        "no PUBACK within {} ms (ack_timeout_ms)",
                        timeout.as_millis()
                    ));
                    break;
                }
            }
        }
        if failure.is_some() {
            // Acks still to come would be matched to the wrong results.
            self.link = None;
        }
        Taken {
            done,
            refused: Vec::new(),
            failure,
        }
    }
}

impl Consumer for MqttConsumer {
    fn describe(&self) -> String {
        format!("mqtt {} {}", self.endpoint, self.topic)
    }

    fn deliver<'a>(&'a mut self, results: &'a [Kept]) -> Delivery<'a> {
        Box::pin(self.publish_all(results))
    }
}
