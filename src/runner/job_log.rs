//! The job logs: `<log_dir>/jobs/<job>.log`, kept open between runs, rotated daily.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

use super::*;

/// A job's log file, `<log_dir>/jobs/<job>.log`, shared by the run's stdout and stderr readers.
pub struct JobLog {
    pub(super) file: Arc<Mutex<std::io::BufWriter<File>>>,
    pub(super) run_id: i64,
}

/// Open job logs, kept between runs: (the UTC day it was opened, the file).
pub(super) type LogFiles =
    std::collections::HashMap<String, (chrono::NaiveDate, Arc<Mutex<std::io::BufWriter<File>>>)>;

impl JobLog {
    /// The job's log for run `run_id`, reusing the open file while the day lasts and the file is
    /// still there (rotation and a removed folder both reopen it).
    pub(super) fn cached(env: &RunEnv, job: &str, run_id: i64) -> Result<JobLog> {
        let dir = env.config.job_log_dir();
        let today = Utc::now().date_naive();
        let path = dir.join(format!("{job}.log"));
        if let Ok(files) = env.log_files.lock()
            && let Some((day, file)) = files.get(job)
            && *day == today
            && path.exists()
        {
            return Ok(JobLog {
                file: Arc::clone(file),
                run_id,
            });
        }
        let log = JobLog::open(&dir, job, run_id, env.config.scheduler.log_files_kept)?;
        if let Ok(mut files) = env.log_files.lock() {
            files.insert(job.to_string(), (today, Arc::clone(&log.file)));
        }
        Ok(log)
    }

    pub fn open(dir: &Path, job: &str, run_id: i64, keep: usize) -> Result<JobLog> {
        let path = dir.join(format!("{job}.log"));
        rotate_daily(&path, keep);
        let open = || crate::private::open(&path, crate::private::Open::Append);
        let file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::private::create_dir(dir)
                    .map_err(|e| Error::io(format!("cannot create `{}`", dir.display()), e))?;
                open()
            }
            other => other,
        }
        .map_err(|e| Error::io(format!("cannot open job log `{}`", path.display()), e))?;
        Ok(JobLog {
            file: Arc::new(Mutex::new(std::io::BufWriter::with_capacity(
                64 * 1024,
                file,
            ))),
            run_id,
        })
    }

    /// Writes the lines of one chunk of output and flushes them.
    pub(super) fn write_lines<'a>(&self, stream: &str, lines: impl Iterator<Item = &'a [u8]>) {
        let Ok(mut f) = self.file.lock() else { return };
        let stamp = Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        for line in lines {
            let _ = write!(f, "{stamp} [run {} {stream}] ", self.run_id);
            let _ = f.write_all(line);
            let _ = f.write_all(b"\n");
        }
        let _ = f.flush();
    }

    /// A line from the scheduler itself about this run.
    pub fn note(&self, text: &str) {
        self.write_lines("hedge", std::iter::once(text.as_bytes()));
    }
}

/// Moves yesterday's (or older) `<job>.log` to `<job>.log.YYYY-MM-DD` (UTC, like the daemon's
/// log) and keeps `keep` files in all.
pub(crate) fn rotate_daily(path: &Path, keep: usize) {
    let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified()) else {
        return;
    };
    let day = DateTime::<Utc>::from(modified).date_naive();
    if day >= Utc::now().date_naive() {
        return;
    }
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let rotated = path.with_file_name(format!("{name}.{day}"));
    if std::fs::rename(path, &rotated).is_err() {
        return;
    }
    let Some(dir) = path.parent() else { return };
    let prefix = format!("{name}.");
    let mut old: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    old.sort();
    let excess = old.len().saturating_sub(keep.saturating_sub(1));
    for p in old.into_iter().take(excess) {
        let _ = std::fs::remove_file(p);
    }
}
