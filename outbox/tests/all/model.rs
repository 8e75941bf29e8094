//! The in-memory model of the outbox: what each operation must do, written
//! as plainly as possible (vectors in storage order, no SQL), so that the
//! real outbox can be compared with it after every step.
//!
//! It models what users rely on, not how the code does it: a record already
//! pending is a duplicate whatever the cap says; the oldest records are
//! dropped only to make room for one that will be stored; every record
//! that leaves does so by an acknowledgement, the cap or the age limit, and
//! is counted.

use sluice_outbox::{AppendReport, FullPolicy, KeyedAccept, NewInput, Split};
use std::collections::{BTreeMap, BTreeSet};

/// The device every result id is made for.
pub const DEVICE: &str = "dev";
/// The pipelines inputs are accepted for.
pub const PIPELINES: [&str; 2] = ["a", "b"];

/// An input waiting in the journal.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: i64,
    pub pipeline: String,
    pub content_type: String,
    pub attributes: Vec<(String, String)>,
    pub data: Vec<u8>,
    pub refused: Option<String>,
    pub crashes: u32,
    pub last_crash: Option<String>,
}

/// A pending record, in storage (rowid) order; `batch` is the token of the
/// model's batch holding it.
#[derive(Debug, Clone)]
pub struct Rec {
    pub id: String,
    pub body: String,
    pub batch: Option<u64>,
}

/// A batch in flight. `bound` is the outbox's id and key for it, learnt the
/// first time the outbox shows it (the outbox picks them; a batch made by a
/// split is seen only in the file) and required to stay the same after.
#[derive(Debug, Clone)]
pub struct Slot {
    pub token: u64,
    pub bound: Option<(i64, String)>,
}

/// A record set aside.
#[derive(Debug, Clone)]
pub struct Aside {
    pub id: String,
    pub body: String,
    pub reason: String,
}

/// Where a record (or the input it will be the result of) is, by its id.
/// Every accepted input and every appended record has exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Journal,
    Pending,
    SetAside,
    Uploaded,
    DroppedOldest,
    Expired,
    RejectedFull,
    RejectedTooLarge,
    SetAsideDropped,
}

/// The digest an idempotency key binds: pipeline, media type, bytes.
type Digest = (String, String, Vec<u8>);

#[derive(Debug)]
pub struct Model {
    pub max_bytes: u64,
    pub when_full: FullPolicy,
    pub max_set_aside: u64,
    pub instance: Option<String>,
    pub journal: Vec<Entry>,
    pub claims: BTreeSet<String>,
    keys: BTreeMap<String, (Digest, i64)>,
    pub records: Vec<Rec>,
    pub batches: Vec<Slot>,
    pub set_aside: Vec<Aside>,
    pub counters: BTreeMap<&'static str, i64>,
    pub last_error: Option<String>,
    /// The largest sequence number handed out (inputs and allocations).
    pub last_seq: i64,
    pub fates: BTreeMap<String, Fate>,
    next_token: u64,
    /// Every batch id and key the outbox ever showed: never reused.
    pub batch_ids: Vec<i64>,
    batch_keys: BTreeSet<String>,
}

fn size(id: &str, body: &str) -> u64 {
    (id.len() + body.len()) as u64
}

impl Model {
    pub fn new(max_bytes: u64, when_full: FullPolicy, max_set_aside: u64) -> Model {
        Model {
            max_bytes,
            when_full,
            max_set_aside,
            instance: None,
            journal: Vec::new(),
            claims: BTreeSet::new(),
            keys: BTreeMap::new(),
            records: Vec::new(),
            batches: Vec::new(),
            set_aside: Vec::new(),
            counters: BTreeMap::new(),
            last_error: None,
            last_seq: i64::MIN,
            fates: BTreeMap::new(),
            next_token: 0,
            batch_ids: Vec::new(),
            batch_keys: BTreeSet::new(),
        }
    }

    pub fn result_id(&self, pipeline: &str, seq: i64) -> String {
        sluice_protocol::result_id(DEVICE, pipeline, self.instance.as_deref(), seq)
    }

