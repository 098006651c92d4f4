//! One run of one job: its cross-process lock, its history row, its process group (or embedded
//! thread), its output, its timeout, its outcome.
//!
//! A run always ends in a recorded `Outcome`; failures of the job are never `Err`. A subprocess's
//! output is read continuously, line by line, into the job's log file, so a chatty job can never
//! block on a full pipe. The job's lock (`<log_dir>/locks/<job>.lock`) is held for the whole run —
//! for an embedded run whose thread is stuck in C code, until that thread really returns — so a
//! job never runs twice at once, whichever process starts it.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use crate::config::{Config, Entry, Executor, Job};
use crate::error::{Error, Result};
use crate::history::{History, Outcome, Recorder, RunEnd, StartRow, TriggerKind};
use crate::process;

/// A line longer than this is written out in pieces.
const MAX_LINE: usize = 64 * 1024;
/// How many trailing stderr lines are kept to explain a failure without a result.
const STDERR_TAIL: usize = 8;

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
}

impl RunEnv {
    pub fn new(config: Arc<Config>, python: PathBuf, recorder: Recorder) -> RunEnv {
        RunEnv {
            config,
            python,
            recorder,
            log_files: Arc::default(),
        }
    }

    /// The same history and job logs with a reloaded config.
    pub fn with_config(&self, config: Arc<Config>, python: PathBuf) -> RunEnv {
        RunEnv {
            config,
            python,
            recorder: self.recorder.clone(),
            log_files: Arc::clone(&self.log_files),
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
        pid: Option<u32>,
    },
    Finished(RunReport),
    /// An embedded run that had timed out stuck has finally returned: its slot is free.
    Released {
        job: String,
        run_id: i64,
    },
}

/// How a run ended, as reported to the daemon or printed by `run-once`.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub job: String,
    pub run_id: Option<i64>,
    pub trigger: TriggerKind,
    pub scheduled_at: DateTime<Utc>,
    pub attempt: u32,
    pub outcome: Outcome,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub result: Option<String>,
    /// Who holds the job when the run did not start because of it.
    pub busy: Option<String>,
    /// An embedded run whose thread has not returned: the job's slot stays held.
    pub stuck: bool,
}

impl RunReport {
    pub fn duration(&self) -> Duration {
        (self.finished_at - self.started_at)
            .to_std()
            .unwrap_or_default()
    }
}

/// The JSON `hedge_bridge` reports.
#[derive(Debug, Deserialize)]
struct BridgeOutcome {
    status: String,
    #[serde(default)]
    result: serde_json::Value,
    error: Option<String>,
    exit_code: Option<i32>,
    entered_at: Option<f64>,
}

/// Why a run's wait ended; the exit status is `None` for an embedded run.
enum Ended {
    Exited(Option<ExitStatus>),
    TimedOut(Option<ExitStatus>),
    Cancelled(Option<ExitStatus>, String),
    /// Its process tree went past `max_memory` (bytes seen).
    OverMemory(Option<ExitStatus>, u64),
}

/// How often a subprocess run's process tree is sampled (memory, CPU).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What an executor hands back.
struct Execution {
    ended: Ended,
    bridge: Option<BridgeOutcome>,
    /// Why there is no bridge outcome (could not start, could not call).
    failure: Option<String>,
    stderr_tail: Vec<String>,
    /// An embedded thread that outlived its run; resolves when it returns and frees the job.
    stuck: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Sampled memory and CPU of a subprocess run.
    usage: Option<process::TreeUsage>,
}

impl Execution {
    fn new(ended: Ended) -> Execution {
        Execution {
            ended,
            bridge: None,
            failure: None,
            stderr_tail: Vec::new(),
            stuck: None,
            usage: None,
        }
    }
}

/// A job's cross-process lock, held for the length of a run.
pub struct JobLock {
    _file: File,
}

impl JobLock {
    fn path(config: &Config, job: &str) -> PathBuf {
        config
            .scheduler
            .log_dir
            .join("locks")
            .join(format!("{job}.lock"))
    }

