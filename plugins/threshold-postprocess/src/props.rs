//! Property tests (bounded fuzzing on stable) of the postprocessor,
//! natively: whatever tensors the model hands over (any dtype, shape or
//! data, consistent or not, NaN and infinities included), `postprocess`
//! never panics (a panic would trap the wasm instance) and answers a JSON
//! verdict on the first score, or an item error.
//!
//! `PROPTEST_CASES=100000 cargo test --target x86_64-unknown-linux-gnu -p threshold-postprocess props`
//! runs longer (see `docs/fuzzing.md`).

use super::*;
use proptest::prelude::*;
use serde_json::Value;
use sluice_guest::{Dtype, Metadata, Tensor};

/// Cases: `PROPTEST_CASES` if set (longer runs), else `default`.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn dtypes() -> impl Strategy<Value = Dtype> {
    prop_oneof![
        Just(Dtype::Fp16),
        Just(Dtype::Fp32),
        Just(Dtype::Fp64),
        Just(Dtype::Bf16),
        Just(Dtype::U8),
        Just(Dtype::I32),
        Just(Dtype::I64),
    ]
}

/// A tensor as a model could hand it over, or not: a consistent one (data
/// the size its shape and dtype say, of arbitrary bytes or special floats),
/// or an arbitrary shape (huge, empty, zero-sized axes) with arbitrary data.
fn tensors(names: &'static [&'static str]) -> impl Strategy<Value = Tensor> {
    let name = prop_oneof![
        prop::sample::select(names).prop_map(str::to_owned),
        ".{0,8}"
    ];
    let special = prop_oneof![
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(f32::MAX),
        Just(f32::MIN_POSITIVE),
        Just(-0.0f32),
        -100f32..100f32,
        any::<f32>(),
    ];
    let consistent = (
        name.clone(),
        dtypes(),
        prop::collection::vec(prop_oneof![Just(1u32), 1u32..12], 0..4),
        any::<u64>(),
        prop::collection::vec(special, 1..8),
    )
        .prop_map(|(name, dtype, shape, seed, floats)| {
            let bytes: usize = shape.iter().map(|&d| d as usize).product::<usize>() * dtype.size();
            let data = if dtype == Dtype::Fp32 {
                floats
                    .iter()
                    .cycle()
                    .take(bytes / 4)
                    .flat_map(|f| f.to_le_bytes())
                    .collect()
            } else {
                (0..bytes as u64)
                    .map(|i| (seed.rotate_left(i as u32 % 64) ^ i) as u8)
                    .collect()
            };
            Tensor {
                name,
                dtype,
                shape,
                data,
            }
        });
    let arbitrary = (
        name,
        dtypes(),
        prop::collection::vec(
            prop_oneof![
                Just(0u32),
                Just(1),
                Just(u32::MAX),
                Just(1 << 16),
                Just(1 << 30),
                any::<u32>()
            ],
            0..5,
        ),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(name, dtype, shape, data)| Tensor {
            name,
            dtype,
            shape,
            data,
        });
    prop_oneof![3 => consistent, 1 => arbitrary]
}

fn outputs(names: &'static [&'static str]) -> impl Strategy<Value = InferenceOutput> {
    prop::collection::vec(tensors(names), 0..3).prop_map(|tensors| InferenceOutput {
        meta: Metadata {
            id: "item".into(),
            content_type: String::new(),
            attributes: Vec::new(),
        },
        tensors,
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_output_gives_a_verdict_on_its_first_score_or_an_item_error(
        threshold in prop_oneof![-1f32..1f32, Just(0.0f32), Just(f32::MAX)],
        output in outputs(&["score", "other"]),
    ) {
        let mut p = ThresholdPostprocess::from_config(Config {
            input: "score".into(),
            threshold,
            above: "above".into(),
            below: "below".into(),
        })
        .unwrap();
        let scores = output.tensors.iter().find(|t| t.name == "score").map(|t| t.to_f32());
        match p.postprocess(output) {
            Ok(document) => {
                prop_assert_eq!(document.content_type.as_str(), "application/json");
                let v: Value = serde_json::from_slice(&document.body).unwrap();
                let first = scores.unwrap().unwrap()[0];
                prop_assert!(!first.is_nan());
                prop_assert_eq!(v["alert"].as_bool(), Some(first > threshold));
                prop_assert_eq!(
                    v["label"].as_str(),
                    Some(if first > threshold { "above" } else { "below" })
                );
            }
            Err(ItemError::InvalidInput(m) | ItemError::Unsupported(m)) => {
                prop_assert!(!m.is_empty())
            }
            Err(ItemError::Internal(m)) => prop_assert!(false, "internal error: {m}"),
        }
    }
}
