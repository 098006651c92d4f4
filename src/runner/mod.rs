//! One run of one job: its cross-process lock, its history row, its process group (or embedded
//! thread), its output, its timeout, its outcome.
//!
//! A run always ends in a recorded `Outcome`; failures of the job are never `Err`. A subprocess's
//! output is read continuously, line by line, into the job's log file, so a chatty job can never
//! block on a full pipe. The job's lock (`<log_dir>/locks/<job>.lock`) is held for the whole run —
//! for an embedded run whose thread is stuck in C code, until that thread really returns — so a
//! job never runs twice at once, whichever process starts it.

#[cfg(feature = "embedded")]
mod embedded;
mod fork;
mod forkserver;
mod job_log;
mod judge;
mod lock;
pub(crate) mod prepare;
mod subprocess;

#[cfg(feature = "embedded")]
use embedded::*;
pub use forkserver::ForkPool;
pub(crate) use forkserver::StartError;
pub use job_log::JobLog;
pub(crate) use job_log::rotate_daily;
use job_log::*;
use judge::*;
pub use lock::{JobLock, describe_holder};
use subprocess::*;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::{mpsc, watch};

use crate::config::{Config, Entry, Executor, Job};
use crate::error::{Error, Result};
use crate::history::{History, Outcome, Recorder, RunEnd, RunTag, StartRow, TriggerKind};

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

/// A run to make.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub job: Arc<Job>,
    pub trigger: TriggerKind,
    pub scheduled_at: DateTime<Utc>,
    pub attempt: u32,
    /// The run starts at this instant exactly, not earlier: the daemon fires a few milliseconds
    /// ahead so the run's preparation is done by then.
    pub not_before: Option<DateTime<Utc>>,
    /// Cluster mode: the node and the slot's fence (the claim was won before the run).
    pub tag: Option<RunTag>,
}

/// What to do when another process holds the job's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBusy {
    /// Record the slot as `skipped` (the daemon).
    Skip,
    /// Record nothing; the report says who holds it (`run-once`).
    Refuse,
    /// Wait for the lock (`run-once --wait`).
    Wait,
}

/// What a run tells the daemon while and after it runs.
#[derive(Debug)]
pub enum RunEvent {
    Started {
        job: String,
        run_id: i64,
        /// The run's identity (a UUIDv7).
        uid: String,
        pid: Option<u32>,
    },
    Finished(Box<RunReport>),
    /// Cluster mode: the run's slot was claimed under this tag (before the run starts).
    Claimed {
        job: String,
        tag: crate::history::RunTag,
    },
    /// An embedded run that had timed out stuck has finally returned: its slot is free.
    #[cfg_attr(not(feature = "embedded"), allow(dead_code))]
    Released {
        job: String,
    },
}

/// How a run ended, as reported to the daemon or printed by `run-once`.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub job: String,
    pub run_id: Option<i64>,
    /// The run's identity (a UUIDv7), unique across restarts and history files.
    pub run_uid: Option<String>,
    pub trigger: TriggerKind,
    pub scheduled_at: DateTime<Utc>,
    pub attempt: u32,
    pub outcome: Outcome,
    pub started_at: DateTime<Utc>,
    /// When the job's function (or command) was entered.
    pub entered_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub result: Option<String>,
    /// Who holds the job when the run did not start because of it.
    pub busy: Option<String>,
    /// An embedded run whose thread has not returned: the job's slot stays held.
    pub stuck: bool,
    /// Cluster mode: the slot was claimed by this other node (nothing to say about it here).
    pub taken_by: Option<String>,
    /// Cluster mode: the claim the run ran under.
    pub tag: Option<RunTag>,
}

impl RunReport {
    /// A report of a run of `job` that ends (or starts) now with `outcome`, nothing else known.
    pub fn new(
        job: String,
        trigger: TriggerKind,
        scheduled_at: DateTime<Utc>,
        attempt: u32,
        outcome: Outcome,
    ) -> RunReport {
        let now = Utc::now();
        RunReport {
            job,
            run_id: None,
            run_uid: None,
            trigger,
            scheduled_at,
            attempt,
            outcome,
            started_at: now,
            entered_at: None,
            finished_at: now,
            error: None,
            exit_code: None,
            result: None,
            busy: None,
            stuck: false,
            taken_by: None,
            tag: None,
        }
    }

