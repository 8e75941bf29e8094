//! Scoring a window against the profile: derived thresholds (chi-square
//! and Kolmogorov quantiles, Bonferroni over the scores), PSI, KS and
//! Jensen-Shannon distances, and counting items into the bins.

use super::profile::{Profile, Source, Statistic, mean_std, value};
use sluice_protocol::DriftScore;
use sluice_types::Tensor;

/// Pseudo-count added to every bin of both histograms (see the crate's drift module doc).
const PSEUDO_COUNT: f64 = 0.5;

/// `χ²⁻¹(dof, p)`.
pub(super) fn chi_square_quantile(dof: usize, p: f64) -> f64 {
    use statrs::distribution::{ChiSquared, ContinuousCDF};
    ChiSquared::new(dof as f64)
        .expect("dof >= 1")
        .inverse_cdf(p)
}

/// `c` with `P(sqrt(nm/(n+m)) · D > c) <= alpha` for the two-sample
/// Kolmogorov-Smirnov distance D: the first term of Kolmogorov's series,
/// `2·exp(−2c²) = alpha`, an upper bound of the tail. D taken only at the
/// bin edges is at most the full D, and ties only lower it, so the bound
/// holds for binned and discrete features too (conservatively).
pub(super) fn ks_critical(alpha: f64) -> f64 {
    (-(alpha / 2.0).ln() / 2.0).sqrt()
}

/// One score of a window: a statistic of one feature and its critical
/// value at the per-score false-alarm rate.
struct Test {
    feature: usize,
    statistic: Statistic,
    /// `χ²⁻¹(B−1, 1 − α/k)` for PSI and JS, `c(α/k)` for KS.
    critical: f64,
}

/// The scores of one window's bin counts against `profile`.
pub struct Scorer {
    tests: Vec<Test>,
    false_alarm_rate: f64,
}

impl Scorer {
    /// Thresholds for `profile` at a false-alarm rate `alpha` per window,
    /// shared by all k scores (Bonferroni: each at `alpha / k`).
    pub fn new(profile: &Profile, alpha: f64) -> Scorer {
        let k = profile
            .features
            .iter()
            .map(|f| f.statistics().len())
            .sum::<usize>();
        let each = alpha / k.max(1) as f64;
        let mut tests = Vec::with_capacity(k);
        for (i, f) in profile.features.iter().enumerate() {
            for &statistic in f.statistics() {
                let critical = match statistic {
                    Statistic::Ks => ks_critical(each),
                    Statistic::Psi | Statistic::Js => {
                        chi_square_quantile(f.counts.len() - 1, 1.0 - each)
                    }
                };
                tests.push(Test {
                    feature: i,
                    statistic,
                    critical,
                });
            }
        }
        Scorer {
            tests,
            false_alarm_rate: alpha,
        }
    }

    /// The configured false-alarm rate per window.
    pub fn false_alarm_rate(&self) -> f64 {
        self.false_alarm_rate
    }

    /// Score `counts` (per feature, items per bin) against `profile`.
    pub fn score(&self, profile: &Profile, counts: &[Vec<u64>]) -> Vec<DriftScore> {
        let mut scores = Vec::with_capacity(self.tests.len());
        for test in &self.tests {
            let feature = &profile.features[test.feature];
            let Some(window) = counts.get(test.feature) else {
                continue;
            };
            let (n, m) = (
                window.iter().sum::<u64>() as f64,
                feature.counts.iter().sum::<u64>() as f64,
            );
            if n == 0.0 || m == 0.0 {
                continue;
            }
            let scale = 1.0 / n + 1.0 / m;
            let (value, threshold) = match test.statistic {
                Statistic::Ks => {
                    // Cumulative shares at each inner edge, from raw counts.
                    let (mut cw, mut cr, mut d) = (0.0, 0.0, 0.0f64);
                    for (w, r) in window.iter().zip(&feature.counts) {
                        cw += *w as f64 / n;
                        cr += *r as f64 / m;
                        d = d.max((cw - cr).abs());
                    }
                    (d, test.critical * scale.sqrt())
                }
                Statistic::Psi | Statistic::Js => {
                    let b = window.len() as f64;
                    let p = window
                        .iter()
                        .map(|&c| (c as f64 + PSEUDO_COUNT) / (n + PSEUDO_COUNT * b));
                    let q = feature
                        .counts
                        .iter()
                        .map(|&c| (c as f64 + PSEUDO_COUNT) / (m + PSEUDO_COUNT * b));
                    if test.statistic == Statistic::Js {
                        let jsd: f64 = p
                            .zip(q)
                            .map(|(p, q)| {
                                let mid = (p + q) / 2.0;
                                0.5 * p * (p / mid).ln() + 0.5 * q * (q / mid).ln()
                            })
                            .sum();
                        let ln2 = std::f64::consts::LN_2;
                        (
                            (jsd.max(0.0) / ln2).sqrt(),
                            (scale * test.critical / (8.0 * ln2)).sqrt(),
                        )
                    } else {
                        let psi: f64 = p.zip(q).map(|(p, q)| (p - q) * (p / q).ln()).sum();
                        (psi, scale * test.critical)
                    }
                }
            };
            scores.push(DriftScore {
                feature: feature.name.clone(),
                statistic: test.statistic.as_str().to_owned(),
                value,
                threshold,
                drifted: value > threshold,
            });
        }
        scores
    }
}

/// Per feature, items per bin, for `items` (`(inputs, outputs)`).
pub fn bin_counts<'a>(
    profile: &Profile,
    items: impl IntoIterator<Item = (&'a [Tensor], &'a [Tensor])>,
) -> Vec<Vec<u64>> {
    let mut counts: Vec<Vec<u64>> = profile
        .features
        .iter()
        .map(|f| vec![0; f.counts.len()])
        .collect();
    for (inputs, outputs) in items {
        add(profile, &mut counts, inputs, outputs);
    }
    counts
}

/// Count one item into `counts`.
pub(super) fn add(
    profile: &Profile,
    counts: &mut [Vec<u64>],
    inputs: &[Tensor],
    outputs: &[Tensor],
) {
    // Mean and deviation of a large tensor are shared by two features:
    // computed once per item.
    let mut moments: Option<(usize, Option<(f64, f64)>)> = None;
    for (feature, counts) in profile.features.iter().zip(counts.iter_mut()) {
        let v = match feature.source {
            Source::Mean { tensor } | Source::Std { tensor } => {
                let m = match moments {
                    Some((t, m)) if t == tensor => m,
                    _ => {
                        let m = inputs.get(tensor).and_then(mean_std);
                        moments = Some((tensor, m));
                        m
                    }
                };
                m.map(|(mean, std)| {
                    if matches!(feature.source, Source::Mean { .. }) {
                        mean
                    } else {
                        std
                    }
                })
                .filter(|v| v.is_finite())
            }
            source => value(source, inputs, outputs),
        };
        if let Some(v) = v {
            counts[feature.bin(v)] += 1;
        }
    }
}
