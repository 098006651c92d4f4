//! One run of one job: its history row, its process group, its output, its timeout, its outcome.
//!
//! A run always ends in a recorded `Outcome`; failures of the job are never `Err`. The run's
//! output is read continuously, line by line, into the job's log file, so a chatty job can never
//! block on a full pipe.

use std::collections::VecDeque;
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
use tokio::sync::watch;

use crate::config::{Config, Job};
use crate::error::{Error, Result};
use crate::history::{History, NewRun, Outcome, RunEnd, TriggerKind};
use crate::process;

/// A line longer than this is written out in pieces.
const MAX_LINE: usize = 64 * 1024;
/// How many trailing stderr lines are kept to explain a failure without a result.
const STDERR_TAIL: usize = 8;

/// What every run of a daemon (or of `run-once`) shares.
pub struct RunEnv {
    pub config: Arc<Config>,
    /// The real interpreter, resolved once at start-up.
    pub python: PathBuf,
    pub history: Arc<Mutex<History>>,
}

impl RunEnv {
    /// Runs `f` on the history without blocking the async runtime.
    pub async fn db<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&History) -> Result<T> + Send + 'static,
    {
        let history = Arc::clone(&self.history);
        tokio::task::spawn_blocking(move || {
            let guard = history
                .lock()
                .map_err(|_| Error::Other("history lock poisoned".into()))?;
            f(&guard)
        })
        .await
        .map_err(|e| Error::Other(format!("history task failed: {e}")))?
    }
}

/// A run to make.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub job: Arc<Job>,
    pub trigger: TriggerKind,
    pub scheduled_at: DateTime<Utc>,
    pub attempt: u32,
}

/// How a run ended, as reported to the daemon or printed by `run-once`.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub job: String,
    pub run_id: Option<i64>,
    pub outcome: Outcome,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub result: Option<String>,
}

impl RunReport {
    pub fn duration(&self) -> Duration {
        (self.finished_at - self.started_at)
            .to_std()
            .unwrap_or_default()
    }
}

/// The JSON `hedge_bridge` writes to the result file.
#[derive(Debug, Deserialize)]
struct BridgeOutcome {
    status: String,
    #[serde(default)]
    result: serde_json::Value,
    error: Option<String>,
    exit_code: Option<i32>,
    entered_at: Option<f64>,
}

/// Why the wait for a run's process ended.
enum Ended {
    Exited(ExitStatus),
    TimedOut(Option<ExitStatus>),
    Cancelled(Option<ExitStatus>),
}

