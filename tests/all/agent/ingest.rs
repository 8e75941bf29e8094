//! HTTP ingest: a full model queue holds inputs back; a token is checked
//! before anything is read; requests at once and body time are bounded; idle
//! and half-open connections cannot lock ingest out; concurrent large posts
//! stay within the memory bound; a request timeout never starves journaled
//! inputs.

use super::harness::{
    Agent, collector, images, ingest_agent, peak_rss_mib, post_image, stored, wait_until,
    write_config,
};
use crate::common::http;
use std::time::{Duration, Instant};

#[test]
fn a_full_model_queue_holds_inputs_back_and_never_becomes_a_result() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let file = write_config(dir.path(), &collector.url(), Some(&inbox));
    let mut config = sluice_agent::config::Config::load(&file).unwrap();
    config.ingest.listen = None;
    // Four pipeline threads send batches of one into a queue of one: three
    // of four find it full, over and over.
    config.runtime.workers = 4;
    let batching = &mut config.models.get_mut("digits").unwrap().batching;
    batching.max_batch_size = 1;
    batching.queue_capacity = 1;
    batching.max_queue_delay_ms = 0;
    let images = images();
    for (n, image) in images.iter().enumerate() {
        std::fs::write(inbox.join(format!(".{n:02}.png")), image).unwrap();
        std::fs::rename(
            inbox.join(format!(".{n:02}.png")),
            inbox.join(format!("{n:02}.png")),
        )
        .unwrap();
    }
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    let arrived = wait_until(Duration::from_secs(60), || {
        stored(&collector).len() == images.len()
    });
    agent.shutdown();
    assert!(
        arrived,
        "only {} of {} arrived",
        stored(&collector).len(),
        images.len()
    );
    let failed: Vec<String> = stored(&collector)
        .values()
        .filter_map(|doc| doc.get("error").map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "back-pressure stored as results: {failed:?}"
    );
}

#[test]
fn ingest_with_a_token_refuses_everyone_without_it_before_reading_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, url) = ingest_agent(dir.path(), |ingest| {
        ingest.token = Some("ingest-secret".into());
    });
    let image = images()[0].clone();
    let post = |auth: Option<&str>| {
        let mut request = reqwest::Client::new()
            .post(format!("{url}/v1/ingest/digits"))
            .header("Content-Type", "image/png")
            .body(image.clone());
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        http(request).0
    };
    assert_eq!(post(None), 401);
    assert_eq!(post(Some("Bearer wrong")), 401);
    assert_eq!(post(Some("Bearer ingest-secret")), 202);
    assert_eq!(
        http(reqwest::Client::new().get(format!("{url}/v1/status"))).0,
        401
    );
    assert_eq!(
        http(reqwest::Client::new().get(format!("{url}/v1/health"))).0,
        200
    );
    // An unauthenticated client announcing a huge body is answered at once.
    let mut stream = std::net::TcpStream::connect(agent.ingest_addr().unwrap()).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "POST /v1/ingest/digits HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000000\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 401");
    agent.shutdown();
}

#[test]
fn ingest_bounds_requests_at_once_and_the_time_a_body_may_take() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (agent, url) = ingest_agent(dir.path(), |ingest| {
        ingest.max_concurrent_requests = 1;
        ingest.body_timeout_ms = 500;
    });
    // A client that announces a body and sends half of it holds the only slot.
    let mut slow = std::net::TcpStream::connect(agent.ingest_addr().unwrap()).unwrap();
    write!(
        slow,
        "POST /v1/ingest/digits HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    )
    .unwrap();
    slow.write_all(&[0u8; 500]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (status, body) = post_image(&url, &images()[0]);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("ingest.max_concurrent_requests"));
    // The slow body times out, and its slot frees.
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = [0u8; 12];
    slow.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 408");
    let (status, _) = post_image(&url, &images()[0]);
    assert_eq!(status, 202);
    agent.shutdown();
}

#[test]
fn idle_and_half_open_connections_cannot_lock_ingest_out() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (agent, url) = ingest_agent(dir.path(), |ingest| {
        ingest.max_connections = 4;
        ingest.header_timeout_ms = 300;
    });
    // Twice the connection limit, each stuck in the middle of its headers.
    let stuck: Vec<std::net::TcpStream> = (0..8)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(agent.ingest_addr().unwrap()).unwrap();
            let _ = write!(s, "POST /v1/ingest/digits HTTP/1.1\r\nHost: x\r\n");
            s
        })
        .collect();
    let started = Instant::now();
    let (status, _) = post_image(&url, &images()[0]);
    assert_eq!(status, 202);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(stuck);
    agent.shutdown();
}

