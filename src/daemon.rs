//! The daemon loop: sleeps until the next fire instant of any job (or a retry), fires it, collects
//! run events, and stops on SIGINT/SIGTERM. Only this loop owns job state; runs report back by
//! message.
//!
//! Firing: each job's next instant comes from `Trigger::next_fire_after` (pure) and the loop sleeps
//! on a tokio timer until exactly then; the wall clock is re-read at least every `MAX_SLEEP`, so a
//! clock step or a suspend is noticed. Slots found late (downtime, suspend, clock jump) are handled
//! by the job's `catch_up`; a slot that finds the job busy by its `overlap`; a failed run by its
//! `retry`, only while the retry would start before the next slot and the session's end.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::calendar::Calendar;
use crate::config::{CatchUp, Config, Job, Overlap};
use crate::error::{Error, Result};
use crate::history::{History, Outcome, TriggerKind};
use crate::instance::InstanceLock;
use crate::interpreter::Interpreter;
use crate::runner::{self, OnBusy, RunEnv, RunEvent, RunReport, RunRequest};

/// The longest the loop sleeps without looking at the wall clock again.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// The loop wakes this much before a slot, so the run is prepared (lock, log) when its instant
/// comes; the run itself starts at the slot exactly.
const LEAD: chrono::Duration = chrono::Duration::milliseconds(4);
/// A slot found later than this is treated as missed (catch-up), not as on time.
const LATE: chrono::Duration = chrono::Duration::seconds(2);
/// At most this many missed slots of one job are looked at (and recorded) after a gap.
const MAX_MISSED: usize = 2000;

/// A run waiting to start: queued by overlap or catch-up, or a retry (with its start time).
#[derive(Debug, Clone)]
struct Pending {
    trigger: TriggerKind,
    scheduled_at: DateTime<Utc>,
    attempt: u32,
    at: Option<DateTime<Utc>>,
}

/// What the loop knows about one job.
struct JobState {
    job: Arc<Job>,
    /// The next regular slot.
    next: Option<DateTime<Utc>>,
    running: Option<Running>,
    pending: VecDeque<Pending>,
    retry: Option<Pending>,
    /// Removed from the config by a reload: dropped once its run ends.
    retired: bool,
}

struct Running {
    run_id: Option<i64>,
    pid: Option<u32>,
    started_at: DateTime<Utc>,
    cancel: watch::Sender<Option<String>>,
    /// The run has ended (timeout) but its embedded thread has not returned.
    stuck: bool,
}

/// What every handler of the loop needs.
struct Ctx {
    /// Slots before this were missed by the daemon, however recent.
    started_at: DateTime<Utc>,
    daemon_row: i64,
    config: Arc<Config>,
    env: Arc<RunEnv>,
    calendar: Arc<Calendar>,
    events: mpsc::UnboundedSender<RunEvent>,
    tasks: JoinSet<()>,
    /// The local date of the last daily chores (pruning, coverage warning).
    daily_done: Option<chrono::NaiveDate>,
}

