//! The runner: applies each action to the real outbox and to the model
//! and compares the two after every step (as Vector's disk-buffer model
//! tests do), then drains the outbox as the uplink does.

use crate::actions::{Action, KEYS, REASONS, body};
use crate::model::{DEVICE, Model, PIPELINES};
use crate::view::{CLAIMS, compare, same};
use sluice_outbox::{KeyedAccept, NewInput, NewRecord, Outbox, OutboxConfig, Split};
use std::path::{Path, PathBuf};

thread_local! {
    /// Writes that found the disk full so far (on this test's thread).
    pub static DISK_FULLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

struct Run {
    root: tempfile::TempDir,
    path: PathBuf,
    config: OutboxConfig,
    outbox: Option<Outbox>,
    model: Model,
    /// Whether the file is capped at its size (writes may find it full).
    full: bool,
    last_batch: Option<i64>,
    images: u32,
}

/// What an operation on the outbox gave: its value, or that it found the
/// disk full (allowed only while the file is capped, and then it must have
/// changed nothing), or an error that fails the test.
fn outcome<T>(full: bool, r: Result<T, sluice_outbox::OutboxError>) -> Result<Option<T>, String> {
    match r {
        Ok(value) => Ok(Some(value)),
        Err(e) if full && e.is_disk_full() => {
            DISK_FULLS.set(DISK_FULLS.get() + 1);
            Ok(None)
        }
        Err(e) => Err(format!("unexpected error: {e}")),
    }
}

impl Run {
    fn outbox(&self) -> &Outbox {
        self.outbox.as_ref().expect("open")
    }

    fn check(&mut self) -> Result<(), String> {
        compare(self.outbox.as_ref().expect("open"), &mut self.model)
    }

    fn open(path: &Path, config: &OutboxConfig) -> Result<Outbox, String> {
        let outbox = Outbox::open(path, config.clone()).map_err(|e| format!("reopen: {e}"))?;
        if let Some(recovery) = outbox.recovered() {
            return Err(format!("reopened as damaged: {}", recovery.reason));
        }
        Ok(outbox)
    }

    /// Apply `action` to the outbox and the model; `Err` when the outbox
    /// answered other than the model says.
    fn step(&mut self, action: &Action) -> Result<(), String> {
        let full = self.full;
        let m = &mut self.model;
        let outbox = self.outbox.as_ref().expect("open");
        match action {
            Action::Accept(i) => {
                if let Some(seq) = outcome(full, outbox.accept(&i.input()))? {
                    m.accepted(seq, &i.input(), None, None)?;
                }
            }
            Action::AcceptMany(inputs) => {
                let made: Vec<(NewInput, Option<&str>)> = inputs
                    .iter()
                    .map(|(i, c)| (i.input(), c.map(|c| CLAIMS[c as usize])))
                    .collect();
                let refs: Vec<(&NewInput, Option<&str>)> =
                    made.iter().map(|(i, c)| (i, *c)).collect();
                if let Some(seqs) = outcome(full, outbox.accept_many(&refs))? {
                    same("sequence numbers returned", &seqs.len(), &made.len())?;
                    for (seq, (input, claim)) in seqs.into_iter().zip(&made) {
                        m.accepted(seq, input, None, *claim)?;
                    }
                }
            }
            Action::AcceptKeyed { key, input } => {
                let (key, input) = (KEYS[*key as usize], input.input());
                let want = m.known_key(key, &input);
                if let Some(got) = outcome(full, outbox.accept_keyed(&input, key))? {
                    match (got, want) {
                        (KeyedAccept::New(seq), None) => m.keyed(key, &input, seq)?,
                        (got, want) => {
                            same("accept_keyed", &Some(got), &want)?;
                        }
                    }
                }
            }
            Action::AcceptRefused { input, claim } => {
                let (input, claim) = (input.input(), claim.map(|c| CLAIMS[c as usize]));
                let reason = "input too large";
                if let Some(seq) = outcome(full, outbox.accept_refused(&input, reason, claim))? {
                    m.accepted(seq, &input, Some(reason), claim)?;
                }
            }
            Action::PruneKeys => {
                if let Some(n) = outcome(full, outbox.prune_ingest_keys(i64::MAX, 0))? {
                    same("keys pruned", &n, &m.prune_keys())?;
                }
            }
            Action::ForgetClaims(names) => {
                let names: Vec<String> = names.iter().map(|&c| CLAIMS[c as usize].into()).collect();
                if outcome(full, outbox.forget_claims(&names))?.is_some() {
                    for name in &names {
                        m.claims.remove(name);
                    }
                }
            }
            Action::NoteCrash { p, take } => {
                let pipeline = PIPELINES[*p as usize];
                let seqs: Vec<i64> = m
                    .items(pipeline)
                    .iter()
                    .take(*take as usize)
                    .map(|e| e.seq)
                    .collect();
                if outcome(full, outbox.note_crash(&seqs, "panicked"))?.is_some() {
                    m.note_crash(&seqs, "panicked");
                }
            }
            Action::Complete {
                p,
                take,
                failed,
                pad,
                twice,
            } => {
                let pipeline = PIPELINES[*p as usize];
                let mut seqs = Vec::new();
                let mut records = Vec::new();
                for (n, e) in m
                    .items(pipeline)
                    .into_iter()
                    .take(*take as usize)
                    .enumerate()
                {
                    let failure = match &e.refused {
                        Some(reason) => Some(reason.as_str()),
                        None if failed & (1 << n) != 0 => Some("invalid input"),
                        None => None,
                    };
                    seqs.push(e.seq);
                    records.push((m.result_id(pipeline, e.seq), body(e.seq, *pad, failure)));
                }
                // Right after the first: a copy further on could come after
                // the first was dropped for room, and would then be stored
                // again (the outbox remembers no record that left; no caller
                // offers one again, its journal row being gone).
                if *twice && let Some(first) = records.first().cloned() {
                    records.insert(1, first);
                }
                if seqs.is_empty() {
                    return Ok(());
                }
                let news: Vec<NewRecord> = records
                    .iter()
                    .map(|(id, body)| NewRecord {
                        id: id.clone(),
                        body: body.clone().into_bytes(),
                    })
                    .collect();
                if let Some(report) = outcome(full, outbox.complete(&seqs, &news))? {
                    same("complete's report", &report, &m.complete(&seqs, &records))?;
                }
            }
            Action::CompleteAgain { pick } => {
                let Some(rec) = pick_from(&m.records, *pick) else {
                    return Ok(());
                };
                let record = (rec.id.clone(), rec.body.clone());
                let seq: i64 = record.0.rsplit('-').next().unwrap().parse().unwrap();
                let news = [NewRecord {
                    id: record.0.clone(),
                    body: record.1.clone().into_bytes(),
                }];
                if let Some(report) = outcome(full, outbox.complete(&[seq], &news))? {
                    same("complete's report", &report, &m.complete(&[seq], &[record]))?;
                }
            }
            Action::Append(pads) => {
                let mut records = Vec::new();
                for pad in pads {
                    let Some(seq) = outcome(full, outbox.allocate_seq())? else {
                        return Ok(());
                    };
                    m.took_seq(seq)?;
                    let id =
                        sluice_protocol::result_id(DEVICE, "drift", m.instance.as_deref(), seq);
                    records.push((id, body(seq, *pad, None)));
                }
                let news: Vec<NewRecord> = records
                    .iter()
                    .map(|(id, body)| NewRecord {
                        id: id.clone(),
                        body: body.clone().into_bytes(),
                    })
                    .collect();
                if let Some(report) = outcome(full, outbox.append(news))? {
                    same("append's report", &report, &m.append(&records))?;
                }
            }
            Action::NextBatch {
                max_records,
                max_bytes,
            } => {
                let (max_records, max_bytes) = (*max_records as usize, *max_bytes as usize);
                let Some(got) = outcome(full, outbox.next_batch(max_records, max_bytes))? else {
                    return Ok(());
                };
                let want = m.next_batch(max_records, max_bytes);
                match (got, want) {
                    (None, None) => {}
                    (Some(batch), Some((slot, records))) => {
                        let got: Vec<(String, String)> = batch
                            .records
                            .iter()
                            .map(|(id, body)| {
                                (id.clone(), String::from_utf8_lossy(body).into_owned())
                            })
                            .collect();
                        same("batch records", &got, &records)?;
                        m.bind(slot, batch.id, &batch.key)?;
                        let backlog = outbox.backlog_after(&batch).map_err(|e| e.to_string())?;
                        same(
                            "backlog after the batch",
                            &(
                                backlog.pending_records,
                                backlog.journal_items,
                                backlog.set_aside_records,
                            ),
                            &(
                                (m.records.len() - records.len()) as u64,
                                m.journal.len() as u64,
                                m.set_aside.len() as u64,
                            ),
                        )?;
                        self.last_batch = Some(batch.id);
                    }
                    (got, want) => {
                        return Err(format!(
                            "next_batch: outbox {:?}, model {want:?}",
                            got.map(|b| (b.id, b.key, b.records.len()))
                        ));
                    }
                }
            }
            Action::AckLast | Action::AckAny { .. } => {
                let id = match action {
                    Action::AckAny { pick } => pick_id(&m.batch_ids, *pick),
                    _ => match self.last_batch {
                        Some(id) => id,
                        None => return Ok(()),
                    },
                };
                if let Some(n) = outcome(full, outbox.ack_batch(id))? {
                    same("records acknowledged", &n, &m.ack(id))?;
                }
            }
            Action::Split { last, pick, reason } => {
                let id = match (last, self.last_batch) {
                    (true, Some(id)) => id,
                    _ => pick_id(&m.batch_ids, *pick),
                };
                let reason = REASONS[*reason as usize];
                if let Some(split) = outcome(full, outbox.split_batch(id, reason))? {
                    same::<Split>("split", &split, &m.split(id, reason))?;
                }
            }
            Action::Requeue => {
                if let Some(report) = outcome(full, outbox.requeue_set_aside())? {
                    same("requeue's report", &report, &m.requeue())?;
                }
            }
            Action::ExpireAll => {
                let later = sluice_types::now_ms() + 3_601_000;
                if let Some(n) = outcome(full, outbox.expire(later))? {
                    same("expired", &n, &m.expire_all())?;
                }
            }
            Action::SyncError(reason) => {
                let reason = REASONS[*reason as usize];
                if outcome(full, outbox.record_sync_error(reason))?.is_some() {
                    m.last_error = Some(reason.into());
                }
            }
            Action::SyncOk => {
                if outcome(full, outbox.record_sync_ok())?.is_some() {
                    m.last_error = None;
                }
            }
            Action::DiskFull(on) => {
                // SQLite keeps the cap at least the file's size: 1 is "now".
                let pages = if *on { 1 } else { 1 << 30 };
                outbox.limit_file_pages(pages).map_err(|e| e.to_string())?;
                self.full = *on;
            }
            Action::Crash { image } => {
                if *image {
                    self.images += 1;
                    let dir = self.root.path().join(format!("image-{}", self.images));
                    std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
                    let to = dir.join("outbox.sqlite");
                    copy(&self.path, &to)?;
                    copy(&wal(&self.path), &wal(&to))?;
                    self.path = to;
                }
                // Dropped with no shutdown; the cap was the connection's.
                drop(self.outbox.take());
                self.outbox = Some(Run::open(&self.path, &self.config)?);
                self.full = false;
            }
        }
        Ok(())
    }
}

fn pick_from<T>(items: &[T], pick: u8) -> Option<&T> {
    (!items.is_empty()).then(|| &items[pick as usize % items.len()])
}

/// A batch id seen before, or (one pick in four) one never formed.
fn pick_id(ids: &[i64], pick: u8) -> i64 {
    match pick_from(ids, pick) {
        Some(&id) if pick % 4 != 3 => id,
        _ => i64::MAX,
    }
}

fn wal(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", path.display()))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    match std::fs::copy(from, to) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("copy {}: {e}", from.display())),
    }
}

