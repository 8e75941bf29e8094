//! The statistics against published tables and hand-computed cases.

use super::profile::decile_edges;
use super::score::{chi_square_quantile, ks_critical};
use super::*;
use sluice_types::Tensor;

#[test]
fn chi_square_quantiles_and_ks_critical_values_match_the_tables() {
    // Published values: χ²⁻¹(9, 0.99) = 21.666, χ²⁻¹(1, 0.95) = 3.841;
    // Kolmogorov-Smirnov large-sample c(0.05) = 1.358, c(0.01) = 1.628.
    assert!((chi_square_quantile(9, 0.99) - 21.666).abs() < 1e-3);
    assert!((chi_square_quantile(1, 0.95) - 3.841).abs() < 1e-3);
    assert!((ks_critical(0.05) - 1.358).abs() < 1e-3);
    assert!((ks_critical(0.01) - 1.628).abs() < 1e-3);
}

#[test]
fn ks_is_the_largest_gap_of_the_cumulative_shares_at_the_bin_edges() {
    // Reference: 0..1000, ten bins of 100 items.
    let reference: Vec<_> = (0..1000).map(|i| item(i as f32, [0.5, 0.5])).collect();
    let pairs: Vec<_> = reference
        .iter()
        .map(|(i, o)| (i.as_slice(), o.as_slice()))
        .collect();
    let profile = Profile::build("m", "ab", "p", &pairs).unwrap();
    let ks_of = |values: &[f32]| {
        let window: Vec<_> = values.iter().map(|&x| item(x, [0.5, 0.5])).collect();
        let window = window.iter().map(|(i, o)| (i.as_slice(), o.as_slice()));
        let scores = Scorer::new(&profile, 0.01).score(&profile, &bin_counts(&profile, window));
        scores.into_iter().find(|s| s.statistic == "ks").unwrap()
    };
    // 40 items spread like the reference: no gap.
    let same: Vec<f32> = (0..40).map(|i| 12.5 + 25.0 * i as f32).collect();
    let ks = ks_of(&same);
    assert!(ks.value.abs() < 1e-9 && !ks.drifted, "{ks:?}");
    // 40 items all below 400: after 4 bins the window has all of its
    // mass, the reference 40 %.
    let low: Vec<f32> = (0..40).map(|i| 10.0 * i as f32).collect();
    let ks = ks_of(&low);
    assert!((ks.value - 0.6).abs() < 1e-9 && ks.drifted, "{ks:?}");
    // Threshold: c(α/k) · sqrt(1/n + 1/m), k = 3 scores (x's PSI and
    // KS, the class's JS).
    let expected = ks_critical(0.01 / 3.0) * (1.0 / 40.0 + 1.0 / 1000.0f64).sqrt();
    assert!((ks.threshold - expected).abs() < 1e-12, "{ks:?}");
}

fn item(x: f32, scores: [f32; 2]) -> (Vec<Tensor>, Vec<Tensor>) {
    (
        vec![Tensor::from_f32("x", vec![1, 1], &[x])],
        vec![Tensor::from_f32("y", vec![1, 2], &scores)],
    )
}

#[test]
fn a_window_closes_by_count_and_by_time_and_scores_what_it_saw() {
    let items: Vec<_> = (0..100).map(|i| item(i as f32, [0.2, 0.8])).collect();
    let pairs: Vec<_> = items
        .iter()
        .map(|(i, o)| (i.as_slice(), o.as_slice()))
        .collect();
    let profile = Profile::build("m", "ab", "p", &pairs).unwrap();
    // x: 10 bins; y's class: always 1 (2 classes); y's confidence: constant.
    assert_eq!(profile.features.len(), 3);
    assert_eq!(profile.features[0].counts, vec![10; 10]);
    assert_eq!(profile.features[1].counts, vec![0, 100]);
    assert_eq!(profile.features[2].counts, vec![100]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.json");
    profile.write(&path).unwrap();
    let config = DriftConfig {
        window_items: 50,
        window_secs: 1,
        false_alarm_rate: 0.01,
    };
    let err = Drift::load(&path, "m", "p", "cd", &config).err().unwrap();
    assert!(matches!(err, ProfileError::OtherModel { .. }), "{err}");
    let drift = Drift::load(&path, "m", "p", "AB", &config).unwrap();
    let inputs: Vec<Vec<Tensor>> = items.iter().map(|(i, _)| i.clone()).collect();
    let outputs: Vec<&[Tensor]> = items.iter().map(|(_, o)| o.as_slice()).collect();
    // 60 items as seen: one window of 50 closes, quiet.
    drift.observe(&inputs[..60], &outputs[..60]);
    let closed = drift.take_closed();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].items, 50);
    // Three scores: x by PSI and KS, the class by JS (the constant
    // confidence has none).
    let statistics: Vec<_> = closed[0]
        .scores
        .iter()
        .map(|s| (s.feature.as_str(), s.statistic.as_str()))
        .collect();
    assert_eq!(
        statistics,
        [
            ("input.x[0]", "psi"),
            ("input.x[0]", "ks"),
            ("output.y.class", "js")
        ]
    );
    // x's values 0..50 against a reference 0..100: half of the mass
    // moved below the median, so the cumulative gap is 0.5 at the 5th edge.
    let ks = &closed[0].scores[1];
    assert!((ks.value - 0.5).abs() < 1e-9, "{ks:?}");
    // The first 50 of 0..100 are half the reference range: drift.
    assert!(closed[0].alarm, "{:?}", closed[0].scores);
    // The 10 left close by time.
    drift.tick();
    assert!(drift.take_closed().is_empty());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    drift.tick();
    let closed = drift.take_closed();
    assert_eq!((closed.len(), closed[0].items), (1, 10));
}

#[test]
fn deciles_merge_for_few_distinct_values_and_keep_every_bin_filled() {
    let sorted: Vec<f64> = (0..100).map(|i| (i / 10) as f64).collect();
    assert_eq!(
        decile_edges(&sorted),
        (0..9).map(f64::from).collect::<Vec<_>>()
    );
    let two: Vec<f64> = (0..100).map(|i| if i < 70 { 0.0 } else { 1.0 }).collect();
    assert_eq!(decile_edges(&two), vec![0.0]);
    assert!(decile_edges(&[3.0; 50]).is_empty());
}
