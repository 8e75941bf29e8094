//! Native unit tests: `cargo test --target x86_64-unknown-linux-gnu -p tabular-preprocess`.

use super::*;

fn standardizer(json: &str) -> Result<Standardizer, String> {
    let config: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Standardizer::from_config(&config)
}

fn abc() -> Standardizer {
    standardizer(r#"{"features": ["a", "b", "c"], "mean": [1, 2, 3], "scale": [2, 4, 0.5]}"#)
        .unwrap()
}

fn invalid(r: Result<Vec<f64>, ItemError>) -> String {
    match r {
        Err(ItemError::InvalidInput(m)) => m,
        other => panic!("expected invalid input, got {other:?}"),
    }
}

#[test]
fn standardizes_in_feature_order() {
    let s = abc();
    let raw = s
        .parse(
            br#"{"c": 4, "a": 3, "b": 10, "extra": "ignored"}"#,
            "",
            Format::Auto,
        )
        .unwrap();
    assert_eq!(raw, vec![3.0, 10.0, 4.0]);
    assert_eq!(s.apply(&raw), vec![1.0, 2.0, 2.0]);
}

#[test]
fn defaults_are_mean_0_scale_1() {
    let s = standardizer(r#"{"features": ["x"]}"#).unwrap();
    assert_eq!(s.apply(&[2.5]), vec![2.5]);
}

#[test]
fn json_errors_name_the_feature() {
    let s = abc();
    assert!(
        invalid(s.parse(br#"{"a": 1, "b": 2}"#, "", Format::Auto)).contains("missing feature `c`")
    );
    assert!(
        invalid(s.parse(br#"{"a": 1, "b": "x", "c": 3}"#, "", Format::Auto))
            .contains("feature `b`")
    );
    assert!(
        invalid(s.parse(br#"{"a": 1, "b": null, "c": 3}"#, "", Format::Auto))
            .contains("feature `b`")
    );
    assert_eq!(
        s.parse(br#"{"a": 1, "b": " 2.5 ", "c": 3}"#, "", Format::Auto)
            .unwrap(),
        vec![1.0, 2.5, 3.0]
    );
    assert!(invalid(s.parse(br#"{"a": 1,"#, "", Format::Auto)).contains("JSON"));
    assert!(invalid(s.parse(b"[1, 2, 3]", "application/json", Format::Auto)).contains("object"));
    assert!(invalid(s.parse(b"\xff\xfe", "", Format::Auto)).contains("UTF-8"));
}

#[test]
fn csv_with_header_ignores_extra_columns() {
    let s = abc();
    let csv = b"c, b,a ,label\r\n4,10,3,1\r\n";
    assert_eq!(
        s.parse(csv, "text/csv", Format::Auto).unwrap(),
        vec![3.0, 10.0, 4.0]
    );
    assert_eq!(
        s.parse(b"\xef\xbb\xbfa,b,c\n1,2,3", "", Format::Auto)
            .unwrap(),
        vec![1.0, 2.0, 3.0]
    );
}

#[test]
fn csv_without_header_needs_exactly_the_features() {
    let s = abc();
    assert_eq!(
        s.parse(b" 1, 2 ,3\n", "", Format::Auto).unwrap(),
        vec![1.0, 2.0, 3.0]
    );
    assert!(invalid(s.parse(b"1,2,3,4", "", Format::Auto)).contains("4 numbers but 3 features"));
    assert!(invalid(s.parse(b"a,b,c", "", Format::Auto)).contains("no data line"));
}

#[test]
fn csv_errors() {
    let s = abc();
    assert!(invalid(s.parse(b"a,b\n1,2", "", Format::Auto)).contains("missing feature `c`"));
    assert!(invalid(s.parse(b"a,b,c\n1,x,3", "", Format::Auto)).contains("feature `b`"));
    assert!(invalid(s.parse(b"a,b,c\n1,NaN,3", "", Format::Auto)).contains("feature `b`"));
    assert!(invalid(s.parse(b"a,b,c\n1,2", "", Format::Auto)).contains("3 columns"));
    assert!(
        invalid(s.parse(b"a,b,c\n1,2,3\n4,5,6", "", Format::Auto))
            .contains("more than one data line")
    );
    assert!(invalid(s.parse(b"a,b,c,a\n1,2,3,4", "", Format::Auto)).contains("twice"));
    assert!(invalid(s.parse(b"  \n", "", Format::Auto)).contains("empty"));
}

#[test]
fn csv_quoted_comma_stays_one_field() {
    let s = abc();
    // A quoted text column holding commas: the numbers around it keep their columns.
    let csv = b"id,a,note,b,c,label\n7,1,\"hello, world, again\",2,3,x\n";
    assert_eq!(
        s.parse(csv, "text/csv", Format::Auto).unwrap(),
        vec![1.0, 2.0, 3.0]
    );
    // A quoted header name with a comma is one column too.
    assert_eq!(
        s.parse(b"\"x,y\",a,b,c\n9,1,2,3", "", Format::Auto)
            .unwrap(),
        vec![1.0, 2.0, 3.0]
    );
    // Quoted numbers are numbers; a thousands separator is not (numbers are
    // parsed as Rust `f64`), and the error shows the whole field.
    assert_eq!(
        s.parse(
            b"\"a\",\"b\",\"c\"\n\"1\",\" 2.5 \",\"3\"",
            "",
            Format::Auto
        )
        .unwrap(),
        vec![1.0, 2.5, 3.0]
    );
    assert_eq!(
        s.parse(b"\"1\",\"2\",\"3\"", "", Format::Auto).unwrap(),
        vec![1.0, 2.0, 3.0]
    );
    let e = invalid(s.parse(b"a,b,c\n1,\"1,000\",3", "", Format::Auto));
    assert!(
        e.contains("feature `b` is not a finite number: `1,000`"),
        "{e}"
    );
}

#[test]
fn csv_escaped_double_quotes() {
    let s = abc();
    let csv = b"a,note,b,c\n1,\"a \"\"quoted\"\", word\",2,3";
    assert_eq!(s.parse(csv, "", Format::Auto).unwrap(), vec![1.0, 2.0, 3.0]);
    // `""` inside quotes is one `"`: a header naming a feature with quotes.
    let s = standardizer(r#"{"features": ["width \"cm\"", "b"]}"#).unwrap();
    assert_eq!(
        s.parse(b"\"width \"\"cm\"\"\",b\n4,5", "", Format::Auto)
            .unwrap(),
        vec![4.0, 5.0]
    );
    let e = invalid(s.parse(b"\"width \"\"cm\"\"\",b\n\"4\"\"\",5", "", Format::Auto));
    assert!(
        e.contains(r#"feature `width "cm"` is not a finite number: `4"`"#),
        "{e}"
    );
}

#[test]
fn csv_line_endings() {
    let s = abc();
    // CRLF throughout, and a CRLF inside a quoted field, which is not a new line.
    let csv = b"a,note,b,c\r\n1,\"line one\r\nline two\",2,3\r\n";
    assert_eq!(
        s.parse(csv, "text/csv", Format::Auto).unwrap(),
        vec![1.0, 2.0, 3.0]
    );
    // Bare CR line endings.
    assert_eq!(
        s.parse(b"a,b,c\r1,2,3\r", "", Format::Auto).unwrap(),
        vec![1.0, 2.0, 3.0]
    );
    // Blank and space-only lines are skipped.
    assert_eq!(
        s.parse(b"\r\n  \r\na,b,c\r\n\r\n1,2,3\r\n \r\n", "", Format::Auto)
            .unwrap(),
        vec![1.0, 2.0, 3.0]
    );
}

#[test]
fn csv_malformed_rows_fail_the_item() {
    let s = abc();
    // A quoted comma does not make an extra field: 2 fields, not 3.
    let e = invalid(s.parse(b"a,b,c\n\"1,2\",3", "", Format::Auto));
    assert!(
        e.contains("the CSV header has 3 columns but the data line has 2"),
        "{e}"
    );
    let e = invalid(s.parse(b"a,b,c\n1,2,\"3,4\",5", "", Format::Auto));
    assert!(
        e.contains("the CSV header has 3 columns but the data line has 4"),
        "{e}"
    );
    // A second data line fails the item (a quoted line break inside the data
    // line does not start one).
    let e = invalid(s.parse(b"a,b,c\n1,2,\"x\ny\"\n\n4,5,6\n7,8,9", "", Format::Auto));
    assert!(e.contains("more than one data line"), "{e}");
}

#[test]
fn format_resolution() {
    assert_eq!(
        resolve_format(Format::Auto, "application/json; charset=utf-8", "a,b"),
        Format::Json
    );
    assert_eq!(resolve_format(Format::Auto, "text/csv", "{"), Format::Csv);
    assert_eq!(
        resolve_format(Format::Auto, "", "  \n{\"a\": 1}"),
        Format::Json
    );
    assert_eq!(
        resolve_format(Format::Auto, "application/octet-stream", "a,b"),
        Format::Csv
    );
    assert_eq!(
        resolve_format(Format::Csv, "application/json", "{"),
        Format::Csv
    );
    // An explicit format wins over the content type.
    let s = abc();
    assert!(s.parse(br#"{"a": 1}"#, "", Format::Csv).is_err());
}

#[test]
fn config_errors() {
    let err = |json: &str| standardizer(json).unwrap_err();
    assert!(err("{}").contains("features"));
    assert!(err(r#"{"features": []}"#).contains("empty"));
    assert!(err(r#"{"features": ["a", "a"]}"#).contains("twice"));
    assert!(
        err(r#"{"features": ["a", "b"], "mean": [1]}"#)
            .contains("`mean` has 1 values but there are 2")
    );
    assert!(
        err(r#"{"features": ["a", "b"], "scale": [1, 0]}"#).contains("`scale` of feature `b` is 0")
    );
    assert!(err(r#"{"features": ["a"], "fromat": "csv"}"#).contains("fromat"));
    assert!(err(r#"{"features": ["a"], "format": "xml"}"#).contains("xml"));
    let e = err(r#"{"scaler_file": "/no/such/scaler.json"}"#);
    assert!(
        e.contains("/no/such/scaler.json") && e.contains("No such file"),
        "{e}"
    );
    assert!(err(r#"{"scaler_file": "x", "mean": [0]}"#).contains("not both"));
}

#[test]
fn scaler_file() {
    let dir = std::env::temp_dir().join(format!("tabular-scaler-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("scaler.json");
    let path_str = path.to_str().unwrap();
    std::fs::write(
        &path,
        r#"{"features": ["x", "y"], "mean": [1.5, -2], "scale": [0.5, 4], "n_samples": 10}"#,
    )
    .unwrap();
    let s = standardizer(&format!(r#"{{"scaler_file": {path_str:?}}}"#)).unwrap();
    assert_eq!(s.features, vec!["x", "y"]);
    assert_eq!(s.apply(&[2.0, 2.0]), vec![1.0, 1.0]);
    // Same features in the config: fine. Different: refused.
    assert!(
        standardizer(&format!(
            r#"{{"scaler_file": {path_str:?}, "features": ["x", "y"]}}"#
        ))
        .is_ok()
    );
    let e = standardizer(&format!(
        r#"{{"scaler_file": {path_str:?}, "features": ["y", "x"]}}"#
    ))
    .unwrap_err();
    assert!(e.contains("differs"), "{e}");
    std::fs::write(&path, r#"{"mean": [0], "scale": [0]}"#).unwrap();
    let e = standardizer(&format!(
        r#"{{"scaler_file": {path_str:?}, "features": ["x"]}}"#
    ))
    .unwrap_err();
    assert!(e.contains("scaler_file") && e.contains("is 0"), "{e}");
    std::fs::write(&path, r#"{"features": ["x"], "mean": [0]}"#).unwrap();
    let e = standardizer(&format!(r#"{{"scaler_file": {path_str:?}}}"#)).unwrap_err();
    assert!(e.contains("cannot parse") && e.contains("scale"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `options.json` names exactly the keys `Config` accepts.
#[test]
fn the_options_file_documents_every_key() {
    sluice_guest::options::check::<Config>(include_str!("../options.json")).unwrap();
}
