//! The bundled plugins, run as real components in a real host: each one's
//! configuration, happy path and item errors.

use crate::common::*;
use sluice_agent::plugin::{Plugin, PluginKind};
use sluice_agent::types::{DType, Document, Inferred, ItemError, Metadata, Tensor};
use std::io::Cursor;

const PRE: PluginKind = PluginKind::Preprocessor;
const POST: PluginKind = PluginKind::Postprocessor;

fn png(width: u32, height: u32, pixel: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb(pixel(x, y)));
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    bytes
}

fn jpeg(width: u32, height: u32, value: u8) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(width, height, image::Rgb([value; 3]));
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
        .unwrap();
    bytes
}

fn only_tensor(result: &Result<Vec<Tensor>, ItemError>) -> &Tensor {
    let tensors = result.as_ref().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tensors.len(), 1);
    &tensors[0]
}

fn json(result: &Result<Document, ItemError>) -> serde_json::Value {
    let doc = result.as_ref().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(doc.content_type, "application/json");
    serde_json::from_slice(&doc.body).unwrap()
}

fn scores(values: &[f32]) -> Inferred {
    Inferred {
        meta: Metadata::new("x", "image/png"),
        tensors: vec![Tensor::from_f32(
            "probabilities",
            vec![1, values.len()],
            values,
        )],
    }
}

fn image_pre(body: &str) -> Plugin {
    load(
        &host(),
        "image-pre",
        "image-preprocess",
        PRE,
        &format!("[plugins.p.config]\n{body}"),
    )
}

#[test]
fn image_preprocess_scales_normalizes_and_lays_out_channels() {
    // 2x1 RGB: left pixel (0, 100, 200), right pixel (255, 50, 25).
    let bytes = png(
        2,
        1,
        |x, _| if x == 0 { [0, 100, 200] } else { [255, 50, 25] },
    );
    let nchw = image_pre(
        "width = 2\nheight = 1\nresize = \"none\"\nscale = 1.0\nmean = [10.0]\nstd = [2.0]\n",
    );
    let t = only_tensor(&nchw.preprocess(&[item("a", "image/png", bytes.clone())])[0]).clone();
    assert_eq!(
        (t.name.as_str(), t.dtype, t.shape.clone()),
        ("input", DType::F32, vec![1, 3, 1, 2])
    );
    let expect = |v: f32| (v - 10.0) / 2.0;
    assert_eq!(
        t.f32_values().unwrap(),
        vec![
            expect(0.),
            expect(255.),
            expect(100.),
            expect(50.),
            expect(200.),
            expect(25.)
        ]
    );

    let nhwc = image_pre(
        "width = 2\nheight = 1\nresize = \"none\"\nlayout = \"nhwc\"\noutput = \"pixels\"\n",
    );
    let t = only_tensor(&nhwc.preprocess(&[item("a", "image/png", bytes)])[0]).clone();
    assert_eq!(
        (t.name.as_str(), t.shape.clone()),
        ("pixels", vec![1, 1, 2, 3])
    );
    let values = t.f32_values().unwrap();
    assert!(
        (values[0] - 0.0).abs() < 1e-6 && (values[3] - 1.0).abs() < 1e-6,
        "{values:?}"
    );
}

#[test]
fn image_preprocess_decodes_jpeg_and_resizes_to_the_configured_size() {
    let plugin = image_pre("width = 4\nheight = 3\ncolor = \"gray\"\nlayout = \"flat\"\n");
    let results = plugin.preprocess(&[
        item("j", "image/jpeg", jpeg(40, 30, 128)),
        item("p", "image/png", png(7, 9, |_, _| [0; 3])),
    ]);
    let j = only_tensor(&results[0]);
    assert_eq!(j.shape, vec![1, 12]);
    assert!(
        j.f32_values()
            .unwrap()
            .iter()
            .all(|v| (v - 128.0 / 255.0).abs() < 0.02),
        "{:?}",
        j.f32_values()
    );
    assert_eq!(only_tensor(&results[1]).shape, vec![1, 12]);
}

