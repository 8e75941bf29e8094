//! Paging through a device's results: a cursor that is unique and total.
//!
//! Results are listed in `(seq, id)` order. `seq` alone does not order
//! them totally: it repeats across a device's outbox instances (a board
//! without a clock starting a new outbox reuses numbers), so "after the
//! last `seq` seen" would skip the results that share it. The id is
//! unique per device, so `(seq, id)` is.

use serde::{Deserialize, Serialize};

/// Where the next page of [`DeviceResults`](crate::DeviceResults) starts:
/// after the result with this `seq` and `id`. Given back as
/// `?after=SEQ&after_id=ID` ([`ResultsCursor::query`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultsCursor {
    /// The `seq` of the last result listed.
    pub after: i64,
    /// The id of the last result listed.
    pub after_id: String,
}

impl ResultsCursor {
    /// The query parameters that ask for the page after this cursor,
    /// `after=SEQ&after_id=ID` (the id percent-encoded), to which a
    /// `&limit=N` may be added.
    pub fn query(&self) -> String {
        let mut id = String::with_capacity(self.after_id.len());
        for b in self.after_id.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~' | b'/') {
                id.push(b as char);
            } else {
                id.push_str(&format!("%{b:02X}"));
            }
        }
        format!("after={}&after_id={id}", self.after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_keeps_ids_readable_and_escapes_the_rest() {
        let cursor = ResultsCursor {
            after: -3,
            after_id: "dev-1/p/ab12-7".into(),
        };
        assert_eq!(cursor.query(), "after=-3&after_id=dev-1/p/ab12-7");
        let odd = ResultsCursor {
            after: 1,
            after_id: "a b&c=é".into(),
        };
        assert_eq!(odd.query(), "after=1&after_id=a%20b%26c%3D%C3%A9");
    }
}