/// Runs the daemon in the foreground until SIGINT or SIGTERM.
pub async fn run(config: Config, interpreter: Interpreter) -> Result<()> {
    let started_at = Utc::now();
    let mut lock = InstanceLock::acquire(
        &config.scheduler.log_dir,
        started_at,
        config.calendar().tz(),
    )?;
    let history = History::open(&config.scheduler.history)?;
    let abandoned = abandon_dead_runs(&history, config.scheduler.kill_grace)?;
    let daemon_row = history.daemon_started(std::process::id(), started_at)?;
    let last_slots: Vec<Option<DateTime<Utc>>> = config
        .jobs
        .iter()
        .filter(|j| j.enabled)
        .map(|j| history.last_slot(&j.id))
        .collect::<Result<_>>()?;

    let calendar = config.calendar();
    let config = Arc::new(config);
    let env = Arc::new(RunEnv::new(
        Arc::clone(&config),
        interpreter.path.clone(),
        history,
    ));

    banner(&config, &interpreter, &calendar);
    if abandoned > 0 {
        tracing::warn!(
            "⚠️  {abandoned} run(s) left `running` by a dead process were marked abandoned (their processes ended)"
        );
    }
    let now = Utc::now();
    let mut jobs: Vec<JobState> = config
        .jobs
        .iter()
        .filter(|j| j.enabled)
        .zip(last_slots)
        .map(|(job, last)| {
            // Slots after the last one dealt with are missed: the first tick catches up on them.
            let from = match last {
                Some(last) if last < now => last.max(lookback_start(job, &calendar, now)),
                _ => now,
            };
            JobState {
                next: job.trigger.next_fire_after(&calendar, from),
                job: Arc::new(job.clone()),
                running: None,
                pending: VecDeque::new(),
                retry: None,
                retired: false,
            }
        })
        .collect();
    for state in &jobs {
        let upcoming = state
            .next
            .filter(|t| *t > now)
            .or_else(|| state.job.trigger.next_fire_after(&calendar, now));
        match upcoming {
            Some(at) => tracing::info!(
                "   {:<20} next fire {}",
                state.job.id,
                at.with_timezone(&calendar.tz())
                    .format("%Y-%m-%d %H:%M:%S %Z")
            ),
            None => tracing::warn!("   {:<20} never fires: no slot ahead", state.job.id),
        }
    }

    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("cannot watch SIGTERM", e))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| Error::io("cannot watch SIGINT", e))?;
    let mut sighup =
        signal(SignalKind::hangup()).map_err(|e| Error::io("cannot watch SIGHUP", e))?;
    let (events_tx, mut events) = mpsc::unbounded_channel::<RunEvent>();
    let mut ctx = Ctx {
        started_at,
        daemon_row,
        config: Arc::clone(&config),
        env: Arc::clone(&env),
        calendar: Arc::clone(&calendar),
        events: events_tx,
        tasks: JoinSet::new(),
        daily_done: None,
    };
    health(&mut ctx, &mut jobs).await;
    tracing::info!("✅ All services initialized ({} jobs)", jobs.len());
    crate::health::notify_systemd("READY=1");

    let mut health_every = tokio::time::interval_at(
        tokio::time::Instant::now() + ctx.config.scheduler.health_interval,
        ctx.config.scheduler.health_interval,
    );
    health_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report_every = tokio::time::interval_at(
        tokio::time::Instant::now() + ctx.config.scheduler.report_interval,
        ctx.config.scheduler.report_interval,
    );
    report_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let signal_name = loop {
        let now = Utc::now();
        let due = jobs
            .iter()
            .flat_map(|s| [s.next, s.retry.as_ref().and_then(|r| r.at)])
            .flatten()
            .min();
        let sleep_for = due
            .map(|at| (at - LEAD - now).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            biased;
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            Some(event) = events.recv() => on_event(&mut ctx, &mut jobs, event).await,
            Some(_) = ctx.tasks.join_next(), if !ctx.tasks.is_empty() => {}
            _ = tokio::time::sleep(sleep_for) => tick(&mut ctx, &mut jobs, Utc::now()).await,
            _ = sighup.recv() => reload(&mut ctx, &mut jobs).await,
            _ = health_every.tick() => {
                // The PID file may have been removed (a wiped log folder): lock a new one, and
                // give way if another daemon started meanwhile — never two firing at once.
                if let Err(other) = lock.ensure() {
                    tracing::error!("❗ our PID file was removed and another daemon took its place ({other}): stopping");
                    break "lock lost";
                }
                health(&mut ctx, &mut jobs).await
            }
            _ = report_every.tick() => report(&ctx, &jobs).await,
        }
    };

    crate::health::notify_systemd("STOPPING=1");
    let config = Arc::clone(&ctx.config);
    shutdown(
        signal_name,
        &config,
        &mut ctx,
        &mut jobs,
        &mut events,
        &mut sigterm,
        &mut sigint,
    )
    .await;
    while ctx.tasks.join_next().await.is_some() {}
    env.flush().await;
    if let Err(e) = env
        .db(move |h| h.daemon_stopped(daemon_row, Utc::now()))
        .await
    {
        tracing::error!("cannot record the daemon's stop: {e}");
    }
    let _ = std::fs::remove_file(crate::health::state_path(&config.scheduler.log_dir));
    tracing::info!("👋 hedge-scheduler stopped");
    Ok(())
}