    pub fn duration(&self) -> Duration {
        (self.finished_at - self.started_at)
            .to_std()
            .unwrap_or_default()
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

/// The tag the processes of a run written before schema 6 (no uid) carried: owner PID and run id.
pub fn legacy_run_tag(owner_pid: u32, run_id: i64) -> String {
    format!("{owner_pid}-{run_id}")
}

/// How a run went whose process finished while its scheduler was dead, from the result it left;
/// `None` when it left none (or its job is no longer configured).
pub fn judge_left_result(config: &Config, job: &str, uid: &str) -> Option<(Outcome, RunEnd)> {
    let job = config.job(job)?;
    let runtime = crate::log_dir::runtime_dir(&config.scheduler.log_dir).ok()?;
    let bridge = take_result(&result_path(&runtime, uid))?;
    Some(judge_left(
        job,
        bridge,
        "recorded at the next start: it finished while the scheduler was down",
    ))
}

/// How a run went from the result it left, with `note` added to its error.
fn judge_left(job: &Job, bridge: BridgeOutcome, note: &str) -> (Outcome, RunEnd) {
    let finished_at = bridge.finished_at.and_then(epoch_to_utc);
    let mut exec = Execution::new(Ended::Exited(None));
    exec.bridge = Some(bridge);
    let (outcome, mut end) = judge(job, &exec);
    end.finished_at = finished_at;
    end.error = Some(match end.error {
        Some(e) => format!("{e}; {note}"),
        None => note.to_string(),
    });
    (outcome, end)
}

/// Results left in the runtime folder by runs of dead processes that the history has no row
/// for (their rows were lost with a crash while the history refused writes): each is recorded,
/// whole, from what the result says, so its slot counts as run and is never run again. Returns
/// how many.
pub fn record_left_results(config: &Config, history: &History, recorder: &Recorder) -> usize {
    let Ok(runtime) = crate::log_dir::runtime_dir(&config.scheduler.log_dir) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(&runtime) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(uid) = path
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_suffix(".json"))
        else {
            continue;
        };
        match history.run_by_uid(uid) {
            // Recorded (or being settled from this file at start-up): nothing to add.
            Ok(Some(row)) if row.outcome != Outcome::Running => {
                let _ = take_result(&path);
                continue;
            }
            Ok(None) => {}
            _ => continue,
        }
        let Some(bridge) = take_result_if_orphaned(&path) else {
            continue;
        };
        let Some(run) = bridge.run.clone() else {
            continue;
        };
        let (Some(job), Some(scheduled_at)) = (
            config.job(&run.job),
            DateTime::parse_from_rfc3339(&run.scheduled_at)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        ) else {
            continue;
        };
        let started_at = bridge
            .entered_at
            .and_then(epoch_to_utc)
            .unwrap_or(scheduled_at);
        recorder.start(StartRow {
            id: recorder.next_id(),
            uid: uid.to_string(),
            job: run.job.clone(),
            trigger: TriggerKind::parse(&run.trigger).unwrap_or(TriggerKind::Schedule),
            scheduled_at,
            started_at,
            attempt: run.attempt.unwrap_or(1),
            executor: job.executor.as_str().to_string(),
            pid: None,
            owner: run.owner,
            tag: recorder.tag(),
        });
        let (outcome, end) = judge_left(
            job,
            bridge,
            "recorded at the next start from the result it left: the history had lost its row",
        );
        recorder.finish(uid, outcome, end);
        n += 1;
    }
    n
}

/// Takes a result whose writer's scheduler is gone (a live one reads its own).
fn take_result_if_orphaned(path: &std::path::Path) -> Option<BridgeOutcome> {
    let text = std::fs::read(path).ok()?;
    let bridge = parse_bridge(&text)?;
    let owner = bridge.run.as_ref()?.owner?;
    if crate::process::scheduler_alive(i64::from(owner)) {
        return None;
    }
    take_result(path)
}

/// Where run `uid`'s bridge leaves its outcome, its runtime folder made if need be; why not.
fn run_result_file(env: &RunEnv, uid: &str) -> std::result::Result<PathBuf, String> {
    crate::log_dir::runtime_dir(&env.config.scheduler.log_dir)
        .map(|dir| result_path(&dir, uid))
        .map_err(|e| format!("cannot prepare the runtime folder: {e}"))
}

/// Where a subprocess run's bridge leaves its outcome: `<runtime>/<uid>.json`.
pub fn result_path(runtime: &std::path::Path, uid: &str) -> PathBuf {
    runtime.join(format!("{uid}.json"))
}

