//! # sluice-testkit: real servers for tests and benchmarks
//!
//! Sluice is tested against the servers fleets run, not mocks: a
//! PostgreSQL cluster ([`Postgres`]) and a mosquitto MQTT broker
//! ([`Mosquitto`]), each made in a temporary folder, listening on a free
//! loopback port, and stopped (the folder removed) when dropped. Both come
//! from Debian's packages (`postgresql`, `mosquitto`), which `.ci/run`
//! installs; without them [`Postgres::start`] and [`Mosquitto::start`]
//! return [`Missing`], and a test prints it and skips, loudly.
//!
//! A workspace binary run as the server it is ([`Listening`], with
//! [`cargo_bin`]), and certificates for it ([`Pki`]).
//!
//! And a disk that loses power ([`VolatileDisk`], in [`power`]): a folder
//! mounted through FUSE with a volatile write cache, cut at will.
//!
//! Every wait is bounded: a server that does not answer within
//! [`START_TIMEOUT`] fails the start with its log. Set
//! `SLUICE_TESTKIT_MOSQUITTO_DEBUG=1` to have mosquitto log every packet
//! (into `mosquitto.log` in its folder).

#![deny(missing_docs)]

pub mod power;
pub use power::{Cut, VolatileDisk};

mod browser;
pub use browser::{CHROMIUM_TIMEOUT, chromium, run_chromium};

mod mosquitto;
pub use mosquitto::Mosquitto;

mod process;
pub use process::Listening;

mod pki;
pub use pki::{Issued, Pki};

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for a server to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A server's programs are not installed.
#[derive(Debug)]
pub struct Missing(pub String);

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Skip the calling test with a loud message when `server` is [`Missing`].
#[macro_export]
macro_rules! or_skip {
    ($server:expr) => {
        match $server {
            Ok(server) => server,
            Err(missing) => {
                eprintln!("\n*** SKIPPED {}: {missing} ***\n", module_path!());
                return;
            }
        }
    };
}

/// A free loopback port (bound and released: another process could take
/// it in between, which a start then reports).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + START_TIMEOUT;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            panic!(
                "{what} did not listen on {addr} within {START_TIMEOUT:?}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_root() -> bool {
    // The owner of our own /proc entry is the effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A PostgreSQL cluster of its own: `initdb` in a temporary folder,
/// listening on 127.0.0.1 only (no Unix socket), trust authentication,
/// user `postgres`. Run as the `postgres` user when the tests run as root
/// (CI does; `initdb` refuses root).
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    fsync: bool,
}

impl Postgres {
    /// Make and start a cluster; `fsync` off for tests that do not crash
    /// the server (several times faster to set up and write).
    pub fn start(fsync: bool) -> Result<Postgres, Missing> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                let mut found: Vec<PathBuf> = versions
                    .flatten()
                    .map(|v| v.path().join("bin"))
                    .filter(|b| b.join("initdb").exists())
                    .collect();
                found.sort();
                found.pop()
            })
            .ok_or_else(|| {
                Missing("PostgreSQL is not installed (apt-get install postgresql)".into())
            })?;
        let dir = tempfile::Builder::new()
            .prefix("sluice-pg-")
            .tempdir()
            .expect("a temporary folder");
        let as_postgres = is_root();
        if as_postgres {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(status.success(), "chown postgres {}", dir.path().display());
        }
        let server = Postgres {
            dir,
            bin,
            port: free_port(),
            as_postgres,
            fsync,
        };
        let data = server.data();
        let out = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server.pg_ctl_start();
        Ok(server)
    }

    /// `pg_ctl start` on the cluster, waiting until it accepts connections.
    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync={} -c max_connections=200",
            self.port,
            if self.fsync { "on" } else { "off" }
        );
        let log = self.log();
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(&log)
            .args(["-o", &options, "-w", "-t", "30", "start"])
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        wait_for_port(self.port, "PostgreSQL", &log);
    }

    /// Crash the server (`pg_ctl stop -m immediate`: every process quits
    /// at once, no checkpoint, recovery from the WAL at the next start) and
    /// start it again on the same port, as a power cut or an OOM kill
    /// followed by a supervisor's restart would.
    pub fn crash_and_restart(&self) {
        self.stop_immediately();
        self.pg_ctl_start();
    }

    fn stop_immediately(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        command.stdin(Stdio::null());
        command
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Run the client `program` (`createdb`, `psql`) against this server
    /// with `args`; its standard output. Panics naming it when it fails.
    fn client(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .command(program)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A new, empty database `name`: its URL.
    pub fn database(&self, name: &str) -> String {
        self.client("createdb", &[name]);
        self.url(name)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Run `sql` in database `name` with `psql`, returning its unaligned
    /// output (for checks independent of Sluice's own client).
    pub fn psql(&self, name: &str, sql: &str) -> String {
        self.client(
            "psql",
            &["-d", name, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        )
    }

    /// The server's process id (its `postmaster.pid`), to measure it.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_immediately();
    }
}

/// The path of binary `bin` of workspace package `package`, built first
/// (`cargo build -p PACKAGE --bin BIN`, with `features`) into the target
/// folder of the calling test: a no-op when `cargo test --workspace` built
/// it already. For tests of a binary that is another package's (cargo hands
/// a test only its own package's binaries). Panics with cargo's output when
/// the build fails.
pub fn cargo_bin(package: &str, bin: &str, features: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in <target>/<profile>/deps");
    let mut build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    build
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .env("CARGO_TARGET_DIR", dir.parent().expect("<target>"));
    if !features.is_empty() {
        build.args(["--features", &features.join(",")]);
    }
    if dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    // Cargo describes the calling test's package to it in these; a build
    // script that watches one (ring's does) would see them change between
    // this nested build and the user's next command, and both would rebuild
    // it and everything above it.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|p| name.starts_with(p))
        {
            build.env_remove(name.as_ref());
        }
    }
    let out = build.output().expect("run cargo");
    assert!(
        out.status.success(),
        "cargo build -p {package} --bin {bin} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX))
}

/// `promtool check metrics` (Debian package `prometheus`) on `text`, in the
/// Prometheus text format: `Ok(Err(its complaints))` when it finds any,
/// [`Missing`] when promtool is not installed.
pub fn promtool_check_metrics(text: &str) -> Result<Result<(), String>, Missing> {
    use std::io::Write;
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return Err(Missing(format!(
                "promtool (Debian package `prometheus`): {e}"
            )));
        }
    };
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    Ok(match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    })
}
