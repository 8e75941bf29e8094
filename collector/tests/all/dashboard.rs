//! The dashboard at a thousand devices, in headless Chromium: the summary
//! first (states, versions, rollouts in progress, alarms), one page of the
//! worst devices with their error rates, filters and pages that narrow it
//! down, rollout states and recent changes; a device page whose charts
//! follow its data. Prints the page's size and times (BENCHMARKS.md) and
//! saves screenshots to look at.

use crate::common::*;
use crate::fleet::{OPERATOR, get, result, upload, window};
use crate::rollouts::{bundle, report};
use serde_json::json;
use sluice_collector_core::{Limits, Tokens};
use sluice_protocol::{BundleRef, Record};
use std::path::PathBuf;
use std::time::Instant;

const DEVICES: usize = 1000;

fn name(i: usize) -> String {
    format!("gw-{i:04}")
}

/// What device `i` sends: nothing (every tenth never seen), or three
/// results made with bundle `p` v1 or v2, one of them failed on every
/// 50th device, and a drift alarm on every 97th.
fn records(i: usize) -> Vec<Record> {
    let d = name(i);
    let mut out: Vec<Record> = (1..=3)
        .map(|seq| {
            let mut r = result(&d, seq, i % 50 == 0 && seq == 1);
            if let Record::Result(r) = &mut r {
                r.provenance.bundle = Some(BundleRef {
                    name: "p".into(),
                    version: 1 + (i % 3 == 0) as u64,
                });
            }
            r
        })
        .collect();
    out.push(window(&d, 4, i % 97 == 0, "input.mean", "digits"));
    out
}

