//! `GET /dashboard`: the fleet page (devices at a glance, rollouts).

use super::page::{FOOT, age, badge, esc, head, state_name, utc};
use sluice_protocol::{DeviceState, FleetSummary, FleetView};
use std::fmt::Write;

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
