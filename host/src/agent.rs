//! The agent (`sluice run`): the long-running device process. It takes
//! inputs from a watched folder and a local HTTP endpoint, runs them through
//! their pipelines, keeps results in the [`Outbox`] and ships them upstream
//! with the [`crate::sync`] uploader in the background.
//!
//! Flow and durability:
//!
//! ```text
//! folder / POST /v1/ingest/{pipeline}
//!    -> journal (committed, fsynced: only now "accepted": 202 / file deleted)
//!    -> worker per pipeline: Pipeline::process over the oldest journal items
//!    -> ONE transaction: results into `records`, journal rows deleted
//!       (while it commits, the worker already processes the next group)
//!    -> uploader: batches -> collector -> deleted once acknowledged
//! ```
//!
//! Invariants:
//! * an input is acknowledged (HTTP `202` with its id, or its file deleted)
//!   only after its journal row is committed with `synchronous=FULL`, so an
//!   accepted input survives SIGKILL and power loss;
//! * ids are `<device>/<pipeline>/<journal seq>`, fixed at acceptance: an
//!   input processed again after a crash produces the same id, and the
//!   outbox (`INSERT OR IGNORE`) and collector (`UNIQUE`) keep one result;
//! * folder files are first renamed into `<folder>/.sluice-claimed/` under a
//!   unique name; the claim name is committed with the journal row, so a
//!   crash between accepting and deleting the file never ingests it twice;
//! * SIGTERM / Ctrl-C: stop taking inputs, let every worker finish the batch
//!   it is running (its results are committed), let the uploader finish its
//!   request, exit 0. Inputs still in the journal wait for the next start;
//! * a full disk never stops the agent: ingest answers `507` (files wait in
//!   the folder), workers retry their commit with backoff, uploads go on and
//!   free space.
//!
//! HTTP endpoints of the agent (`[ingest] listen`, meant for the local host):
//! * `POST /v1/ingest/{pipeline}`: body = the raw input, `Content-Type` its
//!   MIME type; `202 {"id", "seq"}` once durably accepted; `404` unknown
//!   pipeline; `413` too large; `503` too much waiting (retry later); `507`
//!   disk full.
//! * `GET /v1/status`: the outbox status as JSON. `GET /v1/health`: `ok`.

use crate::config::Config;
use crate::outbox::{JournalItem, NewInput, NewRecord, Outbox, OutboxError, Status, now_ms};
use crate::pipeline::Outcome;
use crate::runtime::{Runtime, process_all};
use crate::sync::{Signal, Uploader};
use crate::types::{Metadata, RawItem};
use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Subfolder of the ingest folder holding files being accepted.
pub const CLAIM_DIR: &str = ".sluice-claimed";

/// What a result records about the code and model that made it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Provenance {
    pub model: String,
    pub model_sha256: String,
    pub preprocess: String,
    pub preprocess_sha256: String,
    pub postprocess: String,
    pub postprocess_sha256: String,
}

/// A running agent.
pub struct Agent {
    device: String,
    runtime: Arc<Runtime>,
    ingest_addr: Option<SocketAddr>,
    outbox: Arc<Outbox>,
    work: Arc<Signal>,
    uploads: Arc<Signal>,
    threads: Vec<std::thread::JoinHandle<()>>,
    uploader: Option<std::thread::JoinHandle<()>>,
    http: Option<(tokio::runtime::Runtime, tokio::sync::oneshot::Sender<()>)>,
}

