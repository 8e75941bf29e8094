//! The plugin runtime with real components: sandboxing, limits, isolation
//! of failures, typed errors, loading errors and the compiled-plugin cache.
//! The `misbehave` fixture does what each item's text asks (see
//! `plugins/test-plugins/misbehave`).

use crate::common::*;
use sluice_agent::config::PluginSource;
use sluice_agent::error::PluginErrorCause;
use sluice_agent::plugin::{CacheOutcome, EngineOptions, PluginHost, PluginKind};
use sluice_agent::types::{Fault, Inferred, ItemError, Metadata, Tensor};
use std::time::{Duration, Instant};

const PRE: PluginKind = PluginKind::Preprocessor;

fn misbehave(host: &PluginHost, body: &str) -> sluice_agent::plugin::Plugin {
    load(host, "misbehave", "misbehave", PRE, body)
}

fn fault_of(result: &Result<Vec<Tensor>, ItemError>) -> &Fault {
    match result {
        Err(ItemError::PluginFault { plugin, fault }) => {
            assert_eq!(plugin, "misbehave");
            fault
        }
        other => panic!("expected a plugin fault, got {other:?}"),
    }
}

fn echoed(result: &Result<Vec<Tensor>, ItemError>, expected: &str) {
    let tensors = result
        .as_ref()
        .unwrap_or_else(|e| panic!("expected an echo, got {e}"));
    assert_eq!(tensors[0].name, "echo");
    assert_eq!(tensors[0].data, expected.as_bytes());
}

#[test]
fn typed_item_errors_reach_the_host_and_spare_their_neighbours() {
    let host = host();
    let plugin = misbehave(&host, "");
    let results = plugin.preprocess(&[
        text("a", "invalid"),
        text("b", "hello"),
        text("c", "unsupported"),
        text("d", "internal"),
    ]);
    assert_eq!(results.len(), 4);
    let plugin = "misbehave".to_owned();
    assert_eq!(
        results[0],
        Err(ItemError::InvalidInput {
            plugin: plugin.clone(),
            message: "requested invalid".into()
        })
    );
    echoed(&results[1], "hello");
    assert_eq!(
        results[2],
        Err(ItemError::Unsupported {
            plugin: plugin.clone(),
            message: "requested unsupported".into()
        })
    );
    assert_eq!(
        results[3],
        Err(ItemError::Internal {
            plugin,
            message: "requested internal".into()
        })
    );
}

#[test]
fn an_infinite_loop_is_stopped_at_its_deadline_and_only_its_item_fails() {
    let host = host();
    let plugin = misbehave(&host, "timeout_ms = 200");
    let started = Instant::now();
    let results = plugin.preprocess(&[text("a", "first"), text("b", "loop"), text("c", "last")]);
    // The batch call hits the deadline, then each item is retried alone:
    // two deadlines in all. A generous bound: this only proves it stops.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    echoed(&results[0], "first");
    assert_eq!(
        fault_of(&results[1]),
        &Fault::Deadline(Duration::from_millis(200))
    );
    // The error names the key that would raise the limit.
    let said = results[1].as_ref().unwrap_err().to_string();
    assert!(said.contains("`timeout_ms` = 200 ms"), "{said}");
    echoed(&results[2], "last");
    // The instance was replaced: the plugin still serves.
    echoed(&plugin.preprocess(&[text("d", "again")])[0], "again");
}

#[test]
fn allocating_past_the_memory_cap_fails_that_item_with_a_memory_fault() {
    let host = host();
    let plugin = misbehave(&host, "memory_mb = 32");
    let results = plugin.preprocess(&[
        text("a", "alloc:4"),
        text("b", "alloc:64"),
        text("c", "small"),
    ]);
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert_memory_cap(&results[1], 32);
    echoed(&results[2], "small");
}

/// `result` failed on the memory cap of `cap_mb`, and its message names the
/// setting and the size asked for.
fn assert_memory_cap(result: &Result<Vec<Tensor>, ItemError>, cap_mb: usize) {
    let fault = fault_of(result);
    let Fault::MemoryCap {
        cap_bytes,
        requested_bytes,
    } = fault
    else {
        panic!("expected a memory-cap fault, got {fault:?}");
    };
    assert_eq!(*cap_bytes, cap_mb << 20);
    assert!(*requested_bytes > cap_mb << 20, "{requested_bytes}");
    let message = result.as_ref().unwrap_err().to_string();
    assert!(
        message.contains(&format!("`memory_mb` = {cap_mb}")) && message.contains("asked for"),
        "{message}"
    );
}

