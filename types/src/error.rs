//! Errors from libraries that have no error type of their own, and how an
//! error chain reads.

/// A boxed error from a library that has no error type of its own (wasmtime
/// and tract report `anyhow` errors); its `source()` chain is kept.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The last error in `error`'s chain: what a user needs to read when the
/// outer ones only say where it happened ("failed to parse WebAssembly
/// module" hides the cause).
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// `error` and every error in its chain, joined by `": "` (what
/// `anyhow`'s `{:#}` shows).
pub fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}
