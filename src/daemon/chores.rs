//! What the daemon does besides firing, each as a task that answers the loop by message: the
//! health check, the status report, a config reload. None of them can delay a fire: a stalled
//! database, disk or interpreter delays only its own answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::*;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::health::LoopLag;
use crate::history::{History, Recorder};
use crate::instance::InstanceLock;
use crate::interpreter::Interpreter;

/// A task's answer to the loop.
pub(crate) enum Chore {
    /// The health check is done; `Some` when our PID file now belongs to another daemon.
    HealthDone {
        lock_lost: Option<String>,
    },
    ReportDone,
    /// A reload's new config and interpreter, or why it was rejected.
    Reloaded(Box<Result<(Config, Interpreter)>>),
}

/// A histogram of the loop's lateness in 0.1 ms steps up to 100 ms (later ones share the last
/// bucket), and the exact maximum.
#[derive(Debug, Clone)]
pub(crate) struct LagStats {
    buckets: Vec<u64>,
    max: Duration,
    samples: u64,
}

const LAG_STEP_US: u128 = 100;
const LAG_BUCKETS: usize = 1001;

impl Default for LagStats {
    fn default() -> Self {
        LagStats {
            buckets: vec![0; LAG_BUCKETS],
            max: Duration::ZERO,
            samples: 0,
        }
    }
}

impl LagStats {
    pub(crate) fn record(&mut self, lag: Duration) {
        let i = usize::try_from(lag.as_micros() / LAG_STEP_US)
            .unwrap_or(usize::MAX)
            .min(LAG_BUCKETS - 1);
        self.buckets[i] += 1;
        self.max = self.max.max(lag);
        self.samples += 1;
    }

