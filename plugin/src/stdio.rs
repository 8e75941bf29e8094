//! Where a plugin's stdout and stderr go.
//!
//! Never to the host's own stdout: `sluice infer` prints JSON Lines there
//! and one stray `print` in a plugin would break every consumer. With the
//! `stdio` grant, each complete line a plugin writes becomes one log event
//! carrying the plugin's name (stdout at `info`, stderr at `warn`); without
//! it, stdout is discarded and stderr only kept to explain a trap.
//!
//! Bounds: the last [`TAIL_BYTES`] of stderr are kept per instance (older
//! bytes are dropped, writes never fail: a guest whose `eprintln!` failed
//! would panic); a line longer than [`MAX_LINE_BYTES`] is logged in pieces
//! of that size; each stream logs at most [`LOG_BYTES_PER_SEC`] on average
//! (bursts of [`LOG_BURST_BYTES`]): a plugin printing in a loop cannot fill
//! the device's disk with logs, and the lines it loses are counted in the
//! next line logged.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How much of a plugin's stderr each instance keeps to explain a trap (a
/// Rust panic message lands there).
pub const TAIL_BYTES: usize = 64 * 1024;

/// The longest line logged as one event.
pub const MAX_LINE_BYTES: usize = 4096;

/// The average rate at which one stream's lines are logged.
pub const LOG_BYTES_PER_SEC: f64 = 64.0 * 1024.0;

/// The most one stream logs at once after being quiet.
pub const LOG_BURST_BYTES: f64 = 256.0 * 1024.0;

/// Which of the two streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// One output stream of one plugin instance (clones share it).
#[derive(Clone)]
pub(crate) struct GuestOutput {
    plugin: Arc<str>,
    stream: Stream,
    /// Lines go to the log (the `stdio` grant).
    to_log: bool,
    /// Keep the tail (stderr).
    keep_tail: bool,
    state: Arc<Mutex<Buffers>>,
}

#[derive(Default)]
struct Buffers {
    /// The unfinished line, not yet logged.
    line: Vec<u8>,
    /// The last `TAIL_BYTES` written.
    tail: VecDeque<u8>,
    /// What may be logged now.
    budget: LogBudget,
}

/// What one source of a plugin's log lines (an output stream, its failing
/// `wasi:nn` calls) may log: [`LOG_BYTES_PER_SEC`] on average, bursts of
/// [`LOG_BURST_BYTES`] (a token bucket), counting the lines it refuses.
pub(crate) struct LogBudget {
    /// Bytes that may be logged now.
    allowance: f64,
    /// When `allowance` was last topped up.
    topped_up: std::time::Instant,
    /// Lines not logged for lack of allowance, since the last one logged.
    dropped: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            allowance: LOG_BURST_BYTES,
            topped_up: std::time::Instant::now(),
            dropped: 0,
        }
    }
}

impl LogBudget {
    /// Whether a line of `len` bytes may be logged now: `Some(lines
    /// dropped before it)` if so; else it is counted as dropped.
    pub(crate) fn admit(&mut self, len: usize) -> Option<u64> {
        let now = std::time::Instant::now();
        let earned = now.duration_since(self.topped_up).as_secs_f64() * LOG_BYTES_PER_SEC;
        self.allowance = (self.allowance + earned).min(LOG_BURST_BYTES);
        self.topped_up = now;
        if self.allowance >= len as f64 {
            self.allowance -= len as f64;
            Some(std::mem::take(&mut self.dropped))
        } else {
            self.dropped += 1;
            None
        }
    }
}

impl GuestOutput {
    pub fn new(plugin: Arc<str>, stream: Stream, to_log: bool) -> Self {
        GuestOutput {
            plugin,
            stream,
            to_log,
            keep_tail: stream == Stream::Stderr,
            state: Arc::default(),
        }
    }

    /// The kept tail, as text.
    pub fn tail(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (a, b) = state.tail.as_slices();
        String::from_utf8_lossy(&[a, b].concat()).trim().to_owned()
    }

    fn take(&self, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.keep_tail {
            let keep = bytes.len().min(TAIL_BYTES);
            let overflow = (state.tail.len() + keep).saturating_sub(TAIL_BYTES);
            state.tail.drain(..overflow);
            state.tail.extend(&bytes[bytes.len() - keep..]);
        }
        if !self.to_log {
            return;
        }
        for &b in bytes {
            if b != b'\n' {
                state.line.push(b);
            }
            if b == b'\n' || state.line.len() >= MAX_LINE_BYTES {
                let line = std::mem::take(&mut state.line);
                if let Some(dropped) = state.budget.admit(line.len()) {
                    self.log(&line, dropped);
                }
            }
        }
    }

    fn log(&self, line: &[u8], dropped: u64) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        let plugin = &*self.plugin;
        match self.stream {
            Stream::Stdout if dropped > 0 => {
                tracing::info!(target: crate::OUTPUT_TARGET, plugin, stream = "stdout", dropped, "{line}")
            }
            Stream::Stdout => {
                tracing::info!(target: crate::OUTPUT_TARGET, plugin, stream = "stdout", "{line}")
            }
            Stream::Stderr if dropped > 0 => {
                tracing::warn!(target: crate::OUTPUT_TARGET, plugin, stream = "stderr", dropped, "{line}")
            }
            Stream::Stderr => {
                tracing::warn!(target: crate::OUTPUT_TARGET, plugin, stream = "stderr", "{line}")
            }
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        // Not a line end: guests flush after every write (Rust's `eprintln!`
        // writes a line in pieces), so a partial line waits for its newline.
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready: what does not fit the bounds is dropped, not refused.
        Ok(TAIL_BYTES)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_bytes_and_never_refuses() {
        let mut out = GuestOutput::new("p".into(), Stream::Stderr, false);
        for _ in 0..10 {
            out.write(bytes::Bytes::from(vec![b'a'; TAIL_BYTES / 2]))
                .unwrap();
        }
        out.write(bytes::Bytes::from_static(b"panicked at the end"))
            .unwrap();
        let tail = out.tail();
        assert_eq!(tail.len(), TAIL_BYTES);
        assert!(tail.ends_with("panicked at the end"));
    }

    #[test]
    fn a_plugin_printing_in_a_loop_is_held_to_the_log_rate() {
        let out = GuestOutput::new("p".into(), Stream::Stdout, true);
        let line = [b'x'; 1023];
        for _ in 0..1024 {
            out.take(&line);
            out.take(b"\n");
        }
        // 1 MiB in a moment: the burst is logged, the rest counted.
        let dropped = out.state.lock().unwrap().budget.dropped;
        let logged = 1024 - dropped;
        assert!((256..=300).contains(&logged), "{logged} lines logged");
    }

    #[test]
    fn long_lines_are_cut_not_buffered_forever() {
        let out = GuestOutput::new("p".into(), Stream::Stdout, true);
        out.take(&vec![b'x'; MAX_LINE_BYTES * 3 + 5]);
        assert_eq!(out.state.lock().unwrap().line.len(), 5);
    }
}
