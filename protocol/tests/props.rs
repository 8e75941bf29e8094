//! Property tests (bounded fuzzing on stable) of the wire types' decoders
//! and of the id and name rules a collector enforces with them.
//!
//! `PROPTEST_CASES=100000 cargo test -p sluice-protocol --test props` runs
//! longer (see `docs/fuzzing.md`).

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};
use sluice_protocol::{
    BatchAck, MAX_NAME_LEN, NameError, RawBatch, Record, RecordError, RecordHeader, RecordKind,
    ResultRecord, check_name, result_id,
};

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

fn names() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,64}"
}

fn outboxes() -> impl Strategy<Value = Option<String>> {
    // What devices make: none (older records) or hex digits.
    prop_oneof![Just(None), "[0-9a-f]{1,32}".prop_map(Some)]
}

/// A record as a device writes it, as JSON.
fn record(device: &str, pipeline: &str, outbox: Option<&str>, seq: i64, error: bool) -> Value {
    let mut record = json!({
        "kind": "result",
        "id": result_id(device, pipeline, outbox, seq),
        "device": device,
        "pipeline": pipeline,
        "seq": seq,
        "accepted_at_ms": 1,
        "completed_at_ms": 2,
        "input": {"content_type": "image/png", "bytes": 3, "attributes": {"file": "a.png"}},
        "provenance": {
            "model": "m", "model_sha256": "00", "preprocess": "p", "preprocess_sha256": "11",
            "postprocess": "q", "postprocess_sha256": "22"
        },
        "sluice_version": "0.1.0",
        "timings": {"preprocess_us": 1, "infer_us": 2, "postprocess_us": 3},
    });
    if let Some(outbox) = outbox {
        record["outbox"] = json!(outbox);
    }
    if error {
        record["error"] = json!({"kind": "invalid-input", "message": "not a PNG"});
    } else {
        record["result"] = json!({"content_type": "application/json", "body": {"label": "3"}});
    }
    record
}

/// Valid documents of every type decoded here: a batch of records, one
/// record, an acknowledgement.
fn valid_texts() -> impl Strategy<Value = String> {
    (names(), names(), outboxes(), 0i64..1 << 40, any::<bool>(), 0usize..4).prop_map(
        |(device, pipeline, outbox, seq, error, kind)| {
            let one = record(&device, &pipeline, outbox.as_deref(), seq, error);
            match kind {
                0 => json!({"protocol": 1, "device": device, "key": "k-1", "records": [one.clone(), one]}),
                1 => one,
                2 => json!({"protocol": 1, "key": "k-1", "stored": 2, "duplicates": 0, "replayed": false}),
                _ => json!({"device": device, "key": "k", "records": []}),
            }
            .to_string()
        },
    )
}

#[derive(Debug, Clone)]
enum Edit {
    Set(Index, u8),
    Truncate(Index),
    Insert(Index, &'static str),
    Remove(Index, usize),
}

fn edits() -> impl Strategy<Value = Edit> {
    let tokens = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\\",
        "\\u0000",
        "\\ud800",
        "null",
        "-1",
        "1e999",
        "18446744073709551616",
        "-9223372036854775809",
        "\"kind\":\"x\",",
        "\"seq\":1.5,",
        "\"id\":[],",
        "\"records\":{},",
        "\"outbox\":null,",
        "\"result\":{},",
        "\"error\":{},",
    ]);
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), tokens).prop_map(|(i, t)| Edit::Insert(i, t)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| Edit::Remove(i, n)),
    ]
}

