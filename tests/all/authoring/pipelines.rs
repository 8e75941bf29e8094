//! Pipelines as `sluice infer` starts them: parts that do not fit are refused
//! at start naming the tensor, several pipelines and no choice fail before
//! anything is loaded, and the README's example runs.

use super::{digits_config, text};
use crate::common::{repo_root, sluice};
use std::path::Path;
use std::process::{Command, Output};

/// `sluice infer --config CONFIG [ARGS] heldout/0001.png`: one digit.
fn infer_a_digit(config: &Path, args: &[&str]) -> Output {
    let image = repo_root().join("models/digits/heldout/0001.png");
    let mut all = vec!["infer", "--config", config.to_str().unwrap()];
    all.extend(args);
    all.push(image.to_str().unwrap());
    sluice(&all)
}

#[test]
fn a_pipeline_whose_parts_do_not_fit_is_refused_at_start_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    // A typo in the preprocessor's output name: the model has `input`.
    let config = digits_config(dir.path(), |t| {
        t.replace("output = \"input\"", "output = \"inptu\"")
    });
    let out = infer_a_digit(&config, &[]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let error = text(&out.stderr);
    assert!(
        error.contains("pipeline `digits` is disabled")
            && error.contains("sample input")
            && error.contains("`inptu`")
            && error.contains("`input`"),
        "{error}"
    );
    assert!(out.stdout.is_empty(), "nothing ran: {}", text(&out.stdout));

    // Without a sample, the typo fails each item with the same clear error.
    let config = digits_config(dir.path(), |t| {
        t.replace("output = \"input\"", "output = \"inptu\"")
            .lines()
            .filter(|l| !l.starts_with("sample ="))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let out = infer_a_digit(&config, &[]);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let message = line["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`inptu`") && message.contains("`input`"),
        "{message}"
    );
}

#[test]
fn infer_with_several_pipelines_and_no_choice_fails_before_loading_anything() {
    let dir = tempfile::tempdir().unwrap();
    // A second pipeline whose model does not even exist: choosing must come
    // before loading, or this would fail on the model instead.
    let config = digits_config(dir.path(), |t| {
        t + "\n[models.missing]\npath = \"/nonexistent/model.onnx\"\n\
             [pipelines.other]\npreprocess = \"digits-pre\"\nmodel = \"missing\"\npostprocess = \"digits-post\"\n"
    });
    let started = std::time::Instant::now();
    let out = infer_a_digit(&config, &[]);
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert!(
        error.contains("--pipeline") && error.contains("digits") && error.contains("other"),
        "{error}"
    );
    assert!(!error.contains("model.onnx"), "nothing was loaded: {error}");
    assert!(started.elapsed().as_secs() < 30);
    // Choosing one runs only it: the broken one is never loaded.
    let out = infer_a_digit(&config, &["--pipeline", "digits"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let unknown = infer_a_digit(&config, &["--pipeline", "nope"]);
    assert!(
        text(&unknown.stderr).contains("no pipeline `nope`"),
        "{}",
        text(&unknown.stderr)
    );
}

#[test]
fn the_readmes_infer_example_runs_without_a_failed_item() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("sluice infer "))
        .expect("the README shows `sluice infer`");
    let command = line.split('#').next().unwrap().trim();
    let data = tempfile::tempdir().unwrap();
    // As a user's shell runs it (the glob), with the built binary.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "\"$SLUICE\" {} --data-dir \"$DATA\"",
            command.strip_prefix("sluice ").unwrap()
        ))
        .current_dir(repo_root())
        .env("SLUICE", crate::common::sluice_bin())
        .env("DATA", data.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{command}: {}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 450, "{command}");
    let failed: Vec<_> = lines.iter().filter(|l| l.get("error").is_some()).collect();
    assert!(failed.is_empty(), "{command}: {failed:?}");
}
