//! One run of one job: its cross-process lock, its history row, its process group (or embedded
//! thread), its output, its timeout, its outcome.
//!
//! A run always ends in a recorded `Outcome`; failures of the job are never `Err`. A subprocess's
//! output is read continuously, line by line, into the job's log file, so a chatty job can never
//! block on a full pipe. The job's lock (`<log_dir>/locks/<job>.lock`) is held for the whole run —
//! for an embedded run whose thread is stuck in C code, until that thread really returns — so a
//! job never runs twice at once, whichever process starts it.

mod context;
#[cfg(feature = "embedded")]
mod embedded;
mod events;
mod fork;
mod forkserver;
mod job_log;
mod judge;
mod lock;
pub(crate) mod prepare;
mod results;
mod subprocess;

pub(crate) use context::*;
#[cfg(feature = "embedded")]
use embedded::*;
pub use events::*;
pub use forkserver::ForkPool;
pub(crate) use forkserver::StartError;
pub use job_log::JobLog;
pub(crate) use job_log::rotate_daily;
use job_log::*;
use judge::*;
pub use lock::{JobLock, describe_holder};
pub use results::*;
use subprocess::*;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};

use crate::config::{Config, Executor};
use crate::error::{Error, Result};
use crate::history::{History, Outcome, Recorder, RunEnd, StartRow, TriggerKind};

/// The longest a run waits for its slot's instant. The dispatcher wakes a few milliseconds
/// ahead; a longer wait means the wall clock stepped back meanwhile, and the slot's moment has
/// come by the monotonic clock all the same.
const MAX_SLOT_WAIT: Duration = Duration::from_millis(50);

/// What every run of a daemon (or of `run-once`) shares.
#[derive(Clone)]
pub struct RunEnv {
    pub config: Arc<Config>,
    /// The real interpreter, resolved once at start-up.
    pub python: PathBuf,
    /// The history's one writer.
    pub recorder: Recorder,
    /// Job logs kept open between runs.
    log_files: Arc<Mutex<LogFiles>>,
    /// The fork servers of `executor = "fork"` jobs.
    pub forks: Arc<ForkPool>,
}

impl RunEnv {
    pub fn new(
        config: Arc<Config>,
        python: PathBuf,
        recorder: Recorder,
        forks: Arc<ForkPool>,
    ) -> RunEnv {
        RunEnv {
            config,
            python,
            recorder,
            log_files: Arc::default(),
            forks,
        }
    }

    /// The same history and job logs with a reloaded config.
    pub fn with_config(&self, config: Arc<Config>, python: PathBuf) -> RunEnv {
        RunEnv {
            config,
            python,
            recorder: self.recorder.clone(),
            log_files: Arc::clone(&self.log_files),
            forks: Arc::clone(&self.forks),
        }
    }

    /// Records a slot that was not run.
    pub fn record_skipped(&self, job: &str, trigger: TriggerKind, at: DateTime<Utc>, reason: &str) {
        self.recorder.skipped(job, trigger, at, reason, None);
    }
}

