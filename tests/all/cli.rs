//! The `sluice` binary as a user runs it.

use crate::common::{sluice, stderr, stdout};
use std::path::Path;
use std::process::Command;

#[test]
fn help_lists_the_commands() {
    let out = sluice(&["--help"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let commands: Vec<&str> = text
        .split("Commands:")
        .nth(1)
        .expect("a Commands section")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for command in ["demo", "infer", "run", "outbox", "plugin", "model"] {
        assert!(
            commands.contains(&command),
            "{command} missing: {commands:?}"
        );
    }
    assert!(
        !commands.contains(&"collect"),
        "the collector is its own program: {commands:?}"
    );
}

#[test]
fn the_demo_delivers_every_result_once_to_its_collector() {
    // Kept across runs like a user's data dir: the compiled plugins and the
    // measured execution are reused, the demo's own state starts empty.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-data");
    let out = sluice(&["demo", "--data-dir", dir.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("processed:   450 results in the outbox"),
        "{text}"
    );
    assert!(
        text.contains("delivered:   450 results acknowledged by the collector"),
        "{text}"
    );
    assert!(
        text.contains("pending:     0 results left in the outbox"),
        "{text}"
    );
    assert!(text.contains("upstream:    450 results stored"), "{text}");
    let accuracy: f64 = text
        .split("accuracy:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(accuracy > 0.97, "{text}");

    // The collector's own database holds each result once, with its provenance.
    let results = std::fs::read_to_string(dir.join("demo/results.jsonl")).unwrap();
    let docs: Vec<serde_json::Value> = results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: std::collections::BTreeSet<&str> =
        docs.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!((docs.len(), ids.len()), (450, 450));
    assert!(
        docs.iter()
            .all(|d| d["provenance"]["model_sha256"].as_str().unwrap().len() == 64)
    );
}

#[test]
fn a_config_with_a_misspelled_key_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "[plugins.pre]\npath = \"bundled:image-preprocess\"\nmemroy_mb = 3\n",
    )
    .unwrap();
    let out = sluice(&["infer", "--config", config.to_str().unwrap(), "x.png"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("memroy_mb"), "{}", stderr(&out));
}

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn infer_prints_one_json_line_per_input_in_order_with_errors_in_place() {
    let dir = tempfile::tempdir().unwrap();
    for (ix, file) in ["0000.png", "0001.png", "0002.png"].iter().enumerate() {
        std::fs::copy(
            repo(&format!("models/digits/heldout/{file}")),
            dir.path().join(format!("{ix}-digit.png")),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("1b-broken.png"), b"not a png").unwrap();
    let out = sluice(&[
        "infer",
        "--config",
        &repo("examples/digits/sluice.toml"),
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let inputs: Vec<&str> = lines
        .iter()
        .map(|l| {
            l["input"]["attributes"]["file"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
        })
        .collect();
    // The same record shape the agent ships upstream.
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "demo-gateway/digits/0",
            "demo-gateway/digits/1",
            "demo-gateway/digits/2",
            "demo-gateway/digits/3"
        ]
    );
    assert!(
        lines
            .iter()
            .all(|l| l["kind"] == "result" && l["provenance"]["model_sha256"].is_string())
    );
    assert_eq!(
        inputs,
        ["0-digit.png", "1-digit.png", "1b-broken.png", "2-digit.png"]
    );
    let labels = std::fs::read_to_string(repo("models/digits/heldout/labels.csv")).unwrap();
    let label_of = |file: &str| {
        labels
            .lines()
            .find(|l| l.starts_with(file))
            .unwrap()
            .split(',')
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert_eq!(lines[0]["result"]["body"]["label"], label_of("0000.png"));
    // Timings say by name that they are the batch's, and how many items it had.
    let timings = &lines[0]["timings"];
    assert!(
        (1..=4).contains(&timings["batch_items"].as_u64().unwrap())
            && timings["batch_preprocess_us"].is_u64()
            && timings["batch_infer_us"].is_u64()
            && timings["preprocess_us"].is_null(),
        "{timings}"
    );
    assert_eq!(lines[2]["error"]["kind"], "invalid-input");
    assert!(
        lines[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("digits-pre"),
        "{}",
        lines[2]
    );
    assert!(
        stderr(&out).contains("1 of 4 input(s) failed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn model_inspect_shows_io_operators_and_the_measured_execution_choice() {
    let out = sluice(&[
        "model",
        "inspect",
        &repo("models/digits/digits_mlp.onnx"),
        "--max-batch-size",
        "8",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "operators:  Gemm, Relu, Softmax",
        "input F32 [N, 64]",
        "probabilities F32 [N, 10]",
        "chunk   1 x 1",
        "engine:     tract",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // Which candidate wins is a measurement; that one is marked is not.
    assert_eq!(text.matches("<- chosen").count(), 1, "{text}");
    let json = sluice(&[
        "model",
        "inspect",
        &repo("models/digits/digits_mlp.onnx"),
        "--max-batch-size",
        "4",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let execution = &report["execution"];
    let measured = execution["measurements"].as_array().unwrap();
    let same = |m: &serde_json::Value| {
        ["chunk", "threads", "intra_op"]
            .iter()
            .all(|k| m[*k] == execution[*k])
    };
    assert!(
        measured.iter().any(same),
        "the choice is one of the measured candidates: {execution}"
    );
    // With more than one core, running one chunk's operators on every core
    // is one of the candidates.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        measured.iter().any(|m| m["intra_op"] == true),
        cores > 1,
        "{execution}"
    );

    let unsupported = sluice(&[
        "model",
        "inspect",
        &repo("models/test/unsupported_scaler.onnx"),
    ]);
    assert!(!unsupported.status.success());
    assert!(stdout(&unsupported).contains("Scaler (UNSUPPORTED)"));
    assert!(
        stderr(&unsupported).contains("tract does not implement: Scaler"),
        "{}",
        stderr(&unsupported)
    );
}

#[test]
fn outbox_commands_show_requeue_and_count_what_the_collector_refused() {
    use sluice_agent::config::OutboxConfig;
    use sluice_agent::outbox::{NewRecord, Outbox, Split};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "[device]\nid = \"gw\"\ndata_dir = \"data\"\n").unwrap();
    {
        let outbox = Outbox::open_in(&dir.path().join("data"), OutboxConfig::default()).unwrap();
        outbox
            .append(vec![NewRecord {
                id: "gw/p/1".into(),
                body: b"{}".to_vec(),
            }])
            .unwrap();
        let batch = outbox.next_batch(10, 1 << 20).unwrap().unwrap();
        let split = outbox
            .split_batch(batch.id, "collector answered 422: record 0 is bad")
            .unwrap();
        assert_eq!(
            split,
            Split::SetAside {
                id: "gw/p/1".into()
            }
        );
    }
    let config = config.to_str().unwrap();
    let status = stdout(&sluice(&["outbox", "status", "--config", config]));
    assert!(
        status.contains("set aside:     1 result(s) refused upstream"),
        "{status}"
    );
    assert!(status.contains("rejected_upstream    1"), "{status}");
    let listed = stdout(&sluice(&["outbox", "set-aside", "--config", config]));
    assert!(
        listed.contains("gw/p/1") && listed.contains("record 0 is bad"),
        "{listed}"
    );
    let requeued = sluice(&["outbox", "requeue", "--config", config]);
    assert!(requeued.status.success(), "{}", stderr(&requeued));
    assert!(
        stdout(&requeued).contains("requeued 1 result(s)"),
        "{}",
        stdout(&requeued)
    );
    let status = stdout(&sluice(&["outbox", "status", "--config", config]));
    assert!(
        status.contains("pending:       1 result(s)") && status.contains("set aside:     0"),
        "{status}"
    );
}

#[test]
fn demo_dashboard_serves_the_fleet_view_until_interrupted() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(crate::common::sluice_bin())
        .args(["demo", "--dashboard", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let url = loop {
        match rx.recv_timeout(std::time::Duration::from_secs(180)) {
            Ok(line) if line.trim_start().starts_with("fleet view:") => {
                break line.split_whitespace().nth(2).unwrap().to_owned();
            }
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("the demo printed no fleet view");
            }
        }
    };
    // As a browser does: the token link sets the session cookie and
    // redirects to the page without the token.
    let (cookie, page) = crate::common::tokio().block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let first = client.get(&url).send().await.unwrap();
        assert_eq!(first.status().as_u16(), 303);
        let cookie = first.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let location = first.headers()["location"].to_str().unwrap().to_owned();
        let base = url.split("/dashboard").next().unwrap();
        let target = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location
        };
        let page = client
            .get(target)
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status().as_u16(), 200);
        (cookie, page.text().await.unwrap())
    });
    assert!(!cookie.is_empty());
    assert!(page.contains("demo-gateway"), "{page}");
    // Ctrl-C stops it cleanly.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not stop on Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_command_piped_into_a_reader_that_quits_stops_quietly() {
    // `sluice plugin list | head -0`: the reader is gone before the first
    // line. A tool stops (SIGPIPE), it does not panic on the failed print.
    let mut child = Command::new(crate::common::sluice_bin())
        .args(["plugin", "list"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}
