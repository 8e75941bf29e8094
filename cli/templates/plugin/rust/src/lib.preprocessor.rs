//! # {{name}}
//!
//! A Sluice preprocessor: UTF-8 text holding numbers separated by commas or
//! whitespace in, one `fp32` tensor of shape `[1, N]` out. Replace the logic
//! in `parse` with your own; `README.md` says how to build and test.

use serde::Deserialize;
use sluice_guest::{ItemError, Preprocessor, RawInput, Tensor};

/// The plugin's `[plugins.NAME.config]` table, from the host configuration
/// (it arrives as JSON). A misspelled key is refused at start-up, by name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of the model input the tensor is for.
    #[serde(default = "default_output")]
    pub output: String,
    /// How many numbers each input must hold (any number if unset).
    #[serde(default)]
    pub length: Option<usize>,
}

fn default_output() -> String {
    "input".into()
}

/// One instance. The host makes several (one per worker thread) and may
/// replace one at any time (after a trap): keep no state between items.
pub struct Plugin {
    config: Config,
}

/// The numbers in `text`, checked against `length`.
pub fn parse(text: &str, length: Option<usize>) -> Result<Vec<f32>, String> {
    let values = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|token| !token.is_empty())
        .map(|token| {
            token
                .parse::<f32>()
                .map_err(|_| format!("`{token}` is not a number"))
        })
        .collect::<Result<Vec<f32>, String>>()?;
    if values.is_empty() {
        return Err("the input holds no numbers".into());
    }
    if let Some(length) = length
        && values.len() != length
    {
        return Err(format!("expected {length} numbers, got {}", values.len()));
    }
    Ok(values)
}

impl Preprocessor for Plugin {
    type Config = Config;

    /// Runs once per instance; an error refuses the plugin with this message.
    fn new(config: Config) -> Result<Self, String> {
        if config.output.is_empty() {
            return Err("`output` must not be empty".into());
        }
        Ok(Plugin { config })
    }

    /// One input. An `Err` fails this item alone; its neighbours go on.
    fn preprocess(&mut self, input: RawInput) -> Result<Vec<Tensor>, ItemError> {
        let text = std::str::from_utf8(&input.data)
            .map_err(|_| ItemError::invalid("the input is not UTF-8 text"))?;
        let values = parse(text, self.config.length).map_err(ItemError::invalid)?;
        // Tensors keep a batch axis of 1: the host stacks items into batches.
        let shape = [1, values.len() as u32];
        Ok(vec![Tensor::from_f32(&self.config.output, &shape, &values)])
    }
}

sluice_guest::export_preprocessor!(Plugin);
// `options.json` describes `Config` for `sluice plugin inspect`; a test below
// fails when the two disagree. Change them together.
sluice_guest::options!("../options.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_file_documents_every_config_key() {
        sluice_guest::options::check::<Config>(include_str!("../options.json")).unwrap();
    }

    #[test]
    fn numbers_separated_by_commas_or_spaces() {
        assert_eq!(parse("0.5, 2.25 -3\n", None), Ok(vec![0.5, 2.25, -3.0]));
    }

    #[test]
    fn a_bad_token_or_count_is_named() {
        assert_eq!(parse("1, x", None), Err("`x` is not a number".into()));
        assert_eq!(parse(" , ", None), Err("the input holds no numbers".into()));
        assert_eq!(parse("1 2", Some(3)), Err("expected 3 numbers, got 2".into()));
    }
}