#[test]
fn a_plugin_that_needs_more_memory_to_start_is_refused_naming_memory_mb() {
    let host = host();
    let config = plugin_config(
        "misbehave",
        "memory_mb = 8\n[plugins.p.config]\nalloc_init_mb = 16",
    );
    let e = host
        .load("needy", &config, PluginKind::Preprocessor)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("needy") && e.contains("`memory_mb` = 8") && e.contains("asked for"),
        "{e}"
    );
}

#[test]
fn a_panic_is_reported_with_its_message_and_the_instance_is_replaced() {
    let host = host();
    let plugin = misbehave(&host, "");
    let results = plugin.preprocess(&[text("a", "panic")]);
    match fault_of(&results[0]) {
        Fault::Trap(message) => {
            // The author's message first, wasm's name for the trap after.
            let panic = message.find("misbehave: panic requested");
            let trap = message.find("unreachable");
            assert!(
                panic.is_some() && trap.is_some() && panic < trap,
                "{message}"
            )
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    echoed(&plugin.preprocess(&[text("b", "fine")])[0], "fine");
}

#[test]
fn files_outside_the_grants_cannot_be_opened() {
    let host = host();
    let plugin = misbehave(&host, "");
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "secret").unwrap();
    for path in [secret.path().to_str().unwrap(), "/etc/passwd", "/", "."] {
        let results = plugin.preprocess(&[text("a", &format!("open:{path}"))]);
        match &results[0] {
            Err(ItemError::Internal { message, .. }) => {
                assert!(message.starts_with(&format!("open {path}:")), "{message}")
            }
            other => panic!("opening {path} without a grant must fail, got {other:?}"),
        }
    }
}

#[test]
fn a_granted_directory_is_readable_and_read_only_by_default() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("labels.txt"), "cat\ndog\n").unwrap();
    let host = host();
    let body = format!(
        "[plugins.p.grants]\ndirs = [{{ host = {:?}, guest = \"/data\" }}]\n",
        dir.path().display().to_string()
    );
    let plugin = misbehave(&host, &body);
    let results = plugin.preprocess(&[
        text("a", "open:/data/labels.txt"),
        text("b", "open:/data/../../etc/passwd"),
    ]);
    assert_eq!(results[0].as_ref().unwrap()[0].data, b"cat\ndog\n");
    assert!(
        matches!(&results[1], Err(ItemError::Internal { .. })),
        "escaping the grant must fail: {:?}",
        results[1]
    );
}

#[test]
fn environment_variables_are_invisible_unless_granted() {
    let host = host();
    // PATH is set for this process; the plugin must not see it.
    let plugin = misbehave(&host, "[plugins.p.grants]\nenv = { GREETING = \"hi\" }\n");
    let results = plugin.preprocess(&[text("a", "env:PATH"), text("b", "env:GREETING")]);
    assert!(
        matches!(&results[0], Err(ItemError::Internal { message, .. }) if message.contains("not set")),
        "{:?}",
        results[0]
    );
    assert_eq!(results[1].as_ref().unwrap()[0].data, b"hi");
}

#[test]
fn init_refusing_its_config_is_one_error_naming_the_plugin() {
    let host = host();
    let err = host
        .load(
            "broken",
            &plugin_config("misbehave", "[plugins.p.config]\nfail_init = true\n"),
            PRE,
        )
        .unwrap_err();
    assert_eq!(err.plugin, "broken");
    assert!(
        matches!(&err.cause, PluginErrorCause::InitRefused(m) if m.contains("fail_init was requested")),
        "{err}"
    );
    // The same host still loads healthy plugins.
    misbehave(&host, "");
}

#[test]
fn a_plugin_trapping_in_init_is_one_error_with_the_panic_message() {
    let host = host();
    let err = host
        .load(
            "crashy",
            &plugin_config("misbehave", "[plugins.p.config]\npanic_init = true\n"),
            PRE,
        )
        .unwrap_err();
    assert_eq!(err.plugin, "crashy");
    assert!(
        matches!(&err.cause, PluginErrorCause::InitTrapped { stderr, .. } if stderr.contains("panic_init was requested")),
        "{err}"
    );
    misbehave(&host, "");
}