fn apply(text: String, edits: &[Edit]) -> Vec<u8> {
    let mut data = text.into_bytes();
    for edit in edits {
        let len = data.len();
        match edit {
            Edit::Insert(i, t) => {
                let at = i.index(len + 1);
                data.splice(at..at, t.bytes());
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

/// Decode `bytes` as every wire type; none may panic, and whatever decodes
/// must encode and decode again to the same value.
fn decode_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(batch) = serde_json::from_slice::<RawBatch>(bytes) {
        let again: RawBatch =
            serde_json::from_str(&serde_json::to_string(&batch).unwrap()).unwrap();
        prop_assert_eq!(&again.device, &batch.device);
        prop_assert_eq!(&again.key, &batch.key);
        prop_assert_eq!(again.records.len(), batch.records.len());
        for (a, b) in again.records.iter().zip(&batch.records) {
            prop_assert_eq!(a.get(), b.get());
            // Each record is JSON text that parses again as one value (not
            // necessarily as a `Value`: a raw value keeps a lone surrogate
            // escape such as `"\ud800"`, which a `String` refuses).
            prop_assert!(serde_json::from_str::<Box<serde_json::value::RawValue>>(b.get()).is_ok());
        }
    }
    if let Ok(header) = serde_json::from_slice::<RecordHeader>(bytes) {
        let again: RecordHeader =
            serde_json::from_value(serde_json::to_value(&header).unwrap()).unwrap();
        prop_assert_eq!(&again, &header);
        let _ = header.check(&header.device);
    }
    if let Ok(ack) = serde_json::from_slice::<BatchAck>(bytes) {
        let again: BatchAck = serde_json::from_value(serde_json::to_value(&ack).unwrap()).unwrap();
        prop_assert_eq!(again, ack);
    }
    if let Ok(record) = serde_json::from_slice::<ResultRecord>(bytes) {
        let again: ResultRecord =
            serde_json::from_value(serde_json::to_value(&record).unwrap()).unwrap();
        prop_assert_eq!(&again, &record);
        // A record that decodes has a header that decodes from the same text.
        let header: RecordHeader = serde_json::from_slice(bytes).unwrap();
        prop_assert_eq!(header, record.header());
    }
    let _ = serde_json::from_slice::<Record>(bytes);
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_text_decodes_without_panicking(
        text in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            r#"[{}\[\]",:0-9a-z\\ .eE+-]{0,128}"#.prop_map(String::into_bytes),
        ],
    ) {
        decode_all(&text)?;
    }

    #[test]
    fn mutated_valid_documents_decode_without_panicking(
        text in valid_texts(),
        edits in prop::collection::vec(edits(), 0..5),
    ) {
        let unedited = edits.is_empty();
        let bytes = apply(text, &edits);
        decode_all(&bytes)?;
        if unedited {
            prop_assert!(
                serde_json::from_slice::<RawBatch>(&bytes).is_ok()
                    || serde_json::from_slice::<RecordHeader>(&bytes).is_ok()
                    || serde_json::from_slice::<BatchAck>(&bytes).is_ok()
            );
        }
    }

    #[test]
    fn a_valid_record_decodes_to_a_header_that_checks(
        device in names(),
        pipeline in names(),
        outbox in outboxes(),
        seq in 0i64..=i64::MAX,
        error in any::<bool>(),
    ) {
        let text = record(&device, &pipeline, outbox.as_deref(), seq, error).to_string();
        let record: ResultRecord = serde_json::from_str(&text).unwrap();
        let header: RecordHeader = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&header, &record.header());
        prop_assert_eq!(header.kind, RecordKind::Result);
        prop_assert_eq!(header.check(&device), Ok(()));
        prop_assert!(matches!(serde_json::from_str::<Record>(&text), Ok(Record::Result(_))));
    }

    /// `check` accepts exactly the id the fields make: the one
    /// `result_id` builds, and no other string.
    #[test]
    fn check_accepts_exactly_the_id_its_fields_make(
        device in names(),
        pipeline in names(),
        outbox in outboxes(),
        seq in 0i64..=i64::MAX,
        other in prop_oneof![
            ".{0,40}",
            Just(String::new()),
            // Near misses of the real id.
            (any::<Index>(), any::<char>()).prop_map(|(i, c)| format!("\u{0}{}{c}", i.index(9))),
        ],
        near in 0u8..6,
    ) {
        let id = result_id(&device, &pipeline, outbox.as_deref(), seq);
        let header = RecordHeader {
            kind: RecordKind::Result,
            id: id.clone(),
            device: device.clone(),
            pipeline: pipeline.clone(),
            outbox: outbox.clone(),
            seq,
        };
        prop_assert_eq!(header.check(&device), Ok(()));
        let other = match near {
            0 => other,
            1 => format!("{id}{other}"),
            2 => format!("{other}{id}"),
            3 => id.to_uppercase(),
            4 => result_id(&device, &pipeline, outbox.as_deref(), seq.wrapping_add(1)),
            _ => result_id(&device, &pipeline, None, seq),
        };
        let forged = RecordHeader { id: other.clone(), ..header.clone() };
        if other == id {
            prop_assert_eq!(forged.check(&device), Ok(()));
        } else {
            let refused = matches!(
                forged.check(&device),
                Err(RecordError::BadId { ref expected, .. }) if *expected == id
            );
            prop_assert!(refused, "{other:?} passed for {id:?}");
        }
        // Another device's token never passes, whatever the id.
        let thief = format!("{device}x");
        let refused = matches!(header.check(&thief), Err(RecordError::OtherDevice { .. }));
        prop_assert!(refused);
    }

    /// For valid names, an outbox instance without `/` and a sequence number
    /// as outboxes give them (not negative), different fields make different
    /// ids: one id names one record of one device.
    #[test]
    fn ids_of_different_records_differ(
        a in (names(), names(), outboxes(), 0i64..=i64::MAX),
        b in (names(), names(), outboxes(), 0i64..=i64::MAX),
        same_device in any::<bool>(),
    ) {
        let b = if same_device { (a.0.clone(), b.1, b.2, b.3) } else { b };
        let id_a = result_id(&a.0, &a.1, a.2.as_deref(), a.3);
        let id_b = result_id(&b.0, &b.1, b.2.as_deref(), b.3);
        prop_assert_eq!(id_a == id_b, a == b, "{} {}", id_a, id_b);
    }

    /// `check_name` accepts exactly 1 to 64 bytes of `[A-Za-z0-9._-]`.
    #[test]
    fn check_name_accepts_exactly_short_names_of_safe_characters(
        name in prop_oneof![
            names(),
            "[A-Za-z0-9._-]{60,70}",
            ".{0,70}",
            "[A-Za-z0-9._/ \u{e9}-]{0,8}",
            Just(String::new()),
        ],
    ) {
        let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let expected = (1..=MAX_NAME_LEN).contains(&name.len()) && name.chars().all(safe);
        let answer = check_name(&name);
        prop_assert_eq!(answer.is_ok(), expected, "{:?}: {:?}", name, answer);
        match answer {
            Ok(()) => {}
            Err(NameError::Empty) => prop_assert!(name.is_empty()),
            Err(NameError::TooLong(n)) => prop_assert!(n == name.len() && n > MAX_NAME_LEN),
            Err(NameError::BadChar(c)) => prop_assert!(!safe(c) && name.contains(c)),
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}

/// Different fields that would make the same id (`a-` and 12, `a` and -12;
/// an empty outbox and -5, no outbox and 5) are refused by the check, so
/// one device cannot make one id twice.
#[test]
fn fields_that_could_make_another_records_id_are_refused() {
    assert_eq!(
        result_id("d", "p", Some("a-"), 12),
        result_id("d", "p", Some("a"), -12)
    );
    for (outbox, seq) in [
        (Some("a-"), 12),
        (Some("a"), -12),
        (Some(""), 5),
        (None, -5),
    ] {
        let header = RecordHeader {
            kind: Default::default(),
            id: result_id("d", "p", outbox, seq),
            device: "d".into(),
            pipeline: "p".into(),
            outbox: outbox.map(str::to_owned),
            seq,
        };
        assert!(
            matches!(header.check("d"), Err(RecordError::BadField { .. })),
            "{outbox:?} {seq}"
        );
    }
}