#[test]
fn a_thousand_devices_on_one_page_with_summary_filters_and_pages_in_chromium() {
    let chromium = sluice_testkit::or_skip!(sluice_testkit::chromium());
    let mut tokens = Tokens::default();
    for i in 0..DEVICES {
        tokens.insert(&name(i), &format!("t-{i}")).unwrap();
    }
    tokens.set_operator(OPERATOR).unwrap();
    let c = Running::start_for(tokens, Limits::default());
    let started = Instant::now();
    for i in (0..DEVICES).filter(|i| i % 10 != 9) {
        upload(
            &c,
            &name(i),
            &format!("t-{i}"),
            &format!("k-{i}"),
            records(i),
            i as u64,
        );
    }
    println!("900 devices' batches uploaded in {:?}", started.elapsed());
    // A group, a rollout to it halted by a rollback, and one running.
    let line: Vec<String> = (0..100).map(name).collect();
    let api = |method: &str, path: &str, body: serde_json::Value| {
        let response = client()
            .request(method.parse().unwrap(), format!("{}{path}", c.url()))
            .bearer_auth(OPERATOR)
            .json(&body)
            .send()
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.text().unwrap()
        );
    };
    api("PUT", "/v1/groups/line-1", json!({"devices": line}));
    for (n, v) in [("p", 3), ("q", 1)] {
        let response = client()
            .post(format!("{}/v1/bundles", c.url()))
            .bearer_auth(OPERATOR)
            .body(std::fs::read(bundle(c.dir.path(), n, v)).unwrap())
            .send()
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    api(
        "POST",
        "/v1/rollouts",
        json!({"name": "p", "version": 3, "group": "line-1", "stages": [10, 100]}),
    );
    report(&c, "gw-0001", "t-1", 100, "p", 3, "rolled-back");
    api(
        "POST",
        "/v1/rollouts",
        json!({"name": "q", "version": 1, "devices": ["gw-0002", "gw-0003"]}),
    );

    // The page as served: its size and the server's time.
    let asked = Instant::now();
    let (status, html) = get(&c, "/dashboard", Some(OPERATOR));
    let served = asked.elapsed();
    assert_eq!(status, 200);
    println!(
        "dashboard at {DEVICES} devices: {} bytes, served in {served:?}",
        html.len()
    );
    assert!(
        html.len() < 200_000,
        "one page, not the fleet: {} bytes",
        html.len()
    );

    // In the browser: summary, one page of 50, the worst first.
    let profile = tempfile::tempdir().unwrap();
    let url = format!("{}/dashboard?token={OPERATOR}", c.url());
    let rendered = Instant::now();
    let dom = sluice_testkit::run_chromium(&chromium, profile.path(), &["--dump-dom"], &url);
    println!(
        "Chromium loaded and rendered it in {:?} (browser start included)",
        rendered.elapsed()
    );
    let rows = dom.matches("class=\"device\"").count();
    assert_eq!(rows, 50, "{dom}");
    let seen = |i: &usize| i % 10 != 9;
    let drifting = (0..DEVICES).filter(seen).filter(|i| i % 97 == 0).count();
    let failing = (0..DEVICES).filter(seen).filter(|i| i % 50 == 0).count();
    for (state, n) in [("ok", 900 - drifting), ("drift", drifting), ("unseen", 100)] {
        assert!(
            dom.contains(&format!("data-state=\"{state}\"><strong>{n}</strong>")),
            "{state} {n}: {dom}"
        );
    }
    assert!(
        dom.contains(&format!(
            "data-state=\"failing\"><strong>{failing}</strong>"
        )),
        "{dom}"
    );
    // Versions: every third seen device runs v2.
    let v2 = (0..DEVICES).filter(seen).filter(|i| i % 3 == 0).count();
    assert!(dom.contains(&format!("data-version=\"p/2\">")), "{dom}");
    assert!(
        dom.contains(&format!("p v2</a>: <strong>{v2}</strong>")),
        "{dom}"
    );
    // The rollout halted in the summary, with its reason; the running one.
    assert!(
        dom.contains("<span class=\"badge r-halted\">halted</span> rollout 1"),
        "{dom}"
    );
    assert!(
        dom.contains("device `gw-0001` rolled-back version 3"),
        "{dom}"
    );
    assert!(
        dom.contains("<span class=\"badge r-running\">running</span> rollout 2"),
        "{dom}"
    );
    // The worst first: drift, then failing devices with their error rate.
    let first = dom.find("class=\"device\"").unwrap();
    assert!(
        dom[first..].starts_with("class=\"device\" data-device=\"gw-0000\" data-state=\"drift\""),
        "{}",
        &dom[first..first + 200]
    );
    assert!(dom.contains("data-error-rate=\"0.3333\">33.3 %"), "{dom}");
    assert!(dom.contains("Showing 1–50 of 1000 device(s)"), "{dom}");
    assert!(dom.contains("of 20</nav>"), "{dom}");
    // Recent changes: who made the rollouts.
    assert!(
        dom.contains("id=\"audit\"") && dom.contains("rollout.create"),
        "{dom}"
    );

    // Filters and pages, as links the browser follows with its cookie.
    let page = |query: &str| {
        sluice_testkit::run_chromium(
            &chromium,
            profile.path(),
            &["--dump-dom"],
            &format!("{}/dashboard?{query}", c.url()),
        )
    };
    let failing_page = page("state=failing");
    assert_eq!(
        failing_page.matches("class=\"device\"").count(),
        failing,
        "{failing_page}"
    );
    assert!(
        failing_page.matches("class=\"device\"").count()
            == failing_page.matches("data-error-rate=\"0.3333\"").count()
    );
    let group = page("group=line-1&page=2");
    assert!(
        group.contains("Showing 51–100 of 100 device(s) matching"),
        "{group}"
    );
    assert!(
        group.contains("<strong data-page=\"2\">2</strong>"),
        "{group}"
    );
    let search = page("q=gw-012");
    assert_eq!(search.matches("class=\"device\"").count(), 10, "{search}");
    let version = page("version=p%2F2&state=ok");
    assert!(
        version.contains("matching") && !version.contains("data-state=\"drift\"><td>"),
        "{version}"
    );

    // A device page: the charts follow its minutes of data.
    let device = sluice_testkit::run_chromium(
        &chromium,
        profile.path(),
        &["--dump-dom"],
        &format!("{}/dashboard/devices/gw-0000", c.url()),
    );
    assert!(
        device.contains("<strong data-window=\"15m\">15m</strong>"),
        "{device}"
    );
    assert!(
        device.contains("Errors in the last hour: 33.3 %. Bundles: p v2."),
        "{device}"
    );

    // Screenshots to look at.
    for (file, path) in [
        ("dashboard-1000.png", "/dashboard"),
        ("dashboard-1000-failing.png", "/dashboard?state=failing"),
        ("dashboard-device.png", "/dashboard/devices/gw-0001"),
    ] {
        let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(file);
        let _ = std::fs::remove_file(&shot);
        sluice_testkit::run_chromium(
            &chromium,
            profile.path(),
            &[
                &format!("--screenshot={}", shot.display()),
                "--window-size=1400,1800",
            ],
            &format!("{}{path}", c.url()),
        );
        let png = std::fs::read(&shot).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 20_000,
            "{}",
            shot.display()
        );
        println!("screenshot: {}", shot.display());
    }
}
