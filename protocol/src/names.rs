//! Device and pipeline names, and the result ids made of them.

use crate::MAX_NAME_LEN;

/// Why a device or pipeline name is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("has {0} bytes; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    /// The name has a character outside `A-Z a-z 0-9 . _ -`.
    #[error("has the character {0:?}; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed")]
    BadChar(char),
}

/// Check a device or pipeline name: 1 to [`MAX_NAME_LEN`] bytes of
/// `A-Z a-z 0-9 . _ -`. Names are parts of ids and URL paths, so a `/` (or
/// anything needing escaping) would let one device's ids pass for another's.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(NameError::BadChar(c)),
        None => Ok(()),
    }
}

/// The longest outbox instance id in a record (devices make 16 hex digits).
pub const MAX_OUTBOX_LEN: usize = 32;

/// The id of the result of input `seq` of `pipeline` on `device`, accepted
/// into outbox instance `outbox` (`None` outside an outbox: `sluice infer`,
/// and records written before instances existed).
pub fn result_id(device: &str, pipeline: &str, outbox: Option<&str>, seq: i64) -> String {
    match outbox {
        Some(outbox) => format!("{device}/{pipeline}/{outbox}-{seq}"),
        None => format!("{device}/{pipeline}/{seq}"),
    }
}
