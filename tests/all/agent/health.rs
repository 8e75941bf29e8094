//! Health seen from outside: a dead worker takes readiness and its ingest
//! down and loses nothing; Prometheus scrapes the agent and counts every item;
//! readiness says when the outbox cannot be written, and recovers.

use super::harness::{
    Agent, collector, images, ingest, ingest_agent, post_image, stored, wait_until, write_config,
};
use crate::common::http;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[test]
fn a_dead_worker_takes_readiness_and_its_ingest_down_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let config = write_config(dir.path(), &collector.url(), None);
    let agent = Agent::start_with(&config, &[("SLUICE_FAULT_INJECT", "worker-panic:digits")]);
    let ready = || http(reqwest::Client::new().get(format!("{}/readyz", agent.url)));
    assert_eq!(ready().0, 200);
    let id = ingest(&agent.url, &images()[0]).expect("accepted before the worker dies");
    assert!(
        wait_until(Duration::from_secs(10), || ready().0 == 503),
        "readiness did not go down"
    );
    let (_, body) = ready();
    assert!(
        String::from_utf8_lossy(&body).contains("pipeline `digits` is down"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // No more inputs are taken for a pipeline nobody processes.
    let (status, body) = post_image(&agent.url, &images()[1]);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("worker died"));
    agent.sigkill();
    // The accepted input waited in the journal: a healthy restart delivers it.
    let agent = Agent::start(&config);
    assert!(wait_until(Duration::from_secs(30), || stored(&collector)
        .contains_key(&id)));
    assert_eq!(agent.sigterm(), 0);
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus server scraping `target` every 500 ms, in `dir`; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    fn start(dir: &Path, target: std::net::SocketAddr) -> Option<Prometheus> {
        let binary = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let ready = wait_until(Duration::from_secs(30), || {
            get_status(&format!("{}/-/ready", prometheus.url)) == Some(200)
        });
        assert!(ready, "prometheus did not become ready");
        Some(prometheus)
    }

    /// The value of the one series `query` returns, if it returns one.
    fn query(&self, query: &str) -> Option<f64> {
        let (status, body) = http(
            reqwest::Client::new()
                .get(format!("{}/api/v1/query", self.url))
                .query(&[("query", query)]),
        );
        let body: serde_json::Value = serde_json::from_slice(&body).ok()?;
        if status != 200 {
            return None;
        }
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of a GET, or `None` if there was no answer.
fn get_status(url: &str) -> Option<u16> {
    crate::common::tokio().block_on(async {
        let response = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    })
}

#[test]
fn prometheus_scrapes_the_agent_and_counts_every_item() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, url) = ingest_agent(dir.path(), |_| {});
    let Some(prometheus) = Prometheus::start(dir.path(), agent.ingest_addr().unwrap()) else {
        eprintln!(
            "SKIPPED prometheus_scrapes_the_agent_and_counts_every_item: no prometheus binary (Debian package `prometheus`; .ci/run installs it)"
        );
        agent.shutdown();
        return;
    };
    let images = images();
    for image in &images[..20] {
        assert_eq!(post_image(&url, image).0, 202);
    }
    // The agent's own answer names the series, in OpenMetrics text.
    let text =
        String::from_utf8(http(reqwest::Client::new().get(format!("{url}/metrics"))).1).unwrap();
    for series in [
        "sluice_items_total",
        "sluice_stage_seconds_bucket",
        "sluice_batch_size_bucket",
        "sluice_outbox_pending_records",
        "sluice_disk_free_bytes",
        "sluice_plugin_instance_restarts_total",
        "sluice_build_info",
        // Which engine runs the model, and how its batches run.
        r#"sluice_execution_choice{model="digits",engine="tract",chunk="#,
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    // Asked for the Prometheus text format, it answers that, and promtool
    // finds nothing wrong with it.
    let (status, plain) = http(
        reqwest::Client::new()
            .get(format!("{url}/metrics"))
            .header("Accept", "text/plain;version=0.0.4"),
    );
    assert_eq!(status, 200);
    let plain = String::from_utf8(plain).unwrap();
    match sluice_testkit::promtool_check_metrics(&plain) {
        Ok(checked) => checked.unwrap(),
        Err(missing) => eprintln!("\n*** SKIPPED the promtool check: {missing} ***\n"),
    }
    let ok = r#"sum(sluice_items_total{job="sluice",pipeline="digits",outcome="ok"})"#;
    let counted = wait_until(Duration::from_secs(30), || {
        prometheus.query(ok) == Some(20.0)
    });
    let inference = r#"sum(sluice_stage_seconds_count{pipeline="digits",stage="inference"})"#;
    let timed = prometheus.query(inference);
    agent.shutdown();
    assert!(counted, "PromQL {ok} = {:?}, not 20", prometheus.query(ok));
    assert_eq!(timed, Some(20.0), "{inference}");
}

#[test]
fn readiness_says_when_the_outbox_cannot_be_written_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, url) = ingest_agent(dir.path(), |_| {});
    let ready = || {
        let (status, body) = http(reqwest::Client::new().get(format!("{url}/readyz")));
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(ready().0, 200, "{}", ready().1);
    // No room left in the file: inputs are refused with 507 ...
    let pages: u64 = std::fs::metadata(agent.outbox().path()).unwrap().len() / 4096 + 2;
    agent.outbox().limit_file_pages(pages).unwrap();
    let big = vec![0u8; 64 << 10];
    let mut status = 0;
    for _ in 0..20 {
        status = post_image(&url, &big).0;
        if status == 507 {
            break;
        }
    }
    assert_eq!(status, 507);
    // ... and readiness says why.
    let (code, body) = ready();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("the outbox cannot be written"), "{body}");
    // Room again: the next write succeeds and readiness comes back.
    agent.outbox().limit_file_pages(1 << 30).unwrap();
    assert_eq!(post_image(&url, &images()[0]).0, 202);
    assert_eq!(ready().0, 200, "{}", ready().1);
    agent.shutdown();
}