impl Agent {
    /// Open the outbox, start the pipelines, the workers, the ingest sources
    /// and the uploader.
    pub fn start(config: Config) -> anyhow::Result<Agent> {
        let outbox = Arc::new(Outbox::open_in(
            &config.device.data_dir,
            config.outbox.clone(),
        )?);
        if let Some(recovery) = outbox.recovered() {
            eprintln!(
                "sluice run: the outbox was damaged ({}); moved it to {} and started a fresh one",
                recovery.reason,
                recovery.moved_to.display()
            );
        }
        let runtime = Arc::new(Runtime::start(config.clone())?);
        let device = config.device.id.clone();
        let work = Signal::new();
        let uploads = Signal::new();
        let mut threads = Vec::new();

        for name in runtime.pipelines.keys() {
            let provenance = provenance(&runtime, name);
            let (runtime, outbox, work, uploads, device, name) = (
                runtime.clone(),
                outbox.clone(),
                work.clone(),
                uploads.clone(),
                device.clone(),
                name.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("sluice-{name}"))
                    .spawn(move || {
                        worker(
                            &runtime,
                            &name,
                            &device,
                            &provenance,
                            &outbox,
                            &work,
                            &uploads,
                        )
                    })?,
            );
        }

        if let Some(folder) = &config.ingest.folder {
            let pipeline = match &config.ingest.folder_pipeline {
                Some(p) => p.clone(),
                None => runtime
                    .pipeline(None)
                    .context("ingest.folder_pipeline")?
                    .name
                    .clone(),
            };
            anyhow::ensure!(
                runtime.pipelines.contains_key(&pipeline),
                "ingest.folder_pipeline `{pipeline}` is not running (see the problems above)"
            );
            std::fs::create_dir_all(folder.join(CLAIM_DIR))
                .with_context(|| format!("cannot create the ingest folder {}", folder.display()))?;
            let (folder, outbox, work, ingest) = (
                folder.clone(),
                outbox.clone(),
                work.clone(),
                config.ingest.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("sluice-folder".into())
                    .spawn(move || watch_folder(&folder, &pipeline, &outbox, &work, &ingest))?,
            );
        }

        let uploader = match &config.sync.url {
            Some(_) => Some(crate::sync::spawn(
                Uploader::new(outbox.clone(), &config.sync, &device)?,
                uploads.clone(),
            )),
            None => None,
        };

