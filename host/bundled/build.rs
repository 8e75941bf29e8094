//! Builds every crate of the `plugins/` workspace for `wasm32-wasip2`, the
//! way wasmtime builds its test programs: a nested `cargo build` with its own
//! target directory, so that `cargo test` and `cargo run` need no manual step.
//!
//! The target is not installed on a fresh machine and rustup will not install
//! it on demand, so this script adds it when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

/// Plugins that are test fixtures: their paths are exported for tests, but
/// they are not embedded in the `sluice` binary.
const TEST_PLUGINS_DIR: &str = "test-plugins";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir
        .join("../..")
        .canonicalize()
        .expect("workspace root");
    let plugins = root.join("plugins");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());

    for watched in ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", plugins.join(watched).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("guest-sdk").display()
    );

    let crates = plugin_crates(&plugins);
    for (_, dir, _) in &crates {
        println!("cargo:rerun-if-changed={}", dir.display());
    }

    ensure_target_installed();

    // Release builds of the host embed fully optimized (LTO) plugins; dev
    // builds (tests, `cargo run`) the same code without LTO, built faster.
    let profile = match std::env::var("PROFILE").as_deref() {
        Ok("release") => "release",
        _ => "quick",
    };
    // One folder for every build of the host: plugins are built once per
    // change, not once per host profile or feature set.
    let target_dir = plugin_target_dir(&out_dir);
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&plugins)
        .args([
            "build",
            "--profile",
            profile,
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    // The outer build's flags and target settings are for the host, not for wasm.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cargo.env_remove(var);
    }
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_PROFILE_") || key.starts_with("CARGO_CFG_") {
            cargo.env_remove(key);
        }
    }
    let status = cargo.status().expect("run cargo to build the plugins");
    assert!(
        status.success(),
        "building the plugins in {} for {TARGET} failed",
        plugins.display()
    );

    let release = target_dir.join(TARGET).join(profile);
    let mut code = String::from(
        "/// Every built plugin: (name, is a test fixture, path to the .wasm).\npub static PLUGIN_FILES: &[(&str, bool, &str)] = &[\n",
    );
    let mut embedded = String::from(
        "/// The product plugins, embedded: (name, bytes).\npub static EMBEDDED: &[(&str, &[u8])] = &[\n",
    );
    for (name, _, is_test) in &crates {
        let file = release.join(format!("{}.wasm", name.replace('-', "_")));
        let file = if file.exists() {
            file
        } else {
            release.join(format!("{name}.wasm"))
        };
        assert!(
            file.exists(),
            "plugin `{name}` produced no {}",
            file.display()
        );
        let path = file.display().to_string();
        code.push_str(&format!("    ({name:?}, {is_test}, {path:?}),\n"));
        if !is_test {
            embedded.push_str(&format!("    ({name:?}, include_bytes!({path:?})),\n"));
        }
    }
    code.push_str("];\n");
    embedded.push_str("];\n");
    std::fs::write(out_dir.join("plugins.rs"), code + &embedded).unwrap();
}

/// `<target>/wasm-plugins`, found from this build script's `OUT_DIR`
/// (`<target>/<profile>/build/<crate>-<hash>/out`, or
/// `<target>/<triple>/<profile>/...` when cross-compiling: the plugins are
/// the same wasm for every host, built once), else inside `OUT_DIR`.
fn plugin_target_dir(out_dir: &Path) -> PathBuf {
    let triple = std::env::var("TARGET").unwrap_or_default();
    out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(|build| build.parent()?.parent())
        .map(|dir| match dir.parent() {
            Some(target) if dir.file_name().is_some_and(|name| name == triple.as_str()) => target,
            _ => dir,
        })
        .map(|target| target.join("wasm-plugins"))
        .unwrap_or_else(|| out_dir.join("wasm"))
}

/// (package name, crate directory, is a test fixture) for every plugin crate.
fn plugin_crates(plugins: &Path) -> Vec<(String, PathBuf, bool)> {
    let mut crates = Vec::new();
    let mut visit = |dir: PathBuf, is_test: bool| {
        let manifest = dir.join("Cargo.toml");
        if let Ok(text) = std::fs::read_to_string(&manifest) {
            let name = text
                .lines()
                .find_map(|l| {
                    l.trim().strip_prefix("name").map(|r| {
                        r.trim_start_matches([' ', '='])
                            .trim()
                            .trim_matches('"')
                            .to_owned()
                    })
                })
                .unwrap_or_else(|| panic!("{} has no package name", manifest.display()));
            crates.push((name, dir, is_test));
        }
    };
    for entry in read_dir_sorted(plugins) {
        if entry.ends_with(TEST_PLUGINS_DIR) {
            for test in read_dir_sorted(&entry) {
                visit(test, true);
            }
        } else {
            visit(entry, false);
        }
    }
    crates
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !p.ends_with("target"))
        .collect();
    entries.sort();
    entries
}

fn ensure_target_installed() {
    let libdir = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if libdir.is_some_and(|dir| dir.join("libstd").exists() || has_std(&dir)) {
        return;
    }
    println!(
        "cargo:warning=installing the {TARGET} target with rustup (needed to build the plugins)"
    );
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status();
    match status {
        Ok(s) if s.success() => {}
        _ => panic!(
            "the {TARGET} target is missing and `rustup target add {TARGET}` failed; install it by hand"
        ),
    }
}

fn has_std(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
        })
        .unwrap_or(false)
}
