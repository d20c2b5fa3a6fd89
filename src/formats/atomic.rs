//! Writes that never leave a half-written file: the contents go to a temporary name next to
//! the target, which is then renamed over it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `dir/name.tmp-<pid>` next to the target, for write-then-rename.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes a text file through a temporary file and a rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, contents).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
