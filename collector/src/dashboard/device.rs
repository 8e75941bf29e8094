//! `GET /dashboard/devices/{id}`: one device over time.

use super::chart::{Series, chart, format_value};
use super::page::{FOOT, age, badge, esc, head, utc};
use sluice_protocol::FleetDevice;
use std::fmt::Write;

/// The chart windows a device page offers: `?window=` and its span, ms.
pub const WINDOWS: [(&str, i64); 4] = [
    ("15m", 15 * 60_000),
    ("1h", 3_600_000),
    ("24h", 86_400_000),
    ("7d", 7 * 86_400_000),
];

/// The window to chart: the one asked for, else the smallest that holds
/// all of the device's activity in `view` (minutes of activity are not a
/// one-pixel spike on a day's axis); a day when there is none.
fn window(view: &FleetDevice, now: i64, asked: Option<&str>) -> (&'static str, i64) {
    if let Some(w) = WINDOWS.iter().find(|(name, _)| Some(*name) == asked) {
        return *w;
    }
    let first = view
        .traffic
        .iter()
        .map(|b| b.minute_ms)
        .chain(view.backlog.iter().map(|p| p.received_ms))
        .chain(view.windows.iter().map(|w| w.received_ms))
        .min();
    match first {
        Some(first) => *WINDOWS
            .iter()
            .find(|(_, span)| now - span <= first)
            .unwrap_or(&WINDOWS[3]),
        None => WINDOWS[2],
    }
}

/// `GET /dashboard/devices/{id}`: one device over time, charted over
/// `asked` (a [`WINDOWS`] name) or the window that follows its data.
pub fn device(view: &FleetDevice, now: i64, asked: Option<&str>) -> String {
    let d = &view.summary;
    let (name, span) = window(view, now, asked);
    let (t0, t1) = (now - span, now);
    let mut view = view.clone();
    view.traffic.retain(|b| b.minute_ms >= t0);
    view.backlog.retain(|p| p.received_ms >= t0);
    view.windows.retain(|w| w.received_ms >= t0);
    let view = &view;
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
    let _ = writeln!(
        html,
        "<p>Errors in the last hour: {}. Bundles: {}.</p>",
        d.error_rate
            .map(|r| format!("{:.1} %", r * 100.0))
            .unwrap_or_else(|| "no results".into()),
        if d.bundles.is_empty() {
            "none (its own configuration)".to_owned()
        } else {
            esc(&d
                .bundles
                .iter()
                .map(|b| format!("{} v{}", b.name, b.version))
                .collect::<Vec<_>>()
                .join(", "))
        }
    );
    html.push_str("<nav id=\"windows\">Charts over the last ");
    for (w, _) in WINDOWS {
        if w == name {
            let _ = write!(html, "<strong data-window=\"{w}\">{w}</strong> ");
        } else {
            let _ = write!(
                html,
                "<a data-window=\"{w}\" href=\"/dashboard/devices/{}?window={w}\">{w}</a> ",
                esc(&d.device)
            );
        }
    }
    html.push_str("</nav>\n<h2>Throughput and errors</h2>\n");
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
    html.push_str("<h2>Install history</h2>\n");
    if view.installs.is_empty() {
        html.push_str("<p class=\"muted\">No bundle was offered to it.</p>\n");
    } else {
        html.push_str("<table id=\"installs\"><thead><tr><th>When (UTC, device clock)</th><th>Bundle</th><th>Step</th><th>Why</th></tr></thead><tbody>\n");
        for i in &view.installs {
            let class = match i.outcome.as_str() {
                "committed" => "ok",
                "refused" | "rolled-back" => "drift",
                "ignored" => "stale",
                _ => "unseen",
            };
            let _ = writeln!(
                html,
                "<tr data-outcome=\"{0}\"><td>{1}</td><td>{2} v{3}</td><td><span class=\"badge {class}\">{0}</span></td><td>{4}</td></tr>",
                esc(&i.outcome),
                utc(i.at_ms),
                esc(&i.name),
                i.version,
                esc(i.reason.as_deref().unwrap_or(""))
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
