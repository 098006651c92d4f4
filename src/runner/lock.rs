//! A job's cross-process lock (`<log_dir>/locks/<job>.lock`), held for the length of a run, and
//! who holds it.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::history::History;
use crate::process;

/// A job's cross-process lock, held for the length of a run.
pub struct JobLock {
    pub(super) _file: File,
}

impl JobLock {
    pub(super) fn path(config: &Config, job: &str) -> PathBuf {
        config
            .scheduler
            .log_dir
            .join("locks")
            .join(format!("{job}.lock"))
    }

    pub(super) fn open(path: &Path) -> Result<File> {
        let open = || crate::private::open(path, crate::private::Open::ReadWrite);
        match open() {
            Ok(f) => Ok(f),
            // The folder is made on first use (or again, if someone removed it).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    crate::private::create_dir(dir)
                        .map_err(|e| Error::io(format!("cannot create `{}`", dir.display()), e))?;
                }
                open().map_err(|e| Error::io(format!("cannot open `{}`", path.display()), e))
            }
            Err(e) => Err(Error::io(format!("cannot open `{}`", path.display()), e)),
        }
    }

    /// The lock, or `None` when another run holds it.
    pub fn try_acquire(config: &Config, job: &str) -> Result<Option<JobLock>> {
        let path = JobLock::path(config, job);
        let file = JobLock::open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(JobLock { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => {
                Err(Error::io(format!("cannot lock `{}`", path.display()), e))
            }
        }
    }

    /// Waits for the lock (blocking: call from a blocking thread).
    pub fn acquire(config: &Config, job: &str) -> Result<JobLock> {
        let path = JobLock::path(config, job);
        let file = JobLock::open(&path)?;
        file.lock()
            .map_err(|e| Error::io(format!("cannot lock `{}`", path.display()), e))?;
        Ok(JobLock { _file: file })
    }
}

/// Who holds `job` now, from the history: "run 42 (manual, PID 1234) running since 09:30:00 IST".
pub fn describe_holder(history: &History, config: &Config, job: &str) -> String {
    let tz = config.calendar().tz();
    let row = history.running().ok().and_then(|rows| {
        rows.into_iter()
            .rfind(|r| r.job == job && r.owner_pid.is_some_and(process::scheduler_alive))
    });
    match row {
        Some(r) => {
            let since = crate::history::parse_time(&r.started_at)
                .map(|t| t.with_timezone(&tz).format("%H:%M:%S %Z").to_string())
                .unwrap_or(r.started_at.clone());
            let pid = r
                .pid
                .or(r.owner_pid)
                .map_or_else(String::new, |p| format!(", PID {p}"));
            let stuck = if r.stuck {
                ", stuck in native code"
            } else {
                ""
            };
            format!(
                "run {} ({}{pid}{stuck}) running since {since}",
                r.id, r.trigger
            )
        }
        None => "another process holds the job's lock".to_string(),
    }
}
