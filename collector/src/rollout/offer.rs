//! What a device is offered: for each bundle name, the newest rollout
//! decides. A running one offers its version to the devices of the stages
//! reached; a done one goes on offering it to its devices that have not
//! finished with it (skipped at a deadline, offline meanwhile), so they
//! catch up when they return; a halted or aborted one offers nothing. A
//! device that committed, refused or rolled back the version is not
//! offered it again. A rollout whose policy has a scheduled start or a
//! maintenance window offers nothing outside them.

use super::{Offer, Policy, plan, reached};
use crate::store::sql::{SqlError, Tx, args};

/// The bundle `device` should be offered: `(name, version, sha256, body)`.
/// Asked by every device at every poll: it reads the rollouts' device
/// lists and this device's reports, not every device's progress.
pub(crate) fn offer(tx: &mut dyn Tx, device: &str, now: i64) -> Result<Option<Offer>, SqlError> {
    first_offered(tx, device, now, |tx, name, version, policy| {
        let Some(bundle) = tx.query_opt(
            "SELECT sha256, body FROM bundles WHERE name = ?1 AND version = ?2",
            args![name, version],
        )?
        else {
            return Ok(None);
        };
        Ok(Some(Offer {
            name: name.to_owned(),
            version: version.max(0) as u64,
            sha256: bundle.text(0)?,
            body: bundle.blob(1)?,
            probation: policy.probation(),
        }))
    })
}

/// A part of the bundle offered to `device`: up to `len` bytes from
/// `offset`, read by the database (a device fetching a bundle in chunks
/// does not make the collector read the whole bundle for each).
pub(crate) fn offer_chunk(
    tx: &mut dyn Tx,
    device: &str,
    offset: u64,
    len: usize,
    now: i64,
) -> Result<Option<Chunk>, SqlError> {
    // SQL counts from 1; both engines take an int4 here.
    let (from, len) = (
        i64::try_from(offset.saturating_add(1))
            .unwrap_or(i64::MAX)
            .min(i32::MAX as i64),
        (len as i64).min(i32::MAX as i64),
    );
    first_offered(tx, device, now, |tx, name, version, policy| {
        let Some(bundle) = tx.query_opt(
            "SELECT sha256, length(body), substr(body, ?3, ?4) FROM bundles WHERE name = ?1 AND version = ?2",
            args![name, version, from, len],
        )?
        else {
            return Ok(None);
        };
        Ok(Some(Chunk {
            name: name.to_owned(),
            version: version.max(0) as u64,
            sha256: bundle.text(0)?,
            total: bundle.int(1)?.max(0) as u64,
            bytes: bundle.blob(2)?,
            probation: policy.probation(),
        }))
    })
}

/// Whether `if_none_match` (a device's `If-None-Match`: `"hex", "hex"`)
/// names the bundle of SHA-256 `sha256`: the device handled it already.
pub(crate) fn seen_by(if_none_match: &str, sha256: &str) -> bool {
    if_none_match.split(',').any(|tag| {
        tag.trim()
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            == Some(sha256)
    })
}

/// A part of an offered bundle ([`offer_chunk`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The bundle's name.
    pub name: String,
    /// Its version.
    pub version: u64,
    /// The SHA-256 (hex) of the whole bundle.
    pub sha256: String,
    /// The whole bundle's size.
    pub total: u64,
    /// The bytes asked for (fewer at the end, none past it).
    pub bytes: Vec<u8>,
    /// The least probation its rollout asks of the device.
    pub probation: Option<sluice_protocol::operator::ProbationMinimum>,
}

/// `read` of the first rollout (oldest name first) that offers `device`
/// its version at `now` and finds its bundle.
fn first_offered<T>(
    tx: &mut dyn Tx,
    device: &str,
    now: i64,
    mut read: impl FnMut(&mut dyn Tx, &str, i64, &Policy) -> Result<Option<T>, SqlError>,
) -> Result<Option<T>, SqlError> {
    // The newest rollout of each name (ids only grow).
    let newest = tx.query(
        "SELECT r.name, r.version, r.devices, r.stages, r.stage, r.state, r.policy FROM rollouts r
         WHERE r.state IN ('running', 'done')
           AND r.id = (SELECT MAX(n.id) FROM rollouts n WHERE n.name = r.name)
         ORDER BY r.id",
        &[],
    )?;
    for r in newest {
        let (name, version) = (r.text(0)?, r.int(1)?);
        let (devices, stages) = plan(&r.text(2)?, &r.text(3)?);
        let n = if r.text(5)? == "running" {
            reached(devices.len(), &stages, r.int(4)?.max(0) as usize)
        } else {
            devices.len()
        };
        if !devices[..n].iter().any(|d| d == device) {
            continue;
        }
        let policy: Policy = serde_json::from_str(&r.text(6)?).unwrap_or_default();
        if !policy.offers_at(now) {
            continue;
        }
        let finished = tx.query_opt(
            "SELECT 1 FROM installs WHERE device = ?1 AND name = ?2 AND version = ?3
             AND outcome IN ('committed', 'refused', 'rolled-back')",
            args![device, &name, version],
        )?;
        if finished.is_some() {
            continue;
        }
        if let Some(found) = read(tx, &name, version, &policy)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}
