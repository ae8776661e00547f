//! Crash-safe file writes: write to a temporary sibling, fsync, rename.
//! A crash mid-write leaves the previous file (or none), never a torn one.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Creates a directory and its parents, with the path in the error.
pub fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))
}

/// Creates `dir` and proves it writable by writing and removing a probe file,
/// so a read-only or full output location is reported before any work is done.
pub fn ensure_writable_dir(dir: &Path) -> Result<()> {
    create_dir(dir)?;
    let probe = dir.join(format!(".write-probe{}", std::process::id()));
    write_atomic(&probe, b"probe").map_err(|e| match e {
        Error::Io { error, .. } => Error::io(dir, error),
        e => e,
    })?;
    std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))
}