        let (ingest_addr, http) = match &config.ingest.listen {
            Some(listen) => {
                let (addr, rt, stop) = serve_ingest(listen, &config, &runtime, &outbox, &work)?;
                (Some(addr), Some((rt, stop)))
            }
            None => (None, None),
        };
        // Work left in the journal by the previous run starts at once.
        work.wake();
        uploads.wake();
        Ok(Agent {
            device,
            runtime,
            ingest_addr,
            outbox,
            work,
            uploads,
            threads,
            uploader,
            http,
        })
    }

    /// The bound address of the HTTP ingest endpoint.
    pub fn ingest_addr(&self) -> Option<SocketAddr> {
        self.ingest_addr
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Accept inputs durably, in one transaction, and wake their pipelines
    /// (the ingest of a program embedding the agent). Returns their result
    /// ids, in order. Each input must name a running pipeline.
    pub fn accept(&self, inputs: &[NewInput]) -> anyhow::Result<Vec<String>> {
        if let Some(bad) = inputs
            .iter()
            .find(|i| !self.runtime.pipelines.contains_key(&i.pipeline))
        {
            anyhow::bail!("no running pipeline `{}`", bad.pipeline);
        }
        let seqs = self
            .outbox
            .accept_many(&inputs.iter().map(|i| (i, None)).collect::<Vec<_>>())?;
        self.work.wake();
        Ok(inputs
            .iter()
            .zip(seqs)
            .map(|(input, seq)| result_id(&self.device, &input.pipeline, seq))
            .collect())
    }

    /// The pipelines, schedulers and plugins the agent runs.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Stop taking inputs, finish in-flight batches and uploads, and return.
    pub fn shutdown(mut self) {
        if let Some((rt, stop)) = self.http.take() {
            let _ = stop.send(());
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        self.work.stop();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.uploads.stop();
        if let Some(uploader) = self.uploader.take() {
            let _ = uploader.join();
        }
    }
}

/// `sluice run --config FILE`: run until SIGTERM or Ctrl-C, then drain.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    // Register the handlers before start-up, so an early SIGTERM drains too.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut int) = {
        let _guard = signals.enter();
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    let agent = Agent::start(config)?;
    if let Some(addr) = agent.ingest_addr() {
        println!("sluice run: ingest listening on http://{addr}");
    }
    println!("sluice run: ready");
    use std::io::Write;
    std::io::stdout().flush()?;
    signals.block_on(async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
    eprintln!("sluice run: stopping: finishing in-flight batches");
    agent.shutdown();
    eprintln!("sluice run: stopped");
    Ok(())
}

/// Model and plugin digests of pipeline `name`.
fn provenance(runtime: &Runtime, name: &str) -> Provenance {
    let pipeline = &runtime.pipelines[name];
    let spec = &runtime.config.pipelines[name];
    Provenance {
        model: spec.model.clone(),
        model_sha256: runtime.model_sha256[&spec.model].clone(),
        preprocess: spec.preprocess.clone(),
        preprocess_sha256: pipeline.preprocess.digest().to_owned(),
        postprocess: spec.postprocess.clone(),
        postprocess_sha256: pipeline.postprocess.digest().to_owned(),
    }
}

/// The id of the result of journal item `seq`.
pub fn result_id(device: &str, pipeline: &str, seq: i64) -> String {
    format!("{device}/{pipeline}/{seq}")
}

/// The document stored and shipped for one processed input.
pub fn result_record(
    device: &str,
    item: &JournalItem,
    outcome: &Outcome,
    provenance: &Provenance,
) -> NewRecord {
    let mut doc = serde_json::json!({
        "id": outcome.id,
        "device": device,
        "pipeline": item.pipeline,
        "seq": item.seq,
        "accepted_at_ms": item.accepted_at_ms,
        "completed_at_ms": now_ms(),
        "input": {
            "content_type": item.content_type,
            "bytes": item.data.len(),
            "attributes": item.attributes.iter().cloned().collect::<BTreeMap<_, _>>(),
        },
        "provenance": provenance,
        "sluice_version": env!("CARGO_PKG_VERSION"),
        "timings": outcome.timings,
    });
    match &outcome.result {
        Ok(document) => {
            let body = if document.content_type == "application/json" {
                serde_json::from_slice(&document.body)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&document.body).into())
            } else {
                serde_json::Value::from(String::from_utf8_lossy(&document.body).into_owned())
            };
            doc["result"] =
                serde_json::json!({ "content_type": document.content_type, "body": body });
        }
        Err(error) => {
            doc["error"] = serde_json::json!({ "kind": crate::cli::error_kind(error), "message": error.to_string() });
        }
    }
    NewRecord {
        id: outcome.id.clone(),
        body: doc.to_string().into_bytes(),
    }
}