/// The health check: heartbeat, delayed history writes, runs past their timeout, stuck
/// threads, disk space, legacy processes, and once a day pruning and the calendar's coverage.
async fn health(ctx: &mut Ctx, jobs: &mut [JobState]) {
    let now = Utc::now();
    let config = Arc::clone(&ctx.config);
    let mut problems = Vec::new();

    let row = ctx.daemon_row;
    let heartbeat = ctx.env.db(move |h| h.heartbeat(row, now));
    if let Err(e) = heartbeat.await {
        tracing::error!("❗ cannot write the heartbeat: {e}");
    }
    let left = ctx.env.flush().await;
    if let Some((since, e)) = ctx.env.problem() {
        problems.push(format!(
            "history database: {e} (since {})",
            since
                .with_timezone(&ctx.calendar.tz())
                .format("%H:%M:%S %Z")
        ));
    } else if left > 0 {
        problems.push(format!("history database: {left} write(s) waiting"));
    }

    // Belt and braces: a run far past its timeout is ended here too.
    for state in jobs.iter() {
        let Some(r) = &state.running else { continue };
        let limit = state.job.timeout + config.scheduler.kill_grace * 2 + Duration::from_secs(5);
        let over = (now - r.started_at).to_std().is_ok_and(|d| d > limit);
        if r.stuck {
            problems.push(format!(
                "{}: run {} is stuck in native code since {}; the job is held until it returns",
                state.job.id,
                r.run_id.unwrap_or_default(),
                r.started_at
                    .with_timezone(&ctx.calendar.tz())
                    .format("%H:%M:%S %Z")
            ));
        } else if over {
            tracing::warn!(
                "⏱️  {}: past its timeout, ending it (health check)",
                state.job.id
            );
            let _ = r
                .cancel
                .send(Some("health check: past its timeout".to_string()));
        }
    }

    let log_dir = &config.scheduler.log_dir;
    if let Some(free) = crate::health::free_space(log_dir)
        && free < crate::health::LOW_DISK_BYTES
    {
        problems.push(format!(
            "only {} free in {}",
            crate::runner::bytes(free),
            log_dir.display()
        ));
    }

    let scripts = config.scheduler.legacy_scripts.clone();
    let legacy = tokio::task::spawn_blocking(move || crate::legacy::find(&scripts))
        .await
        .unwrap_or_default();
    if !legacy.is_empty() {
        let list = legacy
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if config.scheduler.legacy == crate::config::Legacy::Stop {
            tracing::warn!("🧹 stopping the old system's processes: {list}");
            crate::legacy::stop(&legacy, config.scheduler.kill_grace).await;
        } else {
            tracing::warn!("⚠️  the old system is running: {list}");
            problems.push(format!("the old system is running: {list}"));
        }
    }

    let today = now.with_timezone(&ctx.calendar.tz()).date_naive();
    if ctx.daily_done != Some(today) {
        ctx.daily_done = Some(today);
        for warning in crate::config_warnings(&config, now) {
            tracing::warn!("⚠️  {warning}");
        }
        let before = now
            - chrono::Duration::from_std(config.scheduler.history_retention)
                .unwrap_or(chrono::Duration::days(90));
        match ctx.env.db(move |h| h.prune(before)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("🧹 pruned {n} run(s) older than {}", before.date_naive()),
            Err(e) => tracing::error!("cannot prune the history: {e}"),
        }
    }

    for p in &problems {
        tracing::debug!("problem: {p}");
    }
    let state = crate::health::DaemonState {
        pid: std::process::id(),
        started_at: ctx.started_at,
        heartbeat_at: now,
        problems,
    };
    if let Err(e) = crate::health::write_state(log_dir, &state) {
        tracing::error!("cannot write {}: {e}", crate::health::STATE_FILE);
    }
    crate::health::notify_systemd("WATCHDOG=1");
}

