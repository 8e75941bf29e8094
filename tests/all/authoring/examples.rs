//! The Python and JavaScript example plugins (`examples/plugins`) give the
//! bundled Rust plugin's results.

use super::{text, toolchain_available};
use crate::common::{repo_root, shared_cache_dir};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Build example plugin `name` (`examples/plugins/NAME`) into the test's
/// temporary folder; its path.
fn build_example(name: &str) -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.wasm"));
    let built = Command::new(repo_root().join(format!("examples/plugins/{name}/build.sh")))
        .arg(&out)
        .env("SLUICE_TOOLCHAIN_DIR", super::toolchain_dir())
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

/// The digits example with its postprocessor replaced by `plugin` (`None`:
/// the bundled Rust one) and its config table edited, started.
fn digits_runtime(
    plugin: Option<&Path>,
    edit: impl Fn(&mut toml::Table),
) -> Result<sluice_agent::runtime::Runtime, String> {
    let path = repo_root().join("examples/digits/sluice.toml");
    let mut config = sluice_agent::config::Config::load(&path).unwrap();
    config.runtime.cache_dir = Some(shared_cache_dir());
    let post = config.plugins.get_mut("digits-post").unwrap();
    if let Some(plugin) = plugin {
        post.path = sluice_agent::config::PluginSource::File(plugin.to_owned());
    }
    edit(&mut post.config);
    sluice_agent::runtime::Runtime::start(config).map_err(|e| format!("{e:#}"))
}

/// The digits example's 450 results, as `digits_runtime` makes it.
fn digits_results(
    plugin: Option<&Path>,
    edit: impl Fn(&mut toml::Table),
) -> Vec<serde_json::Value> {
    let runtime = digits_runtime(plugin, edit).unwrap();
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
        // The same configuration: JavaScript reads the labels from the
        // granted model folder through wasi:filesystem too.
        let js = digits_results(Some(&wasm), |_| {});
        assert_same_classes("js", &rust, &js);
        // A path outside the granted folders is refused at init, named.
        let Err(message) = digits_runtime(Some(&wasm), |config| {
            config.insert("labels_file".into(), "/etc/passwd".into());
        }) else {
            panic!("a labels_file outside the granted folders was read");
        };
        assert!(
            message.contains("cannot read /etc/passwd: no granted folder holds it"),
            "{message}"
        );
    }
}
