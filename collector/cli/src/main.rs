//! `sluice-collector`: receive results from Sluice devices into SQLite or PostgreSQL.

mod operator;
mod reload;

use clap::Parser;
use sluice_collector_core::mqtt::MqttSettings;
use sluice_collector_core::store::PoolOptions;
use sluice_collector_core::{Limits, Serving, Store, Tls, TlsFiles, TokenTable, Tokens};
use sluice_protocol::keys::{PublicKey, SecretKey};
use std::path::PathBuf;

/// Receive results from Sluice devices (HTTP, and an MQTT broker with
/// --mqtt) and store each exactly once, in a SQLite file or a PostgreSQL
/// database several collectors share. Devices authenticate with their own
/// bearer token.
#[derive(Parser)]
#[command(
    name = "sluice-collector",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on, e.g. 0.0.0.0:8480 (port 0: any free port).
    #[arg(long, required = true)]
    listen: Option<String>,
    /// Where results go: a SQLite file (created if missing) or a
    /// PostgreSQL URL, `postgres://user:password@host:port/database`
    /// (several collectors may share it; the schema is created or migrated
    /// at start). Also read from SLUICE_COLLECTOR_DB, to keep a password
    /// out of the process list.
    #[arg(
        long,
        required = true,
        env = "SLUICE_COLLECTOR_DB",
        hide_env_values = true
    )]
    db: Option<String>,
    /// Most PostgreSQL connections this collector opens.
    #[arg(long, default_value_t = PoolOptions::default().max_connections)]
    db_pool_size: u32,
    /// A file of `DEVICE=TOKEN` lines (`#` comments). Read again on SIGHUP
    /// (with --operator-token-file): a token removed stops working at once.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// A device's token, `DEVICE=TOKEN`; repeatable.
    #[arg(long = "token", value_parser = parse_pair)]
    token: Vec<(String, String)>,
    /// A file holding the operator's token (the fleet API, the dashboard,
    /// /metrics); must differ from every device token.
    #[arg(long)]
    operator_token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM, the server's first);
    /// needs --tls-key. Read again on SIGHUP and when the files change.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) whose client certificates identify devices
    /// (mutual TLS): a device presenting one is the device its certificate
    /// names, without a token. Needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// A file of named API tokens, `NAME:ROLE=TOKEN` per line (`ROLE`
    /// `viewer` or `operator`, `#` comments): the operator API and the
    /// audit trail's names. Read again on SIGHUP.
    #[arg(long)]
    api_tokens: Option<PathBuf>,
    /// A public key the fleet's devices pin for bundles
    /// (`bundles.trusted_keys`); repeatable. The operator API stores only
    /// bundles one of them signed.
    #[arg(long)]
    bundle_key: Vec<String>,
    /// The operator's token itself (visible in the process list: prefer
    /// --operator-token-file).
    #[arg(long, conflicts_with = "operator_token_file")]
    operator_token: Option<String>,
    /// The key this collector signs its acknowledgements with
    /// (`sluice-collector ack-key --key FILE` makes one and prints the
    /// public key devices pin in `sync.ack_keys`). Collectors sharing a
    /// database share the key. Without it answers are unsigned: devices
    /// that pin keys (every MQTT device) delete nothing on them.
    #[arg(long)]
    ack_key: Option<PathBuf>,
    /// Also take batches from this MQTT broker, `mqtt://HOST:PORT` or
    /// `mqtts://HOST:PORT`, on a shared subscription (several collectors
    /// split the load).
    #[arg(long)]
    mqtt: Option<String>,
    /// The broker's username.
    #[arg(long, requires = "mqtt")]
    mqtt_username: Option<String>,
    /// A file holding the broker password (first line).
    #[arg(long, requires = "mqtt_username")]
    mqtt_password_file: Option<PathBuf>,
    /// PEM certificate authorities for mqtts:// (default: the web's roots).
    #[arg(long, requires = "mqtt")]
    mqtt_ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mqtts:// client authentication.
    #[arg(long, requires = "mqtt_client_key_file")]
    mqtt_client_cert_file: Option<PathBuf>,
    /// PEM private key of --mqtt-client-cert-file.
    #[arg(long, requires = "mqtt_client_cert_file")]
    mqtt_client_key_file: Option<PathBuf>,
    /// The shared subscription group collectors join.
    #[arg(long, default_value = sluice_protocol::mqtt::DEFAULT_GROUP)]
    mqtt_group: String,
    /// The first topic level.
    #[arg(long, default_value = sluice_protocol::mqtt::DEFAULT_PREFIX)]
    mqtt_topic_prefix: String,
    /// This collector's MQTT client id (default: random).
    #[arg(long)]
    mqtt_client_id: Option<String>,
    /// Take a batch that carries no bearer token as the batch of the
    /// device its topic names. Only with a broker whose accounts and ACL
    /// let each device publish only to its own topic (deploy/mosquitto/):
    /// then no device token travels through the broker.
    #[arg(long, requires = "mqtt")]
    mqtt_device_from_topic: bool,
    /// Batches the broker may hand this collector before it answers (MQTT 5
    /// receive maximum); each at most --max-body-bytes.
    #[arg(long, default_value_t = sluice_collector_core::mqtt::DEFAULT_RECEIVE_MAXIMUM)]
    mqtt_receive_maximum: u16,
    /// Most MQTT batches waiting for a permit (besides half of
    /// --max-concurrent-batches in progress); past it a batch is answered
    /// 503 with retry-after-ms and dropped.
    #[arg(long, default_value_t = Limits::DEFAULT.mqtt_max_waiting)]
    mqtt_max_waiting: usize,
    /// Log filter, e.g. `info`, `sluice_collector=debug`; RUST_LOG if not given.
    #[arg(long, env = "RUST_LOG", default_value = "warn")]
    log: String,
    /// Largest request body read (as sent, compressed), in bytes; past it: 413.
    #[arg(long, default_value_t = Limits::DEFAULT.max_body_bytes)]
    max_body_bytes: usize,
    /// Largest bundle an operator uploads, in bytes; past it: 413.
    #[arg(long, default_value_t = Limits::DEFAULT.max_bundle_bytes)]
    max_bundle_bytes: usize,
    /// Largest batch after decompression, in bytes; past it: 413.
    #[arg(long, default_value_t = Limits::DEFAULT.max_decompressed_bytes)]
    max_decompressed_bytes: usize,
    /// Most records in one batch; past it: 413.
    #[arg(long, default_value_t = Limits::DEFAULT.max_batch_records)]
    max_batch_records: usize,
    /// Most batches read, decoded and stored at once; past it: 503 with Retry-After.
    #[arg(long, default_value_t = Limits::DEFAULT.max_concurrent_batches)]
    max_concurrent_batches: usize,
    /// Most open connections; past it new ones wait in the listen queue.
    #[arg(long, default_value_t = Limits::DEFAULT.max_connections)]
    max_connections: usize,
    /// Longest wait for a request's headers, also the idle keep-alive timeout (e.g. 10s).
    #[arg(long, default_value_t = Limits::DEFAULT.header_read_timeout.into())]
    header_timeout: humantime::Duration,
    /// Longest time to read a batch's body (e.g. 60s); past it: 408.
    #[arg(long, default_value_t = Limits::DEFAULT.body_read_timeout.into())]
    body_timeout: humantime::Duration,
    /// Most results one GET .../results returns.
    #[arg(long, default_value_t = Limits::DEFAULT.max_results_page)]
    max_results_page: u32,
    /// Longest wait on shutdown for requests in flight (e.g. 10s).
    #[arg(long, default_value_t = Limits::DEFAULT.shutdown_grace.into())]
    shutdown_grace: humantime::Duration,
    /// How long the fleet view keeps per-minute throughput, backlog and drift windows (e.g. 7d).
    #[arg(long, default_value_t = Limits::DEFAULT.fleet_retention.into())]
    fleet_retention: humantime::Duration,
    /// A device without an accepted batch for this long is shown stale (e.g. 15m).
    #[arg(long, default_value_t = Limits::DEFAULT.stale_after.into())]
    stale_after: humantime::Duration,
    /// How long a dashboard session cookie is accepted after `?token=` set it (e.g. 7d).
    #[arg(long, default_value_t = Limits::DEFAULT.session_lifetime.into())]
    session_lifetime: humantime::Duration,
    /// Mark the dashboard cookie Secure on every request: for a TLS proxy
    /// that does not send `X-Forwarded-Proto: https` (one that does gets
    /// Secure cookies without this flag).
    #[arg(long)]
    secure_cookie: bool,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Signed bundles kept by a collector for rollouts.
    #[command(subcommand)]
    Bundle(operator::BundleCommand),
    /// Device groups (tags) to roll out to.
    #[command(subcommand)]
    Group(operator::GroupCommand),
    /// Staged rollout of a signed bundle to devices (they poll for it and
    /// verify it against the keys they pin), with a failure threshold and
    /// stage deadlines; revert to an earlier version.
    #[command(subcommand)]
    Rollout(operator::RolloutCommand),
    /// The audit trail of every change made through the operator API.
    Audit(operator::AuditArgs),
    /// Make the acknowledgement signing key at `--key` if there is none
    /// (readable by its owner only), and print its public key: the line
    /// devices pin in `sync.ack_keys`.
    AckKey {
        /// The secret key file.
        #[arg(long)]
        key: PathBuf,
    },
}