/// The status table on the console and in the log, as `status` shows it.
async fn report(ctx: &Ctx, jobs: &[JobState]) {
    let config = Arc::clone(&ctx.config);
    let now = Utc::now();
    type Live = (String, Option<i64>, Option<u32>, DateTime<Utc>, bool);
    let running: Vec<Live> = jobs
        .iter()
        .filter_map(|s| {
            s.running
                .as_ref()
                .map(|r| (s.job.id.clone(), r.run_id, r.pid, r.started_at, r.stuck))
        })
        .collect();
    let table = ctx
        .env
        .db(move |h| {
            let mut status = crate::status::gather_from(&config, Some(h), None, now)?;
            for j in status.jobs.iter_mut() {
                if let Some((_, id, pid, since, stuck)) = running.iter().find(|r| r.0 == j.job) {
                    j.running = true;
                    j.stuck = *stuck;
                    j.running_run_id = *id;
                    j.running_pid = pid.map(i64::from);
                    j.running_since = Some(crate::history::fmt_time(*since));
                }
            }
            Ok(crate::status::render_jobs(&status, &config, now))
        })
        .await;
    match table {
        Ok(table) => {
            tracing::info!("📊 Status report");
            for line in table.lines() {
                tracing::info!("{line}");
            }
        }
        Err(e) => tracing::error!("cannot build the status report: {e}"),
    }
}

/// SIGHUP: a valid new config takes effect for the next slots; an invalid one is rejected and
/// the old one kept.
async fn reload(ctx: &mut Ctx, jobs: &mut Vec<JobState>) {
    let path = ctx.config.file.clone();
    tracing::info!("🔄 SIGHUP: reloading {}", path.display());
    let loaded = tokio::task::spawn_blocking(move || -> Result<(Config, Interpreter)> {
        let config = Config::load(&path)?;
        let interpreter = crate::interpreter::resolve(&config, None)?;
        if config
            .jobs
            .iter()
            .any(|j| j.executor == crate::config::Executor::Pyo3)
        {
            crate::python::init(&config, &interpreter)?;
        }
        Ok((config, interpreter))
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))
    .and_then(|r| r);
    let (new, interpreter) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!("❌ config rejected, keeping the old one: {e}");
            return;
        }
    };
    let old = &ctx.config.scheduler;
    if new.scheduler.log_dir != old.log_dir || new.scheduler.history != old.history {
        tracing::warn!(
            "⚠️  `scheduler.log_dir` and `scheduler.history` change only with a restart; keeping {} and {}",
            old.log_dir.display(),
            old.history.display()
        );
    }
    let mut new = new;
    new.scheduler.log_dir = old.log_dir.clone();
    new.scheduler.history = old.history.clone();
    let new = Arc::new(new);
    let calendar = new.calendar();
    let now = Utc::now();
    let mut next_jobs = Vec::new();
    for job in new.jobs.iter().filter(|j| j.enabled) {
        let mut state = match jobs.iter().position(|s| s.job.id == job.id) {
            Some(i) => jobs.remove(i),
            None => JobState {
                job: Arc::new(job.clone()),
                next: None,
                running: None,
                pending: VecDeque::new(),
                retry: None,
                retired: false,
            },
        };
        state.job = Arc::new(job.clone());
        state.next = job.trigger.next_fire_after(&calendar, now);
        state.retired = false;
        next_jobs.push(state);
    }
    // Jobs no longer configured fire no more; one still running is kept until it ends.
    let removed: Vec<String> = jobs.iter().map(|s| s.job.id.clone()).collect();
    for mut state in jobs.drain(..) {
        if state.running.is_some() {
            state.next = None;
            state.pending.clear();
            state.retry = None;
            state.retired = true;
            next_jobs.push(state);
        }
    }
    *jobs = next_jobs;
    ctx.env = Arc::new(ctx.env.with_config(Arc::clone(&new), interpreter.path));
    ctx.config = new;
    ctx.calendar = calendar;
    tracing::info!(
        "✅ config reloaded: {} job(s){}",
        ctx.config.jobs.len(),
        if removed.is_empty() {
            String::new()
        } else {
            format!("; removed: {}", removed.join(", "))
        }
    );
}

