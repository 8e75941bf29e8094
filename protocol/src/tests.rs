//! Records and batches as they read and write.

use super::*;

fn record(outcome: Outcome) -> ResultRecord {
    ResultRecord {
        kind: RecordKind::Result,
        id: result_id("gw-1", "digits", Some("5eed"), 7),
        device: "gw-1".into(),
        pipeline: "digits".into(),
        outbox: Some("5eed".into()),
        seq: 7,
        accepted_at_ms: 1,
        completed_at_ms: 2,
        input: InputInfo {
            content_type: "image/png".into(),
            bytes: 3,
            attributes: [("file".to_owned(), "a.png".to_owned())].into(),
        },
        provenance: Provenance::default(),
        sluice_version: "0.1.0".into(),
        timings: StageTimings::default(),
        outcome,
    }
}

#[test]
fn timings_say_they_are_per_batch_and_old_names_still_read() {
    let new: StageTimings = serde_json::from_str(
        r#"{"batch_items": 4, "batch_preprocess_us": 1, "batch_infer_us": 2, "batch_postprocess_us": 3}"#,
    )
    .unwrap();
    let old: StageTimings =
        serde_json::from_str(r#"{"preprocess_us": 1, "infer_us": 2, "postprocess_us": 3}"#)
            .unwrap();
    assert_eq!((new.batch_items, old.batch_items), (4, 0));
    assert_eq!(
        (
            old.batch_preprocess_us,
            old.batch_infer_us,
            old.batch_postprocess_us
        ),
        (1, 2, 3)
    );
    let text = serde_json::to_string(&new).unwrap();
    assert!(text.contains("\"batch_preprocess_us\":1"), "{text}");
}

#[test]
fn a_result_record_has_the_documented_shape_and_round_trips() {
    let ok = record(Outcome::Result(ResultBody::new(
        "application/json",
        br#"{"label":"3"}"#,
    )));
    let json = serde_json::to_value(&ok).unwrap();
    assert_eq!(json["kind"], "result");
    assert_eq!(json["id"], "gw-1/digits/5eed-7");
    assert_eq!(json["outbox"], "5eed");
    assert_eq!(json["result"]["body"]["label"], "3");
    assert!(json.get("error").is_none());
    let back: Record = serde_json::from_value(json).unwrap();
    assert_eq!(back, Record::Result(ok));

    let failed = record(Outcome::Error(ItemFailure {
        kind: "invalid-input".into(),
        message: "not a PNG".into(),
    }));
    let json = serde_json::to_value(&failed).unwrap();
    assert_eq!(json["error"]["kind"], "invalid-input");
    assert!(json.get("result").is_none());
}

#[test]
fn records_stored_before_the_kind_field_still_read_as_results() {
    let mut json = serde_json::to_value(record(Outcome::Error(ItemFailure {
        kind: "internal".into(),
        message: "x".into(),
    })))
    .unwrap();
    json.as_object_mut().unwrap().remove("kind");
    let header: RecordHeader = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(header.kind, RecordKind::Result);
    assert!(matches!(
        serde_json::from_value::<Record>(json),
        Ok(Record::Result(_))
    ));
}

#[test]
fn non_json_documents_travel_as_text() {
    let body = ResultBody::new("text/plain", b"cat");
    assert_eq!(body.body, serde_json::json!("cat"));
    let broken = ResultBody::new("application/json; charset=utf-8", b"{nope");
    assert_eq!(broken.body, serde_json::json!("{nope"));
}

#[test]
fn a_header_must_belong_to_its_sender_and_make_its_own_id() {
    let header = record(Outcome::Error(ItemFailure {
        kind: "internal".into(),
        message: String::new(),
    }))
    .header();
    assert_eq!(header.check("gw-1"), Ok(()));
    assert!(matches!(
        header.check("gw-2"),
        Err(RecordError::OtherDevice { .. })
    ));
    for id in ["gw-1/digits/5eed-8", "gw-1/digits/7", "gw-1/digits/beef-7"] {
        let forged = RecordHeader {
            id: id.into(),
            ..header.clone()
        };
        assert!(
            matches!(forged.check("gw-1"), Err(RecordError::BadId { .. })),
            "{id}"
        );
    }
    // Records from before outbox instances keep their old ids.
    let old = RecordHeader {
        id: "gw-1/digits/7".into(),
        outbox: None,
        ..header
    };
    assert_eq!(old.check("gw-1"), Ok(()));
}

#[test]
fn names_with_separators_or_odd_characters_are_refused() {
    assert_eq!(check_name("gateway-17.eu_1"), Ok(()));
    assert_eq!(check_name(""), Err(NameError::Empty));
    assert_eq!(check_name("a/b"), Err(NameError::BadChar('/')));
    assert_eq!(check_name("a b"), Err(NameError::BadChar(' ')));
    assert_eq!(check_name(&"x".repeat(65)), Err(NameError::TooLong(65)));
}

#[test]
fn an_error_body_names_its_record_only_when_it_has_one() {
    let batch = serde_json::to_value(ErrorBody::new("bad batch")).unwrap();
    assert_eq!(batch, serde_json::json!({"error": "bad batch"}));
    let record = serde_json::to_value(ErrorBody::for_record(3, "bad record")).unwrap();
    assert_eq!(
        record,
        serde_json::json!({"error": "bad record", "record": 3})
    );
    // A body from a collector that predates the field still reads.
    let old: ErrorBody = serde_json::from_str(r#"{"error":"x"}"#).unwrap();
    assert_eq!(old.record, None);
}

#[test]
fn a_raw_batch_carries_stored_records_verbatim() {
    let stored = r#"{"id":"d/p/1","device":"d","pipeline":"p","seq":1}"#;
    let batch: RawBatch = UploadBatch {
        protocol: PROTOCOL_VERSION,
        device: "d".into(),
        key: "k".into(),
        records: vec![serde_json::value::RawValue::from_string(stored.into()).unwrap()],
        status: None,
    };
    let text = serde_json::to_string(&batch).unwrap();
    assert!(text.contains(stored), "{text}");
    let back: RawBatch = serde_json::from_str(&text).unwrap();
    assert_eq!(back.records[0].get(), stored);
}