#[test]
fn an_unknown_config_key_is_named_by_init() {
    let host = host();
    let err = host
        .load(
            "typo",
            &plugin_config("misbehave", "[plugins.p.config]\nfail_inti = true\n"),
            PRE,
        )
        .unwrap_err();
    assert!(err.to_string().contains("fail_inti"), "{err}");
}

#[test]
fn a_missing_file_is_refused_naming_plugin_and_path() {
    let host = host();
    let mut config = plugin_config("misbehave", "");
    config.path = PluginSource::File("/nonexistent/plugin.wasm".into());
    let err = host.load("ghost", &config, PRE).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("plugin `ghost`") && text.contains("/nonexistent/plugin.wasm"),
        "{text}"
    );
    // The chain goes down to the OS error.
    let cause = std::error::Error::source(&err).expect("the cause");
    let os_error = cause
        .source()
        .and_then(|e| e.downcast_ref::<std::io::Error>());
    assert_eq!(
        os_error.map(std::io::Error::kind),
        Some(std::io::ErrorKind::NotFound),
        "{text}"
    );
}

#[test]
fn bytes_that_are_not_a_component_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = host();
    // A core module (not a component) and garbage.
    for (file, bytes) in [
        ("core.wasm", &b"\0asm\x01\0\0\0"[..]),
        ("junk.wasm", &b"not wasm at all"[..]),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, bytes).unwrap();
        let mut config = plugin_config("misbehave", "");
        config.path = PluginSource::File(path.clone());
        let err = host.load("bad", &config, PRE).unwrap_err();
        assert!(
            matches!(err.cause, PluginErrorCause::NotAComponent(_)),
            "{file}: {err}"
        );
        // wasmtime's error is kept as the source.
        assert!(
            std::error::Error::source(&err.cause).is_some(),
            "{file}: {err}"
        );
    }
}

#[test]
fn a_component_of_the_wrong_world_is_refused() {
    let host = host();
    let err = host
        .load("cmd", &plugin_config("not-a-plugin", ""), PRE)
        .unwrap_err();
    assert!(
        matches!(&err.cause, PluginErrorCause::WrongWorld { exports, .. } if exports.contains("wasi:cli/run")),
        "{err}"
    );
    // A preprocessor is not a postprocessor either.
    let err = host
        .load(
            "pre",
            &plugin_config("misbehave", ""),
            PluginKind::Postprocessor,
        )
        .unwrap_err();
    assert!(
        matches!(err.cause, PluginErrorCause::WrongWorld { .. }),
        "{err}"
    );
}

#[test]
fn compiled_plugins_are_cached_across_hosts() {
    let cache = tempfile::tempdir().unwrap();
    let options = EngineOptions {
        cache_dir: Some(cache.path().to_owned()),
        ..EngineOptions::default()
    };
    let config = plugin_config("misbehave", "");
    let first = PluginHost::new(&options)
        .unwrap()
        .load("m", &config, PRE)
        .unwrap();
    assert_eq!(first.cache_outcome(), CacheOutcome::Compiled);
    let second = PluginHost::new(&options)
        .unwrap()
        .load("m", &config, PRE)
        .unwrap();
    assert_eq!(second.cache_outcome(), CacheOutcome::Hit);
    echoed(&second.preprocess(&[text("a", "cached")])[0], "cached");

    // A damaged cache entry is recompiled, not fatal.
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "one entry, no temporary left: {entries:?}"
    );
    let entry = &entries[0];
    let compiled = sluice_durable::sealed::read(entry, u64::MAX)
        .expect("entries are sealed")
        .expect("the entry");
    assert!(
        compiled.starts_with(b"\x7fELF"),
        "wasmtime's own format inside"
    );
    let reload = |what: &str| {
        let plugin = PluginHost::new(&options)
            .unwrap()
            .load("m", &config, PRE)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(plugin.cache_outcome(), CacheOutcome::Compiled, "{what}");
        echoed(&plugin.preprocess(&[text("a", "again")])[0], "again");
        // Recompiled and stored whole again.
        assert_eq!(
            sluice_durable::sealed::read(entry, u64::MAX)
                .unwrap()
                .unwrap(),
            compiled,
            "{what}: the entry is rewritten"
        );
    };
    // What a power cut leaves of a file written but not synced: its
    // length, every other block zeroed (a torn cut), the header intact.
    let torn = |bytes: &[u8]| {
        let mut torn = bytes.to_vec();
        for block in torn.chunks_mut(4096).skip(1).step_by(2) {
            block.fill(0);
        }
        torn
    };
    std::fs::write(entry, b"truncated").unwrap();
    reload("a truncated entry");
    std::fs::write(entry, torn(&std::fs::read(entry).unwrap())).unwrap();
    reload("a torn entry");
    // The reproduction: an unsealed compiled file with a valid ELF
    // header and zeroed blocks (what an earlier version left after a cut).
    std::fs::write(entry, torn(&compiled)).unwrap();
    reload("a torn unsealed entry");
    // Torn bytes under a matching seal (only someone writing the cache
    // could make one) reach wasmtime's deserializer, which may fail or
    // panic: either way the plugin is recompiled and nothing else breaks.
    sluice_durable::sealed::write(entry, &torn(&compiled)).unwrap();
    reload("torn code under a valid seal");
}

