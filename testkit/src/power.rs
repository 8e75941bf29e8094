//! A disk that loses power: [`VolatileDisk`] mounts a folder through a FUSE
//! filesystem (`volatile_fs.py` beside this crate) that behaves like a disk
//! with a volatile write cache: written data reaches the folder only when
//! its file is fsynced, while creating, renaming and deleting reach it at
//! once. [`VolatileDisk::cut`] is the power cut: unsynced data is dropped
//! (or, torn, a random half of its blocks written through, leaving files of
//! the right length with zeroed blocks inside), and the mount goes away.
//! Mount the folder again and it holds what a real disk could after power
//! loss.
//!
//! It needs `/dev/fuse`, `fusermount3` (Debian's `fuse3`) and Python 3 with
//! `venv`; `mfusepy` (pinned) is installed from PyPI into a virtual
//! environment on first use. Without them [`VolatileDisk::mount`] returns
//! [`Missing`].

use crate::Missing;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The filesystem, as a Python program.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/volatile_fs.py");

/// The FUSE binding the script uses, pinned.
const MFUSEPY: &str = "mfusepy==3.1.1";

/// Longest wait for a mount, a command's answer or the unmount.
const WAIT: Duration = Duration::from_secs(30);

/// What a power cut does to the data not yet fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// All of it is lost.
    Clean,
    /// A random half of its blocks (chosen by the seed) reaches the disk,
    /// the rest is lost: files of the right length with zeros inside.
    Torn(u64),
}

/// A folder mounted through the volatile-cache filesystem.
pub struct VolatileDisk {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    mountpoint: PathBuf,
}

impl VolatileDisk {
    /// Mount `backing` at `mountpoint` (both existing folders), with the
    /// Python environment kept in `python_env` (made on first use).
    pub fn mount(python_env: &Path, backing: &Path, mountpoint: &Path) -> Result<Self, Missing> {
        if !Path::new("/dev/fuse").exists() {
            return Err(Missing("no /dev/fuse: FUSE is not available here".into()));
        }
        if Command::new("fusermount3")
            .arg("--version")
            .output()
            .is_err()
        {
            return Err(Missing("no fusermount3 (Debian package fuse3)".into()));
        }
        let python = python(python_env)?;
        let mut child = Command::new(python)
            .arg(SCRIPT)
            .arg(backing)
            .arg(mountpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Missing(format!("cannot run {SCRIPT}: {e}")))?;
        let lines = read_lines(child.stdout.take().expect("piped"));
        let mut disk = VolatileDisk {
            stdin: child.stdin.take(),
            child,
            lines,
            mountpoint: mountpoint.to_owned(),
        };
        match disk.lines.recv_timeout(WAIT) {
            Ok(line) if line == "ready" => Ok(disk),
            other => {
                let _ = disk.child.kill();
                Err(Missing(format!(
                    "the volatile filesystem did not mount at {} ({other:?}): is FUSE allowed in this container?",
                    mountpoint.display()
                )))
            }
        }
    }

    /// How many files and blocks hold data not yet fsynced.
    pub fn unsynced(&mut self) -> (u64, u64) {
        let line = self.command("stats");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["unsynced", files, "files", blocks, "blocks"] => {
                (files.parse().unwrap(), blocks.parse().unwrap())
            }
            _ => panic!("volatile filesystem: unexpected answer {line:?}"),
        }
    }

    /// Cut the power: unsynced data is lost (`cut` says how), the mount
    /// goes away. Whatever still had files open there gets errors. Returns
    /// what was lost, as the filesystem counted it.
    pub fn cut(mut self, cut: Cut) -> String {
        let answer = self.command(&match cut {
            Cut::Clean => "cut clean".to_owned(),
            Cut::Torn(seed) => format!("cut torn {seed}"),
        });
        self.stdin = None;
        self.wait_gone();
        answer
    }

    fn command(&mut self, command: &str) -> String {
        let stdin = self.stdin.as_mut().expect("mounted");
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .expect("the volatile filesystem takes commands");
        self.lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("volatile filesystem: no answer to {command:?}: {e}"))
    }

    /// Wait (bounded) for the process to end, then make sure nothing is
    /// mounted any more.
    fn wait_gone(&mut self) {
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mountpoint)
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for VolatileDisk {
    fn drop(&mut self) {
        if self.stdin.take().is_some() {
            // End of input: the filesystem unmounts itself.
            self.wait_gone();
        }
    }
}

/// The lines of `stdout`, as they come.
fn read_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The Python of the environment at `dir`, made (and `mfusepy` installed)
/// if it is not there yet. Made in a temporary folder and renamed, so that
/// tests starting at once never see half an environment.
fn python(dir: &Path) -> Result<PathBuf, Missing> {
    let python = dir.join("bin/python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import mfusepy"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return Ok(python);
    }
    let partial = PathBuf::from(format!("{}.partial-{}", dir.display(), std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let run = |command: &mut Command, what: &str| -> Result<(), Missing> {
        let out = command
            .output()
            .map_err(|e| Missing(format!("{what}: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Missing(format!(
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&partial),
        "python3 -m venv (Debian package python3-venv)",
    )?;
    run(
        Command::new(partial.join("bin/pip")).args(["install", "--quiet", MFUSEPY]),
        &format!("pip install {MFUSEPY}"),
    )?;
    if let Some(parent) = dir.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    // Another test may have finished first: then its environment stays.
    if std::fs::rename(&partial, dir).is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    if ready(&python) {
        Ok(python)
    } else {
        Err(Missing(format!(
            "{MFUSEPY} does not import in {}",
            dir.display()
        )))
    }
}
