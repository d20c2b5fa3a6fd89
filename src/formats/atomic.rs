//! Writes that never leave a half-written file or folder: the contents go to a temporary
//! name next to the target, which is then renamed over it. Folders (checkpoints, prepared
//! data) are swapped in so that a complete folder exists at every instant, and whatever an
//! interrupted write leaves behind is recognised by its name and cleaned on the next start.
//!
//! Names of the leftovers, next to the target `X`: `X.tmp-PID` (a file being written),
//! `.X.tmp-PID` (a folder being written), `.X.old-PID` (the previous folder, moved aside
//! where the OS cannot exchange two folders in one step), `.X.del-PID` (a folder being
//! removed).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// `dir/name.tmp-<pid>` next to the target, for write-then-rename.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes a file through a temporary file and a rename; on failure (a full disk) the
/// temporary file is removed and the previous file is untouched.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    if let Err(e) = std::fs::write(&tmp, contents) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// `parent/.name.<what>-<pid>`: the hidden sibling of folder `dir` used while it is written
/// (`tmp`), moved aside (`old`) or removed (`del`).
pub fn sibling(dir: &Path, what: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!(".{name}.{what}-{}", std::process::id()))
}

/// A fresh, empty staging folder for `dir` (`.name.tmp-PID`).
pub fn staging_dir(dir: &Path) -> Result<PathBuf> {
    let tmp = sibling(dir, "tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(tmp)
}

/// Puts the complete folder `staged` at `dir` and removes what was there. On Linux both are
/// exchanged in one step (`renameat2` with `RENAME_EXCHANGE`), so some complete `dir`
/// exists at every instant; elsewhere the old folder is first moved aside to `.name.old-PID`,
/// from which [`clean_leftovers`] restores it if the process dies in between.
pub fn replace_dir(staged: &Path, dir: &Path) -> Result<()> {
    if !dir.exists() {
        return std::fs::rename(staged, dir).map_err(|e| Error::io(dir, e));
    }
    if exchange(staged, dir) {
        // `staged` now holds the previous folder; if it cannot be removed now, the next
        // start's cleaning removes it (the new folder is in place either way)
        let _ = std::fs::remove_dir_all(staged);
        return Ok(());
    }
    let old = sibling(dir, "old");
    std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    if let Err(e) = std::fs::rename(staged, dir) {
        let _ = std::fs::rename(&old, dir); // put the previous folder back
        return Err(Error::io(dir, e));
    }
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(ca), Ok(cb)) =
        (std::ffi::CString::new(a.as_os_str().as_bytes()), std::ffi::CString::new(b.as_os_str().as_bytes()))
    else {
        return false;
    };
    // SAFETY: both arguments are valid NUL-terminated paths; renameat2 only reads them.
    unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> bool {
    false
}

/// Writes folder `dir` as a whole: `write` fills a fresh staging folder, which then
/// replaces `dir` ([`replace_dir`]); if `write` fails (a full disk), the staging folder is
/// removed and the previous `dir` is left as it was.
pub fn write_dir_atomic(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = staging_dir(dir)?;
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    replace_dir(&tmp, dir)
}

/// Removes folder `dir` so that an interruption never leaves a half-removed `dir`: it is
/// renamed to `.name.del-PID` first.
pub fn remove_dir(dir: &Path) -> Result<()> {
    let del = sibling(dir, "del");
    std::fs::rename(dir, &del).map_err(|e| Error::io(dir, e))?;
    std::fs::remove_dir_all(&del).map_err(|e| Error::io(&del, e))
}

/// What an interrupted write left in `folder`: (target, kind, pid) of a hidden folder
/// `.X.{tmp,old,del}-PID` or a file `X.tmp-PID` (the only names igpt gives them).
fn leftover(name: &str, is_dir: bool) -> Option<(&str, &str, u32)> {
    let (stem, pid) = name.rsplit_once('-')?;
    let pid: u32 = pid.parse().ok().filter(|_| pid.bytes().all(|b| b.is_ascii_digit()))?;
    let (target, what) = stem.rsplit_once('.')?;
    let ok = match (is_dir, what) {
        (true, "tmp" | "old" | "del") => target.starts_with('.') && target.len() > 1,
        (false, "tmp") => !target.is_empty(),
        _ => false,
    };
    ok.then_some((target, what, pid))
}

/// Whether process `pid` is running (its leftovers may be writes in progress).
fn alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: kill with signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        false
    }
}