impl Cli {
    /// The tokens the flags and files give (read again on SIGHUP).
    fn tokens(&self) -> anyhow::Result<Tokens> {
        let mut tokens = match &self.tokens {
            Some(file) => Tokens::from_file(file)?,
            None => Tokens::default(),
        };
        for (device, secret) in &self.token {
            tokens.insert(device, secret)?;
        }
        if tokens.is_empty() {
            anyhow::bail!("no device tokens: give --tokens FILE or --token DEVICE=TOKEN");
        }
        // After the device tokens: refused if it is one of them.
        if let Some(file) = &self.operator_token_file {
            tokens.set_operator_file(file)?;
        }
        if let Some(token) = &self.operator_token {
            tokens.set_operator(token)?;
        }
        if let Some(file) = &self.api_tokens {
            tokens.add_api_file(file)?;
        }
        Ok(tokens)
    }

    /// HTTPS, when --tls-cert is given.
    fn tls(&self) -> anyhow::Result<Option<std::sync::Arc<Tls>>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls_client_ca.clone(),
        };
        Ok(Some(std::sync::Arc::new(Tls::load(files)?)))
    }

    fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_decompressed_bytes: self.max_decompressed_bytes,
            max_bundle_bytes: self.max_bundle_bytes,
            max_batch_records: self.max_batch_records,
            max_concurrent_batches: self.max_concurrent_batches,
            mqtt_max_waiting: self.mqtt_max_waiting,
            max_connections: self.max_connections,
            header_read_timeout: self.header_timeout.into(),
            body_read_timeout: self.body_timeout.into(),
            max_results_page: self.max_results_page,
            shutdown_grace: self.shutdown_grace.into(),
            fleet_retention: self.fleet_retention.into(),
            stale_after: self.stale_after.into(),
            session_lifetime: self.session_lifetime.into(),
            secure_cookie: self.secure_cookie,
        }
    }
}

