//! The log folder's layout: the names of what the scheduler keeps there (the PID file, the
//! health state, the daemon's log, `jobs/`, `locks/`, `runtime/`), whether the folder is safe to
//! keep them in, and making them private.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::private::{DIR_MODE, create_dir, euid, tighten};

/// The daemon's PID file (and its instance lock).
pub const PID_FILE: &str = "hedge-scheduler.pid";
/// The health state the daemon rewrites at every check.
pub const STATE_FILE: &str = "hedge-scheduler.state.json";
/// The daemon's own log (rotated daily as `hedge-scheduler.log.<date>`).
pub const DAEMON_LOG: &str = "hedge-scheduler.log";

/// The folder where runs leave their results: `<log_dir>/runtime`, 0700 and ours. A symlink, a
/// file, or a folder of another user there is refused; a folder of ours that others could enter
/// is closed.
pub fn runtime_dir(log_dir: &Path) -> io::Result<PathBuf> {
    let dir = log_dir.join("runtime");
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_dir(log_dir)?;
            match std::fs::DirBuilder::new().mode(DIR_MODE).create(&dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.file_type().is_dir() {
        return Err(io::Error::other(format!(
            "`{}` is not a folder (a link or a file was put in its place); remove it",
            dir.display()
        )));
    }
    if meta.uid() != euid() {
        return Err(io::Error::other(format!(
            "`{}` belongs to user {}, not to us ({}); remove it",
            dir.display(),
            meta.uid(),
            euid()
        )));
    }
    if meta.mode() & 0o777 != DIR_MODE {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(dir)
}

/// Why `log_dir` is not safe to keep our files in, if it is not: others may write in it (they
/// could plant links and files), or it belongs to another user.
pub fn unsafe_log_dir(log_dir: &Path) -> Option<String> {
    let meta = std::fs::metadata(log_dir).ok()?;
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "other users may write in it (mode {:o}): they could plant files and links among ours; give hedge-scheduler a folder of its own",
            meta.mode() & 0o7777
        ));
    }
    if meta.uid() != euid() && euid() != 0 {
        return Some(format!("it belongs to user {}, not to us", meta.uid()));
    }
    if meta.uid() != euid() {
        return Some(format!(
            "it belongs to user {}, who could plant links in it that root would follow; run as that user, or give hedge-scheduler a folder of root's",
            meta.uid()
        ));
    }
    // Whoever may rename an entry of a folder above it could put a folder of theirs in its
    // place: every folder above must be root's or ours, and not writable by others unless it is
    // sticky (as /tmp is) and the entry below it is ours.
    let real = log_dir.canonicalize().ok()?;
    let mut below_ours = true;
    for dir in real.ancestors() {
        let Ok(m) = std::fs::metadata(dir) else {
            continue;
        };
        if dir != real.as_path() {
            let open = m.mode() & 0o022 != 0;
            let sticky = m.mode() & 0o1000 != 0;
            if (m.uid() != 0 && m.uid() != euid()) || (open && !(sticky && below_ours)) {
                return Some(format!(
                    "`{}` above it {}: they could put a folder of theirs in its place",
                    dir.display(),
                    if m.uid() != 0 && m.uid() != euid() {
                        format!("belongs to user {}", m.uid())
                    } else {
                        format!(
                            "may be written by other users (mode {:o})",
                            m.mode() & 0o7777
                        )
                    }
                ));
            }
        }
        below_ours = m.uid() == euid() || m.uid() == 0;
    }
    None
}

/// Whether `name` (in `dir`, one of ours) is a file the scheduler makes there.
fn ours_by_name(dir: &str, name: &str) -> bool {
    match dir {
        "" => name == PID_FILE || name == STATE_FILE || name.starts_with(DAEMON_LOG),
        "jobs" => name.ends_with(".log") || name.contains(".log."),
        "locks" => name.ends_with(".lock"),
        "runtime" => true,
        _ => false,
    }
}

/// Makes what the scheduler keeps in `log_dir` private: its own folders (`jobs`, `locks`,
/// `runtime`) and the files it makes there, by name (files of older versions, or made by hand,
/// that others could read); the history only if it is a SQLite database. Nothing else in the
/// folder is touched. Returns how many were changed.
pub fn tighten_log_dir(log_dir: &Path, history: &Path) -> usize {
    let mut n = 0;
    for sub in ["", "jobs", "locks", "runtime"] {
        let dir = log_dir.join(sub);
        if !sub.is_empty() {
            n += usize::from(tighten(&dir));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            n += entries
                .flatten()
                .filter(|e| {
                    e.file_type().is_ok_and(|t| t.is_file())
                        && ours_by_name(sub, &e.file_name().to_string_lossy())
                        && tighten(&e.path())
                })
                .count();
        }
    }
    let is_sqlite = |p: &Path| {
        let mut head = [0u8; 16];
        std::fs::File::open(p)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok_and(|()| &head == b"SQLite format 3\0")
    };
    if is_sqlite(history) {
        for ext in ["", "-wal", "-shm"] {
            let mut p = history.as_os_str().to_owned();
            p.push(ext);
            n += usize::from(tighten(Path::new(&p)));
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_folder_is_ours_and_closed() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime_dir(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&rt).unwrap().mode() & 0o777, DIR_MODE);
        std::fs::set_permissions(&rt, std::fs::Permissions::from_mode(0o777)).unwrap();
        runtime_dir(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&rt).unwrap().mode() & 0o777, DIR_MODE);
        std::fs::remove_dir(&rt).unwrap();
        std::os::unix::fs::symlink("/tmp", &rt).unwrap();
        assert!(runtime_dir(dir.path()).is_err());
    }
}
