//! The fleet view end to end, as an operator sees it: two real agents sync
//! to one collector, one fed held-out digits as they are, the other the same
//! digits inverted (a camera whose exposure flipped); headless Chromium
//! (Debian's `chromium`) opens the collector's dashboard, which must list
//! both devices and flag the drifted one, and saves a screenshot.

use crate::drift::{accept, example_config, inverted, observe, wait_for, write_profile};
use sluice_agent::agent::Agent;
use sluice_agent::runtime::Runtime;
use sluice_collector_core::{Collector, Tokens};
use sluice_testkit::run_chromium;
use std::path::PathBuf;
use std::time::Duration;

const OPERATOR: &str = "fleet-operator-secret";

/// The collector's fleet view (operator API).
fn fleet(collector: &Collector) -> serde_json::Value {
    let (status, body) = crate::common::http(
        reqwest::Client::new()
            .get(format!("{}/v1/fleet", collector.url()))
            .bearer_auth(OPERATOR),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn the_dashboard_in_a_real_browser_flags_the_agent_fed_a_shifted_stream() {
    let chromium = sluice_testkit::or_skip!(sluice_testkit::chromium());
    let dir = tempfile::tempdir().unwrap();
    let pngs = crate::common::digit_pngs();
    let reference: Vec<Vec<u8>> = pngs.iter().step_by(2).cloned().collect();
    let stream: Vec<Vec<u8>> = pngs.iter().skip(1).step_by(2).take(150).cloned().collect();

    // One profile of the reference half, as `sluice model profile` makes it.
    let mut config = example_config("digits", dir.path());
    let runtime = Runtime::start(config.clone()).unwrap();
    let observed = observe(&runtime, &reference, "image/png");
    write_profile(&mut config, &runtime, &observed, dir.path());
    drop(runtime);

    let devices = [("gw-clean", "token-clean"), ("gw-shifted", "token-shifted")];
    let mut tokens = Tokens::default();
    for (device, token) in devices {
        tokens.insert(device, token).unwrap();
    }
    tokens.set_operator(OPERATOR).unwrap();
    let collector = Collector::start(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        &dir.path().join("collector.sqlite"),
        tokens,
    )
    .unwrap();

    let agents: Vec<Agent> = devices
        .iter()
        .map(|(device, token)| {
            let mut config = config.clone();
            config.device.id = (*device).into();
            config.device.data_dir = dir.path().join(device);
            config.sync.url = Some(collector.url().to_string());
            config.sync.token = Some((*token).into());
            config.sync.interval_ms = 50;
            config.drift.window_items = 75;
            Agent::start(config).unwrap()
        })
        .collect();
    accept(&agents[0], "digits", &stream, "image/png");
    let shifted: Vec<Vec<u8>> = stream.iter().map(|p| inverted(p)).collect();
    accept(&agents[1], "digits", &shifted, "image/png");

    // Both devices delivered all 150 results and their two drift windows.
    let view = wait_for(Duration::from_secs(120), || {
        let view = fleet(&collector);
        let delivered = view["devices"]
            .as_array()?
            .iter()
            .filter(|d| d["records"] == 152)
            .count();
        (delivered == 2).then_some(view)
    })
    .unwrap_or_else(|| panic!("both devices' records upstream: {}", fleet(&collector)));
    for agent in agents {
        agent.shutdown();
    }
    let states: Vec<(&str, &str)> = view["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["device"].as_str().unwrap(), d["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [("gw-clean", "ok"), ("gw-shifted", "drift")],
        "{view}"
    );
    // Each reported the backlog its last batch left: none.
    for device in view["devices"].as_array().unwrap() {
        assert_eq!(device["status"]["pending_records"], 0, "{device}");
    }

    let profile = tempfile::tempdir().unwrap();
    let url = format!("{}/dashboard?token={OPERATOR}", collector.url());
    let dom = run_chromium(&chromium, profile.path(), &["--dump-dom"], &url);
    // The redirect took the token out and the cookie let the page in.
    assert!(dom.contains("<h1>Sluice fleet</h1>"), "{dom}");
    assert!(
        dom.contains("data-device=\"gw-clean\" data-state=\"ok\""),
        "{dom}"
    );
    assert!(
        dom.contains("data-device=\"gw-shifted\" data-state=\"drift\""),
        "{dom}"
    );
    assert!(dom.contains("2 devices."), "{dom}");
    for (state, n) in [("ok", 1), ("stale", 0), ("drift", 1)] {
        assert!(
            dom.contains(&format!("data-state=\"{state}\"><strong>{n}</strong>")),
            "{state}: {dom}"
        );
    }

    // The drifted device's page, through the same cookie (same profile):
    // its alarm and charts.
    let dom = run_chromium(
        &chromium,
        profile.path(),
        &["--dump-dom"],
        &format!("{}/dashboard/devices/gw-shifted", collector.url()),
    );
    assert!(
        dom.contains("data-pipeline=\"digits\" data-alarm=\"true\""),
        "{dom}"
    );
    assert!(
        dom.contains("<svg") && dom.contains("class=\"alarm\""),
        "{dom}"
    );
    assert!(
        dom.contains("input.input["),
        "the drifted features are named: {dom}"
    );

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fleet-dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let screenshot = format!("--screenshot={}", shot.display());
    let fresh = tempfile::tempdir().unwrap();
    run_chromium(
        &chromium,
        fresh.path(),
        &[&screenshot, "--window-size=1280,900"],
        &url,
    );
    let png =
        std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000,
        "{} bytes",
        png.len()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
    collector.shutdown();
}
