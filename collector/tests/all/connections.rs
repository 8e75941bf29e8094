//! Slow and idle clients are cut off in time, and cannot lock devices out.

use crate::common::*;
use sluice_collector_core::Limits;
use std::time::{Duration, Instant};

const PARTIAL_HEADER: &[u8] = b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bear";

#[test]
fn slowloris_connections_past_the_limit_are_closed_and_uploads_go_through() {
    let limits = Limits {
        max_connections: 4,
        header_read_timeout: Duration::from_millis(600),
        ..Limits::default()
    };
    let c = Running::start(limits);
    let started = Instant::now();
    // Twice the connection limit, each stuck in the middle of its headers.
    let mut stuck: Vec<_> = (0..8).map(|_| raw(&c.url(), PARTIAL_HEADER)).collect();
    // A device's upload gets its turn once the stuck ones time out.
    let answer = post(&c.url(), "ta", &batch("a", "k", vec![record("a", 1, "x")]));
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    for (n, stream) in stuck.iter_mut().enumerate() {
        let (seen, closed) = read_until_closed(stream, Duration::from_secs(4));
        assert!(
            closed,
            "connection {n} still open after {:?}",
            started.elapsed()
        );
        assert!(!seen.contains("200"), "{seen:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(c.results("a", "ta").len(), 1);
}

#[test]
fn connections_past_the_limit_wait_for_a_free_slot() {
    let limits = Limits {
        max_connections: 2,
        header_read_timeout: Duration::from_millis(1000),
        ..Limits::default()
    };
    let c = Running::start(limits);
    let _stuck: Vec<_> = (0..2).map(|_| raw(&c.url(), PARTIAL_HEADER)).collect();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let mut health = raw(
        &c.url(),
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let (seen, _) = read_until_closed(&mut health, Duration::from_secs(5));
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen:?}");
    // Served only once a stuck connection timed out.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(600),
        "served after {waited:?}"
    );
}

#[test]
fn an_idle_kept_alive_connection_is_closed() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let c = Running::start(limits);
    let mut stream = raw(&c.url(), b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
    let started = Instant::now();
    let (seen, closed) = read_until_closed(&mut stream, Duration::from_secs(3));
    assert!(
        seen.starts_with("HTTP/1.1 200") && seen.ends_with("ok"),
        "{seen:?}"
    );
    assert!(
        closed,
        "the idle connection is still open after {:?}",
        started.elapsed()
    );
}

#[test]
fn a_body_that_does_not_come_is_answered_408() {
    let limits = Limits {
        body_read_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let c = Running::start(limits);
    let started = Instant::now();
    let mut stream = raw(
        &c.url(),
        b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ta\r\nContent-Length: 1000\r\n\r\n{\"device\"",
    );
    let (seen, _) = read_until_closed(&mut stream, Duration::from_secs(4));
    assert!(seen.starts_with("HTTP/1.1 408"), "{seen:?}");
    assert!(seen.contains("--body-timeout"), "{seen:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The slot it held is free again.
    let answer = post(&c.url(), "ta", &batch("a", "k", vec![record("a", 1, "x")]));
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[test]
fn shutdown_finishes_quickly_with_clients_hanging() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(1),
        ..Limits::default()
    };
    let c = Running::start(limits);
    let _stuck = raw(&c.url(), PARTIAL_HEADER);
    let _idle = raw(&c.url(), b"");
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let Running {
        collector,
        dir: _dir,
    } = c;
    collector.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
