//! The operator commands (`bundle`, `group`, `rollout`, `audit`): clients
//! of a collector's operator API, so they work from any machine with the
//! collector's URL and an API token (`--url`, `--token-file`, or
//! `SLUICE_COLLECTOR_URL` and `SLUICE_API_TOKEN_FILE`).

use anyhow::{Context, bail};
use sluice_protocol::keys::SecretKey;
use sluice_protocol::operator::{
    AuditPage, BundleInfo, BundleList, Group, GroupDevices, GroupList, OnDeadline, Policy, Rollout,
    RolloutList, RolloutRequest, RolloutState, Window,
};
use sluice_protocol::paths::operator as paths;
use std::path::PathBuf;
use std::time::Duration;

/// Where the collector is and who is asking.
#[derive(clap::Args)]
pub(crate) struct Api {
    /// The collector's base URL, e.g. https://collector.example:8480.
    #[arg(long, env = "SLUICE_COLLECTOR_URL")]
    url: String,
    /// A file holding an API token (viewer for reading, operator for changes).
    #[arg(long, env = "SLUICE_API_TOKEN_FILE")]
    token_file: PathBuf,
    /// PEM certificate authorities for an https:// URL (default: the system's).
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub(crate) enum BundleCommand {
    /// Upload a signed bundle file: refused unless a key the fleet pins signed it.
    Upload {
        #[command(flatten)]
        api: Api,
        /// The bundle file (`sluice bundle build`, then `sign`).
        bundle: PathBuf,
    },
    /// The bundles the collector keeps.
    List {
        #[command(flatten)]
        api: Api,
    },
}

#[derive(clap::Subcommand)]
pub(crate) enum GroupCommand {
    /// Make a group exactly these devices (a device may be in several groups).
    Set {
        #[command(flatten)]
        api: Api,
        /// The group's name.
        name: String,
        /// Its devices.
        #[arg(long, value_delimiter = ',', required = true)]
        devices: Vec<String>,
    },
    /// Every group with its devices.
    List {
        #[command(flatten)]
        api: Api,
    },
}

/// Which devices, how many per stage, and the policy.
#[derive(clap::Args)]
pub(crate) struct Target {
    /// The devices, in rollout order.
    #[arg(long, value_delimiter = ',', conflicts_with = "group")]
    devices: Option<Vec<String>>,
    /// Or a group's devices.
    #[arg(long, required_unless_present = "devices")]
    group: Option<String>,
    /// Share of the devices per stage, percent, increasing to 100.
    #[arg(long, value_delimiter = ',', default_value = "5,50,100")]
    stages: Vec<u32>,
    /// Halt when more than this share (percent) of the devices offered so far failed.
    #[arg(long, default_value_t = 0)]
    max_failed_percent: u32,
    /// ... and at least this many failed.
    #[arg(long, default_value_t = 1)]
    min_failed: u32,
    /// How long a stage may take (e.g. 30m); default: it waits for every device.
    #[arg(long)]
    stage_deadline: Option<humantime::Duration>,
    /// What a device late for the deadline counts as: `skip` (it catches up
    /// later) or `fail`.
    #[arg(long, default_value = "skip", value_parser = ["skip", "fail"])]
    on_deadline: String,
    /// Each device watches the version for at least this many items
    /// before committing it (more than its own bundles.probation_min_items).
    #[arg(long, default_value_t = 0)]
    min_probation_items: u64,
    /// ... and at least this long (e.g. 10m).
    #[arg(long)]
    min_probation: Option<humantime::Duration>,
    /// Offer nothing before this time (RFC 3339, e.g. 2026-12-24T02:00:00Z).
    #[arg(long)]
    start_at: Option<humantime::Timestamp>,
    /// Offer the version only within this daily window, UTC, e.g. 02:00-05:00.
    #[arg(long)]
    window: Option<String>,
}

#[derive(clap::Subcommand)]
pub(crate) enum RolloutCommand {
    /// Start offering an uploaded bundle (or upload it first with --bundle), stage by stage.
    Start {
        #[command(flatten)]
        api: Api,
        /// Upload this bundle file and roll it out.
        #[arg(long, conflicts_with_all = ["name", "version"])]
        bundle: Option<PathBuf>,
        /// Or roll out this uploaded bundle's name ...
        #[arg(long, requires = "version", required_unless_present = "bundle")]
        name: Option<String>,
        /// ... and version.
        #[arg(long, requires = "name")]
        version: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Send devices back to an earlier version: its files again under a new,
    /// higher version signed with --key (a signed revert, not a replay),
    /// uploaded and rolled out like any bundle.
    Revert {
        #[command(flatten)]
        api: Api,
        /// The bundle's name.
        #[arg(long)]
        name: String,
        /// The earlier version to go back to (uploaded before).
        #[arg(long)]
        to: u64,
        /// The signing key (one the devices pin).
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Every rollout (or one) with each device's progress.
    Status {
        #[command(flatten)]
        api: Api,
        /// Only this rollout.
        id: Option<i64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Offer the version to no further device until resumed.
    Pause {
        #[command(flatten)]
        api: Api,
        id: i64,
    },
    /// Go on with a paused rollout (its stage deadline counts again from now).
    Resume {
        #[command(flatten)]
        api: Api,
        id: i64,
    },
    /// Stop a rollout for good (devices that installed keep the version).
    Abort {
        #[command(flatten)]
        api: Api,
        id: i64,
    },
}

/// The audit trail: every change made through the API, who made it, when
/// and from where.
#[derive(clap::Args)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    api: Api,
    /// Only entries after this id.
    #[arg(long, default_value_t = 0)]
    after: i64,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

/// A blocking client of one collector.
struct Client {
    http: reqwest::blocking::Client,
    url: String,
    token: String,
}

impl Api {
    fn client(&self) -> anyhow::Result<Client> {
        let token = std::fs::read_to_string(&self.token_file)
            .with_context(|| {
                format!(
                    "cannot read the API token file {}",
                    self.token_file.display()
                )
            })?
            .trim()
            .to_owned();
        let mut http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(660))
            .connect_timeout(Duration::from_secs(10));
        if let Some(ca) = &self.ca_file {
            let pem = sluice_serve::read_pem(ca)?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not PEM certificates", ca.display()))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(Client {
            http: http.build()?,
            url: self.url.trim_end_matches('/').to_owned(),
            token,
        })
    }
}

impl Client {
    /// Send `request` to `path`; the answer's JSON, or the collector's
    /// error message.
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        build: impl FnOnce(reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.url);
        let response = build(
            self.http
                .request(method.clone(), &url)
                .bearer_auth(&self.token),
        )
        .send()
        .with_context(|| format!("{method} {url}"))?;
        let status = response.status();
        let body = response
            .bytes()
            .with_context(|| format!("{method} {url}"))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<sluice_protocol::ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            bail!("{method} {url}: {status}: {message}");
        }
        serde_json::from_slice(&body).with_context(|| format!("{method} {url}: unexpected answer"))
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(reqwest::Method::GET, path, |r| r)
    }

