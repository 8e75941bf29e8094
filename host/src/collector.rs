//! The collector: the upstream HTTP service that receives results from
//! devices and stores them in SQLite (`sluice collect`). Also a library:
//! [`Collector::start`] serves on a bound listener and shuts down gracefully.
//!
//! Endpoints (every one needs `Authorization: Bearer <device token>`; a token
//! belongs to exactly one device):
//!
//! * `POST /v1/batches`: a batch of results. Headers: `Idempotency-Key` (the
//!   batch key), `Content-Encoding: zstd` (or none), `Content-Type:
//!   application/json`. Body: `{"device": ID, "key": KEY, "records": [DOC,
//!   ...]}`, each `DOC` a result document with at least `id`, `device`,
//!   `pipeline` and `seq`, and `id == "<device>/<pipeline>/<seq>"`.
//!   Answers `200 {"stored": N, "duplicates": M, "replayed": bool}` once the
//!   batch is durably stored; `401` without a known token; `403` when the
//!   batch or any record claims another device; `400` for a malformed batch
//!   (naming the problem); `413` past the size limit.
//! * `GET /v1/devices/{id}/count`: `{"device": ID, "count": N}`, results stored.
//! * `GET /v1/devices/{id}/results?after=SEQ&limit=N`: `{"device": ID,
//!   "results": [DOC, ...]}` in `seq` order, `seq > after` (default: all),
//!   at most `limit` (default 100, at most 10 000).
//! * `GET /v1/health`: `ok`, without authentication.
//!
//! Invariants (exactly-once storage):
//! * a batch key is stored with its records in one transaction; a batch
//!   whose key is known is acknowledged again (`replayed: true`) without
//!   storing anything, so a retried upload never stores twice;
//! * results are unique by id (`PRIMARY KEY`), so even a batch re-formed
//!   under a new key stores each result once;
//! * `200` is answered only after the commit, with `synchronous=FULL`, so an
//!   acknowledged batch survives a crash of the collector.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Largest request body accepted (compressed).
const MAX_BODY_BYTES: usize = 64 << 20;
/// Largest batch after decompression: a guard against compression bombs.
const MAX_DECOMPRESSED_BYTES: u64 = 256 << 20;

/// Bearer tokens and the device each belongs to.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_token: HashMap<String, String>,
}

impl Tokens {
    /// Add `device`'s token.
    pub fn insert(&mut self, device: &str, token: &str) {
        self.by_token.insert(token.to_owned(), device.to_owned());
    }

    /// Parse `DEVICE=TOKEN` (as given to `--token`).
    pub fn parse_pair(pair: &str) -> Result<(String, String), String> {
        let (device, token) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}`: expected DEVICE=TOKEN"))?;
        let (device, token) = (device.trim(), token.trim());
        if device.is_empty() || token.is_empty() {
            return Err(format!("`{pair}`: device and token must not be empty"));
        }
        Ok((device.to_owned(), token.to_owned()))
    }

    /// Read a tokens file: one `DEVICE=TOKEN` per line, `#` comments.
    pub fn from_file(path: &Path) -> anyhow::Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read tokens file {}: {e}", path.display()))?;
        let mut tokens = Tokens::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (device, token) = Tokens::parse_pair(line)
                .map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), n + 1))?;
            tokens.insert(&device, &token);
        }
        Ok(tokens)
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    fn device_of(&self, headers: &HeaderMap) -> Option<&str> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let token = value.strip_prefix("Bearer ")?.trim();
        self.by_token.get(token).map(String::as_str)
    }
}

struct Shared {
    db: Mutex<Connection>,
    tokens: Tokens,
}

