//! Where the history's refused writes wait across a shutdown or a crash: a spill journal beside
//! the history, `<history>.spill.<pid>`, with its space reserved when the writer starts, so a full
//! disk cannot stop it. While the database refuses, the writer keeps the journal equal to its
//! queue; once the database takes the queue, the journal is emptied. The next process to open the
//! history replays the journals of processes that are gone, in order, before anything else.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A journal as long as this is reserved up front for a daemon: thousands of rows.
pub const DAEMON_RESERVE: u64 = 4 * 1024 * 1024;
/// For a single run (`run-once`): its start and end, with room to spare.
pub const RUN_RESERVE: u64 = 64 * 1024;

pub(super) struct Spill {
    file: File,
    path: PathBuf,
    reserved: u64,
    /// Whether the journal on disk holds writes.
    holding: bool,
}

/// The journal of process `pid` for the history at `history`.
fn path_for(history: &Path, pid: u32) -> PathBuf {
    let mut p = history.as_os_str().to_owned();
    p.push(format!(".spill.{pid}"));
    PathBuf::from(p)
}

impl Spill {
    /// Opens our journal and reserves its space (on a disk already full, as much as it can).
    pub(super) fn open(history: &Path, reserve: u64) -> io::Result<Spill> {
        let path = path_for(history, std::process::id());
        let file = crate::private::open(&path, crate::private::Open::ReadWrite)?;
        let ready = Spill::prepare(&file, &path, reserve);
        match ready {
            Ok(reserved) => Ok(Spill {
                file,
                path,
                reserved,
                holding: false,
            }),
            Err(e) => {
                // Not even an empty journal fits: leave nothing behind.
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Empties the journal and reserves its space; returns how much was reserved.
    fn prepare(file: &File, path: &Path, reserve: u64) -> io::Result<u64> {
        file.set_len(0)?;
        let reserved = match nix::fcntl::fallocate(
            file,
            nix::fcntl::FallocateFlags::empty(),
            0,
            i64::try_from(reserve).unwrap_or(i64::MAX),
        ) {
            Ok(()) => reserve,
            Err(e) => {
                tracing::warn!(
                    "history: cannot reserve {} for the spill journal `{}`: {e}",
                    crate::fmt::bytes(reserve),
                    path.display()
                );
                0
            }
        };
        // An empty journal: a NUL where the first line would be.
        file.write_all_at(b"\0", 0)?;
        Ok(reserved)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `lines` (JSON, one write each) over the journal, within the reserved space when it
    /// fits, and syncs it.
    pub(super) fn save(&mut self, lines: &[String]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum::<usize>() + 1);
        for l in lines {
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
        }
        buf.push(0);
        if buf.len() as u64 > self.reserved {
            // Past the reserve: the disk may or may not take it.
            tracing::warn!(
                "history: {} outgrow the spill journal's reserve of {}",
                crate::fmt::n(lines.len(), "write"),
                crate::fmt::bytes(self.reserved)
            );
        }
        self.file.write_all_at(&buf, 0)?;
        self.file.sync_data()?;
        self.holding = !lines.is_empty();
        Ok(())
    }

    /// Empties the journal (the database took everything).
    pub(super) fn clear(&mut self) {
        if self.holding && self.file.write_all_at(b"\0", 0).is_ok() {
            let _ = self.file.sync_data();
            self.holding = false;
        }
    }

    /// Removes the journal at a clean close (nothing waits).
    pub(super) fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The lines of every journal left by a process that is gone, oldest process first; each is
/// claimed (renamed) before it is read, so two processes never replay the same one. Returns the
/// lines and the claimed files, to remove once their writes are in the database.
pub(super) fn leftovers(history: &Path) -> (Vec<String>, Vec<PathBuf>) {
    let (Some(dir), Some(name)) = (history.parent(), history.file_name()) else {
        return (Vec::new(), Vec::new());
    };
    let prefix = format!("{}.spill.", name.to_string_lossy());
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let rest = n.strip_prefix(&prefix)?;
                    // A journal, or one a process died replaying.
                    let pid: i64 = rest
                        .strip_prefix("replaying.")
                        .unwrap_or(rest)
                        .parse()
                        .ok()?;
                    let gone = pid != i64::from(std::process::id())
                        && !crate::process::scheduler_alive(pid);
                    let modified = e.metadata().and_then(|m| m.modified()).ok()?;
                    gone.then(|| (modified, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    let mut lines = Vec::new();
    let mut claimed = Vec::new();
    for (_, path) in found {
        let mut mine = history.as_os_str().to_owned();
        mine.push(format!(".spill.replaying.{}", std::process::id()));
        let mine = PathBuf::from(mine);
        if std::fs::rename(&path, &mine).is_err() {
            continue;
        }
        let mut bytes = Vec::new();
        if crate::private::open(&mine, crate::private::Open::Read)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .is_err()
        {
            continue;
        }
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        lines.extend(
            String::from_utf8_lossy(&bytes[..end])
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
        claimed.push(mine);
    }
    (lines, claimed)
}