    fn bump(&mut self, counter: &'static str, n: u64) {
        if n > 0 {
            *self.counters.entry(counter).or_default() += n as i64;
        }
    }

    pub fn pending_bytes(&self) -> u64 {
        self.records.iter().map(|r| size(&r.id, &r.body)).sum()
    }

    pub fn set_aside_bytes(&self) -> u64 {
        self.set_aside.iter().map(|a| size(&a.id, &a.body)).sum()
    }

    /// A sequence number the outbox handed out: it must be new and larger
    /// than every one before (never reused, also across reopening).
    pub fn took_seq(&mut self, seq: i64) -> Result<(), String> {
        if seq <= self.last_seq {
            return Err(format!(
                "sequence number {seq} handed out after {}: reused or going back",
                self.last_seq
            ));
        }
        self.last_seq = seq;
        Ok(())
    }

    /// `input` was accepted (or refused at ingest, journaled without its
    /// data) under `seq`.
    pub fn accepted(
        &mut self,
        seq: i64,
        input: &NewInput,
        refused: Option<&str>,
        claim: Option<&str>,
    ) -> Result<(), String> {
        self.took_seq(seq)?;
        self.journal.push(Entry {
            seq,
            pipeline: input.pipeline.clone(),
            content_type: input.content_type.clone(),
            attributes: input.attributes.clone(),
            data: if refused.is_some() {
                Vec::new()
            } else {
                input.data.clone()
            },
            refused: refused.map(str::to_owned),
            crashes: 0,
            last_crash: None,
        });
        if let Some(name) = claim {
            self.claims.insert(name.to_owned());
        }
        let id = self.result_id(&input.pipeline, seq);
        self.fates.insert(id, Fate::Journal);
        Ok(())
    }

    /// What `accept_keyed` must answer for a known key; `None`: the key is
    /// new, the input must be accepted (see [`Model::keyed`]).
    pub fn known_key(&self, key: &str, input: &NewInput) -> Option<KeyedAccept> {
        let digest = (
            input.pipeline.clone(),
            input.content_type.clone(),
            input.data.clone(),
        );
        self.keys.get(key).map(|(known, seq)| {
            if *known == digest {
                KeyedAccept::Replayed(*seq)
            } else {
                KeyedAccept::Conflict
            }
        })
    }

    /// A new key accepted `input` under `seq`.
    pub fn keyed(&mut self, key: &str, input: &NewInput, seq: i64) -> Result<(), String> {
        self.accepted(seq, input, None, None)?;
        let digest = (
            input.pipeline.clone(),
            input.content_type.clone(),
            input.data.clone(),
        );
        self.keys.insert(key.to_owned(), (digest, seq));
        Ok(())
    }

    /// Forget every idempotency key; how many.
    pub fn prune_keys(&mut self) -> u64 {
        std::mem::take(&mut self.keys).len() as u64
    }

    pub fn note_crash(&mut self, seqs: &[i64], cause: &str) {
        for entry in self.journal.iter_mut().filter(|e| seqs.contains(&e.seq)) {
            entry.crashes += 1;
            entry.last_crash = Some(cause.to_owned());
        }
    }

    /// The journal items of `pipeline`, oldest first.
    pub fn items(&self, pipeline: &str) -> Vec<&Entry> {
        self.journal
            .iter()
            .filter(|e| e.pipeline == pipeline)
            .collect()
    }

    /// Put batch `token`'s records back to pending and forget it.
    fn dissolve(&mut self, token: u64) {
        for rec in self.records.iter_mut().filter(|r| r.batch == Some(token)) {
            rec.batch = None;
        }
        self.batches.retain(|b| b.token != token);
    }

