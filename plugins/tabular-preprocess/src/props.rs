//! Property tests (bounded fuzzing on stable) of the record parsers,
//! natively: whatever bytes, content type and format arrive, `preprocess`
//! never panics (a panic would trap the wasm instance) and answers one
//! `[1, F]` tensor of finite values or an item error.
//!
//! `PROPTEST_CASES=100000 cargo test --target x86_64-unknown-linux-gnu -p tabular-preprocess props`
//! runs longer (see `docs/fuzzing.md`).

use super::*;
use proptest::prelude::*;
use proptest::sample::Index;
use sluice_guest::Metadata;

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

fn model_file(name: &str) -> String {
    format!("{}/../../models/anomaly/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The anomaly model's plugin (30 features from its scaler file), or a
/// small inline one, in any format mode.
fn plugins() -> impl Strategy<Value = TabularPreprocess> {
    let config = prop_oneof![
        Just(format!(
            r#"{{"scaler_file": "{}""#,
            model_file("scaler.json")
        )),
        Just(r#"{"features": ["a", "b", "c"], "mean": [1, 2, 3], "scale": [2, 4, 0.5]"#.into()),
        Just(r#"{"features": ["x"], "mean": [-1e300], "scale": [1e-300]"#.into()),
    ];
    let format = prop_oneof![Just("auto"), Just("json"), Just("csv")];
    (config, format).prop_map(|(config, format)| {
        let json = format!(r#"{config}, "format": "{format}", "output": "features"}}"#);
        TabularPreprocess::new(serde_json::from_str(&json).unwrap()).unwrap()
    })
}

/// Valid records: a line of `models/anomaly/heldout.csv` with its header or
/// alone (without the label), as JSON, and records of the inline features.
fn valid_records() -> impl Strategy<Value = Vec<u8>> {
    let csv = std::fs::read_to_string(model_file("heldout.csv")).unwrap();
    let lines: Vec<String> = csv.lines().map(str::to_owned).collect();
    let header = lines[0].clone();
    let rows = lines.len() - 1;
    (1..=rows, 0u8..4).prop_map(move |(i, kind)| {
        let row = &lines[i];
        let names: Vec<&str> = header.split(',').collect();
        let fields: Vec<&str> = row.split(',').collect();
        match kind {
            0 => format!("{header}\n{row}\n").into_bytes(),
            1 => fields[..fields.len() - 1].join(",").into_bytes(),
            2 => {
                let object: serde_json::Map<String, serde_json::Value> = names
                    .iter()
                    .zip(&fields)
                    .map(|(n, f)| (n.to_string(), serde_json::Value::String(f.to_string())))
                    .collect();
                serde_json::to_vec(&object).unwrap()
            }
            _ => format!("\"a\",b,\"c\"\r\n\"{}\",2,\"3e38\"\r\n", fields[0]).into_bytes(),
        }
    })
}

#[derive(Debug, Clone)]
enum Edit {
    Set(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
}

fn edits() -> impl Strategy<Value = Edit> {
    let interesting = prop_oneof![
        Just(b",".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"{".to_vec()),
        Just(b"}".to_vec()),
        Just(b"e999".to_vec()),
        Just(b"NaN".to_vec()),
        Just(b"inf".to_vec()),
        Just("\u{feff}".as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 1..8),
    ];
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), interesting).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), 1usize..32).prop_map(|(i, n)| Edit::Remove(i, n)),
    ]
}

fn apply(mut data: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = data.len();
        match edit {
            Edit::Insert(i, bytes) => {
                let at = i.index(len + 1);
                data.splice(at..at, bytes.iter().copied());
            }
            _ if len == 0 => {}
            Edit::Set(i, b) => data[i.index(len)] = *b,
            Edit::Truncate(i) => data.truncate(i.index(len)),
            Edit::Remove(i, n) => {
                let at = i.index(len);
                data.drain(at..(at + n).min(len));
            }
        }
    }
    data
}

fn content_types() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("text/csv".to_owned()),
        Just("Text/CSV; charset=utf-8".to_owned()),
        Just("application/json".to_owned()),
        Just("application/ld+json".to_owned()),
        ".{0,24}",
    ]
}

fn input(data: Vec<u8>, content_type: String) -> RawInput {
    RawInput {
        meta: Metadata {
            id: "item".into(),
            content_type,
            attributes: Vec::new(),
        },
        data,
    }
}

fn check(
    p: &mut TabularPreprocess,
    data: Vec<u8>,
    content_type: String,
) -> Result<(), TestCaseError> {
    let features = p.standardizer.features.len();
    match p.preprocess(input(data, content_type)) {
        Ok(tensors) => {
            prop_assert_eq!(tensors.len(), 1);
            let t = &tensors[0];
            prop_assert_eq!(t.name.as_str(), "features");
            prop_assert_eq!(&t.shape, &vec![1, features as u32]);
            let values = t.to_f32().unwrap();
            prop_assert_eq!(values.len(), features);
            prop_assert!(
                values.iter().all(|v| v.is_finite()),
                "non-finite value in {values:?}"
            );
        }
        Err(ItemError::InvalidInput(m) | ItemError::Unsupported(m)) => prop_assert!(!m.is_empty()),
        Err(ItemError::Internal(m)) => prop_assert!(false, "internal error: {m}"),
    }
    Ok(())
}

/// Text made of what CSV and JSON records are made of.
fn record_text() -> impl Strategy<Value = String> {
    r#"[abcx0-9.eE+\-, "{}:\r\n\t]{0,80}"#
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_bytes_give_one_finite_vector_or_an_item_error(
        mut p in plugins(),
        data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..1024),
            record_text().prop_map(String::into_bytes),
        ],
        content_type in content_types(),
    ) {
        check(&mut p, data, content_type)?;
    }

    #[test]
    fn mutated_records_give_one_finite_vector_or_an_item_error(
        mut p in plugins(),
        record in valid_records(),
        edits in prop::collection::vec(edits(), 0..5),
        content_type in content_types(),
    ) {
        check(&mut p, apply(record, &edits), content_type)?;
    }

    #[test]
    fn both_csv_paths_read_arbitrary_quote_free_text_alike(
        text in r#"[ab1,. \t\r\n]{0,40}"#,
        max in 1usize..5,
    ) {
        prop_assert_eq!(plain_csv_rows(&text, max), quoted_csv_rows(&text, max).unwrap());
    }
}

#[test]
fn valid_heldout_records_are_accepted() {
    let config = format!(r#"{{"scaler_file": "{}"}}"#, model_file("scaler.json"));
    let mut p = TabularPreprocess::new(serde_json::from_str(&config).unwrap()).unwrap();
    let csv = std::fs::read_to_string(model_file("heldout.csv")).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    for row in lines.take(20) {
        let tensors = p
            .preprocess(input(
                format!("{header}\n{row}").into_bytes(),
                "text/csv".into(),
            ))
            .unwrap();
        assert_eq!(tensors[0].shape, vec![1, 30]);
    }
}
