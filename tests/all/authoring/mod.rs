//! What a third-party plugin author relies on: `sluice plugin new` projects
//! that build and pass their own test (templates), the example plugins in
//! other languages giving the Rust plugin's results (examples), `sluice plugin
//! run` on sample data, `plugin inspect` from the compiled-plugin cache, a
//! plugin's output kept out of Sluice's own (commands), and pipelines whose
//! parts do not fit refused at start with one clear error (pipelines).
//!
//! The helpers they share are here.

mod commands;
mod examples;
mod pipelines;
mod templates;

use crate::common::{repo_root, shared_cache_dir};
use std::path::{Path, PathBuf};
use std::process::Command;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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

/// Where the plugin toolchains (componentize-py, jco, wit-bindgen) are
/// installed for the tests: under cargo's target folder, which CI keeps
/// between runs, so each is installed once per machine.
fn toolchain_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-toolchains")
}

/// Whether `lang`'s toolchain can be installed here (Python with venv and
/// pip; Node.js with npm; clang with a WASI sysroot); else a loud skip: CI
/// installs them all.
fn toolchain_available(lang: &str) -> bool {
    let (program, args): (&str, &[&str]) = match lang {
        "python" => ("python3", &["-c", "import venv, ensurepip"]),
        // clang, Debian's WASI sysroot and its compiler runtime for wasm32.
        "c" => (
            "sh",
            &[
                "-c",
                "clang --version && test -d /usr/include/wasm32-wasi \
                && test -f \"$(clang --target=wasm32-wasi -print-libgcc-file-name)\"",
            ],
        ),
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
