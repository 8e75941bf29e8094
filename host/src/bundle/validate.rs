//! Checking a staged bundle before it runs: its configuration fragment
//! merged into the device's (every path inside the bundle), and its
//! validation set run through the new pipeline, compared with the expected
//! results within their tolerance.

use super::error::InstallError;
use super::{EXPECTED_JSON, Expected, PIPELINE_TOML};
use crate::config::{Config, PluginSource};
use crate::deployment::Deployment;
use crate::types::{Metadata, RawItem};
use sluice_bundle::Verified;
use std::path::Path;
use std::time::Instant;

/// The device's configuration with pipeline `name` (only) as the bundle at
/// `files` defines it. Every path the fragment names must lie inside the
/// bundle: a bundle brings its files, it does not reach into the device's.
pub(super) fn bundle_config(
    base: &Config,
    files: &Path,
    name: &str,
    version: u64,
) -> Result<Config, InstallError> {
    let problem = |problem: String| InstallError::Fragment {
        name: name.to_owned(),
        version,
        problem,
    };
    let path = files.join(PIPELINE_TOML);
    let text = std::fs::read_to_string(&path).map_err(|e| problem(e.to_string()))?;
    let fragment = Config::parse(&text, files).map_err(|e| problem(e.to_string()))?;
    if fragment.pipelines.keys().ne([name]) {
        return Err(problem(format!(
            "it must define exactly pipeline `{name}`, it defines {:?}",
            fragment.pipelines.keys().collect::<Vec<_>>()
        )));
    }
    let inside = |what: String, p: &Path| {
        if p.starts_with(files) {
            Ok(())
        } else {
            Err(problem(format!(
                "{what} `{}` is outside the bundle",
                p.display()
            )))
        }
    };
    for (plugin, config) in &fragment.plugins {
        match &config.path {
            PluginSource::File(p) => inside(format!("plugins.{plugin}.path"), p)?,
            PluginSource::Bundled(b) => {
                return Err(problem(format!(
                    "plugins.{plugin}.path is `bundled:{b}`: a bundle carries its plugins"
                )));
            }
        }
        for dir in &config.grants.dirs {
            inside(format!("plugins.{plugin}.grants.dirs"), &dir.host)?;
        }
    }
    for (pipeline, config) in &fragment.pipelines {
        if let Some(sample) = &config.sample {
            inside(format!("pipelines.{pipeline}.sample"), sample)?;
        }
    }
    for (model, config) in &fragment.models {
        inside(format!("models.{model}.path"), &config.path)?;
        if let Some(profile) = &config.profile {
            inside(format!("models.{model}.profile"), profile)?;
        }
    }
    let mut config = base.clone();
    config.plugins = fragment.plugins;
    config.models = fragment.models;
    config.pipelines = fragment.pipelines;
    Ok(config)
}

/// Run the validation set through `deployment`: the expected results
/// (numbers within the manifest's tolerance), expected failures, and the
/// per-item time budget.
pub(super) fn validate(deployment: &Deployment, verified: &Verified) -> Result<(), InstallError> {
    let manifest = &verified.manifest;
    let failed = |problem: String| InstallError::Validation {
        name: manifest.name.clone(),
        version: manifest.version,
        problem,
    };
    let text = std::fs::read(verified.files.join(EXPECTED_JSON))
        .map_err(|e| failed(format!("{EXPECTED_JSON}: {e}")))?;
    let expected: Vec<Expected> =
        serde_json::from_slice(&text).map_err(|e| failed(format!("{EXPECTED_JSON}: {e}")))?;
    let mut items = Vec::with_capacity(expected.len());
    for (ix, e) in expected.iter().enumerate() {
        let listed = manifest.files.iter().any(|f| f.path == e.input);
        if !listed {
            return Err(failed(format!(
                "input `{}` is not a file of the bundle",
                e.input
            )));
        }
        let data = std::fs::read(verified.files.join(&e.input))
            .map_err(|err| failed(format!("{}: {err}", e.input)))?;
        items.push(RawItem {
            meta: Metadata::new(format!("validation-{ix}"), e.content_type.clone()),
            data,
        });
    }
    if items.is_empty() {
        return Ok(());
    }
    let n = items.len();
    let started = Instant::now();
    let outcomes = crate::pipeline::process_all(&deployment.pipeline, items, &|_| {});
    let per_item_ms = started.elapsed().as_secs_f64() * 1000.0 / n as f64;
    for (e, outcome) in expected.iter().zip(&outcomes) {
        match (&e.result, &outcome.result) {
            (Some(want), Ok(document)) => {
                let got: serde_json::Value = serde_json::from_slice(&document.body)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&document.body).into());
                if let Some(difference) = differ(want, &got, manifest.validation.tolerance, "") {
                    return Err(failed(format!("`{}`: {difference}", e.input)));
                }
            }
            (Some(_), Err(error)) => {
                return Err(failed(format!("`{}` failed: {error}", e.input)));
            }
            (None, Ok(_)) => {
                return Err(failed(format!(
                    "`{}` was expected to fail ({}) and gave a result",
                    e.input,
                    e.error.as_deref().unwrap_or("")
                )));
            }
            (None, Err(_)) => {}
        }
    }
    if per_item_ms > manifest.validation.max_item_ms as f64 {
        return Err(failed(format!(
            "{per_item_ms:.1} ms per item, over the budget of {} ms",
            manifest.validation.max_item_ms
        )));
    }
    Ok(())
}

