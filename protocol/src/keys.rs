//! Signing keys: ed25519 (`ed25519-dalek`), as one-line text files. The
//! same keys sign bundles (`sluice-bundle`) and the collector's
//! acknowledgements ([`BatchAck::sign`](crate::BatchAck::sign)).
//!
//! * a public key: `ed25519:<base64 of 32 bytes>`, what devices pin;
//! * a secret key: `ed25519-secret:<base64 of the 32-byte seed>`, kept by
//!   the operator (written readable by its owner only);
//! * a key id: the first 16 hex digits of the public key's SHA-256, what a
//!   signature names so that a device knows which pinned key to try.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const PUBLIC_PREFIX: &str = "ed25519:";
const SECRET_PREFIX: &str = "ed25519-secret:";

/// A key text that is not a key.
#[derive(Debug, thiserror::Error)]
#[error(
    "not an ed25519 {kind} key (`{PUBLIC_PREFIX}<base64>` or `{SECRET_PREFIX}<base64>`): {reason}"
)]
pub struct KeyError {
    kind: &'static str,
    reason: String,
}

fn decode32(text: &str, prefix: &str, kind: &'static str) -> Result<[u8; 32], KeyError> {
    let error = |reason: String| KeyError { kind, reason };
    let body = text
        .trim()
        .strip_prefix(prefix)
        .ok_or_else(|| error(format!("it does not start with `{prefix}`")))?;
    let bytes = BASE64
        .decode(body)
        .map_err(|e| error(format!("bad base64: {e}")))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| error(format!("{} bytes, not 32", b.len())))
}

/// A public key, as devices pin it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl PublicKey {
    /// Parse `ed25519:<base64>`.
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let bytes = decode32(text, PUBLIC_PREFIX, "public")?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| KeyError {
                kind: "public",
                reason: e.to_string(),
            })
    }

    /// Its text form.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX}{}", BASE64.encode(self.0.as_bytes()))
    }

    /// Its id: 16 hex digits of its SHA-256.
    pub fn id(&self) -> String {
        hex::encode(&Sha256::digest(self.0.as_bytes())[..8])
    }

    /// Whether `signature` is this key's over `message`.
    pub fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        let Ok(bytes) = BASE64.decode(&signature.signature) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else {
            return false;
        };
        // Strict: no malleable or small-order signatures.
        self.0
            .verify_strict(message, &ed25519_dalek::Signature::from_bytes(&bytes))
            .is_ok()
    }
}

/// A secret key, as the operator keeps it.
pub struct SecretKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.public().id())
    }
}

impl SecretKey {
    /// A new random key (from the OS's generator).
    pub fn generate() -> SecretKey {
        SecretKey(ed25519_dalek::SigningKey::from_bytes(&rand::random::<
            [u8; 32],
        >()))
    }

    /// Parse `ed25519-secret:<base64>`.
    pub fn parse(text: &str) -> Result<SecretKey, KeyError> {
        let seed = decode32(text, SECRET_PREFIX, "secret")?;
        Ok(SecretKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Its text form.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(self.0.to_bytes()))
    }

    /// Write it to a new file at `path`, readable by its owner only, and
    /// flushed to disk (with its directory) before returning; an existing
    /// file is never overwritten.
    pub fn write_new(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut options = std::fs::File::options();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        writeln!(file, "{}", self.to_text())?;
        file.sync_all()?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        std::fs::File::open(dir.unwrap_or(std::path::Path::new(".")))?.sync_all()
    }

    /// Read a key file written by [`SecretKey::write_new`] (the first
    /// line; the file's error or the key's, naming the file).
    pub fn read(path: &std::path::Path) -> Result<SecretKey, String> {
        // A key file is one line; more is not a key file.
        const MAX_BYTES: u64 = 4096;
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_BYTES), &mut text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        SecretKey::parse(text.lines().next().unwrap_or_default())
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Its signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature {
            key: self.public().id(),
            signature: BASE64.encode(self.0.sign(message).to_bytes()),
        }
    }
}

/// One signature: of a bundle's manifest (`signatures.json` holds a
/// list), or of an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The signing key's id ([`PublicKey::id`]).
    pub key: String,
    /// The 64-byte ed25519 signature, base64.
    pub signature: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_as_text_and_sign() {
        let secret = SecretKey::generate();
        let again = SecretKey::parse(&secret.to_text()).unwrap();
        let public = PublicKey::parse(&secret.public().to_text()).unwrap();
        assert_eq!(again.public(), public);
        let signature = again.sign(b"manifest");
        assert_eq!(signature.key, public.id());
        assert!(public.verifies(b"manifest", &signature));
        assert!(!public.verifies(b"manifest!", &signature));
        assert!(
            !SecretKey::generate()
                .public()
                .verifies(b"manifest", &signature)
        );
        for bad in [
            "",
            "ed25519:",
            "ed25519:AAAA",
            "rsa:AAAA",
            &secret.to_text(),
        ] {
            assert!(PublicKey::parse(bad).is_err(), "{bad}");
        }
    }
}
