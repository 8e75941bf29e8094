//! # tabular-preprocess
//!
//! A Sluice preprocessor for tabular models: one record (a JSON object or a
//! small CSV document) in, one standardized `f32` vector of shape `[1, F]`
//! out, with `value = (x - mean) / scale` per feature in the configured
//! feature order (computed in `f64`, rounded to `f32` once).
//!
//! * JSON: an object `{"name": number, ...}`; keys that are not features are
//!   ignored; a number may also be given as a numeric string (`"21.5"`).
//! * CSV (RFC 4180, parsed with the `csv` crate): a header line and exactly
//!   one data line (columns that are not features, such as a trailing
//!   `label`, are ignored), or a single line of exactly F numbers in feature
//!   order. Fields are separated by `,`; a field in double quotes may hold
//!   commas, line breaks and `""` for a literal `"` (the quote must be the
//!   field's first character). Fields are trimmed; lines end in LF, CRLF or
//!   CR; blank lines are skipped.
//! * Feature names, means and scales come from the config or from a scaler
//!   file (`{"features": [...], "mean": [...], "scale": [...]}`).
//!
//! See `README.md` for the configuration keys.

use csv::StringRecord;
use serde::Deserialize;
use serde_json::Value;
use sluice_guest::{ItemError, Preprocessor, RawInput, Tensor};

/// How an item's bytes are parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// From the content type (`application/json`, `text/csv`), else JSON if
    /// the first non-space byte is `{`, else CSV.
    #[default]
    Auto,
    Json,
    Csv,
}

/// The plugin's `config` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of the output tensor.
    #[serde(default = "default_output")]
    pub output: String,
    /// Feature names, in the order of the output vector.
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// Per-feature mean (default 0).
    #[serde(default)]
    pub mean: Option<Vec<f64>>,
    /// Per-feature scale (default 1).
    #[serde(default)]
    pub scale: Option<Vec<f64>>,
    /// Path inside the sandbox of a JSON scaler file.
    #[serde(default)]
    pub scaler_file: Option<String>,
    #[serde(default)]
    pub format: Format,
}

fn default_output() -> String {
    "input".into()
}