/// One pipeline's worker: oldest journal items -> pipeline -> outbox.
///
/// Processing and storing overlap: while one group of results is being
/// committed (an fsync), the next group is already going through the
/// pipeline. At most one group waits for its commit; a commit that cannot
/// proceed (a full disk) therefore stops processing too, and the inputs stay
/// in the journal until their results are stored.
fn worker(
    runtime: &Runtime,
    name: &str,
    device: &str,
    provenance: &Provenance,
    outbox: &Outbox,
    work: &Signal,
    uploads: &Signal,
) {
    let pipeline = &runtime.pipelines[name];
    let config = pipeline.scheduler.config();
    // Enough items to keep every scheduler thread busy with full batches,
    // several times over so that one fsync covers many of them.
    let group = (config.max_batch_size.max(1) * config.threads.max(1) * 4).clamp(1, 1024);
    let (to_store, stored) = std::sync::mpsc::sync_channel::<(Vec<i64>, Vec<NewRecord>)>(1);
    std::thread::scope(|scope| {
        scope.spawn(move || store_results(name, outbox, work, uploads, stored));
        // Journal rows up to here are in the pipeline or waiting for their
        // commit; they are deleted only by that commit.
        let mut taken_up_to = 0;
        let mut failures = 0u32;
        while !work.stopped() {
            let items = match outbox.journal_items(name, taken_up_to, group) {
                Ok(items) => items,
                Err(e) => {
                    failures += 1;
                    tracing::error!(pipeline = name, "cannot read the journal: {e}");
                    work.sleep(crate::sync::backoff(100, 10_000, failures));
                    continue;
                }
            };
            failures = 0;
            let Some(last) = items.last() else {
                work.wait(Duration::from_millis(500));
                continue;
            };
            taken_up_to = last.seq;
            let raw: Vec<RawItem> = items
                .iter()
                .map(|item| {
                    let mut meta =
                        Metadata::new(result_id(device, name, item.seq), item.content_type.clone());
                    meta.attributes = item.attributes.clone();
                    RawItem {
                        meta,
                        data: item.data.clone(),
                    }
                })
                .collect();
            let outcomes = process_all(pipeline, raw, &|_| {});
            let records: Vec<NewRecord> = items
                .iter()
                .zip(&outcomes)
                .map(|(item, outcome)| result_record(device, item, outcome, provenance))
                .collect();
            if to_store
                .send((items.iter().map(|i| i.seq).collect(), records))
                .is_err()
            {
                break; // the store thread stopped
            }
        }
        // Let the store thread commit what it was given, then end.
        drop(to_store);
    });
}

/// Commit each group of results and retire its inputs, in one transaction.
/// On failure (a full disk) keep the results and retry with backoff; the
/// inputs stay journaled meanwhile.
fn store_results(
    name: &str,
    outbox: &Outbox,
    work: &Signal,
    uploads: &Signal,
    groups: std::sync::mpsc::Receiver<(Vec<i64>, Vec<NewRecord>)>,
) {
    let mut failures = 0u32;
    for (seqs, records) in groups {
        loop {
            match outbox.complete(&seqs, &records) {
                Ok(_) => {
                    failures = 0;
                    uploads.wake();
                    break;
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(
                        pipeline = name,
                        "cannot store {} result(s): {e}",
                        records.len()
                    );
                    if work.stopped() {
                        return;
                    }
                    work.sleep(crate::sync::backoff(100, 10_000, failures));
                }
            }
        }
    }
}

/// Poll `folder`: claim, accept, then delete each file.
fn watch_folder(
    folder: &Path,
    pipeline: &str,
    outbox: &Outbox,
    work: &Signal,
    ingest: &crate::config::IngestConfig,
) {
    let claimed = folder.join(CLAIM_DIR);
    let mut failures = 0u32;
    let mut counter = 0u64;
    while !work.stopped() {
        let result = claim_new_files(folder, &claimed, ingest, outbox, &mut counter)
            .and_then(|()| accept_claimed_files(&claimed, pipeline, outbox, work, ingest));
        match result {
            Ok(()) => {
                failures = 0;
                work.sleep(Duration::from_millis(ingest.poll_ms));
            }
            Err(e) => {
                failures += 1;
                tracing::error!(folder = %folder.display(), "folder ingest: {e:#}");
                work.sleep(crate::sync::backoff(ingest.poll_ms, 30_000, failures));
            }
        }
    }
}

/// Move complete files (not dot files) into the claim folder under unique names.
fn claim_new_files(
    folder: &Path,
    claimed: &Path,
    ingest: &crate::config::IngestConfig,
    outbox: &Outbox,
    counter: &mut u64,
) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("cannot list {}", folder.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if outbox.journal_bytes() >= ingest.max_pending_bytes {
            break; // Back-pressure: the files wait in the folder.
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        *counter += 1;
        // Unique and sortable: time, then a counter within this run.
        let claim = format!("{:020}-{:06}-{name}", now_ms(), *counter % 1_000_000);
        std::fs::rename(&path, claimed.join(&claim))
            .with_context(|| format!("cannot claim {}", path.display()))?;
    }
    Ok(())
}