/// Missed slots older than this are not looked at: the current session for a job that follows
/// sessions (from local midnight), a day otherwise, and never past `misfire_grace`.
fn lookback_start(job: &Job, calendar: &Calendar, now: DateTime<Utc>) -> DateTime<Utc> {
    let mut start = if job.trigger.follows_sessions() {
        let tz = calendar.tz();
        let midnight = now
            .with_timezone(&tz)
            .date_naive()
            .and_time(chrono::NaiveTime::MIN);
        chrono::TimeZone::from_local_datetime(&tz, &midnight)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(now - chrono::Duration::days(1))
    } else {
        now - chrono::Duration::days(1)
    };
    if let Some(grace) = job
        .misfire_grace
        .and_then(|g| chrono::Duration::from_std(g).ok())
    {
        start = start.max(now - grace);
    }
    start
}

/// Fires what is due at `now`: retries, then regular slots (on time, or missed → catch-up).
async fn tick(ctx: &mut Ctx, jobs: &mut [JobState], now: DateTime<Utc>) {
    let soon = now + LEAD;
    for state in jobs.iter_mut() {
        if let Some(retry) = state.retry.take_if(|r| r.at.is_some_and(|at| at <= soon)) {
            start(ctx, state, retry);
        }
        let Some(first) = state.next.filter(|t| *t <= soon) else {
            continue;
        };
        let job = Arc::clone(&state.job);
        let mut due = vec![first];
        while due.len() < MAX_MISSED {
            match job
                .trigger
                .next_fire_after(&ctx.calendar, due[due.len() - 1])
            {
                Some(t) if t <= soon => due.push(t),
                _ => break,
            }
        }
        let last = due[due.len() - 1];
        state.next = job.trigger.next_fire_after(&ctx.calendar, last.max(now));
        let (missed, on_time): (Vec<_>, Vec<_>) = due
            .into_iter()
            .partition(|t| now - *t > LATE || *t < ctx.started_at);
        if !missed.is_empty() {
            catch_up(ctx, state, &missed, !on_time.is_empty(), now).await;
        }
        for slot in on_time {
            request(ctx, state, TriggerKind::Schedule, slot).await;
        }
    }
}

/// Applies the job's `catch_up` to slots found late; `superseded` when a slot is due on time now.
async fn catch_up(
    ctx: &mut Ctx,
    state: &mut JobState,
    missed: &[DateTime<Utc>],
    superseded: bool,
    now: DateTime<Utc>,
) {
    let job = Arc::clone(&state.job);
    let start = lookback_start(&job, &ctx.calendar, now);
    let worth: Vec<DateTime<Utc>> = missed.iter().copied().filter(|t| *t >= start).collect();
    let run: Vec<DateTime<Utc>> = match job.catch_up {
        CatchUp::None => Vec::new(),
        CatchUp::Latest if superseded => Vec::new(),
        CatchUp::Latest => worth.last().copied().into_iter().collect(),
        CatchUp::All => worth.clone(),
    };
    let skipped: Vec<DateTime<Utc>> = missed
        .iter()
        .copied()
        .filter(|t| !run.contains(t))
        .collect();
    let tz = ctx.calendar.tz();
    let fmt = |t: &DateTime<Utc>| t.with_timezone(&tz).format("%H:%M:%S").to_string();
    tracing::warn!(
        "⏰ {}: {} slot(s) missed ({} … {}); catch_up = {} runs {}",
        job.id,
        missed.len(),
        fmt(&missed[0]),
        fmt(&missed[missed.len() - 1]),
        match job.catch_up {
            CatchUp::Latest => "latest",
            CatchUp::None => "none",
            CatchUp::All => "all",
        },
        run.len()
    );
    if !skipped.is_empty() {
        let reason = match (job.catch_up, run.last()) {
            (CatchUp::Latest, Some(latest)) => format!(
                "missed while the scheduler was not running or not awake; caught up with the slot at {} instead",
                fmt(latest)
            ),
            _ if superseded && job.catch_up == CatchUp::Latest => {
                "missed while the scheduler was not running or not awake; the current slot runs instead".to_string()
            }
            _ => "missed while the scheduler was not running or not awake".to_string(),
        };
        let env = Arc::clone(&ctx.env);
        let id = job.id.clone();
        ctx.tasks.spawn(async move {
            for slot in skipped {
                env.record_skipped(&id, TriggerKind::Schedule, slot, &reason)
                    .await;
            }
        });
    }
    for slot in run {
        request(ctx, state, TriggerKind::CatchUp, slot).await;
    }
}