/// Reads and removes a run's result file (never through a link); `None` when there is none or
/// it does not parse.
pub(crate) fn take_result(path: &std::path::Path) -> Option<BridgeOutcome> {
    use std::io::Read;
    let mut text = Vec::new();
    let read = crate::private::open(path, crate::private::Open::Read)
        .and_then(|mut f| f.read_to_end(&mut text));
    let _ = std::fs::remove_file(path);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let _ = std::fs::remove_file(tmp);
    read.ok()?;
    parse_bridge(&text)
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

/// A session as the run context gives it: its date, open and close with the exchange's offset,
/// and its kind (`regular`, `early_close` or `special`).
fn session_json(tz: chrono_tz::Tz, s: &crate::calendar::Session) -> serde_json::Value {
    use chrono::TimeZone;
    let at = |t: chrono::NaiveTime| {
        tz.from_local_datetime(&s.date.and_time(t))
            .earliest()
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, false))
    };
    serde_json::json!({
        "date": s.date.to_string(),
        "open": at(s.open),
        "close": at(s.close),
        "kind": match s.kind {
            crate::calendar::SessionKind::Regular => "regular",
            crate::calendar::SessionKind::EarlyClose => "early_close",
            crate::calendar::SessionKind::LateOpen | crate::calendar::SessionKind::Special => "special",
        },
    })
}

/// What the calendar says of a run at `scheduled_at`: the exchange's session that day (`null`
/// when closed), the last session opened at or before it, the slot before it (the start of the
/// data interval the run covers) and when its timeout hits.
pub(crate) fn context_times(
    calendar: &crate::calendar::Calendar,
    trigger: Option<&crate::trigger::Trigger>,
    scheduled_at: DateTime<Utc>,
    started_at: DateTime<Utc>,
    timeout: std::time::Duration,
) -> serde_json::Map<String, serde_json::Value> {
    let tz = calendar.tz();
    let date = scheduled_at.with_timezone(&tz).date_naive();
    let session = calendar.session(date);
    let last_session = (0..=30)
        .filter_map(|back| date.checked_sub_days(chrono::Days::new(back)))
        .filter_map(|d| calendar.session(d))
        .find(|s| {
            use chrono::TimeZone;
            tz.from_local_datetime(&s.date.and_time(s.open))
                .earliest()
                .is_some_and(|open| open <= scheduled_at)
        });
    let rfc = |t: DateTime<Utc>| {
        t.with_timezone(&tz)
            .to_rfc3339_opts(SecondsFormat::Micros, false)
    };
    let mut m = serde_json::Map::new();
    m.insert(
        "session".into(),
        session
            .as_ref()
            .map_or(serde_json::Value::Null, |s| session_json(tz, s)),
    );
    m.insert(
        "last_session".into(),
        last_session
            .as_ref()
            .map_or(serde_json::Value::Null, |s| session_json(tz, s)),
    );
    m.insert(
        "interval_start".into(),
        trigger
            .and_then(|t| t.previous_fire_before(calendar, scheduled_at))
            .map(rfc)
            .into(),
    );
    m.insert(
        "deadline".into(),
        chrono::Duration::from_std(timeout)
            .ok()
            .map(|d| rfc(started_at + d))
            .into(),
    );
    m
}

/// The run context handed to Python, as JSON.
fn run_context(
    config: &Config,
    job: &Job,
    req: &RunRequest,
    run_id: i64,
    uid: &str,
) -> serde_json::Value {
    let tz = config.scheduler.exchange.tz();
    let entry = match &job.entry {
        Entry::Script(path) => config.python.cwd.join(path).display().to_string(),
        other => other.to_string(),
    };
    let mut context = serde_json::json!({
        "job": job.id,
        "name": job.name,
        "entry": entry,
        "run_id": run_id,
        "run_uid": uid,
        "owner": std::process::id(),
        "scheduled_at": req.scheduled_at.with_timezone(&tz).to_rfc3339_opts(SecondsFormat::Micros, false),
        "attempt": req.attempt,
        "trigger": req.trigger.as_str(),
        "args": job.args,
        "exchange": config.scheduler.exchange.code(),
        "timezone": tz.name(),
        "node": req.tag.as_ref().map(|t| &t.node),
        "fence": req.tag.as_ref().and_then(|t| t.fence),
        "degraded": req.tag.as_ref().is_some_and(|t| t.degraded),
    });
    if let Some(map) = context.as_object_mut() {
        map.extend(context_times(
            &config.calendar(),
            Some(&job.trigger),
            req.scheduled_at,
            Utc::now(),
            job.timeout,
        ));
    }
    context
}
