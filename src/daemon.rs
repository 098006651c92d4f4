//! The daemon loop: sleeps until the next fire instant of any job, fires it, collects finished
//! runs, and stops on SIGINT/SIGTERM. Only this loop owns job state; runs report back by message.
//!
//! Firing: each job's next instant comes from `Trigger::next_fire_after` (pure) and the loop sleeps
//! on a tokio timer until exactly then; the wall clock is re-read at least every `MAX_SLEEP`, so a
//! clock step or a suspend is noticed. A job whose previous run still runs gets a `skipped` row.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::calendar::Calendar;
use crate::config::{Config, Job};
use crate::error::{Error, Result};
use crate::history::{History, Outcome, TriggerKind};
use crate::instance::InstanceLock;
use crate::interpreter::Interpreter;
use crate::runner::{self, RunEnv, RunReport, RunRequest};

/// The longest the loop sleeps without looking at the wall clock again.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// A slot found late by less than this still fires (late); older missed slots are skipped.
const MISFIRE_GRACE: chrono::Duration = chrono::Duration::seconds(60);

/// What the loop knows about one job.
struct JobState {
    job: Arc<Job>,
    next: Option<DateTime<Utc>>,
    running: Option<Running>,
}

struct Running {
    run_id: Option<i64>,
    pid: Option<u32>,
    started_at: DateTime<Utc>,
}

