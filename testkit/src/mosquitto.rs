//! mosquitto for the tests: an open broker (anonymous clients or a
//! password file, no ACL: the worst case the protocol must survive), or the
//! shipped setup of `deploy/mosquitto/` (accounts, the dynamic-security
//! plugin's ACL, client ids bound to accounts).

use crate::{Missing, START_TIMEOUT, free_port, is_root};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A mosquitto broker: MQTT 3.1.1 and 5 on a loopback port. Open
/// ([`Mosquitto::start`], [`Mosquitto::with_users`]): no persistence (a
/// restart loses every session, as a broker replaced in a fleet does),
/// anonymous clients or a password file. Shipped ([`Mosquitto::shipped`]):
/// `deploy/mosquitto/`'s settings, its persistence included.
pub struct Mosquitto {
    dir: tempfile::TempDir,
    port: u16,
    users: Vec<(String, String)>,
    /// Started with `deploy/mosquitto/` (accounts in its plugin's file).
    shipped: bool,
    /// Its listener is TLS ([`Mosquitto::shipped_tls`]).
    tls: bool,
    /// Keeps sessions and queued messages across a graceful restart
    /// ([`Mosquitto::persistent`]).
    persistent: bool,
    child: Option<Child>,
}

impl Mosquitto {
    /// Start a broker that lets anyone connect.
    pub fn start() -> Result<Mosquitto, Missing> {
        Mosquitto::with_users(&[])
    }

    /// Start an open broker that keeps sessions and the messages queued for
    /// them across [`Mosquitto::restart_gracefully`], as a gateway's own
    /// broker does.
    pub fn persistent() -> Result<Mosquitto, Missing> {
        let mut broker = Mosquitto::new(&[])?;
        broker.persistent = true;
        broker.write_config();
        Ok(broker.started())
    }

    /// Start a broker that accepts only `users` (`(name, password)`), or
    /// anyone when empty.
    pub fn with_users(users: &[(&str, &str)]) -> Result<Mosquitto, Missing> {
        let broker = Mosquitto::new(users)?;
        broker.write_config();
        Ok(broker.started())
    }

    /// Start a broker with the shipped setup (`deploy/mosquitto/`: its
    /// `mosquitto.conf` with a loopback listener instead of its TLS one and
    /// paths in a temporary folder; accounts made by its
    /// `sluice-broker-accounts`): an account for each of `devices` and
    /// `collectors`, passwords in [`Mosquitto::password_file`].
    pub fn shipped(devices: &[&str], collectors: &[&str]) -> Result<Mosquitto, Missing> {
        Mosquitto::shipped_with(devices, collectors, None)
    }

    /// [`Mosquitto::shipped`] with its TLS listener as shipped, serving
    /// `server` (a certificate for 127.0.0.1 and localhost from
    /// [`crate::Pki::server`]): its [`Mosquitto::url`] is `mqtts://`.
    pub fn shipped_tls(
        devices: &[&str],
        collectors: &[&str],
        server: &crate::Issued,
    ) -> Result<Mosquitto, Missing> {
        Mosquitto::shipped_with(devices, collectors, Some(server))
    }

