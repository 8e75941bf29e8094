//! `sluice plugin inspect` compiles once then loads from the cache, a
//! plugin's output goes to the log and never into Sluice's own output, and
//! `sluice plugin run` feeds a postprocessor and names a bad file.

use super::{digits_config, text};
use crate::common::{plugin_path, shared_cache_dir, sluice};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `sluice.toml` for plugin `name` of file `wasm` with table lines `body`.
fn plugin_toml(dir: &Path, name: &str, wasm: &Path, body: &str) -> PathBuf {
    let file = dir.join("sluice.toml");
    std::fs::write(
        &file,
        format!(
            "[device]\ndata_dir = {:?}\n[runtime]\ncache_dir = {:?}\n[plugins.{name}]\npath = {:?}\n{body}\n",
            dir.join("data").display().to_string(),
            shared_cache_dir().display().to_string(),
            wasm.display().to_string()
        ),
    )
    .unwrap();
    file
}

fn run(config: &Path, inputs: &[&Path], log: &str) -> Output {
    let mut args = vec![
        "plugin",
        "run",
        "--config",
        config.to_str().unwrap(),
        "--log",
        log,
    ];
    args.extend(inputs.iter().map(|p| p.to_str().unwrap()));
    sluice(&args)
}

/// [`run`] with `sluice`'s default log filter (no `--log`, no RUST_LOG).
fn run_default_log(config: &Path, inputs: &[&Path]) -> Output {
    let mut command = Command::new(crate::common::sluice_bin());
    command
        .args(["plugin", "run", "--config", config.to_str().unwrap()])
        .args(inputs)
        .env("SLUICE_CACHE_DIR", crate::common::shared_cache_dir())
        .env_remove("RUST_LOG");
    command.output().unwrap()
}

#[test]
fn plugin_inspect_compiles_once_then_loads_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let wasm = plugin_path("misbehave").to_str().unwrap().to_owned();
    let inspect = || {
        Command::new(crate::common::sluice_bin())
            .args(["plugin", "inspect", &wasm])
            .env("SLUICE_CACHE_DIR", cache.path())
            .output()
            .unwrap()
    };
    let first = inspect();
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains("compiled: now"),
        "{}",
        text(&first.stdout)
    );
    let cached: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(cached.len(), 1, "one compiled component in the cache");
    let second = inspect();
    assert!(
        text(&second.stdout).contains("compiled: from the compiled-plugin cache"),
        "{}",
        text(&second.stdout)
    );

    // On a terminal, a compile shows that it is one (a Python component's
    // first takes seconds): run under `script`, which gives it a terminal.
    let fresh = tempfile::tempdir().unwrap();
    let on_terminal = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} plugin inspect {wasm}",
            crate::common::sluice_bin()
        ))
        .arg("/dev/null")
        .env("SLUICE_CACHE_DIR", fresh.path())
        .output();
    match on_terminal {
        Ok(out) => {
            let shown = text(&out.stdout);
            assert!(
                shown.contains("compiling") && shown.contains("it is cached"),
                "{shown}"
            );
        }
        Err(e) => eprintln!("SKIPPED the terminal check: no `script` (util-linux): {e}"),
    }
}

