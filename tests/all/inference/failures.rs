//! Each way a model, a plugin or a tensor can be bad: a bad tensor fails only
//! its item, bad models are refused with the cause, a broken plugin disables
//! only its pipeline, a preprocessor's wrong tensor fails each item clearly,
//! guests load model bytes only when configured and under the cap.

use super::{batching, digit_tensor, digits_model};
use crate::common::*;
use sluice_agent::config::Config;
use sluice_agent::infer::{InputShapes, ModelError, onnx_engine, read_model_file};
use sluice_agent::pipeline::process_all;
use sluice_agent::plugin::{EngineOptions, PluginHost, PluginKind, scheduler_nn};
use sluice_agent::runtime::Runtime;
use sluice_agent::schedule::Scheduler;
use sluice_agent::types::{DType, ItemError, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[test]
fn a_bad_tensor_fails_only_its_item() {
    let scheduler = Scheduler::start(digits_model(), batching(8)).unwrap();
    let good = vec![digit_tensor("0000.png")];
    let wrong_shape = vec![Tensor::from_f32("input", vec![1, 63], &[0.0; 63])];
    let wrong_dtype = vec![Tensor {
        name: "input".into(),
        dtype: DType::U8,
        shape: vec![1, 64],
        data: vec![0; 64],
    }];
    let truncated = vec![Tensor {
        data: vec![0; 10],
        ..digit_tensor("0001.png")
    }];
    let two_inputs = vec![digit_tensor("0002.png"), digit_tensor("0003.png")];
    let results = scheduler.infer_many(vec![
        good.clone(),
        wrong_shape,
        wrong_dtype,
        truncated,
        two_inputs,
        good,
    ]);
    assert!(results[0].is_ok() && results[5].is_ok());
    let message = |r: &Result<Vec<Tensor>, ItemError>| match r {
        Err(ItemError::Inference { model, message }) => {
            assert_eq!(model, "digits");
            message.clone()
        }
        other => panic!("expected an inference error, got {other:?}"),
    };
    assert!(
        message(&results[1]).contains("[N, 64]"),
        "{}",
        message(&results[1])
    );
    assert!(
        message(&results[2]).contains("F32"),
        "{}",
        message(&results[2])
    );
    assert!(
        message(&results[3]).contains("bytes"),
        "{}",
        message(&results[3])
    );
    assert!(
        message(&results[4]).contains("1 input"),
        "{}",
        message(&results[4])
    );
}

fn load_error(path: &Path, sha256: Option<&str>) -> ModelError {
    match read_model_file("m", path, sha256)
        .and_then(|bytes| onnx_engine().load("m", &bytes, &InputShapes::new()))
    {
        Ok(_) => panic!("{} must be refused", path.display()),
        Err(e) => e,
    }
}

#[test]
fn bad_models_are_refused_with_the_cause() {
    let digits = repo_root().join("models/digits/digits_mlp.onnx");
    let err = load_error(&digits, Some(&"0".repeat(64)));
    assert!(
        matches!(&err, ModelError::Digest { actual, .. } if actual.starts_with("7aeb717b")),
        "{err}"
    );

    let err = load_error(
        &repo_root().join("models/test/unsupported_scaler.onnx"),
        None,
    );
    assert!(
        matches!(&err, ModelError::Unsupported { ops, .. } if ops == &["Scaler"]),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let truncated: PathBuf = dir.path().join("truncated.onnx");
    let bytes = std::fs::read(&digits).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        load_error(&truncated, None),
        ModelError::Parse { .. }
    ));

    let err = load_error(&dir.path().join("missing.onnx"), None);
    assert!(
        matches!(&err, ModelError::Read { path, .. } if path.ends_with("missing.onnx")),
        "{err}"
    );
    // The OS error is kept as the source, not flattened into text.
    let os_error = std::error::Error::source(&err).and_then(|e| e.downcast_ref::<std::io::Error>());
    assert_eq!(
        os_error.map(std::io::Error::kind),
        Some(std::io::ErrorKind::NotFound),
        "{err}"
    );

    // An input with open dimensions must be given its shape.
    let text_direction =
        repo_root().join("models/text-direction/ch_ppocr_mobile_v2.0_cls_infer.onnx");
    let err = load_error(&text_direction, None);
    assert!(err.to_string().contains("input_shapes.x"), "{err}");
    let shapes = InputShapes::from([("x".to_owned(), vec![3, 48, 192])]);
    let model = onnx_engine()
        .load(
            "text-direction",
            &std::fs::read(&text_direction).unwrap(),
            &shapes,
        )
        .unwrap();
    assert_eq!(
        model.inputs()[0].shape,
        vec![None, Some(3), Some(48), Some(192)]
    );
    assert_eq!(model.outputs()[0].shape, vec![None, Some(2)]);
}

