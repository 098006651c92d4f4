//! One daemon per configuration: an exclusive lock on `<log_dir>/hedge-scheduler.pid`, which also
//! holds the daemon's PID and start time.
//!
//! The lock is the truth, not the file: a PID file left by a killed daemon is unlocked (the kernel
//! drops the lock with the process), so it never blocks a restart.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::history::{fmt_time, parse_time};

pub use crate::log_dir::PID_FILE;

/// The lock of a running daemon; released (and the PID file removed) on drop.
pub struct InstanceLock {
    /// The lock on the log folder itself: the PID file can be deleted, the folder (holding the
    /// history and the logs) hardly; a second daemon is refused while either is held.
    _dir_lock: Option<File>,
    file: File,
    path: PathBuf,
    started_at: DateTime<Utc>,
}

/// What the PID file of a running daemon says.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub pid: i64,
    pub started_at: Option<DateTime<Utc>>,
    /// The process's start time in clock ticks since boot (`/proc/<pid>/stat`): tells the
    /// daemon from a process that got its PID later.
    pub start_ticks: Option<u64>,
}

impl InstanceLock {
    /// Takes the lock for a daemon that starts now, or says who holds it.
    /// Times in messages are shown in `tz` (the exchange's).
    pub fn acquire(
        dir: &Path,
        started_at: DateTime<Utc>,
        tz: chrono_tz::Tz,
    ) -> Result<InstanceLock> {
        crate::private::create_dir(dir)
            .map_err(|e| Error::io(format!("cannot create `{}`", dir.display()), e))?;
        let folder = File::open(dir)
            .map_err(|e| Error::io(format!("cannot open `{}`", dir.display()), e))?;
        let mut tries = 0;
        loop {
            match folder.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(TryLockError::WouldBlock) => {
                    let info = probe(dir);
                    return Err(Error::AlreadyRunning {
                        pid: info.as_ref().map_or(0, |i| i.pid),
                        since: info
                            .and_then(|i| i.started_at)
                            .map(|t| {
                                t.with_timezone(&tz)
                                    .format("%Y-%m-%d %H:%M:%S %Z")
                                    .to_string()
                            })
                            .unwrap_or_else(|| "an unknown time".to_string()),
                    });
                }
                Err(TryLockError::Error(e)) => {
                    return Err(Error::io(format!("cannot lock `{}`", dir.display()), e));
                }
            }
        }
        let mut lock = InstanceLock::pid_file(dir, started_at, tz)?;
        lock._dir_lock = Some(folder);
        Ok(lock)
    }

    /// Writes and locks the PID file (the folder's lock is already ours).
    fn pid_file(dir: &Path, started_at: DateTime<Utc>, tz: chrono_tz::Tz) -> Result<InstanceLock> {
        let path = dir.join(PID_FILE);
        let mut file = crate::private::open(&path, crate::private::Open::ReadWrite)
            .map_err(|e| Error::io(format!("cannot open `{}`", path.display()), e))?;
        // `status` takes the lock shared for an instant to look; retry briefly before refusing.
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    if let Some(info) =
                        read_info(&mut file).filter(|i| crate::process::pid_alive(i.pid))
                        && tries >= 5
                    {
                        return Err(Error::AlreadyRunning {
                            pid: info.pid,
                            since: info
                                .started_at
                                .map(|t| {
                                    t.with_timezone(&tz)
                                        .format("%Y-%m-%d %H:%M:%S %Z")
                                        .to_string()
                                })
                                .unwrap_or_else(|| "an unknown time".to_string()),
                        });
                    }
                    if tries >= 20 {
                        return Err(Error::Daemon(format!(
                            "`{}` is locked by another process",
                            path.display()
                        )));
                    }
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(Error::io(format!("cannot lock `{}`", path.display()), e));
                }
            }
        }
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| {
                let ticks = start_ticks(i64::from(std::process::id()))
                    .map(|t| t.to_string())
                    .unwrap_or_default();
                writeln!(
                    file,
                    "{}\n{}\n{ticks}",
                    std::process::id(),
                    fmt_time(started_at)
                )?;
                file.sync_all()
            })
            .map_err(|e| Error::io(format!("cannot write `{}`", path.display()), e))?;
        Ok(InstanceLock {
            _dir_lock: None,
            file,
            path,
            started_at,
        })
    }

    /// Checks that the PID file on disk is still the one we lock (someone may have deleted the
    /// log folder); recreates and relocks it if not. `Err` names the process that holds a new
    /// lock: another instance started meanwhile.
    pub fn ensure(&mut self) -> std::result::Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let ours = self.file.metadata().ok().map(|m| (m.dev(), m.ino()));
        let on_disk = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == on_disk {
            return Ok(());
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tz = chrono_tz::UTC;
        match InstanceLock::pid_file(dir, self.started_at, tz) {
            Ok(mut fresh) => {
                std::mem::swap(&mut self.file, &mut fresh.file);
                // `fresh` now holds the old, unlinked file: dropping it must not remove the new
                // PID file, so forget its path.
                fresh.path = PathBuf::new();
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
        let _ = self.file.unlock();
    }
}

/// The running daemon of this log folder, if any.
pub fn probe(dir: &Path) -> Option<DaemonInfo> {
    let from_file = crate::private::open(&dir.join(PID_FILE), crate::private::Open::Read)
        .ok()
        .and_then(|mut file| match file.try_lock_shared() {
            // Nobody holds it: no daemon (the file is a leftover).
            Ok(()) => {
                let _ = file.unlock();
                None
            }
            Err(TryLockError::WouldBlock) => read_info(&mut file),
            Err(TryLockError::Error(_)) => None,
        });
    if from_file.is_some() {
        return from_file;
    }
    // No PID file (deleted under a running daemon): the folder's lock still tells, and who holds
    // it.
    use std::os::unix::fs::MetadataExt;
    let folder = File::open(dir).ok()?;
    match folder.try_lock_shared() {
        Ok(()) => {
            let _ = folder.unlock();
            None
        }
        Err(TryLockError::WouldBlock) => {
            let ino = folder.metadata().ok()?.ino();
            let pid = *lock_holders(ino).first()?;
            Some(DaemonInfo {
                pid,
                started_at: None,
                start_ticks: None,
            })
        }
        Err(TryLockError::Error(_)) => None,
    }
}

fn read_info(file: &mut File) -> Option<DaemonInfo> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let started_at = lines.next().and_then(|l| parse_time(l.trim()));
    let start_ticks = lines.next().and_then(|l| l.trim().parse().ok());
    Some(DaemonInfo {
        pid,
        started_at,
        start_ticks,
    })
}