#[test]
fn pooling_and_on_demand_allocation_behave_the_same() {
    for pooling in [
        sluice_agent::config::Pooling::On,
        sluice_agent::config::Pooling::Off,
    ] {
        let host = PluginHost::new(&EngineOptions {
            pooling,
            ..EngineOptions::default()
        })
        .unwrap();
        assert_eq!(
            host.engine().is_pooling(),
            pooling == sluice_agent::config::Pooling::On
        );
        let plugin = misbehave(&host, "memory_mb = 32");
        let results = plugin.preprocess(&[text("a", "x"), text("b", "alloc:64")]);
        echoed(&results[0], "x");
        assert_memory_cap(&results[1], 32);
    }
}

#[test]
fn postprocessors_receive_metadata_and_tensors() {
    let host = host();
    let plugin = load(
        &host,
        "echo-post",
        "echo-postprocess",
        PluginKind::Postprocessor,
        "",
    );
    let tensor = Tensor::from_f32("scores", vec![1, 3], &[0.1, 0.2, 0.7]);
    let ok = Inferred {
        meta: Metadata::new("item-1", "image/png"),
        tensors: vec![tensor.clone()],
    };
    let bad = Inferred {
        meta: Metadata::new("item-2", "image/png").with_attribute("fail", "1"),
        tensors: vec![tensor],
    };
    let results = plugin.postprocess(&[ok, bad]);
    let doc = results[0].as_ref().unwrap();
    assert_eq!(doc.content_type, "application/json");
    let json: serde_json::Value = serde_json::from_slice(&doc.body).unwrap();
    assert_eq!(json["id"], "item-1");
    assert_eq!(json["tensors"][0]["name"], "scores");
    assert_eq!(json["tensors"][0]["shape"], serde_json::json!([1, 3]));
    assert!(
        matches!(&results[1], Err(ItemError::InvalidInput { message, .. }) if message == "requested failure")
    );
}

#[test]
fn every_worker_gets_an_instance_when_all_call_at_once() {
    // More concurrent callers than the instance pool once allowed (8 per
    // plugin), all inside the plugin at the same time.
    let workers = 12;
    let toml = format!(
        "[runtime]\npooling = \"on\"\nworkers = {workers}\n[plugins.p]\npath = {:?}\n",
        plugin_path("misbehave").display().to_string()
    );
    let config = sluice_agent::config::Config::parse(&toml, std::path::Path::new("/")).unwrap();
    let host = PluginHost::new(&EngineOptions {
        cache_dir: Some(shared_cache_dir()),
        ..sluice_agent::runtime::engine_options(&config)
    })
    .unwrap();
    let plugin = host.load("p", &config.plugins["p"], PRE).unwrap();
    let barrier = std::sync::Barrier::new(workers);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..workers)
            .map(|ix| {
                let (plugin, barrier) = (&plugin, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    plugin.preprocess(&[text(&format!("w{ix}"), "sleep:300")])
                })
            })
            .collect();
        calls
            .into_iter()
            .flat_map(|call| call.join().unwrap())
            .filter_map(|r| r.err().map(|e| e.to_string()))
            .collect()
    });
    assert!(failures.is_empty(), "{failures:?}");
}
