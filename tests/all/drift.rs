//! Drift on the device, without labels, on real held-out data: a profile
//! made from one half of the digits and anomaly held-out sets, the other
//! half streamed through the in-process agent, raises no alarm; inverted or
//! blurred digits, scaled tabular records and one offset tabular feature
//! raise one within the window;
//! every window reaches the collector (or the outbox) as a `drift-window`
//! record with the right fields; a profile of another model file is refused
//! and the pipeline runs without drift. The false-alarm rate, measured over
//! many random splits of the held-out data, stays at or below the
//! configured one, and the delay to detect a shift is measured.

use crate::common::{digit_pngs, hex_sha256, http, repo_root, shared_cache_dir};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use sluice_agent::config::Config;
use sluice_agent::drift::{Profile, Scorer, bin_counts, observe_items};
use sluice_agent::outbox::NewInput;
use sluice_agent::runtime::Runtime;
use sluice_agent::types::{RawItem, Tensor};
use sluice_collector_core::{Collector, Tokens};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DEVICE: &str = "dev-drift";
const TOKEN: &str = "drift-secret";

/// `png` with every pixel inverted (dark digits on a light ground).
pub(crate) fn inverted(png: &[u8]) -> Vec<u8> {
    let mut image = image::load_from_memory(png).unwrap().to_luma8();
    image::imageops::invert(&mut image);
    encode(image)
}

/// `png` blurred (a camera out of focus): Gaussian, sigma 1 pixel.
fn blurred(png: &[u8]) -> Vec<u8> {
    let image = image::load_from_memory(png).unwrap().to_luma8();
    encode(image::imageops::blur(&image, 1.0))
}

