//! The loader's tests: parsing, paths, the checks across sections.

use super::*;

#[test]
fn misspelled_key_is_named_in_the_error() {
    let err = Config::parse(
        "[plugins.pre]\npath = \"x.wasm\"\ntimout_ms = 5\n",
        Path::new("/etc"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("timout_ms"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn acknowledgement_keys_are_required_over_mqtt_and_checked_everywhere() {
    let key = sluice_protocol::keys::SecretKey::generate()
        .public()
        .to_text();
    let sync = |rest: &str| {
        Config::parse(&format!("[sync]\ntoken = \"t\"\n{rest}"), Path::new("/etc"))
            .map(|c| c.sync.pinned_ack_keys().unwrap().len())
            .map_err(|e| e.to_string())
    };
    let mqtt = "url = \"mqtt://broker:1883\"\n";
    let err = sync(mqtt).unwrap_err();
    assert!(
        err.contains("sync.ack_keys") && err.contains("broker"),
        "{err}"
    );
    assert_eq!(sync(&format!("{mqtt}ack_keys = [\"{key}\"]\n")), Ok(1));
    let err = sync(&format!(
        "{mqtt}mqtt_ack = \"broker\"\nack_keys = [\"{key}\"]\n"
    ))
    .unwrap_err();
    assert!(err.contains("PUBACK"), "{err}");
    assert_eq!(sync(&format!("{mqtt}mqtt_ack = \"broker\"\n")), Ok(0));
    // Over HTTP they are optional, and checked when given.
    assert_eq!(sync("url = \"https://c.example\"\n"), Ok(0));
    let err = sync("url = \"https://c.example\"\nack_keys = [\"ed25519:AAAA\"]\n").unwrap_err();
    assert!(err.contains("sync.ack_keys[0]"), "{err}");
}

#[test]
fn drift_bounds_are_checked_naming_the_key() {
    for (text, key) in [
        (
            "[drift]\nfalse_alarm_rate = 0.0\n",
            "drift.false_alarm_rate",
        ),
        (
            "[drift]\nfalse_alarm_rate = 0.9\n",
            "drift.false_alarm_rate",
        ),
        ("[drift]\nwindow_items = 5\n", "drift.window_items"),
        ("[drift]\nwindow_secs = 0\n", "drift.window_secs"),
    ] {
        let err = Config::parse(text, Path::new("/etc"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
    let config = Config::parse("[drift]\nwindow_items = 200\n", Path::new("/etc")).unwrap();
    assert_eq!(config.drift.window_items, 200);
    assert_eq!(config.drift.window_secs, 3600);
    assert_eq!(config.drift.false_alarm_rate, 0.01);
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let config = Config::parse(
        "[plugins.pre]\npath = \"p/pre.wasm\"\n[plugins.pre.grants]\ndirs = [{ host = \"m\", guest = \"/m\" }]\n\
         [plugins.b]\npath = \"bundled:image-preprocess\"\n",
        Path::new("/etc/sluice"),
    )
    .unwrap();
    assert_eq!(
        config.plugins["pre"].path,
        PluginSource::File("/etc/sluice/p/pre.wasm".into())
    );
    assert_eq!(
        config.plugins["pre"].grants.dirs[0].host,
        Path::new("/etc/sluice/m")
    );
    assert_eq!(
        config.plugins["b"].path,
        PluginSource::Bundled("image-preprocess".into())
    );
    assert_eq!(
        config.cache_dir(),
        Path::new("/etc/sluice/sluice-data/cache")
    );
}

#[test]
fn broker_files_resolve_against_the_config_folder() {
    // `[sync.mqtt]`'s files were once taken from the working directory
    // while `[ingest.mqtt]`'s were resolved against the configuration's.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("s")).unwrap();
    std::fs::write(dir.path().join("s/pw"), "secret\n").unwrap();
    let config = Config::parse(
        "[sync]\nurl = \"mqtt://127.0.0.1:1883\"\nack_keys = [\"ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n\
         [sync.mqtt]\nusername = \"d\"\npassword_file = \"s/pw\"\n",
        dir.path(),
    )
    .unwrap();
    let broker = config.sync.mqtt.as_ref().expect("[sync.mqtt]");
    assert_eq!(
        broker.password_file.as_deref(),
        Some(dir.path().join("s/pw").as_path())
    );
}

#[test]
fn defaults_grant_nothing() {
    let config = Config::parse("[plugins.pre]\npath = \"a.wasm\"\n", Path::new("/")).unwrap();
    let plugin = &config.plugins["pre"];
    assert!(plugin.grants.is_empty());
    assert_eq!(plugin.timeout(), std::time::Duration::from_secs(1));
    assert_eq!(plugin.memory_bytes(), 64 << 20);
}

#[test]
fn pipeline_naming_a_missing_plugin_is_refused() {
    let err = Config::parse(
        "[models.m]\npath = \"m.onnx\"\n[pipelines.p]\npreprocess = \"nope\"\nmodel = \"m\"\npostprocess = \"nope\"\n",
        Path::new("/"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pipelines.p.preprocess") && err.contains("`nope`"),
        "{err}"
    );
}

#[test]
fn a_device_id_that_could_pass_for_another_is_refused() {
    for id in ["a/b", "", "gate way"] {
        let err = Config::parse(&format!("[device]\nid = {id:?}\n"), Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("device.id"), "{id:?}: {err}");
    }
}

#[test]
fn a_plugin_cannot_be_both_preprocessor_and_postprocessor() {
    let err = Config::parse(
        "[plugins.p]\npath = \"p.wasm\"\n[models.m]\npath = \"m.onnx\"\n\
         [pipelines.x]\npreprocess = \"p\"\nmodel = \"m\"\npostprocess = \"p\"\n",
        Path::new("/"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pipelines.x.postprocess") && err.contains("already the preprocess"),
        "{err}"
    );
}

#[test]
fn every_number_out_of_its_range_is_refused_naming_the_key() {
    let model = "[models.m]\npath = \"m.onnx\"\n[models.m.batching]\n";
    for (text, key) in [
        (
            format!("{model}max_batch_size = 100000000\n"),
            "models.m.batching.max_batch_size",
        ),
        (
            format!("{model}max_batch_size = 0\n"),
            "models.m.batching.max_batch_size",
        ),
        (
            format!("{model}queue_capacity = 0\n"),
            "models.m.batching.queue_capacity",
        ),
        (
            format!("{model}max_batch_size = 64\nqueue_capacity = 63\n"),
            "models.m.batching.queue_capacity",
        ),
        (
            format!("{model}request_timeout_ms = 0\n"),
            "models.m.batching.request_timeout_ms",
        ),
        (
            "[plugins.p]\npath = \"p.wasm\"\nmemory_mb = 1000000\n".into(),
            "plugins.p.memory_mb",
        ),
        (
            "[plugins.p]\npath = \"p.wasm\"\ntimeout_ms = 0\n".into(),
            "plugins.p.timeout_ms",
        ),
        ("[outbox]\nmax_bytes = 0\n".into(), "outbox.max_bytes"),
        (
            "[sync]\nbatch_max_records = 1000000\n".into(),
            "sync.batch_max_records",
        ),
        ("[sync]\nzstd_level = -5\n".into(), "sync.zstd_level"),
        (
            "[sync]\nbackoff_initial_ms = 50\nbackoff_max_ms = 10\n".into(),
            "sync.backoff_max_ms",
        ),
        (
            "[ingest]\nmax_input_bytes = 100\nmax_pending_bytes = 99\n".into(),
            "ingest.max_pending_bytes",
        ),
        ("[runtime]\nworkers = 100000\n".into(), "runtime.workers"),
    ] {
        let err = Config::parse(&text, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains("outside the allowed range"),
            "{text}: {err}"
        );
    }
    let fine = format!("{model}max_batch_size = 64\nqueue_capacity = 64\n");
    Config::parse(&fine, Path::new("/")).unwrap();
}

#[test]
fn a_config_file_without_pipelines_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for text in ["", "[device]\nid = \"gw-1\"\n"] {
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, text).unwrap();
        let err = Config::load_device(&path).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string())
                && err.contains("pipelines: no pipeline is configured"),
            "{text:?}: {err}"
        );
    }
}

#[test]
fn ingest_beyond_loopback_needs_a_token_or_an_explicit_opt_out() {
    let err = Config::parse("[ingest]\nlisten = \"0.0.0.0:8470\"\n", Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ingest.listen") && err.contains("ingest.token"),
        "{err}"
    );
    for fine in [
        "[ingest]\nlisten = \"127.0.0.1:8470\"\n",
        "[ingest]\nlisten = \"[::1]:8470\"\n",
        "[ingest]\nlisten = \"0.0.0.0:8470\"\ntoken = \"s\"\n",
        "[ingest]\nlisten = \"0.0.0.0:8470\"\ninsecure_allow_anyone = true\n",
    ] {
        Config::parse(fine, Path::new("/")).unwrap();
    }
}
