//! `/metrics` in the format the scraper asks for: OpenMetrics (what
//! `prometheus-client` writes, and what Prometheus asks for first), or the
//! Prometheus text format 0.0.4 for clients that ask only for
//! `text/plain` (`promtool check metrics`, older scrapers, `curl` scripts).
//!
//! The two differ, for what Sluice exports, in: the counter family's name
//! (`x` with samples `x_total` in OpenMetrics; `x_total` in 0.0.4), `# UNIT`
//! lines and the closing `# EOF` (OpenMetrics only), and escaping in
//! `# HELP` (0.0.4 knows `\\` and `\n` only).

use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

/// The content type of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The answer to a scrape whose request had `headers`, of the metrics
/// `openmetrics` (OpenMetrics text): as they are, unless the client asks
/// for `text/plain` and not for OpenMetrics.
pub fn answer(headers: &HeaderMap, openmetrics: String) -> Response {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase();
    if accept.contains("text/plain") && !accept.contains("application/openmetrics-text") {
        return (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            prometheus_text(&openmetrics),
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, OPENMETRICS)], openmetrics).into_response()
}

/// `openmetrics` in the Prometheus text format 0.0.4.
pub fn prometheus_text(openmetrics: &str) -> String {
    // Counter families, by their OpenMetrics name: their HELP and TYPE
    // lines take the samples' `_total` name.
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) && !name.ends_with("_total") {
                    out.push_str("_total");
                }
                out.push(' ');
                if prefix == "# HELP " {
                    out.push_str(&text.replace("\\\"", "\""));
                } else {
                    out.push_str(text);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM: &str = "# HELP up_batches Batches \\\"seen\\\".\n# TYPE up_batches counter\nup_batches_total{outcome=\"ok\"} 3\n# HELP lag_seconds Lag.\n# TYPE lag_seconds histogram\n# UNIT lag_seconds seconds\nlag_seconds_sum 1.5\nlag_seconds_count 2\nlag_seconds_bucket{le=\"+Inf\"} 2\n# HELP depth Depth.\n# TYPE depth gauge\ndepth 7\n# EOF\n";

    #[test]
    fn counters_units_eof_and_escapes_become_the_text_format() {
        assert_eq!(
            prometheus_text(OM),
            "# HELP up_batches_total Batches \"seen\".\n# TYPE up_batches_total counter\nup_batches_total{outcome=\"ok\"} 3\n# HELP lag_seconds Lag.\n# TYPE lag_seconds histogram\nlag_seconds_sum 1.5\nlag_seconds_count 2\nlag_seconds_bucket{le=\"+Inf\"} 2\n# HELP depth Depth.\n# TYPE depth gauge\ndepth 7\n"
        );
    }

    #[test]
    fn openmetrics_unless_only_text_is_asked_for() {
        let ask = |accept: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(accept) = accept {
                headers.insert(header::ACCEPT, accept.parse().unwrap());
            }
            answer(&headers, OM.to_owned()).headers()[header::CONTENT_TYPE].clone()
        };
        assert_eq!(ask(None), OPENMETRICS);
        assert_eq!(ask(Some("*/*")), OPENMETRICS);
        // What Prometheus sends: OpenMetrics first.
        assert_eq!(
            ask(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            OPENMETRICS
        );
        assert_eq!(ask(Some("text/plain;version=0.0.4")), PROMETHEUS_TEXT);
        assert_eq!(ask(Some("text/plain")), PROMETHEUS_TEXT);
    }
}