/// A process's start time, in clock ticks since boot.
pub fn start_ticks(pid: i64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Checks that `info` (read from the PID file in `dir`) names the daemon that holds this
/// folder's lock before anyone signals it: a PID above 1, alive, a hedge-scheduler executable,
/// holding the PID file's lock, started when the file says. `Err` says why not.
pub fn verify(dir: &Path, info: &DaemonInfo) -> std::result::Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let pid = info.pid;
    if pid <= 1 {
        return Err(format!(
            "the PID file holds {pid}, which can never be a hedge-scheduler daemon"
        ));
    }
    if !crate::process::pid_alive(pid) {
        return Err(format!("PID {pid} from the PID file is not running"));
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let named = exe
        .as_ref()
        .and_then(|e| e.file_name())
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("hedge-scheduler"));
    if !named || !comm.trim_end().starts_with("hedge-schedule") {
        return Err(format!(
            "PID {pid} from the PID file is not hedge-scheduler (it is `{}`)",
            exe.map(|e| e.display().to_string())
                .unwrap_or_else(|| comm.trim().to_string())
        ));
    }
    let holds = [dir.join(PID_FILE), dir.to_path_buf()]
        .iter()
        .any(|p| std::fs::metadata(p).is_ok_and(|m| lock_holders(m.ino()).contains(&pid)));
    if !holds {
        return Err(format!(
            "PID {pid} does not hold the lock on `{}`: it is not this folder's daemon",
            dir.join(PID_FILE).display()
        ));
    }
    if let Some(expected) = info.start_ticks
        && start_ticks(pid) != Some(expected)
    {
        return Err(format!(
            "PID {pid} started at another time than the PID file says: it is another process"
        ));
    }
    Ok(())
}

/// PIDs holding a lock on the file with inode `ino` (from `/proc/locks`).
fn lock_holders(ino: u64) -> Vec<i64> {
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
            let f: Vec<&str> = l.split_whitespace().collect();
            let pid = f.get(4)?.parse().ok()?;
            let file_ino: u64 = f.get(5)?.rsplit(':').next()?.parse().ok()?;
            (file_ino == ino).then_some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let tz = chrono_tz::Asia::Kolkata;
        let lock = InstanceLock::acquire(dir.path(), Utc::now(), tz).unwrap();
        let info = probe(dir.path()).unwrap();
        assert_eq!(info.pid, i64::from(std::process::id()));
        // flock locks are per open file: a second open in this process conflicts too.
        let err = InstanceLock::acquire(dir.path(), Utc::now(), tz)
            .err()
            .unwrap();
        assert!(err.to_string().contains("already running"), "{err}");
        assert!(err.to_string().contains("IST"), "{err}");
        drop(lock);
        assert!(probe(dir.path()).is_none());
        let mut lock = InstanceLock::acquire(dir.path(), Utc::now(), tz).unwrap();
        // The PID file removed under a running daemon is recreated and locked again.
        std::fs::remove_file(dir.path().join(PID_FILE)).unwrap();
        // Meanwhile the folder's lock still tells who runs.
        let info = probe(dir.path()).unwrap();
        assert_eq!(info.pid, i64::from(std::process::id()));
        assert!(info.started_at.is_none());
        lock.ensure().unwrap();
        assert_eq!(
            probe(dir.path()).unwrap().pid,
            i64::from(std::process::id())
        );
    }
}