/// A fresh directory, in memory where Linux offers it (`/dev/shm`): every
/// commit fsyncs, and a few thousand fsyncs on a shared CI disk take ten
/// times as long as the test itself. What is tested here is what the
/// outbox does, not the disk: a crash is the process's (the file and WAL
/// as left by the last commit), which memory keeps as well as a disk.
fn scratch() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return Ok(dir);
    }
    tempfile::tempdir()
}

/// Run `actions` from a fresh outbox, comparing after each; then drain it as
/// the uplink does and check that what was pending goes out, each once.
pub fn run(config: OutboxConfig, actions: &[Action]) -> Result<(), String> {
    let root = scratch().map_err(|e| e.to_string())?;
    let path = root.path().join("outbox.sqlite");
    let outbox = Run::open(&path, &config)?;
    let mut model = Model::new(
        config.max_bytes,
        config.when_full,
        config.max_set_aside_bytes,
    );
    model.instance = outbox.instance().map(str::to_owned);
    let mut run = Run {
        root,
        path,
        config,
        outbox: Some(outbox),
        model,
        full: false,
        last_batch: None,
        images: 0,
    };
    for (n, action) in actions.iter().enumerate() {
        let fulls = DISK_FULLS.get();
        let checked = run.step(action).and_then(|()| {
            if DISK_FULLS.get() > fulls && run.outbox().write_failure().is_none() {
                return Err("a write found the disk full, write_failure() is None".into());
            }
            run.check()
        });
        checked.map_err(|e| format!("after action {n} ({action:?}):\n{e}"))?;
    }
    run.step(&Action::DiskFull(false))?;
    for round in 0.. {
        if round > 1000 {
            return Err("the drain does not end".into());
        }
        let before = run.model.records.len();
        run.step(&Action::NextBatch {
            max_records: 5,
            max_bytes: u16::MAX,
        })
        .and_then(|()| run.step(&Action::AckLast))
        .and_then(|()| run.check())
        .map_err(|e| format!("draining:\n{e}"))?;
        if before == 0 {
            break;
        }
    }
    Ok(())
}
