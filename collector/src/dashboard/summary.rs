//! The top of the fleet page, what an operator looks at first: devices by
//! state and by version, rollouts in progress, alarms; and the tables of
//! rollouts and recent changes (the audit trail).

use super::filter::{Filter, failing};
use super::page::{age, device_link, esc, state_name, utc};
use crate::rollout::{Rollout, RolloutState};
use sluice_protocol::operator::AuditEntry;
use sluice_protocol::{DeviceState, FleetSummary, FleetView};
use std::fmt::Write;

/// Devices an alarm list names before it only counts.
const NAMED: usize = 10;

/// A link to the fleet page filtered by `key=value`.
fn filtered(key: &str, value: &str, text: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair(key, value)
        .finish();
    format!("<a href=\"/dashboard?{}\">{}</a>", esc(&query), text)
}

/// A rollout state as a coloured badge.
pub(super) fn rollout_badge(state: RolloutState) -> String {
    format!("<span class=\"badge r-{0}\">{0}</span>", state.name())
}

/// Devices by state and by version, rollouts in progress, alarms.
pub(super) fn summary(view: &FleetView, rollouts: &[Rollout]) -> String {
    let mut html = String::from("<section id=\"summary\">\n<div class=\"cards\">");
    let count = |s: DeviceState| view.devices.iter().filter(|d| d.state == s).count();
    for (state, label) in [
        (DeviceState::Ok, "ok"),
        (DeviceState::Stale, "stale"),
        (DeviceState::Drift, "drift"),
        (DeviceState::Unseen, "never seen"),
    ] {
        let name = state_name(state);
        let _ = write!(
            html,
            "<div class=\"card {name}\" data-state=\"{name}\"><strong>{}</strong> {}</div>",
            count(state),
            filtered("state", name, label)
        );
    }
    let failing_devices: Vec<&FleetSummary> = view.devices.iter().filter(|d| failing(d)).collect();
    let _ = writeln!(
        html,
        "<div class=\"card drift\" data-state=\"failing\"><strong>{}</strong> {}</div></div>",
        failing_devices.len(),
        filtered(
            "state",
            "failing",
            "failing (errors over 5 % in the last hour)"
        )
    );

    html.push_str("<h2>Which version runs where</h2><p id=\"versions\">");
    let none = view.devices.iter().filter(|d| d.bundles.is_empty()).count();
    for v in &view.versions {
        let key = format!("{}/{}", v.name, v.version);
        let _ = write!(
            html,
            "<span class=\"version\" data-version=\"{}\">{}: <strong>{}</strong></span> ",
            esc(&key),
            filtered("version", &key, &format!("{} v{}", esc(&v.name), v.version)),
            v.devices
        );
    }
    let _ = writeln!(
        html,
        "<span class=\"version\" data-version=\"none\">{}: <strong>{none}</strong></span></p>",
        filtered("version", "none", "no bundle (own configuration)")
    );

    let active: Vec<&Rollout> = rollouts
        .iter()
        .filter(|r| matches!(r.state, RolloutState::Running | RolloutState::Paused))
        .collect();
    let halted = newest_halted(rollouts);
    html.push_str("<h2>Rollouts in progress</h2>\n");
    if active.is_empty() && halted.is_empty() {
        html.push_str("<p class=\"muted\">None.</p>\n");
    }
    html.push_str("<ul id=\"active-rollouts\">");
    for r in active.iter().chain(&halted) {
        let _ = write!(
            html,
            "<li data-rollout=\"{}\">{} rollout {}: {} v{}, stage {} of {} ({} %), {} of {} committed{}</li>",
            r.id,
            rollout_badge(r.state),
            r.id,
            esc(&r.name),
            r.version,
            r.stage + 1,
            r.stages.len(),
            r.stages.get(r.stage).copied().unwrap_or(100),
            r.committed(),
            r.devices.len(),
            r.reason
                .as_deref()
                .map(|why| format!(": <span class=\"why\">{}</span>", esc(why)))
                .unwrap_or_default()
        );
    }
    html.push_str("</ul>\n<h2>Alarms</h2>\n<ul id=\"alarms-summary\">");
    let drifting: Vec<&FleetSummary> = view
        .devices
        .iter()
        .filter(|d| d.state == DeviceState::Drift)
        .collect();
    for (what, devices, state) in [
        ("with a drift alarm", &drifting, "drift"),
        ("failing", &failing_devices, "failing"),
    ] {
        let names: Vec<String> = devices
            .iter()
            .take(NAMED)
            .map(|d| device_link(&d.device))
            .collect();
        let more = devices.len().saturating_sub(NAMED);
        let _ = write!(
            html,
            "<li>{}: {}{}</li>",
            filtered("state", state, &format!("{} {what}", devices.len())),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            },
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    html.push_str("</ul>\n</section>\n");
    html
}

/// The newest rollout of each name when it halted: a halt waits for the
/// operator.
fn newest_halted(rollouts: &[Rollout]) -> Vec<&Rollout> {
    let mut seen = std::collections::BTreeSet::new();
    rollouts
        .iter()
        .filter(|r| seen.insert(r.name.as_str()))
        .filter(|r| r.state == RolloutState::Halted)
        .collect()
}

/// The search and filter form.
pub(super) fn form(filter: &Filter, groups: &[String], view: &FleetView) -> String {
    let select = |name: &str, current: &str, options: &[(String, String)]| {
        let mut html = format!("<select name=\"{name}\"><option value=\"\">any</option>");
        for (value, label) in options {
            let _ = write!(
                html,
                "<option value=\"{0}\"{1}>{2}</option>",
                esc(value),
                if value == current { " selected" } else { "" },
                esc(label)
            );
        }
        html + "</select>"
    };
    let states: Vec<(String, String)> = ["ok", "stale", "drift", "unseen", "failing"]
        .map(|s| (s.to_owned(), s.to_owned()))
        .to_vec();
    let groups: Vec<(String, String)> = groups.iter().map(|g| (g.clone(), g.clone())).collect();
    let mut versions: Vec<(String, String)> = view
        .versions
        .iter()
        .map(|v| {
            (
                format!("{}/{}", v.name, v.version),
                format!("{} v{}", v.name, v.version),
            )
        })
        .collect();
    versions.push(("none".into(), "no bundle".into()));
    format!(
        "<form id=\"filter\" method=\"get\" action=\"/dashboard\"><label>Device <input name=\"q\" value=\"{}\" placeholder=\"name contains\"></label> <label>State {}</label> <label>Group {}</label> <label>Version {}</label> <label>Pipeline <input name=\"pipeline\" value=\"{}\"></label> <button type=\"submit\">Show</button> <a href=\"/dashboard\">clear</a></form>\n",
        esc(&filter.q),
        select("state", &filter.state, &states),
        select("group", &filter.group, &groups),
        select("version", &filter.version, &versions),
        esc(&filter.pipeline),
    )
}

/// The rollouts, newest first (at most `limit`).
pub(super) fn rollouts_table(rollouts: &[Rollout], limit: usize) -> String {
    if rollouts.is_empty() {
        return String::new();
    }
    let mut html = String::from(
        "<h2>Rollouts</h2><table id=\"rollouts\"><thead><tr><th>Rollout</th><th>Bundle</th><th>State</th><th>Stage</th><th>Offered</th><th>Committed</th><th>Skipped</th><th>Policy</th><th>Why</th></tr></thead><tbody>\n",
    );
    for r in rollouts.iter().take(limit) {
        let policy = &r.policy;
        let _ = writeln!(
            html,
            "<tr class=\"rollout\" data-rollout=\"{}\" data-state=\"{}\"><td>{}</td><td>{} v{}</td><td>{}</td><td>{} of {} ({} %)</td><td>{}</td><td>{} of {}</td><td>{}</td><td>halt over {} % (at least {}){}</td><td>{}</td></tr>",
            r.id,
            r.state.name(),
            r.id,
            esc(&r.name),
            r.version,
            rollout_badge(r.state),
            r.stage + 1,
            r.stages.len(),
            r.stages.get(r.stage).copied().unwrap_or(100),
            r.devices.iter().filter(|d| d.offered).count(),
            r.committed(),
            r.devices.len(),
            r.devices.iter().filter(|d| d.skipped).count(),
            policy.max_failed_percent,
            policy.min_failed,
            policy
                .stage_deadline_ms
                .map(|ms| format!("; stages within {}", age(ms as i64)))
                .unwrap_or_default(),
            esc(r.reason.as_deref().unwrap_or("")),
        );
    }
    html.push_str("</tbody></table>\n");
    if rollouts.len() > limit {
        let _ = writeln!(
            html,
            "<p class=\"muted\">{} older rollouts: <code>GET /v1/rollouts</code>.</p>",
            rollouts.len() - limit
        );
    }
    html
}

/// The newest entries of the audit trail.
pub(super) fn audit_table(entries: &[AuditEntry]) -> String {
    let mut html = String::from("<h2>Recent changes</h2>\n");
    if entries.is_empty() {
        html.push_str("<p class=\"muted\">None yet.</p>\n");
        return html;
    }
    html.push_str("<table id=\"audit\"><thead><tr><th>When (UTC)</th><th>Who</th><th>From</th><th>What</th><th>Of</th><th>Outcome</th></tr></thead><tbody>\n");
    for e in entries {
        let _ = writeln!(
            html,
            "<tr data-audit=\"{}\"><td>{}</td><td>{} ({})</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.id,
            utc(e.at_ms),
            esc(&e.actor),
            esc(&e.role),
            esc(e.remote.as_deref().unwrap_or("-")),
            esc(&e.action),
            esc(&e.target),
            esc(&e.outcome),
        );
    }
    html.push_str("</tbody></table><p class=\"muted\">The whole trail: <code>GET /v1/audit</code>, <code>sluice-collector audit</code>.</p>\n");
    html
}
