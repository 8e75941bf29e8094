//! What a third-party plugin author relies on: `sluice plugin new` projects
//! that build and pass their own test, `sluice plugin run` on sample data,
//! `plugin inspect` from the compiled-plugin cache, a plugin's output kept
//! out of Sluice's own, and pipelines whose parts do not fit refused at
//! start with one clear error.

use crate::common::{plugin_path, repo_root, shared_cache_dir, sluice};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

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
    let out = run(&granted, &inputs, "info");
    assert!(out.status.success(), "{}", text(&out.stderr));
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
    assert!(out.status.success(), "{}", text(&out.stderr));
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

/// `digits.toml` in `dir`: the digits example with `change` applied to its
/// text, absolute paths, its own data directory.
fn digits_config(dir: &Path, change: impl Fn(String) -> String) -> PathBuf {
    let example = repo_root().join("examples/digits");
    let text = std::fs::read_to_string(example.join("sluice.toml"))
        .unwrap()
        .replace("../../", &format!("{}/", repo_root().display()));
    let text = change(text).replace(
        &format!(
            "data_dir = \"{}/target/sluice-demo\"",
            repo_root().display()
        ),
        &format!(
            "data_dir = {:?}\n[runtime]\ncache_dir = {:?}",
            dir.join("data").display().to_string(),
            shared_cache_dir().display().to_string()
        ),
    );
    let file = dir.join("digits.toml");
    std::fs::write(&file, text).unwrap();
    file
}

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

/// `sluice plugin new NAME --lang LANG --world WORLD` into `dir`.
fn plugin_new(name: &str, lang: &str, world: &str, dir: &Path) -> Output {
    sluice(&[
        "plugin",
        "new",
        name,
        "--lang",
        lang,
        "--world",
        world,
        "--dir",
        dir.to_str().unwrap(),
    ])
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn plugin_new_fills_every_template_and_refuses_what_it_cannot_make() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for lang in ["rust", "python", "js"] {
        for world in ["preprocessor", "postprocessor"] {
            let project = dir.path().join(format!("{lang}-{world}"));
            let out = plugin_new("my-plugin", lang, world, &project);
            assert!(
                out.status.success(),
                "{lang} {world}: {}",
                text(&out.stderr)
            );
            let files = files_under(&project);
            for file in &files {
                let content = std::fs::read_to_string(file).unwrap();
                assert!(
                    !content.contains("{{"),
                    "{}: a placeholder is left",
                    file.display()
                );
            }
            for script in ["build.sh", "test.sh"] {
                let mode = std::fs::metadata(project.join(script))
                    .unwrap()
                    .permissions()
                    .mode();
                assert!(
                    mode & 0o111 != 0,
                    "{lang} {world}: {script} is not executable"
                );
            }
            let config = std::fs::read_to_string(project.join("sluice.toml")).unwrap();
            assert!(config.contains("[plugins.my-plugin]"), "{config}");
            let expected = std::fs::read_to_string(project.join("expected.jsonl")).unwrap();
            assert!(expected.contains("plugin `my-plugin`"), "{expected}");
            // Python and JavaScript build against the WIT, which comes along.
            assert_eq!(
                project.join("wit/sluice.wit").is_file(),
                lang != "rust",
                "{lang} {world}: {files:?}"
            );
        }
    }
    let again = plugin_new(
        "my-plugin",
        "rust",
        "preprocessor",
        &dir.path().join("rust-preprocessor"),
    );
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("not empty"),
        "{}",
        text(&again.stderr)
    );
    let bad = plugin_new("My_Plugin", "rust", "preprocessor", &dir.path().join("bad"));
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("lower-case"),
        "{}",
        text(&bad.stderr)
    );
}

/// Run a generated project's `test.sh` with the built `sluice`; toolchains
/// and build outputs are shared across projects and runs under `target/`.
fn run_project_test(project: &Path) -> Output {
    let target = repo_root().join("target");
    Command::new(project.join("test.sh"))
        .env("SLUICE", crate::common::sluice_bin())
        .env("SLUICE_TOOLCHAIN_DIR", target.join("plugin-toolchains"))
        .env("CARGO_TARGET_DIR", target.join("plugin-projects"))
        .output()
        .unwrap()
}

/// Make a `lang` `world` project with `sluice plugin new` in `project`,
/// let `prepare` touch it, and run its own `test.sh`: it must pass.
fn new_project_passes_its_test(lang: &str, world: &str, project: &Path, prepare: impl Fn(&Path)) {
    let out = plugin_new("new-plugin", lang, world, project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    prepare(project);
    let out = run_project_test(project);
    let shown = format!(
        "{lang} {world}: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(out.status.success(), "{shown}");
    assert!(
        text(&out.stdout).contains("ok: 2 sample input(s)"),
        "{shown}"
    );
}

#[test]
fn a_new_rust_plugin_builds_and_passes_its_own_test() {
    let dir = tempfile::tempdir().unwrap();
    for world in ["preprocessor", "postprocessor"] {
        new_project_passes_its_test("rust", world, &dir.path().join(world), |project| {
            // The versions the bundled plugins were built with: nothing new
            // to download or compile beyond this crate.
            std::fs::copy(
                repo_root().join("plugins/Cargo.lock"),
                project.join("Cargo.lock"),
            )
            .unwrap();
        });
    }
}

/// Whether `lang`'s toolchain can be installed here (Python with venv and
/// pip; Node.js with npm); else a loud skip: CI installs both.
fn toolchain_available(lang: &str) -> bool {
    let (program, args): (&str, &[&str]) = match lang {
        "python" => ("python3", &["-c", "import venv, ensurepip"]),
        _ => ("npm", &["--version"]),
    };
    let ok = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIPPED: no {lang} toolchain ({program} {}): install it to test {lang} plugins",
            args.join(" ")
        );
    }
    ok
}

