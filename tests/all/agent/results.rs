//! Results read from the device itself (`GET /v1/results` on the admin
//! endpoint): a folder-only agent that syncs to a real collector gives its
//! own consumers every result in completion order, page by page, whether
//! or not it was synced upstream, and says when a reader fell behind what
//! it keeps.

use super::harness::{collector, folder_only, images, stored, wait_until};
use crate::common::http;
use std::time::Duration;

/// Every result kept after `after`, page by page of `limit`: the records'
/// ids and whether a page said some were missed.
fn read_all(url: &str, token: &str, limit: u32) -> (Vec<String>, bool) {
    let (mut after, mut ids, mut missed) = (0i64, Vec::new(), false);
    loop {
        let (status, body) = http(
            reqwest::Client::new()
                .get(format!("{url}/v1/results?after={after}&limit={limit}"))
                .bearer_auth(token),
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        missed |= page["missed"].as_bool().unwrap();
        let results = page["results"].as_array().unwrap();
        if results.is_empty() {
            return (ids, missed);
        }
        for r in results {
            assert!(r["pos"].as_i64().unwrap() > after, "positions only grow");
            after = r["pos"].as_i64().unwrap();
            ids.push(r["record"]["id"].as_str().unwrap().to_owned());
        }
        assert_eq!(page["next"].as_i64().unwrap(), after);
    }
}

#[test]
fn a_device_gives_its_own_consumers_every_result_synced_or_not_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let collector = collector(dir.path());
    let (mut config, inbox) = folder_only(dir.path(), Some(&collector.url()));
    config.admin.token = Some("adm".into());
    config.outbox.local_max_bytes = 16 << 20;
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    let url = format!("http://{}", agent.admin_addr().unwrap());
    for (i, image) in images()[..7].iter().enumerate() {
        std::fs::write(inbox.join(format!("{i}.png")), image).unwrap();
    }
    // Synced upstream (acknowledged, gone from the upload queue) ...
    assert!(wait_until(Duration::from_secs(60), || stored(&collector)
        .len()
        == 7));
    assert!(wait_until(Duration::from_secs(10), || agent
        .outbox()
        .pending()
        .0
        == 0));
    // ... and still read locally, all of them, once, in pages of 3.
    let (ids, missed) = read_all(&url, "adm", 3);
    assert!(!missed);
    let upstream: Vec<String> = stored(&collector).into_keys().collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, upstream);
    // The token guards it like metrics and status.
    let (status, _) = http(reqwest::Client::new().get(format!("{url}/v1/results")));
    assert_eq!(status, 401);
    agent.shutdown();
}

#[test]
fn with_local_keeping_off_the_endpoint_says_which_key_turns_it_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) = folder_only(dir.path(), None);
    config.outbox.local_max_bytes = 0;
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    let url = format!("http://{}", agent.admin_addr().unwrap());
    let (status, body) = http(reqwest::Client::new().get(format!("{url}/v1/results")));
    assert_eq!(status, 409);
    assert!(String::from_utf8_lossy(&body).contains("outbox.local_max_bytes"));
    agent.shutdown();
}

#[test]
fn a_reader_behind_what_the_device_keeps_is_told_it_missed_results() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, inbox) = folder_only(dir.path(), None);
    // Room for about two results of the digits pipeline.
    config.outbox.local_max_bytes = 2500;
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    let url = format!("http://{}", agent.admin_addr().unwrap());
    for (i, image) in images()[..6].iter().enumerate() {
        std::fs::write(inbox.join(format!("{i}.png")), image).unwrap();
    }
    assert!(wait_until(Duration::from_secs(60), || agent
        .outbox()
        .pending()
        .0
        == 6));
    let (ids, missed) = read_all(&url, "", 100);
    assert!(missed, "the oldest went before they were read");
    assert!(!ids.is_empty() && ids.len() < 6, "{ids:?}");
    agent.shutdown();
}