/// Runs the daemon in the foreground until SIGINT or SIGTERM.
pub async fn run(config: Config, interpreter: Interpreter) -> Result<()> {
    let started_at = Utc::now();
    let _lock = InstanceLock::acquire(&config.scheduler.log_dir, started_at)?;
    let history = History::open(&config.scheduler.history)?;
    let abandoned = abandon_dead_runs(&history)?;
    let daemon_row = history.daemon_started(std::process::id(), started_at)?;

    let calendar = config.calendar();
    let config = Arc::new(config);
    let env = Arc::new(RunEnv {
        config: Arc::clone(&config),
        python: interpreter.path.clone(),
        history: Arc::new(Mutex::new(history)),
    });

    banner(&config, &interpreter, &calendar);
    for warning in crate::config_warnings(&config, Utc::now()) {
        tracing::warn!("⚠️  {warning}");
    }
    if abandoned > 0 {
        tracing::warn!(
            "⚠️  {abandoned} run(s) left `running` by a dead process were marked abandoned"
        );
    }
    let now = Utc::now();
    let mut jobs: Vec<JobState> = config
        .jobs
        .iter()
        .map(|job| JobState {
            next: job.trigger.next_fire_after(&calendar, now),
            job: Arc::new(job.clone()),
            running: None,
        })
        .collect();
    for state in &jobs {
        match state.next {
            Some(at) => tracing::info!(
                "   {:<20} next fire {}",
                state.job.id,
                at.with_timezone(&calendar.tz())
                    .format("%Y-%m-%d %H:%M:%S %Z")
            ),
            None => tracing::warn!("   {:<20} never fires: no slot ahead", state.job.id),
        }
    }
    tracing::info!("✅ All services initialized ({} jobs)", jobs.len());

    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("cannot watch SIGTERM", e))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| Error::io("cannot watch SIGINT", e))?;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<RunReport>();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<(String, i64, u32)>();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let signal_name = loop {
        let now = Utc::now();
        let due = jobs.iter().filter_map(|s| s.next).min();
        let sleep_for = due
            .map(|at| (at - now).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            biased;
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            Some(report) = done_rx.recv() => finished(&mut jobs, report),
            Some((job, run_id, pid)) = started_rx.recv() => {
                if let Some(r) = jobs.iter_mut().find(|s| s.job.id == job).and_then(|s| s.running.as_mut()) {
                    r.run_id = Some(run_id);
                    r.pid = Some(pid);
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = tokio::time::sleep(sleep_for) => {
                let now = Utc::now();
                for state in jobs.iter_mut() {
                    let Some(at) = state.next.filter(|at| *at <= now) else { continue };
                    if now - at <= MISFIRE_GRACE {
                        fire(state, at, &env, &cancel_rx, &done_tx, &started_tx, &mut tasks).await;
                    } else {
                        tracing::warn!(job = %state.job.id, "⚠️  missed the slot at {} (found {}s late)", at, (now - at).num_seconds());
                    }
                    state.next = next_after_fired(&state.job, &calendar, at, now);
                }
            }
        }
    };

    shutdown(
        signal_name,
        &config,
        &mut jobs,
        &cancel_tx,
        &mut done_rx,
        &mut sigterm,
        &mut sigint,
    )
    .await;
    while tasks.join_next().await.is_some() {}
    if let Err(e) = env
        .db(move |h| h.daemon_stopped(daemon_row, Utc::now()))
        .await
    {
        tracing::error!("cannot record the daemon's stop: {e}");
    }
    tracing::info!("👋 hedge-scheduler stopped");
    Ok(())
}

/// The next slot after `fired`, coalescing slots that already passed while we were late.
fn next_after_fired(
    job: &Job,
    calendar: &Calendar,
    fired: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let next = job.trigger.next_fire_after(calendar, fired)?;
    if next > now {
        return Some(next);
    }
    // We are behind (a suspend, a clock step): run the latest passed slot once, not all of them.
    let mut latest = next;
    for _ in 0..100_000 {
        match job.trigger.next_fire_after(calendar, latest) {
            Some(n) if n <= now => latest = n,
            _ => return Some(latest),
        }
    }
    job.trigger.next_fire_after(calendar, now)
}

#[allow(clippy::too_many_arguments)]
async fn fire(
    state: &mut JobState,
    at: DateTime<Utc>,
    env: &Arc<RunEnv>,
    cancel: &watch::Receiver<bool>,
    done: &mpsc::UnboundedSender<RunReport>,
    started: &mpsc::UnboundedSender<(String, i64, u32)>,
    tasks: &mut JoinSet<()>,
) {
    let job = Arc::clone(&state.job);
    if let Some(running) = &state.running {
        let reason = format!(
            "previous run {} still running since {}",
            running
                .run_id
                .map_or_else(|| "(starting)".to_string(), |id| id.to_string()),
            running.started_at.format("%H:%M:%S%.3f UTC")
        );
        tracing::info!("⏭️  {} skipped: {reason}", job.id);
        let id = job.id.clone();
        if let Err(e) = env
            .db(move |h| h.record_skipped(&id, TriggerKind::Schedule, at, &reason))
            .await
        {
            tracing::error!(job = %job.id, "cannot record a skipped slot: {e}");
        }
        return;
    }
    state.running = Some(Running {
        run_id: None,
        pid: None,
        started_at: Utc::now(),
    });
    let req = RunRequest {
        job,
        trigger: TriggerKind::Schedule,
        scheduled_at: at,
        attempt: 1,
    };
    let env = Arc::clone(env);
    let cancel = cancel.clone();
    let done = done.clone();
    let started = started.clone();
    tasks.spawn(async move {
        let report = runner::run(&env, req, cancel, Some(started)).await;
        let _ = done.send(report);
    });
}

fn finished(jobs: &mut [JobState], report: RunReport) {
    if let Some(state) = jobs.iter_mut().find(|s| s.job.id == report.job) {
        state.running = None;
    }
    log_report(&report);
}

/// One console line for a finished run, in the old tool's style.
pub fn log_report(report: &RunReport) {
    let took = format_duration(report.duration());
    let run = report
        .run_id
        .map_or_else(String::new, |id| format!(" (run {id})"));
    match report.outcome {
        Outcome::Success => tracing::info!("✅ {} succeeded in {took}{run}", report.job),
        other => tracing::warn!(
            "❌ {} {} after {took}{run}: {}",
            report.job,
            other.as_str(),
            report.error.as_deref().unwrap_or("no detail")
        ),
    }
}

pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        let s = d.as_secs();
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

#[allow(clippy::too_many_arguments)]
async fn shutdown(
    signal_name: &str,
    config: &Config,
    jobs: &mut [JobState],
    cancel: &watch::Sender<bool>,
    done: &mut mpsc::UnboundedReceiver<RunReport>,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
) {
    let running = |jobs: &[JobState]| jobs.iter().filter(|s| s.running.is_some()).count();
    let n = running(jobs);
    if n == 0 {
        tracing::info!("🛑 {signal_name}: stopping (no job running)");
        return;
    }
    let grace = config.scheduler.shutdown_grace;
    tracing::info!(
        "🛑 {signal_name}: stopping; waiting up to {} for {n} running job(s) (a second signal ends them now)",
        format_duration(grace)
    );
    let deadline = tokio::time::Instant::now() + grace;
    let mut cancelled = false;
    while running(jobs) > 0 {
        tokio::select! {
            Some(report) = done.recv() => finished(jobs, report),
            _ = tokio::time::sleep_until(deadline), if !cancelled => {
                tracing::warn!("⏱️  shutdown grace is over: ending {} running job(s)", running(jobs));
                cancelled = true;
                let _ = cancel.send(true);
            }
            _ = sigterm.recv(), if !cancelled => {
                tracing::warn!("🛑 second signal: ending running jobs now");
                cancelled = true;
                let _ = cancel.send(true);
            }
            _ = sigint.recv(), if !cancelled => {
                tracing::warn!("🛑 second signal: ending running jobs now");
                cancelled = true;
                let _ = cancel.send(true);
            }
            else => break,
        }
    }
}

/// Rows left `running` by a process that is gone become `abandoned`; returns how many.
fn abandon_dead_runs(history: &History) -> Result<usize> {
    let mut n = 0;
    for row in history.running()? {
        let owner_alive = row.owner_pid.is_some_and(crate::process::pid_alive);
        if owner_alive {
            continue;
        }
        if let Some(pid) = row.pid.and_then(|p| u32::try_from(p).ok()) {
            // Its process group outlived its owner: end it, so the job cannot run twice.
            crate::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
        history.finish_run(
            row.id,
            Outcome::Abandoned,
            &crate::history::RunEnd {
                error: Some("the process that ran it died".to_string()),
                ..Default::default()
            },
        )?;
        n += 1;
    }
    Ok(n)
}

fn banner(config: &Config, interpreter: &Interpreter, calendar: &Calendar) {
    tracing::info!("🚀 Starting hedge-scheduler {}", env!("CARGO_PKG_VERSION"));
    tracing::info!("   config:   {}", config.file.display());
    tracing::info!(
        "   exchange: {} ({})",
        calendar.exchange().code(),
        calendar.tz().name()
    );
    tracing::info!(
        "   python:   {} (Python {})",
        interpreter.path.display(),
        interpreter.version
    );
    tracing::info!("   history:  {}", config.scheduler.history.display());
    tracing::info!("   logs:     {}", config.scheduler.log_dir.display());
    for job in &config.jobs {
        tracing::info!(
            "   📋 {:<20} {:<28} {:<16} {}{}",
            job.id,
            job.name,
            job.trigger.schedule.to_string(),
            job.executor.as_str(),
            if job.trigger.market_hours {
                ", market hours"
            } else {
                ""
            }
        );
    }
}
