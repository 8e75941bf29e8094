//! Files as inputs: media types from extensions, and the one-shot reading
//! of files and folders behind `sluice infer`.
//!
//! Invariant: items come out in a deterministic order (arguments in order,
//! folder entries sorted by name), so results can be matched to inputs.

use crate::types::{Metadata, RawItem};
use std::path::{Path, PathBuf};

/// The MIME type Sluice assumes for a file, from its extension.
pub fn content_type_of(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("json") => "application/json",
        Some("csv") => "text/csv",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

/// Every file named by `paths`, folders expanded (recursively, sorted).
pub fn list_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            entries.sort();
            files.extend(list_files(&entries)?);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{}: no such file or folder", path.display()),
            ));
        }
    }
    Ok(files)
}

/// Read one file as an item with id `id`.
pub fn read_file_item(path: &Path, id: String) -> std::io::Result<RawItem> {
    let data = std::fs::read(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let meta =
        Metadata::new(id, content_type_of(path)).with_attribute("file", path.display().to_string());
    Ok(RawItem { meta, data })
}
