//! The false-alarm rate over many random splits of the held-out data stays
//! at or below the configured one, and shifts are caught (with the delay
//! measured).

use super::{
    Observed, anomaly_rows, blurred, csv_item, example_config, inverted, observe, offset, scaled,
};
use crate::common::digit_pngs;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use sluice_agent::drift::{Profile, Scorer, bin_counts};
use sluice_agent::runtime::Runtime;
use sluice_agent::types::Tensor;

/// Alarms among `rounds` windows of `n` items drawn from `window_pool`,
/// each scored against a profile of `m` items drawn from `reference_pool`
/// (disjoint from the window when both pools are the same data).
#[allow(clippy::too_many_arguments)]
fn alarm_rate(
    reference_pool: &Observed,
    window_pool: Option<&Observed>,
    m: usize,
    n: usize,
    rounds: usize,
    alpha: f64,
    seed: u64,
) -> f64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut alarms = 0;
    for _ in 0..rounds {
        let mut order: Vec<usize> = (0..reference_pool.len()).collect();
        order.shuffle(&mut rng);
        let reference: Vec<_> = order[..m]
            .iter()
            .map(|&i| {
                (
                    reference_pool[i].0.as_slice(),
                    reference_pool[i].1.as_slice(),
                )
            })
            .collect();
        let window: Vec<(&[Tensor], &[Tensor])> = match window_pool {
            // No drift: the window is other items of the same data.
            None => order[m..m + n]
                .iter()
                .map(|&i| {
                    (
                        reference_pool[i].0.as_slice(),
                        reference_pool[i].1.as_slice(),
                    )
                })
                .collect(),
            Some(pool) => {
                let mut order: Vec<usize> = (0..pool.len()).collect();
                order.shuffle(&mut rng);
                order[..n]
                    .iter()
                    .map(|&i| (pool[i].0.as_slice(), pool[i].1.as_slice()))
                    .collect()
            }
        };
        let profile = Profile::build("m", "sha", "p", &reference).unwrap();
        let scores = Scorer::new(&profile, alpha).score(&profile, &bin_counts(&profile, window));
        alarms += usize::from(scores.iter().any(|s| s.drifted));
    }
    alarms as f64 / rounds as f64
}

#[test]
fn false_alarm_rate_on_held_out_data_is_at_most_the_configured_one_and_shifts_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let pngs = digit_pngs();
    let runtime = Runtime::start(example_config("digits", dir.path())).unwrap();
    let clean = observe(&runtime, &pngs, "image/png");
    let inverted = observe(
        &runtime,
        &pngs.iter().map(|p| inverted(p)).collect::<Vec<_>>(),
        "image/png",
    );
    let blurred = observe(
        &runtime,
        &pngs.iter().map(|p| blurred(p)).collect::<Vec<_>>(),
        "image/png",
    );
    drop(runtime);
    let (header, rows) = anomaly_rows();
    let runtime = Runtime::start(example_config("anomaly", dir.path())).unwrap();
    let records = |rows: &[String]| {
        rows.iter()
            .map(|r| csv_item(&header, r))
            .collect::<Vec<_>>()
    };
    let tabular = observe(&runtime, &records(&rows), "text/csv");
    let scaled_rows: Vec<String> = rows.iter().map(|r| scaled(r, 1.3)).collect();
    let tabular_scaled = observe(&runtime, &records(&scaled_rows), "text/csv");
    let offset_rows: Vec<String> = rows.iter().map(|r| offset(r, 1, 2.0)).collect();
    let tabular_offset = observe(&runtime, &records(&offset_rows), "text/csv");
    drop(runtime);

    // Random splits of the held-out data into a reference and a window of
    // other items: no drift by construction, so every alarm is a false one.
    const ROUNDS: usize = 1000;
    for alpha in [0.01, 0.05] {
        let digits = alarm_rate(&clean, None, 225, 75, ROUNDS, alpha, 1);
        let anomaly = alarm_rate(&tabular, None, 100, 40, ROUNDS, alpha, 2);
        eprintln!(
            "false-alarm rate per window at configured {alpha}: digits (m=225, n=75) {digits:.4}, anomaly (m=100, n=40) {anomaly:.4} over {ROUNDS} splits"
        );
        // Bonferroni makes the rate at most alpha; the allowance is for the
        // sampling error of ROUNDS rounds (3 standard deviations).
        let allowance = 3.0 * (alpha * (1.0 - alpha) / ROUNDS as f64).sqrt();
        assert!(digits <= alpha + allowance, "digits {digits} vs {alpha}");
        assert!(anomaly <= alpha + allowance, "anomaly {anomaly} vs {alpha}");
    }

    // Detection: the share of windows of n shifted items that alarm, and
    // the smallest window that (almost) always does: the detection delay.
    for (name, pool, shifted, m) in [
        ("digits inverted", &clean, &inverted, 225),
        ("digits blurred", &clean, &blurred, 225),
        ("anomaly scaled x1.3", &tabular, &tabular_scaled, 100),
        (
            "anomaly one feature offset by 2 sd",
            &tabular,
            &tabular_offset,
            100,
        ),
    ] {
        let mut caught = Vec::new();
        for n in [5, 10, 20, 40] {
            caught.push((n, alarm_rate(pool, Some(shifted), m, n, 100, 0.01, 3)));
        }
        eprintln!("{name}: alarm rate by window size {caught:?}");
        assert!(caught.last().unwrap().1 >= 0.99, "{name}: {caught:?}");
    }
}
