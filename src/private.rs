//! What hedge-scheduler writes is its own: files are created 0600 in folders created 0700, a file
//! of a fixed name is opened without following a symlink planted in its place, and the runs'
//! result files live in a private runtime folder that no one else can enter.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

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
}