/// Makes one run: takes the job's lock, records the run, runs it, records how it ended.
/// `cancel` turning `Some(reason)` ends the run (`cancelled`).
pub async fn run(
    env: &RunEnv,
    req: RunRequest,
    mut cancel: watch::Receiver<Option<String>>,
    events: Option<mpsc::UnboundedSender<RunEvent>>,
    on_busy: OnBusy,
) -> RunReport {
    let job = Arc::clone(&req.job);
    let mut report = RunReport::new(
        job.id.clone(),
        req.trigger,
        req.scheduled_at,
        req.attempt,
        Outcome::Failed,
    );
    report.tag = req.tag.clone();

    let lock = match acquire(env, &req, on_busy, &mut cancel).await {
        Ok(Ok(lock)) => lock,
        Ok(Err(holder)) => {
            report.outcome = Outcome::Skipped;
            report.busy = Some(holder);
            return report;
        }
        Err(e) => {
            report.error = Some(e.to_string());
            report.finished_at = Utc::now();
            return report;
        }
    };

    let uid = crate::history::new_uid();
    let run = start_row(env, &req, &report, &uid);
    let inflight = crate::contain::InFlight::begin(&uid);
    let ran = make(env, &req, report, run, lock, &mut cancel, &events).await;
    let (mut report, (run_id, log, exec, ended_at)) = match ran {
        Ok(ran) => ran,
        Err(report) => return report,
    };

    drop(inflight);
    // In subreaper mode, what escaped this run (and no run in flight can own) is ended now.
    let strays = crate::contain::end_strays(env.config.scheduler.kill_grace).await;
    if strays > 0 {
        log.note(&format!(
            "ended {strays} process(es) that escaped a run and were adopted by the scheduler"
        ));
    }
    let (outcome, mut end) = judge(&job, &exec);
    end.finished_at = end.finished_at.or(Some(ended_at));
    log.note(&end_note(outcome, &end));
    let stuck = exec.stuck;
    report.stuck = stuck.is_some();
    let report = finish(env, report, outcome, end);
    // Only an embedded run's thread can be stuck.
    #[cfg(feature = "embedded")]
    if let Some(thread) = stuck {
        watch_stuck(env, &job.id, (run_id, &uid), thread, events);
    }
    #[cfg(not(feature = "embedded"))]
    let _ = (stuck, run_id, events);
    report
}

/// The run's start row, as it will be recorded.
fn start_row(env: &RunEnv, req: &RunRequest, report: &RunReport, uid: &str) -> StartRow {
    let job = &req.job;
    StartRow {
        id: env.recorder.next_id(),
        uid: uid.to_string(),
        job: job.id.clone(),
        trigger: req.trigger,
        scheduled_at: req.scheduled_at,
        started_at: report.started_at,
        attempt: req.attempt,
        executor: job.executor.as_str().to_string(),
        pid: None,
        owner: None,
        tag: req.tag.clone(),
    }
}

/// Makes the run with the job's executor: a process (subprocess or fork), or the embedded
/// interpreter. `Err`: the report of a run that could not be made.
async fn make(
    env: &RunEnv,
    req: &RunRequest,
    report: RunReport,
    run: StartRow,
    lock: JobLock,
    cancel: &mut watch::Receiver<Option<String>>,
    events: &Option<mpsc::UnboundedSender<RunEvent>>,
) -> std::result::Result<(RunReport, Ran), RunReport> {
    // Kept to record the run even if it cannot begin (its log cannot be opened, say).
    let start_copy = run.clone();
    match req.job.executor {
        Executor::Subprocess | Executor::Fork => {
            run_process(env, req, report, (run, start_copy), lock, cancel, events).await
        }
        #[cfg(not(feature = "embedded"))]
        Executor::Pyo3 => {
            let _ = (lock, cancel, events, run);
            Err(not_started(
                env,
                report,
                start_copy,
                "this hedge-scheduler was built without the embedded interpreter".to_string(),
            ))
        }
        #[cfg(feature = "embedded")]
        Executor::Pyo3 => {
            run_in_process(env, req, report, (run, start_copy), lock, cancel, events).await
        }
    }
}

/// What a run that was made leaves to judge: its row's id, its log, the executor's account and
/// when it ended.
type Ran = (i64, Arc<JobLog>, Execution, DateTime<Utc>);

