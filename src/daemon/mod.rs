//! The daemon: a dispatcher that owns every job's state, sleeps until the next fire instant of
//! any job (or a retry), decides what is due (`decide`, pure) and dispatches it. It never awaits
//! I/O: runs are tasks that report by message, history rows are messages to the one writer, and
//! the health check, the status report and a reload are tasks that answer by message (`chores`).
//!
//! Time: the loop sleeps on the monotonic clock and reads the wall clock at every wake. A wall
//! clock that moved more (or less) than the monotonic one is a step: it is logged with its size;
//! slots it jumped over are accounted for in one compact `skipped` row per gap, and a backward
//! step fires nothing twice (a job's next slot only moves forward).

mod chores;
mod cluster_glue;
mod decide;
mod recovery;
mod report;

use recovery::abandon_dead_runs;
use report::banner;
pub use report::log_report;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::calendar::Calendar;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::history::{History, Outcome, Recorder};
use crate::instance::InstanceLock;
use crate::interpreter::Interpreter;
use crate::runner::{self, OnBusy, RunEnv, RunEvent, RunReport, RunRequest};
use chores::{Chore, LagStats};
use decide::{Action, JobState, Wake};

/// The longest the loop sleeps without looking at the wall clock again: how soon a clock step
/// (or the end of a suspend) is noticed when no slot is near. A slot that comes is never later
/// than its own timer; this only bounds how long a step goes unnoticed while nothing is due.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// A difference between wall-clock and monotonic time larger than this is a clock step.
const STEP: chrono::Duration = chrono::Duration::seconds(1);
/// Ids the daemon's history writer reserves at a time.
const RESERVE_IDS: i64 = 16;

/// The dispatcher's own state besides the jobs.
struct Dispatcher {
    started_at: DateTime<Utc>,
    config: Arc<Config>,
    env: Arc<RunEnv>,
    calendar: Arc<Calendar>,
    events: mpsc::UnboundedSender<RunEvent>,
    chores: mpsc::UnboundedSender<Chore>,
    /// Runs, and the tasks that report a run's end even when it panics.
    tasks: JoinSet<()>,
    /// How to cancel each job's running run.
    cancels: HashMap<String, watch::Sender<Option<String>>>,
    lock: Arc<Mutex<InstanceLock>>,
    lag: LagStats,
    /// The local date of the last daily chores (pruning, coverage warning).
    daily_done: Option<chrono::NaiveDate>,
    health_running: bool,
    report_running: bool,
    /// A reload is being read; `true` inside when another SIGHUP came meanwhile.
    reloading: Option<bool>,
    /// `reload` commands waiting for the reload's outcome.
    reload_waiters: Vec<tokio::sync::oneshot::Sender<crate::control::Reply>>,
    /// Cluster mode: this daemon's node.
    node: Option<crate::cluster::Node>,
    /// How long before a slot the loop deals with it (a cluster node claims it then).
    lead: chrono::Duration,
    /// Notifications, pings and metrics.
    obs: crate::observe::Observer,
    /// The HTTP endpoint's shared state (`[http]`), told of reloads.
    web: Option<Arc<crate::web::Web>>,
    /// Pauses, backfills and triggers, as kept across restarts: the last snapshot saved.
    kept: crate::control::Persisted,
    saver: crate::control::Saver,
    /// Each paused job's compact row: (id, uid).
    pause_rows: HashMap<String, (i64, String)>,
    /// Cluster mode: each job's slots are audited for gaps up to this instant.
    audited: HashMap<String, DateTime<Utc>>,
    /// Each job's backfill ranges, kept until its queue is worked off.
    backfill_spans: HashMap<String, Vec<crate::control::Span>>,
}

