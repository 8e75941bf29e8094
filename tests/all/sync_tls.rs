//! The collector serving HTTPS itself (`--tls-cert`, `--tls-key`), with a
//! fleet's own CA (`sync.ca_file` on the device), and rotating what it
//! trusts without a restart: on SIGHUP a revoked token stops working at
//! once and a renewed certificate is served; a reload that fails changes
//! nothing. The real `sluice-collector` binary and the device's real
//! uploader.

use crate::common::tokio;
use sluice_agent::config::SyncConfig;
use sluice_agent::outbox::Outbox;
use sluice_agent::uplink::Uploader;
use sluice_testkit::{Listening, Pki};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

fn outbox(dir: &Path, device: &str, n: u64) -> Arc<Outbox> {
    crate::common::outbox_of(&dir.join(device), device, n)
}

fn uploader(outbox: &Arc<Outbox>, device: &str, config: SyncConfig) -> Uploader {
    let uplink = sluice_agent::uplink::from_config(&config, device, tokio().handle())
        .unwrap()
        .unwrap();
    Uploader::new(outbox.clone(), uplink, &config, device).unwrap()
}

fn sync_config(url: &str, token: &str, ca: Option<&Path>) -> SyncConfig {
    SyncConfig {
        url: Some(url.to_owned()),
        token: Some(token.to_owned()),
        ca_file: ca.map(Path::to_owned),
        timeout_ms: 5_000,
        ..SyncConfig::default()
    }
}

/// Ask until `ok` holds, at most 10 s (a signal is handled asynchronously).
fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The real collector serving HTTPS with `server`'s certificate, the
/// device tokens in the file `tokens`, and `extra` flags.
fn https_collector(
    dir: &Path,
    tokens: &Path,
    server: &sluice_testkit::Issued,
    extra: &[&std::ffi::OsStr],
) -> Listening {
    Listening::spawn(
        Command::new(sluice_testkit::cargo_bin(
            "sluice-collector",
            "sluice-collector",
            &[],
        ))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--db")
        .arg(dir.join("c.db"))
        .arg("--tokens")
        .arg(tokens)
        .arg("--tls-cert")
        .arg(&server.cert)
        .arg("--tls-key")
        .arg(&server.key)
        .args(extra),
    )
}

fn hangup(collector: &mut Listening) {
    let pid = collector.child().id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn an_https_collector_rotates_tokens_and_certificates_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let fleet = Pki::new(dir, "fleet");
    let server = fleet.server("collector");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "dev-1=t1\ndev-2=t2\n").unwrap();
    let mut collector = https_collector(dir, &tokens, &server, &[]);
    let url = collector.url().replace("127.0.0.1", "localhost");
    assert!(url.starts_with("https://"), "{url}");

    // A device trusting the fleet's CA gets its results in.
    let outbox1 = outbox(dir, "dev-1", 30);
    let device1 = uploader(
        &outbox1,
        "dev-1",
        sync_config(&url, "t1", Some(&fleet.ca_file())),
    );
    device1.sync_once(&AtomicBool::new(false)).unwrap();
    assert_eq!(outbox1.pending().0, 0);
    // One trusting only the public web roots refuses the certificate, and
    // keeps everything.
    let outbox2 = outbox(dir, "dev-2", 5);
    let public_roots = uploader(&outbox2, "dev-2", sync_config(&url, "t2", None));
    let error = public_roots.sync_once(&AtomicBool::new(false)).unwrap_err();
    assert!(error.to_string().contains("certificate"), "{error}");
    assert_eq!(outbox2.pending().0, 5);
    // Plain HTTP gets nothing from an HTTPS port.
    let plain = collector.url().replace("https://", "http://");
    let outbox3 = outbox(dir, "dev-3", 1);
    let error = uploader(&outbox3, "dev-2", sync_config(&plain, "t2", None))
        .sync_once(&AtomicBool::new(false))
        .unwrap_err();
    assert!(!error.to_string().is_empty());

    // dev-1's token is revoked: gone from the file, a SIGHUP, refused.
    std::fs::write(&tokens, "dev-2=t2\n").unwrap();
    hangup(&mut collector);
    let more = outbox(&dir.join("again"), "dev-1", 3);
    let revoked = uploader(
        &more,
        "dev-1",
        sync_config(&url, "t1", Some(&fleet.ca_file())),
    );
    eventually("the revoked token still works", || {
        matches!(
            revoked.sync_once(&AtomicBool::new(false)),
            Err(sluice_agent::uplink::UplinkError::Refused { status: 401, .. })
        )
    });
    assert_eq!(more.pending().0, 3, "a refusal deletes nothing");
    // A tokens file broken mid-edit is not taken: dev-2 keeps working.
    std::fs::write(&tokens, "dev-2 t2 no equals sign\n").unwrap();
    hangup(&mut collector);
    std::thread::sleep(Duration::from_millis(500));
    let device2 = uploader(
        &outbox2,
        "dev-2",
        sync_config(&url, "t2", Some(&fleet.ca_file())),
    );
    device2.sync_once(&AtomicBool::new(false)).unwrap();
    assert_eq!(outbox2.pending().0, 0);

    // The certificate is renewed by another CA: after a SIGHUP only devices
    // trusting the new one get in.
    let renewed = Pki::new(dir, "renewed");
    let next = renewed.server("collector-next");
    std::fs::copy(&next.cert, &server.cert).unwrap();
    std::fs::copy(&next.key, &server.key).unwrap();
    hangup(&mut collector);
    let outbox4 = outbox(&dir.join("renewed"), "dev-2", 4);
    let trusting_new = uploader(
        &outbox4,
        "dev-2",
        sync_config(&url, "t2", Some(&renewed.ca_file())),
    );
    eventually("the renewed certificate is not served", || {
        trusting_new.sync_once(&AtomicBool::new(false)).is_ok()
    });
    assert_eq!(outbox4.pending().0, 0);
    // A key that does not go with the certificate is not taken: the
    // renewed certificate stays in service.
    std::fs::write(
        &server.key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    hangup(&mut collector);
    std::thread::sleep(Duration::from_millis(500));
    let outbox5 = outbox(&dir.join("after-bad-reload"), "dev-2", 2);
    uploader(
        &outbox5,
        "dev-2",
        sync_config(&url, "t2", Some(&renewed.ca_file())),
    )
    .sync_once(&AtomicBool::new(false))
    .unwrap();
    assert_eq!(outbox5.pending().0, 0);
}

