//! What stops `sluice` before it does anything, and how it says so: a
//! configuration without pipelines, a data dir it cannot write.

use std::path::Path;
use std::process::{Command, Output};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn run_refuses_a_config_without_pipelines_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "").unwrap();
    let mut child = Command::new(crate::common::sluice_bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Without the check it starts, says it is ready and runs for ever.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("`sluice run` of an empty config is still running");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("sluice.toml") && err.contains("pipelines: no pipeline is configured"),
        "{err}"
    );
    assert!(
        !dir.path().join("sluice-data").exists(),
        "refused before making a data dir"
    );
}

#[test]
fn a_data_dir_the_agent_cannot_write_is_reported_with_the_permission_error_and_the_path() {
    use std::os::unix::fs::PermissionsExt;
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // Root writes through permission bits: as root (as CI runs), the
    // command runs as `nobody`, as itself otherwise.
    let root = unsafe { libc::geteuid() } == 0;
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    chmod(&data, 0o555);
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "[device]\nid = \"gw\"\ndata_dir = \"data\"\n").unwrap();
    chmod(&config, 0o644);
    let mut command = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(crate::common::sluice_bin());
        c
    } else {
        Command::new(crate::common::sluice_bin())
    };
    let out = command
        .args(["outbox", "requeue", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("Permission denied")
            && err.contains(&data.display().to_string())
            && !err.contains("No such file or directory"),
        "{err}"
    );
}