    fn shipped_with(
        devices: &[&str],
        collectors: &[&str],
        tls: Option<&crate::Issued>,
    ) -> Result<Mosquitto, Missing> {
        let mut broker = Mosquitto::new(&[])?;
        broker.shipped = true;
        broker.tls = tls.is_some();
        let plugin = dynamic_security_plugin().ok_or_else(|| {
            Missing("mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) is not installed".into())
        })?;
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto");
        let shipped = std::fs::read_to_string(deploy.join("mosquitto.conf"))
            .expect("read deploy/mosquitto/mosquitto.conf");
        let accounts = broker.dir.path().join("accounts.json");
        let tool = deploy.join("sluice-broker-accounts");
        let run = |args: &[&str]| {
            let out = Command::new("python3")
                .arg(&tool)
                .arg(&accounts)
                .args(args)
                .output()
                .expect("run sluice-broker-accounts");
            assert!(
                out.status.success(),
                "sluice-broker-accounts {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["init"]);
        let dir = broker
            .dir
            .path()
            .to_str()
            .expect("a UTF-8 temporary folder");
        if !devices.is_empty() {
            run(&[&["add-device"], devices, &["--password-dir", dir]].concat());
        }
        for name in collectors {
            run(&["add-collector", name, "--password-dir", dir]);
        }
        let mut config = String::new();
        for line in shipped.lines() {
            let setting = line.split_whitespace().next().unwrap_or("");
            match setting {
                // On loopback, with certificates made for the test (or
                // plain TCP); everything that decides who may do what is
                // the shipped file's.
                "listener" => config.push_str(&format!("listener {} 127.0.0.1\n", broker.port)),
                "certfile" | "keyfile" => {
                    if let Some(server) = tls {
                        let file = if setting == "certfile" {
                            &server.cert
                        } else {
                            &server.key
                        };
                        config.push_str(&format!("{setting} {}\n", file.display()));
                    }
                }
                "plugin" => config.push_str(&format!("plugin {}\n", plugin.display())),
                "plugin_opt_config_file" => {
                    config.push_str(&format!("plugin_opt_config_file {}\n", accounts.display()))
                }
                "persistence_location" => config.push_str(&format!(
                    "persistence_location {}/\n",
                    broker.dir.path().display()
                )),
                _ => {
                    config.push_str(line);
                    config.push('\n');
                }
            }
        }
        config.push_str(&broker.logging());
        std::fs::write(broker.dir.path().join("mosquitto.conf"), config).expect("write the config");
        Ok(broker.started())
    }

    /// The file holding `account`'s password (first line), for a broker
    /// started with [`Mosquitto::shipped`].
    pub fn password_file(&self, account: &str) -> PathBuf {
        self.dir.path().join(format!("{account}.password"))
    }

    /// `account`'s password, for a broker started with [`Mosquitto::shipped`].
    pub fn password(&self, account: &str) -> String {
        assert!(self.shipped, "only the shipped setup has accounts");
        std::fs::read_to_string(self.password_file(account))
            .expect("read the password file")
            .trim()
            .to_owned()
    }

    fn new(users: &[(&str, &str)]) -> Result<Mosquitto, Missing> {
        if Command::new("mosquitto")
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err(Missing(
                "mosquitto is not installed (apt-get install mosquitto)".into(),
            ));
        }
        Ok(Mosquitto {
            dir: tempfile::Builder::new()
                .prefix("sluice-mqtt-")
                .tempdir()
                .expect("a temporary folder"),
            port: free_port(),
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            shipped: false,
            tls: false,
            persistent: false,
            child: None,
        })
    }

    fn started(mut self) -> Mosquitto {
        self.restart();
        self
    }

    /// Logs to stderr (the broker's log file); as root, stays root (it
    /// would otherwise switch to the `mosquitto` user, who cannot read the
    /// temporary folder).
    fn logging(&self) -> String {
        let mut config = "log_dest stderr\nlog_type error\nlog_type warning\n".to_owned();
        if std::env::var_os("SLUICE_TESTKIT_MOSQUITTO_DEBUG").is_some() {
            config.push_str("log_type all\n");
        }
        if is_root() {
            config.push_str("user root\n");
        }
        config
    }

    fn write_config(&self) {
        let persistence = match self.persistent {
            true => format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                self.dir.path().display()
            ),
            false => "persistence false\n".to_owned(),
        };
        let mut config = format!(
            "listener {} 127.0.0.1\n{persistence}max_inflight_messages 0\nmax_queued_messages 100000\nset_tcp_nodelay true\n{}",
            self.port,
            self.logging()
        );
        if self.users.is_empty() {
            config.push_str("allow_anonymous true\n");
        } else {
            let file = self.dir.path().join("passwords");
            std::fs::write(&file, "").expect("write the password file");
            for (user, password) in &self.users {
                let status = Command::new("mosquitto_passwd")
                    .arg("-b")
                    .arg(&file)
                    .args([user, password])
                    .status()
                    .expect("run mosquitto_passwd");
                assert!(status.success(), "mosquitto_passwd {user}");
            }
            config.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                file.display()
            ));
        }
        std::fs::write(self.dir.path().join("mosquitto.conf"), config).expect("write the config");
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT`, or `mqtts://localhost:PORT` with TLS.
    pub fn url(&self) -> String {
        match self.tls {
            true => format!("mqtts://localhost:{}", self.port),
            false => format!("mqtt://127.0.0.1:{}", self.port),
        }
    }

    /// Stop the broker (SIGKILL: sessions and queued messages are lost).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop it with SIGTERM (it saves what it persists) and start it again.
    pub fn restart_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        self.restart();
    }

    /// Stop it if running, then start it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let log = self.dir.path().join("mosquitto.log");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let child = Command::new("mosquitto")
                .arg("-c")
                .arg(self.dir.path().join("mosquitto.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("create the broker's log"))
                .spawn()
                .expect("start mosquitto");
            self.child = Some(child);
            let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
            if let Some(Ok(None)) = self.child.as_mut().map(|c| c.try_wait()) {
                return;
            }
            // The port was still held by the old process (TIME_WAIT is no
            // obstacle: mosquitto sets SO_REUSEADDR): try again.
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The broker's process id, to measure it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where Debian (and most distributions) put mosquitto's dynamic-security
/// plugin: `/usr/lib/<triplet>/mosquitto_dynamic_security.so`.
fn dynamic_security_plugin() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .map(|dir| dir.path().join("mosquitto_dynamic_security.so"))
        .chain([PathBuf::from("/usr/lib/mosquitto_dynamic_security.so")])
        .find(|p| p.exists())
}