    fn upload(&self, body: Vec<u8>) -> anyhow::Result<BundleInfo> {
        self.call(reqwest::Method::POST, paths::BUNDLES, |r| {
            r.header("content-type", "application/octet-stream")
                .body(body)
        })
    }

    fn start(&self, name: String, version: u64, target: Target) -> anyhow::Result<Rollout> {
        let request = RolloutRequest {
            name,
            version,
            devices: target.devices,
            group: target.group,
            stages: target.stages,
            policy: Policy {
                max_failed_percent: target.max_failed_percent,
                min_failed: target.min_failed,
                stage_deadline_ms: target
                    .stage_deadline
                    .map(|d| Duration::from(d).as_millis().min(u64::MAX as u128) as u64),
                on_deadline: if target.on_deadline == "fail" {
                    OnDeadline::Fail
                } else {
                    OnDeadline::Skip
                },
                min_probation_items: target.min_probation_items,
                min_probation_secs: target
                    .min_probation
                    .map_or(0, |d| Duration::from(d).as_secs()),
                start_at_ms: target.start_at.map(|t| {
                    std::time::SystemTime::from(t)
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64)
                }),
                window: target
                    .window
                    .map(|w| match w.split_once('-') {
                        Some((from, to)) => Ok(Window {
                            from: from.trim().to_owned(),
                            to: to.trim().to_owned(),
                        }),
                        None => Err(anyhow::anyhow!("--window {w}: give HH:MM-HH:MM (UTC)")),
                    })
                    .transpose()?,
            },
        };
        self.call(reqwest::Method::POST, paths::ROLLOUTS, |r| r.json(&request))
    }
}

