//! Why a bundle was not installed.

use super::PIPELINE_TOML;
use crate::error::ConfigError;
use sluice_bundle::Refusal;
use sluice_bundle::archive::ArchiveError;
use std::path::{Path, PathBuf};

/// Why a bundle was not installed. Nothing on the device changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// The bundle file is not a bundle, or a damaged or hostile one.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Signature, files, expiry, version or requirements.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// It names a pipeline this device does not have.
    #[error("bundle `{name}`: this device has no pipeline `{name}` (configured: {configured:?})")]
    NoSuchPipeline {
        /// The bundle's name.
        name: String,
        /// The device's pipelines.
        configured: Vec<String>,
    },
    /// Its configuration fragment is unusable.
    #[error("bundle `{name}` version {version}: its {PIPELINE_TOML}: {problem}")]
    Fragment {
        /// The bundle's name.
        name: String,
        /// Its version.
        version: u64,
        /// What is wrong.
        problem: String,
    },
    /// Its pipeline does not start here.
    #[error("bundle `{name}` version {version}: its pipeline does not start: {problem}")]
    Start {
        /// The bundle's name.
        name: String,
        /// Its version.
        version: u64,
        /// Why.
        problem: String,
    },
    /// Its validation set does not give the expected results here.
    #[error("bundle `{name}` version {version} failed validation: {problem}")]
    Validation {
        /// The bundle's name.
        name: String,
        /// Its version.
        version: u64,
        /// The first difference.
        problem: String,
    },
    /// The device's own files (the install state, the bundles folder).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bundle settings are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}
