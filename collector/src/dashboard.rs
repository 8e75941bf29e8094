//! The dashboard: the fleet view as server-rendered HTML pages with inline
//! SVG charts, made here in Rust. No JavaScript and nothing fetched at run
//! time (no CDN): it works on an offline site network, and the pages'
//! Content-Security-Policy can forbid every script.
//!
//! Invariant: every value put into a page goes through [`esc`], names too
//! (device and pipeline names are restricted by `check_name`, but drift
//! features, model names, versions and digests come from records, which
//! a device writes as it likes: all are treated as hostile).

use sluice_protocol::{DeviceState, FleetDevice, FleetSummary, FleetView};
use std::fmt::Write;

/// `text` with the characters that mean something in HTML (text or a
/// quoted attribute) replaced by entities.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;font-size:.9em}
th{background:#f0f0f0}
.badge{display:inline-block;padding:.1em .5em;border-radius:.6em;font-weight:600;font-size:.85em}
.ok{background:#d7f5dd;color:#135a22}.stale{background:#fde9c4;color:#7a4b00}
.drift{background:#fbd3d3;color:#8a1010}.unseen{background:#e4e4e4;color:#555}
svg{background:#fff;border:1px solid #ddd;margin:.3em 0}
.muted{color:#777}code{font-size:.85em}
";

fn head(title: &str, refresh: bool) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{}<title>{}</title><style>{STYLE}</style></head><body>\n",
        if refresh {
            // Fresh without script: the browser reloads the page.
            "<meta http-equiv=\"refresh\" content=\"30\">"
        } else {
            ""
        },
        esc(title)
    )
}

const FOOT: &str = "</body></html>\n";

/// A page saying why the dashboard is not shown.
pub fn denied(why: &str) -> String {
    format!(
        "{}<h1>Sluice fleet</h1><p>{}</p><p class=\"muted\">Open <code>/dashboard?token=OPERATOR_TOKEN</code> once; the browser keeps a cookie.</p>{FOOT}",
        head("Sluice fleet", false),
        esc(why)
    )
}

fn state_name(state: DeviceState) -> &'static str {
    match state {
        DeviceState::Ok => "ok",
        DeviceState::Stale => "stale",
        DeviceState::Drift => "drift",
        _ => "unseen",
    }
}

fn badge(state: DeviceState) -> String {
    let name = state_name(state);
    format!("<span class=\"badge {name}\">{name}</span>")
}

/// `ms` since the Unix epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// A duration in ms, roughly, for people.
fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

fn device_link(device: &str) -> String {
    // Names are URL-safe by `check_name`; escaped for the attribute anyway.
    format!("<a href=\"/dashboard/devices/{0}\">{0}</a>", esc(device))
}

fn backlog_cells(d: &FleetSummary) -> String {
    match &d.status {
        Some(s) => format!(
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            s.pending_records,
            s.journal_items,
            s.set_aside_records,
            s.oldest_pending_ms.map(age).unwrap_or_else(|| "-".into())
        ),
        None if d.last_seen_ms.is_some() => {
            "<td colspan=\"4\" class=\"muted\">not reported</td>".into()
        }
        None => "<td colspan=\"4\" class=\"muted\">-</td>".into(),
    }
}

/// `GET /dashboard`: every device at a glance, the worst first, and the
/// bundle rollouts (newest first).
pub fn fleet(view: &FleetView, rollouts: &[crate::rollout::Rollout]) -> String {
    let mut devices: Vec<&FleetSummary> = view.devices.iter().collect();
    let rank = |s: DeviceState| match s {
        DeviceState::Drift => 0,
        DeviceState::Stale => 1,
        DeviceState::Ok => 3,
        _ => 2,
    };
    devices.sort_by(|a, b| {
        rank(a.state)
            .cmp(&rank(b.state))
            .then(a.device.cmp(&b.device))
    });
    let count = |s: DeviceState| view.devices.iter().filter(|d| d.state == s).count();
    let mut html = head("Sluice fleet", true);
    let _ = writeln!(
        html,
        "<h1>Sluice fleet</h1><p>{} devices: {} ok, {} stale, {} drift, {} never seen. As of {} UTC; stale after {} without a batch.</p>",
        view.devices.len(),
        count(DeviceState::Ok),
        count(DeviceState::Stale),
        count(DeviceState::Drift),
        count(DeviceState::Unseen),
        utc(view.at_ms),
        age(view.stale_after_ms),
    );
    html.push_str(
        "<table id=\"fleet\"><thead><tr><th>Device</th><th>State</th><th>Last seen</th><th>Pending</th><th>Journal</th><th>Set aside</th><th>Oldest pending</th><th>Sluice</th><th>Records</th><th>Drifting pipelines</th></tr></thead><tbody>\n",
    );
    for d in devices {
        let last_seen = d
            .last_seen_ms
            .map(|t| format!("{} ago", age(view.at_ms - t)))
            .unwrap_or_else(|| "never".into());
        let _ = writeln!(
            html,
            "<tr class=\"device\" data-device=\"{}\" data-state=\"{}\"><td>{}</td><td>{}</td><td>{}</td>{}<td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.device),
            state_name(d.state),
            device_link(&d.device),
            badge(d.state),
            esc(&last_seen),
            backlog_cells(d),
            esc(d.sluice_version.as_deref().unwrap_or("-")),
            d.records,
            esc(&d.drifting.join(", ")),
        );
    }
    html.push_str("</tbody></table>\n");
    if !rollouts.is_empty() {
        html.push_str(
            "<h2>Rollouts</h2><table id=\"rollouts\"><thead><tr><th>Rollout</th><th>Bundle</th><th>State</th><th>Stage</th><th>Offered</th><th>Committed</th><th>Why</th></tr></thead><tbody>\n",
        );
        for r in rollouts {
            let committed = r.committed();
            let _ = writeln!(
                html,
                "<tr class=\"rollout\" data-rollout=\"{}\" data-state=\"{}\"><td>{}</td><td>{} v{}</td><td>{}</td><td>{} of {} ({} %)</td><td>{}</td><td>{} of {}</td><td>{}</td></tr>",
                r.id,
                r.state.name(),
                r.id,
                esc(&r.name),
                r.version,
                r.state.name(),
                r.stage + 1,
                r.stages.len(),
                r.stages.get(r.stage).copied().unwrap_or(100),
                r.devices.iter().filter(|d| d.offered).count(),
                committed,
                r.devices.len(),
                esc(r.reason.as_deref().unwrap_or("")),
            );
        }
        html.push_str("</tbody></table>\n");
    }
    html.push_str(FOOT);
    html
}

/// One line of a chart.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(i64, f64)>,
}

const W: f64 = 720.0;
const H: f64 = 170.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 22.0;
const BOTTOM: f64 = 22.0;

/// An inline SVG line chart of `series` over `[t0, t1]` (ms), with an
/// optional dashed `threshold` and red dots at `marks` (alarms).
fn chart(
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

fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// `GET /dashboard/devices/{id}`: one device over time.
pub fn device(view: &FleetDevice, now: i64) -> String {
    let d = &view.summary;
    let (t0, t1) = (view.since_ms, now);
    let mut html = head(&format!("Sluice: {}", d.device), true);
    let _ = write!(
        html,
        "<p><a href=\"/dashboard\">&larr; fleet</a></p><h1>{} {}</h1>\n<p>Last seen: {}. Sluice {}. {} records stored.{}</p>\n",
        esc(&d.device),
        badge(d.state),
        d.last_seen_ms
            .map(|t| format!("{} UTC ({} ago)", utc(t), age(now - t)))
            .unwrap_or_else(|| "never".into()),
        esc(d.sluice_version.as_deref().unwrap_or("unknown")),
        d.records,
        if d.drifting.is_empty() {
            String::new()
        } else {
            format!(
                " Drift alarm in: <strong>{}</strong>.",
                esc(&d.drifting.join(", "))
            )
        }
    );
    if let Some(s) = &d.status {
        let _ = writeln!(
            html,
            "<p>Backlog: {} pending, {} in the journal, {} set aside, oldest pending {}.</p>",
            s.pending_records,
            s.journal_items,
            s.set_aside_records,
            s.oldest_pending_ms.map(age).unwrap_or_else(|| "-".into())
        );
    }
    html.push_str("<h2>Throughput and errors</h2>\n");
    let ok = view
        .traffic
        .iter()
        .map(|b| (b.minute_ms, b.ok as f64))
        .collect();
    let errors = view
        .traffic
        .iter()
        .map(|b| (b.minute_ms, b.errors as f64))
        .collect();
    html.push_str(&chart(
        "Results per minute",
        t0,
        t1,
        &[
            Series {
                name: "ok",
                color: "#1a7f37",
                points: ok,
            },
            Series {
                name: "errors",
                color: "#c00",
                points: errors,
            },
        ],
        None,
        &[],
    ));
    let rate = view
        .traffic
        .iter()
        .filter(|b| b.ok + b.errors > 0)
        .map(|b| {
            (
                b.minute_ms,
                100.0 * b.errors as f64 / (b.ok + b.errors) as f64,
            )
        })
        .collect();
    html.push_str(&chart(
        "Error rate per minute, %",
        t0,
        t1,
        &[Series {
            name: "error %",
            color: "#c00",
            points: rate,
        }],
        None,
        &[],
    ));
    html.push_str("<h2>Backlog</h2>\n");
    let backlog = |f: fn(&sluice_protocol::BacklogPoint) -> u64| {
        view.backlog
            .iter()
            .map(|p| (p.received_ms, f(p) as f64))
            .collect()
    };
    html.push_str(&chart(
        "Backlog on the device (as each batch reported it)",
        t0,
        t1,
        &[
            Series {
                name: "pending",
                color: "#0550ae",
                points: backlog(|p| p.pending_records),
            },
            Series {
                name: "journal",
                color: "#8250df",
                points: backlog(|p| p.journal_items),
            },
            Series {
                name: "set aside",
                color: "#bc4c00",
                points: backlog(|p| p.set_aside_records),
            },
        ],
        None,
        &[],
    ));
    html.push_str("<h2>Drift</h2>\n");
    if view.drift.is_empty() {
        html.push_str("<p class=\"muted\">No drift windows received.</p>\n");
    }
    for state in &view.drift {
        let windows: Vec<_> = view
            .windows
            .iter()
            .filter(|w| w.pipeline == state.pipeline)
            .collect();
        let time = |w: &sluice_protocol::DriftPoint| w.received_ms;
        let marks: Vec<(i64, f64)> = windows
            .iter()
            .filter(|w| w.alarm)
            .map(|w| (time(w), w.max_ratio))
            .collect();
        html.push_str(&chart(
            &format!(
                "Pipeline {}: largest drift score / threshold per window (over 1: drifted)",
                state.pipeline
            ),
            t0,
            t1,
            &[Series {
                name: "score / threshold",
                color: "#0550ae",
                points: windows.iter().map(|w| (time(w), w.max_ratio)).collect(),
            }],
            Some(1.0),
            &marks,
        ));
        let w = &state.window;
        let _ = writeln!(
            html,
            "<p class=\"pipeline\" data-pipeline=\"{}\" data-alarm=\"{}\">Latest window of <strong>{}</strong> (model {}): {} items, ended {} UTC, {}.</p>",
            esc(&state.pipeline),
            w.alarm,
            esc(&state.pipeline),
            esc(&w.model),
            w.items,
            utc(w.ended_at_ms),
            if w.alarm {
                "<span class=\"badge drift\">alarm</span>"
            } else {
                "<span class=\"badge ok\">no alarm</span>"
            }
        );
        html.push_str(
            "<table><thead><tr><th>Feature</th><th>Statistic</th><th>Value</th><th>Threshold</th><th>Drifted</th></tr></thead><tbody>\n",
        );
        for s in &w.scores {
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.feature),
                esc(&s.statistic),
                esc(&format_value(s.value)),
                esc(&format_value(s.threshold)),
                if s.drifted { "yes" } else { "no" }
            );
        }
        let _ = writeln!(
            html,
            "</tbody></table><p class=\"muted\">{} of {} scores shown, the most drifted first.</p>",
            w.scores.len(),
            w.scores_total
        );
    }
    html.push_str("<h2>Drift alarms</h2>\n");
    let alarms: Vec<_> = view.windows.iter().filter(|w| w.alarm).rev().collect();
    if alarms.is_empty() {
        html.push_str("<p class=\"muted\">None in this period.</p>\n");
    } else {
        html.push_str("<table id=\"alarms\"><thead><tr><th>Received (UTC)</th><th>Pipeline</th><th>Model</th><th>Items</th><th>Drifted features</th></tr></thead><tbody>\n");
        for w in alarms {
            let features: Vec<String> = w
                .scores
                .iter()
                .filter(|s| s.drifted)
                .map(|s| format!("{} ({} {})", s.feature, s.statistic, format_value(s.value)))
                .collect();
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                utc(w.received_ms),
                esc(&w.pipeline),
                esc(&w.model),
                w.items,
                esc(&features.join(", "))
            );
        }
        html.push_str("</tbody></table>\n");
    }
    html.push_str("<h2>What it ran</h2>\n<table><thead><tr><th>What</th><th>Name</th><th>SHA-256</th><th>First seen (UTC)</th><th>Last seen (UTC)</th></tr></thead><tbody>\n");
    for v in &view.versions {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            esc(&v.what),
            esc(&v.name),
            esc(&v.sha256),
            utc(v.first_seen_ms),
            utc(v.last_seen_ms)
        );
    }
    html.push_str("</tbody></table>\n");
    html.push_str(FOOT);
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_that_means_something_in_html_is_escaped() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20");
    }
}