    fn open(path: &Path) -> Result<File> {
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
        };
        match open() {
            Ok(f) => Ok(f),
            // The folder is made on first use (or again, if someone removed it).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
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
    let now = Utc::now();
    let mut report = RunReport {
        job: job.id.clone(),
        run_id: None,
        trigger: req.trigger,
        scheduled_at: req.scheduled_at,
        attempt: req.attempt,
        outcome: Outcome::Failed,
        started_at: now,
        finished_at: now,
        error: None,
        exit_code: None,
        result: None,
        busy: None,
        stuck: false,
    };

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

    let run = StartRow {
        id: env.recorder.next_id(),
        job: job.id.clone(),
        trigger: req.trigger,
        scheduled_at: req.scheduled_at,
        started_at: report.started_at,
        attempt: req.attempt,
        executor: job.executor.as_str(),
    };
    let (run_id, log, exec) = match job.executor {
        Executor::Subprocess => {
            // One hand-off: open the log, wait for the slot's instant and record the start.
            let env2 = env.clone();
            let at = req.not_before;
            let begun = tokio::task::spawn_blocking(move || begin_blocking(&env2, run, at)).await;
            let (run_id, started_at, log) = match begun {
                Ok(Ok(begun)) => begun,
                Ok(Err(e)) => {
                    report.error = Some(e.to_string());
                    report.finished_at = Utc::now();
                    return report;
                }
                Err(e) => {
                    report.error = Some(format!("internal error: {e}"));
                    report.finished_at = Utc::now();
                    return report;
                }
            };
            report.run_id = Some(run_id);
            report.started_at = started_at;
            let context = run_context(&env.config, &job, &req, run_id).to_string();
            let exec =
                run_subprocess(env, &job, run_id, &context, &log, &mut cancel, &events).await;
            drop(lock);
            (run_id, log, exec)
        }
        Executor::Pyo3 => {
            let context = run_context(&env.config, &job, &req, 0);
            match run_embedded(
                env,
                &job,
                run,
                req.not_before,
                context,
                &mut cancel,
                &events,
                lock,
            )
            .await
            {
                Ok(done) => {
                    report.run_id = Some(done.run_id);
                    report.started_at = done.started_at;
                    if let Some((outcome, end)) = done.recorded {
                        // Judged and recorded on the run's own thread already.
                        report.outcome = outcome;
                        report.finished_at = end.finished_at.unwrap_or_else(Utc::now);
                        report.error = end.error;
                        report.exit_code = end.exit_code;
                        report.result = end.result;
                        return report;
                    }
                    let Some(log) = done.log else {
                        report.error = Some("the job's thread never started".to_string());
                        report.finished_at = Utc::now();
                        return report;
                    };
                    (done.run_id, log, done.exec)
                }
                Err(e) => {
                    report.error = Some(e.to_string());
                    report.finished_at = Utc::now();
                    return report;
                }
            }
        }
    };

    let (outcome, end) = judge(&job, &exec);
    log.note(&end_note(outcome, &end));
    let stuck = exec.stuck;
    report.stuck = stuck.is_some();
    let report = finish(env, report, outcome, end);
    if let Some(thread) = stuck {
        watch_stuck(env, &job.id, run_id, thread, events);
    }
    report
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
    .map_err(|e| Error::Other(format!("internal error: {e}")))?;
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
                lock = wait => lock.map_err(|e| Error::Other(format!("waiting for the job's lock failed: {e}")))?.map(Ok),
                reason = cancelled(cancel) => Err(Error::Other(format!("gave up waiting: {reason}"))),
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

/// The tag every process of run `run_id` of owner `pid` carries in its environment.
pub fn run_tag(owner_pid: u32, run_id: i64) -> String {
    format!("{owner_pid}-{run_id}")
}

/// A run as a short-lived process in a new process group: `python -m hedge_bridge` for a
/// function or a script, the program itself for a command.
async fn run_subprocess(
    env: &RunEnv,
    job: &Job,
    run_id: i64,
    context: &str,
    log: &Arc<JobLog>,
    cancel: &mut watch::Receiver<Option<String>>,
    events: &Option<mpsc::UnboundedSender<RunEvent>>,
) -> Execution {
    let result_file = std::env::temp_dir().join(format!(
        "hedge-scheduler-{}-{run_id}.json",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&result_file);
    let tag = run_tag(std::process::id(), run_id);
    let mut cmd = match &job.entry {
        Entry::Command(argv) => {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            cmd
        }
        Entry::Function { .. } | Entry::Script(_) => {
            let mut cmd = Command::new(&env.python);
            cmd.arg("-m").arg("hedge_bridge");
            cmd
        }
    };
    cmd.current_dir(&env.config.python.cwd)
        .env("PYTHONPATH", python_path(&env.config.python.path))
        .env("PYTHONUNBUFFERED", "1")
        .env("HEDGE_CONTEXT", context)
        .env("HEDGE_RESULT_FILE", &result_file)
        .env(process::RUN_TAG, &tag)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(venv) = &env.config.python.venv {
        cmd.env("VIRTUAL_ENV", venv);
    }
    let mut exec = Execution::new(Ended::Exited(None));
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let program = match &job.entry {
                Entry::Command(argv) => argv[0].clone(),
                _ => env.python.display().to_string(),
            };
            let msg = format!("cannot start `{program}`: {e}");
            log.note(&msg);
            exec.failure = Some(msg);
            return exec;
        }
    };
    let pid = child.id().unwrap_or(0);
    log.note(&format!("process group {pid}"));
    env.recorder.set_pid(run_id, pid);
    if let Some(tx) = events {
        let _ = tx.send(RunEvent::Started {
            job: job.id.clone(),
            run_id,
            pid: Some(pid),
        });
    }

    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    let pumps = [
        child
            .stdout
            .take()
            .map(|out| tokio::spawn(pump(out, Arc::clone(log), "stdout", None))),
        child.stderr.take().map(|err| {
            tokio::spawn(pump(
                err,
                Arc::clone(log),
                "stderr",
                Some(Arc::clone(&tail)),
            ))
        }),
    ];

    let usage = Arc::new(Mutex::new(process::TreeUsage::default()));
    let (over_tx, mut over_rx) = watch::channel::<Option<u64>>(None);
    let sampler = tokio::spawn(sample(pid, Arc::clone(&usage), job.max_memory, over_tx));
    let grace = env.config.scheduler.kill_grace;
    let deadline = tokio::time::Instant::now() + job.timeout;
    exec.ended = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => Ended::Exited(Some(s)),
            Err(e) => {
                tracing::error!(job = %job.id, run_id, "waiting for the job failed: {e}");
                Ended::Cancelled(process::terminate_group(&mut child, pid, grace).await.ok(), format!("waiting failed: {e}"))
            }
        },
        _ = tokio::time::sleep_until(deadline) => {
            log.note(&format!("timeout after {}: ending process group {pid}", humantime::format_duration(job.timeout)));
            Ended::TimedOut(process::terminate_group(&mut child, pid, grace).await.ok())
        },
        reason = cancelled(cancel) => {
            log.note(&format!("cancelled ({reason}): ending process group {pid}"));
            Ended::Cancelled(process::terminate_group(&mut child, pid, grace).await.ok(), reason)
        },
        Ok(()) = over_rx.changed() => {
            let rss = over_rx.borrow().unwrap_or_default();
            log.note(&format!("memory {} is over max_memory: ending process group {pid}", bytes(rss)));
            Ended::OverMemory(process::terminate_group(&mut child, pid, grace).await.ok(), rss)
        },
    };
    sampler.abort();
    exec.usage = usage.lock().ok().map(|u| u.clone());
    // Nothing outlives a run: what the job left in its group, and anything that carries the
    // run's tag after leaving the group (a new session, a double fork).
    if process::end_stragglers(pid, grace).await {
        log.note("ended processes the job left running in its group");
    }
    let escaped = process::end_tagged(&tag, grace).await;
    if escaped > 0 {
        log.note(&format!(
            "ended {escaped} process(es) that left the job's group"
        ));
    }
    for pump in pumps.into_iter().flatten() {
        // A process outside the group could hold the pipe open: do not wait on it for long.
        let abort = pump.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), pump)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    exec.bridge = std::fs::read_to_string(&result_file)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let _ = std::fs::remove_file(&result_file);
    exec.stderr_tail = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    exec
}

