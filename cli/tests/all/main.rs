//! The `sluice` command's own tests: what it parses and how it refuses
//! what it cannot. What the commands do is tested at the top level
//! (`tests/`, against real collectors and servers).

use std::process::Command;

fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .expect("run sluice")
}

#[test]
fn the_version_is_the_crates() {
    let out = sluice(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sluice {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn an_unknown_command_is_refused_by_name_with_status_2() {
    let out = sluice(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("frobnicate"), "{err}");
}

#[test]
fn a_missing_required_flag_is_named() {
    let out = sluice(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--config"), "{err}");
}

#[test]
fn a_configuration_that_cannot_be_read_names_its_path() {
    let out = sluice(&["run", "--config", "/nonexistent/sluice.toml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/sluice.toml"), "{err}");
}
