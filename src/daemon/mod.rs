//! The daemon: a dispatcher that owns every job's state, sleeps until the next fire instant of
//! any job (or a retry), decides what is due (`decide`, pure) and dispatches it. It never awaits
//! I/O: runs are tasks that report by message, history rows are messages to the one writer, and
//! the health check, the status report and a reload are tasks that answer by message (`chores`).
//!
//! Time: the loop sleeps on the monotonic clock and reads the wall clock at every wake. A wall
//! clock that moved more (or less) than the monotonic one is a step: it is logged with its size;
//! slots it jumped over are accounted for in one compact `skipped` row per gap, and a backward
//! step fires nothing twice (a job's next slot only moves forward).

mod actions;
mod chores;
mod cluster_glue;
mod decide;
mod recovery;
mod reload;
mod report;
mod requests;
mod start;
mod stop;

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
use crate::history::{History, Recorder};
use crate::instance::InstanceLock;
use crate::interpreter::Interpreter;
use crate::runner::{self, RunEnv, RunEvent};
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
    forks: (
        Arc<crate::runner::ForkPool>,
        std::thread::JoinHandle<Result<()>>,
    ),
) -> Result<()> {
    let start::Started {
        mut d,
        mut jobs,
        mut inbox,
        recorder,
    } = start::start(config, interpreter, allow_drift, forks).await?;
    let signal_name = d.turn(&mut jobs, &mut inbox).await;
    stop::finish(d, jobs, inbox, recorder, signal_name).await
}

/// What wakes the loop: signals, run events, cluster events, chores, control requests, probes,
/// and its timers.
struct Inbox {
    sigterm: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
    sighup: tokio::signal::unix::Signal,
    events: mpsc::UnboundedReceiver<RunEvent>,
    cluster: Option<mpsc::UnboundedReceiver<crate::cluster::Event>>,
    chores: mpsc::UnboundedReceiver<Chore>,
    probes: mpsc::UnboundedReceiver<tokio::sync::oneshot::Sender<()>>,
    control: mpsc::UnboundedReceiver<crate::control::Asked>,
    health_every: tokio::time::Interval,
    report_every: tokio::time::Interval,
    watchdog: Option<tokio::time::Interval>,
}

impl Dispatcher {
    /// The loop: sleeps until the next instant any job is due (or a message comes), until a
    /// signal (or a fatal chore) stops it; returns what stopped it.
    async fn turn(&mut self, jobs: &mut Vec<JobState>, inbox: &mut Inbox) -> &'static str {
        let d = self;
        let Inbox {
            sigterm,
            sigint,
            sighup,
            events,
            cluster: cluster_events,
            chores,
            probes,
            control,
            health_every,
            report_every,
            watchdog,
        } = inbox;
        // The last wake, on both clocks, to tell a clock step from the passing of time.
        let mut last_wake = (Instant::now(), d.now());
        loop {
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
                    d.tick(jobs, wall, step.as_deref());
                    d.keep(jobs);
                }
                Some(event) = events.recv() => {
                    d.on_event(jobs, event);
                    d.keep(jobs);
                }
                Some(event) = cluster_event(cluster_events) => d.on_cluster(jobs, event),
                Some(chore) = chores.recv() => {
                    if let Some(why) = d.on_chore(jobs, chore) {
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
                        let reply = d.control(jobs, req);
                        d.keep(jobs);
                        // Answered once what it changed is kept: a `status` right after shows it.
                        let written = d.saver.written();
                        tokio::spawn(async move {
                            let _ = written.await;
                            let _ = answer.send(reply);
                        });
                    }
                }
                _ = sighup.recv() => d.reload("SIGHUP"),
                _ = health_every.tick() => d.health(jobs),
                _ = tick_if(watchdog.as_mut()) => crate::health::notify_systemd("WATCHDOG=1"),
                _ = report_every.tick() => d.report(jobs),
            }
        }
    }
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
