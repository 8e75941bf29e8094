//! The fleet page's search, filters and pages: a plain `GET` form (no
//! script), so a link to a filtered page can be shared.

use serde::Deserialize;
use sluice_protocol::{DeviceState, FleetSummary};
use std::collections::BTreeMap;

/// Devices per page of the fleet table.
pub const PAGE_SIZE: usize = 50;

/// A device is failing when more than this share of its results of the
/// last hour failed: shown among the alarms, and `?state=failing`.
pub const FAILING_ERROR_RATE: f64 = 0.05;

/// What the fleet page shows: every field optional, as the form sends it
/// (an empty field is no filter).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Filter {
    /// Part of the device's name.
    pub q: String,
    /// `ok`, `stale`, `drift`, `unseen`, or `failing` (error rate over
    /// [`FAILING_ERROR_RATE`]).
    pub state: String,
    /// A group the device is in.
    pub group: String,
    /// `NAME/VERSION` of a bundle it runs, or `none`.
    pub version: String,
    /// A pipeline: it drifts, or runs a bundle of that name.
    pub pipeline: String,
    /// The page, from 1.
    pub page: usize,
}

/// A failing device: more than [`FAILING_ERROR_RATE`] of its results of
/// the last hour failed.
pub fn failing(d: &FleetSummary) -> bool {
    d.error_rate.is_some_and(|r| r > FAILING_ERROR_RATE)
}

impl Filter {
    /// Whether `d` (in `groups`) is shown.
    pub fn matches(&self, d: &FleetSummary, groups: &BTreeMap<&str, Vec<&str>>) -> bool {
        let state_ok = match self.state.as_str() {
            "" => true,
            "failing" => failing(d),
            state => super::page::state_name(d.state) == state,
        };
        let version_ok = match self.version.as_str() {
            "" => true,
            "none" => d.bundles.is_empty(),
            v => d
                .bundles
                .iter()
                .any(|b| format!("{}/{}", b.name, b.version) == v),
        };
        let in_group = self.group.is_empty()
            || groups
                .get(d.device.as_str())
                .is_some_and(|g| g.contains(&self.group.as_str()));
        let pipeline_ok = self.pipeline.is_empty()
            || d.drifting.contains(&self.pipeline)
            || d.bundles.iter().any(|b| b.name == self.pipeline);
        state_ok
            && version_ok
            && in_group
            && pipeline_ok
            && (self.q.is_empty() || d.device.contains(self.q.trim()))
    }

    /// Whether any filter is set.
    pub fn any(&self) -> bool {
        ![
            &self.q,
            &self.state,
            &self.group,
            &self.version,
            &self.pipeline,
        ]
        .iter()
        .all(|f| f.is_empty())
    }

    /// This page's query string with `page` instead (escaped for an
    /// attribute by the caller).
    pub fn query(&self, page: usize) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (key, value) in [
            ("q", &self.q),
            ("state", &self.state),
            ("group", &self.group),
            ("version", &self.version),
            ("pipeline", &self.pipeline),
        ] {
            if !value.is_empty() {
                query.append_pair(key, value);
            }
        }
        query.append_pair("page", &page.to_string());
        query.finish()
    }
}

/// The worst first: drift, failing, stale, never seen, ok; then by name.
pub fn rank(d: &FleetSummary) -> u8 {
    match d.state {
        DeviceState::Drift => 0,
        _ if failing(d) => 1,
        DeviceState::Stale => 2,
        DeviceState::Ok => 4,
        _ => 3,
    }
}
