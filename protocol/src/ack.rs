//! What a device checks of a [`BatchAck`] before it deletes anything, and
//! how a collector signs one so that nobody else can make it.
//!
//! Why signed: an acknowledgement deletes data on the device. Over MQTT it
//! travels through a broker other clients publish to, over HTTP through
//! proxies and captive portals; an answer that only *looks* right (the
//! right key, counts that add up) can be forged by any of them. The
//! collector signs, with an ed25519 key whose public half the device pins
//! (`sync.ack_keys`, two during a rotation), the device, the batch key, the
//! digest of the record ids and the counts. A device that pins keys deletes
//! nothing on an answer that is unsigned, signed by another key, or signed
//! for another device, batch or set of records (a replay).

use crate::BatchAck;
use crate::keys::{PublicKey, SecretKey};
use sha2::{Digest, Sha256};

/// The first element of what is signed: binds a signature to this use and
/// version, so that no other signed text (a bundle's manifest) can pass as
/// an acknowledgement.
pub const ACK_SIGNATURE_CONTEXT: &str = "sluice-ack/1";

/// The digest a signed acknowledgement names ([`BatchAck::records`]): the
/// SHA-256 (hex) of the record ids in the order sent, each followed by a
/// newline (a result id has none: [`result_id`](crate::result_id)).
pub fn records_digest<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut hash = Sha256::new();
    for id in ids {
        hash.update(id.as_bytes());
        hash.update(b"\n");
    }
    hex::encode(hash.finalize())
}

/// Why an acknowledgement does not let a device delete the batch it sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckMismatch {
    /// The answer names another batch (a proxy's cache, another device's
    /// answer, a confused upstream).
    #[error("the answer acknowledges batch `{key}`")]
    OtherKey {
        /// The key the answer names (upstream text: escape it before
        /// showing it).
        key: String,
    },
    /// The counts do not add up to the records sent: the answer does not
    /// say that every record is stored.
    #[error(
        "the answer accounts for {stored} stored + {duplicates} duplicate(s), not the {sent} record(s) sent"
    )]
    Counts {
        /// Records sent in the batch.
        sent: u64,
        /// Records the answer says were newly stored.
        stored: u64,
        /// Records the answer says were stored before.
        duplicates: u64,
    },
    /// The device pins acknowledgement keys and the answer has no
    /// signature.
    #[error("the answer is not signed, and this device pins the collector's keys (sync.ack_keys)")]
    Unsigned,
    /// Signed by a key the device does not pin.
    #[error("the answer is signed by key `{key}`, which this device does not pin (sync.ack_keys)")]
    UnknownKey {
        /// The key id the signature names (upstream text).
        key: String,
    },
    /// The signature does not verify: the answer was made or changed by
    /// someone without the key.
    #[error("the answer's signature by key `{key}` does not verify: forged or altered")]
    BadSignature {
        /// The pinned key's id.
        key: String,
    },
    /// A signed answer for another device (replayed from another device's
    /// topic or connection).
    #[error("the answer is signed for device `{device}`")]
    OtherDevice {
        /// The device it names (upstream text).
        device: String,
    },
    /// A signed answer for other records than the ones sent.
    #[error("the answer is signed for other records than the ones sent")]
    OtherRecords,
}

impl AckMismatch {
    /// Whether the answer failed its signature check (unsigned, another
    /// key, altered, or signed for another device or other records): what
    /// a forgery or a replay looks like, as opposed to a confused upstream.
    pub fn is_unverified(&self) -> bool {
        matches!(
            self,
            AckMismatch::Unsigned
                | AckMismatch::UnknownKey { .. }
                | AckMismatch::BadSignature { .. }
                | AckMismatch::OtherDevice { .. }
                | AckMismatch::OtherRecords
        )
    }
}

impl BatchAck {
    /// Whether this answer acknowledges batch `key` of `records` records:
    /// it names that key, and `stored + duplicates` (checked, both come
    /// from upstream) equals `records`, so every record sent is accounted
    /// for. A device deletes a batch only when this is `Ok` (a replayed
    /// batch's answer repeats its first counts, so it passes too).
    pub fn accounts_for(&self, key: &str, records: usize) -> Result<(), AckMismatch> {
        if self.key != key {
            return Err(AckMismatch::OtherKey {
                key: self.key.clone(),
            });
        }
        let sent = records as u64;
        if self.stored.checked_add(self.duplicates) != Some(sent) {
            return Err(AckMismatch::Counts {
                sent,
                stored: self.stored,
                duplicates: self.duplicates,
            });
        }
        Ok(())
    }

    /// An unsigned answer for batch `key`.
    pub fn new(key: &str, stored: u64, duplicates: u64, replayed: bool) -> BatchAck {
        BatchAck {
            protocol: crate::PROTOCOL_VERSION,
            key: key.to_owned(),
            stored,
            duplicates,
            replayed,
            device: None,
            records: None,
            signature: None,
        }
    }

    /// Sign this answer with the collector's `secret` as the answer to
    /// `device`'s batch of the records whose [`records_digest`] is
    /// `records`.
    pub fn sign(&mut self, device: &str, records: String, secret: &SecretKey) {
        self.device = Some(device.to_owned());
        self.records = Some(records);
        self.signature = Some(secret.sign(&self.signed_bytes()));
    }