/// Samples the run's process tree until aborted; reports the first sample over `limit`.
async fn sample(
    pid: u32,
    usage: Arc<Mutex<process::TreeUsage>>,
    limit: Option<u64>,
    over: watch::Sender<Option<u64>>,
) {
    let Ok(mut sys) = sysinfo::System::new() else {
        return;
    };
    let mut delay = Duration::from_millis(100);
    loop {
        tokio::time::sleep(delay).await;
        delay = SAMPLE_EVERY;
        let usage_in = Arc::clone(&usage);
        let Ok((back, rss)) = tokio::task::spawn_blocking(move || {
            let rss = usage_in
                .lock()
                .map(|mut u| u.sample(&mut sys, pid))
                .unwrap_or(0);
            (sys, rss)
        })
        .await
        else {
            return;
        };
        sys = back;
        if limit.is_some_and(|l| rss > l) {
            let _ = over.send(Some(rss));
            return;
        }
    }
}

/// `2.3 GiB`, `512.0 MiB`.
pub fn bytes(n: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let n = n as f64;
    if n >= GIB {
        format!("{:.1} GiB", n / GIB)
    } else {
        format!("{:.1} MiB", n / (1024.0 * 1024.0))
    }
}

/// What an embedded run's thread hands back.
enum EmbeddedEnd {
    /// It could not begin (the job log could not be opened).
    NotStarted(Error),
    /// Python returned and the thread judged and recorded the run itself (the common case: no
    /// further hand-off).
    Recorded(Box<(Execution, Outcome, RunEnd)>),
    /// Python returned after the run was interrupted: the async side judges it.
    Returned(std::result::Result<String, String>),
}