    /// Store `records` under the cap, as `append`, `complete` and
    /// `requeue_set_aside` do; `new`: they count as stored.
    fn store(&mut self, records: &[(String, String)], new: bool) -> AppendReport {
        let mut report = AppendReport::default();
        for (id, body) in records {
            // Already pending: nothing to store, so nothing is refused or
            // dropped for it either.
            if self.records.iter().any(|r| &r.id == id) {
                report.duplicates += 1;
                continue;
            }
            let bytes = size(id, body);
            if bytes > self.max_bytes {
                report.rejected_too_large += 1;
                self.fates.insert(id.clone(), Fate::RejectedTooLarge);
                continue;
            }
            if self.pending_bytes() + bytes > self.max_bytes {
                if self.when_full == FullPolicy::RejectNew {
                    report.rejected_full += 1;
                    self.fates.insert(id.clone(), Fate::RejectedFull);
                    continue;
                }
                let need = self.pending_bytes() + bytes - self.max_bytes;
                let mut freed = 0;
                while freed < need && !self.records.is_empty() {
                    if let Some(token) = self.records[0].batch {
                        self.dissolve(token);
                    }
                    let oldest = self.records.remove(0);
                    freed += size(&oldest.id, &oldest.body);
                    self.fates.insert(oldest.id, Fate::DroppedOldest);
                    report.dropped_oldest += 1;
                }
            }
            self.records.push(Rec {
                id: id.clone(),
                body: body.clone(),
                batch: None,
            });
            self.fates.insert(id.clone(), Fate::Pending);
            report.stored += 1;
        }
        self.bump("stored", if new { report.stored } else { 0 });
        self.bump("dropped_oldest", report.dropped_oldest);
        self.bump("rejected_full", report.rejected_full);
        self.bump("rejected_too_large", report.rejected_too_large);
        self.bump("duplicates", report.duplicates);
        report
    }

    pub fn append(&mut self, records: &[(String, String)]) -> AppendReport {
        self.store(records, true)
    }

    /// Retire the journal rows `seqs` and store their results.
    pub fn complete(&mut self, seqs: &[i64], records: &[(String, String)]) -> AppendReport {
        self.journal.retain(|e| !seqs.contains(&e.seq));
        self.store(records, true)
    }

    /// What `next_batch` must return: the oldest batch in flight if it has
    /// records, else a new one (appended to `batches`) of the oldest records
    /// in none. With the index of its slot, to bind.
    pub fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Option<(usize, Vec<(String, String)>)> {
        if let Some(oldest) = self.batches.first() {
            let token = oldest.token;
            let records = self.records_of(token);
            if !records.is_empty() {
                return Some((0, records));
            }
            self.dissolve(token);
        }
        let mut taken = Vec::new();
        let mut bytes = 0usize;
        for rec in self.records.iter().filter(|r| r.batch.is_none()) {
            if taken.len() == max_records
                || (!taken.is_empty() && bytes + rec.body.len() > max_bytes)
            {
                break;
            }
            bytes += rec.body.len();
            taken.push(rec.id.clone());
        }
        if taken.is_empty() {
            return None;
        }
        let token = self.new_slot();
        for rec in self.records.iter_mut().filter(|r| taken.contains(&r.id)) {
            rec.batch = Some(token);
        }
        Some((self.batches.len() - 1, self.records_of(token)))
    }

    fn new_slot(&mut self) -> u64 {
        self.next_token += 1;
        self.batches.push(Slot {
            token: self.next_token,
            bound: None,
        });
        self.next_token
    }

    fn records_of(&self, token: u64) -> Vec<(String, String)> {
        self.records
            .iter()
            .filter(|r| r.batch == Some(token))
            .map(|r| (r.id.clone(), r.body.clone()))
            .collect()
    }

    /// The outbox showed batch `slot` as `id` and `key`: the first time, it
    /// must be a new id and key; after, the same ones.
    pub fn bind(&mut self, slot: usize, id: i64, key: &str) -> Result<(), String> {
        match &self.batches[slot].bound {
            Some((known, known_key)) if *known == id && known_key == key => Ok(()),
            Some((known, known_key)) => Err(format!(
                "batch {known} (key {known_key}) came back as batch {id} (key {key})"
            )),
            None => {
                if self.batch_ids.iter().any(|&seen| seen >= id) {
                    return Err(format!("new batch {id}: not above every earlier id"));
                }
                if !self.batch_keys.insert(key.to_owned()) {
                    return Err(format!("new batch {id}: key {key} used before"));
                }
                self.batch_ids.push(id);
                self.batches[slot].bound = Some((id, key.to_owned()));
                Ok(())
            }
        }
    }