    /// What the signature covers: a JSON array of the context, device,
    /// batch key, records digest and counts (`replayed` is not covered: it
    /// changes nothing a device does).
    fn signed_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&(
            ACK_SIGNATURE_CONTEXT,
            &self.device,
            &self.key,
            &self.records,
            self.stored,
            self.duplicates,
        ))
        .expect("strings and integers serialize")
    }

    /// Whether this answer lets `device` delete its batch `key` of
    /// `records` records whose [`records_digest`] is `digest`:
    /// [`BatchAck::accounts_for`] that batch and, when the device pins
    /// keys (`pinned` not empty), signed by one of them for that device and
    /// those records.
    pub fn acknowledges(
        &self,
        device: &str,
        key: &str,
        records: usize,
        digest: &str,
        pinned: &[PublicKey],
    ) -> Result<(), AckMismatch> {
        self.accounts_for(key, records)?;
        if pinned.is_empty() {
            return Ok(());
        }
        let signature = self.signature.as_ref().ok_or(AckMismatch::Unsigned)?;
        let Some(public) = pinned.iter().find(|k| k.id() == signature.key) else {
            return Err(AckMismatch::UnknownKey {
                key: signature.key.clone(),
            });
        };
        if !public.verifies(&self.signed_bytes(), signature) {
            return Err(AckMismatch::BadSignature { key: public.id() });
        }
        if self.device.as_deref() != Some(device) {
            return Err(AckMismatch::OtherDevice {
                device: self.device.clone().unwrap_or_default(),
            });
        }
        if self.records.as_deref() != Some(digest) {
            return Err(AckMismatch::OtherRecords);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(key: &str, stored: u64, duplicates: u64) -> BatchAck {
        BatchAck::new(key, stored, duplicates, false)
    }

    #[test]
    fn only_an_answer_for_the_key_that_counts_every_record_acknowledges() {
        assert_eq!(ack("k", 5, 0).accounts_for("k", 5), Ok(()));
        assert_eq!(ack("k", 2, 3).accounts_for("k", 5), Ok(()));
        assert!(matches!(
            ack("k", 0, 0).accounts_for("k", 5),
            Err(AckMismatch::Counts { sent: 5, .. })
        ));
        assert!(matches!(
            ack("k", 6, 0).accounts_for("k", 5),
            Err(AckMismatch::Counts { .. })
        ));
        // Counts that overflow when added do not wrap to the right sum.
        assert!(matches!(
            ack("k", u64::MAX, 6).accounts_for("k", 5),
            Err(AckMismatch::Counts { .. })
        ));
        assert!(matches!(
            ack("other", 5, 0).accounts_for("k", 5),
            Err(AckMismatch::OtherKey { .. })
        ));
    }

    #[test]
    fn only_the_pinned_collectors_signature_for_this_device_and_records_deletes() {
        let collector = SecretKey::generate();
        let pinned = [SecretKey::generate().public(), collector.public()];
        let ids = ["d/p/o-1", "d/p/o-2"];
        let digest = records_digest(ids);
        let signed = |device: &str, key: &str, records: &str, secret: &SecretKey| {
            let mut ack = BatchAck::new(key, 2, 0, false);
            ack.sign(device, records.to_owned(), secret);
            ack
        };
        let check = |ack: &BatchAck| ack.acknowledges("d", "k", 2, &digest, &pinned);

        let good = signed("d", "k", &digest, &collector);
        assert_eq!(check(&good), Ok(()));
        // Without pins, the counts alone decide (as before signing).
        assert_eq!(
            ack("k", 2, 0).acknowledges("d", "k", 2, &digest, &[]),
            Ok(())
        );

        assert_eq!(check(&ack("k", 2, 0)), Err(AckMismatch::Unsigned));
        let stranger = signed("d", "k", &digest, &SecretKey::generate());
        assert!(matches!(
            check(&stranger),
            Err(AckMismatch::UnknownKey { .. })
        ));
        // Another batch's answer, re-labelled with this batch's key.
        let mut relabelled = signed("d", "other", &digest, &collector);
        relabelled.key = "k".into();
        assert!(matches!(
            check(&relabelled),
            Err(AckMismatch::BadSignature { .. })
        ));
        // Counts changed after signing.
        let mut altered = signed("d", "k", &digest, &collector);
        altered.stored = 1;
        altered.duplicates = 1;
        assert!(matches!(
            check(&altered),
            Err(AckMismatch::BadSignature { .. })
        ));
        // Another device's genuine answer for a batch of the same key.
        assert_eq!(
            check(&signed("e", "k", &digest, &collector)),
            Err(AckMismatch::OtherDevice { device: "e".into() })
        );
        // The same key answered for other records (a re-formed batch).
        let other = records_digest(["d/p/o-1", "d/p/o-3"]);
        assert_eq!(
            check(&signed("d", "k", &other, &collector)),
            Err(AckMismatch::OtherRecords)
        );
        // The id order is part of the digest, and ids cannot run together.
        assert_ne!(records_digest(["a", "b"]), records_digest(["b", "a"]));
        assert_ne!(records_digest(["ab"]), records_digest(["a", "b"]));
    }
}
