//! The pyo3 executor's async side: submit the run to the job's Python thread, interrupt it,
//! watch a thread stuck in native code.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};

use crate::config::Job;
use crate::error::{Error, Result};
use crate::history::{Outcome, RunEnd, StartRow};

use super::*;

/// What an embedded run's thread hands back.
pub(super) enum EmbeddedEnd {
    /// It could not begin (the job log could not be opened).
    NotStarted(Error),
    /// Python returned and the thread judged and recorded the run itself (the common case: no
    /// further hand-off).
    Recorded(Box<(Execution, Outcome, RunEnd)>),
    /// Python returned after the run was interrupted: the async side judges it.
    Returned(std::result::Result<String, String>),
}

/// What an embedded run's thread publishes once its start is recorded: id, start, log.
pub(super) type Begun = Arc<Mutex<Option<(i64, DateTime<Utc>, Arc<JobLog>)>>>;

/// How an embedded run went, for `run` to report.
pub(super) struct Embedded {
    pub(super) run_id: i64,
    pub(super) started_at: DateTime<Utc>,
    pub(super) log: Option<Arc<JobLog>>,
    pub(super) exec: Execution,
    /// Set when the run's thread already recorded its end.
    pub(super) recorded: Option<(Outcome, RunEnd)>,
}

/// A run in the embedded interpreter: one blocking thread waits for the slot, records the
/// start, calls Python holding the job's lock until Python returns, and records the end. The
/// async side only watches the timeout and cancellation.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_embedded(
    env: &RunEnv,
    job: &Arc<Job>,
    run: StartRow,
    not_before: Option<DateTime<Utc>>,
    context: serde_json::Value,
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
    let thread = InThread {
        env: env.clone(),
        job: Arc::clone(job),
        run,
        not_before,
        context,
        log_file,
        phase: Arc::clone(&phase),
        begun: Arc::clone(&begun),
        events: events.clone(),
        lock,
        tx,
        released: Released(Some(released_tx)),
    };
    crate::python::submit(&job.id, move |py| thread.run(py))?;
    let grace = env.config.scheduler.kill_grace;
    let lead = not_before
        .and_then(|at| (at - Utc::now()).to_std().ok())
        .unwrap_or_default()
        .min(MAX_SLOT_WAIT);
    let deadline = tokio::time::Instant::now() + lead + job.timeout;
    let (returned, ended) = watch_thread(
        &mut rx,
        (&phase, &begun),
        cancel,
        (deadline, job.timeout, grace),
    )
    .await;
    let begun_state = begun.lock().ok().and_then(|b| b.clone());
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
    let (exec, recorded) = account(returned, ended, log.as_deref(), released_rx);
    Ok(Embedded {
        run_id,
        started_at,
        log,
        exec,
        recorded,
    })
}

/// What an embedded run's thread holds: the job's lock, and the run to begin and make.
struct InThread {
    env: RunEnv,
    job: Arc<Job>,
    run: StartRow,
    not_before: Option<DateTime<Utc>>,
    context: serde_json::Value,
    log_file: std::path::PathBuf,
    phase: Arc<crate::python::RunPhase>,
    begun: Begun,
    events: Option<mpsc::UnboundedSender<RunEvent>>,
    lock: JobLock,
    tx: tokio::sync::oneshot::Sender<EmbeddedEnd>,
    /// Tells a watcher of a stuck run that the thread is free again, however it ends.
    released: Released,
}

impl InThread {
    /// On the job's Python thread: waits for the slot and records the start, calls Python
    /// holding the job's lock until it returns, then judges and records the end (unless the
    /// run was interrupted: the async side judges it then).
    fn run(self, py: pyo3::Python<'_>) {
        let InThread {
            env,
            job,
            run,
            not_before,
            mut context,
            log_file,
            phase,
            begun,
            events,
            lock,
            tx,
            released,
        } = self;
        let _released = released;
        let _lock = lock;
        let uid = run.uid.clone();
        let (run_id, started_at, log) = match begin_blocking(&env, run, not_before) {
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
                uid: uid.clone(),
                pid: None,
            });
        }
        context["run_id"] = run_id.into();
        let entry = job.entry.to_string();
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
        env.recorder.finish(&uid, o, end.clone());
        let _ = tx.send(EmbeddedEnd::Recorded(Box::new((exec, o, end))));
    }
}

