//! # sluice-mqtt: the MQTT 5 connection devices and collectors share
//!
//! Both ends of Sluice's MQTT transport (the device's uplink and the
//! collector's consumer, the topics and properties are in
//! [`sluice_protocol::mqtt`](https://docs.rs/sluice-protocol)) connect the
//! same way: a broker URL (`mqtt://host:port`, or `mqtts://` for TLS with
//! rustls, the system's web roots or a given CA), username and password or
//! a client certificate, and bounds on what is held in memory. This crate
//! turns those settings into [`rumqttc`] options and nothing else.

#![deny(missing_docs)]

pub use rumqttc;

use rumqttc::v5::MqttOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// QoS 1 messages a client has in flight at once (and so the slots
/// rumqttc allocates for them).
pub const MAX_INFLIGHT: u16 = 16;

/// How to reach and authenticate to a broker.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    /// Username (the broker's own accounts; Sluice's bearer token travels
    /// inside each message).
    #[serde(default)]
    pub username: Option<String>,
    /// Its password.
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (first line), instead of `password`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM file of the certificate authorities to trust for `mqtts://`
    /// (default: the web's roots, built in).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file of this client's certificate chain (TLS client
    /// authentication), with `client_key_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM file of this client's private key.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Keep-alive interval, seconds: a dead connection is noticed within
    /// about 1.5 times this.
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// The first level of Sluice's topics (`PREFIX/v1/devices/...`), the
    /// same for the devices and their collectors.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
}

impl Broker {
    /// The files it names (password, CA, client certificate and key), for
    /// a configuration loader to resolve against its folder.
    pub fn files_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        [
            &mut self.password_file,
            &mut self.ca_file,
            &mut self.client_cert_file,
            &mut self.client_key_file,
        ]
        .into_iter()
        .flatten()
    }
}

impl Default for Broker {
    fn default() -> Self {
        Broker {
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            keep_alive_secs: default_keep_alive_secs(),
            topic_prefix: default_topic_prefix(),
        }
    }
}

fn default_keep_alive_secs() -> u64 {
    30
}

fn default_topic_prefix() -> String {
    "sluice".into()
}

/// A broker setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqttConfigError {
    /// The URL is not `mqtt://host:port` or `mqtts://host:port`.
    #[error("`{url}` is not a broker URL (mqtt://HOST:PORT or mqtts://HOST:PORT): {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A file cannot be read or holds no usable PEM item.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A setting is unusable.
    #[error("{0}")]
    Invalid(String),
}

/// Options for a client `client_id` of the broker at `url` with
/// `broker`'s credentials and TLS, receiving packets of at most
/// `max_packet_bytes`.
pub fn options(
    url: &str,
    client_id: &str,
    broker: &Broker,
    max_packet_bytes: u32,
) -> Result<MqttOptions, MqttConfigError> {
    let bad = |reason: &str| MqttConfigError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(bad("the scheme must be mqtt or mqtts"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(bad(
            "give only HOST:PORT (credentials go in their own settings)",
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| bad("the port is not a number from 0 to 65535"))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if broker.topic_prefix.is_empty()
        || broker.topic_prefix.contains(['+', '#', '$'])
        || broker.topic_prefix.starts_with('/')
    {
        return Err(MqttConfigError::Invalid(format!(
            "topic_prefix `{}` must be non-empty, without + # $ or a leading /",
            broker.topic_prefix
        )));
    }
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(broker.keep_alive_secs.max(5)));
    options.set_max_packet_size(Some(max_packet_bytes));
    // rumqttc keeps a slot per possible packet id in flight: 65 535 by
    // default, about 7 MB per client, zeroed at every connection. Sluice
    // sends one batch at a time (a device) or its answers at QoS 0 (a
    // collector): a few slots are plenty.
    options.set_outgoing_inflight_upper_limit(MAX_INFLIGHT);
    // Request and answer are whole messages waited for one at a time: with
    // Nagle's algorithm against delayed ACKs each hop can wait 40 ms.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(10);
    options.set_network_options(network);
    let password = match (&broker.password, &broker.password_file) {
        (Some(_), Some(_)) => {
            return Err(MqttConfigError::Invalid(
                "give password or password_file, not both".into(),
            ));
        }
        (Some(p), None) => Some(p.clone()),
        (None, Some(file)) => Some(first_line(file)?),
        (None, None) => None,
    };
    match (&broker.username, password) {
        (Some(user), password) => {
            options.set_credentials(user.clone(), password.unwrap_or_default());
        }
        (None, Some(_)) => {
            return Err(MqttConfigError::Invalid(
                "a broker password needs a username".into(),
            ));
        }
        (None, None) => {}
    }
    if tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config(broker)?)),
        ));
    } else if broker.ca_file.is_some() || broker.client_cert_file.is_some() {
        return Err(bad(
            "TLS settings are given but the URL is mqtt://, not mqtts://",
        ));
    }
    Ok(options)
}

fn first_line(path: &Path) -> Result<String, MqttConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| MqttConfigError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

fn pem_file(path: &Path) -> Result<Vec<u8>, MqttConfigError> {
    std::fs::read(path).map_err(|e| MqttConfigError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn tls_config(broker: &Broker) -> Result<rustls::ClientConfig, MqttConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &broker.ca_file {
        Some(path) => {
            let pem = pem_file(path)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| MqttConfigError::File {
                    path: path.clone(),
                    reason: format!("not a PEM certificate: {e}"),
                })?;
                roots.add(cert).map_err(|e| MqttConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
            if roots.is_empty() {
                return Err(MqttConfigError::File {
                    path: path.clone(),
                    reason: "holds no certificate".into(),
                });
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttConfigError::Invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    match (&broker.client_cert_file, &broker.client_key_file) {
        (Some(cert), Some(key)) => {
            let pem = pem_file(cert)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| MqttConfigError::File {
                    path: cert.clone(),
                    reason: format!("not a PEM certificate chain: {e}"),
                })?;
            let key_pem = pem_file(key)?;
            let key_der =
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| MqttConfigError::File {
                    path: key.clone(),
                    reason: format!("not a PEM private key: {e}"),
                })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| MqttConfigError::Invalid(format!("TLS client certificate: {e}")))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(MqttConfigError::Invalid(
            "client_cert_file and client_key_file go together".into(),
        )),
    }
}

/// `url` as shown in messages (it holds no credentials: [`options`]
/// refuses them there).
pub fn endpoint(url: &str) -> &str {
    url.trim_end_matches('/')
}
