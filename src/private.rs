//! What hedge-scheduler writes is its own: files are created 0600 in folders created 0700, a file
//! of a fixed name is opened without following a symlink planted in its place, and the runs'
//! result files live in a private runtime folder that no one else can enter.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of every file the scheduler creates.
pub const FILE_MODE: u32 = 0o600;
/// The mode of every folder the scheduler creates.
pub const DIR_MODE: u32 = 0o700;

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Append, creating it if needed (logs).
    Append,
    /// Read and write, creating it if needed, keeping its content (locks, the PID file).
    ReadWrite,
    /// Create a file that must not exist yet.
    CreateNew,
    /// Read an existing file.
    Read,
}

/// Opens `path` as `how` says, never through a symlink (`ELOOP`), creating it `FILE_MODE`.
pub fn open(path: &Path, how: Open) -> io::Result<File> {
    let mut o = OpenOptions::new();
    match how {
        Open::Append => o.append(true).create(true),
        Open::ReadWrite => o.read(true).write(true).create(true).truncate(false),
        Open::CreateNew => o.write(true).create_new(true),
        Open::Read => o.read(true),
    };
    o.mode(FILE_MODE)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| explain_symlink(path, e))
}

/// A clearer error for a symlink found where a file of ours should be.
fn explain_symlink(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
        io::Error::other(format!(
            "`{}` is a symbolic link; hedge-scheduler does not write through links in its folders (remove it)",
            path.display()
        ))
    } else {
        e
    }
}

/// Creates `dir` and its missing parents `DIR_MODE` (existing folders are left as they are).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Writes `bytes` to `path` atomically: a new private temporary file beside it, then a rename
/// over it (a link planted at `path` is replaced, never followed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let written = open(&tmp, Open::CreateNew)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        // A full disk, say: leave no half-written file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

static USER_UMASK: std::sync::OnceLock<nix::sys::stat::Mode> = std::sync::OnceLock::new();

/// Makes what this process creates private (umask 077), remembering the user's umask for the
/// processes of runs, which get it back.
pub fn set_umask() {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let _ = USER_UMASK.set(old);
}

/// The umask the scheduler was started with, if `set_umask` ran.
pub fn user_umask() -> Option<nix::sys::stat::Mode> {
    USER_UMASK.get().copied()
}

/// Our effective user id.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The folder where runs leave their results: `<log_dir>/runtime`, 0700 and ours. A symlink, a
/// file, or a folder of another user there is refused; a folder of ours that others could enter
/// is closed.
pub fn runtime_dir(log_dir: &Path) -> io::Result<PathBuf> {
    let dir = log_dir.join("runtime");
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_dir(log_dir)?;
            match DirBuilder::new().mode(DIR_MODE).create(&dir) {
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

/// Removes group and other access from a file or folder of ours that has it (made by an older
/// version, or by hand); returns whether it changed. Links are left alone.
pub fn tighten(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if meta.file_type().is_symlink() || meta.uid() != euid() || meta.mode() & 0o077 == 0 {
        return false;
    }
    let mode = meta.mode() & 0o700;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).is_ok()
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
        "" => {
            name == crate::instance::PID_FILE
                || name == crate::health::STATE_FILE
                || name.starts_with("hedge-scheduler.log")
        }
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
    fn files_are_private_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"precious").unwrap();
        let link = dir.path().join("hedge-scheduler.pid");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for how in [Open::Append, Open::ReadWrite, Open::Read] {
            let err = open(&link, how).unwrap_err();
            assert!(err.to_string().contains("symbolic link"), "{how:?}: {err}");
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        // A rename replaces the link itself.
        write_atomic(&link, b"ours").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        assert_eq!(std::fs::read(&link).unwrap(), b"ours");
        let mode = std::fs::metadata(&link).unwrap().mode() & 0o777;
        assert_eq!(mode, FILE_MODE);
        let f = dir.path().join("new.log");
        drop(open(&f, Open::Append).unwrap());
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, FILE_MODE);
    }

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