/// Claimed files accepted per transaction: one fsync for the group.
const ACCEPT_GROUP_FILES: usize = 256;
const ACCEPT_GROUP_BYTES: usize = 16 << 20;

/// Accept every claimed file into the journal, then delete it. Files are
/// accepted in groups, each group in one transaction, so a folder of many
/// small files costs a few fsyncs rather than several per file.
fn accept_claimed_files(
    claimed: &Path,
    pipeline: &str,
    outbox: &Outbox,
    work: &Signal,
    ingest: &crate::config::IngestConfig,
) -> anyhow::Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(claimed)
        .with_context(|| format!("cannot list {}", claimed.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut names = names.into_iter().peekable();
    while names.peek().is_some() {
        // The next group: claims to accept now, and claims already accepted
        // (by a run that crashed before deleting the file), to delete only.
        let (mut group, mut done, mut bytes) = (Vec::new(), Vec::new(), 0);
        while group.len() < ACCEPT_GROUP_FILES && bytes < ACCEPT_GROUP_BYTES {
            let Some(claim) = names.next() else { break };
            if outbox.is_claimed(&claim)? {
                done.push(claim);
                continue;
            }
            let path = claimed.join(&claim);
            let original = claim.splitn(3, '-').nth(2).unwrap_or(&claim).to_owned();
            let data =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            if data.len() > ingest.max_input_bytes {
                tracing::error!(
                    file = original,
                    bytes = data.len(),
                    max = ingest.max_input_bytes,
                    "input too large; deleted"
                );
                std::fs::remove_file(&path)?;
                continue;
            }
            bytes += data.len();
            let input = NewInput {
                pipeline: pipeline.to_owned(),
                content_type: crate::ingest::content_type_of(Path::new(&original)).to_owned(),
                attributes: vec![("file".into(), original)],
                data,
            };
            group.push((claim, input));
        }
        if !group.is_empty() {
            let inputs: Vec<(&NewInput, Option<&str>)> = group
                .iter()
                .map(|(claim, input)| (input, Some(claim.as_str())))
                .collect();
            outbox.accept_many(&inputs)?;
            work.wake();
        }
        done.extend(group.into_iter().map(|(claim, _)| claim));
        for claim in &done {
            let path = claimed.join(claim);
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot delete {}", path.display()))?;
        }
        // The deletions must be on disk before the claims are forgotten, or
        // a power cut could bring a file back unclaimed.
        std::fs::File::open(claimed).and_then(|d| d.sync_all()).ok();
        outbox.forget_claims(&done)?;
    }
    Ok(())
}

struct IngestState {
    device: String,
    outbox: Arc<Outbox>,
    work: Arc<Signal>,
    pipelines: Vec<String>,
    max_input_bytes: usize,
    max_pending_bytes: u64,
}

fn serve_ingest(
    listen: &str,
    config: &Config,
    runtime: &Runtime,
    outbox: &Arc<Outbox>,
    work: &Arc<Signal>,
) -> anyhow::Result<(
    SocketAddr,
    tokio::runtime::Runtime,
    tokio::sync::oneshot::Sender<()>,
)> {
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("ingest.listen: cannot listen on {listen}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let state = Arc::new(IngestState {
        device: config.device.id.clone(),
        outbox: outbox.clone(),
        work: work.clone(),
        pipelines: runtime.pipelines.keys().cloned().collect(),
        max_input_bytes: config.ingest.max_input_bytes,
        max_pending_bytes: config.ingest.max_pending_bytes,
    });
    let app = axum::Router::new()
        .route("/v1/health", axum::routing::get(|| async { "ok" }))
        .route("/v1/status", axum::routing::get(get_status))
        .route("/v1/ingest/{pipeline}", axum::routing::post(post_ingest))
        .layer(DefaultBodyLimit::max(config.ingest.max_input_bytes))
        .with_state(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sluice-ingest")
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener)
            .expect("listener from a bound std listener");
        let served = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(e) = served.await {
            tracing::error!("ingest endpoint stopped: {e}");
        }
    });
    Ok((addr, rt, stop))
}

