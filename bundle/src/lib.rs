//! Signed, versioned bundles: how an operator ships a pipeline (its
//! plugins, models, configuration, drift profile and validation set) to
//! devices it cannot touch, and how a device decides to trust one.
//!
//! A bundle is one file, a zstd-compressed tar archive of
//! * `manifest.json`: name, a version that only goes up, an expiry, the
//!   Sluice version and WIT package it needs, and the SHA-256 and size of
//!   every file ([`Manifest`]);
//! * `signatures.json`: ed25519 signatures of the exact bytes of
//!   `manifest.json`, each naming its key ([`keys`]);
//! * `files/...`: the files the manifest lists, and nothing else.
//!
//! [`verify`] is all a device needs, offline: at least one signature by a
//! key it pins, every file exactly as listed, not expired (a freeze attack
//! replays an old bundle forever), a version above the installed one (a
//! rollback attack replays an old, vulnerable one; a deliberate downgrade is
//! a new, higher version carrying old content), and a Sluice and WIT it
//! meets. Anything else is a [`Refusal`] naming the cause, and nothing is
//! trusted before [`verify`] says so: [`archive::unpack`] only writes
//! regular files under a fresh directory, within [`archive::Limits`].
//!
//! Why not TUF (`tough`): TUF secures a repository many clients pull from,
//! with roles (root, targets, snapshot, timestamp) to keep its index fresh.
//! A Sluice bundle travels alone (USB stick, scp, the collector), so its
//! freshness is carried by its own version and expiry, checked against
//! what the device has installed; keys rotate by pinning several.
#![deny(missing_docs)]

pub mod archive;
/// Signing keys, shared with the collector's signed acknowledgements (they
/// live in the protocol: devices pin them in their configuration).
pub use sluice_protocol::keys;
mod manifest;
mod sign;
mod verify;

pub use manifest::{FORMAT, FileEntry, Manifest, Validation};
pub use sign::{SignError, revert, sign};
pub use verify::{Policy, Refusal, Verified, sha256_of, stamp, verify, verify_signed};
