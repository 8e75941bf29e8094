//! Where bundles arrive from: a drop folder (a file taken once unchanged
//! for `settle_ms`, hashed once) and the collector (the bundle a staged
//! rollout offers this device). Each offers what it finds to the installer.

use super::install::{Candidate, Installer};
use sluice_bundle::archive::Limits;
use sluice_protocol::InstallOutcome;
use std::path::PathBuf;
use std::time::{Duration, Instant};

impl Installer {
    pub(super) fn ask_collector(&mut self) {
        let Some(collector) = &self.collector else {
            return;
        };
        let seen: Vec<String> = self
            .state
            .seen
            .iter()
            .rev()
            .take(32)
            .map(|s| format!("\"{s}\""))
            .collect();
        let limit = Limits::default().max_bytes;
        let path = self
            .dir
            .join(format!("incoming-{:016x}.bundle", rand::random::<u64>()));
        match collector.fetch(&seen, &path, limit) {
            Ok(None) => {}
            // Refusals are reported by `offer`.
            Ok(Some(offered)) => drop(self.offer_with(&path, offered.probation)),
            Err(e) => tracing::warn!("asking {} for a bundle: {e}", collector.endpoint()),
        }
        let _ = std::fs::remove_file(&path);
    }

    pub(super) fn scan(&mut self) {
        let Some(folder) = self.settings.folder.clone() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&folder) else {
            return;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "bundle") && p.is_file())
            .collect();
        files.sort();
        self.candidates.retain(|path, _| files.contains(path));
        let settle = Duration::from_millis(self.settings.settle_ms);
        for path in files {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let (len, modified) = (meta.len(), meta.modified().ok());
            let fresh = || Candidate {
                len,
                modified,
                since: Instant::now(),
                sha256: None,
                handled: false,
            };
            let candidate = self.candidates.entry(path.clone()).or_insert_with(fresh);
            if candidate.len != len || candidate.modified != modified {
                *candidate = fresh();
                continue;
            }
            if candidate.since.elapsed() < settle {
                continue;
            }
            if candidate.sha256.is_none() {
                candidate.sha256 = sluice_bundle::sha256_of(&path).ok().map(|(_, sha)| sha);
            }
            let Some(sha256) = candidate.sha256.clone() else {
                continue;
            };
            if self.state.seen.contains(&sha256) {
                self.ignored(&path, &sha256);
                continue;
            }
            candidate.handled = true;
            // Refusals are reported by `offer`; one install at a time.
            if self.offer(&path).is_ok() {
                break;
            }
        }
    }

    /// A file in the folder that was handled before: said once (an
    /// `ignored` install record), unless it is what runs now (a stick left
    /// in after an install is no news).
    fn ignored(&mut self, path: &std::path::Path, sha256: &str) {
        let running = self.state.pipelines.values().any(|p| {
            p.current
                .as_ref()
                .is_some_and(|c| c.bundle_sha256 == sha256)
        });
        let Some(candidate) = self.candidates.get_mut(path) else {
            return;
        };
        if running || candidate.handled {
            return;
        }
        candidate.handled = true;
        tracing::warn!(bundle = %path.display(), "bundle ignored: handled before");
        self.report(
            "-",
            0,
            sha256,
            InstallOutcome::Ignored,
            Some(format!(
                "bundle {} (SHA-256 {sha256}) was handled before (installed, refused or rolled back): a replay or an old copy; nothing done",
                path.display()
            )),
            None,
        );
    }
}
