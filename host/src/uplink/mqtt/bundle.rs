//! Asking for the offered bundle through the broker, chunk by chunk
//! ([`mqtt::bundle_requests`]; the collector's side is
//! `sluice_collector_core::mqtt`): each request names the byte to start
//! from and is answered with at most [`mqtt::BUNDLE_CHUNK_BYTES`], so a
//! bundle of any size (up to the limit) goes through a broker whose
//! messages are small, and a download cut by a lost connection or a
//! restart resumes from what the device kept.
//!
//! Invariants: what arrives goes to `partial-<sha256>.bundle` beside the
//! target and is trusted for nothing: every answer must name the same
//! bundle (SHA-256 and size, else the partial file is dropped and the
//! download starts again), the chunk it was asked for, and fit within
//! the limit; the whole is hashed and compared with the SHA-256 the
//! collector named before it is handed over (a torn write after a power
//! cut, or a collector that changed its mind, costs a download, not an
//! install), and then verified against the pinned keys like any bundle.
//! At most one partial download is kept.

use super::{Answer, Link};
use crate::uplink::UplinkError;
use crate::uplink::{Offered, Offers};
use sluice_mqtt::rumqttc::v5::mqttbytes::QoS;
use sluice_protocol::mqtt;
use sluice_protocol::operator::ProbationMinimum;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Times one fetch may start over because the offer changed.
const MAX_RESTARTS: u32 = 3;

/// Asks the collector through the device's broker connection.
pub(crate) struct MqttOffers {
    link: Link,
    topic: String,
    runtime: tokio::runtime::Handle,
}

impl MqttOffers {
    pub(super) fn new(link: Link, runtime: tokio::runtime::Handle) -> MqttOffers {
        MqttOffers {
            topic: mqtt::bundle_requests(&link.prefix, &link.device),
            link,
            runtime,
        }
    }

    /// Ask for the chunk from `offset`.
    fn ask(&self, offset: u64, seen: &[String]) -> Result<Answer, String> {
        let key = format!("bundle-{:016x}", rand::random::<u64>());
        let user = vec![
            (mqtt::OFFSET.to_owned(), offset.to_string()),
            (mqtt::IF_NONE_MATCH.to_owned(), seen.join(", ")),
        ];
        // QoS 0: a lost request is asked again after the timeout, and a
        // PUBACK for it could be taken for a batch's (`mqtt_ack =
        // "broker"` matches PUBACKs to the one batch waiting).
        let answer = self.runtime.block_on(self.link.ask(
            &self.topic,
            QoS::AtMostOnce,
            &key,
            user,
            Vec::new(),
        ));
        answer.map_err(|e| match e {
            UplinkError::Unreachable { message, .. } => message,
            other => other.to_string(),
        })
    }
}

/// What a chunk answer says of the bundle it is part of.
struct Part {
    sha256: String,
    total: u64,
    offset: u64,
}

impl Part {
    /// Read from `answer`'s properties; refused unless complete and sane.
    fn of(answer: &Answer) -> Result<Part, String> {
        let number = |name: &str| -> Result<u64, String> {
            answer
                .property(name)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("a chunk without a valid `{name}`"))
        };
        let sha256 = answer.property(mqtt::SHA256).unwrap_or_default();
        // It names a file: 64 hex digits and nothing else.
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("a chunk without a valid `{}`", mqtt::SHA256));
        }
        Ok(Part {
            sha256: sha256.to_ascii_lowercase(),
            total: number(mqtt::TOTAL)?,
            offset: number(mqtt::OFFSET)?,
        })
    }
}

/// The partial download kept in `dir`, if any: its SHA-256 and file.
fn partial_in(dir: &Path) -> Option<(String, PathBuf)> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let name = entry.file_name().into_string().ok()?;
        let sha = name.strip_prefix("partial-")?.strip_suffix(".bundle")?;
        Some((sha.to_owned(), entry.path()))
    })
}

impl Offers for MqttOffers {
    fn endpoint(&self) -> &str {
        &self.topic
    }

    fn fetch(&self, seen: &[String], path: &Path, limit: u64) -> Result<Option<Offered>, String> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut partial = partial_in(dir);
        // A collector that keeps changing its offer mid-download (or lies)
        // does not keep the device here.
        let mut restarts = 0;
        let mut restart = |partial: &mut Option<(String, PathBuf)>| {
            if let Some((_, file)) = partial.take() {
                let _ = std::fs::remove_file(file);
            }
            restarts += 1;
            if restarts > MAX_RESTARTS {
                return Err(format!(
                    "the offered bundle changed {MAX_RESTARTS} times during one download"
                ));
            }
            Ok(())
        };
        loop {
            let offset = match &partial {
                Some((_, file)) => std::fs::metadata(file).map_or(0, |m| m.len()),
                None => 0,
            };
            let answer = self.ask(offset, seen)?;
            match answer.status {
                200 => {}
                204 | 304 => {
                    // Nothing (new) offered: what was half fetched goes.
                    if let Some((_, file)) = partial.take() {
                        let _ = std::fs::remove_file(file);
                    }
                    return Ok(None);
                }
                // Asked for more than there is: the offer changed under a
                // kept download. Start again.
                416 if partial.is_some() => {
                    restart(&mut partial)?;
                    continue;
                }
                status => {
                    return Err(format!(
                        "answered {status}: {}",
                        crate::error::upstream_text(&answer.payload, 300)
                    ));
                }
            }
            let part = Part::of(&answer)?;
            if part.total > limit {
                return Err(format!("offered a bundle over {limit} bytes"));
            }
            if partial.as_ref().is_some_and(|(sha, _)| *sha != part.sha256) {
                // Another bundle than the one kept: the kept one goes.
                restart(&mut partial)?;
                if offset > 0 {
                    continue;
                }
            }
            let len = answer.payload.len() as u64;
            if part.offset != offset
                || answer.payload.len() > mqtt::BUNDLE_CHUNK_BYTES
                || offset.checked_add(len).is_none_or(|end| end > part.total)
                || (len == 0 && offset < part.total)
            {
                return Err(format!(
                    "answered {len} byte(s) at {} of a {}-byte bundle when asked for byte {offset}",
                    part.offset, part.total
                ));
            }
            let file = dir.join(format!("partial-{}.bundle", part.sha256));
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .map_err(|e| format!("cannot keep it at {}: {e}", file.display()))?;
            out.write_all(&answer.payload)
                .map_err(|e| format!("cannot keep it at {}: {e}", file.display()))?;
            partial = Some((part.sha256.clone(), file.clone()));
            if offset + len < part.total {
                continue;
            }
            // Whole: checked before it is handed over, then the partial
            // file is gone either way.
            let whole = sluice_bundle::sha256_of(&file).map(|(_, sha)| sha);
            if whole.as_deref().ok() != Some(part.sha256.as_str()) {
                let _ = std::fs::remove_file(&file);
                return Err(format!(
                    "the bundle fetched does not have the SHA-256 the collector named ({}); fetching it again",
                    part.sha256
                ));
            }
            std::fs::rename(&file, path)
                .map_err(|e| format!("cannot keep it at {}: {e}", path.display()))?;
            return Ok(Some(Offered {
                probation: answer
                    .property(mqtt::PROBATION)
                    .and_then(ProbationMinimum::parse),
            }));
        }
    }
}
