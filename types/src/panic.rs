//! A panic (a bug) turned into its message, so that it costs one input or
//! a moment, never the process.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// The most bytes of a panic message kept (in logs, results and the
/// journal).
pub const MAX_CAUSE_BYTES: usize = 1024;

/// Run `f`; its panic, if it panicked, as text. Whatever `f` was working on
/// is to be treated as unfinished: the callers only retry from durable
/// state (the journal), never from what `f` left in memory.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panic_text(payload.as_ref()))
}

/// A panic's message, cut to [`MAX_CAUSE_BYTES`] on a character boundary.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    cut(text, MAX_CAUSE_BYTES)
}

/// `text`, at most `max` bytes, cut on a character boundary.
pub fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_CAUSE_BYTES);
        let cut = panic_text(&long);
        assert!(cut.len() <= MAX_CAUSE_BYTES && cut.len() >= MAX_CAUSE_BYTES - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