/// A slot (or catch-up) wants to run: start it, or apply the job's overlap policy.
async fn request(ctx: &mut Ctx, state: &mut JobState, trigger: TriggerKind, slot: DateTime<Utc>) {
    let pending = Pending {
        trigger,
        scheduled_at: slot,
        attempt: 1,
        at: None,
    };
    if state.running.is_none() && state.pending.is_empty() && state.retry.is_none() {
        start(ctx, state, pending);
        return;
    }
    // Missed slots caught up with `all` are a backlog: they wait their turn whatever the policy.
    if trigger == TriggerKind::CatchUp {
        state.pending.push_back(pending);
        return;
    }
    let tz = ctx.calendar.tz();
    let at = |t: DateTime<Utc>| t.with_timezone(&tz).format("%H:%M:%S %Z").to_string();
    let busy = match &state.running {
        Some(r) => format!(
            "previous run {}{} {} since {}",
            r.run_id
                .map_or_else(|| "(starting)".to_string(), |id| id.to_string()),
            r.pid.map_or_else(String::new, |p| format!(" (PID {p})")),
            if r.stuck {
                "stuck in native code"
            } else {
                "still running"
            },
            at(r.started_at)
        ),
        None => "a retry of the previous slot is pending".to_string(),
    };
    let skip_reason = match state.job.overlap {
        Overlap::Skip => Some(busy),
        Overlap::Queue => state
            .pending
            .iter()
            .find(|p| p.trigger == TriggerKind::Schedule)
            .map(|p| {
                format!(
                    "{busy}, and the slot at {} is already queued",
                    at(p.scheduled_at)
                )
            }),
        Overlap::Replace => {
            match &state.running {
                Some(r) if !r.stuck => {
                    let reason = format!("replaced by the slot at {}", at(slot));
                    tracing::info!("🔁 {}: {reason}", state.job.id);
                    let _ = r.cancel.send(Some(reason));
                }
                _ => {}
            }
            state.pending.retain(|p| p.trigger != TriggerKind::Schedule);
            None
        }
    };
    match skip_reason {
        Some(reason) => {
            tracing::info!("⏭️  {} skipped: {reason}", state.job.id);
            // Recorded off the loop: a slow history never delays the next fire.
            let env = Arc::clone(&ctx.env);
            let id = state.job.id.clone();
            ctx.tasks.spawn(async move {
                env.record_skipped(&id, trigger, slot, &reason).await;
            });
        }
        None => state.pending.push_back(pending),
    }
}

/// Starts a run of the job now.
fn start(ctx: &mut Ctx, state: &mut JobState, p: Pending) {
    let (cancel_tx, cancel_rx) = watch::channel(None);
    state.running = Some(Running {
        run_id: None,
        pid: None,
        started_at: Utc::now(),
        cancel: cancel_tx,
        stuck: false,
    });
    let req = RunRequest {
        job: Arc::clone(&state.job),
        trigger: p.trigger,
        scheduled_at: p.scheduled_at,
        attempt: p.attempt,
        // A slot (or a retry) starts at its instant exactly, however early the loop woke.
        not_before: Some(p.at.unwrap_or(p.scheduled_at)),
    };
    let env = Arc::clone(&ctx.env);
    let events = ctx.events.clone();
    let (job, trigger, scheduled_at, attempt) = (
        state.job.id.clone(),
        req.trigger,
        req.scheduled_at,
        req.attempt,
    );
    let run = tokio::spawn({
        let events = events.clone();
        async move { runner::run(&env, req, cancel_rx, Some(events), OnBusy::Skip).await }
    });
    // A run that panics must still free its job: report it as failed.
    ctx.tasks.spawn(async move {
        let report = match run.await {
            Ok(report) => report,
            Err(e) => {
                tracing::error!(job = %job, "the run's task failed: {e}");
                let now = Utc::now();
                RunReport {
                    job,
                    run_id: None,
                    trigger,
                    scheduled_at,
                    attempt,
                    outcome: Outcome::Failed,
                    started_at: now,
                    finished_at: now,
                    error: Some(format!("internal error: {e}")),
                    exit_code: None,
                    result: None,
                    busy: None,
                    stuck: false,
                }
            }
        };
        let _ = events.send(RunEvent::Finished(report));
    });
}

