//! `logs <job>`: a job's lines, one run's, or followed live.

use std::io::Write;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::history::{History, Outcome};
use crate::{logging, logs};

use super::*;

/// `logs`.
pub(crate) fn command(
    inv: &Invocation,
    job: String,
    run: Option<i64>,
    last: bool,
    lines: Option<usize>,
    follow: bool,
    json: bool,
) -> Result<i32> {
    logging::init_cli("warn");
    let config = inv.load()?;
    logs_command(&config, &job, run, last, lines, follow, json)
}

/// `logs`: a job's lines, one run's, or followed live.
fn logs_command(
    config: &Config,
    job: &str,
    run: Option<i64>,
    last: bool,
    limit: Option<usize>,
    follow: bool,
    json: bool,
) -> Result<i32> {
    if config.job(job).is_none() {
        return Err(Error::UnknownJob {
            job: job.to_string(),
            known: config.job_list(),
        });
    }
    let run = match pick_run(config, job, run, last)? {
        Pick::All => None,
        Pick::Run(id) => Some(id),
        Pick::NoRunYet => {
            eprintln!("{job} has no run yet");
            return Ok(1);
        }
    };
    let limit = limit.or(if run.is_some() { None } else { Some(50) });
    let dir = config.job_log_dir();
    let (lines, end) = logs::snapshot(&dir, job, run, limit);
    let mut out = std::io::stdout().lock();
    let print = |out: &mut std::io::StdoutLock, l: &logs::Line| -> bool {
        let text = if json {
            serde_json::to_string(l).unwrap_or_default()
        } else {
            l.render()
        };
        writeln!(out, "{text}").and_then(|_| out.flush()).is_ok()
    };
    for l in &lines {
        if !print(&mut out, l) {
            return Ok(0);
        }
    }
    if follow {
        follow_lines(config, job, run, end, |l| print(&mut out, l));
    }
    Ok(0)
}

/// The run whose lines `logs` shows.
enum Pick {
    /// No run asked for: the job's lines.
    All,
    Run(i64),
    /// `--last`, and the job has not run yet.
    NoRunYet,
}

/// Resolves `--run ID` (a run of this job, in the history or at least in its logs) and
/// `--last`.
fn pick_run(config: &Config, job: &str, run: Option<i64>, last: bool) -> Result<Pick> {
    let history = History::open_read_only(&config.scheduler.history)?;
    match (run, last) {
        (Some(id), _) => {
            let row = history
                .as_ref()
                .map(|h| h.run_by_id(id))
                .transpose()?
                .flatten();
            match row {
                Some(row) if row.job != job => Err(Error::Usage(format!(
                    "run {id} is a run of `{}`, not of `{job}`",
                    row.job
                ))),
                // Not in the history (pruned, or never): its lines may still be in the logs.
                None if logs::lines(&config.job_log_dir(), job, Some(id), Some(1)).is_empty() => {
                    Err(Error::Usage(format!(
                        "no run {id} of `{job}` in the history or its logs (`history {job}` lists its runs)"
                    )))
                }
                _ => Ok(Pick::Run(id)),
            }
        }
        (None, true) => Ok(history
            .as_ref()
            .map(|h| h.last_run(job))
            .transpose()?
            .flatten()
            .map_or(Pick::NoRunYet, |row| Pick::Run(row.id))),
        (None, false) => Ok(Pick::All),
    }
}

/// `--follow`: prints new lines from `end` on as they come; a run is followed until it has
/// ended and its last lines are read, the job's lines until `print` fails (the reader left).
fn follow_lines(
    config: &Config,
    job: &str,
    run: Option<i64>,
    end: u64,
    mut print: impl FnMut(&logs::Line) -> bool,
) {
    let history_path = config.scheduler.history.clone();
    let mut ended_seen: Option<std::time::Instant> = None;
    let mut last_check = std::time::Instant::now();
    logs::follow(
        &config.job_log_dir(),
        job,
        end,
        |l| run.is_some_and(|r| l.run_id != r) || print(&l),
        || {
            let Some(id) = run else { return true };
            if let Some(at) = ended_seen {
                return at.elapsed() < std::time::Duration::from_millis(500);
            }
            if last_check.elapsed() >= std::time::Duration::from_millis(300) {
                last_check = std::time::Instant::now();
                let running = History::open_read_only(&history_path)
                    .ok()
                    .flatten()
                    .and_then(|h| h.run_by_id(id).ok().flatten())
                    .is_none_or(|row| row.outcome == Outcome::Running);
                if !running {
                    ended_seen = Some(std::time::Instant::now());
                }
            }
            true
        },
    );
}
