//! Tests of the shape arithmetic ([`shape_bytes`], [`Tensor::check`]) with
//! hostile dimensions, as plugins hand them to the host (through the plugin
//! contract and through `wasi:nn`, where a dimension is any `u32`) and as a
//! model's engine reports them: never an overflow (a panic in a debug
//! build, a wrapped product that may match the data in a release build),
//! always the exact size or a refusal past [`MAX_TENSOR_BYTES`].
//!
//! `PROPTEST_CASES=100000 cargo test -p sluice --lib tensor_props` runs
//! longer (see `docs/fuzzing.md`).

use crate::{DType, MAX_TENSOR_BYTES, ShapeError, Tensor, shape_bytes, stack_items};
use proptest::prelude::*;

const DTYPES: [DType; 7] = [
    DType::F16,
    DType::F32,
    DType::F64,
    DType::BF16,
    DType::U8,
    DType::I32,
    DType::I64,
];

/// The size in exact arithmetic: what [`shape_bytes`] must agree with.
fn reference(shape: &[usize], dtype: DType) -> Option<usize> {
    let max = MAX_TENSOR_BYTES as u128;
    if shape.iter().any(|&d| d as u128 > max) {
        return None;
    }
    if shape.contains(&0) {
        return Some(0);
    }
    let mut bytes = dtype.size() as u128;
    for &d in shape {
        bytes = bytes.saturating_mul(d as u128);
    }
    (bytes <= max).then_some(bytes as usize)
}

fn tensor(shape: Vec<usize>, dtype: DType, len: usize) -> Tensor {
    Tensor {
        name: "x".into(),
        dtype,
        shape,
        data: vec![0; len],
    }
}

#[test]
fn the_reported_wasi_nn_shape_is_refused_not_an_overflow() {
    // `compute` with dims [2^31, 2^31] (FP32) panicked with "attempt to
    // multiply with overflow" in a debug build.
    let reported = tensor(vec![1 << 31, 1 << 31], DType::F32, 0);
    assert!(matches!(reported.check(), Err(ShapeError::TooLarge { .. })));
    assert!(!reported.is_consistent());
    assert_eq!(reported.element_count(), None);
    // In a release build the products wrap: each of these describes 2^64
    // bytes, which wraps to 0 and so "matched" empty data.
    for shape in [
        vec![1 << 31, 1 << 31, 4],
        vec![1 << 16, 1 << 16, 1 << 16, 1 << 16],
        vec![usize::MAX, usize::MAX],
    ] {
        let t = tensor(shape.clone(), DType::U8, 0);
        assert!(t.check().is_err(), "{shape:?} accepted");
    }
    // The largest dimensions `wasi:nn` can carry, any rank.
    for rank in 1..6 {
        let t = tensor(vec![u32::MAX as usize; rank], DType::I64, 8);
        assert!(t.check().is_err(), "rank {rank} accepted");
    }
    assert_eq!(tensor(vec![2, 3], DType::F32, 24).check(), Ok(()));
}

#[test]
fn the_bound_is_inclusive_and_named() {
    let at = tensor(vec![MAX_TENSOR_BYTES / 4], DType::F32, 0);
    assert_eq!(shape_bytes(&at.shape, at.dtype), Some(MAX_TENSOR_BYTES));
    let over = vec![MAX_TENSOR_BYTES / 4 + 1];
    assert_eq!(shape_bytes(&over, DType::F32), None);
    let message = tensor(over, DType::F32, 0).check().unwrap_err().to_string();
    assert!(message.contains(&MAX_TENSOR_BYTES.to_string()), "{message}");
}

#[test]
fn element_access_and_stacking_take_hostile_values_without_panicking() {
    let t = tensor(vec![1, 2], DType::F64, 16);
    assert_eq!(t.element_f64(usize::MAX), None);
    assert_eq!(t.element_f64(usize::MAX / 8 + 1), None);
    assert_eq!(t.element_f64(1), Some(0.0));
    // A scalar (no batch axis) and items of different sizes.
    let items = vec![
        vec![tensor(vec![], DType::U8, 1)],
        vec![tensor(vec![], DType::U8, 3)],
    ];
    let stacked = stack_items(&items);
    assert_eq!(stacked[0].data.len(), 4);
    assert!(stack_items(&[]).is_empty());
}

/// Dimensions as hostile inputs have them: small, zero, powers of two near
/// the bound and near overflow, the largest `u32` and `usize`, anything.
fn dimension() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..4,
        1usize..100_000,
        (0u32..64).prop_map(|p| 1usize.checked_shl(p).unwrap_or(usize::MAX)),
        (0u32..64).prop_map(|p| 1usize.checked_shl(p).map_or(usize::MAX, |v| v - 1)),
        Just(u32::MAX as usize),
        Just(usize::MAX),
        any::<usize>(),
    ]
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn shape_bytes_is_exact_or_refused_past_the_bound(
        shape in proptest::collection::vec(dimension(), 0..9),
        dtype in proptest::sample::select(DTYPES.to_vec()),
    ) {
        prop_assert_eq!(shape_bytes(&shape, dtype), reference(&shape, dtype));
    }

    #[test]
    fn check_accepts_exactly_the_data_the_shape_describes(
        shape in proptest::collection::vec(dimension(), 0..9),
        dtype in proptest::sample::select(DTYPES.to_vec()),
        delta in -9isize..9,
    ) {
        // Data of the described length (when it can be had), or about it.
        let described = reference(&shape, dtype);
        let len = described.filter(|&b| b <= 1 << 16).unwrap_or(64);
        let len = len.saturating_add_signed(delta);
        let t = tensor(shape, dtype, len);
        let consistent = described == Some(len);
        prop_assert_eq!(t.check().is_ok(), consistent, "{:?}", t.check());
        if consistent {
            prop_assert_eq!(t.element_count(), Some(len / dtype.size()));
        }
    }
}