/// The async side of an embedded run: waits for its thread's word; at the deadline or a
/// cancel, raises `JobTimeout` or `JobCancelled` in the thread and gives it `grace` to unwind.
/// What came back (`None`: nothing, even after the grace), and how the run ended.
async fn watch_thread(
    rx: &mut tokio::sync::oneshot::Receiver<EmbeddedEnd>,
    (phase, begun): (&Arc<crate::python::RunPhase>, &Begun),
    cancel: &mut watch::Receiver<Option<String>>,
    (deadline, timeout, grace): (tokio::time::Instant, Duration, Duration),
) -> (
    Option<std::result::Result<EmbeddedEnd, tokio::sync::oneshot::error::RecvError>>,
    Ended,
) {
    let begun_now = |begun: &Begun| begun.lock().ok().and_then(|b| b.clone());
    let (returned, ended) = tokio::select! {
        r = &mut *rx => (Some(r), Ended::Exited(None)),
        _ = tokio::time::sleep_until(deadline) => {
            if let Some((_, _, log)) = begun_now(begun) {
                log.note(&format!("timeout after {}: raising JobTimeout in the job's thread", humantime::format_duration(timeout)));
            }
            interrupt(phase, true);
            (None, Ended::TimedOut(None))
        },
        reason = cancelled(cancel) => {
            if let Some((_, _, log)) = begun_now(begun) {
                log.note(&format!("cancelled ({reason}): raising JobCancelled in the job's thread"));
            }
            interrupt(phase, false);
            (None, Ended::Cancelled(None, reason))
        },
    };
    let returned = match returned {
        Some(r) => Some(r),
        None => tokio::time::timeout(grace, rx).await.ok(),
    };
    (returned, ended)
}

/// The run's account from what its thread sent back (`None`: it did not return, even after the
/// grace: stuck in native code), and its recorded end if the thread recorded it itself.
fn account(
    returned: Option<std::result::Result<EmbeddedEnd, tokio::sync::oneshot::error::RecvError>>,
    ended: Ended,
    log: Option<&JobLog>,
    released: tokio::sync::oneshot::Receiver<()>,
) -> (Execution, Option<(Outcome, RunEnd)>) {
    let mut exec = Execution::new(ended);
    match returned {
        Some(Ok(EmbeddedEnd::Recorded(done))) => {
            let (done_exec, o, end) = *done;
            return (done_exec, Some((o, end)));
        }
        Some(Ok(EmbeddedEnd::Returned(Ok(json)))) => exec.bridge = parse_bridge(json.as_bytes()),
        Some(Ok(EmbeddedEnd::Returned(Err(e)))) => exec.failure = Some(e),
        Some(Ok(EmbeddedEnd::NotStarted(e))) => exec.failure = Some(e.to_string()),
        Some(Err(_)) => exec.failure = Some("the job's thread ended without an outcome".into()),
        None => {
            if let Some(log) = log {
                log.note("the job's thread did not return: it is stuck in native code and keeps the job's slot until it returns");
            }
            exec.stuck = Some(released);
        }
    }
    (exec, None)
}

/// Signals, when dropped, that an embedded run's thread is done with it.
pub(super) struct Released(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for Released {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// The execution of an embedded run that returned normally.
pub(super) fn embedded_execution(outcome: std::result::Result<String, String>) -> Execution {
    let mut exec = Execution::new(Ended::Exited(None));
    match outcome {
        Ok(json) => exec.bridge = parse_bridge(json.as_bytes()),
        Err(e) => exec.failure = Some(e),
    }
    exec
}

/// Raises the interrupt from a blocking thread: it needs the GIL, which the job may hold.
pub(super) fn interrupt(phase: &Arc<crate::python::RunPhase>, timeout: bool) {
    let phase = Arc::clone(phase);
    tokio::task::spawn_blocking(move || crate::python::interrupt(&phase, timeout));
}

/// Marks a stuck embedded run in the history and releases its job when the thread returns.
pub(super) fn watch_stuck(
    env: &RunEnv,
    job: &str,
    (run_id, uid): (i64, &str),
    thread: tokio::sync::oneshot::Receiver<()>,
    events: Option<mpsc::UnboundedSender<RunEvent>>,
) {
    let recorder = env.recorder.clone();
    let job = job.to_string();
    let uid = uid.to_string();
    recorder.set_stuck(&uid, true);
    tokio::spawn(async move {
        let _ = thread.await;
        recorder.set_stuck(&uid, false);
        tracing::info!(job = %job, run_id, "the stuck thread of run {run_id} returned: {job} is free again");
        if let Some(tx) = events {
            let _ = tx.send(RunEvent::Released { job });
        }
    });
}