    fn slot_of(&self, id: i64) -> Option<u64> {
        self.batches
            .iter()
            .find(|b| b.bound.as_ref().is_some_and(|(bound, _)| *bound == id))
            .map(|b| b.token)
    }

    /// The collector acknowledged batch `id`: its records leave, counted.
    pub fn ack(&mut self, id: i64) -> u64 {
        self.last_error = None;
        let Some(token) = self.slot_of(id) else {
            return 0;
        };
        let before = self.records.len();
        for rec in self.records.iter().filter(|r| r.batch == Some(token)) {
            self.fates.insert(rec.id.clone(), Fate::Uploaded);
        }
        self.records.retain(|r| r.batch != Some(token));
        self.batches.retain(|b| b.token != token);
        let n = (before - self.records.len()) as u64;
        self.bump("uploaded", n);
        n
    }

    /// The collector refused batch `id`: halve it, or set its one record
    /// aside.
    pub fn split(&mut self, id: i64, reason: &str) -> Split {
        let Some(token) = self.slot_of(id) else {
            return Split::Empty;
        };
        let ids: Vec<String> = self.records_of(token).into_iter().map(|r| r.0).collect();
        self.dissolve(token);
        match ids.as_slice() {
            [] => Split::Empty,
            [one] => {
                let at = self.records.iter().position(|r| &r.id == one).unwrap();
                let rec = self.records.remove(at);
                self.bump("rejected_upstream", 1);
                self.last_error = Some(reason.to_owned());
                self.set_aside.retain(|a| a.id != rec.id);
                self.fates.insert(rec.id.clone(), Fate::SetAside);
                self.set_aside.push(Aside {
                    id: rec.id.clone(),
                    body: rec.body,
                    reason: reason.to_owned(),
                });
                let mut dropped = 0;
                while self.set_aside_bytes() > self.max_set_aside {
                    let oldest = self.set_aside.remove(0);
                    self.fates.insert(oldest.id, Fate::SetAsideDropped);
                    dropped += 1;
                }
                self.bump("set_aside_dropped", dropped);
                Split::SetAside { id: rec.id }
            }
            _ => {
                let (first, second) = ids.split_at(ids.len() / 2);
                for half in [first, second] {
                    let token = self.new_slot();
                    for rec in self.records.iter_mut().filter(|r| half.contains(&r.id)) {
                        rec.batch = Some(token);
                    }
                }
                self.last_error = Some(reason.to_owned());
                Split::Halved {
                    first: first.len(),
                    second: second.len(),
                }
            }
        }
    }

    /// Every set-aside record back to pending, under the cap.
    pub fn requeue(&mut self) -> AppendReport {
        let aside: Vec<(String, String)> = std::mem::take(&mut self.set_aside)
            .into_iter()
            .map(|a| (a.id, a.body))
            .collect();
        self.store(&aside, false)
    }

    /// Everything older than the age limit (here: everything) expires.
    pub fn expire_all(&mut self) -> u64 {
        let n = (self.records.len() + self.set_aside.len()) as u64;
        for id in self.records.iter().map(|r| &r.id) {
            self.fates.insert(id.clone(), Fate::Expired);
        }
        for id in self.set_aside.iter().map(|a| &a.id) {
            self.fates.insert(id.clone(), Fate::Expired);
        }
        if !self.records.is_empty() {
            let held: BTreeSet<u64> = self.records.iter().filter_map(|r| r.batch).collect();
            self.batches.retain(|b| !held.contains(&b.token));
        }
        self.records.clear();
        self.set_aside.clear();
        self.bump("expired", n);
        n
    }
}
