//! `[admin]`: the agent's own endpoint for operators and monitoring
//! (`/metrics`, `/healthz`, `/readyz`, `/v1/status`), whatever its inputs
//! come from.

use super::sync::bearer_token;
use crate::error::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;

/// `[admin]`: the admin endpoint (see [`crate::admin`]). Without `listen`
/// there is none (the HTTP ingest endpoint, when there is one, serves the
/// same paths).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Its address, e.g. `127.0.0.1:9464` (port 0: any free port). An
    /// address beyond loopback needs `token` (or `token_file`), or
    /// `insecure_allow_anyone = true`.
    pub listen: Option<String>,
    /// Bearer token `/metrics` and `/v1/status` require; none: anyone who
    /// can reach `listen` may read them (`/healthz` and `/readyz` are
    /// always open: they say nothing but up or not).
    pub token: Option<String>,
    /// A file holding the token (first line), instead of `token`.
    pub token_file: Option<PathBuf>,
    /// Listen beyond loopback without a token, knowingly.
    pub insecure_allow_anyone: bool,
    /// Connections open at once, at most; more wait unaccepted.
    pub max_connections: usize,
    /// Deadline for a request's head (also the idle keep-alive timeout).
    pub header_timeout_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: None,
            token: None,
            token_file: None,
            insecure_allow_anyone: false,
            max_connections: 16,
            header_timeout_ms: 10_000,
        }
    }
}

impl AdminConfig {
    /// The bearer token, from `token` or `token_file`.
    pub fn bearer_token(&self) -> Result<Option<String>, ConfigError> {
        bearer_token(
            self.token.as_ref(),
            self.token_file.as_ref(),
            "admin.token_file",
        )
    }
}
