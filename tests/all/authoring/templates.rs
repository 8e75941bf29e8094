//! `sluice plugin new`: every template filled and what it cannot make
//! refused; new Rust, Python, JavaScript and C projects build and pass their
//! own test.

use super::{text, toolchain_available};
use crate::common::{repo_root, sluice};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
    for lang in ["rust", "python", "js", "c"] {
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
            // Python and JavaScript build against the WIT, which comes along;
            // Rust against the guest SDK's copy, WIT inside.
            assert_eq!(
                project.join("wit/sluice.wit").is_file(),
                lang != "rust",
                "{lang} {world}: {files:?}"
            );
            assert_eq!(
                project.join("vendor/sluice-guest/wit/sluice.wit").is_file(),
                lang == "rust",
                "{lang} {world}: {files:?}"
            );
            // Nothing points into this checkout: the project can move.
            let checkout = repo_root().canonicalize().unwrap();
            for file in &files {
                let content = std::fs::read_to_string(file).unwrap();
                assert!(
                    !content.contains(checkout.to_str().unwrap()),
                    "{}: names the checkout {}",
                    file.display(),
                    checkout.display()
                );
            }
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

/// A Rust project's copy of the guest SDK is the published crate: the files
/// `cargo package` lists (less what cargo adds), byte for byte.
#[test]
fn a_rust_project_carries_the_published_guest_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let out = plugin_new("my-plugin", "rust", "preprocessor", dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args(["package", "--list", "--allow-dirty", "-p", "sluice-guest"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let added_by_cargo = ["Cargo.toml.orig", "Cargo.lock", ".cargo_vcs_info.json"];
    let mut published: Vec<String> = text(&listed.stdout)
        .lines()
        .filter(|f| !added_by_cargo.contains(f))
        .map(str::to_owned)
        .collect();
    published.sort();
    let vendored_dir = dir.path().join("vendor/sluice-guest");
    let mut vendored: Vec<String> = files_under(&vendored_dir)
        .iter()
        .map(|f| f.strip_prefix(&vendored_dir).unwrap().display().to_string())
        .collect();
    vendored.sort();
    assert_eq!(vendored, published);
    assert!(published.contains(&"wit/sluice.wit".to_owned()));
    for file in &published {
        assert_eq!(
            std::fs::read(vendored_dir.join(file)).unwrap(),
            std::fs::read(repo_root().join("guest-sdk").join(file)).unwrap(),
            "vendor/sluice-guest/{file} differs from guest-sdk/{file}"
        );
    }
}

/// Run a generated project's `test.sh` with the built `sluice`; toolchains
/// and build outputs are shared across projects and runs.
fn run_project_test(project: &Path) -> Output {
    Command::new(project.join("test.sh"))
        .env("SLUICE", crate::common::sluice_bin())
        .env("SLUICE_TOOLCHAIN_DIR", super::toolchain_dir())
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-projects"),
        )
        .output()
        .unwrap()
}

/// Make a `lang` `world` project with `sluice plugin new` in `project` and
/// run its own `test.sh`: it must pass.
fn new_project_passes_its_test(lang: &str, world: &str, project: &Path) {
    let out = plugin_new("new-plugin", lang, world, project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    project_passes_its_test(lang, world, project);
}

/// Run a project's own `test.sh`: it must pass.
fn project_passes_its_test(lang: &str, world: &str, project: &Path) {
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

/// Made in one folder and moved to another before it is built, as a shared
/// project would be: it needs nothing from where it was made.
#[test]
fn a_new_rust_plugin_builds_and_passes_its_own_test() {
    let made = tempfile::tempdir().unwrap();
    let moved = tempfile::tempdir().unwrap();
    for world in ["preprocessor", "postprocessor"] {
        let out = plugin_new("new-plugin", "rust", world, &made.path().join(world));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let project = moved.path().join(world);
        std::fs::rename(made.path().join(world), &project).unwrap();
        // The versions the bundled plugins were built with: nothing new to
        // download or compile beyond this crate.
        std::fs::copy(
            repo_root().join("plugins/Cargo.lock"),
            project.join("Cargo.lock"),
        )
        .unwrap();
        project_passes_its_test("rust", world, &project);
        // Its options travel inside the component, for `plugin inspect`.
        let wasm = project.join("plugin.wasm");
        let out = crate::common::sluice(&["plugin", "inspect", wasm.to_str().unwrap()]);
        let key = if world == "preprocessor" {
            "output"
        } else {
            "input"
        };
        assert!(
            text(&out.stdout).contains(&format!("options:\n  {key} = ")),
            "{}",
            text(&out.stdout)
        );
    }
}

#[test]
fn new_python_javascript_and_c_plugins_build_and_pass_their_own_test() {
    let dir = tempfile::tempdir().unwrap();
    for lang in ["python", "js", "c"] {
        if !toolchain_available(lang) {
            continue;
        }
        for world in ["preprocessor", "postprocessor"] {
            let project = dir.path().join(format!("{lang}-{world}"));
            new_project_passes_its_test(lang, world, &project);
        }
    }
}