impl Cli {
    fn mqtt(&self) -> Option<MqttSettings> {
        let url = self.mqtt.as_ref()?;
        let mut settings = MqttSettings::new(url);
        settings.broker = sluice_mqtt::Broker {
            username: self.mqtt_username.clone(),
            password_file: self.mqtt_password_file.clone(),
            ca_file: self.mqtt_ca_file.clone(),
            client_cert_file: self.mqtt_client_cert_file.clone(),
            client_key_file: self.mqtt_client_key_file.clone(),
            topic_prefix: self.mqtt_topic_prefix.clone(),
            ..settings.broker
        };
        settings.group = self.mqtt_group.clone();
        settings.receive_maximum = self.mqtt_receive_maximum;
        settings.device_from_topic = self.mqtt_device_from_topic;
        if let Some(id) = &self.mqtt_client_id {
            settings.client_id = id.clone();
        }
        Some(settings)
    }
}

fn parse_pair(pair: &str) -> Result<(String, String), String> {
    Tokens::parse_pair(pair).map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Each cause once (see `error_text`), not anyhow's `{:#}`.
            eprintln!("error: {}", sluice_collector_core::error_text(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The store the collector serves from.
fn open(db: &str, pool: u32) -> Result<Store, sluice_collector_core::StoreError> {
    Store::open_any(
        db,
        &PoolOptions {
            max_connections: pool,
            ..PoolOptions::default()
        },
    )
}

fn run(mut cli: Cli) -> anyhow::Result<()> {
    match cli.command.take() {
        Some(Command::Bundle(command)) => return operator::bundle(command),
        Some(Command::Group(command)) => return operator::group(command),
        Some(Command::Rollout(command)) => return operator::rollout(command),
        Some(Command::Audit(args)) => return operator::audit(args),
        Some(Command::AckKey { key }) => return ack_key(&key),
        None => {}
    }
    let listen = cli.listen.clone().expect("required without a subcommand");
    let db = cli.db.clone().expect("required without a subcommand");
    let tokens = TokenTable::new(cli.tokens()?);
    let tls = cli.tls()?;
    let limits = cli.limits();
    let mqtt = cli.mqtt();
    let bundle_keys = cli
        .bundle_key
        .iter()
        .map(|k| PublicKey::parse(k).map_err(|e| anyhow::anyhow!("--bundle-key {k}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    limits.check().map_err(anyhow::Error::msg)?;
    let mut store = open(&db, cli.db_pool_size)?;
    match &cli.ack_key {
        Some(file) => store.set_ack_key(SecretKey::read(file).map_err(anyhow::Error::msg)?),
        None => eprintln!(
            "sluice-collector: acknowledgements are not signed (no --ack-key): devices that pin keys refuse them"
        ),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sluice-collector")
        .enable_all()
        .build()?;
    let reloader = reload::on_signal(cli, tokens.clone(), tls.clone());
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        println!(
            "sluice-collector: listening on {}://{}, storing into {}",
            if tls.is_some() { "https" } else { "http" },
            listener.local_addr()?,
            store.location()
        );
        use std::io::Write;
        std::io::stdout().flush()?;
        if let Some(settings) = &mqtt {
            println!(
                "sluice-collector: taking batches from {} ({})",
                settings.url,
                sluice_protocol::mqtt::shared_batches(
                    &settings.broker.topic_prefix,
                    &settings.group
                )
            );
        }
        std::io::stdout().flush()?;
        tokio::spawn(reloader);
        let serving = Serving {
            mqtt,
            tls,
            bundle_keys,
        };
        sluice_collector_core::serve_all(
            listener,
            store,
            tokens,
            limits,
            serving,
            shutdown_signal(),
        )
        .await?;
        anyhow::Ok(())
    })?;
    // Do not wait for connections that a client left hanging.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}

/// `sluice-collector ack-key`: the key at `path`, made if missing; its
/// public half printed.
fn ack_key(path: &std::path::Path) -> anyhow::Result<()> {
    if !path.exists() {
        SecretKey::generate()
            .write_new(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        eprintln!("sluice-collector: made {}", path.display());
    }
    let key = SecretKey::read(path).map_err(anyhow::Error::msg)?;
    println!("{}", key.public().to_text());
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