pub(crate) fn bundle(command: BundleCommand) -> anyhow::Result<()> {
    match command {
        BundleCommand::Upload { api, bundle } => {
            let body = std::fs::read(&bundle).with_context(|| bundle.display().to_string())?;
            let info = api.client()?.upload(body)?;
            println!(
                "bundle `{}` version {} stored ({} bytes, SHA-256 {}, signed by {})",
                info.name,
                info.version,
                info.bytes,
                info.sha256,
                info.signed_by.join(", ")
            );
        }
        BundleCommand::List { api } => {
            let list: BundleList = api.client()?.get(paths::BUNDLES)?;
            for b in list.bundles {
                println!(
                    "{}/{}\t{} bytes\texpires {}{}",
                    b.name,
                    b.version,
                    b.bytes,
                    sluice_bundle::stamp(b.expires_at_ms),
                    b.reverts_to
                        .map(|v| format!("\treverts to {v}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

pub(crate) fn group(command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Set { api, name, devices } => {
            let body = GroupDevices { devices };
            let group: Group =
                api.client()?
                    .call(reqwest::Method::PUT, &paths::group(&name), |r| {
                        r.json(&body)
                    })?;
            println!("group `{}`: {}", group.name, group.devices.join(", "));
        }
        GroupCommand::List { api } => {
            let list: GroupList = api.client()?.get(paths::GROUPS)?;
            for g in list.groups {
                println!("{}\t{}", g.name, g.devices.join(", "));
            }
        }
    }
    Ok(())
}

pub(crate) fn rollout(command: RolloutCommand) -> anyhow::Result<()> {
    let (api, action, id) = match command {
        RolloutCommand::Start {
            api,
            bundle,
            name,
            version,
            target,
        } => {
            let client = api.client()?;
            let (name, version) = match bundle {
                Some(file) => {
                    let body = std::fs::read(&file).with_context(|| file.display().to_string())?;
                    let info = client.upload(body)?;
                    (info.name, info.version)
                }
                None => (
                    name.expect("clap requires it"),
                    version.expect("clap requires it"),
                ),
            };
            print_started(&client.start(name, version, target)?);
            return Ok(());
        }
        RolloutCommand::Revert {
            api,
            name,
            to,
            key,
            target,
        } => {
            let client = api.client()?;
            let key = SecretKey::read(&key).map_err(anyhow::Error::msg)?;
            // Refused now rather than after a new version is uploaded.
            let rollouts: RolloutList = client.get(paths::ROLLOUTS)?;
            if let Some(busy) = rollouts.rollouts.iter().find(|r| {
                r.name == name && matches!(r.state, RolloutState::Running | RolloutState::Paused)
            }) {
                bail!(
                    "rollout {} of `{name}` is {}: abort it first",
                    busy.id,
                    busy.state.name()
                );
            }
            let list: BundleList = client.get(paths::BUNDLES)?;
            let newest = list
                .bundles
                .iter()
                .filter(|b| b.name == name)
                .map(|b| b.version)
                .max()
                .with_context(|| format!("the collector has no bundle `{name}`"))?;
            let earlier = client
                .http
                .get(format!("{}{}", client.url, paths::bundle(&name, to)))
                .bearer_auth(&client.token)
                .header("accept", "application/octet-stream")
                .send()?
                .error_for_status()
                .with_context(|| format!("bundle `{name}` version {to}"))?
                .bytes()?;
            let work = tempfile::tempdir()?;
            let (old, new) = (
                work.path().join("earlier.bundle"),
                work.path().join("revert.bundle"),
            );
            std::fs::write(&old, &earlier)?;
            let version = newest + 1;
            sluice_bundle::revert(
                &old,
                &new,
                version,
                &key,
                sluice_collector_core::store::now_ms(),
            )?;
            let info = client.upload(std::fs::read(&new)?)?;
            println!(
                "bundle `{name}` version {} made: version {to}'s files, signed by {}",
                info.version,
                key.public().id()
            );
            print_started(&client.start(name, version, target)?);
            return Ok(());
        }
        RolloutCommand::Status { api, id, json } => {
            let client = api.client()?;
            let rollouts = match id {
                Some(id) => vec![client.get::<Rollout>(&paths::rollout(id))?],
                None => client.get::<RolloutList>(paths::ROLLOUTS)?.rollouts,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&rollouts)?);
            } else {
                print_status(&rollouts);
            }
            return Ok(());
        }
        RolloutCommand::Pause { api, id } => (api, "pause", id),
        RolloutCommand::Resume { api, id } => (api, "resume", id),
        RolloutCommand::Abort { api, id } => (api, "abort", id),
    };
    let rollout: Rollout = api.client()?.call(
        reqwest::Method::POST,
        &paths::rollout_action(id, action),
        |r| r,
    )?;
    println!("rollout {id}: {action} done; now {}", rollout.state.name());
    Ok(())
}

pub(crate) fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let mut after = args.after;
    loop {
        let page: AuditPage = client.get(&format!("{}?after={after}&limit=1000", paths::AUDIT))?;
        for e in &page.entries {
            if args.json {
                println!("{}", serde_json::to_string(e)?);
            } else {
                println!(
                    "{}\t{}\t{} ({}) from {}\t{} {}\t{}\t{}",
                    e.id,
                    sluice_bundle::stamp(e.at_ms),
                    e.actor,
                    e.role,
                    e.remote.as_deref().unwrap_or("-"),
                    e.action,
                    e.target,
                    e.outcome,
                    e.detail
                );
            }
        }
        match page.next {
            Some(next) => after = next,
            None => return Ok(()),
        }
    }
}

fn print_started(rollout: &Rollout) {
    println!(
        "rollout {}: `{}` version {} to {} device(s) in stages {:?} %; now offered to {}",
        rollout.id,
        rollout.name,
        rollout.version,
        rollout.devices.len(),
        rollout.stages,
        rollout.devices.iter().filter(|d| d.offered).count()
    );
}

fn print_status(rollouts: &[Rollout]) {
    if rollouts.is_empty() {
        println!("no rollouts");
    }
    for r in rollouts {
        println!(
            "rollout {}: `{}` version {}: {}, stage {} of {} ({} %), {} of {} device(s) committed{}",
            r.id,
            r.name,
            r.version,
            r.state.name(),
            r.stage + 1,
            r.stages.len(),
            r.stages.get(r.stage).copied().unwrap_or(100),
            r.committed(),
            r.devices.len(),
            r.reason
                .as_deref()
                .map(|why| format!("; {why}"))
                .unwrap_or_default()
        );
        for d in &r.devices {
            println!(
                "  {:<24} {:<8} {}{}{}",
                d.device,
                if d.offered { "offered" } else { "waiting" },
                d.outcome.as_deref().unwrap_or("-"),
                if d.skipped {
                    " (skipped at the deadline)"
                } else {
                    ""
                },
                d.reason
                    .as_deref()
                    .map(|why| format!(": {why}"))
                    .unwrap_or_default()
            );
        }
    }
}