/// A subprocess or fork run: a fork server ready (for a fork run), the log open, the slot's
/// instant waited for and the start recorded in one hand-off; then the run. `Err`: the report
/// of a run that could not be made.
async fn run_process(
    env: &RunEnv,
    req: &RunRequest,
    mut report: RunReport,
    (run, start_copy): (StartRow, StartRow),
    lock: JobLock,
    cancel: &mut watch::Receiver<Option<String>>,
    events: &Option<mpsc::UnboundedSender<RunEvent>>,
) -> std::result::Result<(RunReport, Ran), RunReport> {
    let job = Arc::clone(&req.job);
    let uid = run.uid.clone();
    // One hand-off: a fork server ready (for a fork run), open the log, wait for the
    // slot's instant and record the start.
    let env2 = env.clone();
    let at = req.not_before;
    let fork = job.executor == Executor::Fork;
    let begun = tokio::task::spawn_blocking(move || {
        let server = fork.then(|| env2.forks.server(&env2.config, &env2.python));
        begin_blocking(&env2, run, at).map(|begun| (begun, server))
    })
    .await;
    let ((run_id, started_at, log), server) = match begun {
        Ok(Ok(begun)) => begun,
        Ok(Err(e)) => return Err(not_started(env, report, start_copy, e.to_string())),
        Err(e) => {
            report.error = Some(format!("internal error: {e}"));
            report.finished_at = Utc::now();
            return Err(report);
        }
    };
    report.run_id = Some(run_id);
    report.run_uid = Some(uid.clone());
    report.started_at = started_at;
    let context = run_context(&env.config, &job, req, run_id, &uid).to_string();
    let exec = match server {
        None => run_subprocess(env, &job, (run_id, &uid), &context, &log, cancel, events).await,
        Some(server) => {
            let exec = fork::run_fork(
                env,
                server,
                &job,
                (run_id, &uid),
                &context,
                &log,
                cancel,
                events,
            )
            .await;
            // A server grown stale is replaced now, not when the next slot comes.
            let env2 = env.clone();
            drop(tokio::task::spawn_blocking(move || {
                if let Err(e) = env2.forks.warm(&env2.config, &env2.python) {
                    tracing::warn!("🍴 no fork server for the next run yet: {e}");
                }
            }));
            exec
        }
    };
    // The run ends as the job is let go: a run waiting for the job starts after it.
    let ended_at = Utc::now();
    drop(lock);
    Ok((report, (run_id, log, exec, ended_at)))
}

/// A pyo3 run, on the job's own Python thread (judged and recorded there when it ends there).
/// `Err`: the report of a run that ended on its thread, or could not be made.
#[cfg(feature = "embedded")]
async fn run_in_process(
    env: &RunEnv,
    req: &RunRequest,
    mut report: RunReport,
    (run, start_copy): (StartRow, StartRow),
    lock: JobLock,
    cancel: &mut watch::Receiver<Option<String>>,
    events: &Option<mpsc::UnboundedSender<RunEvent>>,
) -> std::result::Result<(RunReport, Ran), RunReport> {
    let job = Arc::clone(&req.job);
    let uid = run.uid.clone();
    let context = run_context(&env.config, &job, req, 0, &uid);
    match run_embedded(
        env,
        &job,
        run,
        req.not_before,
        context,
        cancel,
        events,
        lock,
    )
    .await
    {
        Ok(done) => {
            report.run_id = Some(done.run_id);
            report.run_uid = Some(uid.clone());
            report.started_at = done.started_at;
            if let Some((outcome, end)) = done.recorded {
                // Judged and recorded on the run's own thread already.
                report.outcome = outcome;
                report.finished_at = end.finished_at.unwrap_or_else(Utc::now);
                report.error = end.error;
                report.exit_code = end.exit_code;
                report.result = end.result;
                report.entered_at = end.entered_at;
                return Err(report);
            }
            let Some(log) = done.log else {
                report.error = Some("the job's thread never started".to_string());
                report.finished_at = Utc::now();
                return Err(report);
            };
            Ok((report, (done.run_id, log, done.exec, Utc::now())))
        }
        Err(e) => Err(not_started(env, report, start_copy, e.to_string())),
    }
}

/// Returns at wall-clock instant `at` (or at once if it has passed), to within tens of
/// microseconds: a thread sleep is finer than the async timer's millisecond ticks. Blocking. The
/// wait is measured on the monotonic clock and never longer than `MAX_SLOT_WAIT`, so a wall-clock
/// step during it can neither hold the run nor make it spin.
fn wait_until_blocking(at: DateTime<Utc>) {
    let Ok(ahead) = (at - Utc::now()).to_std() else {
        return;
    };
    std::thread::sleep(ahead.min(MAX_SLOT_WAIT));
}

