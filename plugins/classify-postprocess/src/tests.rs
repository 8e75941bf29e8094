//! Native unit tests: `cargo test --target x86_64-unknown-linux-gnu -p classify-postprocess`.

use super::*;

fn plugin(json: &str) -> Result<ClassifyPostprocess, String> {
    ClassifyPostprocess::from_config(serde_json::from_str(json).map_err(|e| e.to_string())?)
}

#[test]
fn ranks_best_first_with_index_labels() {
    let p = plugin(r#"{"top_k": 3}"#).unwrap();
    let c = p.classify(&[0.1, 0.5, 0.2, 0.2]).unwrap();
    assert_eq!((c.label.as_str(), c.index, c.score), ("1", 1, 0.5));
    let top: Vec<(usize, f32)> = c.top.iter().map(|c| (c.index, c.score)).collect();
    // Ties keep the lower index first.
    assert_eq!(top, vec![(1, 0.5), (2, 0.2), (3, 0.2)]);
    assert_eq!(
        serde_json::to_string(&p.classify(&[0.25, 0.75]).unwrap()).unwrap(),
        r#"{"label":"1","index":1,"score":0.75,"top":[{"label":"1","index":1,"score":0.75},{"label":"0","index":0,"score":0.25}]}"#
    );
}

#[test]
fn top_k_is_clamped_and_defaults_to_5() {
    let p = plugin("{}").unwrap();
    assert_eq!(p.classify(&[0.0; 10]).unwrap().top.len(), 5);
    assert_eq!(p.classify(&[0.0; 2]).unwrap().top.len(), 2);
    assert!(plugin(r#"{"top_k": 0}"#).unwrap_err().contains("top_k"));
}

#[test]
fn softmax_is_stable() {
    let ranked = rank(&[1000.0, 1001.0, 999.0], true, 3).unwrap();
    let sum: f32 = ranked.iter().map(|r| r.1).sum();
    assert!((sum - 1.0).abs() < 1e-6);
    assert_eq!(ranked[0].0, 1);
    assert!((ranked[0].1 - 0.665_240_9).abs() < 1e-6, "{ranked:?}");
    let with_neg_inf = rank(&[f32::NEG_INFINITY, 0.0], true, 2).unwrap();
    assert_eq!(with_neg_inf, vec![(1, 1.0), (0, 0.0)]);
}

#[test]
fn non_finite_scores_are_refused() {
    assert!(
        rank(&[0.1, f32::NAN], false, 1)
            .unwrap_err()
            .contains("NaN")
    );
    assert!(rank(&[0.1, f32::NAN], true, 1).unwrap_err().contains("NaN"));
    assert!(rank(&[f32::INFINITY, 0.0], true, 1).is_err());
    assert!(rank(&[f32::INFINITY, 0.0], false, 1).is_err());
    assert!(rank(&[], false, 1).is_err());
    let p = plugin("{}").unwrap();
    assert!(
        matches!(p.classify(&[f32::NAN]), Err(ItemError::InvalidInput(m)) if m.contains("probabilities"))
    );
}

#[test]
fn inline_labels_and_count_mismatch() {
    let p = plugin(r#"{"labels": ["cat", "dog"], "top_k": 1}"#).unwrap();
    let c = p.classify(&[0.2, 0.8]).unwrap();
    assert_eq!((c.label.as_str(), c.index, c.top.len()), ("dog", 1, 1));
    match p.classify(&[0.2, 0.3, 0.5]) {
        Err(ItemError::InvalidInput(m)) => {
            assert!(m.contains("2 labels") && m.contains("3 classes"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn labels_file_is_read_once_and_errors_name_the_path() {
    let dir = std::env::temp_dir().join(format!("classify-labels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("labels.txt");
    std::fs::write(&path, "zero\r\n one \ntwo\n\n").unwrap();
    let p = plugin(&format!(
        r#"{{"labels_file": {:?}}}"#,
        path.to_str().unwrap()
    ))
    .unwrap();
    assert_eq!(p.classify(&[0.0, 0.0, 1.0]).unwrap().label, "two");
    assert_eq!(p.classify(&[0.0, 1.0, 0.0]).unwrap().label, "one");
    std::fs::remove_dir_all(&dir).unwrap();
    let err = plugin(r#"{"labels_file": "/no/such/labels.txt"}"#).unwrap_err();
    assert!(
        err.contains("/no/such/labels.txt") && err.contains("No such file"),
        "{err}"
    );
    assert!(
        plugin(r#"{"labels_file": "x", "labels": ["a"]}"#)
            .unwrap_err()
            .contains("not both")
    );
    assert!(
        plugin(r#"{"label": ["a"]}"#)
            .unwrap_err()
            .contains("`label`")
    );
}

#[test]
fn parse_labels_trims_and_drops_trailing_blank_lines() {
    assert_eq!(parse_labels("a\n b \r\nc d\n\n\n"), vec!["a", "b", "c d"]);
    assert_eq!(parse_labels("a\n\nc"), vec!["a", "", "c"]);
    assert!(parse_labels("\n\n").is_empty());
}

/// `options.json` names exactly the keys `Config` accepts.
#[test]
fn the_options_file_documents_every_key() {
    sluice_guest::options::check::<Config>(include_str!("../options.json")).unwrap();
}