#[test]
fn a_broken_plugin_disables_only_its_pipeline() {
    let text = std::fs::read_to_string(repo_root().join("examples/digits/sluice.toml")).unwrap();
    let broken = format!(
        "{text}\n[plugins.ghost]\npath = \"/nonexistent/ghost.wasm\"\n\n[pipelines.haunted]\npreprocess = \"ghost\"\nmodel = \"digits\"\npostprocess = \"digits-post\"\n"
    );
    let config = Config::parse(&broken, &repo_root().join("examples/digits")).unwrap();
    let runtime = Runtime::start(config).unwrap();
    assert!(runtime.pipeline(Some("digits")).is_ok());
    assert!(runtime.pipeline(Some("haunted")).is_err());
    let problems: Vec<String> = runtime.problems().iter().map(|p| p.to_string()).collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("plugin `ghost`") && p.contains("/nonexistent/ghost.wasm")),
        "{problems:?}"
    );
    let (items, _) = digit_items();
    let outcomes = process_all(
        runtime.pipeline(Some("digits")).unwrap(),
        items[..5].to_vec(),
        &|_| {},
    );
    assert!(outcomes.iter().all(|o| o.result.is_ok()));
}

#[test]
fn a_preprocessor_producing_the_wrong_tensor_fails_each_item_clearly() {
    // `misbehave` echoes bytes as a u8 tensor: not what the digits model takes.
    let example = std::fs::read_to_string(repo_root().join("examples/digits/sluice.toml")).unwrap();
    let config_text = example.replace(
        "path = \"bundled:image-preprocess\"",
        &format!(
            "path = {:?}",
            plugin_path("misbehave").display().to_string()
        ),
    );
    let mut config = Config::parse(&config_text, &repo_root().join("examples/digits")).unwrap();
    config.plugins.get_mut("digits-pre").unwrap().config = toml::Table::new();
    // Without a start-up sample (which would refuse the pipeline at start).
    config.pipelines.get_mut("digits").unwrap().sample = None;
    let runtime = Runtime::start(config).unwrap();
    let outcomes = runtime
        .pipeline(None)
        .unwrap()
        .process(vec![text("a", "hello"), text("b", "invalid")]);
    assert!(
        matches!(&outcomes[0].result, Err(ItemError::Inference { message, .. }) if message.contains("input `input`")),
        "{:?}",
        outcomes[0]
    );
    assert!(
        matches!(&outcomes[1].result, Err(ItemError::InvalidInput { .. })),
        "{:?}",
        outcomes[1]
    );
}

#[test]
fn guests_load_model_bytes_only_when_configured_and_under_the_cap() {
    let models = repo_root().join("models/digits");
    let size = std::fs::metadata(models.join("digits_mlp.onnx"))
        .unwrap()
        .len() as usize;
    let body = format!(
        "[plugins.p.config]\nmodel_file = \"/m/digits_mlp.onnx\"\ninput = \"input\"\n[plugins.p.grants]\ndirs = [{{ host = {:?}, guest = \"/m\" }}]\n",
        models.display().to_string()
    );
    let digit = item(
        "d",
        "application/octet-stream",
        digit_tensor("0000.png").data,
    );
    // The guest is told why (not allowed, over the cap), not only that the
    // load failed.
    for (cap, expect) in [
        (0, Err("loading model bytes from a plugin is not allowed")),
        (size - 1, Err("over runtime.guest_model_max_bytes")),
        (size, Ok(())),
    ] {
        let host = PluginHost::with_nn(
            &EngineOptions::default(),
            scheduler_nn(&BTreeMap::new(), cap),
        )
        .unwrap();
        let guest = load(
            &host,
            "nn-guest",
            "nn-guest",
            PluginKind::Preprocessor,
            &body,
        );
        let result = guest.preprocess(std::slice::from_ref(&digit)).remove(0);
        match (expect, result) {
            (Ok(()), Ok(tensors)) => assert_eq!(tensors[0].shape, vec![1, 10]),
            (Err(needle), Err(ItemError::Internal { message, .. })) => {
                assert!(message.contains(needle), "cap {cap}: {message}")
            }
            (expect, result) => panic!("cap {cap}: expected {expect:?}, got {result:?}"),
        }
    }
}