#[test]
fn image_preprocess_center_crops_after_resizing_the_shorter_side() {
    // 4x2: left half black, right half white; shorter side 2 -> crop the middle 2x2.
    let bytes = png(4, 2, |x, _| if x < 2 { [0; 3] } else { [255; 3] });
    let plugin = image_pre(
        "width = 2\nheight = 2\nresize = \"shorter-side\"\nfilter = \"nearest\"\ncolor = \"gray\"\nlayout = \"flat\"\nscale = 1.0\n",
    );
    let values = only_tensor(&plugin.preprocess(&[item("c", "image/png", bytes)])[0])
        .f32_values()
        .unwrap();
    assert_eq!(values, vec![0.0, 255.0, 0.0, 255.0]);
}

#[test]
fn image_preprocess_reports_bad_items_without_failing_the_batch() {
    let plugin = image_pre("width = 2\nheight = 2\nresize = \"none\"\n");
    let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec();
    let mut truncated = png(2, 2, |_, _| [1; 3]);
    truncated.truncate(30);
    let results = plugin.preprocess(&[
        item("good", "image/png", png(2, 2, |_, _| [9; 3])),
        item("junk", "image/png", b"definitely not an image".to_vec()),
        item("gif", "image/gif", gif),
        item("truncated", "image/png", truncated),
        item("wrong-size", "image/png", png(3, 2, |_, _| [0; 3])),
    ]);
    assert!(results[0].is_ok());
    assert!(
        matches!(&results[1], Err(ItemError::InvalidInput { message, .. }) if message.contains("cannot decode")),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(&results[2], Err(ItemError::Unsupported { .. })),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(&results[3], Err(ItemError::InvalidInput { .. })),
        "{:?}",
        results[3]
    );
    assert!(
        matches!(&results[4], Err(ItemError::InvalidInput { message, .. }) if message.contains('3')),
        "{:?}",
        results[4]
    );
}

#[test]
fn image_preprocess_refuses_a_bad_config_at_load() {
    let err = host()
        .load(
            "image-pre",
            &plugin_config(
                "image-preprocess",
                "[plugins.p.config]\nwidth = 8\nheight = 8\nstd = [0.0]\n",
            ),
            PRE,
        )
        .unwrap_err();
    assert!(err.to_string().contains("std"), "{err}");
    let err = host()
        .load(
            "image-pre",
            &plugin_config("image-preprocess", "[plugins.p.config]\nwidth = 8\n"),
            PRE,
        )
        .unwrap_err();
    assert!(err.to_string().contains("height"), "{err}");
}

#[test]
fn classify_postprocess_ranks_top_k_with_labels_from_a_granted_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("labels.txt"), "cat\ndog\nbird\n").unwrap();
    let body = format!(
        "[plugins.p.config]\ntop_k = 2\nlabels_file = \"/model/labels.txt\"\n[plugins.p.grants]\ndirs = [{{ host = {:?}, guest = \"/model\" }}]\n",
        dir.path().display().to_string()
    );
    let plugin = load(&host(), "classify", "classify-postprocess", POST, &body);
    let results = plugin.postprocess(&[
        scores(&[0.1, 0.7, 0.2]),
        scores(&[0.5, f32::NAN, 0.5]),
        scores(&[0.5, 0.5]),
    ]);
    let top = json(&results[0]);
    assert_eq!(top["label"], "dog");
    assert_eq!(top["index"], 1);
    assert_eq!(top["top"].as_array().unwrap().len(), 2);
    assert_eq!(top["top"][1]["label"], "bird");
    assert!(
        matches!(&results[1], Err(ItemError::InvalidInput { message, .. }) if message.contains("NaN")),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(&results[2], Err(ItemError::InvalidInput { .. })),
        "3 labels, 2 scores: {:?}",
        results[2]
    );
}