/// The scaler file: the features in model order and their statistics.
#[derive(Debug, Clone, Deserialize)]
pub struct ScalerFile {
    #[serde(default)]
    pub features: Option<Vec<String>>,
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

/// Feature names and their standardization, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    pub features: Vec<String>,
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl Standardizer {
    /// Check names and statistics; `origin` names where they came from.
    pub fn new(
        features: Vec<String>,
        mean: Vec<f64>,
        scale: Vec<f64>,
        origin: &str,
    ) -> Result<Self, String> {
        if features.is_empty() {
            return Err(format!("{origin}: `features` is empty"));
        }
        for (i, name) in features.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(format!("{origin}: feature {i} has an empty name"));
            }
            if features[..i].contains(name) {
                return Err(format!("{origin}: feature `{name}` is listed twice"));
            }
        }
        for (key, values) in [("mean", &mean), ("scale", &scale)] {
            if values.len() != features.len() {
                return Err(format!(
                    "{origin}: `{key}` has {} values but there are {} features",
                    values.len(),
                    features.len()
                ));
            }
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(format!(
                    "{origin}: `{key}` of feature `{}` is not finite",
                    features[i]
                ));
            }
        }
        if let Some(i) = scale.iter().position(|&s| s == 0.0) {
            return Err(format!(
                "{origin}: `scale` of feature `{}` is 0",
                features[i]
            ));
        }
        Ok(Self {
            features,
            mean,
            scale,
        })
    }

    /// Build from the plugin config, reading `scaler_file` if set.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let Some(path) = &config.scaler_file else {
            let Some(features) = config.features.clone() else {
                return Err("set `features` (or `scaler_file`)".into());
            };
            let n = features.len();
            let mean = config.mean.clone().unwrap_or_else(|| vec![0.0; n]);
            let scale = config.scale.clone().unwrap_or_else(|| vec![1.0; n]);
            return Self::new(features, mean, scale, "config");
        };
        if config.mean.is_some() || config.scale.is_some() {
            return Err("set `mean`/`scale` or `scaler_file`, not both".into());
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read scaler_file `{path}`: {e}"))?;
        let file: ScalerFile = serde_json::from_str(&text)
            .map_err(|e| format!("cannot parse scaler_file `{path}`: {e}"))?;
        let origin = format!("scaler_file `{path}`");
        let features = match (&config.features, file.features) {
            (None, None) => {
                return Err(format!(
                    "{origin} has no `features`; set `features` in the config"
                ));
            }
            (Some(ours), Some(theirs)) if *ours != theirs => {
                return Err(format!(
                    "`features` {ours:?} differs from the features of {origin} {theirs:?}; \
                     remove `features` from the config or make them equal"
                ));
            }
            (Some(ours), _) => ours.clone(),
            (None, Some(theirs)) => theirs,
        };
        Self::new(features, file.mean, file.scale, &origin)
    }

    /// Standardize raw values given in feature order.
    pub fn apply(&self, raw: &[f64]) -> Vec<f32> {
        raw.iter()
            .zip(&self.mean)
            .zip(&self.scale)
            .map(|((x, m), s)| ((x - m) / s) as f32)
            .collect()
    }

    /// Parse one record and return its raw values in feature order.
    pub fn parse(
        &self,
        data: &[u8],
        content_type: &str,
        format: Format,
    ) -> Result<Vec<f64>, ItemError> {
        let text = std::str::from_utf8(data)
            .map_err(|e| ItemError::invalid(format!("the record is not UTF-8 text: {e}")))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        match resolve_format(format, content_type, text) {
            Format::Json => self.parse_json(text),
            _ => self.parse_csv(text),
        }
    }

    fn parse_json(&self, text: &str) -> Result<Vec<f64>, ItemError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ItemError::invalid(format!("cannot parse JSON record: {e}")))?;
        let Value::Object(object) = value else {
            return Err(ItemError::invalid(
                "the JSON record must be an object of feature: number",
            ));
        };
        self.features
            .iter()
            .map(|name| {
                let value = object
                    .get(name)
                    .ok_or_else(|| ItemError::invalid(format!("missing feature `{name}`")))?;
                let number = match value {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                };
                match number {
                    Some(x) if x.is_finite() => Ok(x),
                    _ => Err(ItemError::invalid(format!(
                        "feature `{name}` is not a finite number: {value}"
                    ))),
                }
            })
            .collect()
    }

    /// Parse a CSV record, reading at most three non-blank rows: a third
    /// one fails the item at once, without parsing the rest.
    fn parse_csv(&self, text: &str) -> Result<Vec<f64>, ItemError> {
        let rows = csv_rows(text, 3)?;
        match rows.as_slice() {
            [] => Err(ItemError::invalid("the CSV record is empty")),
            [only] => self.parse_csv_line(only),
            [header, row] => self.parse_csv_row(header, row),
            _ => Err(ItemError::invalid(
                "the CSV record has more than one data line; send exactly one record per item",
            )),
        }
    }

    /// A CSV record of one line: exactly the features' values, in order.
    fn parse_csv_line(&self, only: &StringRecord) -> Result<Vec<f64>, ItemError> {
        let numbers: Option<Vec<f64>> = only.iter().map(|f| f.parse::<f64>().ok()).collect();
        match numbers {
            Some(values) if values.len() == self.features.len() => {
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    return Err(ItemError::invalid(format!(
                        "feature `{}` is not a finite number: {}",
                        self.features[i], &only[i]
                    )));
                }
                Ok(values)
            }
            Some(values) => Err(ItemError::invalid(format!(
                "the CSV record is one line of {} numbers but {} features are configured \
                 (without a header line the fields must be exactly the features, in order)",
                values.len(),
                self.features.len()
            ))),
            None => Err(ItemError::invalid(
                "the CSV record has a header line but no data line",
            )),
        }
    }

    fn parse_csv_row(
        &self,
        header: &StringRecord,
        row: &StringRecord,
    ) -> Result<Vec<f64>, ItemError> {
        if header.len() != row.len() {
            return Err(ItemError::invalid(format!(
                "the CSV header has {} columns but the data line has {}",
                header.len(),
                row.len()
            )));
        }
        self.features
            .iter()
            .map(|name| {
                let mut columns = header.iter().enumerate().filter(|(_, h)| h == name);
                let Some((column, _)) = columns.next() else {
                    return Err(ItemError::invalid(format!(
                        "missing feature `{name}` (the CSV header has: {})",
                        header.iter().collect::<Vec<_>>().join(", ")
                    )));
                };
                if columns.next().is_some() {
                    return Err(ItemError::invalid(format!(
                        "the CSV header names feature `{name}` twice"
                    )));
                }
                let field = &row[column];
                match field.parse::<f64>() {
                    Ok(x) if x.is_finite() => Ok(x),
                    _ => Err(ItemError::invalid(format!(
                        "feature `{name}` is not a finite number: `{field}`"
                    ))),
                }
            })
            .collect()
    }
}

