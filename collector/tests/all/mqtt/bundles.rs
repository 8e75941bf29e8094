//! Bundles through the broker: a device whose uplink is MQTT fetches the
//! bundle a rollout offers it in chunks, resumes a download it kept, and
//! trusts none of it until the whole matches what the collector named.

use super::*;
use sluice_agent::uplink::Offers;

/// The offers of `DEVICE` through the shipped broker, once connected.
fn offers(broker: &Mosquitto) -> Box<dyn Offers> {
    let password = broker.password(DEVICE);
    let mut config = sync_config(&broker.url(), Some((DEVICE, &password)));
    config.token = None;
    let uplink = sluice_agent::uplink::from_config(&config, DEVICE, runtime().handle())
        .unwrap()
        .unwrap();
    // The uplink's connection task keeps running as long as the uplink:
    // leak it for the test's length.
    let offers = uplink.offers(DEVICE);
    Box::leak(uplink);
    offers
}

/// Fetch into `path`, waiting out "not connected yet" at the start:
/// whether a bundle was written.
fn fetch(offers: &dyn Offers, seen: &[String], path: &Path, limit: u64) -> Result<bool, String> {
    fetched(offers, seen, path, limit).map(|offered| offered.is_some())
}

/// [`fetch`], with what the rollout asked of the device.
fn fetched(
    offers: &dyn Offers,
    seen: &[String],
    path: &Path,
    limit: u64,
) -> Result<Option<sluice_agent::uplink::Offered>, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match offers.fetch(seen, path, limit) {
            Err(e) if e.contains("not connected") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            other => return other,
        }
    }
}

fn partials(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("partial-"))
        .collect()
}

#[test]
fn a_device_on_mqtt_fetches_its_bundle_in_chunks_and_resumes_only_what_checks_out() {
    let broker = or_skip!(Mosquitto::shipped(&[DEVICE], &["collector-1"]));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let _collector = CollectorProcess::on_shipped(&db, &broker, &[]);
    let offers = offers(&broker);
    let inbox = dir.path().join("device");
    std::fs::create_dir_all(&inbox).unwrap();
    let path = inbox.join("incoming.bundle");

    // Nothing offered yet.
    assert_eq!(fetch(&*offers, &[], &path, 1 << 30), Ok(false));

    // A bundle of about 1.2 MB (5 chunks), offered to the device.
    let model: Vec<u8> = (0..1_200_000u32).map(|_| rand::random()).collect();
    let file = crate::rollouts::bundle_with(dir.path(), "digits", 2, &model);
    let bundle = std::fs::read(&file).unwrap();
    assert!(bundle.len() > 4 * sluice_protocol::mqtt::BUNDLE_CHUNK_BYTES);
    let sha = sluice_bundle::sha256_of(&file).unwrap().1;
    let store = sluice_collector_core::Store::open(&db).unwrap();
    store.put_bundle(&bundle, None).unwrap();
    let mut plan = sluice_collector_core::rollout::Plan {
        name: "digits".into(),
        version: 2,
        devices: vec![DEVICE.into()],
        stages: vec![100],
        policy: Default::default(),
    };
    plan.policy.min_probation_items = 7;
    store.create_rollout(&plan).unwrap();

    // The whole bundle, and the probation its rollout asks for.
    let offered = fetched(&*offers, &[], &path, 1 << 30).unwrap().unwrap();
    assert_eq!(
        offered.probation,
        Some(sluice_protocol::operator::ProbationMinimum { items: 7, secs: 0 })
    );
    assert!(std::fs::read(&path).unwrap() == bundle, "the bundle, whole");
    assert!(partials(&inbox).is_empty());
    std::fs::remove_file(&path).unwrap();
    // One it already handled is not fetched again.
    assert_eq!(
        fetch(&*offers, &[format!("\"{sha}\"")], &path, 1 << 30),
        Ok(false)
    );
    assert!(!path.exists());
    // Nor one over the device's limit.
    let error = fetch(&*offers, &[], &path, 1_000_000).unwrap_err();
    assert!(error.contains("over 1000000 bytes"), "{error}");

    // A download cut after 300 KB resumes from there: kept bytes that are
    // right make the bundle, ...
    let cut = 300_000;
    let partial = inbox.join(format!("partial-{sha}.bundle"));
    std::fs::write(&partial, &bundle[..cut]).unwrap();
    assert_eq!(fetch(&*offers, &[], &path, 1 << 30), Ok(true));
    assert!(std::fs::read(&path).unwrap() == bundle);
    std::fs::remove_file(&path).unwrap();
    // ... kept bytes that are wrong (a torn write) are found out when the
    // whole is checked, dropped, and the next attempt starts over.
    std::fs::write(&partial, vec![0u8; cut]).unwrap();
    let error = fetch(&*offers, &[], &path, 1 << 30).unwrap_err();
    assert!(error.contains("does not have the SHA-256"), "{error}");
    assert!(!path.exists() && partials(&inbox).is_empty());
    assert_eq!(fetch(&*offers, &[], &path, 1 << 30), Ok(true));
    assert!(std::fs::read(&path).unwrap() == bundle);

    // A download kept for a bundle no longer offered is dropped.
    std::fs::write(
        inbox.join(format!("partial-{}.bundle", "0".repeat(64))),
        b"old",
    )
    .unwrap();
    let rollout = store.rollouts().unwrap().remove(0).id;
    store.rollout_action(rollout, "abort").unwrap();
    assert_eq!(fetch(&*offers, &[], &path, 1 << 30), Ok(false));
    assert!(partials(&inbox).is_empty());
}