/// Where `got` differs from `want` (numbers within `tolerance` relative to
/// the larger magnitude, absolute below 1), as `at: want ... got ...`.
fn differ(
    want: &serde_json::Value,
    got: &serde_json::Value,
    tolerance: f64,
    at: &str,
) -> Option<String> {
    use serde_json::Value;
    let here = || {
        if at.is_empty() {
            "the result".to_owned()
        } else {
            at.to_owned()
        }
    };
    match (want, got) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64()?, b.as_f64()?);
            let bound = tolerance * a.abs().max(b.abs()).max(1.0);
            ((a - b).abs() > bound || !b.is_finite())
                .then(|| format!("{}: expected {a}, got {b}", here()))
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Some(format!(
                    "{}: expected {} elements, got {}",
                    here(),
                    a.len(),
                    b.len()
                ));
            }
            a.iter()
                .zip(b)
                .enumerate()
                .find_map(|(i, (a, b))| differ(a, b, tolerance, &format!("{at}[{i}]")))
        }
        (Value::Object(a), Value::Object(b)) => {
            if a.len() != b.len() || a.keys().any(|k| !b.contains_key(k)) {
                return Some(format!(
                    "{}: expected fields {:?}, got {:?}",
                    here(),
                    a.keys().collect::<Vec<_>>(),
                    b.keys().collect::<Vec<_>>()
                ));
            }
            a.iter()
                .find_map(|(k, v)| differ(v, &b[k], tolerance, &format!("{at}.{k}")))
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("{}: expected {a}, got {b}", here())),
    }
}

#[cfg(test)]
mod tests {
    use super::differ;
    use serde_json::json;

    #[test]
    fn results_compare_within_the_tolerance_and_name_the_first_difference() {
        let want = json!({"top": [{"label": "3", "score": 0.9}], "n": 1000.0});
        assert_eq!(
            differ(
                &want,
                &json!({"top": [{"label": "3", "score": 0.90005}], "n": 1000.05}),
                1e-4,
                ""
            ),
            None
        );
        let d = differ(
            &want,
            &json!({"top": [{"label": "3", "score": 0.8}], "n": 1000.0}),
            1e-4,
            "",
        )
        .unwrap();
        assert!(d.starts_with(".top[0].score: expected 0.9, got 0.8"), "{d}");
        let d = differ(
            &want,
            &json!({"top": [{"label": "5", "score": 0.9}], "n": 1000.0}),
            1e-4,
            "",
        )
        .unwrap();
        assert!(d.contains(".top[0].label"), "{d}");
        assert!(differ(&want, &json!({"top": [], "n": 1000.0}), 1e-4, "").is_some());
        assert!(
            differ(
                &want,
                &json!({"top": [{"label": "3", "score": 0.9}]}),
                1e-4,
                ""
            )
            .is_some()
        );
        assert!(differ(&json!(1.0), &json!(null), 1e-4, "").is_some());
    }
}
