//! The ingest side: inputs accepted but not yet processed (`journal`), and
//! the files of a watched folder that were accepted (`claimed_files`).
//!
//! Invariants:
//! * An input is acknowledged to its sender only after its row has been
//!   committed ([`Outbox::accept_many`] returns after the fsync); a batch of
//!   inputs is accepted whole or not at all.
//! * A journal row leaves only with its result, in the transaction that
//!   stores the result ([`Outbox::complete`], via [`retire`]).
//! * A claimed file is remembered in the same transaction as its input, so
//!   after a crash the folder watcher can tell a file already accepted
//!   (delete it) from one that was not (accept it); it is forgotten only
//!   once the file is gone ([`Outbox::forget_claims`]).
//! * An input accepted under an idempotency key ([`Outbox::accept_keyed`])
//!   is stored with the key in the same transaction; the same key again
//!   with the same content returns the same sequence number and stores
//!   nothing, with other content it is refused. Keys are kept for the
//!   configured window and count ([`Outbox::prune_ingest_keys`]).
//! * [`Outbox::journal_bytes`] mirrors `SUM(LENGTH(data))` and is updated
//!   after each commit; it reads an atomic, never the connection, so async
//!   ingest handlers can call it for back-pressure without blocking.

use super::{Outbox, OutboxError};
use rusqlite::{OptionalExtension, Transaction, params};
use sluice_types::now_ms;
use std::sync::atomic::Ordering;

/// An input accepted into the journal.
#[derive(Debug, Clone)]
pub struct NewInput {
    /// The pipeline it is for.
    pub pipeline: String,
    /// Its media type.
    pub content_type: String,
    /// Where it came from (e.g. `file`), carried into its result.
    pub attributes: Vec<(String, String)>,
    /// The input itself.
    pub data: Vec<u8>,
}

/// An input waiting in the journal.
#[derive(Debug, Clone)]
pub struct JournalItem {
    /// Its sequence number: part of its result's id, never reused.
    pub seq: i64,
    /// The pipeline it is for.
    pub pipeline: String,
    /// Its media type.
    pub content_type: String,
    /// Where it came from.
    pub attributes: Vec<(String, String)>,
    /// The input itself.
    pub data: Vec<u8>,
    /// When it was accepted, ms since the Unix epoch.
    pub accepted_at_ms: i64,
    /// Why ingest refused it ([`Outbox::accept_refused`]): its result is
    /// this failure, and `data` is empty.
    pub refused: Option<String>,
    /// How many times the pipeline crashed (panicked) with this input in
    /// it ([`Outbox::note_crash`]).
    pub crashes: u32,
    /// The last crash's cause.
    pub last_crash: Option<String>,
    /// Why its row cannot be read as written (a column of the wrong
    /// storage class, a value out of range): its result is this failure,
    /// and the fields above are what could be read.
    pub damaged: Option<String>,
}

/// What [`Outbox::accept_keyed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyedAccept {
    /// A new input, accepted under this sequence number.
    New(i64),
    /// The key was known with the same content: nothing stored; this is the
    /// sequence number it was accepted under.
    Replayed(i64),
    /// The key was known with other content: nothing stored.
    Conflict,
}

/// How an input a message broker delivered is matched with what was
/// accepted before (the agent's MQTT source): brokers deliver at least
/// once, and redeliver what was not acknowledged when a client died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery<'a> {
    /// Delivered at most once (MQTT QoS 0): nothing to match it with.
    Once,
    /// Delivered for the first time: accepted, and `key` remembered, so
    /// that a redelivery of it is known.
    First(&'a str),
    /// Delivered again (the broker's redelivery, or a key the publisher
    /// gave): accepted unless `key` was accepted with the same content.
    Again(&'a str),
}

/// The digest an idempotency key is bound to: pipeline, type and bytes.
fn input_digest(input: &NewInput) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [input.pipeline.as_bytes(), input.content_type.as_bytes()] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.update(&input.data);
    hash.finalize().to_vec()
}