async fn on_event(ctx: &mut Ctx, jobs: &mut Vec<JobState>, event: RunEvent) {
    match event {
        RunEvent::Started { job, run_id, pid } => {
            if let Some(r) = find(jobs, &job).and_then(|s| s.running.as_mut()) {
                r.run_id = Some(run_id);
                r.pid = pid;
            }
        }
        RunEvent::Finished(report) => {
            log_report(&report);
            let Some(state) = find(jobs, &report.job) else {
                return;
            };
            if report.stuck {
                if let Some(r) = state.running.as_mut() {
                    r.stuck = true;
                }
            } else {
                state.running = None;
            }
            if state.retired {
                if state.running.is_none() {
                    jobs.retain(|s| s.job.id != report.job || !s.retired);
                }
                return;
            }
            plan_retry(ctx, state, &report).await;
            start_pending(ctx, state);
        }
        RunEvent::Released { job, .. } => {
            if let Some(state) = find(jobs, &job) {
                state.running = None;
                if state.retired {
                    jobs.retain(|s| s.job.id != job || !s.retired);
                    return;
                }
                start_pending(ctx, state);
            }
        }
    }
}

fn find<'a>(jobs: &'a mut [JobState], id: &str) -> Option<&'a mut JobState> {
    jobs.iter_mut().find(|s| s.job.id == id)
}

/// Starts the next queued run once the job is free (and no retry waits).
fn start_pending(ctx: &mut Ctx, state: &mut JobState) {
    if state.running.is_none()
        && state.retry.is_none()
        && let Some(next) = state.pending.pop_front()
    {
        start(ctx, state, next);
    }
}

/// Schedules a retry of a failed run, or says on its row why there is none.
async fn plan_retry(ctx: &mut Ctx, state: &mut JobState, report: &RunReport) {
    let job = Arc::clone(&state.job);
    let policy = &job.retry;
    let Some(run_id) = report.run_id else { return };
    if !policy.on.contains(&report.outcome) || report.attempt >= policy.attempts {
        return;
    }
    let next_attempt = report.attempt + 1;
    let delay = jitter(policy.delay_before(next_attempt));
    let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
    let tz = ctx.calendar.tz();
    let fmt = |t: DateTime<Utc>| t.with_timezone(&tz).format("%H:%M:%S %Z").to_string();
    let next_slot = job
        .trigger
        .next_fire_after(&ctx.calendar, report.scheduled_at.max(Utc::now()));
    let window_end = job
        .trigger
        .window_end_for(&ctx.calendar, report.scheduled_at);
    let refusal = match (next_slot, window_end) {
        (Some(next), _) if at >= next => Some(format!("no retry: next slot at {}", fmt(next))),
        (_, Some(end)) if at > end => Some(format!(
            "no retry: the session's window ends at {}",
            fmt(end)
        )),
        _ => None,
    };
    match refusal {
        None => {
            tracing::info!(
                "🔁 {} will retry in {} (attempt {next_attempt}/{})",
                job.id,
                format_duration(delay),
                policy.attempts
            );
            state.retry = Some(Pending {
                trigger: TriggerKind::Retry,
                scheduled_at: report.scheduled_at,
                attempt: next_attempt,
                at: Some(at),
            });
        }
        Some(why) => {
            tracing::info!("   {}: {why}", job.id);
            let error = match &report.error {
                Some(e) => format!("{e}; {why}"),
                None => why,
            };
            let env = Arc::clone(&ctx.env);
            ctx.tasks.spawn(async move {
                if let Err(e) = env.db(move |h| h.set_error(run_id, &error)).await {
                    tracing::error!("cannot record why there is no retry: {e}");
                }
            });
        }
    }
}

/// ±10 % of `d`, so retries of many jobs do not land together.
fn jitter(d: Duration) -> Duration {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        ^ u64::from(Utc::now().timestamp_subsec_nanos());
    // splitmix64: a good spread from a weak seed.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(0.9 + 0.2 * unit)
}