    pub(crate) fn summary(&self) -> LoopLag {
        let half = self.samples.div_ceil(2);
        let mut seen = 0;
        let mut p50 = 0.0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= half && *n > 0 {
                // The bucket's middle, never above the real maximum.
                p50 = ((i as f64 + 0.5) * LAG_STEP_US as f64 / 1000.0)
                    .min(self.max.as_secs_f64() * 1000.0);
                break;
            }
        }
        LoopLag {
            p50: round2(p50),
            max: round2(self.max.as_secs_f64() * 1000.0),
            samples: self.samples,
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// What the health check needs from the loop.
pub(crate) struct HealthInput {
    pub config: Arc<Config>,
    pub recorder: Recorder,
    pub lock: Arc<Mutex<InstanceLock>>,
    pub started_at: DateTime<Utc>,
    /// Problems the loop found in its own state (stuck threads).
    pub problems: Vec<String>,
    /// The first check of the day: prune, calendar coverage.
    pub daily: bool,
    pub lag: LoopLag,
    /// Notifications and pings that failed: how many, and the last one's why.
    pub notify: (u64, Option<String>),
    /// The fork servers, checked for an answer and started again if gone; the interpreter
    /// they run.
    pub forks: Arc<crate::runner::ForkPool>,
    pub python: std::path::PathBuf,
}

/// The health check: heartbeat, the history writer's backlog, disk space, legacy processes, the
/// PID file, once a day pruning and the calendar's coverage; then the state file and systemd.
pub(crate) async fn health(input: HealthInput, tx: mpsc::UnboundedSender<Chore>) {
    let now = Utc::now();
    let config = Arc::clone(&input.config);
    input.recorder.heartbeat(now);
    let mut problems = input.problems;
    let tz = config.calendar().tz();
    let writer = input.recorder.health();
    if let Some((since, e)) = writer.problem {
        problems.push(format!(
            "history database: {e} (since {}; {} waiting)",
            since.with_timezone(&tz).format("%H:%M:%S %Z"),
            crate::fmt::n(writer.waiting, "write")
        ));
    }

    let (lock, forks, python, host_config) = (
        Arc::clone(&input.lock),
        input.forks,
        input.python,
        Arc::clone(&config),
    );
    let checked =
        tokio::task::spawn_blocking(move || host_checks(&host_config, &lock, &forks, &python))
            .await;
    let (lock_lost, low_disk, legacy, fork_server) = checked.unwrap_or_default();
    problems.extend(low_disk);
    end_escapees(&config).await;
    crate::control::RECHECK.notify_one();
    if let Some(off) = crate::control::OFF.lock().ok().and_then(|o| o.clone()) {
        problems.push(off);
    }
    problems.extend(legacy_processes(legacy, &config).await);

    if input.daily {
        for warning in config.warnings(now) {
            tracing::warn!("⚠️  {warning}");
        }
        let keep = chrono::Duration::from_std(config.scheduler.history_retention)
            .unwrap_or(chrono::Duration::days(90));
        input.recorder.prune(now - keep);
    }

    for p in &problems {
        tracing::debug!("problem: {p}");
    }
    let state = crate::health::DaemonState {
        pid: std::process::id(),
        started_at: input.started_at,
        heartbeat_at: now,
        problems,
        loop_lag_ms: Some(input.lag),
        containment: crate::contain::mode().map(|m| m.name().to_string()),
        notify_failures: input.notify.0,
        notify_last_error: input.notify.1,
        fork_server,
    };
    write_state(&config.scheduler.log_dir, state).await;
    let _ = tx.send(Chore::HealthDone { lock_lost });
}

/// The health check's blocking part, on a thread of its own: the fork servers (one that hangs
/// is killed, one gone or stale started again, so the next fork run finds one ready), the PID
/// file, the free disk space and the legacy processes. Returns (the PID file lost, low disk,
/// the legacy processes found, the fork server's PID).
fn host_checks(
    config: &Config,
    lock: &Mutex<InstanceLock>,
    forks: &crate::runner::ForkPool,
    python: &std::path::Path,
) -> (
    Option<String>,
    Option<String>,
    Vec<crate::legacy::LegacyProcess>,
    Option<u32>,
) {
    if config
        .jobs
        .iter()
        .any(|j| j.executor == crate::config::Executor::Fork)
    {
        if let Some(news) = forks.check() {
            tracing::warn!("🍴 {news}");
        }
        if let Err(e) = forks.warm(config, python) {
            tracing::warn!("🍴 cannot start a fork server: {e}");
        }
    }
    // The PID file may have been removed (a wiped log folder): lock a new one, and give way if
    // another daemon started meanwhile — never two firing at once.
    let lock_lost = match lock.lock() {
        Ok(mut l) => l.ensure().err(),
        Err(_) => None,
    };
    let log_dir = &config.scheduler.log_dir;
    let low = crate::health::free_space(log_dir)
        .filter(|free| *free < crate::health::LOW_DISK_BYTES)
        .map(|free| {
            format!(
                "only {} free in {}",
                crate::fmt::bytes(free),
                log_dir.display()
            )
        });
    let legacy = crate::legacy::find(&config.scheduler.legacy_scripts);
    (lock_lost, low, legacy, forks.pid())
}

/// Subreaper mode: ends what escaped runs that have ended and was not ended at a run's end
/// (runs in flight then could have owned it).
async fn end_escapees(config: &Config) {
    if let Some(news) = crate::contain::check_keeper() {
        tracing::warn!("⚠️  {news}");
    }
    let strays = crate::contain::end_strays(config.scheduler.kill_grace).await;
    if strays > 0 {
        tracing::warn!(
            "🧹 ended {strays} process(es) that escaped runs and were adopted by the scheduler"
        );
    }
}

/// A run in progress as the report shows it: (job, run id, PID, since, stuck).
pub(crate) type Live = (String, Option<i64>, Option<u32>, DateTime<Utc>, bool);

/// The status table on the console and in the log, as `status` shows it, read on its own
/// connection.
pub(crate) async fn report(config: Arc<Config>, live: Vec<Live>, tx: mpsc::UnboundedSender<Chore>) {
    let now = Utc::now();
    let table = tokio::task::spawn_blocking(move || -> Result<String> {
        let history = History::open_read_only(&config.scheduler.history)?;
        let mut status = crate::status::gather_from(&config, history.as_ref(), None, now)?;
        for j in status.jobs.iter_mut() {
            if let Some((_, id, pid, since, stuck)) = live.iter().find(|r| r.0 == j.job) {
                j.running = true;
                j.stuck = *stuck;
                j.running_run_id = *id;
                j.running_pid = pid.map(i64::from);
                j.running_since = Some(crate::history::fmt_time(*since));
            }
        }
        Ok(crate::render::render_jobs(&status, &config, now))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))
    .and_then(|r| r);
    match table {
        Ok(table) => {
            tracing::info!("📊 Status report");
            for line in table.lines() {
                tracing::info!("{line}");
            }
        }
        Err(e) => tracing::error!("cannot build the status report: {e}"),
    }
    let _ = tx.send(Chore::ReportDone);
}

/// SIGHUP: reads and checks the config file, probes its interpreter (within the probe's
/// timeout) and readies the embedded one; the loop applies the answer.
pub(crate) async fn reload(
    path: std::path::PathBuf,
    tx: mpsc::UnboundedSender<Chore>,
    forks: std::sync::Arc<crate::runner::ForkPool>,
) {
    let loaded = tokio::task::spawn_blocking(move || -> Result<(Config, Interpreter)> {
        let config = Config::load(&path)?;
        let interpreter = crate::interpreter::resolve(&config, None)?;
        // A new fork server too: what changed on disk is imported afresh.
        crate::runner::prepare::ready_python(&config, &interpreter, &forks, true)?;
        Ok((config, interpreter))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))
    .and_then(|r| r);
    let _ = tx.send(Chore::Reloaded(Box::new(loaded)));
}

impl Dispatcher {
    /// A task's answer; `Some(reason)` when the daemon must stop.
    pub(super) fn on_chore(
        &mut self,
        jobs: &mut Vec<JobState>,
        chore: Chore,
    ) -> Option<&'static str> {
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
    pub(super) fn health(&mut self, jobs: &mut [JobState]) {
        self.audit_gaps(jobs);
        let now = Utc::now();
        let tz = self.calendar.tz();
        let mut problems = self.node.as_ref().map(cluster_problems).unwrap_or_default();
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
    pub(super) fn report(&mut self, jobs: &[JobState]) {
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

    pub(super) fn drop_retired(&mut self, jobs: &mut Vec<JobState>) {
        jobs.retain(|s| !(s.retired && s.running.is_none()));
    }
}

/// What the health check says of this node in its cluster: its clock, its connection.
fn cluster_problems(node: &crate::cluster::Node) -> Vec<String> {
    let mut problems = Vec::new();
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
    problems
}

/// The old system's scripts found running: stopped (`scheduler.legacy = "stop"`) or a problem to
/// report; other users' processes named like them are only reported.
async fn legacy_processes(
    found: Vec<crate::legacy::LegacyProcess>,
    config: &crate::config::Config,
) -> Vec<String> {
    let mut problems = Vec::new();
    let (legacy, others) = crate::legacy::split(found);
    if !others.is_empty() {
        problems.push(format!(
            "processes of other users are named like the old system's scripts (not ours, ignored): {}",
            crate::legacy::list(&others)
        ));
    }
    if !legacy.is_empty() {
        let list = crate::legacy::list(&legacy);
        if config.scheduler.legacy == crate::config::Legacy::Stop {
            tracing::warn!("🧹 stopping the old system's processes: {list}");
            crate::legacy::stop(&legacy, config.scheduler.kill_grace).await;
        } else {
            tracing::warn!("⚠️  the old system is running: {list}");
            problems.push(format!("the old system is running: {list}"));
        }
    }

    problems
}

/// Writes the health state file (said once when it starts failing, and once when it works
/// again: a full disk would repeat it every health check).
async fn write_state(log_dir: &std::path::Path, state: crate::health::DaemonState) {
    let dir = log_dir.to_path_buf();
    let written = tokio::task::spawn_blocking(move || crate::health::write_state(&dir, &state))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
    static FAILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    match written {
        Err(e) => {
            if !FAILING.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::error!("cannot write {}: {e}", crate::health::STATE_FILE);
            }
        }
        Ok(()) => {
            if FAILING.swap(false, std::sync::atomic::Ordering::Relaxed) {
                tracing::info!("{} written again", crate::health::STATE_FILE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_lag_p50_and_max() {
        let mut s = LagStats::default();
        assert_eq!(s.summary().samples, 0);
        for us in [100, 200, 300, 400, 250_000] {
            s.record(Duration::from_micros(us));
        }
        let l = s.summary();
        assert_eq!(l.samples, 5);
        assert_eq!(l.max, 250.0);
        assert_eq!(l.p50, 0.35);
    }
}