/// Makes one run: records it, runs it, records how it ended. `started` receives the run id and
/// PID once the process is up; `cancel` flipping to true ends the run (`cancelled`).
pub async fn run(
    env: &RunEnv,
    req: RunRequest,
    mut cancel: watch::Receiver<bool>,
    started: Option<tokio::sync::mpsc::UnboundedSender<(String, i64, u32)>>,
) -> RunReport {
    let job = Arc::clone(&req.job);
    let started_at = Utc::now();
    let mut report = RunReport {
        job: job.id.clone(),
        run_id: None,
        outcome: Outcome::Failed,
        started_at,
        finished_at: started_at,
        error: None,
        exit_code: None,
        result: None,
    };

    let job_id = job.id.clone();
    let (scheduled_at, trigger, attempt) = (req.scheduled_at, req.trigger, req.attempt);
    let run_id = match env
        .db(move |h| {
            h.start_run(&NewRun {
                job: &job_id,
                trigger,
                scheduled_at,
                started_at,
                attempt,
            })
        })
        .await
    {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(job = %job.id, "cannot record the run's start: {e}");
            report.error = Some(format!("history: {e}"));
            report.finished_at = Utc::now();
            return report;
        }
    };
    report.run_id = Some(run_id);

    let log = match JobLog::open(&env.config.job_log_dir(), &job.id, run_id) {
        Ok(log) => Arc::new(log),
        Err(e) => {
            let end = RunEnd {
                error: Some(e.to_string()),
                ..RunEnd::default()
            };
            return finish(env, report, Outcome::Failed, end).await;
        }
    };

    let result_file = std::env::temp_dir().join(format!(
        "hedge-scheduler-{}-{}.json",
        std::process::id(),
        run_id
    ));
    let _ = std::fs::remove_file(&result_file);
    let context = run_context(&env.config, &job, &req, run_id);

    let mut cmd = Command::new(&env.python);
    cmd.arg("-m")
        .arg("hedge_bridge")
        .current_dir(&env.config.python.cwd)
        .env("PYTHONPATH", python_path(&env.config.python.path))
        .env("PYTHONUNBUFFERED", "1")
        .env("HEDGE_CONTEXT", context.to_string())
        .env("HEDGE_RESULT_FILE", &result_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let msg = format!("cannot start `{}`: {e}", env.python.display());
            log.note(&msg);
            let end = RunEnd {
                error: Some(msg),
                ..RunEnd::default()
            };
            return finish(env, report, Outcome::Failed, end).await;
        }
    };
    let pid = child.id().unwrap_or(0);
    log.note(&format!(
        "start: trigger={} scheduled_at={} attempt={} pid={pid}",
        req.trigger.as_str(),
        crate::history::fmt_time(req.scheduled_at),
        req.attempt
    ));
    if let Err(e) = env.db(move |h| h.set_pid(run_id, pid)).await {
        tracing::warn!(job = %job.id, run_id, "cannot record the run's PID: {e}");
    }
    if let Some(tx) = &started {
        let _ = tx.send((job.id.clone(), run_id, pid));
    }

    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    let pumps = [
        child
            .stdout
            .take()
            .map(|out| tokio::spawn(pump(out, Arc::clone(&log), "stdout", None))),
        child.stderr.take().map(|err| {
            tokio::spawn(pump(
                err,
                Arc::clone(&log),
                "stderr",
                Some(Arc::clone(&tail)),
            ))
        }),
    ];

    let grace = env.config.scheduler.kill_grace;
    let deadline = tokio::time::Instant::now() + job.timeout;
    let ended = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => Ended::Exited(s),
            Err(e) => {
                tracing::error!(job = %job.id, run_id, "waiting for the job failed: {e}");
                Ended::Cancelled(None)
            }
        },
        _ = tokio::time::sleep_until(deadline) => {
            log.note(&format!("timeout after {}: ending process group {pid}", humantime::format_duration(job.timeout)));
            Ended::TimedOut(process::terminate_group(&mut child, pid, grace).await.ok())
        },
        _ = cancelled(&mut cancel) => {
            log.note(&format!("cancelled: ending process group {pid}"));
            Ended::Cancelled(process::terminate_group(&mut child, pid, grace).await.ok())
        },
    };
    // Nothing outlives a run: a background process the job left in its group is ended too.
    if process::end_stragglers(pid, grace).await {
        log.note("ended processes the job left running in its group");
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

    let bridge = read_outcome(&result_file);
    let _ = std::fs::remove_file(&result_file);
    let stderr_tail = tail
        .lock()
        .map(|t| t.iter().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    let (outcome, end) = judge(&job, ended, bridge, &stderr_tail);
    log.note(&format!(
        "end: {}{}",
        outcome.as_str(),
        end.error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    ));
    finish(env, report, outcome, end).await
}

/// Resolves when `cancel` turns true (or its sender is gone, which never cancels).
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Decides the outcome of a run from how its process ended and what the bridge reported.
fn judge(
    job: &Job,
    ended: Ended,
    bridge: Option<BridgeOutcome>,
    stderr_tail: &[String],
) -> (Outcome, RunEnd) {
    let mut end = RunEnd {
        entered_at: bridge
            .as_ref()
            .and_then(|b| b.entered_at)
            .and_then(epoch_to_utc),
        ..RunEnd::default()
    };
    let status = match &ended {
        Ended::Exited(s) => Some(*s),
        Ended::TimedOut(s) | Ended::Cancelled(s) => *s,
    };
    end.exit_code = status.and_then(|s| s.code());
    end.signal = status.and_then(|s| s.signal()).map(process::signal_name);
    let outcome = match ended {
        Ended::TimedOut(_) => {
            end.error = Some(format!(
                "timed out after {}",
                humantime::format_duration(job.timeout)
            ));
            Outcome::Timeout
        }
        Ended::Cancelled(_) => {
            end.error = Some("cancelled".to_string());
            Outcome::Cancelled
        }
        Ended::Exited(status) => {
            if let Some(sig) = status.signal() {
                end.error = Some(format!("killed by {}", process::signal_name(sig)));
                Outcome::Crashed
            } else {
                match (status.code(), bridge) {
                    (Some(0), Some(b)) if b.status == "ok" || b.status == "exit" => {
                        if b.status == "ok" {
                            end.result = Some(b.result.to_string());
                        }
                        Outcome::Success
                    }
                    (code, Some(b)) => {
                        end.error = b.error.or_else(|| code.map(|c| format!("exit code {c}")));
                        if let (Some(c), "exit") = (b.exit_code, b.status.as_str()) {
                            end.exit_code = Some(c);
                        }
                        Outcome::Failed
                    }
                    (code, None) => {
                        let why = stderr_tail
                            .last()
                            .cloned()
                            .unwrap_or_else(|| "the job reported no outcome".to_string());
                        end.error = Some(match code {
                            Some(c) => format!("exit code {c}: {why}"),
                            None => why,
                        });
                        Outcome::Failed
                    }
                }
            }
        }
    };
    (outcome, end)
}

async fn finish(env: &RunEnv, mut report: RunReport, outcome: Outcome, end: RunEnd) -> RunReport {
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
        if let Err(e) = env.db(move |h| h.finish_run(run_id, outcome, &end)).await {
            tracing::error!(job = %report.job, run_id, "cannot record the run's end: {e}");
        }
    }
    report
}

fn read_outcome(path: &Path) -> Option<BridgeOutcome> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
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
    serde_json::json!({
        "job": job.id,
        "name": job.name,
        "entry": job.entry.to_string(),
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
    file: Mutex<std::io::BufWriter<std::fs::File>>,
    run_id: i64,
}

impl JobLog {
    pub fn open(dir: &Path, job: &str, run_id: i64) -> Result<JobLog> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("cannot create `{}`", dir.display()), e))?;
        let path = dir.join(format!("{job}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open job log `{}`", path.display()), e))?;
        Ok(JobLog {
            file: Mutex::new(std::io::BufWriter::with_capacity(64 * 1024, file)),
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