#[test]
fn plugin_output_goes_to_the_log_never_into_sluices_own_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let inputs = [
        input("1.txt", "print:hello from the plugin"),
        // 200 KiB of stderr: more than the host keeps; never a failed write.
        input("2.txt", "spam:200"),
        input("3.txt", "invalid"),
    ];
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    let wasm = plugin_path("misbehave");

    // Granted: each line is a log event with the plugin's name.
    let granted = plugin_toml(
        dir.path(),
        "chatty",
        wasm,
        "[plugins.chatty.grants]\nstdio = true",
    );
    // The default log filter shows what a plugin granted `stdio` prints.
    let out = run_default_log(&granted, &inputs);
    // One input is invalid: the status says so, for a script.
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("1 of 3 input(s) failed"),
        "{}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(!stdout.contains("hello from the plugin"), "{stdout}");
    assert_eq!(lines[0]["tensors"][0]["name"], "echo");
    assert_eq!(
        lines[1]["tensors"][0]["name"], "echo",
        "a chatty item still succeeds"
    );
    assert_eq!(lines[2]["error"]["kind"], "invalid-input");
    let log = text(&out.stderr);
    let said = |needle: &str| {
        log.lines()
            .any(|l| l.contains(needle) && l.contains("plugin=\"chatty\""))
    };
    assert!(
        said("hello from the plugin") && said("stream=\"stdout\""),
        "{log}"
    );
    assert!(
        said("err:hello from the plugin") && said("stream=\"stderr\""),
        "{log}"
    );

    // In a pipeline too: `sluice infer`'s output stays JSON Lines. (The
    // echoed bytes do not fit the digits model: each item fails, and says so.)
    let config = digits_config(dir.path(), |t| t);
    let mut table: toml::Table =
        toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let pre = table["plugins"]["digits-pre"].as_table_mut().unwrap();
    pre.insert("path".into(), wasm.display().to_string().into());
    pre.insert("config".into(), toml::Table::new().into());
    pre.insert("grants".into(), toml::toml! { stdio = true }.into());
    table["pipelines"]["digits"]
        .as_table_mut()
        .unwrap()
        .remove("sample");
    std::fs::write(&config, toml::to_string(&table).unwrap()).unwrap();
    let mut args = vec![
        "infer",
        "--config",
        config.to_str().unwrap(),
        "--log",
        "info",
    ];
    args.extend(inputs.iter().map(|p| p.to_str().unwrap()));
    let out = sluice(&args);
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 3, "{stdout}\n{}", text(&out.stderr));
    for line in stdout.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["kind"], "result", "{line}");
    }
    assert!(!stdout.contains("hello from the plugin"), "{stdout}");
    assert!(text(&out.stderr).contains("hello from the plugin"));

    // Not granted: nothing of it anywhere, and the chatty item still succeeds.
    let silent = plugin_toml(dir.path(), "quiet", wasm, "");
    let out = run(&silent, &inputs, "info");
    assert!(
        text(&out.stderr).contains("1 of 3 input(s) failed"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("hello") && !text(&out.stderr).contains("hello"));
    let second: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().nth(1).unwrap()).unwrap();
    assert_eq!(second["tensors"][0]["name"], "echo", "{second}");
}

#[test]
fn plugin_run_feeds_a_postprocessor_json_tensors_and_names_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = plugin_toml(
        dir.path(),
        "post",
        plugin_path("classify-postprocess"),
        "[plugins.post.config]\ninput = \"scores\"\nlabels = [\"a\", \"b\", \"c\"]",
    );
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        r#"{"tensors": [{"name": "scores", "dtype": "fp32", "shape": [1, 3], "data": [0.25, 0.5, 0.25]}]}"#,
    )
    .unwrap();
    let out = run(&config, &[&good], "warn");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["document"]["body"]["label"], "b", "{line}");
    assert_eq!(line["document"]["content_type"], "application/json");

    let short = dir.path().join("short.json");
    std::fs::write(
        &short,
        r#"{"tensors": [{"name": "scores", "dtype": "fp32", "shape": [1, 3], "data": [1]}]}"#,
    )
    .unwrap();
    let out = run(&config, &[&short], "warn");
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert!(
        error.contains("short.json") && error.contains("holds 3 elements, data has 1"),
        "{error}"
    );
}

#[test]
fn a_faults_log_line_names_the_item_and_its_error_leads_with_the_authors_words() {
    let dir = tempfile::tempdir().unwrap();
    let config = plugin_toml(dir.path(), "evil", plugin_path("misbehave"), "");
    let fine = dir.path().join("fine.txt");
    std::fs::write(&fine, "fine").unwrap();
    let boom = dir.path().join("boom.txt");
    std::fs::write(&boom, "panic").unwrap();
    let out = run_default_log(&config, &[&fine, &boom]);
    assert!(!out.status.success());
    let log = text(&out.stderr);
    assert!(
        log.lines()
            .any(|l| l.contains("instance discarded") && l.contains("boom.txt")),
        "{log}"
    );
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["tensors"][0]["name"], "echo");
    let message = lines[1]["error"]["message"].as_str().unwrap_or_default();
    let (panic, trap) = (
        message.find("misbehave: panic requested"),
        message.find("unreachable"),
    );
    assert!(
        panic.is_some() && trap.is_some() && panic < trap,
        "{}",
        lines[1]
    );
}
