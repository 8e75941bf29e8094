//! Sealed files: bytes that carry their own length and SHA-256, for what is
//! read back from disk and trusted.
//!
//! A file written before a power cut and never fsynced can come back with
//! the right name and length and zeroed or stale blocks inside (a "torn"
//! write). Parsers are not made for that: wasmtime's deserializer trusts
//! its input (it is `unsafe` for that reason) and panicked on such a file.
//! So a cache entry is sealed when written and opened only if its digest
//! matches; anything else is [`Damaged`], and the caller rebuilds it.
//!
//! The seal is a check against damage, not a signature: whoever can write
//! the file can write a matching digest. Code shipped from elsewhere is
//! trusted through a bundle's signature, not through this.
//!
//! Layout: `SLUICE-SEALED-1\n` (16 bytes), the payload's length (8 bytes,
//! little endian), its SHA-256 (32 bytes), the payload.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

const MAGIC: &[u8; 16] = b"SLUICE-SEALED-1\n";
const HEADER: usize = MAGIC.len() + 8 + 32;

/// Why a sealed file was not returned.
#[derive(Debug)]
pub enum ReadError {
    /// It could not be read (a missing file is `Ok(None)`, not this).
    Io(std::io::Error),
    /// It is not what [`write`] wrote: torn by a power cut, truncated,
    /// changed, or of another format. Rebuild it.
    Damaged(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "cannot read it: {e}"),
            ReadError::Damaged(reason) => write!(f, "damaged: {reason}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Write `payload` sealed to `path`, durably ([`crate::write_atomically`]).
pub fn write(path: &Path, payload: &[u8]) -> std::io::Result<()> {
    let header = header(payload);
    crate::write_parts_atomically(path, &[&header, payload])
}

/// The payload of the sealed file at `path`: `Ok(None)` if there is no
/// such file, [`ReadError::Damaged`] if it is not whole or its payload is
/// over `max_payload` bytes (checked before reading it).
pub fn read(path: &Path, max_payload: u64) -> Result<Option<Vec<u8>>, ReadError> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ReadError::Io(e)),
    };
    let actual = file.metadata().map_err(ReadError::Io)?.len();
    let mut head = [0u8; HEADER];
    if actual < HEADER as u64 {
        return Err(ReadError::Damaged(format!(
            "{actual} bytes, shorter than the {HEADER}-byte seal"
        )));
    }
    file.read_exact(&mut head).map_err(ReadError::Io)?;
    let length = check_header(&head)?;
    if length > max_payload {
        return Err(ReadError::Damaged(format!(
            "says it holds {length} bytes, over the {max_payload} allowed"
        )));
    }
    let expected = (HEADER as u64).checked_add(length);
    if expected != Some(actual) {
        return Err(ReadError::Damaged(format!(
            "{actual} bytes on disk for a {length}-byte payload"
        )));
    }
    let mut payload = Vec::with_capacity(length as usize);
    file.take(length)
        .read_to_end(&mut payload)
        .map_err(ReadError::Io)?;
    open(&head, &payload)?;
    Ok(Some(payload))
}

/// The seal of `payload`.
fn header(payload: &[u8]) -> [u8; HEADER] {
    let mut head = [0u8; HEADER];
    head[..16].copy_from_slice(MAGIC);
    head[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    head[24..].copy_from_slice(&Sha256::digest(payload));
    head
}

/// The payload length a seal states, if it is a seal at all.
fn check_header(head: &[u8; HEADER]) -> Result<u64, ReadError> {
    if &head[..16] != MAGIC {
        return Err(ReadError::Damaged(
            "no seal (another format, or zeroed)".into(),
        ));
    }
    Ok(u64::from_le_bytes(
        head[16..24].try_into().expect("8 bytes"),
    ))
}

/// Whether `payload` is what `head` sealed.
fn open(head: &[u8; HEADER], payload: &[u8]) -> Result<(), ReadError> {
    if head[24..] != Sha256::digest(payload)[..] {
        return Err(ReadError::Damaged(
            "its SHA-256 does not match its seal (torn or changed)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed_file(payload: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entry");
        write(&path, payload).unwrap();
        (dir, path)
    }

    #[test]
    fn a_sealed_file_reads_back_whole() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (_dir, path) = sealed_file(&payload);
        assert_eq!(read(&path, 1 << 20).unwrap().unwrap(), payload);
        assert!(
            read(&path.with_extension("none"), 1 << 20)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn torn_truncated_and_foreign_files_are_damaged_never_returned() {
        let payload = vec![7u8; 64 * 1024];
        let (_dir, path) = sealed_file(&payload);
        let whole = std::fs::read(&path).unwrap();
        let damaged = |bytes: &[u8], why: &str| {
            std::fs::write(&path, bytes).unwrap();
            match read(&path, 1 << 20) {
                Err(ReadError::Damaged(_)) => {}
                other => panic!("{why}: {other:?}"),
            }
        };
        // A torn write: right length, a block of zeros inside.
        let mut torn = whole.clone();
        torn[HEADER + 4096..HEADER + 8192].fill(0);
        damaged(&torn, "zeroed block");
        // Written but never synced: the length is there, the data is not.
        damaged(&vec![0u8; whole.len()], "all zeros");
        damaged(&whole[..whole.len() - 1], "truncated");
        damaged(&whole[..10], "shorter than the seal");
        damaged(b"", "empty");
        let mut longer = whole.clone();
        longer.push(0);
        damaged(&longer, "longer");
        damaged(&payload, "unsealed payload");
    }

    #[test]
    fn a_payload_over_the_bound_is_refused_before_it_is_read() {
        let (_dir, path) = sealed_file(&[1u8; 1000]);
        match read(&path, 999) {
            Err(ReadError::Damaged(reason)) => assert!(reason.contains("999"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // A seal claiming an absurd length is not believed either.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(&path, u64::MAX), Err(ReadError::Damaged(_))));
    }
}