#[test]
fn new_python_and_javascript_plugins_build_and_pass_their_own_test() {
    let dir = tempfile::tempdir().unwrap();
    for lang in ["python", "js"] {
        if !toolchain_available(lang) {
            continue;
        }
        for world in ["preprocessor", "postprocessor"] {
            let project = dir.path().join(format!("{lang}-{world}"));
            new_project_passes_its_test(lang, world, &project, |_| {});
        }
    }
}

/// Build example plugin `name` (`examples/plugins/NAME`) into the test's
/// temporary folder; its path.
fn build_example(name: &str) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.wasm"));
    let built = Command::new(repo_root().join(format!("examples/plugins/{name}/build.sh")))
        .arg(&out)
        .env(
            "SLUICE_TOOLCHAIN_DIR",
            repo_root().join("target/plugin-toolchains"),
        )
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{name}: {}\n{}",
        text(&built.stdout),
        text(&built.stderr)
    );
    out
}

/// The digits example's 450 results with its postprocessor replaced by
/// `plugin` (`None`: the bundled Rust one) and its config table edited.
fn digits_results(
    plugin: Option<&Path>,
    edit: impl Fn(&mut toml::Table),
) -> Vec<serde_json::Value> {
    let path = repo_root().join("examples/digits/sluice.toml");
    let mut config = sluice_agent::config::Config::load(&path).unwrap();
    config.runtime.cache_dir = Some(shared_cache_dir());
    let post = config.plugins.get_mut("digits-post").unwrap();
    if let Some(plugin) = plugin {
        post.path = sluice_agent::config::PluginSource::File(plugin.to_owned());
    }
    edit(&mut post.config);
    let runtime = sluice_agent::runtime::Runtime::start(config).unwrap();
    let items: Vec<_> = crate::common::digit_png_paths()
        .iter()
        .enumerate()
        .map(|(ix, p)| sluice_agent::ingest::files::read_file_item(p, format!("d{ix}")).unwrap())
        .collect();
    sluice_agent::pipeline::process_all(runtime.pipeline(None).unwrap(), items, &|_| {})
        .into_iter()
        .map(|o| serde_json::from_slice(&o.result.unwrap_or_else(|e| panic!("{e}")).body).unwrap())
        .collect()
}

/// `got` has `want`'s labels and indices, in the same order, and scores
/// within 1e-6 (Rust prints the shortest f32, Python and JavaScript f64).
fn assert_same_classes(lang: &str, want: &[serde_json::Value], got: &[serde_json::Value]) {
    assert_eq!(want.len(), got.len());
    for (ix, (w, g)) in want.iter().zip(got).enumerate() {
        let classes = |d: &serde_json::Value| -> Vec<(String, u64, f64)> {
            d["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["label"].as_str().unwrap().to_owned(),
                        c["index"].as_u64().unwrap(),
                        c["score"].as_f64().unwrap(),
                    )
                })
                .collect()
        };
        let (w_classes, g_classes) = (classes(w), classes(g));
        assert_eq!(w["label"], g["label"], "{lang} item {ix}: {w} vs {g}");
        assert_eq!(w_classes.len(), g_classes.len(), "{lang} item {ix}");
        for (a, b) in w_classes.iter().zip(&g_classes) {
            assert_eq!((&a.0, a.1), (&b.0, b.1), "{lang} item {ix}: {w} vs {g}");
            assert!((a.2 - b.2).abs() < 1e-6, "{lang} item {ix}: {w} vs {g}");
        }
    }
}

#[test]
fn the_python_and_javascript_examples_give_the_rust_plugins_results() {
    let rust = digits_results(None, |_| {});
    if toolchain_available("python") {
        let wasm = build_example("classify-python");
        // The same configuration, labels read from the granted model folder.
        let python = digits_results(Some(&wasm), |_| {});
        assert_same_classes("python", &rust, &python);
    }
    if toolchain_available("js") {
        let wasm = build_example("classify-js");
        // JavaScript has no file API in the sandbox: the labels inline.
        let labels: Vec<toml::Value> = (0..10).map(|d| d.to_string().into()).collect();
        let js = digits_results(Some(&wasm), |config| {
            config.remove("labels_file");
            config.insert("labels".into(), labels.clone().into());
        });
        assert_same_classes("js", &rust, &js);
    }
}
