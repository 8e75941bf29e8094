//! `sluice plugin inspect` and `plugin compile`: what a component is, its
//! documented options, and the one compiled-plugin cache per machine.

use crate::common::{sluice, stderr, stdout};
use std::path::Path;

/// One compiled-plugin cache per machine (the user's cache folder): `plugin
/// compile` fills it, and another data directory, `plugin inspect` without
/// a configuration and `infer` all load from it instead of compiling again.
#[test]
fn one_compiled_plugin_cache_serves_every_command_and_data_dir() {
    let home = tempfile::tempdir().unwrap();
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/digits/sluice.toml"
    );
    let (data_a, data_b) = (home.path().join("a"), home.path().join("b"));
    // As on a fresh machine: no SLUICE_CACHE_DIR, no XDG_CACHE_HOME.
    let sluice_in_home = |args: &[&str]| {
        std::process::Command::new(crate::common::sluice_bin())
            .args(args)
            .env("HOME", home.path())
            .env_remove("SLUICE_CACHE_DIR")
            .env_remove("XDG_CACHE_HOME")
            .output()
            .unwrap()
    };
    let compile = |data_dir: &Path| {
        sluice_in_home(&[
            "plugin",
            "compile",
            "--config",
            config,
            "--data-dir",
            data_dir.to_str().unwrap(),
        ])
    };
    let first = compile(&data_a);
    assert!(first.status.success(), "{}", stderr(&first));
    for plugin in ["digits-pre", "digits-post"] {
        assert!(
            stdout(&first).contains(&format!("{plugin}: compiled")),
            "{}",
            stdout(&first)
        );
    }
    let cache = home.path().join(".cache/sluice");
    assert!(
        stdout(&first).contains(&format!("cache: {}", cache.display())),
        "{}",
        stdout(&first)
    );
    let compiled = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(compiled(&cache), 2, "one .cwasm per plugin");
    assert_eq!(
        compiled(&data_a.join("cache")),
        0,
        "nothing in the data directory"
    );

    let other_data_dir = compile(&data_b);
    for plugin in ["digits-pre", "digits-post"] {
        assert!(
            stdout(&other_data_dir).contains(&format!("{plugin}: already compiled")),
            "{}",
            stdout(&other_data_dir)
        );
    }
    let inspect = sluice_in_home(&["plugin", "inspect", "bundled:image-preprocess"]);
    assert!(
        stdout(&inspect).contains("compiled: from the compiled-plugin cache"),
        "{}",
        stdout(&inspect)
    );
    let digit = crate::common::repo_root().join("models/digits/heldout/0000.png");
    let infer = sluice_in_home(&[
        "infer",
        "--config",
        config,
        "--data-dir",
        home.path().join("c").to_str().unwrap(),
        digit.to_str().unwrap(),
    ]);
    assert!(infer.status.success(), "{}", stderr(&infer));
    assert_eq!(compiled(&cache), 2, "infer compiled nothing new");

    // A home that cannot hold a cache (a service user's home on a read-only
    // root file system): the data directory's cache, as before.
    let fallback = std::process::Command::new(crate::common::sluice_bin())
        .args([
            "plugin",
            "compile",
            "--config",
            config,
            "--data-dir",
            data_a.to_str().unwrap(),
        ])
        .env("HOME", "/dev/null")
        .env_remove("SLUICE_CACHE_DIR")
        .env_remove("XDG_CACHE_HOME")
        .output()
        .unwrap();
    assert!(fallback.status.success(), "{}", stderr(&fallback));
    assert_eq!(compiled(&data_a.join("cache")), 2, "{}", stdout(&fallback));
}

#[test]
fn plugin_inspect_describes_every_bundled_plugin() {
    let list = sluice(&["plugin", "list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let names: Vec<String> = stdout(&list).lines().map(str::to_owned).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    let docs = std::fs::read_to_string(crate::common::repo_root().join("docs/plugins.md")).unwrap();
    for name in &names {
        let out = sluice(&["plugin", "inspect", name]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let text = stdout(&out);
        let world = if name.contains("preprocess") {
            "sluice:plugin/preprocessor@0.1.0"
        } else {
            "sluice:plugin/postprocessor@0.1.0"
        };
        assert!(
            text.contains(&format!("world:    {world}")),
            "{name}:\n{text}"
        );
        assert!(text.contains("links:    yes"), "{name}:\n{text}");
        assert!(
            text.contains("nothing: no files, network, environment or stdio"),
            "{name}:\n{text}"
        );

        let json = sluice(&["plugin", "inspect", name, "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("valid JSON");
        assert_eq!(report["world"], world);
        assert!(
            report["exports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e.as_str().unwrap().starts_with("sluice:plugin/"))
        );

        // Its options, from the component itself, as docs/plugins.md lists them.
        let options: Vec<sluice_agent::plugin::options::PluginOption> =
            serde_json::from_value(report["options"].clone()).expect("options listed");
        assert!(options.len() >= 4, "{name}: {options:?}");
        for option in &options {
            assert!(
                text.contains(&format!("\n  {} ", option.key)),
                "{name}: `{}` not shown:\n{text}",
                option.key
            );
        }
        let table = sluice_agent::plugin::options::markdown_table(&options);
        assert!(
            docs.contains(&format!("### `{name}`\n\n")) && docs.contains(&table),
            "docs/plugins.md does not list {name}'s options as its component does:\n{table}"
        );
    }
    let image = stdout(&sluice(&["plugin", "inspect", "bundled:image-preprocess"]));
    assert!(
        image.contains("  layout = \"nchw\"\n      `\"nchw\"`: `[1, C, H, W]`"),
        "{image}"
    );
    assert!(image.contains("  width (required)\n"), "{image}");
}

#[test]
fn plugin_inspect_exits_non_zero_for_a_component_sluice_cannot_run() {
    // A plain WASI command: it links, but it is no Sluice plugin.
    let path = crate::common::plugin_path("not-a-plugin");
    let out = sluice(&["plugin", "inspect", path.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("world:    none"),
        "the report is still printed"
    );
    assert!(
        stderr(&out).contains("cannot run in Sluice"),
        "{}",
        stderr(&out)
    );
    // JSON too: the report on stdout, the verdict in the exit code.
    let out = sluice(&["plugin", "inspect", path.to_str().unwrap(), "--json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["world"].is_null());
}

#[test]
fn plugin_inspect_shows_the_grants_of_a_configuration() {
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/digits/sluice.toml"
    );
    let out = sluice(&[
        "plugin",
        "inspect",
        "bundled:classify-postprocess",
        "--config",
        config,
        "--plugin",
        "digits-post",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("as /model (read-only)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn plugin_inspect_explains_a_file_that_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("junk.wasm");
    std::fs::write(&file, b"\0asm\x01\0\0\0").unwrap();
    let out = sluice(&["plugin", "inspect", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a WebAssembly component"),
        "{}",
        stderr(&out)
    );
    let missing = sluice(&["plugin", "inspect", "bundled:nope"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("image-preprocess"),
        "lists what is bundled: {}",
        stderr(&missing)
    );
}
