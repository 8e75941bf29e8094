//! The `sluice` binary as a user runs it.

use std::process::{Command, Output};

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).output().expect("run sluice")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_lists_the_commands() {
    let out = sluice(&["--help"]);
    assert!(out.status.success());
    for command in ["demo", "infer", "plugin", "model"] {
        assert!(stdout(&out).contains(command), "{command} missing from help:\n{}", stdout(&out));
    }
}

#[test]
fn plugin_inspect_describes_every_bundled_plugin() {
    let list = sluice(&["plugin", "list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    let names: Vec<String> = stdout(&list).lines().map(str::to_owned).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for name in &names {
        let out = sluice(&["plugin", "inspect", name]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let text = stdout(&out);
        let world = if name.contains("preprocess") { "sluice:plugin/preprocessor@0.1.0" } else { "sluice:plugin/postprocessor@0.1.0" };
        assert!(text.contains(&format!("world:    {world}")), "{name}:\n{text}");
        assert!(text.contains("links:    yes"), "{name}:\n{text}");
        assert!(text.contains("nothing: no files, network, environment or stdio"), "{name}:\n{text}");

        let json = sluice(&["plugin", "inspect", name, "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("valid JSON");
        assert_eq!(report["world"], world);
        assert!(report["exports"].as_array().unwrap().iter().any(|e| e.as_str().unwrap().starts_with("sluice:plugin/")));
    }
}

#[test]
fn plugin_inspect_shows_the_grants_of_a_configuration() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/digits/sluice.toml");
    let out = sluice(&["plugin", "inspect", "bundled:classify-postprocess", "--config", config, "--plugin", "digits-post"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("as /model (read-only)"), "{}", stdout(&out));
}

#[test]
fn plugin_inspect_explains_a_file_that_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("junk.wasm");
    std::fs::write(&file, b"\0asm\x01\0\0\0").unwrap();
    let out = sluice(&["plugin", "inspect", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a WebAssembly component"), "{}", stderr(&out));
    let missing = sluice(&["plugin", "inspect", "bundled:nope"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("image-preprocess"), "lists what is bundled: {}", stderr(&missing));
}

#[test]
fn a_config_with_a_misspelled_key_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "[plugins.pre]\npath = \"bundled:image-preprocess\"\nmemroy_mb = 3\n").unwrap();
    let out = sluice(&["infer", "--config", config.to_str().unwrap(), "x.png"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("memroy_mb"), "{}", stderr(&out));
}
