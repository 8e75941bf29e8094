//! Property tests (bounded fuzzing on stable) of the postprocessor,
//! natively: whatever tensors the model hands over (any dtype, shape or
//! data, consistent or not, NaN and infinities included), `postprocess`
//! never panics (a panic would trap the wasm instance) and answers a JSON
//! classification that ranks real classes, or an item error.
//!
//! `PROPTEST_CASES=100000 cargo test --target x86_64-unknown-linux-gnu -p classify-postprocess props`
//! runs longer (see `docs/fuzzing.md`).

use super::*;
use proptest::prelude::*;
use serde_json::Value;

#[path = "../../props-support/outputs.rs"]
mod support;
use support::{config, outputs};

fn plugins() -> impl Strategy<Value = ClassifyPostprocess> {
    (
        any::<bool>(),
        1u32..8,
        prop_oneof![
            Just(None),
            prop::collection::vec("[a-z]{0,3}", 1..6).prop_map(Some)
        ],
    )
        .prop_map(|(softmax, top_k, labels)| {
            ClassifyPostprocess::from_config(Config {
                input: "probabilities".into(),
                softmax,
                top_k,
                labels_file: None,
                labels,
            })
            .unwrap()
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_output_gives_a_ranking_of_its_classes_or_an_item_error(
        mut p in plugins(),
        output in outputs(&["probabilities", "logits"]),
    ) {
        let scores = output
            .tensors
            .iter()
            .find(|t| t.name == "probabilities")
            .map(|t| t.to_f32());
        match p.postprocess(output) {
            Ok(document) => {
                prop_assert_eq!(document.content_type.as_str(), "application/json");
                let v: Value = serde_json::from_slice(&document.body).unwrap();
                let classes = scores.unwrap().unwrap().len();
                let top = v["top"].as_array().unwrap();
                prop_assert_eq!(top.len(), p.top_k.min(classes));
                for class in top {
                    prop_assert!(class["index"].as_u64().unwrap() < classes as u64);
                    prop_assert!(class["score"].as_f64().is_some(), "{class}");
                }
                prop_assert_eq!(&v["index"], &top[0]["index"]);
            }
            Err(ItemError::InvalidInput(m) | ItemError::Unsupported(m)) => {
                prop_assert!(!m.is_empty())
            }
            Err(ItemError::Internal(m)) => prop_assert!(false, "internal error: {m}"),
        }
    }
}
