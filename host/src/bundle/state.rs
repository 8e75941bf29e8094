//! The device's install state: which version of which pipeline runs, which
//! is the last good one, which bundle files were already handled. One small
//! JSON file, replaced atomically (write, fsync, rename, fsync the folder),
//! so a crash leaves the old state or the new one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bundle files remembered as handled (by SHA-256), newest last; older ones
/// are forgotten (offered again, they are refused as not newer).
pub const MAX_SEEN: usize = 256;

/// The state file's name under the bundles folder.
const FILE: &str = "state.json";

/// Everything installed on the device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Per pipeline.
    pub pipelines: BTreeMap<String, PipelineState>,
    /// SHA-256 of bundle files already handled, newest last.
    pub seen: Vec<String>,
}

/// One pipeline's installs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PipelineState {
    /// What runs (none: the device's own configuration).
    pub current: Option<Installed>,
    /// What runs again on a rollback (none: the device's own configuration).
    pub last_good: Option<Installed>,
    /// The highest version ever accepted: a bundle must be above it.
    pub highest: u64,
}

/// An installed version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// Its version.
    pub version: u64,
    /// Its unpacked bundle, relative to the bundles folder.
    pub dir: String,
    /// Whether it passed probation.
    pub committed: bool,
    /// When it was swapped in, ms since the Unix epoch.
    pub installed_at_ms: i64,
    /// SHA-256 of its bundle file.
    pub bundle_sha256: String,
}

impl State {
    /// The state in `dir`, empty if there is none yet.
    pub fn load(dir: &Path) -> std::io::Result<State> {
        match std::fs::read(dir.join(FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", dir.join(FILE).display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e),
        }
    }

    /// Replace the state in `dir` with this one, atomically and durably.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        sluice_durable::write_atomically(
            &dir.join(FILE),
            &serde_json::to_vec_pretty(self).expect("a state serializes"),
        )
    }

    /// Remember bundle file `sha256` as handled.
    pub fn saw(&mut self, sha256: &str) {
        self.seen.retain(|s| s != sha256);
        self.seen.push(sha256.to_owned());
        if self.seen.len() > MAX_SEEN {
            self.seen.drain(..self.seen.len() - MAX_SEEN);
        }
    }

    /// The folders every pipeline's current and last good versions use.
    pub fn referenced(&self) -> Vec<PathBuf> {
        self.pipelines
            .values()
            .flat_map(|p| [&p.current, &p.last_good])
            .flatten()
            .map(|i| PathBuf::from(&i.dir))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_and_remembers_a_bounded_list() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), State::default());
        let mut state = State::default();
        for i in 0..MAX_SEEN + 10 {
            state.saw(&format!("{i:064x}"));
        }
        state.saw(&format!("{:064x}", 20));
        assert_eq!(state.seen.len(), MAX_SEEN);
        assert_eq!(state.seen.last().unwrap(), &format!("{:064x}", 20));
        state.pipelines.insert(
            "p".into(),
            PipelineState {
                current: Some(Installed {
                    version: 3,
                    dir: "v/p-3".into(),
                    committed: false,
                    installed_at_ms: 1,
                    bundle_sha256: "ab".into(),
                }),
                last_good: None,
                highest: 3,
            },
        );
        state.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), state);
        assert!(!dir.path().join("state.json.tmp").exists());
    }
}
