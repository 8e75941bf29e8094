//! `GET /dashboard`: the fleet page. The summary first (states, versions,
//! rollouts in progress, alarms), then the devices matching the filters,
//! the worst first, a page at a time; then rollouts and recent changes.

use super::filter::{Filter, PAGE_SIZE, rank};
use super::page::{FOOT, age, badge, device_link, esc, head, state_name, utc};
use super::summary;
use crate::rollout::Rollout;
use sluice_protocol::operator::{AuditEntry, Group};
use sluice_protocol::{FleetSummary, FleetView};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Rollouts the page lists.
const ROLLOUTS_SHOWN: usize = 20;

/// What the fleet page is made from.
pub struct FleetPage<'a> {
    /// The fleet.
    pub view: &'a FleetView,
    /// Every rollout, newest first.
    pub rollouts: &'a [Rollout],
    /// Every group.
    pub groups: &'a [Group],
    /// The newest audit entries, newest first.
    pub audit: &'a [AuditEntry],
    /// What to show.
    pub filter: &'a Filter,
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

fn error_cell(d: &FleetSummary) -> String {
    match d.error_rate {
        Some(rate) => format!(
            "<td class=\"{}\" data-error-rate=\"{rate:.4}\">{:.1} %</td>",
            if super::filter::failing(d) { "bad" } else { "" },
            rate * 100.0
        ),
        None => "<td class=\"muted\">-</td>".into(),
    }
}

/// `GET /dashboard`.
pub fn fleet(page: &FleetPage) -> String {
    let (view, filter) = (page.view, page.filter);
    let mut groups_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for g in page.groups {
        for d in &g.devices {
            groups_of.entry(d).or_default().push(&g.name);
        }
    }
    let mut devices: Vec<&FleetSummary> = view
        .devices
        .iter()
        .filter(|d| filter.matches(d, &groups_of))
        .collect();
    devices.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.device.cmp(&b.device)));
    let pages = devices.len().div_ceil(PAGE_SIZE).max(1);
    let current = filter.page.clamp(1, pages);
    let shown = &devices[(current - 1) * PAGE_SIZE..(current * PAGE_SIZE).min(devices.len())];

    let mut html = head("Sluice fleet", true);
    let _ = writeln!(
        html,
        "<h1>Sluice fleet</h1><p>{} devices. As of {} UTC; stale after {} without a batch.</p>",
        view.devices.len(),
        utc(view.at_ms),
        age(view.stale_after_ms),
    );
    html.push_str(&summary::summary(view, page.rollouts));
    html.push_str("<h2>Devices</h2>\n");
    let group_names: Vec<String> = page.groups.iter().map(|g| g.name.clone()).collect();
    html.push_str(&summary::form(filter, &group_names, view));
    let _ = writeln!(
        html,
        "<p id=\"showing\">Showing {}&ndash;{} of {} device(s){}, the worst first.</p>",
        if shown.is_empty() {
            0
        } else {
            (current - 1) * PAGE_SIZE + 1
        },
        (current - 1) * PAGE_SIZE + shown.len(),
        devices.len(),
        if filter.any() { " matching" } else { "" },
    );
    html.push_str(
        "<table id=\"fleet\"><thead><tr><th>Device</th><th>State</th><th>Errors (1 h)</th><th>Last seen</th><th>Pending</th><th>Journal</th><th>Set aside</th><th>Oldest pending</th><th>Bundles</th><th>Groups</th><th>Sluice</th><th>Records</th><th>Drifting pipelines</th></tr></thead><tbody>\n",
    );
    for d in shown {
        let last_seen = d
            .last_seen_ms
            .map(|t| format!("{} ago", age(view.at_ms - t)))
            .unwrap_or_else(|| "never".into());
        let bundles: Vec<String> = d
            .bundles
            .iter()
            .map(|b| format!("{} v{}", b.name, b.version))
            .collect();
        let _ = writeln!(
            html,
            "<tr class=\"device\" data-device=\"{}\" data-state=\"{}\"><td>{}</td><td>{}</td>{}<td>{}</td>{}<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.device),
            state_name(d.state),
            device_link(&d.device),
            badge(d.state),
            error_cell(d),
            esc(&last_seen),
            backlog_cells(d),
            esc(&bundles.join(", ")),
            esc(&groups_of
                .get(d.device.as_str())
                .map(|g| g.join(", "))
                .unwrap_or_default()),
            esc(d.sluice_version.as_deref().unwrap_or("-")),
            d.records,
            esc(&d.drifting.join(", ")),
        );
    }
    html.push_str("</tbody></table>\n");
    if pages > 1 {
        html.push_str("<nav class=\"pages\">Page ");
        for p in 1..=pages {
            if p == current {
                let _ = write!(html, "<strong data-page=\"{p}\">{p}</strong> ");
            } else if p == 1 || p == pages || p.abs_diff(current) <= 3 {
                let _ = write!(
                    html,
                    "<a data-page=\"{p}\" href=\"/dashboard?{}\">{p}</a> ",
                    esc(&filter.query(p))
                );
            } else if p.abs_diff(current) == 4 {
                html.push_str("&hellip; ");
            }
        }
        let _ = writeln!(html, "of {pages}</nav>");
    }
    html.push_str(&summary::rollouts_table(page.rollouts, ROLLOUTS_SHOWN));
    html.push_str(&summary::audit_table(page.audit));
    html.push_str(FOOT);
    html
}