/// What an embedded run's thread publishes once its start is recorded: id, start, log.
type Begun = Arc<Mutex<Option<(i64, DateTime<Utc>, Arc<JobLog>)>>>;

/// How an embedded run went, for `run` to report.
struct Embedded {
    run_id: i64,
    started_at: DateTime<Utc>,
    log: Option<Arc<JobLog>>,
    exec: Execution,
    /// Set when the run's thread already recorded its end.
    recorded: Option<(Outcome, RunEnd)>,
}

/// A run in the embedded interpreter: one blocking thread waits for the slot, records the
/// start, calls Python holding the job's lock until Python returns, and records the end. The
/// async side only watches the timeout and cancellation.
#[allow(clippy::too_many_arguments)]
async fn run_embedded(
    env: &RunEnv,
    job: &Arc<Job>,
    run: StartRow,
    not_before: Option<DateTime<Utc>>,
    mut context: serde_json::Value,
    cancel: &mut watch::Receiver<Option<String>>,
    events: &Option<mpsc::UnboundedSender<RunEvent>>,
    lock: JobLock,
) -> Result<Embedded> {
    let phase = Arc::new(crate::python::RunPhase::default());
    // Filled by the thread once the start is recorded.
    let begun: Begun = Arc::new(Mutex::new(None));
    let log_file = crate::python::log_file(&env.config, &job.id);
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let (released_tx, released_rx) = tokio::sync::oneshot::channel::<()>();
    let submitted = {
        let (phase, begun, env2) = (Arc::clone(&phase), Arc::clone(&begun), env.clone());
        let (job, events, entry) = (Arc::clone(job), events.clone(), job.entry.to_string());
        crate::python::submit(&job.id.clone(), move |py| {
            // Tells a watcher of a stuck run that the thread is free again, however it ends.
            let _released = Released(Some(released_tx));
            let _lock = lock;
            let (run_id, started_at, log) = match begin_blocking(&env2, run, not_before) {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(EmbeddedEnd::NotStarted(e));
                    return;
                }
            };
            if let Ok(mut b) = begun.lock() {
                *b = Some((run_id, started_at, Arc::clone(&log)));
            }
            if let Some(tx) = &events {
                let _ = tx.send(RunEvent::Started {
                    job: job.id.clone(),
                    run_id,
                    pid: None,
                });
            }
            context["run_id"] = run_id.into();
            let outcome =
                crate::python::call(py, &entry, &context.to_string(), &log_file, run_id, &phase);
            if phase.interrupted() {
                let _ = tx.send(EmbeddedEnd::Returned(outcome));
                return;
            }
            let exec = embedded_execution(outcome);
            let (o, mut end) = judge(&job, &exec);
            end.finished_at = Some(Utc::now());
            log.note(&end_note(o, &end));
            env2.recorder.finish(run_id, o, end.clone());
            let _ = tx.send(EmbeddedEnd::Recorded(Box::new((exec, o, end))));
        })
    };
    submitted?;
    let grace = env.config.scheduler.kill_grace;
    let lead = not_before
        .and_then(|at| (at - Utc::now()).to_std().ok())
        .unwrap_or_default()
        .min(MAX_SLOT_WAIT);
    let deadline = tokio::time::Instant::now() + lead + job.timeout;
    let begun_now = |begun: &Begun| begun.lock().ok().and_then(|b| b.clone());
    let (returned, ended) = tokio::select! {
        r = &mut rx => (Some(r), Ended::Exited(None)),
        _ = tokio::time::sleep_until(deadline) => {
            if let Some((_, _, log)) = begun_now(&begun) {
                log.note(&format!("timeout after {}: raising JobTimeout in the job's thread", humantime::format_duration(job.timeout)));
            }
            interrupt(&phase, true);
            (None, Ended::TimedOut(None))
        },
        reason = cancelled(cancel) => {
            if let Some((_, _, log)) = begun_now(&begun) {
                log.note(&format!("cancelled ({reason}): raising JobCancelled in the job's thread"));
            }
            interrupt(&phase, false);
            (None, Ended::Cancelled(None, reason))
        },
    };
    let returned = match returned {
        Some(r) => Some(r),
        // Interrupted: give the exception the grace period to unwind the job.
        None => tokio::time::timeout(grace, &mut rx).await.ok(),
    };
    let begun_state = begun_now(&begun);
    let (run_id, started_at, log) = match (&returned, begun_state) {
        (Some(Ok(EmbeddedEnd::NotStarted(_))), _) => {
            let Some(Ok(EmbeddedEnd::NotStarted(e))) = returned else {
                unreachable!("matched just above")
            };
            return Err(e);
        }
        (_, Some((id, at, log))) => (id, at, Some(log)),
        (_, None) => (0, Utc::now(), None),
    };
    let mut exec = Execution::new(ended);
    let mut recorded = None;
    match returned {
        Some(Ok(EmbeddedEnd::Recorded(done))) => {
            let (done_exec, o, end) = *done;
            exec = done_exec;
            recorded = Some((o, end));
        }
        Some(Ok(EmbeddedEnd::Returned(Ok(json)))) => exec.bridge = serde_json::from_str(&json).ok(),
        Some(Ok(EmbeddedEnd::Returned(Err(e)))) => exec.failure = Some(e),
        Some(Ok(EmbeddedEnd::NotStarted(e))) => exec.failure = Some(e.to_string()),
        Some(Err(_)) => exec.failure = Some("the job's thread ended without an outcome".into()),
        None => {
            if let Some(log) = &log {
                log.note("the job's thread did not return: it is stuck in native code and keeps the job's slot until it returns");
            }
            exec.stuck = Some(released_rx);
        }
    }
    Ok(Embedded {
        run_id,
        started_at,
        log,
        exec,
        recorded,
    })
}