/// One console line for a finished run, in the old tool's style.
pub fn log_report(report: &RunReport) {
    let took = format_duration(report.duration());
    let run = report
        .run_id
        .map_or_else(String::new, |id| format!(" (run {id})"));
    let attempt = if report.attempt > 1 {
        format!(", attempt {}", report.attempt)
    } else {
        String::new()
    };
    match report.outcome {
        Outcome::Success => tracing::info!("✅ {} succeeded in {took}{run}{attempt}", report.job),
        Outcome::Skipped => tracing::info!(
            "⏭️  {} skipped: {}",
            report.job,
            report.busy.as_deref().unwrap_or("busy")
        ),
        other => tracing::warn!(
            "❌ {} {} after {took}{run}{attempt}: {}",
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

async fn shutdown(
    signal_name: &str,
    config: &Config,
    ctx: &mut Ctx,
    jobs: &mut [JobState],
    events: &mut mpsc::UnboundedReceiver<RunEvent>,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
) {
    for state in jobs.iter_mut() {
        state.pending.clear();
        state.retry = None;
    }
    // Stuck threads cannot be waited for: they end with the process.
    let running = |jobs: &[JobState]| {
        jobs.iter()
            .filter(|s| s.running.as_ref().is_some_and(|r| !r.stuck))
            .count()
    };
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
    let cancel_all = |jobs: &[JobState], why: &str| {
        for r in jobs.iter().filter_map(|s| s.running.as_ref()) {
            let _ = r.cancel.send(Some(why.to_string()));
        }
    };
    while running(jobs) > 0 {
        tokio::select! {
            Some(event) = events.recv() => {
                if let RunEvent::Finished(report) = event {
                    log_report(&report);
                    if let Some(state) = find(jobs, &report.job) {
                        if report.stuck {
                            if let Some(r) = state.running.as_mut() { r.stuck = true; }
                        } else {
                            state.running = None;
                        }
                    }
                }
            }
            Some(_) = ctx.tasks.join_next(), if !ctx.tasks.is_empty() => {}
            _ = tokio::time::sleep_until(deadline), if !cancelled => {
                tracing::warn!("⏱️  shutdown grace is over: ending {} running job(s)", running(jobs));
                cancelled = true;
                cancel_all(jobs, "the scheduler is shutting down");
            }
            _ = sigterm.recv(), if !cancelled => {
                tracing::warn!("🛑 second signal: ending running jobs now");
                cancelled = true;
                cancel_all(jobs, "the scheduler is shutting down (second signal)");
            }
            _ = sigint.recv(), if !cancelled => {
                tracing::warn!("🛑 second signal: ending running jobs now");
                cancelled = true;
                cancel_all(jobs, "the scheduler is shutting down (second signal)");
            }
        }
    }
}

/// Rows left `running` by a process that is gone become `abandoned`, and whatever their
/// processes left running is ended (found by the run's tag, so a reused PID is never hit);
/// returns how many.
fn abandon_dead_runs(history: &History, grace: Duration) -> Result<usize> {
    let mut n = 0;
    for row in history.running()? {
        let owner_alive = row.owner_pid.is_some_and(crate::process::scheduler_alive);
        if owner_alive {
            continue;
        }
        if let Some(owner) = row.owner_pid.and_then(|p| u32::try_from(p).ok()) {
            let tag = crate::runner::run_tag(owner, row.id);
            let orphans = crate::process::tagged_processes(&tag);
            if !orphans.is_empty() {
                tracing::warn!(
                    "🧹 run {} of {}: ending {} process(es) its dead owner left behind",
                    row.id,
                    row.job,
                    orphans.len()
                );
                // Before the runtime runs anything else: a plain blocking wait is fine here.
                end_tagged_now(&tag, grace);
            }
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

/// Ends the processes tagged `tag`: SIGTERM, up to `grace`, SIGKILL (blocking; start-up only).
fn end_tagged_now(tag: &str, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for pid in crate::process::tagged_processes(tag) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline && !crate::process::tagged_processes(tag).is_empty()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in crate::process::tagged_processes(tag) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
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
    for job in config.jobs.iter().filter(|j| j.enabled) {
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