#[test]
fn classify_postprocess_applies_softmax_when_asked() {
    let plugin = load(
        &host(),
        "classify",
        "classify-postprocess",
        POST,
        "[plugins.p.config]\nsoftmax = true\nlabels = [\"a\", \"b\"]\n",
    );
    let top = json(&plugin.postprocess(&[scores(&[0.0, 2.0_f32.ln()])])[0]);
    assert_eq!(top["label"], "b");
    assert!(
        (top["score"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-6,
        "{top}"
    );
}

#[test]
fn classify_postprocess_without_the_grant_cannot_read_its_labels() {
    let err = host()
        .load(
            "classify",
            &plugin_config(
                "classify-postprocess",
                "[plugins.p.config]\nlabels_file = \"/model/labels.txt\"\n",
            ),
            POST,
        )
        .unwrap_err();
    assert_eq!(err.plugin, "classify");
    assert!(err.to_string().contains("/model/labels.txt"), "{err}");
}

fn tabular(body: &str) -> Plugin {
    load(
        &host(),
        "tabular",
        "tabular-preprocess",
        PRE,
        &format!("[plugins.p.config]\n{body}"),
    )
}

#[test]
fn tabular_preprocess_scales_json_and_csv_records_in_feature_order() {
    let plugin = tabular("features = [\"a\", \"b\"]\nmean = [1.0, 10.0]\nscale = [2.0, 5.0]\n");
    let results = plugin.preprocess(&[
        item(
            "j",
            "application/json",
            r#"{"b": 20, "a": 5, "ignored": 1}"#,
        ),
        item("c", "text/csv", "b,a,label\n15,3,normal\n"),
        item("r", "text/csv", "7,10"),
    ]);
    assert_eq!(
        only_tensor(&results[0]).f32_values().unwrap(),
        vec![2.0, 2.0]
    );
    assert_eq!(
        only_tensor(&results[1]).f32_values().unwrap(),
        vec![1.0, 1.0]
    );
    assert_eq!(
        only_tensor(&results[2]).f32_values().unwrap(),
        vec![3.0, 0.0]
    );
    assert_eq!(only_tensor(&results[0]).shape, vec![1, 2]);
}

#[test]
fn tabular_preprocess_names_the_missing_or_bad_feature() {
    let plugin = tabular("features = [\"temp\", \"rpm\"]\n");
    let results = plugin.preprocess(&[
        item("m", "application/json", r#"{"temp": 1}"#),
        item("n", "application/json", r#"{"temp": "hot", "rpm": 3}"#),
        item("ok", "application/json", r#"{"temp": 1, "rpm": 2}"#),
    ]);
    assert!(
        matches!(&results[0], Err(ItemError::InvalidInput { message, .. }) if message.contains("`rpm`")),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(&results[1], Err(ItemError::InvalidInput { message, .. }) if message.contains("`temp`")),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok());
}

#[test]
fn threshold_postprocess_raises_an_alert_above_the_threshold() {
    let plugin = load(
        &host(),
        "threshold",
        "threshold-postprocess",
        POST,
        "[plugins.p.config]\nthreshold = 0.5\n",
    );
    let score = |s: f32| Inferred {
        meta: Metadata::new("s", "text/csv"),
        tensors: vec![Tensor::from_f32("score", vec![1, 1], &[s])],
    };
    let results = plugin.postprocess(&[score(0.9), score(0.1)]);
    let (high, low) = (json(&results[0]), json(&results[1]));
    assert_eq!(
        (high["label"].as_str(), high["alert"].as_bool()),
        (Some("anomaly"), Some(true))
    );
    assert_eq!(
        (low["label"].as_str(), low["alert"].as_bool()),
        (Some("normal"), Some(false))
    );
}

#[test]
fn every_bundled_plugin_is_embedded_and_loads_from_the_binary() {
    let names = sluice_agent::bundled::names();
    for expected in [
        "image-preprocess",
        "classify-postprocess",
        "tabular-preprocess",
        "threshold-postprocess",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
        let bytes = sluice_agent::bundled::get(expected).unwrap();
        assert_eq!(bytes, std::fs::read(plugin_path(expected)).unwrap());
        // The embedded bytes are a component of a Sluice world that links
        // against this host.
        let report = sluice_agent::plugin::inspect_component(
            &host(),
            bytes,
            &sluice_agent::config::Grants::default(),
        )
        .unwrap();
        assert!(report.world.is_some(), "{expected}: {report:?}");
        assert!(report.link_error.is_none(), "{expected}: {report:?}");
    }
    assert!(
        !names.contains(&"misbehave"),
        "test fixtures must not ship in the binary"
    );
}