/// A running collector.
pub struct Collector {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    /// Serve on `listener` (already bound) with its own runtime thread,
    /// storing into `db` (created if missing).
    pub fn start(
        listener: std::net::TcpListener,
        db: &Path,
        tokens: Tokens,
    ) -> anyhow::Result<Collector> {
        let app = app(open_db(db)?, tokens);
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("collector".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("listener from a bound std listener");
                    let served = axum::serve(listener, app).with_graceful_shutdown(async {
                        let _ = rx.await;
                    });
                    if let Err(e) = served.await {
                        tracing::error!("collector stopped: {e}");
                    }
                });
                // Do not wait for connections that a client left hanging.
                runtime.shutdown_timeout(std::time::Duration::from_millis(100));
            })?;
        Ok(Collector {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the base URL devices sync to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting, finish requests in flight, and return.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `sluice collect`: serve until Ctrl-C or SIGTERM.
pub fn serve(listen: &str, db: &Path, tokens: Tokens) -> anyhow::Result<()> {
    if tokens.is_empty() {
        anyhow::bail!("no device tokens: give --tokens FILE or --token DEVICE=TOKEN");
    }
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let collector = Collector::start(listener, db, tokens)?;
    println!(
        "sluice collect: listening on {}, storing into {}",
        collector.url(),
        db.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(shutdown_signal());
    collector.shutdown();
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn open_db(path: &Path) -> anyhow::Result<Connection> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let conn = Connection::open(path)
        .map_err(|e| anyhow::anyhow!("collector database {}: {e}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS results(
             id TEXT PRIMARY KEY,
             device TEXT NOT NULL,
             pipeline TEXT NOT NULL,
             seq INTEGER NOT NULL,
             batch_key TEXT NOT NULL,
             received_at_ms INTEGER NOT NULL,
             body BLOB NOT NULL
         );
         CREATE INDEX IF NOT EXISTS results_device_seq ON results(device, seq);
         CREATE TABLE IF NOT EXISTS batches(
             device TEXT NOT NULL,
             key TEXT NOT NULL,
             received_at_ms INTEGER NOT NULL,
             stored INTEGER NOT NULL,
             duplicates INTEGER NOT NULL,
             PRIMARY KEY(device, key)
         );",
    )
    .map_err(|e| anyhow::anyhow!("collector database {}: {e}", path.display()))?;
    Ok(conn)
}

fn app(db: Connection, tokens: Tokens) -> Router {
    let shared = Arc::new(Shared {
        db: Mutex::new(db),
        tokens,
    });
    Router::new()
        .route("/v1/health", get(|| async { "ok" }))
        .route("/v1/batches", post(post_batch))
        .route("/v1/devices/{id}/count", get(get_count))
        .route("/v1/devices/{id}/results", get(get_results))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct BatchBody {
    device: String,
    key: String,
    records: Vec<serde_json::Value>,
}

struct Row {
    id: String,
    pipeline: String,
    seq: i64,
    body: String,
}

/// Check a record's identity fields and that it belongs to `device`.
fn check_record(device: &str, record: &serde_json::Value, ix: usize) -> Result<Row, Response> {
    let field = |name: &str| record.get(name);
    let (Some(id), Some(rec_device), Some(pipeline), Some(seq)) = (
        field("id").and_then(|v| v.as_str()),
        field("device").and_then(|v| v.as_str()),
        field("pipeline").and_then(|v| v.as_str()),
        field("seq").and_then(|v| v.as_i64()),
    ) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("record {ix}: needs string `id`, `device`, `pipeline` and integer `seq`"),
        ));
    };
    if rec_device != device || !id.starts_with(&format!("{device}/")) {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!(
                "record {ix} (`{id}`) belongs to device `{rec_device}`; this token is device `{device}`'s"
            ),
        ));
    }
    if id != format!("{device}/{pipeline}/{seq}") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("record {ix}: id `{id}` is not `{device}/{pipeline}/{seq}`"),
        ));
    }
    Ok(Row {
        id: id.to_owned(),
        pipeline: pipeline.to_owned(),
        seq,
        body: record.to_string(),
    })
}

async fn post_batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(device) = shared.tokens.device_of(&headers).map(str::to_owned) else {
        return error(StatusCode::UNAUTHORIZED, "missing or unknown bearer token");
    };
    let shared = shared.clone();
    // Decompression, parsing and the fsync of the commit block: keep them
    // off the async workers.
    tokio::task::spawn_blocking(move || store_batch(&shared, &device, &headers, &body))
        .await
        .unwrap_or_else(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("batch handler failed: {e}"),
            )
        })
}

