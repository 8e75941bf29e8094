//! The control plane's part of the store: bundles, device groups,
//! rollouts and the audit trail ([`crate::api`] serves them).

use super::sql::{SqlError, args};
use super::{Store, StoreError, now_ms};
use crate::rollout::{self, Plan, Rollout, RolloutError};
use sha2::{Digest, Sha256};
use sluice_protocol::keys::PublicKey;
use sluice_protocol::operator::{AuditEntry, AuditPage, BundleInfo, Group};
use std::path::Path;

/// The audit trail keeps the newest this many entries.
pub const MAX_AUDIT_ROWS: i64 = 1_000_000;

/// The longest `detail` an audit entry keeps, bytes of JSON; a longer one
/// is kept cut, as a string.
const MAX_AUDIT_DETAIL: usize = 4096;

/// Why a bundle was not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Over [`rollout::MAX_BUNDLE_BYTES`].
    #[error(
        "the bundle is {bytes} bytes, over the {} a rollout takes",
        rollout::MAX_BUNDLE_BYTES
    )]
    TooLarge {
        /// Its size.
        bytes: u64,
    },
    /// Not a bundle, or a damaged one (the reason, naming "the upload").
    #[error("{0}")]
    Archive(String),
    /// No device pinning the fleet's keys would take it (why).
    #[error("{0}")]
    Refused(String),
    /// The same name and version was stored with other content.
    #[error(
        "bundle `{name}` version {version} is already stored with SHA-256 {stored}; a new build needs a new version"
    )]
    VersionTaken {
        /// Its name.
        name: String,
        /// Its version.
        version: u64,
        /// The stored bundle's SHA-256.
        stored: String,
    },
    /// A temporary file could not be written.
    #[error("cannot unpack the bundle to check it: {0}")]
    Io(std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a rollout command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutActionError {
    /// The command was refused (stages, devices, state).
    #[error(transparent)]
    Refused(#[from] RolloutError),
    /// The bundle file could not be read or stored ([`Store::start_rollout`]).
    #[error("bundle {}: {reason}", path.display())]
    Bundle {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A state-changing call to record ([`Store::audit`]).
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// The API token's name.
    pub actor: String,
    /// Its role.
    pub role: String,
    /// The client's address.
    pub remote: Option<String>,
    /// What was asked (`rollout.create`, ...).
    pub action: String,
    /// What of (`rollout 7`, ...).
    pub target: String,
    /// The particulars.
    pub detail: serde_json::Value,
    /// `ok`, or why it was refused.
    pub outcome: String,
}

impl Store {
    /// Keep the bundle file `body` for rollouts: refused unless it unpacks
    /// within the bundle limits and, when `trusted` is given, a key of it
    /// signed it, every file is as listed and it has not expired (what every
    /// device pinning those keys checks first). Storing the same file again
    /// is harmless; another file under a stored name and version is
    /// refused. `Ok((info, true))` when it was new.
    pub fn put_bundle(
        &self,
        body: &[u8],
        trusted: Option<&[PublicKey]>,
    ) -> Result<(BundleInfo, bool), BundleError> {
        let bytes = body.len() as u64;
        if bytes > rollout::MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge { bytes });
        }
        let work = tempfile::Builder::new()
            .prefix(".sluice-bundle-")
            .tempdir_in(&self.work_dir)
            .map_err(BundleError::Io)?;
        let file = work.path().join("upload.bundle");
        std::fs::write(&file, body).map_err(BundleError::Io)?;
        // Messages name the file they are about: here, the upload, not a
        // temporary path of the collector's.
        let named = |text: String| text.replace(&file.display().to_string(), "(the upload)");
        let unpacked = sluice_bundle::archive::unpack(
            &file,
            &work.path().join("unpacked"),
            &Default::default(),
        )
        .map_err(|e| BundleError::Archive(named(e.to_string())))?;
        let manifest: sluice_bundle::Manifest = match trusted {
            Some(keys) => {
                sluice_bundle::verify_signed(&unpacked, keys, now_ms())
                    .map_err(|e| BundleError::Refused(named(e.to_string())))?
                    .manifest
            }
            None => serde_json::from_slice(&unpacked.manifest).map_err(|e| {
                BundleError::Refused(format!("bundle (the upload): bad manifest: {e}"))
            })?,
        };
        let info = BundleInfo {
            name: manifest.name.clone(),
            version: manifest.version,
            sha256: hex::encode(Sha256::digest(body)),
            bytes,
            created_at_ms: manifest.created_at_ms,
            expires_at_ms: manifest.expires_at_ms,
            reverts_to: manifest.reverts_to,
            signed_by: unpacked.signatures.iter().map(|s| s.key.clone()).collect(),
            stored_ms: now_ms(),
        };
        let facts = serde_json::to_string(&info).expect("serializes");
        self.transaction(|tx| {
            let stored = tx.query_opt(
                "SELECT sha256 FROM bundles WHERE name = ?1 AND version = ?2",
                args![&info.name, info.version as i64],
            )?;
            if let Some(stored) = stored {
                let stored = stored.text(0)?;
                return Ok(if stored == info.sha256 {
                    Ok(false)
                } else {
                    Err(BundleError::VersionTaken {
                        name: info.name.clone(),
                        version: info.version,
                        stored,
                    })
                });
            }
            tx.exec(
                "INSERT INTO bundles(name, version, sha256, body, stored_ms, manifest) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                args![&info.name, info.version as i64, &info.sha256, body, info.stored_ms, &facts],
            )?;
            Ok(Ok(true))
        })
        .map(|new| (info.clone(), new))
    }

    /// Every stored bundle, by name then version.
    pub fn bundles(&self) -> Result<Vec<BundleInfo>, StoreError> {
        self.read(|tx| {
            tx.query(
                "SELECT name, version, sha256, length(body), stored_ms, manifest FROM bundles ORDER BY name, version",
                &[],
            )?
            .iter()
            .map(bundle_info)
            .collect()
        })
    }

    /// Bundle `name` `version`, with its file.
    pub fn bundle(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<(BundleInfo, Vec<u8>)>, StoreError> {
        self.read(|tx| {
            tx.query_opt(
                "SELECT name, version, sha256, length(body), stored_ms, manifest, body FROM bundles WHERE name = ?1 AND version = ?2",
                args![name, version as i64],
            )?
            .map(|r| Ok((bundle_info(&r)?, r.blob(6)?)))
            .transpose()
        })
    }

    /// Make group `name` exactly `devices`.
    pub fn set_group(&self, name: &str, devices: &[String]) -> Result<(), StoreError> {
        let now = now_ms();
        self.transaction(|tx| {
            tx.exec("DELETE FROM device_groups WHERE grp = ?1", args![name])?;
            for d in devices {
                tx.exec(
                    "INSERT INTO device_groups(grp, device, added_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    args![name, d, now],
                )?;
            }
            Ok(Ok(()))
        })
    }

    /// Every group with its devices, by name; only `name` when given.
    pub fn groups(&self, name: Option<&str>) -> Result<Vec<Group>, StoreError> {
        self.read(|tx| {
            let mut groups: Vec<Group> = Vec::new();
            for r in tx.query(
                "SELECT grp, device FROM device_groups WHERE grp = ?1 OR ?2 ORDER BY grp, device",
                args![name.unwrap_or_default(), name.is_none()],
            )? {
                let (grp, device) = (r.text(0)?, r.text(1)?);
                match groups.last_mut() {
                    Some(g) if g.name == grp => g.devices.push(device),
                    _ => groups.push(Group {
                        name: grp,
                        devices: vec![device],
                    }),
                }
            }
            Ok(groups)
        })
    }

    /// Start a rollout of an uploaded bundle.
    pub fn create_rollout(&self, plan: &Plan) -> Result<Rollout, RolloutActionError> {
        let id = self.transaction(|tx| {
            tx.lock_rollouts()?;
            Ok(rollout::start(tx, plan, now_ms())?.map_err(RolloutActionError::from))
        })?;
        Ok(self.rollout(id)?.expect("just started"))
    }

    /// Start rolling out the bundle file at `bundle` to `devices`, in
    /// `stages`, with the default policy, without checking its signature
    /// (the operator API checks it against the fleet's keys): for embedding
    /// and tests.
    pub fn start_rollout(
        &self,
        bundle: &Path,
        devices: Vec<String>,
        stages: &[u32],
    ) -> Result<Rollout, RolloutActionError> {
        let failed = |reason: String| RolloutActionError::Bundle {
            path: bundle.to_owned(),
            reason,
        };
        let body = std::fs::read(bundle).map_err(|e| failed(e.to_string()))?;
        let (info, _) = self
            .put_bundle(&body, None)
            .map_err(|e| failed(e.to_string()))?;
        self.create_rollout(&Plan {
            name: info.name,
            version: info.version,
            devices,
            stages: stages.to_vec(),
            policy: Default::default(),
        })
    }

    /// Every rollout, newest first, with each device's progress.
    pub fn rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        self.read(|tx| rollout::list(tx, None, None))
    }

    /// Rollout `id`.
    pub fn rollout(&self, id: i64) -> Result<Option<Rollout>, StoreError> {
        self.read(|tx| rollout::list(tx, None, Some(id)))
            .map(|mut r| r.pop())
    }

    /// `pause`, `resume` or `abort` rollout `id`.
    pub fn rollout_action(&self, id: i64, action: &'static str) -> Result<(), RolloutActionError> {
        self.transaction(|tx| {
            tx.lock_rollouts()?;
            Ok(rollout::set(tx, id, action, now_ms())?.map_err(RolloutActionError::from))
        })
    }

    /// Re-evaluate the running rollouts by the clock (stage deadlines).
    /// Called every second: a write transaction, and every device's
    /// progress, only when a deadline has passed.
    pub fn tick_rollouts(&self) -> Result<(), StoreError> {
        let now = now_ms();
        if !self.read(|tx| rollout::deadline_due(tx, now))? {
            return Ok(());
        }
        self.transaction(|tx| {
            tx.lock_rollouts()?;
            rollout::advance(tx, now)?;
            Ok(Ok(()))
        })
    }

    /// The bundle `device` should be offered now.
    pub fn bundle_for(&self, device: &str) -> Result<Option<rollout::Offer>, StoreError> {
        self.read(|tx| rollout::offer(tx, device, now_ms()))
    }

    /// Up to `len` bytes from `offset` of the bundle [`Store::bundle_for`]
    /// would offer `device`, with what names it.
    pub fn bundle_chunk(
        &self,
        device: &str,
        offset: u64,
        len: usize,
    ) -> Result<Option<rollout::Chunk>, StoreError> {
        self.read(|tx| rollout::offer_chunk(tx, device, offset, len, now_ms()))
    }

    /// Add `record` to the audit trail (the oldest entries beyond
    /// [`MAX_AUDIT_ROWS`] go); its id.
    pub fn audit(&self, record: &AuditRecord) -> Result<i64, StoreError> {
        let mut detail = record.detail.to_string();
        if detail.len() > MAX_AUDIT_DETAIL {
            let mut cut = MAX_AUDIT_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail = serde_json::Value::String(format!("{}... (cut)", &detail[..cut])).to_string();
        }
        let now = now_ms();
        self.transaction(|tx| {
            let id = tx
                .query_opt(
                    "INSERT INTO audit(at_ms, actor, role, remote, action, target, detail, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
                    args![
                        now,
                        &record.actor,
                        &record.role,
                        record.remote.as_deref(),
                        &record.action,
                        &record.target,
                        &detail,
                        &record.outcome
                    ],
                )?
                .ok_or_else(|| SqlError::Decode("INSERT ... RETURNING gave no row".into()))?
                .int(0)?;
            if id % 1000 == 0 {
                tx.exec(
                    "DELETE FROM audit WHERE id <= ?1",
                    args![id - MAX_AUDIT_ROWS],
                )?;
            }
            Ok(Ok(id))
        })
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit_latest(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let newest = self.read(|tx| {
            tx.query_opt("SELECT MAX(id) FROM audit", &[])?
                .map(|r| r.opt_int(0))
                .transpose()
                .map(Option::flatten)
        })?;
        let after = newest.unwrap_or(0).saturating_sub(limit as i64);
        let mut entries = self.audit_page(after, limit)?.entries;
        entries.reverse();
        Ok(entries)
    }

    /// Audit entries after `after` (an id), oldest first, at most `limit`.
    pub fn audit_page(&self, after: i64, limit: u32) -> Result<AuditPage, StoreError> {
        self.read(|tx| {
            let rows = tx.query(
                "SELECT id, at_ms, actor, role, remote, action, target, detail, outcome FROM audit
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
                args![after, limit as i64],
            )?;
            let entries = rows
                .iter()
                .map(|r| {
                    Ok(AuditEntry {
                        id: r.int(0)?,
                        at_ms: r.int(1)?,
                        actor: r.text(2)?,
                        role: r.text(3)?,
                        remote: r.opt_text(4)?,
                        action: r.text(5)?,
                        target: r.text(6)?,
                        detail: serde_json::from_str(&r.text(7)?).unwrap_or_default(),
                        outcome: r.text(8)?,
                    })
                })
                .collect::<Result<Vec<_>, SqlError>>()?;
            let next = (entries.len() == limit as usize)
                .then(|| entries.last().map(|e| e.id))
                .flatten();
            Ok(AuditPage { entries, next })
        })
    }
}

/// A `bundles` row (name, version, sha256, length, stored_ms, manifest
/// facts) as [`BundleInfo`].
fn bundle_info(r: &super::sql::SqlRow) -> Result<BundleInfo, SqlError> {
    let facts: serde_json::Value = r
        .opt_text(5)?
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    Ok(BundleInfo {
        name: r.text(0)?,
        version: r.int(1)?.max(0) as u64,
        sha256: r.text(2)?,
        bytes: r.int(3)?.max(0) as u64,
        created_at_ms: facts["created_at_ms"].as_i64().unwrap_or_default(),
        expires_at_ms: facts["expires_at_ms"].as_i64().unwrap_or_default(),
        reverts_to: facts["reverts_to"].as_u64(),
        signed_by: serde_json::from_value(facts["signed_by"].clone()).unwrap_or_default(),
        stored_ms: r.int(4)?,
    })
}