/// An agent whose inputs come only from a folder has its own admin
/// endpoint (`[admin] listen`): health and readiness open, metrics and
/// status behind the admin token, the folder's items counted.
#[test]
fn a_folder_only_agent_serves_metrics_on_its_admin_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, inbox) = super::harness::folder_only(dir.path(), None);
    config.admin.token = Some("adm".into());
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    assert!(agent.ingest_addr().is_none(), "no HTTP ingest");
    let url = format!("http://{}", agent.admin_addr().unwrap());
    for (i, image) in images()[..3].iter().enumerate() {
        std::fs::write(inbox.join(format!("{i}.png")), image).unwrap();
    }
    let get = |path: &str, token: Option<&str>| {
        let mut request = reqwest::Client::new().get(format!("{url}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (status, body) = http(request);
        (status, String::from_utf8(body).unwrap())
    };
    assert_eq!(get("/healthz", None).0, 200);
    assert_eq!(get("/metrics", None).0, 401);
    assert_eq!(get("/metrics", Some("wrong")).0, 401);
    assert_eq!(get("/v1/status", None).0, 401);
    let counted = wait_until(Duration::from_secs(60), || {
        get("/metrics", Some("adm")).1.lines().any(|l| {
            l.starts_with("sluice_items_total{")
                && l.contains(r#"pipeline="digits""#)
                && l.contains(r#"outcome="ok""#)
                && l.ends_with(" 3")
        })
    });
    assert!(counted, "{}", get("/metrics", Some("adm")).1);
    assert_eq!(get("/readyz", None).0, 200);
    let (status, body) = get("/v1/status", Some("adm"));
    assert_eq!(status, 200, "{body}");
    // Nothing to post inputs to: the admin endpoint only reads.
    let (status, _) = http(
        reqwest::Client::new()
            .post(format!("{url}/v1/ingest/digits"))
            .bearer_auth("adm")
            .body(images()[0].clone()),
    );
    assert_eq!(status, 404);
    agent.shutdown();
}