fn json_error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

async fn post_ingest(
    State(state): State<Arc<IngestState>>,
    UrlPath(pipeline): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !state.pipelines.contains(&pipeline) {
        return json_error(
            StatusCode::NOT_FOUND,
            format!(
                "no running pipeline `{pipeline}` (running: {:?})",
                state.pipelines
            ),
        );
    }
    if body.len() > state.max_input_bytes {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "input of {} bytes exceeds ingest.max_input_bytes ({})",
                body.len(),
                state.max_input_bytes
            ),
        );
    }
    if state.outbox.journal_bytes() + body.len() as u64 > state.max_pending_bytes {
        let mut response = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} bytes of inputs are waiting (ingest.max_pending_bytes); retry later",
                state.outbox.journal_bytes()
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, "1".parse().unwrap());
        return response;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let input = NewInput {
        pipeline: pipeline.clone(),
        content_type,
        attributes: Vec::new(),
        data: body.to_vec(),
    };
    let outbox = state.outbox.clone();
    // The commit fsyncs: off the async workers.
    let accepted = tokio::task::spawn_blocking(move || outbox.accept(&input)).await;
    match accepted {
        Ok(Ok(seq)) => {
            state.work.wake();
            let id = result_id(&state.device, &pipeline, seq);
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({ "id": id, "seq": seq })),
            )
                .into_response()
        }
        Ok(Err(e @ OutboxError::DiskFull { .. })) => {
            let mut response = json_error(StatusCode::INSUFFICIENT_STORAGE, e.to_string());
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, "5".parse().unwrap());
            response
        }
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("ingest task failed: {e}"),
        ),
    }
}

async fn get_status(State(state): State<Arc<IngestState>>) -> Response {
    let outbox = state.outbox.clone();
    match tokio::task::spawn_blocking(move || outbox.status()).await {
        Ok(Ok(status)) => axum::Json(status).into_response(),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `sluice outbox status --config FILE`: read-only, safe while the agent runs.
pub fn outbox_status(config_path: &Path, json: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let path = config.device.data_dir.join(crate::outbox::FILE_NAME);
    let outbox = Outbox::open_read_only(&path, config.outbox.clone())?;
    let status = outbox.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", format_status(&status, now_ms()));
    }
    Ok(())
}

/// The status for people.
pub fn format_status(status: &Status, now: i64) -> String {
    let ago = |ms: Option<i64>| match ms {
        Some(t) => format!("{:.1} s ago", (now - t) as f64 / 1000.0),
        None => "never".into(),
    };
    let mut text = format!(
        "outbox:        {}\npending:       {} result(s), {} of {} bytes ({:.1}%)\noldest:        {}\nin flight:     {} batch(es)\njournal:       {} input(s) waiting, {} bytes\nlast sync:     {}\nlast error:    {}\n",
        status.path.display(),
        status.pending_records,
        status.pending_bytes,
        status.max_bytes,
        status.pending_bytes as f64 * 100.0 / status.max_bytes.max(1) as f64,
        match status.oldest_created_at_ms {
            Some(t) => ago(Some(t)),
            None => "-".into(),
        },
        status.batches_in_flight,
        status.journal_items,
        status.journal_bytes,
        ago(status.last_sync_at_ms),
        match (&status.last_error, status.last_error_at_ms) {
            (Some(e), at) => format!("{e} ({})", ago(at)),
            (None, _) => "none".into(),
        },
    );
    text.push_str("counters:\n");
    for (name, value) in &status.counters {
        text.push_str(&format!("  {name:<20} {value}\n"));
    }
    text
}