/// The first `max` rows of `text` that are not blank, fields trimmed.
///
/// Text without a double quote has no quoted fields, so RFC 4180 comes down
/// to splitting lines (LF, CRLF or CR) and commas: that path is taken first,
/// because setting up the full reader costs tens of microseconds per item in
/// wasm, more than the rest of the plugin. Quoted text goes through the
/// `csv` crate. Both give the same rows for text both can read.
fn csv_rows(text: &str, max: usize) -> Result<Vec<StringRecord>, ItemError> {
    if text.contains('"') {
        quoted_csv_rows(text, max)
    } else {
        Ok(plain_csv_rows(text, max))
    }
}

/// [`csv_rows`] of text without quotes.
fn plain_csv_rows(text: &str, max: usize) -> Vec<StringRecord> {
    text.split(['\n', '\r'])
        .filter(|line| !line.trim_ascii().is_empty())
        .take(max)
        .map(|line| line.split(',').map(str::trim_ascii).collect())
        .collect()
}

/// [`csv_rows`] through the `csv` crate.
fn quoted_csv_rows(text: &str, max: usize) -> Result<Vec<StringRecord>, ItemError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    let mut record = StringRecord::new();
    while rows.len() < max {
        let more = reader
            .read_record(&mut record)
            .map_err(|e| ItemError::invalid(format!("cannot parse the CSV record: {e}")))?;
        if !more {
            break;
        }
        // The reader skips empty lines; a line of only spaces is one field
        // that trimming left empty.
        if !(record.len() == 1 && record[0].is_empty()) {
            rows.push(record.clone());
        }
    }
    Ok(rows)
}

#[cfg(test)]
#[test]
fn both_csv_paths_read_quote_free_text_alike() {
    for text in [
        "a,b,c\n1,2,3\n",
        " a , b ,c\r\n 1 ,2, 3 \r\n",
        "a,b\r1,2\r",
        "\n\n  \n1,2,3\n \t \n",
        "x,,y\n,\n4,5,6\n7,8,9\n",
        "",
        "   ",
    ] {
        assert_eq!(
            plain_csv_rows(text, 3),
            quoted_csv_rows(text, 3).unwrap(),
            "{text:?}"
        );
    }
}

/// Which parser `format` means for this item.
pub fn resolve_format(format: Format, content_type: &str, text: &str) -> Format {
    if format != Format::Auto {
        return format;
    }
    let essence = sluice_guest::media_type(content_type);
    if essence == "application/json" || essence.ends_with("+json") {
        return Format::Json;
    }
    if essence == "text/csv" {
        return Format::Csv;
    }
    if text.trim_start().starts_with('{') {
        Format::Json
    } else {
        Format::Csv
    }
}

#[derive(Debug)]
pub struct TabularPreprocess {
    output: String,
    format: Format,
    standardizer: Standardizer,
}

impl Preprocessor for TabularPreprocess {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.output.is_empty() {
            return Err("`output` must not be empty".into());
        }
        let standardizer = Standardizer::from_config(&config)?;
        Ok(Self {
            output: config.output,
            format: config.format,
            standardizer,
        })
    }

    fn preprocess(&mut self, input: RawInput) -> Result<Vec<Tensor>, ItemError> {
        let raw = self
            .standardizer
            .parse(&input.data, &input.meta.content_type, self.format)?;
        let values = self.standardizer.apply(&raw);
        // A finite input can still standardize out of the f32 range (a huge
        // value, or a tiny scale): the model would get an infinity.
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(ItemError::invalid(format!(
                "feature `{}` = {} standardizes to {}, outside the f32 range",
                self.standardizer.features[i], raw[i], values[i]
            )));
        }
        Ok(vec![Tensor::from_f32(
            self.output.clone(),
            &[1, values.len() as u32],
            &values,
        )])
    }
}

sluice_guest::export_preprocessor!(TabularPreprocess);
// The options `sluice plugin inspect` lists (a unit test checks them against `Config`).
sluice_guest::options!("../options.json");

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