/// On a blocking thread: opens the run's log, waits for the run's instant, records its start and
/// writes the start note. Returns the run id, when it started, and the log. Nothing here waits
/// for the history: the start row is a message to its writer.
fn begin_blocking(
    env: &RunEnv,
    mut run: StartRow,
    not_before: Option<DateTime<Utc>>,
) -> Result<(i64, DateTime<Utc>, Arc<JobLog>)> {
    let log = JobLog::cached(env, &run.job, run.id)?;
    if let Some(at) = not_before {
        wait_until_blocking(at);
    }
    run.started_at = Utc::now();
    let (run_id, started_at) = (run.id, run.started_at);
    log.note(&format!(
        "start: trigger={} scheduled_at={} attempt={} executor={}",
        run.trigger.as_str(),
        crate::history::fmt_time(run.scheduled_at),
        run.attempt,
        run.executor
    ));
    env.recorder.start(run);
    Ok((run_id, started_at, Arc::new(log)))
}

/// Takes the job's lock per `on_busy`; `Ok(Err(holder))` when the run must not start.
async fn acquire(
    env: &RunEnv,
    req: &RunRequest,
    on_busy: OnBusy,
    cancel: &mut watch::Receiver<Option<String>>,
) -> Result<std::result::Result<JobLock, String>> {
    if let Some(lock) = JobLock::try_acquire(&env.config, &req.job.id)? {
        return Ok(Ok(lock));
    }
    let config = Arc::clone(&env.config);
    let id = req.job.id.clone();
    // A read on its own connection: the writer is never held up, and a locked file only
    // shortens the description.
    let holder = tokio::task::spawn_blocking(move || {
        match History::open_read_only(&config.scheduler.history) {
            Ok(Some(h)) => describe_holder(&h, &config, &id),
            _ => "another process holds the job's lock".to_string(),
        }
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?;
    match on_busy {
        OnBusy::Refuse => Ok(Err(holder)),
        OnBusy::Skip => {
            let reason = format!("previous {holder}");
            env.record_skipped(&req.job.id, req.trigger, req.scheduled_at, &reason);
            Ok(Err(holder))
        }
        OnBusy::Wait => {
            let config = Arc::clone(&env.config);
            let id = req.job.id.clone();
            let wait = tokio::task::spawn_blocking(move || JobLock::acquire(&config, &id));
            tokio::select! {
                lock = wait => lock.map_err(|e| Error::Internal(format!("waiting for the job's lock failed: {e}")))?.map(Ok),
                reason = cancelled(cancel) => Err(Error::Interrupted(format!("gave up waiting: {reason}"))),
            }
        }
    }
}

/// Resolves with the reason once `cancel` carries one (never, if its sender is gone).
async fn cancelled(cancel: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(reason) = cancel.borrow_and_update().clone() {
            return reason;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A run that could not begin (its log cannot be opened, say) is recorded all the same:
/// `failed`, with why, so the history and `status` show the slot was not run.
fn not_started(env: &RunEnv, mut report: RunReport, run: StartRow, error: String) -> RunReport {
    tracing::error!(job = %run.job, "❗ {} could not start: {error}", run.job);
    report.run_id = Some(run.id);
    report.run_uid = Some(run.uid.clone());
    env.recorder.start(run);
    let end = RunEnd {
        error: Some(format!("could not start: {error}")),
        ..RunEnd::default()
    };
    finish(env, report, Outcome::Failed, end)
}

fn finish(env: &RunEnv, mut report: RunReport, outcome: Outcome, end: RunEnd) -> RunReport {
    let finished_at = end.finished_at.unwrap_or_else(Utc::now);
    report.outcome = outcome;
    report.finished_at = finished_at;
    report.error = end.error.clone();
    report.exit_code = end.exit_code;
    report.result = end.result.clone();
    report.entered_at = end.entered_at;
    if let Some(uid) = &report.run_uid {
        let end = RunEnd {
            finished_at: Some(finished_at),
            ..end
        };
        env.recorder.finish(uid, outcome, end);
    }
    report
}
