//! The upstream tier the simulated devices talk to: the collector
//! processes (started, SIGKILLed and restarted on the same port) and the
//! CPU they and their neighbours use.

use anyhow::Context;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start a collector: the same flags for each of them.
pub struct Collectors {
    /// The `sluice-collector` binary.
    pub bin: PathBuf,
    /// The PostgreSQL URL they share.
    pub db: String,
    /// The devices' token file.
    pub tokens: PathBuf,
    /// The key acknowledgements are signed with.
    pub ack_key: PathBuf,
    /// The collectors' broker password (account `collector`).
    pub mqtt_password_file: PathBuf,
    /// The broker's URL.
    pub broker: String,
    /// `--max-concurrent-batches`.
    pub concurrent_batches: usize,
    /// `--db-pool-size`.
    pub pool: u32,
}

/// One running collector.
pub struct Collector {
    child: Child,
    port: u16,
}

impl Collectors {
    /// Start a collector listening on 127.0.0.1:`port`. A port just left
    /// by a killed collector may take a moment to be free again: tried for
    /// up to 30 s.
    pub fn start(&self, port: u16) -> anyhow::Result<Collector> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_start(port) {
                Ok(collector) => return Ok(collector),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("collector on port {port} did not start ({e:#}); again");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn try_start(&self, port: u16) -> anyhow::Result<Collector> {
        let mut child = Command::new(&self.bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--db", &self.db, "--mqtt", &self.broker])
            .arg("--tokens")
            .arg(&self.tokens)
            .arg("--ack-key")
            .arg(&self.ack_key)
            .args(["--mqtt-username", "collector", "--mqtt-device-from-topic"])
            .arg("--mqtt-password-file")
            .arg(&self.mqtt_password_file)
            .args([
                "--max-concurrent-batches",
                &self.concurrent_batches.to_string(),
            ])
            .args(["--db-pool-size", &self.pool.to_string()])
            .args([
                "--max-connections",
                "2000",
                "--operator-token",
                "bench-operator",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let Some(Ok(first)) = lines.next() else {
            let _ = child.kill();
            let status = child.wait()?;
            anyhow::bail!("the collector said nothing and exited ({status})");
        };
        anyhow::ensure!(
            first.contains(&format!("http://127.0.0.1:{port}")),
            "the collector's first line does not name port {port}: {first}"
        );
        std::thread::spawn(move || for _ in lines {});
        Ok(Collector { child, port })
    }
}

impl Collector {
    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL it (no shutdown of any kind) and wait for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its port, to start the next one on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

/// CPU time (user + system) of processes and their children that are
/// still running, in seconds, from /proc.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0u64;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces).
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ppid: u32 = fields.get(1).and_then(|f| f.parse().ok()).unwrap_or(0);
        if pids.contains(&pid) || pids.contains(&ppid) {
            let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
            let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
            total += utime + stime;
        }
    }
    total as f64 / ticks
}