#[test]
fn forty_concurrent_large_posts_stay_within_the_ingest_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let agent = Agent::start(&write_config(dir.path(), &collector.url(), None));
    let pid = agent.child.id();
    let before = peak_rss_mib(pid);
    // 40 clients post 15 MB each at once (under the default 16 MiB limit);
    // at most ingest.max_concurrent_requests (4) bodies are read at a time,
    // the others are told to retry.
    let body = vec![0x42u8; 15 << 20];
    let statuses: Vec<u16> = crate::common::tokio().block_on(async {
        let client = reqwest::Client::new();
        let posts = (0..40).map(|_| {
            client
                .post(format!("{}/v1/ingest/digits", agent.url))
                .header("Content-Type", "image/png")
                .body(body.clone())
                .timeout(Duration::from_secs(60))
                .send()
        });
        futures_join_all(posts).await
    });
    let peak = peak_rss_mib(pid);
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    // Refused before its body was read, a client still sending may see the
    // connection close (0) rather than the 503.
    assert!(
        statuses.iter().all(|s| [0, 202, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(accepted >= 1, "{statuses:?}");
    // Bodies: 4 x 16 MiB; the journal write copies one at a time; plus what
    // the agent had before.
    let bound = before + 4.0 * 16.0 * 2.5 + 64.0;
    eprintln!(
        "ingest under 40 x 15 MB: peak RSS {peak:.0} MiB (before {before:.0}, bound {bound:.0}); {accepted} accepted"
    );
    assert!(
        peak < bound,
        "peak RSS {peak:.0} MiB over the bound {bound:.0} MiB"
    );
    assert_eq!(agent.sigterm(), 0);
}

/// Await every post, in order (without a `futures` dependency); the status
/// of each, 0 for a connection closed before the answer.
async fn futures_join_all(
    posts: impl Iterator<
        Item = impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + Send + 'static,
    >,
) -> Vec<u16> {
    let tasks: Vec<_> = posts.map(tokio::spawn).collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(match task.await.unwrap() {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        });
    }
    statuses
}

/// Inputs a previous run left in the journal of `config`'s data dir.
fn journal_digits(config: &sluice_agent::config::Config, n: usize) {
    let outbox =
        sluice_agent::outbox::Outbox::open_in(&config.device.data_dir, config.outbox.clone())
            .unwrap();
    for image in images().into_iter().take(n) {
        outbox
            .accept(&sluice_agent::outbox::NewInput {
                pipeline: "digits".into(),
                content_type: "image/png".into(),
                attributes: Vec::new(),
                data: image,
            })
            .unwrap();
    }
}

#[test]
fn a_request_timeout_within_the_queue_delay_never_starves_journaled_inputs() {
    // The loader refuses this pair, naming both keys; a program building
    // its configuration in code can still run it, and then too every
    // journaled input must be processed, never timed out forever.
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "http://127.0.0.1:9", None);
    let mut config = sluice_agent::config::Config::load(&file).unwrap();
    config.sync = sluice_agent::config::SyncConfig::default();
    config.ingest = sluice_agent::config::IngestConfig::default();
    let batching = &mut config.models.get_mut("digits").unwrap().batching;
    batching.request_timeout_ms = 1;
    batching.max_queue_delay_ms = 2;
    // No sample run at start: what is tested is the journal's inputs.
    config.pipelines.get_mut("digits").unwrap().sample = None;
    journal_digits(&config, 8);
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    let processed = wait_until(Duration::from_secs(30), || {
        agent.outbox().journal_bytes() == 0 && agent.outbox().pending().0 == 8
    });
    let stats = agent
        .runtime()
        .pipeline(Some("digits"))
        .unwrap()
        .scheduler()
        .stats();
    let (journal, pending) = (agent.outbox().journal_bytes(), agent.outbox().pending());
    agent.shutdown();
    assert!(
        processed,
        "journal {journal} bytes, {pending:?} results pending, {} timed out",
        stats.timed_out
    );
    assert_eq!(stats.timed_out, 0);
}
