//! Headless Chromium (Debian's `chromium`), for tests of the dashboard's
//! pages as a browser renders them.

use crate::Missing;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one Chromium run may take.
pub const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// `chromium` or `chromium-browser` on PATH.
pub fn chromium() -> Result<PathBuf, Missing> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            Missing("no `chromium` or `chromium-browser` on PATH (Debian package `chromium`; .ci/run installs it)".into())
        })
}

/// Run headless Chromium with `args` on `url`, in the browser profile
/// `profile` (cookies persist between runs sharing it), killed after
/// [`CHROMIUM_TIMEOUT`]; its stdout.
pub fn run_chromium(chromium: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).ok();
        out
    });
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("chromium did not finish within {CHROMIUM_TIMEOUT:?}: {args:?} {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}
