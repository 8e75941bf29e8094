//! What every dashboard page is made of: escaping, the head with its styles,
//! the foot, the denied page, state badges, times and ages for people.

use sluice_protocol::DeviceState;

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
.cards{display:flex;gap:.6em;flex-wrap:wrap}.card{padding:.5em .9em;border-radius:.5em;font-size:1em}
.card strong{font-size:1.3em;margin-right:.3em}.card a{color:inherit}
.r-running{background:#dbe9ff;color:#0b3d91}.r-paused{background:#fde9c4;color:#7a4b00}
.r-halted{background:#fbd3d3;color:#8a1010}.r-aborted{background:#e4e4e4;color:#555}.r-done{background:#d7f5dd;color:#135a22}
td.bad{background:#fbd3d3;color:#8a1010;font-weight:600}
form#filter{margin:.5em 0}form#filter label{margin-right:.6em}
nav.pages{margin:.6em 0}nav.pages a,nav.pages strong{margin:0 .15em}
.version{margin-right:1em}
";

pub(super) fn head(title: &str, refresh: bool) -> String {
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

pub(super) const FOOT: &str = "</body></html>\n";

/// A page saying why the dashboard is not shown.
pub fn denied(why: &str) -> String {
    format!(
        "{}<h1>Sluice fleet</h1><p>{}</p><p class=\"muted\">Open <code>/dashboard?token=OPERATOR_TOKEN</code> once; the browser keeps a cookie.</p>{FOOT}",
        head("Sluice fleet", false),
        esc(why)
    )
}

/// A link to `device`'s page.
pub(super) fn device_link(device: &str) -> String {
    // Names are URL-safe by `check_name`; escaped for the attribute anyway.
    format!("<a href=\"/dashboard/devices/{0}\">{0}</a>", esc(device))
}

pub(super) fn state_name(state: DeviceState) -> &'static str {
    match state {
        DeviceState::Ok => "ok",
        DeviceState::Stale => "stale",
        DeviceState::Drift => "drift",
        _ => "unseen",
    }
}

pub(super) fn badge(state: DeviceState) -> String {
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
pub(super) fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
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
