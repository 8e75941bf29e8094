//! Inline SVG line charts (with a threshold and alarm marks), and how values
//! are printed on them.

use super::page::{esc, utc};
use std::fmt::Write;

/// One line of a chart.
pub(super) struct Series<'a> {
    pub(super) name: &'a str,
    pub(super) color: &'a str,
    pub(super) points: Vec<(i64, f64)>,
}

const W: f64 = 720.0;
const H: f64 = 170.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 22.0;
const BOTTOM: f64 = 22.0;

/// An inline SVG line chart of `series` over `[t0, t1]` (ms), with an
/// optional dashed `threshold` and red dots at `marks` (alarms).
pub(super) fn chart(
    title: &str,
    t0: i64,
    t1: i64,
    series: &[Series<'_>],
    threshold: Option<f64>,
    marks: &[(i64, f64)],
) -> String {
    let t1 = t1.max(t0 + 1);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(threshold.map(|t| t * 1.2))
        .chain(marks.iter().map(|m| m.1))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.05 } else { 1.0 };
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |t: i64| LEFT + (t.clamp(t0, t1) - t0) as f64 / (t1 - t0) as f64 * pw;
    let y = |v: f64| TOP + ph - (v.clamp(0.0, y_max) / y_max) * ph;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{0}\"><title>{0}</title>",
        esc(title)
    );
    let _ = write!(
        svg,
        "<text x=\"{LEFT}\" y=\"15\" font-size=\"12\" font-weight=\"600\">{}</text>",
        esc(title)
    );
    let _ = write!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#999\"/><line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{0}\" stroke=\"#999\"/>",
        TOP + ph,
        W - RIGHT
    );
    let _ = write!(
        svg,
        "<text x=\"{0}\" y=\"{1}\" font-size=\"10\" text-anchor=\"end\">{2}</text><text x=\"{0}\" y=\"{3}\" font-size=\"10\" text-anchor=\"end\">0</text>",
        LEFT - 4.0,
        TOP + 8.0,
        esc(&format_value(y_max)),
        TOP + ph
    );
    let _ = write!(
        svg,
        "<text x=\"{LEFT}\" y=\"{0}\" font-size=\"10\">{1}</text><text x=\"{2}\" y=\"{0}\" font-size=\"10\" text-anchor=\"end\">{3}</text>",
        H - 6.0,
        esc(&utc(t0)),
        W - RIGHT,
        esc(&utc(t1))
    );
    if let Some(t) = threshold {
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#c00\" stroke-dasharray=\"4 3\"/>",
            y(t),
            W - RIGHT
        );
    }
    let mut legend_x = W - RIGHT;
    for s in series.iter().rev() {
        legend_x -= 8.0 + 7.0 * s.name.chars().count() as f64;
        let _ = write!(
            svg,
            "<text x=\"{legend_x:.0}\" y=\"15\" font-size=\"11\" fill=\"{}\">{}</text>",
            s.color,
            esc(s.name)
        );
    }
    for s in series {
        match s.points.as_slice() {
            [] => {}
            [(t, v)] => {
                let _ = write!(
                    svg,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{}\"/>",
                    x(*t),
                    y(*v),
                    s.color
                );
            }
            points => {
                let path: Vec<String> = points
                    .iter()
                    .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                    .collect();
                let _ = write!(
                    svg,
                    "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
                    s.color,
                    path.join(" ")
                );
            }
        }
    }
    for (t, v) in marks {
        let _ = write!(
            svg,
            "<circle class=\"alarm\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#c00\"/>",
            x(*t),
            y(*v)
        );
    }
    if series.iter().all(|s| s.points.is_empty()) && marks.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"{0}\" y=\"{1}\" font-size=\"12\" fill=\"#777\" text-anchor=\"middle\">no data in this period</text>",
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

pub(super) fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}
