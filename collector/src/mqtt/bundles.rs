//! Bundles through the broker: a device whose uplink is MQTT asks for the
//! bundle a rollout offers it one chunk at a time
//! ([`mqtt::bundle_requests`]), from the byte it has (so a download cut by
//! a restart or a lost connection resumes where it stopped), and each
//! chunk is read from the database alone ([`crate::Store::bundle_chunk`]):
//! any collector of the group can answer any chunk, and none holds a
//! whole bundle for it.
//!
//! The answer names the whole bundle (its SHA-256, size, name and
//! version) with every chunk: a device that sees another SHA-256 than the
//! one it was fetching (the rollout moved on) starts again from 0. What it
//! gets is verified against its pinned keys before anything is installed,
//! as from the drop folder or over HTTP.

use super::{Reply, refused, reply, user};
use crate::accept::Refusal;
use crate::shared::Shared;
use sluice_mqtt::rumqttc::v5::mqttbytes::v5::Publish;
use sluice_protocol::mqtt;

/// The answer to `device`'s request `key` for a chunk of its bundle.
pub(super) fn answer(
    shared: &Shared,
    prefix: &str,
    device: &str,
    key: Option<String>,
    publish: &Publish,
) -> Reply {
    let offset = match user(publish, mqtt::OFFSET).map(str::parse::<u64>) {
        None => 0,
        Some(Ok(offset)) => offset,
        Some(Err(_)) => {
            let refusal = Refusal::new(
                400,
                format!("user property `{}` is not a byte offset", mqtt::OFFSET),
            );
            return reply(prefix, device, key, refused(refusal));
        }
    };
    let chunk = match shared
        .store
        .bundle_chunk(device, offset, mqtt::BUNDLE_CHUNK_BYTES)
    {
        Ok(None) => return reply(prefix, device, key, (204, Vec::new())),
        Ok(Some(chunk)) => chunk,
        Err(e) => {
            return reply(
                prefix,
                device,
                key,
                refused(Refusal::new(500, e.to_string())),
            );
        }
    };
    let seen = user(publish, mqtt::IF_NONE_MATCH).unwrap_or_default();
    let (status, payload) = if crate::rollout::seen_by(seen, &chunk.sha256) {
        (304, Vec::new())
    } else if offset > chunk.total {
        let refusal = Refusal::new(
            416,
            format!(
                "offset {offset} is past the end of the bundle ({} bytes)",
                chunk.total
            ),
        );
        refused(refusal)
    } else {
        (200, chunk.bytes)
    };
    let (topic, mut properties, payload) = reply(prefix, device, key, (status, payload));
    if status == 200 {
        properties.content_type = Some("application/octet-stream".into());
    }
    properties.user_properties.extend([
        (mqtt::SHA256.to_owned(), chunk.sha256),
        (mqtt::TOTAL.to_owned(), chunk.total.to_string()),
        (mqtt::OFFSET.to_owned(), offset.to_string()),
        (
            mqtt::BUNDLE.to_owned(),
            format!("{}/{}", chunk.name, chunk.version),
        ),
    ]);
    if let Some(minimum) = chunk.probation {
        properties
            .user_properties
            .push((mqtt::PROBATION.to_owned(), minimum.to_text()));
    }
    (topic, properties, payload)
}
