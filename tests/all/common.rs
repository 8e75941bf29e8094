//! Shared helpers for the integration tests: load the real plugins built by
//! `sluice-bundled` into a real host, with one compiled-plugin cache shared
//! by every test (compiling a component with Cranelift takes long; the cache
//! is keyed by the component's digest and the engine's settings, so sharing
//! it cannot change what a test sees).

use sluice_agent::config::{Config, PluginConfig};
use sluice_agent::plugin::{EngineOptions, Plugin, PluginHost, PluginKind};
use sluice_agent::types::{Metadata, RawItem};
use std::path::{Path, PathBuf};

/// The repository root, for models and fixtures.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The compiled-plugin (and execution) cache shared by the tests.
pub fn shared_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

/// Path of a built plugin (product or test fixture).
pub fn plugin_path(name: &str) -> &'static Path {
    sluice_bundled::path(name).unwrap_or_else(|| panic!("no built plugin named {name}"))
}

/// A host with the shared compiled-plugin cache.
pub fn host() -> PluginHost {
    PluginHost::new(&EngineOptions {
        cache_dir: Some(shared_cache_dir()),
        ..EngineOptions::default()
    })
    .expect("plugin host")
}

/// Parse one `[plugins.NAME]` table written as TOML (without the header);
/// `path` is filled in from the built plugin `wasm`.
pub fn plugin_config(wasm: &str, body: &str) -> PluginConfig {
    let text = format!(
        "[plugins.p]\npath = {:?}\n{body}",
        plugin_path(wasm).display().to_string()
    );
    let mut config = Config::parse(&text, Path::new("/")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    config.plugins.remove("p").unwrap()
}

/// Load built plugin `wasm` as `name` with the given table body.
pub fn load(host: &PluginHost, name: &str, wasm: &str, kind: PluginKind, body: &str) -> Plugin {
    host.load(name, &plugin_config(wasm, body), kind)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A raw item whose bytes are `data`.
pub fn item(id: &str, content_type: &str, data: impl Into<Vec<u8>>) -> RawItem {
    RawItem {
        meta: Metadata::new(id, content_type),
        data: data.into(),
    }
}

/// A text item, for the `misbehave` test plugin.
pub fn text(id: &str, data: &str) -> RawItem {
    item(id, "text/plain", data)
}

/// The tests' tokio runtime (for the uplink and HTTP requests).
pub fn tokio() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Send `request` (bounded in time); its status and body.
pub fn http(request: reqwest::RequestBuilder) -> (u16, Vec<u8>) {
    tokio().block_on(async {
        let response = request
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .expect("send the request");
        let status = response.status().as_u16();
        (
            status,
            response.bytes().await.expect("read the answer").to_vec(),
        )
    })
}

/// SHA-256 of `bytes`, hex.
pub fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The paths of the 450 held-out digit images (`models/digits/heldout`),
/// in file order.
pub fn digit_png_paths() -> Vec<PathBuf> {
    let dir = repo_root().join("models/digits/heldout");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 450);
    files
}

/// The 450 held-out digit images, in file order.
pub fn digit_pngs() -> Vec<Vec<u8>> {
    digit_png_paths()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// Run the `sluice` binary with `args`.
pub fn sluice(args: &[&str]) -> std::process::Output {
    std::process::Command::new(sluice_bin())
        .args(args)
        // `plugin inspect` without a configuration caches here, not in ~/.cache.
        .env("SLUICE_CACHE_DIR", shared_cache_dir())
        .output()
        .expect("run sluice")
}

/// A command's standard output, as text.
pub fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command's standard error, as text.
pub fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every record in `agent`'s outbox, in `seq` order.
pub fn outbox_records(agent: &sluice_agent::agent::Agent) -> Vec<serde_json::Value> {
    let conn = rusqlite::Connection::open(agent.outbox().path()).unwrap();
    let mut statement = conn.prepare("SELECT body FROM records").unwrap();
    let mut all: Vec<serde_json::Value> = statement
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|body| serde_json::from_slice(&body.unwrap()).unwrap())
        .collect();
    all.sort_by_key(|r| r["seq"].as_i64().unwrap());
    all
}

/// The 450 held-out digits as PNG items, and their labels.
pub fn digit_items() -> (Vec<RawItem>, Vec<String>) {
    let dir = repo_root().join("models/digits/heldout");
    let labels = std::fs::read_to_string(dir.join("labels.csv")).unwrap();
    labels
        .lines()
        .skip(1)
        .map(|line| {
            let (file, label) = line.split_once(',').unwrap();
            (
                item(file, "image/png", std::fs::read(dir.join(file)).unwrap()),
                label.to_owned(),
            )
        })
        .unzip()
}

/// A tmpfs of `bytes` mounted on a new folder (root only), unmounted on drop.
pub struct SmallDisk {
    /// Where it is mounted.
    pub dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` where mounting is impossible (not root).
    pub fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// Every result the collector at `collector_url` holds for `device`: id ->
/// document, paged by the results cursor as a client does. Fails the test
/// if an id is listed twice.
pub fn device_results(
    collector_url: &str,
    device: &str,
    token: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut all = std::collections::BTreeMap::new();
    let mut query = "limit=1000".to_owned();
    for _ in 0..1000 {
        let (status, body) = http(
            reqwest::Client::new()
                .get(format!(
                    "{collector_url}/v1/devices/{device}/results?{query}"
                ))
                .bearer_auth(token),
        );
        assert_eq!(status, 200);
        let page: sluice_protocol::DeviceResults = serde_json::from_slice(&body).unwrap();
        for doc in page.results {
            assert!(
                all.insert(doc["id"].as_str().unwrap().to_owned(), doc)
                    .is_none(),
                "a result stored twice"
            );
        }
        match page.next {
            Some(next) => query = format!("{}&limit=1000", next.query()),
            None => break,
        }
    }
    all
}

/// A collector on a loopback port storing into `dir/collector.sqlite`, with
/// one device `device` holding `token`.
pub fn collector_for(dir: &Path, device: &str, token: &str) -> sluice_collector_core::Collector {
    sluice_collector_core::Collector::start(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        &dir.join("collector.sqlite"),
        tokens_for(device, token),
    )
    .unwrap()
}

/// A collector's token table of one device `device` holding `token`.
pub fn tokens_for(device: &str, token: &str) -> sluice_collector_core::Tokens {
    let mut tokens = sluice_collector_core::Tokens::default();
    tokens.insert(device, token).unwrap();
    tokens
}

/// The `sluice` binary the tests run (`target/<profile>/sluice`), built
/// first with the features of this test build (see
/// [`sluice_testkit::cargo_bin`]).
pub fn sluice_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let features: &[&str] = if cfg!(feature = "onnxruntime") {
            &["onnxruntime"]
        } else {
            &[]
        };
        sluice_testkit::cargo_bin("sluice", "sluice", features)
            .to_str()
            .expect("a UTF-8 target path")
            .to_owned()
    })
}

/// A device's outbox in `folder` holding `n` results of `device`
/// (`DEVICE/p/0`, `DEVICE/p/1`...), ready to sync.
pub fn outbox_of(
    folder: &Path,
    device: &str,
    n: u64,
) -> std::sync::Arc<sluice_agent::outbox::Outbox> {
    use sluice_agent::outbox::{NewRecord, Outbox};
    let outbox = Outbox::open_in(folder, Default::default()).unwrap();
    let records = (0..n)
        .map(|seq| {
            let id = format!("{device}/p/{seq}");
            let body =
                serde_json::json!({ "id": id, "device": device, "pipeline": "p", "seq": seq });
            NewRecord {
                id,
                body: body.to_string().into_bytes(),
            }
        })
        .collect();
    outbox.append(records).unwrap();
    std::sync::Arc::new(outbox)
}
