//! Rotating secrets without a restart: on SIGHUP the collector reads its
//! token files and its TLS files again, and it notices a renewed
//! certificate by itself (the files' modification time, every
//! [`TLS_CHECK`]). A reload that fails changes nothing and says why: the
//! collector goes on with what it had, rather than locking devices out.

use crate::Cli;
use sluice_collector_core::{Tls, TokenTable};
use std::sync::Arc;
use std::time::Duration;

/// How often the TLS files are looked at for a change.
pub(crate) const TLS_CHECK: Duration = Duration::from_secs(30);

/// Reload on every SIGHUP, and the certificate when its files change,
/// for as long as the collector runs.
pub(crate) async fn on_signal(cli: Cli, tokens: Arc<TokenTable>, tls: Option<Arc<Tls>>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(e) => {
            eprintln!(
                "sluice-collector: cannot catch SIGHUP, so tokens and certificates reload only at a restart: {e}"
            );
            return;
        }
    };
    let mut check = tokio::time::interval(TLS_CHECK);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                reload_tokens(&cli, &tokens);
                if let Some(tls) = &tls {
                    report(tls.reload());
                }
            }
            _ = check.tick() => {
                if let Some(result) = tls.as_ref().and_then(|tls| tls.reload_if_changed()) {
                    report(result);
                }
            }
        }
    }
}

fn reload_tokens(cli: &Cli, table: &TokenTable) {
    match cli.tokens().and_then(|tokens| {
        let devices = tokens.devices().len();
        table.replace(tokens)?;
        Ok(devices)
    }) {
        Ok(devices) => eprintln!("sluice-collector: reloaded the tokens of {devices} device(s)"),
        Err(e) => eprintln!("sluice-collector: tokens not reloaded, the previous ones stay: {e}"),
    }
}

fn report(result: Result<(), sluice_collector_core::TlsError>) {
    match result {
        Ok(()) => eprintln!("sluice-collector: reloaded the TLS certificate"),
        Err(e) => {
            eprintln!("sluice-collector: TLS files not reloaded, the previous ones stay: {e}")
        }
    }
}
