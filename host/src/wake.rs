//! [`Wake`]: how the agent's blocking loops (pipeline workers, the folder
//! source, the uploader, housekeeping) are woken when there is work and
//! told to stop.
//!
//! Each loop has a `Wake` of its own, so a wake-up meant for one pipeline's
//! worker is never taken by another's (one shared flag would lose wake-ups
//! as soon as there are two pipelines).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Wake-ups and a stop request for one blocking loop.
#[derive(Default)]
pub struct Wake {
    woken: Mutex<bool>,
    cond: Condvar,
    stop: AtomicBool,
}

impl Wake {
    /// A new, shareable `Wake`.
    pub fn new() -> Arc<Wake> {
        Arc::new(Wake::default())
    }

    /// There is work: end the loop's current [`Wake::wait`].
    pub fn wake(&self) {
        *self.lock() = true;
        self.cond.notify_all();
    }

    /// Ask the loop to stop after what it is doing.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Whether [`Wake::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The stop request as a flag, for code that polls one.
    pub fn stop_flag(&self) -> &AtomicBool {
        &self.stop
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        // The flag is a plain bool: a panic elsewhere cannot leave it torn.
        self.woken.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait up to `timeout` for a wake-up or stop, and consume the wake-up.
    pub fn wait(&self, timeout: Duration) {
        self.wait_until(timeout, true);
    }

    /// Sleep `duration` unless stopped first (wake-ups do not cut a backoff
    /// short, and are kept for the next [`Wake::wait`]).
    pub fn sleep(&self, duration: Duration) {
        self.wait_until(duration, false);
    }

    fn wait_until(&self, timeout: Duration, on_wake: bool) {
        let deadline = Instant::now() + timeout;
        let mut woken = self.lock();
        while !(on_wake && *woken) && !self.stopped() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            woken = self
                .cond
                .wait_timeout(woken, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if on_wake {
            *woken = false;
        }
    }
}

/// The delay before retry number `failures` (1-based): `initial * 2^(n-1)`
/// capped at `max`, then "equal jitter": half fixed, half random, so a fleet
/// of devices spreads its retries out yet none comes back at once.
pub fn backoff(initial_ms: u64, max_ms: u64, failures: u32) -> Duration {
    let exp = initial_ms
        .saturating_mul(1u64 << failures.saturating_sub(1).min(32))
        .min(max_ms)
        .max(1);
    let half = exp / 2;
    Duration::from_millis(half + rand::random_range(0..=exp - half))
}

/// The wait before trying again after an upstream asked for `asked`: at
/// least that (at most `max_ms`), plus up to half of it, so that devices
/// told the same thing at once do not all come back at once.
pub fn retry_delay(asked: Duration, max_ms: u64) -> Duration {
    let ms = u64::try_from(asked.as_millis())
        .unwrap_or(u64::MAX)
        .min(max_ms)
        .max(1);
    Duration::from_millis(ms + rand::random_range(0..=ms / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_up_before_the_wait_is_not_lost() {
        let wake = Wake::new();
        wake.wake();
        let started = Instant::now();
        wake.wait(Duration::from_secs(30));
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn stop_ends_a_sleep_from_another_thread() {
        let wake = Wake::new();
        let other = wake.clone();
        let sleeper = std::thread::spawn(move || other.sleep(Duration::from_secs(600)));
        wake.stop();
        sleeper.join().unwrap();
        assert!(wake.stopped());
    }

    #[test]
    fn backoff_doubles_within_its_jitter_and_stays_under_the_cap() {
        for failures in 1..40 {
            let exp = (100u64 << (failures - 1).min(32)).min(5_000);
            let d = backoff(100, 5_000, failures).as_millis() as u64;
            assert!((exp / 2..=exp).contains(&d), "{failures}: {d} ms");
        }
        let samples: std::collections::BTreeSet<u128> = (0..50)
            .map(|_| backoff(1000, 1000, 5).as_millis())
            .collect();
        assert!(samples.len() > 5, "jitter spreads retries: {samples:?}");
    }

    #[test]
    fn a_requested_wait_is_honoured_spread_and_capped() {
        let samples: Vec<u64> = (0..50)
            .map(|_| retry_delay(Duration::from_millis(1000), 60_000).as_millis() as u64)
            .collect();
        assert!(
            samples.iter().all(|d| (1000..=1500).contains(d)),
            "{samples:?}"
        );
        assert!(
            samples
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 5
        );
        let capped = retry_delay(Duration::from_secs(u64::MAX), 5_000).as_millis();
        assert!((5_000..=7_500).contains(&capped), "{capped}");
    }
}