impl Outbox {
    /// Accept `input` under idempotency `key`, durably, unless the key was
    /// seen: then the first acceptance's sequence number is returned (same
    /// content) or the input is refused (other content). The key and the
    /// input are committed together, so a crash cannot keep one without the
    /// other.
    pub fn accept_keyed(&self, input: &NewInput, key: &str) -> Result<KeyedAccept, OutboxError> {
        let digest = input_digest(input);
        self.write_intake(|tx, sizes| {
            let known: Option<(Vec<u8>, i64)> = tx
                .query_row(
                    "SELECT digest, seq FROM ingest_keys WHERE key = ?1",
                    [key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((known, seq)) = known {
                return Ok(if known == digest {
                    KeyedAccept::Replayed(seq)
                } else {
                    KeyedAccept::Conflict
                });
            }
            let seq = insert_input(tx, input)?;
            tx.execute(
                "INSERT INTO ingest_keys(key, digest, seq, accepted_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![key, digest, seq, now_ms()],
            )?;
            sizes.journal_bytes += input.data.len() as u64;
            Ok(KeyedAccept::New(seq))
        })
    }

    /// Accept broker deliveries in one transaction (one fsync): each new
    /// or the acceptance it repeats ([`Delivery`]), never
    /// [`KeyedAccept::Conflict`] (a key that comes back with other content
    /// names another message: the broker reuses packet ids).
    /// An input with a refusal (`Some(reason)`: a payload over the limit)
    /// is journaled without its data, as [`Outbox::accept_refused`] does.
    pub fn accept_deliveries(
        &self,
        inputs: &[(&NewInput, Delivery<'_>, Option<&str>)],
    ) -> Result<Vec<KeyedAccept>, OutboxError> {
        self.write_intake(|tx, sizes| {
            let mut known =
                tx.prepare_cached("SELECT digest, seq FROM ingest_keys WHERE key = ?1")?;
            let mut remember = tx.prepare_cached(
                "INSERT INTO ingest_keys(key, digest, seq, accepted_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(key) DO UPDATE SET digest = excluded.digest, seq = excluded.seq,
                    accepted_at_ms = excluded.accepted_at_ms",
            )?;
            let mut out = Vec::with_capacity(inputs.len());
            let mut insert = |input: &NewInput, refused: Option<&str>| -> rusqlite::Result<i64> {
                let seq = insert_input(tx, input)?;
                if let Some(reason) = refused {
                    tx.execute(
                        "UPDATE journal SET refused = ?1 WHERE seq = ?2",
                        params![reason, seq],
                    )?;
                }
                sizes.journal_bytes += input.data.len() as u64;
                Ok(seq)
            };
            for (input, delivery, refused) in inputs {
                let digest = input_digest(input);
                let key = match delivery {
                    Delivery::Once => {
                        out.push(KeyedAccept::New(insert(input, *refused)?));
                        continue;
                    }
                    Delivery::First(key) => key,
                    Delivery::Again(key) => {
                        let seen: Option<(Vec<u8>, i64)> = known
                            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()?;
                        if let Some((_, seq)) = seen.filter(|(d, _)| *d == digest) {
                            out.push(KeyedAccept::Replayed(seq));
                            continue;
                        }
                        key
                    }
                };
                let seq = insert(input, *refused)?;
                remember.execute(params![key, digest, seq, now_ms()])?;
                out.push(KeyedAccept::New(seq));
            }
            Ok(out)
        })
    }

    /// Forget idempotency keys accepted before `older_than_ms`, and the
    /// oldest beyond the newest `keep`. Returns how many were forgotten.
    pub fn prune_ingest_keys(&self, older_than_ms: i64, keep: u64) -> Result<u64, OutboxError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        // Most passes find nothing to forget: no write transaction for them.
        let (count, oldest): (i64, Option<i64>) = self.read(|conn| {
            conn.query_row(
                "SELECT COUNT(*), MIN(accepted_at_ms) FROM ingest_keys",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })?;
        if count <= keep && oldest.is_none_or(|t| t >= older_than_ms) {
            return Ok(0);
        }
        self.write(|tx, _| {
            let old = tx.execute(
                "DELETE FROM ingest_keys WHERE accepted_at_ms < ?1",
                [older_than_ms],
            )?;
            let over = tx.execute(
                "DELETE FROM ingest_keys WHERE key IN
                 (SELECT key FROM ingest_keys ORDER BY accepted_at_ms DESC LIMIT -1 OFFSET ?1)",
                [keep],
            )?;
            Ok((old + over) as u64)
        })
    }

    /// Accept an input into the journal, durably. Returns its sequence
    /// number, which makes its id.
    pub fn accept(&self, input: &NewInput) -> Result<i64, OutboxError> {
        Ok(self.accept_many(&[(input, None)])?[0])
    }

    /// Accept inputs in one transaction (one fsync for all of them): all or
    /// none. Each may name the claimed file it came from, remembered in the
    /// same transaction (see [`Outbox::is_claimed`]). Returns the sequence
    /// numbers, in order.
    pub fn accept_many(
        &self,
        inputs: &[(&NewInput, Option<&str>)],
    ) -> Result<Vec<i64>, OutboxError> {
        self.write_intake(|tx, sizes| {
            let mut claim =
                tx.prepare_cached("INSERT OR IGNORE INTO claimed_files(name) VALUES (?1)")?;
            let mut seqs = Vec::with_capacity(inputs.len());
            for (input, claimed_file) in inputs {
                seqs.push(insert_input(tx, input)?);
                if let Some(name) = claimed_file {
                    claim.execute([name])?;
                }
                sizes.journal_bytes += input.data.len() as u64;
            }
            Ok(seqs)
        })
    }

    /// Journal an input that ingest refused (too large, say), without its
    /// data, so that its failure becomes a result record like any other
    /// (counted, visible upstream) instead of a log line. `claimed_file` is
    /// remembered as [`Outbox::accept_many`] does. Returns its sequence number.
    pub fn accept_refused(
        &self,
        input: &NewInput,
        reason: &str,
        claimed_file: Option<&str>,
    ) -> Result<i64, OutboxError> {
        self.write_intake(|tx, _| {
            let empty = NewInput {
                data: Vec::new(),
                ..input.clone()
            };
            let seq = insert_input(tx, &empty)?;
            tx.execute(
                "UPDATE journal SET refused = ?1 WHERE seq = ?2",
                params![reason, seq],
            )?;
            if let Some(name) = claimed_file {
                tx.execute(
                    "INSERT OR IGNORE INTO claimed_files(name) VALUES (?1)",
                    [name],
                )?;
            }
            Ok(seq)
        })
    }

    /// Bytes of inputs accepted but not yet processed. Never waits for the
    /// connection: it reads a mirror updated after each commit.
    pub fn journal_bytes(&self) -> u64 {
        self.journal_bytes.load(Ordering::Relaxed)
    }

    /// Allocate a sequence number from the journal's own sequence, with no
    /// input behind it, in one write transaction: for records that are not
    /// an input's result (drift windows), so that their ids come from the
    /// same never-reused sequence as results' and order with them upstream.
    /// The next accepted input gets a larger number.
    pub fn allocate_seq(&self) -> Result<i64, OutboxError> {
        self.write(|tx, _| {
            // `AUTOINCREMENT` takes the larger of this row and the table's
            // largest key, plus one; raising the row is what SQLite itself
            // does on an insert. The `MAX` keeps the number above every
            // journal row even if the row were ever behind.
            tx.query_row(
                "UPDATE sqlite_sequence
                 SET seq = MAX(seq, COALESCE((SELECT MAX(seq) FROM journal), 0)) + 1
                 WHERE name = 'journal' RETURNING seq",
                [],
                |r| r.get(0),
            )
        })
    }

    /// Up to `limit` journal items of `pipeline` with a sequence number
    /// above `after`, oldest first.
    pub fn journal_items(
        &self,
        pipeline: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<JournalItem>, OutboxError> {
        self.journal_group(pipeline, after, limit, u64::MAX)
    }

    /// [`Outbox::journal_items`], also stopping before `max_bytes` of input
    /// data (but always taking the first item): what a worker holds in
    /// memory at once is bounded whatever the inputs' sizes.
    pub fn journal_group(
        &self,
        pipeline: &str,
        after: i64,
        limit: usize,
        max_bytes: u64,
    ) -> Result<Vec<JournalItem>, OutboxError> {
        self.read(|conn| {
            let mut select = conn.prepare_cached(
                "SELECT seq, content_type, attributes, data, accepted_at_ms, refused, crashes, last_crash FROM journal
                 WHERE pipeline = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let mut rows = select.query(params![pipeline, after, limit as i64])?;
            let (mut items, mut bytes) = (Vec::new(), 0u64);
            while let Some(r) = rows.next()? {
                // The size first: an input past the bound is not copied out.
                let len = r.get_ref(3)?.as_bytes().map(|b| b.len() as u64).unwrap_or(0);
                if !items.is_empty() && bytes.saturating_add(len) > max_bytes {
                    break;
                }
                bytes = bytes.saturating_add(len);
                items.push(journal_item(r, pipeline)?);
            }
            Ok(items)
        })
    }

    /// Count a crash (a panic) of the pipeline against the inputs `seqs`,
    /// which were in it, with its `cause`: an input that crashes it
    /// `worker::MAX_CRASHES` times is set aside as a failed result.
    pub fn note_crash(&self, seqs: &[i64], cause: &str) -> Result<(), OutboxError> {
        self.write(|tx, _| {
            let mut update = tx.prepare_cached(
                "UPDATE journal SET crashes = crashes + 1, last_crash = ?2 WHERE seq = ?1",
            )?;
            for seq in seqs {
                update.execute(params![seq, cause])?;
            }
            Ok(())
        })
    }

    /// Whether the claimed file `name` was already accepted.
    pub fn is_claimed(&self, name: &str) -> Result<bool, OutboxError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT 1 FROM claimed_files WHERE name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
        })
    }

    /// Forget claimed files once they have been deleted.
    pub fn forget_claims(&self, names: &[String]) -> Result<(), OutboxError> {
        self.freeing(|| {
            self.write(|tx, _| {
                let mut delete = tx.prepare_cached("DELETE FROM claimed_files WHERE name = ?1")?;
                for name in names {
                    delete.execute([name])?;
                }
                Ok(())
            })
        })
    }
}

/// Journal row `r` (of `pipeline`) as written, or, for a row that cannot be
/// read as written (damage: a column of another storage class than the one
/// written, a value out of range), what could be read and why the rest
/// could not: one such row becomes a failed result, never an error that
/// stops the worker from reading the journal.
fn journal_item(r: &rusqlite::Row, pipeline: &str) -> rusqlite::Result<JournalItem> {
    use rusqlite::types::ValueRef;
    let seq: i64 = r.get(0)?;
    let mut damage = Vec::new();
    let mut text = |ix: usize, column: &str, nullable: bool| match r.get_ref(ix) {
        Ok(ValueRef::Text(t)) => match std::str::from_utf8(t) {
            Ok(t) => Some(t.to_owned()),
            Err(_) => {
                damage.push(format!("`{column}` is not UTF-8"));
                None
            }
        },
        Ok(ValueRef::Null) if nullable => None,
        Ok(other) => {
            damage.push(format!(
                "`{column}` holds {}, not TEXT",
                storage_class(other)
            ));
            None
        }
        Err(e) => {
            damage.push(format!("`{column}`: {e}"));
            None
        }
    };
    let content_type = text(1, "content_type", false);
    let attributes = text(2, "attributes", false);
    let refused = text(5, "refused", true);
    let last_crash = text(7, "last_crash", true);
    let attributes = attributes.and_then(|a| match serde_json::from_str(&a) {
        Ok(pairs) => Some(pairs),
        Err(e) => {
            damage.push(format!("`attributes` is not a list of pairs: {e}"));
            None
        }
    });
    let data = match r.get_ref(3)? {
        ValueRef::Blob(b) => b.to_vec(),
        other => {
            damage.push(format!("`data` holds {}, not BLOB", storage_class(other)));
            Vec::new()
        }
    };
    let accepted_at_ms = match r.get_ref(4)? {
        ValueRef::Integer(t) => t,
        other => {
            damage.push(format!(
                "`accepted_at_ms` holds {}, not INTEGER",
                storage_class(other)
            ));
            0
        }
    };
    let crashes = match r.get_ref(6)? {
        ValueRef::Integer(n) if n >= 0 => u32::try_from(n).unwrap_or(u32::MAX),
        other => {
            damage.push(format!(
                "`crashes` holds {}, not a count",
                storage_class(other)
            ));
            0
        }
    };
    Ok(JournalItem {
        seq,
        pipeline: pipeline.to_owned(),
        content_type: content_type.unwrap_or_default(),
        attributes: attributes.unwrap_or_default(),
        data,
        accepted_at_ms,
        refused,
        crashes,
        last_crash,
        damaged: (!damage.is_empty()).then(|| {
            format!(
                "input {seq} is damaged in the outbox's journal: {}",
                damage.join(", ")
            )
        }),
    })
}

/// The storage class of a value, as SQLite names it (`typeof`).
pub(super) fn storage_class(value: rusqlite::types::ValueRef) -> &'static str {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "INTEGER",
        ValueRef::Real(_) => "REAL",
        ValueRef::Text(_) => "TEXT",
        ValueRef::Blob(_) => "BLOB",
    }
}

/// Insert one journal row; its sequence number.
fn insert_input(tx: &Transaction, input: &NewInput) -> rusqlite::Result<i64> {
    let attributes = serde_json::to_string(&input.attributes).expect("pairs of strings serialize");
    tx.prepare_cached(
        "INSERT INTO journal(pipeline, content_type, attributes, data, accepted_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        input.pipeline,
        input.content_type,
        attributes,
        input.data,
        now_ms()
    ])?;
    Ok(tx.last_insert_rowid())
}

/// Delete the journal rows `seqs` (their results are being stored in the
/// same transaction). Returns the bytes of input data they held; rows
/// already gone count nothing.
pub(super) fn retire(tx: &Transaction, seqs: &[i64]) -> rusqlite::Result<u64> {
    let mut delete =
        // `COALESCE`: a damaged row's `data` may be NULL.
        tx.prepare_cached("DELETE FROM journal WHERE seq = ?1 RETURNING COALESCE(LENGTH(data), 0)")?;
    let mut freed = 0u64;
    for seq in seqs {
        if let Some(len) = delete.query_row([seq], |r| r.get::<_, i64>(0)).optional()? {
            freed += len as u64;
        }
    }
    Ok(freed)
}
