//! Windows over live items: counted as they pass, closed by size or age,
//! scored, kept until the worker stores them, and their wire records.

use super::DriftConfig;
use super::profile::{Profile, ProfileError};
use super::score::{Scorer, add};
use sluice_protocol::DriftScore;
use sluice_types::Tensor;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// A window that closed: its span, size and scores.
#[derive(Debug, Clone)]
pub struct ClosedWindow {
    /// When its first item was seen, ms since the Unix epoch.
    pub started_at_ms: i64,
    /// When its last item was seen.
    pub ended_at_ms: i64,
    /// Items in it.
    pub items: u64,
    /// One per scored feature.
    pub scores: Vec<DriftScore>,
    /// Whether any score crossed its threshold.
    pub alarm: bool,
}

struct Window {
    started: Instant,
    started_at_ms: i64,
    ended_at_ms: i64,
    items: u64,
    counts: Vec<Vec<u64>>,
}

struct State {
    window: Option<Window>,
    closed: Vec<ClosedWindow>,
}

/// Drift detection for one pipeline: observes its items, closes and scores
/// windows. Closed windows wait in it (at most a few: the worker takes them
/// after every group) until [`Drift::take_closed`].
pub struct Drift {
    profile: Profile,
    profile_sha256: String,
    profile_path: PathBuf,
    config: DriftConfig,
    scorer: Scorer,
    state: Mutex<State>,
}

impl Drift {
    /// Drift detection against the profile at `path`, which must be bound to
    /// the running model's `model_sha256`.
    pub fn load(
        path: &Path,
        model: &str,
        pipeline: &str,
        model_sha256: &str,
        config: &DriftConfig,
    ) -> Result<Drift, ProfileError> {
        let (profile, profile_sha256) = Profile::read(path)?;
        if !profile.model_sha256.eq_ignore_ascii_case(model_sha256) {
            return Err(ProfileError::OtherModel {
                path: path.to_owned(),
                model: model.to_owned(),
                pipeline: pipeline.to_owned(),
                profiled: profile.model_sha256,
                running: model_sha256.to_owned(),
            });
        }
        Ok(Drift {
            scorer: Scorer::new(&profile, config.false_alarm_rate),
            profile,
            profile_sha256,
            profile_path: path.to_owned(),
            config: config.clone(),
            state: Mutex::new(State {
                window: None,
                closed: Vec::new(),
            }),
        })
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// SHA-256 (hex) of the profile file.
    pub fn profile_sha256(&self) -> &str {
        &self.profile_sha256
    }

    /// The profile file.
    pub fn profile_path(&self) -> &Path {
        &self.profile_path
    }

    /// The configured false-alarm rate per window.
    pub fn false_alarm_rate(&self) -> f64 {
        self.config.false_alarm_rate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self, state: &mut State) {
        if let Some(window) = state.window.take() {
            let scores = self.scorer.score(&self.profile, &window.counts);
            state.closed.push(ClosedWindow {
                started_at_ms: window.started_at_ms,
                ended_at_ms: window.ended_at_ms,
                items: window.items,
                alarm: scores.iter().any(|s| s.drifted),
                scores,
            });
        }
    }

    /// Close the window if it is older than `window_secs`.
    pub fn tick(&self) {
        let mut state = self.lock();
        let due = state
            .window
            .as_ref()
            .is_some_and(|w| w.started.elapsed().as_secs() >= self.config.window_secs);
        if due {
            self.close(&mut state);
        }
    }

    /// Windows closed since the last call, oldest first.
    pub fn take_closed(&self) -> Vec<ClosedWindow> {
        std::mem::take(&mut self.lock().closed)
    }
}

impl Drift {
    /// Count one batch of items (each item's model inputs and outputs),
    /// closing the window when it is full or old.
    pub fn observe(&self, inputs: &[Vec<Tensor>], outputs: &[&[Tensor]]) {
        // The clock is read once per batch: a batch takes milliseconds, a
        // window's time limit is at least a second.
        let now_ms = sluice_types::now_ms();
        let mut state = self.lock();
        if state
            .window
            .as_ref()
            .is_some_and(|w| w.started.elapsed().as_secs() >= self.config.window_secs)
        {
            self.close(&mut state);
        }
        for (inputs, outputs) in inputs.iter().zip(outputs) {
            let window = state.window.get_or_insert_with(|| Window {
                started: Instant::now(),
                started_at_ms: now_ms,
                ended_at_ms: now_ms,
                items: 0,
                counts: self
                    .profile
                    .features
                    .iter()
                    .map(|f| vec![0; f.counts.len()])
                    .collect(),
            });
            add(&self.profile, &mut window.counts, inputs, outputs);
            window.items += 1;
            window.ended_at_ms = now_ms;
            if window.items >= self.config.window_items {
                self.close(&mut state);
            }
        }
    }
}

/// Closed windows a worker could not store yet (a full disk) are kept for
/// the next try, at most this many; older ones are dropped, with a warning.
pub const MAX_UNSTORED_WINDOWS: usize = 64;

impl Drift {
    /// The wire record of `window`, under sequence number `seq` of `outbox`
    /// (`instance`), for `device`'s `pipeline`.
    pub fn record(
        &self,
        window: &ClosedWindow,
        device: &str,
        pipeline: &str,
        outbox: Option<&str>,
        seq: i64,
    ) -> sluice_protocol::DriftWindow {
        sluice_protocol::DriftWindow {
            kind: sluice_protocol::RecordKind::DriftWindow,
            id: sluice_protocol::result_id(device, pipeline, outbox, seq),
            device: device.to_owned(),
            pipeline: pipeline.to_owned(),
            outbox: outbox.map(str::to_owned),
            seq,
            model: self.profile.model.clone(),
            model_sha256: self.profile.model_sha256.clone(),
            profile_sha256: self.profile_sha256.clone(),
            started_at_ms: window.started_at_ms,
            ended_at_ms: window.ended_at_ms,
            items: window.items,
            false_alarm_rate: self.config.false_alarm_rate,
            scores: window.scores.clone(),
            alarm: window.alarm,
            sluice_version: sluice_types::VERSION.to_owned(),
        }
    }
}