/// Runs the daemon in the foreground until SIGINT or SIGTERM.
pub async fn run(
    config: Config,
    interpreter: Interpreter,
    allow_drift: bool,
    (forks, warming): (
        Arc<crate::runner::ForkPool>,
        std::thread::JoinHandle<Result<()>>,
    ),
) -> Result<()> {
    let started_at = Utc::now();
    let lock = InstanceLock::acquire(
        &config.scheduler.log_dir,
        started_at,
        config.calendar().tz(),
    )?;
    let recorder = Recorder::open(&config.scheduler.history, RESERVE_IDS)?;
    // The fork server has been importing its preloads meanwhile: a preload that fails or starts
    // a thread stops the start here, before this daemon joins a cluster or records anything.
    warming
        .join()
        .map_err(|_| Error::Other("internal error: the fork server's start failed".into()))??;
    forks.announce();
    // Containment is set up now: the first run's child can be forked ahead, into its cgroup.
    forks.spare();
    // Cluster mode: join first, so what is recorded from here on carries the node.
    let (node, mut cluster_events, cluster_last) = if let Some(cluster) = &config.cluster {
        let (node, events) =
            crate::cluster::Node::start(&config, recorder.clone(), allow_drift).await?;
        let last = node.last_slots().await;
        // The runs end if this daemon is silent (stopped, hung) past its trust deadline: by
        // then another node may be given their slots.
        crate::contain::keeper_note(&format!("D {}", cluster.trust().as_millis()));
        let every = (cluster.heartbeat / 4).max(Duration::from_millis(25));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                crate::contain::keeper_note("P");
            }
        });
        (Some(node), Some(events), last)
    } else {
        (None, None, HashMap::new())
    };
    let reader = History::open_read_only(&config.scheduler.history)?;
    let abandoned = match &reader {
        Some(h) => {
            // What a previous process could not write goes in first: rows it ended are not
            // settled again.
            let r = recorder.clone();
            let _ = tokio::task::spawn_blocking(move || r.flush(Duration::from_secs(2))).await;
            let settled = abandon_dead_runs(h, &recorder, &config).await?;
            let recorded = runner::record_left_results(&config, h, &recorder);
            if recorded > 0 {
                tracing::warn!(
                    "🧹 {} whose rows were lost (the history refused writes when the scheduler died) recorded from the results they left",
                    crate::fmt::n(recorded, "run")
                );
            }
            settled + recorded
        }
        None => 0,
    };
    if abandoned > 0 {
        // Before anything fires, so `status` never shows a dead run as running; bounded, so a
        // locked history cannot hold the start.
        let r = recorder.clone();
        let _ = tokio::task::spawn_blocking(move || r.flush(Duration::from_secs(2))).await;
    }
    recorder.daemon_started(std::process::id(), started_at);
    let last_slots: Vec<Option<DateTime<Utc>>> = config
        .jobs
        .iter()
        .filter(|j| j.enabled)
        .map(|j| {
            let local = match &reader {
                Some(h) => h.last_slot(&j.id)?,
                None => None,
            };
            // In a cluster, the newest slot any node dealt with.
            Ok(local.max(cluster_last.get(&j.id).copied()))
        })
        .collect::<Result<_>>()?;
    let obs = crate::observe::Observer::start(&config, reader.as_ref());
    let kept = crate::control::load(&config.scheduler.log_dir);
    // The backfill ranges kept: their slots still without a successful run go on.
    let mut backfill: HashMap<String, Vec<DateTime<Utc>>> = HashMap::new();
    for (id, spans) in &kept.backfill {
        let Some(job) = config.job(id) else { continue };
        let mut slots = std::collections::BTreeSet::new();
        for span in spans {
            slots.extend(crate::control::missing_slots(
                job,
                &config.calendar(),
                reader.as_ref(),
                *span,
                Utc::now(),
            )?);
        }
        backfill.insert(id.clone(), slots.into_iter().collect());
    }
    drop(reader);

    let calendar = config.calendar();
    let config = Arc::new(config);
    let env = Arc::new(RunEnv::new(
        Arc::clone(&config),
        interpreter.path.clone(),
        recorder.clone(),
        Arc::clone(&forks),
    ));

    banner(&config, &interpreter, &calendar);
    if abandoned > 0 {
        tracing::warn!(
            "⚠️  {} of a dead process settled: abandoned, or recorded as they went from the results they left (what of theirs was still running was ended)",
            crate::fmt::n(abandoned, "run")
        );
    }
    // In a cluster the loop decides by the cluster's time (the database's clock), not by this
    // host's wall clock, which may step.
    let clock =
        |node: &Option<crate::cluster::Node>| node.as_ref().map_or_else(Utc::now, |n| n.now());
    let now = clock(&node);
    let market = crate::market::at_instant(&calendar, now);
    tracing::info!(
        "{} {}",
        if market.open { "📈" } else { "💤" },
        market.summary
    );
    let mut jobs: Vec<JobState> = config
        .jobs
        .iter()
        .filter(|j| j.enabled)
        .zip(last_slots)
        .map(|(job, last)| JobState::new(Arc::new(job.clone()), &calendar, last, now))
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
    let (control_tx, mut control) = mpsc::unbounded_channel::<crate::control::Asked>();
    // `/healthz` asks the loop to answer.
    let (probe_tx, mut probes) = mpsc::unbounded_channel::<tokio::sync::oneshot::Sender<()>>();
    let (chores_tx, mut chores) = mpsc::unbounded_channel::<Chore>();
    let mut d = Dispatcher {
        started_at,
        config: Arc::clone(&config),
        env: Arc::clone(&env),
        calendar: Arc::clone(&calendar),
        events: events_tx,
        chores: chores_tx,
        tasks: JoinSet::new(),
        cancels: HashMap::new(),
        lock: Arc::new(Mutex::new(lock)),
        lag: LagStats::default(),
        daily_done: None,
        health_running: false,
        report_running: false,
        reloading: None,
        reload_waiters: Vec::new(),
        lead: node
            .as_ref()
            .map_or(decide::LEAD, |n| n.config.claim_lead()),
        node,
        web: None,
        obs,
        kept: crate::control::Persisted::default(),
        saver: crate::control::Saver::start(config.scheduler.log_dir.clone()),
        pause_rows: HashMap::new(),
        audited: HashMap::new(),
        backfill_spans: HashMap::new(),
    };
    // The gap audit starts two leases before this start: a slot missed just before it and not
    // recorded then (a live node might still have claimed it) is audited too; older ones are in
    // the catch-up's gap row.
    if let Some(node) = &d.node {
        let back = chrono::Duration::from_std(node.config.lease * 2).unwrap_or_default();
        for state in &jobs {
            d.audited
                .insert(state.job.id.clone(), state.checked.max(now - back));
        }
    }
    d.restore(&mut jobs, kept, backfill);
    tokio::spawn(crate::control::listen(
        config.scheduler.log_dir.clone(),
        control_tx,
    ));
    if let Some(http) = config.http.clone() {
        let web = crate::web::Web::new(
            Arc::clone(&config),
            Arc::clone(&d.obs.metrics),
            probe_tx.clone(),
        );
        // A runtime of its own, on a thread of its own: `/healthz` answers (503) even when the
        // loop's thread is stuck, and no request ever runs on the loop's thread.
        let served = Arc::clone(&web);
        let spawned = std::thread::Builder::new()
            .name("hedge-http".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(crate::web::serve(http, served)),
                    Err(e) => tracing::error!("❗ the HTTP endpoint cannot start: {e}"),
                }
            });
        if let Err(e) = spawned {
            tracing::error!("❗ the HTTP endpoint cannot start: {e}");
        }
        d.web = Some(web);
    }
    drop(probe_tx);
    tracing::info!(
        "✅ All services initialized ({})",
        crate::fmt::n(jobs.len(), "job")
    );
    d.obs.daemon(
        &d.config,
        format!(
            "🟢 hedge-scheduler started (PID {}, {})",
            std::process::id(),
            crate::fmt::n(jobs.len(), "job")
        ),
    );
    if abandoned > 0 {
        d.obs.daemon(
            &d.config,
            format!(
                "🧹 hedge-scheduler started after a crash: {} of the dead process settled",
                crate::fmt::n(abandoned, "run")
            ),
        );
    }
    d.health(&mut jobs);
    crate::health::notify_systemd("READY=1");

    let mut health_every = tokio::time::interval_at(
        Instant::now() + config.scheduler.health_interval,
        config.scheduler.health_interval,
    );
    health_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report_every = tokio::time::interval_at(
        Instant::now() + config.scheduler.report_interval,
        config.scheduler.report_interval,
    );
    report_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // systemd's watchdog (WatchdogSec=) is pinged from this loop at half its period, whatever
    // `health_interval` says: a ping means the loop that fires the jobs turns.
    let mut watchdog = crate::health::watchdog().map(|every| {
        tracing::info!(
            "🐕 systemd watchdog: pinged every {}",
            humantime::format_duration(every)
        );
        let mut i = tokio::time::interval(every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });

    // The last wake, on both clocks, to tell a clock step from the passing of time.
    let mut last_wake = (Instant::now(), d.now());
    let signal_name = loop {
        let now = d.now();
        let due = jobs.iter().filter_map(|j| j.wake_at(d.lead)).min();
        let sleep_for = due
            .map(|at| (at - now).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        let wake_at = Instant::now() + sleep_for;
        tokio::select! {
            biased;
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = tokio::time::sleep_until(wake_at) => {
                if due.is_some_and(|at| at <= now + chrono::Duration::from_std(sleep_for).unwrap_or_default()) {
                    let lag = Instant::now().saturating_duration_since(wake_at);
                    d.lag.record(lag);
                    d.obs.metrics.loop_lag(lag);
                }
                let (mono, wall) = (Instant::now(), d.now());
                let step = clock_step(last_wake, (mono, wall));
                last_wake = (mono, wall);
                d.tick(&mut jobs, wall, step.as_deref());
                d.keep(&jobs);
            }
            Some(event) = events.recv() => {
                d.on_event(&mut jobs, event);
                d.keep(&jobs);
            }
            Some(event) = cluster_event(&mut cluster_events) => d.on_cluster(&mut jobs, event),
            Some(chore) = chores.recv() => {
                if let Some(why) = d.on_chore(&mut jobs, chore) {
                    break why;
                }
            }
            Some(_) = d.tasks.join_next(), if !d.tasks.is_empty() => {}
            Some(reply) = probes.recv() => { let _ = reply.send(()); }
            Some((req, answer)) = control.recv() => {
                if matches!(req, crate::control::Request::Reload) {
                    // Answered when the reload is applied or refused.
                    d.reload_waiters.push(answer);
                    d.reload("`reload`");
                } else {
                    let reply = d.control(&mut jobs, req);
                    d.keep(&jobs);
                    // Answered once what it changed is kept: a `status` right after shows it.
                    let written = d.saver.written();
                    tokio::spawn(async move {
                        let _ = written.await;
                        let _ = answer.send(reply);
                    });
                }
            }
            _ = sighup.recv() => d.reload("SIGHUP"),
            _ = health_every.tick() => d.health(&mut jobs),
            _ = tick_if(watchdog.as_mut()) => crate::health::notify_systemd("WATCHDOG=1"),
            _ = report_every.tick() => d.report(&jobs),
        }
    };

    crate::health::notify_systemd("STOPPING=1");
    d.shutdown(
        signal_name,
        &mut jobs,
        &mut events,
        &mut sigterm,
        &mut sigint,
    )
    .await;
    while d.tasks.join_next().await.is_some() {}
    recorder.daemon_stopped(Utc::now());
    d.obs.daemon(
        &d.config,
        format!("🔴 hedge-scheduler stopped ({signal_name})"),
    );
    // The last words go out (bounded): a stop is worth hearing about.
    let drain = d.obs.outbox.drain();
    let _ = tokio::task::spawn_blocking(move || drain.wait(Duration::from_secs(3))).await;
    if let Some(node) = &d.node {
        // The journal's last rows go up, then the node says it stopped: peers take the next
        // slots without waiting for its lease.
        let r = recorder.clone();
        let _ = tokio::task::spawn_blocking(move || r.flush(Duration::from_secs(2))).await;
        node.leave().await;
    }
    let spill = recorder.spill_path().map(Path::to_path_buf);
    let left = tokio::task::spawn_blocking(move || recorder.close(Duration::from_secs(10)))
        .await
        .unwrap_or(0);
    let _ = std::fs::remove_file(crate::health::state_path(&d.config.scheduler.log_dir));
    if left > 0 {
        // Not a clean stop: say so by the exit code, and where the rows are.
        return Err(crate::error::Error::Other(match spill {
            Some(spill) => format!(
                "stopped with {left} history write(s) the database refused; they are kept in `{}` and written at the next start",
                spill.display()
            ),
            None => {
                format!("stopped with {left} history write(s) the database refused: they are lost")
            }
        }));
    }
    tracing::info!("👋 hedge-scheduler stopped");
    Ok(())
}

/// A clock step between two wakes, in words, when the wall clock moved by more than `STEP`
/// besides the time that passed (logged here).
fn clock_step(before: (Instant, DateTime<Utc>), after: (Instant, DateTime<Utc>)) -> Option<String> {
    let mono = chrono::Duration::from_std(after.0.saturating_duration_since(before.0)).ok()?;
    let step = (after.1 - before.1) - mono;
    if step.abs() <= STEP {
        return None;
    }
    let size = humantime::format_duration(Duration::from_millis(
        step.num_milliseconds().unsigned_abs(),
    ));
    if step > chrono::Duration::zero() {
        tracing::warn!(
            "⏰ the wall clock stepped forward by {size} (or the machine was suspended): slots it passed over are accounted for"
        );
        Some(format!(
            "the wall clock stepped forward by {size} (or the machine was suspended)"
        ))
    } else {
        tracing::warn!(
            "⏰ the wall clock stepped back by {size}: slots already dealt with do not fire again"
        );
        None
    }
}

impl Dispatcher {
    /// The time slots are decided by: the cluster's (the database's clock, carried on this
    /// host's monotonic clock) in cluster mode, else this host's wall clock.
    fn now(&self) -> DateTime<Utc> {
        self.node.as_ref().map_or_else(Utc::now, |n| n.now())
    }

    fn wake<'a>(&'a self, now: DateTime<Utc>, late_because: Option<&'a str>) -> Wake<'a> {
        Wake {
            calendar: &self.calendar,
            now,
            started_at: self.started_at,
            late_because,
            lead: self.lead,
        }
    }

    /// Fires what is due at `now` for every job.
    fn tick(&mut self, jobs: &mut [JobState], now: DateTime<Utc>, late_because: Option<&str>) {
        for state in jobs.iter_mut() {
            let actions = decide::tick(state, &self.wake(now, late_because));
            self.dispatch(state, actions);
        }
    }

    /// Carries out the decisions for one job.
    fn dispatch(&mut self, state: &JobState, actions: Vec<Action>) {
        let tz = self.calendar.tz();
        let hms = |t: DateTime<Utc>| t.with_timezone(&tz).format("%H:%M:%S").to_string();
        let job = &state.job.id;
        for action in actions {
            match action {
                Action::Start(p) => self.start(state, p),
                Action::Skip {
                    trigger,
                    slot,
                    reason,
                } => {
                    tracing::info!("⏭️  {job} skipped: {reason}");
                    // In a cluster, say where the run that holds the job is.
                    let reason = match &self.node {
                        Some(n) => format!("node {}: {reason}", n.config.node),
                        None => reason,
                    };
                    self.record_skip(job, trigger, slot, reason, None);
                }
                Action::Gap {
                    first,
                    last,
                    count,
                    reason,
                } => {
                    tracing::warn!(
                        "⏰ {job}: {} missed ({} … {}): {reason}",
                        crate::fmt::n(count, "slot"),
                        hms(first),
                        hms(last)
                    );
                    // In a cluster a slot still within its bound is not this node's to record
                    // as missed: a live node may still claim it (this one started, or came back,
                    // just after it). The gap ends at the slot before; the gap audit records
                    // that one if nobody runs it.
                    let (last, count) = if self.node.is_some()
                        && crate::cluster::valid_until(&state.job, &self.calendar, last)
                            > self.now()
                    {
                        match state.job.trigger.previous_fire_before(&self.calendar, last) {
                            Some(prev) if count > 1 && prev >= first => (prev, count - 1),
                            _ => continue,
                        }
                    } else {
                        (last, count)
                    };
                    // In a cluster the newest slot any node dealt with is the start: slots
                    // missed since were missed by every node.
                    let reason = match &self.node {
                        Some(_) => reason.replace(
                            "missed while the scheduler was not running",
                            "missed: no node of the cluster was alive",
                        ),
                        None => reason,
                    };
                    self.record_skip(
                        job,
                        crate::history::TriggerKind::Schedule,
                        first,
                        reason,
                        Some((count, last)),
                    );
                }
                Action::Cancel(reason) => {
                    tracing::info!("🔁 {job}: {reason}");
                    if let Some(tx) = self.cancels.get(job) {
                        let _ = tx.send(Some(reason));
                    }
                }
                Action::Retry { at, attempt } => tracing::info!(
                    "🔁 {job} will retry at {} (attempt {attempt}/{})",
                    hms(at),
                    state.job.retry.attempts
                ),
                Action::NoRetry { run_uid, error } => {
                    tracing::info!("   {job}: {error}");
                    self.env.recorder.set_error(&run_uid, error);
                }
                Action::Paused { first, last, count } => {
                    let recorder = &self.env.recorder;
                    let new = !self.pause_rows.contains_key(job);
                    let (id, uid) = self
                        .pause_rows
                        .entry(job.clone())
                        .or_insert_with(|| (recorder.next_id(), crate::history::new_uid()))
                        .clone();
                    if new {
                        self.obs
                            .metrics
                            .skipped_row(job, crate::history::TriggerKind::Schedule);
                    }
                    tracing::info!("⏸️  {job}: slot at {} held back (paused)", hms(last));
                    let reason = match state.pause.as_ref().and_then(|p| p.until) {
                        Some(until) => format!(
                            "paused until {} (`hedge-scheduler pause`)",
                            until.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z")
                        ),
                        None => "paused (`hedge-scheduler pause`) until `resume`".to_string(),
                    };
                    recorder.gap_row(id, &uid, job, first, last, count, &reason);
                }
                Action::Resumed => {
                    tracing::info!("▶️  {job}: the pause is over");
                    self.pause_rows.remove(job);
                }
            }
        }
    }

    /// Starts a run of the job now (the state already holds it as running).
    fn start(&mut self, state: &JobState, p: decide::Pending) {
        let (cancel_tx, cancel_rx) = watch::channel(None);
        self.cancels.insert(state.job.id.clone(), cancel_tx);
        let req = RunRequest {
            job: Arc::clone(&state.job),
            trigger: p.trigger,
            scheduled_at: p.scheduled_at,
            attempt: p.attempt,
            // A slot (or a retry) starts at its instant exactly, however early the loop woke.
            not_before: Some(p.at.unwrap_or(p.scheduled_at)),
            tag: p.tag.clone(),
        };
        // Cluster mode: a new slot is claimed first (a retry or a takeover already owns it).
        let claim = match (&self.node, &p.tag) {
            // A backfill runs where it was asked for: its past slot's claim is long settled.
            (Some(_), None) if p.trigger == crate::history::TriggerKind::Backfill => None,
            (Some(node), None) => Some((
                node.clone(),
                crate::cluster::ClaimRequest {
                    job: state.job.id.clone(),
                    slot: p.scheduled_at,
                    manual: p.trigger == crate::history::TriggerKind::Manual,
                    valid_until: match p.trigger {
                        // A missed slot being caught up is past its own bound already: it may
                        // wait its turn behind the backlog for as long as a run may take.
                        crate::history::TriggerKind::CatchUp => {
                            self.now()
                                + chrono::Duration::from_std(state.job.timeout).unwrap_or_default()
                        }
                        _ => {
                            crate::cluster::valid_until(&state.job, &self.calendar, p.scheduled_at)
                        }
                    },
                    overlap: state.job.overlap,
                    // A backlog is worked off in order, cluster-wide too: a catch-up waits for
                    // the job's run on another node instead of being skipped by it.
                    wait: p.trigger == crate::history::TriggerKind::CatchUp,
                    primary_runs_without_db: self.config.database_loss(&state.job)
                        == crate::config::DatabaseLoss::Primary,
                },
            )),
            _ => None,
        };
        let env = Arc::clone(&self.env);
        let events = self.events.clone();
        let node_for_start = self.node.clone();
        let (job, trigger, scheduled_at, attempt) = (
            state.job.id.clone(),
            req.trigger,
            req.scheduled_at,
            req.attempt,
        );
        let run = tokio::spawn({
            let events = events.clone();
            async move {
                let mut req = req;
                if let Some((node, claim)) = claim {
                    match cluster_glue::claim(&env, &node, claim, &req).await {
                        Ok(tag) => {
                            // A clock ahead of the database's waits that much more, so the run
                            // starts at the slot's instant by the database's clock.
                            req.not_before =
                                req.not_before.map(|t| t + cluster_glue::clock_shift(&node));
                            let _ = events.send(RunEvent::Claimed {
                                job: req.job.id.clone(),
                                tag: tag.clone(),
                            });
                            req.tag = Some(tag);
                        }
                        Err(report) => return *report,
                    }
                }
                cluster_glue::sleep_until_near(req.not_before).await;
                if let Some(node) = &node_for_start
                    && let Some(report) = cluster_glue::may_start(&env, node, &req)
                {
                    return *report;
                }
                runner::run(&env, req, cancel_rx, Some(events), OnBusy::Skip).await
            }
        });
        // A run that panics must still free its job: report it as failed.
        self.tasks.spawn(async move {
            let report = match run.await {
                Ok(report) => report,
                Err(e) => {
                    tracing::error!(job = %job, "the run's task failed: {e}");
                    let mut r =
                        RunReport::new(job, trigger, scheduled_at, attempt, Outcome::Failed);
                    r.error = Some(format!("internal error: {e}"));
                    r
                }
            };
            let _ = events.send(RunEvent::Finished(Box::new(report)));
        });
    }

    fn on_event(&mut self, jobs: &mut Vec<JobState>, event: RunEvent) {
        let now = self.now();
        match event {
            RunEvent::Started {
                job,
                run_id,
                uid,
                pid,
            } => {
                if let Some(state) = find(jobs, &job) {
                    self.obs.run_started(&self.config, &state.job, run_id, &uid);
                    if let Some(r) = state.running.as_mut() {
                        r.run_id = Some(run_id);
                        r.pid = pid;
                    }
                }
            }
            RunEvent::Finished(report) => {
                log_report(&report);
                let Some(i) = jobs.iter().position(|s| s.job.id == report.job) else {
                    self.obs.run_ended(&self.config, &report, true);
                    return;
                };
                let ended = decide::Ended {
                    run_id: report.run_id,
                    run_uid: report.run_uid.clone(),
                    scheduled_at: report.scheduled_at,
                    attempt: report.attempt,
                    outcome: report.outcome,
                    error: report.error.clone(),
                    stuck: report.stuck,
                    tag: report.tag.clone(),
                };
                let actions = decide::finished(&mut jobs[i], &ended, &self.calendar, now, jitter());
                self.obs
                    .run_ended(&self.config, &report, jobs[i].retry.is_none());
                // The slot is free cluster-wide once its run ended for good (a retry keeps it;
                // a stuck thread keeps it until it returns).
                if jobs[i].retry.is_none() && !report.stuck {
                    self.release(&report, report.outcome == Outcome::Success);
                }
                self.dispatch(&jobs[i], actions);
                self.drop_retired(jobs);
            }
            RunEvent::Claimed { job, tag } => {
                if let Some(r) = find(jobs, &job).and_then(|s| s.running.as_mut()) {
                    r.tag = Some(tag);
                }
            }
            RunEvent::Released { job } => {
                if let Some(i) = jobs.iter().position(|s| s.job.id == job) {
                    let actions = decide::released(&mut jobs[i], now);
                    self.dispatch(&jobs[i], actions);
                    self.drop_retired(jobs);
                }
            }
        }
    }

    /// Applies what a previous daemon kept: pauses, backfill queues, triggers not started.
    fn restore(
        &mut self,
        jobs: &mut [JobState],
        kept: crate::control::Persisted,
        mut backfill: HashMap<String, Vec<DateTime<Utc>>>,
    ) {
        let now = Utc::now();
        for state in jobs.iter_mut() {
            let id = &state.job.id;
            if let Some(p) = kept.paused.get(id)
                && p.until.is_none_or(|u| u > now)
            {
                state.pause = Some(decide::Pause {
                    until: p.until,
                    gap: None,
                });
                tracing::info!(
                    "⏸️  {id} is paused (since {})",
                    p.since
                        .with_timezone(&self.calendar.tz())
                        .format("%Y-%m-%d %H:%M %Z")
                );
            }
            if let Some(slots) = backfill.remove(id)
                && !slots.is_empty()
            {
                tracing::info!("⏪ {id}: {} backfill slot(s) to go", slots.len());
                state.backfill = slots.into();
                if let Some(spans) = kept.backfill.get(id) {
                    self.backfill_spans.insert(id.clone(), spans.clone());
                }
            }
        }
        self.kept = crate::control::Persisted {
            paused: kept.paused,
            ..Default::default()
        };
        for job in kept.triggers {
            let reply = self.control(jobs, crate::control::Request::Trigger { job: job.clone() });
            tracing::info!(
                "▶️  {job}: the manual run asked for before the restart: {}",
                reply.message
            );
        }
        self.keep(jobs);
    }

    /// Saves the pauses, backfills and triggers when they changed.
    fn keep(&mut self, jobs: &[JobState]) {
        let mut now = crate::control::Persisted::default();
        for state in jobs {
            let id = state.job.id.clone();
            if let Some(p) = &state.pause {
                let since = self.kept.paused.get(&id).map_or_else(Utc::now, |k| k.since);
                now.paused.insert(
                    id.clone(),
                    crate::control::Paused {
                        since,
                        until: p.until,
                    },
                );
            }
            if state.backfilling.is_some() || !state.backfill.is_empty() {
                if let Some(spans) = self.backfill_spans.get(&id) {
                    now.backfill.insert(id.clone(), spans.clone());
                }
            } else {
                self.backfill_spans.remove(&id);
            }
            if state
                .pending
                .iter()
                .any(|p| p.trigger == crate::history::TriggerKind::Manual)
            {
                now.triggers.push(id);
            }
        }
        if now != self.kept {
            self.saver.save(now.clone());
            self.kept = now;
        }
    }

    /// A control request from the CLI.
    fn control(
        &mut self,
        jobs: &mut [JobState],
        req: crate::control::Request,
    ) -> crate::control::Reply {
        use crate::control::{Reply, Request};
        let now = Utc::now();
        let tz = self.calendar.tz();
        let Some(i) = jobs
            .iter()
            .position(|s| s.job.id == req.job() && !s.retired)
        else {
            return Reply {
                ok: false,
                message: match self.config.job(req.job()) {
                    Some(_) => format!("`{}` is disabled (`enabled = false`)", req.job()),
                    None => format!("no job `{}` in the running daemon's config", req.job()),
                },
            };
        };
        let job = jobs[i].job.id.clone();
        let ok = |message: String| Reply { ok: true, message };
        match req {
            // Taken by the loop before it comes here.
            Request::Reload => ok("reloading".to_string()),
            Request::Pause { until, .. } => {
                if until.is_some_and(|u| u <= now) {
                    return Reply {
                        ok: false,
                        message: "the pause would end in the past".to_string(),
                    };
                }
                let state = &mut jobs[i];
                let gap = state.pause.as_ref().and_then(|p| p.gap);
                state.pause = Some(decide::Pause { until, gap });
                let when = until.map_or_else(
                    || "until `resume`".to_string(),
                    |u| {
                        format!(
                            "until {}",
                            u.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z")
                        )
                    },
                );
                tracing::info!("⏸️  {job} paused {when}");
                ok(format!("{job} paused {when}"))
            }
            Request::Resume { .. } => {
                let was = jobs[i].pause.take().is_some();
                self.pause_rows.remove(&job);
                if was {
                    tracing::info!("▶️  {job} resumed");
                    let actions: Vec<Action> = decide::next_backfill(&mut jobs[i], now)
                        .into_iter()
                        .collect();
                    self.dispatch(&jobs[i], actions);
                    ok(format!("{job} resumed: its next slot fires as usual"))
                } else {
                    ok(format!("{job} was not paused"))
                }
            }
            Request::Trigger { .. } => {
                if jobs[i].pause.is_some() {
                    return Reply {
                        ok: false,
                        message: format!("{job} is paused: `resume` it first"),
                    };
                }
                let (actions, message) = decide::trigger(&mut jobs[i], now);
                tracing::info!("▶️  {job}: manual run asked for: {message}");
                self.dispatch(&jobs[i], actions);
                ok(format!("{job}: {message}"))
            }
            Request::Backfill { slots, range, .. } => {
                if slots.len() > crate::control::MAX_BACKFILL {
                    return Reply {
                        ok: false,
                        message: format!(
                            "{} slots: at most {} at a time",
                            slots.len(),
                            crate::control::MAX_BACKFILL
                        ),
                    };
                }
                let state = &mut jobs[i];
                // Merged as sets: a long queue costs n log n here, never n².
                let mut queue: std::collections::BTreeSet<DateTime<Utc>> =
                    state.backfill.drain(..).collect();
                let before = queue.len();
                queue.extend(
                    slots
                        .into_iter()
                        .filter(|s| *s <= now && state.backfilling != Some(*s)),
                );
                let added = queue.len() - before;
                state.backfill = queue.into_iter().collect();
                self.backfill_spans
                    .entry(job.clone())
                    .or_default()
                    .push(range);
                tracing::info!(
                    "⏪ {job}: {} to backfill ({} in all)",
                    crate::fmt::n(added, "slot"),
                    state.backfill.len() + usize::from(state.backfilling.is_some())
                );
                let actions: Vec<Action> = decide::next_backfill(state, now).into_iter().collect();
                self.dispatch(&jobs[i], actions);
                ok(format!(
                    "{job}: {} queued for backfill, run one at a time when the job is idle",
                    crate::fmt::n(added, "slot")
                ))
            }
        }
    }

    /// Records a slot (or a gap of slots from `slot`) that does not run. In a cluster, once for
    /// all nodes: the node that marks the slot `skipped` in the database records it.
    fn record_skip(
        &self,
        job: &str,
        trigger: crate::history::TriggerKind,
        slot: DateTime<Utc>,
        reason: String,
        gap: Option<(u64, DateTime<Utc>)>,
    ) {
        let recorder = self.env.recorder.clone();
        let notice = self.obs.missed_notice();
        let (config, count) = (Arc::clone(&self.config), gap.map_or(1, |(n, _)| n));
        let told = move |job: &str, reason: &str| {
            if let Some(j) = config.job(job) {
                notice.send(&config, j, trigger, slot, count, reason);
            }
        };
        match &self.node {
            // A taken-over slot is ours already: its row is ours to write.
            Some(node) if trigger != crate::history::TriggerKind::Takeover => {
                let node = node.clone();
                let job = job.to_string();
                // A gap is marked at its last slot: a node that starts later reads that as the
                // newest slot dealt with, so its own gap (if any) begins after it and never
                // covers the same slots under another first slot.
                let mark = gap.map_or(slot, |(_, last)| last);
                tokio::spawn(async move {
                    // Said by the one node that records it.
                    if node.skip_slot(&job, mark).await {
                        recorder.skipped(&job, trigger, slot, &reason, gap);
                        told(&job, &reason);
                    }
                });
            }
            _ => {
                recorder.skipped(job, trigger, slot, &reason, gap);
                told(job, &reason);
            }
        }
    }

    /// Cluster mode: the slot's claim ends: `done`, or `returned` when the run did not complete
    /// and was ended for the lease (this daemon was silent or cut off past its trust, and the
    /// keeper or `on_database_loss` ended its job; or it was declared dead meanwhile). A
    /// returned slot is run again by the cluster's sweep while it is still worth running; a run
    /// that completed is never run again (nemesis A5).
    fn release(&self, report: &RunReport, completed: bool) {
        let (Some(node), Some(tag)) = (&self.node, report.tag.as_ref()) else {
            return;
        };
        let Some(fence) = tag.fence else { return };
        let view = node.view();
        // Ended for the lease: the keeper ended it while this daemon was silent, or
        // `on_database_loss` did, or the node was declared dead meanwhile.
        let ended_from_outside = matches!(report.outcome, Outcome::Cancelled | Outcome::Crashed);
        let for_the_lease = ended_from_outside
            && (view.epoch != Some(tag.epoch)
                || view.last_lapse.is_some_and(|t| t >= report.started_at));
        let state = if completed || !for_the_lease {
            "done"
        } else {
            "returned"
        };
        node.release(&report.job, report.scheduled_at, fence, state);
    }

    /// Cluster mode, at every health check: the slots no node claimed, recorded or ran (all
    /// nodes' clocks off, a claim lost with its node before it was written, …) are recorded as
    /// missed, once cluster-wide, and alerted, so a lost slot is never silent.
    fn audit_gaps(&mut self, jobs: &[JobState]) {
        let Some(node) = &self.node else { return };
        let now = self.now();
        // Past a slot's bound no node claims it any more; two leases more let every node's
        // journal (what it ran or skipped while cut off) reach the cluster first.
        let margin = chrono::Duration::from_std(node.config.lease * 2).unwrap_or_default();
        for state in jobs {
            let id = state.job.id.clone();
            let from = *self.audited.entry(id.clone()).or_insert(now);
            if state.pause.is_some() {
                // Held back here on purpose: not this node's to call missed.
                self.audited.insert(id, now);
                continue;
            }
            let (slots, upto) =
                cluster_glue::audit_slots(&state.job, &self.calendar, from, now, margin, 500);
            if slots.is_empty() {
                continue;
            }
            self.audited.insert(id.clone(), upto);
            let (node, recorder) = (node.clone(), self.env.recorder.clone());
            let (config, notice) = (Arc::clone(&self.config), self.obs.missed_notice());
            tokio::spawn(async move {
                let gaps = node.audit(&id, slots).await;
                let (Some(first), Some(last)) = (gaps.first().copied(), gaps.last().copied())
                else {
                    return;
                };
                let reason = "missed: no node of the cluster claimed it (found by the gap audit)";
                tracing::warn!(
                    "⏰ {id}: {} no node claimed ({} … {})",
                    crate::fmt::n(gaps.len(), "slot"),
                    crate::fmt::instant(first),
                    crate::fmt::instant(last)
                );
                for slot in &gaps {
                    recorder.skipped(
                        &id,
                        crate::history::TriggerKind::Schedule,
                        *slot,
                        reason,
                        None,
                    );
                }
                if let Some(j) = config.job(&id) {
                    notice.send(
                        &config,
                        j,
                        crate::history::TriggerKind::Schedule,
                        first,
                        gaps.len() as u64,
                        reason,
                    );
                }
            });
        }
    }

    /// What the cluster's coordinator tells the loop.
    fn on_cluster(&mut self, jobs: &mut [JobState], event: crate::cluster::Event) {
        use crate::cluster::Event;
        let now = self.now();
        match event {
            Event::Takeover {
                job,
                slot,
                attempt,
                tag,
                reason,
            } => {
                let Some(i) = jobs.iter().position(|s| s.job.id == job) else {
                    if let Some(node) = &self.node
                        && let Some(fence) = tag.fence
                    {
                        node.release(&job, slot, fence, "skipped");
                    }
                    return;
                };
                tracing::warn!(
                    "🪂 {job}: {reason}; running its slot at {} here",
                    slot.with_timezone(&self.calendar.tz()).format("%H:%M:%S")
                );
                let pending = decide::Pending {
                    trigger: crate::history::TriggerKind::Takeover,
                    scheduled_at: slot,
                    attempt,
                    at: None,
                    tag: Some(tag.clone()),
                };
                let actions = decide::takeover(&mut jobs[i], pending, now, self.calendar.tz());
                if actions.iter().any(|a| matches!(a, Action::Skip { .. }))
                    && let (Some(node), Some(fence)) = (&self.node, tag.fence)
                {
                    node.release(&job, slot, fence, "skipped");
                }
                self.dispatch(&jobs[i], actions);
            }
            Event::Cancel { job, reason } => {
                tracing::info!("🔁 {job}: {reason}");
                if let Some(tx) = self.cancels.get(&job) {
                    let _ = tx.send(Some(reason));
                }
            }
            Event::TrustLost => {
                // A renewal (or a claim, which renews) since the lapse: the lease holds, and a
                // run claimed meanwhile goes on (nemesis A10).
                if self.node.as_ref().is_some_and(|n| {
                    n.view()
                        .trusted_until
                        .is_some_and(|u| tokio::time::Instant::now() < u)
                }) {
                    return;
                }
                let primary = self.node.as_ref().is_some_and(|n| n.config.priority == 0);
                for state in jobs.iter() {
                    let keep = match self.config.database_loss(&state.job) {
                        crate::config::DatabaseLoss::Run => true,
                        crate::config::DatabaseLoss::Primary => primary,
                        crate::config::DatabaseLoss::Skip => false,
                    };
                    // Only runs that started: a run still claiming its slot learns from the
                    // claim whether the lease holds (a cancel sent now would end it at once).
                    if !keep
                        && started(state)
                        && let Some(tx) = self.cancels.get(&state.job.id)
                    {
                        let _ = tx.send(Some(
                            "lost the cluster lease (the database is unreachable): on_database_loss ends the run".to_string(),
                        ));
                    }
                }
            }
            Event::LeaseLost { kept } => {
                for state in jobs.iter() {
                    // Only runs whose slot another node took over end: a run still claiming its
                    // slot claims it as the node's next incarnation, a run without a fence
                    // (without the database) was never the cluster's to give, and a slot the
                    // new incarnation adopted is still this node's.
                    let taken = state
                        .running
                        .as_ref()
                        .and_then(|r| r.tag.as_ref())
                        .and_then(|t| t.fence)
                        .is_some_and(|f| !kept.contains(&f));
                    if started(state)
                        && taken
                        && let Some(tx) = self.cancels.get(&state.job.id)
                    {
                        let _ = tx.send(Some(
                            "this node lost its cluster lease: the slot belongs to another node now"
                                .to_string(),
                        ));
                    }
                }
            }
        }
    }

    fn drop_retired(&mut self, jobs: &mut Vec<JobState>) {
        jobs.retain(|s| !(s.retired && s.running.is_none()));
    }

    /// A task's answer; `Some(reason)` when the daemon must stop.
    fn on_chore(&mut self, jobs: &mut Vec<JobState>, chore: Chore) -> Option<&'static str> {
        match chore {
            Chore::HealthDone { lock_lost } => {
                self.health_running = false;
                if let Some(other) = lock_lost {
                    tracing::error!(
                        "❗ our PID file was removed and another daemon took its place ({other}): stopping"
                    );
                    return Some("lock lost");
                }
            }
            Chore::ReportDone => self.report_running = false,
            Chore::Reloaded(loaded) => {
                let again = self.reloading.take().unwrap_or(false);
                let reply = match *loaded {
                    Ok((config, interpreter)) => {
                        self.apply_reload(jobs, config, interpreter);
                        crate::control::Reply {
                            ok: true,
                            message: format!(
                                "config reloaded: {}",
                                crate::fmt::n(self.config.jobs.len(), "job")
                            ),
                        }
                    }
                    Err(e) => {
                        tracing::error!("❌ config rejected, keeping the old one: {e}");
                        crate::control::Reply {
                            ok: false,
                            message: format!("config rejected, the daemon keeps the old one: {e}"),
                        }
                    }
                };
                // A reload asked for meanwhile is answered by the next one.
                if !again {
                    for answer in self.reload_waiters.drain(..) {
                        let _ = answer.send(reply.clone());
                    }
                }
                if again {
                    self.reload("a reload asked for meanwhile");
                }
            }
        }
        None
    }

    /// Starts the health check unless one is still running.
    fn health(&mut self, jobs: &mut [JobState]) {
        self.audit_gaps(jobs);
        let now = Utc::now();
        let tz = self.calendar.tz();
        let mut problems = Vec::new();
        if let Some(node) = &self.node {
            let view = node.view();
            match view.clock_offset_ms {
                Some(off) if off.unsigned_abs() > node.config.max_clock_skew.as_millis() as u64 => {
                    problems.push(format!(
                        "this host's clock is {off:+} ms off the cluster database's, more than max_clock_skew: slots are not claimed early"
                    ))
                }
                Some(off) if off.abs() > 250 => problems.push(format!(
                    "this host's clock is {off:+} ms off the cluster database's"
                )),
                _ => {}
            }
            if !view.connected {
                problems.push(format!(
                    "cluster database {} unreachable{}",
                    node.config.database_shown,
                    view.last_error
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ));
            }
        }
        // Belt and braces: a run far past its timeout is ended here too.
        for state in jobs.iter() {
            match decide::overdue(state, now, self.config.scheduler.kill_grace, tz) {
                Some(Ok(reason)) => {
                    tracing::warn!(
                        "⏱️  {}: past its timeout, ending it (health check)",
                        state.job.id
                    );
                    if let Some(tx) = self.cancels.get(&state.job.id) {
                        let _ = tx.send(Some(reason));
                    }
                }
                Some(Err(problem)) => problems.push(problem),
                None => {}
            }
        }
        if self.health_running {
            return;
        }
        let today = now.with_timezone(&tz).date_naive();
        let daily = self.daily_done != Some(today);
        self.daily_done = Some(today);
        self.obs.heartbeat(&self.config, now);
        if daily
            && self.config.uses_calendar()
            && let Some(warning) = self.calendar.coverage_warning(today)
        {
            self.obs.coverage(&self.config, format!("📅 {warning}"));
        }
        self.health_running = true;
        let input = chores::HealthInput {
            config: Arc::clone(&self.config),
            recorder: self.env.recorder.clone(),
            lock: Arc::clone(&self.lock),
            started_at: self.started_at,
            problems,
            daily,
            lag: self.lag.summary(),
            notify: self.obs.outbox.stats.summary(),
            forks: Arc::clone(&self.env.forks),
            python: self.env.python.clone(),
        };
        tokio::spawn(chores::health(input, self.chores.clone()));
    }

    /// Starts the status report unless one is still running.
    fn report(&mut self, jobs: &[JobState]) {
        if self.report_running {
            return;
        }
        self.report_running = true;
        let live: Vec<chores::Live> = jobs
            .iter()
            .filter_map(|s| {
                s.running
                    .as_ref()
                    .map(|r| (s.job.id.clone(), r.run_id, r.pid, r.started_at, r.stuck))
            })
            .collect();
        tokio::spawn(chores::report(
            Arc::clone(&self.config),
            live,
            self.chores.clone(),
        ));
    }

    /// SIGHUP or `reload` (`asked_by` says which): reads the config in a task; firing goes on
    /// with the old one meanwhile.
    fn reload(&mut self, asked_by: &str) {
        let path = self.config.file.clone();
        if let Some(again) = self.reloading.as_mut() {
            *again = true;
            tracing::info!("🔄 {asked_by}: a reload is in progress; reloading again after it");
            return;
        }
        tracing::info!("🔄 {asked_by}: reloading {}", path.display());
        self.reloading = Some(false);
        tokio::spawn(chores::reload(
            path,
            self.chores.clone(),
            Arc::clone(&self.env.forks),
        ));
    }

    /// A valid new config takes effect after the last slot each job has dealt with.
    fn apply_reload(&mut self, jobs: &mut Vec<JobState>, new: Config, interpreter: Interpreter) {
        let old = &self.config.scheduler;
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
            let job = Arc::new(job.clone());
            let state = match jobs.iter().position(|s| s.job.id == job.id) {
                Some(i) => {
                    let mut state = jobs.remove(i);
                    state.reconfigure(job, &calendar);
                    state
                }
                None => JobState::new(job, &calendar, None, now),
            };
            next_jobs.push(state);
        }
        // Jobs no longer configured (or now disabled) fire no more; one still running is kept
        // until it ends.
        let (disabled, removed): (Vec<String>, Vec<String>) = jobs
            .iter()
            .map(|s| s.job.id.clone())
            .partition(|id| new.job(id).is_some_and(|j| !j.enabled));
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
        self.env = Arc::new(self.env.with_config(Arc::clone(&new), interpreter.path));
        if let Some(web) = &self.web {
            web.set_config(Arc::clone(&new));
        }
        self.config = new;
        self.calendar = calendar;
        tracing::info!(
            "✅ config reloaded: {}{}",
            crate::fmt::n(self.config.jobs.len(), "job"),
            [("removed", &removed), ("disabled", &disabled)]
                .iter()
                .filter(|(_, ids)| !ids.is_empty())
                .map(|(what, ids)| format!("; {what}: {}", ids.join(", ")))
                .collect::<String>()
        );
    }

    async fn shutdown(
        &mut self,
        signal_name: &str,
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
        let grace = self.config.scheduler.shutdown_grace;
        tracing::info!(
            "🛑 {signal_name}: stopping; waiting up to {} for {n} running job(s) (a second signal ends them now)",
            crate::fmt::duration(grace)
        );
        let deadline = Instant::now() + grace;
        let mut cancelled = false;
        let cancel_all = |cancels: &HashMap<String, watch::Sender<Option<String>>>, why: &str| {
            for tx in cancels.values() {
                let _ = tx.send(Some(why.to_string()));
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
                        if !report.stuck {
                            // Cancelled by the shutdown, on purpose: nobody runs it again.
                            self.release(&report, true);
                        }
                    }
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                _ = tokio::time::sleep_until(deadline), if !cancelled => {
                    tracing::warn!("⏱️  shutdown grace is over: ending {} running job(s)", running(jobs));
                    cancelled = true;
                    cancel_all(&self.cancels, "the scheduler is shutting down");
                }
                _ = sigterm.recv(), if !cancelled => {
                    tracing::warn!("🛑 second signal: ending running jobs now");
                    cancelled = true;
                    cancel_all(&self.cancels, "the scheduler is shutting down (second signal)");
                }
                _ = sigint.recv(), if !cancelled => {
                    tracing::warn!("🛑 second signal: ending running jobs now");
                    cancelled = true;
                    cancel_all(&self.cancels, "the scheduler is shutting down (second signal)");
                }
            }
        }
    }
}

/// The job's run has started (it has a row), as opposed to one still claiming its slot.
fn started(state: &JobState) -> bool {
    state.running.as_ref().is_some_and(|r| r.run_id.is_some())
}

/// The next cluster event, or never (no cluster).
async fn cluster_event(
    rx: &mut Option<mpsc::UnboundedReceiver<crate::cluster::Event>>,
) -> Option<crate::cluster::Event> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn find<'a>(jobs: &'a mut [JobState], id: &str) -> Option<&'a mut JobState> {
    jobs.iter_mut().find(|s| s.job.id == id)
}

/// A factor in [0.9, 1.1], so retries of many jobs do not land together.
fn jitter() -> f64 {
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
    0.9 + 0.2 * unit
}

/// The next tick of `interval`, or never without one.
async fn tick_if(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
