//! What a device checks of a [`BatchAck`] before it deletes anything.

use crate::BatchAck;

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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(key: &str, stored: u64, duplicates: u64) -> BatchAck {
        BatchAck {
            protocol: crate::PROTOCOL_VERSION,
            key: key.into(),
            stored,
            duplicates,
            replayed: false,
        }
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
}
