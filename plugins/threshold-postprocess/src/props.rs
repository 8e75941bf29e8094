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

#[path = "../../props-support/outputs.rs"]
mod support;
use support::{config, outputs};

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