/// Cleans the leftovers of interrupted writes in `folder` (only those of target `only` when
/// given): a folder moved aside is put back where its target is missing, everything else is
/// removed. Returns what was done, one line per entry, for the caller to report.
pub fn clean_leftovers(folder: &Path, only: Option<&str>) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let Ok(rd) = std::fs::read_dir(folder) else { return Ok(done) };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let is_dir = path.symlink_metadata().is_ok_and(|m| m.is_dir());
        let Some((target, what, pid)) = leftover(&name, is_dir) else { continue };
        if pid == std::process::id() || alive(pid) {
            continue; // a write in progress (or this process's own)
        }
        let target_name = target.strip_prefix('.').unwrap_or(target);
        if only.is_some_and(|o| o != target_name) {
            continue;
        }
        let target = folder.join(target_name);
        if what == "old" && !target.exists() {
            std::fs::rename(&path, &target).map_err(|e| Error::io(&target, e))?;
            done.push(format!("restored {} from {}", target.display(), path.display()));
            continue;
        }
        let r = if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        r.map_err(|e| Error::io(&path, e))?;
        done.push(format!("removed {} (left by an interrupted write)", path.display()));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_names() {
        assert_eq!(leftover(".best.tmp-123", true), Some((".best", "tmp", 123)));
        assert_eq!(leftover(".step-40.old-7", true), Some((".step-40", "old", 7)));
        assert_eq!(leftover("metrics.jsonl.tmp-99", false), Some(("metrics.jsonl", "tmp", 99)));
        // a user's folders and files are not leftovers: no leading dot, or not igpt's kind
        assert_eq!(leftover("data.old-2024", true), None);
        assert_eq!(leftover("results.tmp-1", true), None);
        assert_eq!(leftover("notes.old-3", false), None);
        assert_eq!(leftover("step-40", true), None);
        assert_eq!(leftover(".best.tmp-", true), None);
        assert_eq!(leftover("a.tmp-12x", false), None);
        assert!(alive(std::process::id()));
    }

    #[test]
    fn replace_keeps_one_complete_folder_and_cleaning_restores_an_aside_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("best");
        for v in ["one", "two"] {
            let s = staging_dir(&dir).unwrap();
            std::fs::write(s.join("f"), v).unwrap();
            replace_dir(&s, &dir).unwrap();
            assert_eq!(std::fs::read_to_string(dir.join("f")).unwrap(), v);
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "nothing left beside best/");
        // a crash between the two renames of the fallback: best/ is only aside
        // (pids that no process has: above the kernel's pid_max)
        std::fs::rename(&dir, tmp.path().join(".best.old-4194400")).unwrap();
        std::fs::create_dir(tmp.path().join(".best.tmp-4194401")).unwrap();
        std::fs::write(tmp.path().join("metrics.jsonl.tmp-4194402"), "x").unwrap();
        std::fs::create_dir(tmp.path().join(".other.tmp-4194403")).unwrap();
        // a user's folder that merely looks alike is left alone
        std::fs::create_dir(tmp.path().join("backup.old-2024")).unwrap();
        assert!(clean_leftovers(tmp.path(), Some("nothing")).unwrap().is_empty());
        assert_eq!(clean_leftovers(tmp.path(), Some("other")).unwrap().len(), 1);
        let done = clean_leftovers(tmp.path(), None).unwrap();
        assert_eq!(done.len(), 3, "{done:?}");
        assert_eq!(std::fs::read_to_string(dir.join("f")).unwrap(), "two");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2, "best/ and the user's backup.old-2024");
        remove_dir(&dir).unwrap();
        assert!(!dir.exists());
    }
}