/// Signals, when dropped, that an embedded run's thread is done with it.
struct Released(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Released {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// The execution of an embedded run that returned normally.
fn embedded_execution(outcome: std::result::Result<String, String>) -> Execution {
    let mut exec = Execution::new(Ended::Exited(None));
    match outcome {
        Ok(json) => exec.bridge = serde_json::from_str(&json).ok(),
        Err(e) => exec.failure = Some(e),
    }
    exec
}

/// The log's closing line for a run.
fn end_note(outcome: Outcome, end: &RunEnd) -> String {
    format!(
        "end: {}{}",
        outcome.as_str(),
        end.error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    )
}

/// Raises the interrupt from a blocking thread: it needs the GIL, which the job may hold.
fn interrupt(phase: &Arc<crate::python::RunPhase>, timeout: bool) {
    let phase = Arc::clone(phase);
    tokio::task::spawn_blocking(move || crate::python::interrupt(&phase, timeout));
}

/// Marks a stuck embedded run in the history and releases its job when the thread returns.
fn watch_stuck(
    env: &RunEnv,
    job: &str,
    run_id: i64,
    thread: tokio::sync::oneshot::Receiver<()>,
    events: Option<mpsc::UnboundedSender<RunEvent>>,
) {
    let recorder = env.recorder.clone();
    let job = job.to_string();
    recorder.set_stuck(run_id, true);
    tokio::spawn(async move {
        let _ = thread.await;
        recorder.set_stuck(run_id, false);
        tracing::info!(job = %job, run_id, "the stuck thread of run {run_id} returned: {job} is free again");
        if let Some(tx) = events {
            let _ = tx.send(RunEvent::Released { job, run_id });
        }
    });
}

/// Decides the outcome of a run from how it ended and what the bridge reported.
fn judge(job: &Job, exec: &Execution) -> (Outcome, RunEnd) {
    let bridge = exec.bridge.as_ref();
    let mut end = RunEnd {
        entered_at: bridge.and_then(|b| b.entered_at).and_then(epoch_to_utc),
        ..RunEnd::default()
    };
    let status = match &exec.ended {
        Ended::Exited(s)
        | Ended::TimedOut(s)
        | Ended::Cancelled(s, _)
        | Ended::OverMemory(s, _) => *s,
    };
    if let Some(u) = &exec.usage {
        end.peak_rss_bytes = (u.peak_rss > 0).then_some(u.peak_rss);
        end.cpu_ms = (u.peak_rss > 0).then(|| u.cpu_ms());
    }
    end.exit_code = status.and_then(|s| s.code());
    end.signal = status.and_then(|s| s.signal()).map(process::signal_name);
    let outcome = match &exec.ended {
        Ended::TimedOut(_) => {
            let mut error = format!(
                "timed out after {}",
                humantime::format_duration(job.timeout)
            );
            if exec.stuck.is_some() {
                error.push_str("; its thread is stuck in native code and holds the job's slot until it returns");
            }
            end.error = Some(error);
            Outcome::Timeout
        }
        Ended::Cancelled(_, reason) => {
            end.error = Some(format!("cancelled: {reason}"));
            Outcome::Cancelled
        }
        Ended::OverMemory(_, rss) => {
            end.error = Some(format!(
                "memory: the job's processes used {}, over max_memory {}",
                bytes(*rss),
                bytes(job.max_memory.unwrap_or_default())
            ));
            Outcome::Failed
        }
        Ended::Exited(Some(status)) if status.signal().is_some() => {
            let sig = process::signal_name(status.signal().unwrap_or_default());
            end.error = Some(format!("killed by {sig}"));
            Outcome::Crashed
        }
        Ended::Exited(status) => {
            let code = status.and_then(|s| s.code());
            match (&job.entry, bridge, &exec.failure) {
                (_, _, Some(failure)) => {
                    end.error = Some(failure.clone());
                    Outcome::Failed
                }
                // A command reports by its exit code alone.
                (Entry::Command(_), _, None) => {
                    if code == Some(0) {
                        Outcome::Success
                    } else {
                        end.error = Some(explain(code, &exec.stderr_tail));
                        Outcome::Failed
                    }
                }
                (_, Some(b), None) => match (b.status.as_str(), b.exit_code) {
                    ("ok", _) if code.unwrap_or(0) == 0 => {
                        end.result = Some(b.result.to_string());
                        Outcome::Success
                    }
                    ("exit", Some(0)) if code.unwrap_or(0) == 0 => Outcome::Success,
                    (status, exit) => {
                        if status == "exit" {
                            end.exit_code = exit.or(end.exit_code);
                        }
                        end.error = b
                            .error
                            .clone()
                            .or_else(|| Some(explain(code, &exec.stderr_tail)));
                        Outcome::Failed
                    }
                },
                (_, None, None) => {
                    end.error = Some(explain(code, &exec.stderr_tail));
                    Outcome::Failed
                }
            }
        }
    };
    (outcome, end)
}

fn explain(code: Option<i32>, stderr_tail: &[String]) -> String {
    let why = stderr_tail.last().cloned();
    match (code, why) {
        (Some(c), Some(why)) => format!("exit code {c}: {why}"),
        (Some(c), None) => format!("exit code {c}"),
        (None, Some(why)) => why,
        (None, None) => "the job reported no outcome".to_string(),
    }
}

fn finish(env: &RunEnv, mut report: RunReport, outcome: Outcome, end: RunEnd) -> RunReport {
    let finished_at = Utc::now();
    report.outcome = outcome;
    report.finished_at = finished_at;
    report.error = end.error.clone();
    report.exit_code = end.exit_code;
    report.result = end.result.clone();
    if let Some(run_id) = report.run_id {
        let end = RunEnd {
            finished_at: Some(finished_at),
            ..end
        };
        env.recorder.finish(run_id, outcome, end);
    }
    report
}

fn epoch_to_utc(secs: f64) -> Option<DateTime<Utc>> {
    if !secs.is_finite() {
        return None;
    }
    let micros = (secs * 1e6).round() as i64;
    DateTime::from_timestamp_micros(micros)
}

/// The run context handed to Python, as JSON.
fn run_context(config: &Config, job: &Job, req: &RunRequest, run_id: i64) -> serde_json::Value {
    let tz = config.scheduler.exchange.tz();
    let entry = match &job.entry {
        Entry::Script(path) => config.python.cwd.join(path).display().to_string(),
        other => other.to_string(),
    };
    serde_json::json!({
        "job": job.id,
        "name": job.name,
        "entry": entry,
        "run_id": run_id,
        "scheduled_at": req.scheduled_at.with_timezone(&tz).to_rfc3339_opts(SecondsFormat::Micros, false),
        "attempt": req.attempt,
        "trigger": req.trigger.as_str(),
        "args": job.args,
        "exchange": config.scheduler.exchange.code(),
        "timezone": tz.name(),
    })
}

/// The configured paths ahead of any `PYTHONPATH` the scheduler itself was given.
fn python_path(paths: &[PathBuf]) -> std::ffi::OsString {
    let mut all: Vec<PathBuf> = paths.to_vec();
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        all.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(all).unwrap_or_default()
}

/// A job's log file, `<log_dir>/jobs/<job>.log`, shared by the run's stdout and stderr readers.
pub struct JobLog {
    file: Arc<Mutex<std::io::BufWriter<File>>>,
    run_id: i64,
}

/// Open job logs, kept between runs: (the UTC day it was opened, the file).
type LogFiles =
    std::collections::HashMap<String, (chrono::NaiveDate, Arc<Mutex<std::io::BufWriter<File>>>)>;

impl JobLog {
    /// The job's log for run `run_id`, reusing the open file while the day lasts and the file is
    /// still there (rotation and a removed folder both reopen it).
    fn cached(env: &RunEnv, job: &str, run_id: i64) -> Result<JobLog> {
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
        let open = || OpenOptions::new().create(true).append(true).open(&path);
        let file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)
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
    fn write_lines<'a>(&self, stream: &str, lines: impl Iterator<Item = &'a [u8]>) {
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
fn rotate_daily(path: &Path, keep: usize) {
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

/// Copies one output stream into the job log, line by line, until the stream closes.
async fn pump(
    mut stream: impl AsyncRead + Unpin,
    log: Arc<JobLog>,
    name: &'static str,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut lines: Vec<&[u8]> = Vec::new();
        let mut start = 0;
        for (i, &b) in pending.iter().enumerate() {
            if b == b'\n' || i + 1 - start >= MAX_LINE {
                let end = if b == b'\n' { i } else { i + 1 };
                lines.push(trim_cr(&pending[start..end]));
                start = i + 1;
            }
        }
        if !lines.is_empty() {
            log.write_lines(name, lines.iter().copied());
            if tracing::enabled!(tracing::Level::DEBUG) {
                for line in &lines {
                    tracing::debug!(
                        run_id = log.run_id,
                        stream = name,
                        "{}",
                        String::from_utf8_lossy(line)
                    );
                }
            }
            if let Some(tail) = &tail {
                remember(tail, &lines);
            }
        }
        pending.drain(..start);
    }
    if !pending.is_empty() {
        let line = trim_cr(&pending);
        log.write_lines(name, std::iter::once(line));
        if let Some(tail) = &tail {
            remember(tail, &[line]);
        }
    }
}

fn remember(tail: &Mutex<VecDeque<String>>, lines: &[&[u8]]) {
    let Ok(mut t) = tail.lock() else { return };
    for line in lines.iter().rev().take(STDERR_TAIL).rev() {
        let text = String::from_utf8_lossy(line).trim().to_string();
        if text.is_empty() {
            continue;
        }
        if t.len() == STDERR_TAIL {
            t.pop_front();
        }
        t.push_back(text);
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}