/// Mutual TLS (`--tls-client-ca`): a device's certificate from the fleet's
/// CA is its identity, without a token; a certificate for a device the
/// collector does not know, or one whose token says another device, is
/// refused; a certificate from another CA does not get through the
/// handshake; and removing the device from the tokens file (a SIGHUP)
/// revokes its certificate too.
#[test]
fn a_client_certificate_is_a_devices_identity_until_the_device_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let fleet = Pki::new(dir, "fleet");
    let server = fleet.server("collector");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "dev-1=t1\ndev-2=t2\n").unwrap();
    let ca = fleet.ca_file();
    let mut collector = https_collector(
        dir,
        &tokens,
        &server,
        &["--tls-client-ca".as_ref(), ca.as_os_str()],
    );
    let url = collector.url().replace("127.0.0.1", "localhost");
    let with_certificate = |token: Option<&str>, issued: &sluice_testkit::Issued| SyncConfig {
        token: token.map(str::to_owned),
        client_cert_file: Some(issued.cert.clone()),
        client_key_file: Some(issued.key.clone()),
        ..sync_config(&url, "unused", Some(&fleet.ca_file()))
    };
    let refused = |outbox: &Arc<Outbox>, device: &str, config: SyncConfig| {
        uploader(outbox, device, config)
            .sync_once(&AtomicBool::new(false))
            .unwrap_err()
            .to_string()
    };

    let dev1 = fleet.client("dev-1");
    let outbox1 = outbox(dir, "dev-1", 20);
    uploader(&outbox1, "dev-1", with_certificate(None, &dev1))
        .sync_once(&AtomicBool::new(false))
        .unwrap();
    assert_eq!(
        outbox1.pending().0,
        0,
        "the certificate alone identified dev-1"
    );

    let outbox2 = outbox(dir, "dev-2", 3);
    // dev-1's certificate with dev-2's token: which is it? Neither.
    let error = refused(&outbox2, "dev-2", with_certificate(Some("t2"), &dev1));
    assert!(
        error.contains("403") && error.contains("`dev-1`"),
        "{error}"
    );
    // A certificate the CA issued for a device the collector does not know.
    let stranger = fleet.client("stranger");
    let error = refused(&outbox2, "dev-2", with_certificate(None, &stranger));
    assert!(
        error.contains("403") && error.contains("`stranger`"),
        "{error}"
    );
    // A certificate from another CA does not get through the handshake.
    let rogue = Pki::new(dir, "rogue").client("dev-2");
    let error = refused(&outbox2, "dev-2", with_certificate(None, &rogue));
    assert!(error.contains("unreachable"), "{error}");
    assert_eq!(outbox2.pending().0, 3, "nothing deleted");
    // The token alone still works for a device without a certificate.
    uploader(
        &outbox2,
        "dev-2",
        sync_config(&url, "t2", Some(&fleet.ca_file())),
    )
    .sync_once(&AtomicBool::new(false))
    .unwrap();

    // dev-1 removed from the collector's tokens: its certificate, still
    // valid for years, no longer gets anything in.
    std::fs::write(&tokens, "dev-2=t2\n").unwrap();
    hangup(&mut collector);
    let more = outbox(&dir.join("again"), "dev-1", 2);
    eventually("the removed device's certificate still works", || {
        let error = refused(&more, "dev-1", with_certificate(None, &dev1));
        error.contains("403") && error.contains("does not know")
    });
    assert_eq!(more.pending().0, 2);
}