fn encode(image: image::GrayImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The anomaly held-out records, each a CSV document (header + one row).
fn anomaly_rows() -> (String, Vec<String>) {
    let text = std::fs::read_to_string(repo_root().join("models/anomaly/heldout.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_owned();
    (header, lines.map(str::to_owned).collect())
}

/// `row` with every feature multiplied by `factor` (a sensor recalibrated).
fn scaled(row: &str, factor: f64) -> String {
    row.split(',')
        .map(|field| match field.parse::<f64>() {
            Ok(v) => (v * factor).to_string(),
            Err(_) => field.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `row` with feature `column` moved by `sigmas` of its training standard
/// deviation (`models/anomaly/scaler.json`): one sensor's offset, the
/// others unchanged.
fn offset(row: &str, column: usize, sigmas: f64) -> String {
    let scaler: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("models/anomaly/scaler.json")).unwrap(),
    )
    .unwrap();
    let step = scaler["scale"][column].as_f64().unwrap() * sigmas;
    let mut fields: Vec<String> = row.split(',').map(str::to_owned).collect();
    fields[column] = (fields[column].parse::<f64>().unwrap() + step).to_string();
    fields.join(",")
}

fn csv_item(header: &str, row: &str) -> Vec<u8> {
    format!("{header}\n{row}\n").into_bytes()
}

/// The example's configuration, for an in-process agent: test data dir,
/// shared plugin cache, no folder, no uplink unless given.
pub(crate) fn example_config(example: &str, dir: &Path) -> Config {
    let mut config = Config::load(
        &repo_root()
            .join("examples")
            .join(example)
            .join("sluice.toml"),
    )
    .unwrap();
    config.device.id = DEVICE.into();
    config.device.data_dir = dir.join("data");
    config.runtime.cache_dir = Some(shared_cache_dir());
    config.ingest = sluice_agent::config::IngestConfig::default();
    config.sync = sluice_agent::config::SyncConfig::default();
    config
}

fn raw(items: &[Vec<u8>], content_type: &str) -> Vec<RawItem> {
    items
        .iter()
        .enumerate()
        .map(|(ix, data)| RawItem {
            meta: sluice_agent::types::Metadata::new(format!("ref-{ix}"), content_type),
            data: data.clone(),
        })
        .collect()
}

pub(crate) type Observed = Vec<(Vec<Tensor>, Vec<Tensor>)>;

/// Run `items` through `config`'s only pipeline; what the model saw and said.
pub(crate) fn observe(runtime: &Runtime, items: &[Vec<u8>], content_type: &str) -> Observed {
    let pipeline = runtime.pipeline(None).unwrap();
    let observed = observe_items(pipeline, raw(items, content_type));
    assert_eq!(
        observed.len(),
        items.len(),
        "every reference item got through"
    );
    observed
}

fn pairs(observed: &[(Vec<Tensor>, Vec<Tensor>)]) -> Vec<(&[Tensor], &[Tensor])> {
    observed
        .iter()
        .map(|(i, o)| (i.as_slice(), o.as_slice()))
        .collect()
}

/// Write the profile of `reference` for `config`'s only pipeline beside the
/// test, and point the model at it; its path.
pub(crate) fn write_profile(
    config: &mut Config,
    runtime: &Runtime,
    reference: &Observed,
    dir: &Path,
) -> PathBuf {
    let pipeline = runtime.pipeline(None).unwrap().name().to_owned();
    let model = config.pipelines[&pipeline].model.clone();
    let sha = runtime.model_sha256(&model).unwrap();
    let profile = Profile::build(&model, sha, &pipeline, &pairs(reference)).unwrap();
    let path = dir.join(format!("{model}.profile.json"));
    profile.write(&path).unwrap();
    config.models.get_mut(&model).unwrap().profile = Some(path.clone());
    path
}

pub(crate) fn accept(
    agent: &sluice_agent::agent::Agent,
    pipeline: &str,
    items: &[Vec<u8>],
    content_type: &str,
) {
    let inputs: Vec<NewInput> = items
        .iter()
        .map(|data| NewInput {
            pipeline: pipeline.into(),
            content_type: content_type.into(),
            attributes: Vec::new(),
            data: data.clone(),
        })
        .collect();
    agent.accept(&inputs).unwrap();
}

/// Poll until `done` gives something (bounded).
pub(crate) fn wait_for<T>(timeout: Duration, mut done: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(v) = done() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Every record the collector stored for the test device, in `seq` order.
fn collected(collector: &Collector) -> Vec<serde_json::Value> {
    let (status, body) = http(
        reqwest::Client::new()
            .get(format!(
                "{}/v1/devices/{DEVICE}/results?after=0&limit=10000",
                collector.url()
            ))
            .bearer_auth(TOKEN),
    );
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    body["results"].as_array().unwrap().clone()
}

fn windows_of(records: &[serde_json::Value]) -> Vec<serde_json::Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "drift-window")
        .cloned()
        .collect()
}

/// Drift-window records in the agent's outbox, in `seq` order.
fn outbox_windows(agent: &sluice_agent::agent::Agent) -> Vec<serde_json::Value> {
    windows_of(&crate::common::outbox_records(agent))
}

fn drifted(window: &serde_json::Value) -> Vec<String> {
    window["scores"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["drifted"] == true)
        .map(|s| s["feature"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn digits_drift_windows_stay_quiet_on_held_out_data_and_alarm_on_inverted_and_blurred_images() {
    let dir = tempfile::tempdir().unwrap();
    let pngs = digit_pngs();
    let (reference, stream): (Vec<_>, Vec<_>) = pngs
        .iter()
        .cloned()
        .enumerate()
        .partition(|(ix, _)| ix % 2 == 0);
    let reference: Vec<Vec<u8>> = reference.into_iter().map(|(_, p)| p).collect();
    let stream: Vec<Vec<u8>> = stream.into_iter().map(|(_, p)| p).collect();

    let mut config = example_config("digits", dir.path());
    let runtime = Runtime::start(config.clone()).unwrap();
    let observed = observe(&runtime, &reference, "image/png");
    let profile_path = write_profile(&mut config, &runtime, &observed, dir.path());
    let model_sha = runtime.model_sha256("digits").unwrap().to_owned();
    drop(runtime);

    let mut tokens = Tokens::default();
    tokens.insert(DEVICE, TOKEN).unwrap();
    let collector = Collector::start(
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        &dir.path().join("collector.sqlite"),
        tokens,
    )
    .unwrap();
    config.sync.url = Some(collector.url().to_string());
    config.sync.token = Some(TOKEN.into());
    config.sync.interval_ms = 50;
    config.ingest.listen = Some("127.0.0.1:0".into());
    config.drift.window_items = 75;
    let agent = sluice_agent::agent::Agent::start(config).unwrap();

    // The other half, as it is: three windows of 75, no alarm.
    accept(&agent, "digits", &stream, "image/png");
    let clean = wait_for(Duration::from_secs(60), || {
        let records = collected(&collector);
        (windows_of(&records).len() >= 3 && records.len() >= 225 + 3).then_some(records)
    })
    .expect("three drift windows and every result reach the collector");
    let windows = windows_of(&clean);
    let last_result_seq = clean
        .iter()
        .filter(|r| r["kind"] != "drift-window")
        .map(|r| r["seq"].as_i64().unwrap())
        .max()
        .unwrap();
    for w in &windows {
        assert_eq!(w["items"], 75, "{w}");
        assert_eq!(
            w["alarm"],
            false,
            "a false alarm on held-out data: {:?}",
            drifted(w)
        );
        assert_eq!(w["device"], DEVICE);
        assert_eq!(w["pipeline"], "digits");
        assert_eq!(w["model"], "digits");
        assert_eq!(w["model_sha256"], model_sha.as_str());
        assert_eq!(
            w["profile_sha256"],
            hex_sha256(&std::fs::read(&profile_path).unwrap()).as_str()
        );
        assert_eq!(w["false_alarm_rate"], 0.01);
        let outbox = w["outbox"].as_str().unwrap();
        let seq = w["seq"].as_i64().unwrap();
        assert_eq!(w["id"], format!("{DEVICE}/digits/{outbox}-{seq}").as_str());
        assert!(w["ended_at_ms"].as_i64() >= w["started_at_ms"].as_i64());
        let scores = w["scores"].as_array().unwrap();
        // 60 of 66 features vary in the reference (6 corner pixels are
        // always 0): 58 pixels and the confidence by PSI and KS, the class
        // by JS.
        assert!(scores.len() > 50, "{}", scores.len());
        assert!(
            scores
                .iter()
                .any(|s| s["statistic"] == "js" && s["feature"] == "output.probabilities.class")
        );
        for s in scores {
            assert!(s["threshold"].as_f64().unwrap() > 0.0, "{s}");
        }
    }
    // Window ids come from the results' sequence: the last window was
    // numbered after every input it covers was accepted.
    assert!(windows[2]["seq"].as_i64().unwrap() > last_result_seq);

    // Inverted, then blurred images: each window of 75 raises the alarm.
    let inverted: Vec<Vec<u8>> = stream.iter().take(75).map(|p| inverted(p)).collect();
    accept(&agent, "digits", &inverted, "image/png");
    let w = wait_for(Duration::from_secs(60), || {
        windows_of(&collected(&collector)).get(3).cloned()
    })
    .expect("a fourth drift window");
    assert_eq!(w["alarm"], true, "inverted digits went unnoticed: {w}");
    let inverted_features = drifted(&w);
    assert!(
        inverted_features.iter().any(|f| f.starts_with("input.")),
        "{inverted_features:?}"
    );

    let blurred: Vec<Vec<u8>> = stream
        .iter()
        .skip(75)
        .take(75)
        .map(|p| blurred(p))
        .collect();
    accept(&agent, "digits", &blurred, "image/png");
    let w = wait_for(Duration::from_secs(60), || {
        windows_of(&collected(&collector)).get(4).cloned()
    })
    .expect("a fifth drift window");
    assert_eq!(w["alarm"], true, "blurred digits went unnoticed: {w}");
    eprintln!(
        "inverted: {} drifted scores ({:?}...); blurred: {} ({:?}...)",
        inverted_features.len(),
        &inverted_features[..inverted_features.len().min(4)],
        drifted(&w).len(),
        &drifted(&w)[..drifted(&w).len().min(4)],
    );

    // Metrics: two alarms, three quiet windows, a score per feature.
    let (status, body) = http(
        reqwest::Client::new().get(format!("http://{}/metrics", agent.ingest_addr().unwrap())),
    );
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("sluice_drift_windows_total{pipeline=\"digits\",alarm=\"true\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("sluice_drift_windows_total{pipeline=\"digits\",alarm=\"false\"} 3"),
        "{text}"
    );
    assert!(text.contains("sluice_drift_score{pipeline=\"digits\",feature=\"output.probabilities.class\",statistic=\"js\"}"));
    agent.shutdown();
}

#[test]
fn anomaly_drift_windows_stay_quiet_on_held_out_records_and_alarm_on_scaled_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (header, rows) = anomaly_rows();
    let reference: Vec<Vec<u8>> = rows
        .iter()
        .step_by(2)
        .map(|r| csv_item(&header, r))
        .collect();
    let stream: Vec<&String> = rows.iter().skip(1).step_by(2).collect();
    assert_eq!((reference.len(), stream.len()), (86, 85));

    let mut config = example_config("anomaly", dir.path());
    let runtime = Runtime::start(config.clone()).unwrap();
    let observed = observe(&runtime, &reference, "text/csv");
    write_profile(&mut config, &runtime, &observed, dir.path());
    drop(runtime);
    config.drift.window_items = 40;
    let agent = sluice_agent::agent::Agent::start(config).unwrap();

    let clean: Vec<Vec<u8>> = stream
        .iter()
        .take(80)
        .map(|r| csv_item(&header, r))
        .collect();
    accept(&agent, "anomaly", &clean, "text/csv");
    let windows = wait_for(Duration::from_secs(60), || {
        let w = outbox_windows(&agent);
        (w.len() >= 2).then_some(w)
    })
    .expect("two drift windows in the outbox");
    for w in &windows {
        assert_eq!(w["items"], 40);
        assert_eq!(
            w["alarm"],
            false,
            "a false alarm on held-out records: {:?}",
            drifted(w)
        );
        // 30 standardized features and the score's confidence, each by PSI
        // and KS; a single output has no class distribution.
        let scores = w["scores"].as_array().unwrap();
        assert_eq!(scores.len(), 62, "{w}");
        for pair in scores.chunks(2) {
            assert_eq!(
                (&pair[0]["statistic"], &pair[1]["statistic"]),
                (&"psi".into(), &"ks".into())
            );
            assert_eq!(pair[0]["feature"], pair[1]["feature"]);
        }
    }

    // A recalibrated sensor: every feature 30 % higher.
    let shifted: Vec<Vec<u8>> = stream
        .iter()
        .take(40)
        .map(|r| csv_item(&header, &scaled(r, 1.3)))
        .collect();
    accept(&agent, "anomaly", &shifted, "text/csv");
    let w = wait_for(Duration::from_secs(60), || {
        outbox_windows(&agent).get(2).cloned()
    })
    .expect("a third drift window");
    assert_eq!(w["alarm"], true, "scaled records went unnoticed: {w}");
    eprintln!("scaled records: {} drifted scores", drifted(&w).len());
    agent.shutdown();
}

#[test]
fn a_profile_of_another_model_file_is_refused_and_the_pipeline_runs_without_drift() {
    let dir = tempfile::tempdir().unwrap();
    let pngs = digit_pngs();
    let mut config = example_config("digits", dir.path());
    let runtime = Runtime::start(config.clone()).unwrap();
    let observed = observe(&runtime, &pngs[..100], "image/png");
    let path = write_profile(&mut config, &runtime, &observed, dir.path());
    drop(runtime);
    // The same profile, bound to another file's digest.
    let mut profile: Profile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let running = profile.model_sha256.clone();
    profile.model_sha256 = "0".repeat(64);
    profile.write(&path).unwrap();

    let err = sluice_agent::drift::Drift::load(&path, "digits", "digits", &running, &config.drift)
        .err()
        .expect("refused")
        .to_string();
    for part in [
        &"0".repeat(64),
        &running,
        "sluice model profile",
        "--pipeline digits",
    ] {
        assert!(err.contains(part), "{part} not in: {err}");
    }

    config.drift.window_items = 10;
    let agent = sluice_agent::agent::Agent::start(config).unwrap();
    accept(&agent, "digits", &pngs[100..130], "image/png");
    assert!(
        wait_for(Duration::from_secs(30), || (agent.outbox().pending().0
            >= 30)
            .then_some(()))
        .is_some(),
        "the pipeline runs"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(agent.outbox().pending().0, 30, "no drift windows");
    assert!(outbox_windows(&agent).is_empty());
    agent.shutdown();
}

/// Alarms among `rounds` windows of `n` items drawn from `window_pool`,
/// each scored against a profile of `m` items drawn from `reference_pool`
/// (disjoint from the window when both pools are the same data).
#[allow(clippy::too_many_arguments)]
fn alarm_rate(
    reference_pool: &Observed,
    window_pool: Option<&Observed>,
    m: usize,
    n: usize,
    rounds: usize,
    alpha: f64,
    seed: u64,
) -> f64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut alarms = 0;
    for _ in 0..rounds {
        let mut order: Vec<usize> = (0..reference_pool.len()).collect();
        order.shuffle(&mut rng);
        let reference: Vec<_> = order[..m]
            .iter()
            .map(|&i| {
                (
                    reference_pool[i].0.as_slice(),
                    reference_pool[i].1.as_slice(),
                )
            })
            .collect();
        let window: Vec<(&[Tensor], &[Tensor])> = match window_pool {
            // No drift: the window is other items of the same data.
            None => order[m..m + n]
                .iter()
                .map(|&i| {
                    (
                        reference_pool[i].0.as_slice(),
                        reference_pool[i].1.as_slice(),
                    )
                })
                .collect(),
            Some(pool) => {
                let mut order: Vec<usize> = (0..pool.len()).collect();
                order.shuffle(&mut rng);
                order[..n]
                    .iter()
                    .map(|&i| (pool[i].0.as_slice(), pool[i].1.as_slice()))
                    .collect()
            }
        };
        let profile = Profile::build("m", "sha", "p", &reference).unwrap();
        let scores = Scorer::new(&profile, alpha).score(&profile, &bin_counts(&profile, window));
        alarms += usize::from(scores.iter().any(|s| s.drifted));
    }
    alarms as f64 / rounds as f64
}

#[test]
fn false_alarm_rate_on_held_out_data_is_at_most_the_configured_one_and_shifts_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let pngs = digit_pngs();
    let runtime = Runtime::start(example_config("digits", dir.path())).unwrap();
    let clean = observe(&runtime, &pngs, "image/png");
    let inverted = observe(
        &runtime,
        &pngs.iter().map(|p| inverted(p)).collect::<Vec<_>>(),
        "image/png",
    );
    let blurred = observe(
        &runtime,
        &pngs.iter().map(|p| blurred(p)).collect::<Vec<_>>(),
        "image/png",
    );
    drop(runtime);
    let (header, rows) = anomaly_rows();
    let runtime = Runtime::start(example_config("anomaly", dir.path())).unwrap();
    let records = |rows: &[String]| {
        rows.iter()
            .map(|r| csv_item(&header, r))
            .collect::<Vec<_>>()
    };
    let tabular = observe(&runtime, &records(&rows), "text/csv");
    let scaled_rows: Vec<String> = rows.iter().map(|r| scaled(r, 1.3)).collect();
    let tabular_scaled = observe(&runtime, &records(&scaled_rows), "text/csv");
    let offset_rows: Vec<String> = rows.iter().map(|r| offset(r, 1, 2.0)).collect();
    let tabular_offset = observe(&runtime, &records(&offset_rows), "text/csv");
    drop(runtime);

    // Random splits of the held-out data into a reference and a window of
    // other items: no drift by construction, so every alarm is a false one.
    const ROUNDS: usize = 1000;
    for alpha in [0.01, 0.05] {
        let digits = alarm_rate(&clean, None, 225, 75, ROUNDS, alpha, 1);
        let anomaly = alarm_rate(&tabular, None, 100, 40, ROUNDS, alpha, 2);
        eprintln!(
            "false-alarm rate per window at configured {alpha}: digits (m=225, n=75) {digits:.4}, anomaly (m=100, n=40) {anomaly:.4} over {ROUNDS} splits"
        );
        // Bonferroni makes the rate at most alpha; the allowance is for the
        // sampling error of ROUNDS rounds (3 standard deviations).
        let allowance = 3.0 * (alpha * (1.0 - alpha) / ROUNDS as f64).sqrt();
        assert!(digits <= alpha + allowance, "digits {digits} vs {alpha}");
        assert!(anomaly <= alpha + allowance, "anomaly {anomaly} vs {alpha}");
    }

    // Detection: the share of windows of n shifted items that alarm, and
    // the smallest window that (almost) always does: the detection delay.
    for (name, pool, shifted, m) in [
        ("digits inverted", &clean, &inverted, 225),
        ("digits blurred", &clean, &blurred, 225),
        ("anomaly scaled x1.3", &tabular, &tabular_scaled, 100),
        (
            "anomaly one feature offset by 2 sd",
            &tabular,
            &tabular_offset,
            100,
        ),
    ] {
        let mut caught = Vec::new();
        for n in [5, 10, 20, 40] {
            caught.push((n, alarm_rate(pool, Some(shifted), m, n, 100, 0.01, 3)));
        }
        eprintln!("{name}: alarm rate by window size {caught:?}");
        assert!(caught.last().unwrap().1 >= 0.99, "{name}: {caught:?}");
    }
}

#[test]
fn sluice_model_profile_writes_a_profile_bound_to_the_model_that_the_agent_uses() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("digits.profile.json");
    let output = std::process::Command::new(crate::common::sluice_bin())
        .args(["model", "profile", "--config"])
        .arg(repo_root().join("examples/digits/sluice.toml"))
        .args(["--pipeline", "digits", "--output"])
        .arg(&profile)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg(repo_root().join("models/digits/heldout"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The folder also holds labels.csv: not an image, left out, and said.
    assert!(stdout.contains("450 of 451 reference item(s)"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("1 item(s) failed"), "{stderr}");
    let (profile, _) = Profile::read(&profile).unwrap();
    let config = example_config("digits", dir.path());
    assert_eq!(
        profile.model_sha256,
        config.models["digits"].sha256.clone().unwrap()
    );
    assert_eq!((profile.items, profile.pipeline.as_str()), (450, "digits"));
    // 64 pixels, the class and the confidence; deciles make at most 10 bins.
    assert_eq!(profile.features.len(), 66);
    assert!(
        profile
            .features
            .iter()
            .all(|f| f.counts.len() <= 10 && f.counts.iter().sum::<u64>() == 450)
    );
    let class = profile
        .features
        .iter()
        .find(|f| f.name == "output.probabilities.class")
        .unwrap();
    assert_eq!(class.counts.len(), 10);
    // The default place is beside the model.
    assert_eq!(
        config.models["digits"].profile_path(),
        repo_root().join("models/digits/digits_mlp.onnx.profile.json")
    );
}
