//! The configuration's text: where a key is written (for errors that
//! name a line) and paths as a user would write them. A leaf: the errors
//! use it, and it uses nothing of the crate.

use std::path::{Path, PathBuf};

/// The line of `text` where dotted `key` is written (its value's first
/// line), if it is: a name with a dot in it, or a key given by default, has
/// none. `models.m.input_shapes.x[2]` is looked up as
/// `models.m.input_shapes.x`.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let key = key.split('[').next()?;
    let mut table = doc.get_ref();
    let mut parts = key.split('.').peekable();
    let span = loop {
        let part = parts.next()?;
        let (_, value) = table.iter().find(|(k, _)| &**k.get_ref() == part)?;
        if parts.peek().is_none() {
            break value.span();
        }
        match value.get_ref() {
            toml::de::DeValue::Table(t) => table = t,
            _ => return None,
        }
    };
    Some(text.get(..span.start)?.matches('\n').count() + 1)
}

/// `base/./x/../y` as `base/y`, lexically (as Cargo does), so that paths in
/// messages read the way a user would write them.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}
