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

/// The lock file in a run folder while a process writes the run.
pub const LOCK_FILE: &str = ".lock";

/// Whether `dir` already holds a run: its `config.toml`, `metrics.jsonl` or `checkpoints/`.
pub fn holds_run(dir: &Path) -> bool {
    ["config.toml", "metrics.jsonl", "checkpoints"].iter().any(|f| dir.join(f).exists())
}

/// An exclusive lock on a run folder: `DIR/.lock` holds the writer's pid and an
/// advisory `flock` on it. The kernel drops the `flock` when the process ends,
/// however it ends (`kill -9` included), so a lock file left behind by a dead
/// process is stale and is taken over; dropping the guard removes the file.
#[derive(Debug)]
pub struct RunLock {
    path: std::path::PathBuf,
    // Holding the file open keeps the `flock`.
    _file: std::fs::File,
}

impl RunLock {
    /// Locks `dir` (which must exist) or fails naming the folder and the pid that holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::io::AsRawFd;
        let path = dir.join(LOCK_FILE);
        loop {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            // SAFETY: flock on a file descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                    return Err(Error::io(&path, err));
                }
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let pid = holder.lines().next().unwrap_or("").trim().to_string();
                let pid = if pid.is_empty() { "another process".into() } else { format!("process {pid}") };
                return Err(Error::Invalid(format!(
                    "{}: the run is in use by {pid} (lock file {}); wait for it to finish or stop it first",
                    dir.display(),
                    path.display()
                )));
            }
            // The holder before us may have removed the file between our open and
            // our flock: then we locked an unlinked file and must start again.
            let same = match (file.metadata(), std::fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if !same {
                continue;
            }
            let mut old = String::new();
            let _ = std::io::Read::read_to_string(&mut file, &mut old);
            if let Some(pid) = old.lines().next().filter(|p| !p.trim().is_empty()) {
                tracing::warn!(
                    "{}: taking over a stale lock of process {} (no longer running)",
                    dir.display(),
                    pid.trim()
                );
            }
            let write = |f: &mut std::fs::File| -> std::io::Result<()> {
                f.set_len(0)?;
                std::io::Seek::seek(f, std::io::SeekFrom::Start(0))?;
                writeln!(f, "{}", std::process::id())?;
                f.sync_all()
            };
            write(&mut file).map_err(|e| Error::io(&path, e))?;
            return Ok(Self { path, _file: file });
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked, so a waiting process never locks a file that is gone.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Moves everything in `dir` except its lock file into a new sibling folder
/// `DIR.old-YYYYMMDD-HHMMSS` (UTC; `-2`, `-3`, … when that exists) and returns it.
pub fn move_aside(dir: &Path) -> Result<std::path::PathBuf> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let base = format!("{}.old-{}", dir.display(), utc_stamp(secs));
    let mut target = std::path::PathBuf::from(&base);
    let mut k = 2;
    while target.exists() {
        target = std::path::PathBuf::from(format!("{base}-{k}"));
        k += 1;
    }
    create_dir(&target)?;
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name() == LOCK_FILE {
            continue;
        }
        let to = target.join(entry.file_name());
        std::fs::rename(entry.path(), &to).map_err(|e| Error::io(entry.path(), e))?;
    }
    Ok(target)
}

/// `YYYYMMDD-HHMMSS` (UTC) of a Unix time, by the civil-from-days algorithm
/// (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
fn utc_stamp(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The environment variable of [`kill_point`]: `STEP:POINT`.
pub const KILL_AT_VAR: &str = "SCOREGEN_TEST_KILL_AT";

/// Fault injection for the crash tests: when `SCOREGEN_TEST_KILL_AT` is
/// `STEP:POINT`, the process sends itself SIGKILL on reaching `point` while
/// writing the checkpoint of `step` — a `kill -9` at an exact moment inside a
/// write. Unset (always, outside those tests), it costs one cached lookup.
pub fn kill_point(step: usize, point: &str) {
    static AT: std::sync::OnceLock<Option<(usize, String)>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        let v = std::env::var(KILL_AT_VAR).ok()?;
        let (s, p) = v.split_once(':')?;
        Some((s.parse().ok()?, p.to_string()))
    });
    if at.as_ref().is_some_and(|(s, p)| *s == step && p == point) {
        // SAFETY: sends a signal to this process; SIGKILL cannot be caught.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// Refuses to replace an existing output file unless `overwrite`.
pub fn check_new_output(path: &Path, overwrite: bool) -> Result<()> {
    if !overwrite && path.exists() {
        return Err(Error::Invalid(format!(
            "{} already exists; pass --overwrite to replace it, or choose another --out",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamp_matches_known_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_718_454_896), "20240615-123456");
    }

    #[test]
    fn a_held_lock_refuses_a_second_holder_and_a_released_or_stale_one_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        let pid = std::process::id().to_string();
        assert_eq!(std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap().trim(), pid);
        let err = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("in use by process {pid}")) && err.contains(".lock"), "{err}");
        drop(lock);
        assert!(!dir.path().join(LOCK_FILE).exists(), "released on drop");
        // A lock file whose process died (nobody holds its flock) is taken over.
        std::fs::write(dir.path().join(LOCK_FILE), "999999999\n").unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap().trim(), pid);
        drop(lock);
    }

    #[test]
    fn move_aside_keeps_every_file_but_the_lock() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        create_dir(&dir.join("checkpoints")).unwrap();
        std::fs::write(dir.join("config.toml"), "x").unwrap();
        assert!(holds_run(&dir));
        let _lock = RunLock::acquire(&dir).unwrap();
        let old = move_aside(&dir).unwrap();
        assert!(old.file_name().unwrap().to_string_lossy().starts_with("run.old-"));
        assert_eq!(std::fs::read_to_string(old.join("config.toml")).unwrap(), "x");
        assert!(old.join("checkpoints").is_dir() && !old.join(LOCK_FILE).exists());
        assert!(!holds_run(&dir) && dir.join(LOCK_FILE).exists());
        let again = move_aside(&dir).unwrap();
        assert_ne!(again, old);
    }
}
