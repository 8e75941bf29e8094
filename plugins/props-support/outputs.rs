//! Strategies shared by the postprocessors' property tests (included by
//! path from each plugin's `src/props.rs`, natively only): model outputs
//! as a model could hand them over, or not.

use proptest::prelude::*;
use sluice_guest::{Dtype, InferenceOutput, Metadata, Tensor};

/// Cases: `PROPTEST_CASES` if set (longer runs), else `default`.
pub fn config(default: u32) -> ProptestConfig {
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

pub fn dtypes() -> impl Strategy<Value = Dtype> {
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
pub fn tensors(names: &'static [&'static str]) -> impl Strategy<Value = Tensor> {
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

pub fn outputs(names: &'static [&'static str]) -> impl Strategy<Value = InferenceOutput> {
    prop::collection::vec(tensors(names), 0..3).prop_map(|tensors| InferenceOutput {
        meta: Metadata {
            id: "item".into(),
            content_type: String::new(),
            attributes: Vec::new(),
        },
        tensors,
    })
}