fn store_batch(shared: &Shared, device: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity");
    let json = match encoding {
        "zstd" => {
            let mut out = Vec::new();
            let decoder = match zstd::Decoder::new(body) {
                Ok(d) => d,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("zstd body: {e}")),
            };
            if let Err(e) = decoder
                .take(MAX_DECOMPRESSED_BYTES + 1)
                .read_to_end(&mut out)
            {
                return error(StatusCode::BAD_REQUEST, format!("zstd body: {e}"));
            }
            if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("batch exceeds {MAX_DECOMPRESSED_BYTES} bytes decompressed"),
                );
            }
            out
        }
        "identity" => body.to_vec(),
        other => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding `{other}` is not supported (zstd or none)"),
            );
        }
    };
    let batch: BatchBody = match serde_json::from_slice(&json) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("batch is not valid JSON of the expected shape: {e}"),
            );
        }
    };
    if batch.device != device {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "batch claims device `{}`; this token is device `{device}`'s",
                batch.device
            ),
        );
    }
    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok())
        && key != batch.key
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "Idempotency-Key `{key}` differs from the body's key `{}`",
                batch.key
            ),
        );
    }
    if batch.key.is_empty() || batch.key.len() > 200 {
        return error(
            StatusCode::BAD_REQUEST,
            "batch key must have 1 to 200 characters",
        );
    }
    let rows = match batch
        .records
        .iter()
        .enumerate()
        .map(|(ix, r)| check_record(device, r, ix))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(rows) => rows,
        Err(response) => return response,
    };
    let mut db = shared.db.lock().unwrap_or_else(|p| p.into_inner());
    let stored = (|| -> rusqlite::Result<serde_json::Value> {
        let tx = db.transaction()?;
        let known: Option<(i64, i64)> = tx
            .query_row(
                "SELECT stored, duplicates FROM batches WHERE device = ?1 AND key = ?2",
                [device, &batch.key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((stored, duplicates)) = known {
            return Ok(
                serde_json::json!({ "stored": stored, "duplicates": duplicates, "replayed": true }),
            );
        }
        let now = crate::outbox::now_ms();
        let (mut stored, mut duplicates) = (0i64, 0i64);
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO results(id, device, pipeline, seq, batch_key, received_at_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(id) DO NOTHING",
            )?;
            for row in &rows {
                if insert.execute(params![
                    row.id,
                    device,
                    row.pipeline,
                    row.seq,
                    batch.key,
                    now,
                    row.body
                ])? == 1
                {
                    stored += 1;
                } else {
                    duplicates += 1;
                }
            }
        }
        tx.execute(
            "INSERT INTO batches(device, key, received_at_ms, stored, duplicates) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![device, batch.key, now, stored, duplicates],
        )?;
        tx.commit()?;
        Ok(serde_json::json!({ "stored": stored, "duplicates": duplicates, "replayed": false }))
    })();
    match stored {
        Ok(answer) => (StatusCode::OK, axum::Json(answer)).into_response(),
        Err(e) => {
            tracing::error!(device, "cannot store batch: {e}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot store the batch: {e}"),
            )
        }
    }
}

/// The device named in the path, if the token is that device's.
fn authorize(shared: &Shared, headers: &HeaderMap, device: &str) -> Result<(), Response> {
    match shared.tokens.device_of(headers) {
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            "missing or unknown bearer token",
        )),
        Some(own) if own != device => Err(error(
            StatusCode::FORBIDDEN,
            format!("this token is device `{own}`'s, not `{device}`'s"),
        )),
        Some(_) => Ok(()),
    }
}

async fn get_count(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(device): UrlPath<String>,
) -> Response {
    if let Err(response) = authorize(&shared, &headers, &device) {
        return response;
    }
    let db = shared.db.lock().unwrap_or_else(|p| p.into_inner());
    match db.query_row(
        "SELECT COUNT(*) FROM results WHERE device = ?1",
        [&device],
        |r| r.get::<_, i64>(0),
    ) {
        Ok(count) => {
            axum::Json(serde_json::json!({ "device": device, "count": count })).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct ResultsQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

async fn get_results(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    UrlPath(device): UrlPath<String>,
    Query(query): Query<ResultsQuery>,
) -> Response {
    if let Err(response) = authorize(&shared, &headers, &device) {
        return response;
    }
    let limit = query.limit.unwrap_or(100).clamp(1, 10_000);
    let db = shared.db.lock().unwrap_or_else(|p| p.into_inner());
    let results = (|| -> rusqlite::Result<Vec<serde_json::Value>> {
        let mut select = db.prepare_cached(
            "SELECT body FROM results WHERE device = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = select.query_map(
            params![device, query.after.unwrap_or(i64::MIN), limit],
            |r| r.get::<_, String>(0),
        )?;
        rows.map(|body| {
            body.map(|b: String| serde_json::from_str(&b).unwrap_or(serde_json::Value::String(b)))
        })
        .collect()
    })();
    match results {
        Ok(results) => {
            axum::Json(serde_json::json!({ "device": device, "results": results })).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Where the collector keeps its database by default.
pub fn default_db() -> PathBuf {
    PathBuf::from("collector.sqlite")
}
