//! What `status`, `history` and `check-config` print, rendered to a String so tests can read it.
//! All of it is read from the config, the PID file and the history: never from the daemon itself.

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::config::Config;
use crate::error::Result;
use crate::history::{History, Outcome, RunRow, parse_time};
use crate::instance::{self, DaemonInfo};

#[derive(Debug, Serialize)]
pub struct Status {
    pub daemon: DaemonStatus,
    /// Cluster mode: the nodes, read from the cluster's database (`reachable: false` when it
    /// cannot be: the rest is then this host's journal only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::read::ClusterStatus>,
    pub jobs: Vec<JobStatus>,
    /// Plain-language problems worth a look (calendar coverage, …).
    pub warnings: Vec<String>,
    /// The exchange now: open, or closed and when it next opens.
    pub market: crate::market::Market,
}

#[derive(Debug, Serialize)]
pub struct DaemonStatus {
    pub running: bool,
    pub pid: Option<i64>,
    pub started_at: Option<String>,
    pub uptime_seconds: Option<i64>,
    /// The daemon's last heartbeat (history or state file, the newer).
    pub heartbeat_at: Option<String>,
    pub heartbeat_age_seconds: Option<i64>,
    /// False when the heartbeat is older than two health intervals: hung or stopped.
    pub responding: bool,
    /// How late the scheduling loop woke for its slots since the daemon started (as of its last
    /// health check): `{"p50", "max", "samples"}` in milliseconds.
    pub loop_lag_ms: Option<crate::health::LoopLag>,
    /// How the daemon contains its runs: "cgroup" or "subreaper".
    pub containment: Option<String>,
    /// Notifications, web hooks and pings that failed since the daemon started (as of its last
    /// health check), and the last one's time and why.
    pub notify_failures: u64,
    pub notify_last_error: Option<String>,
    /// The fork server's PID (as of the daemon's last health check), while one serves
    /// `executor = "fork"` jobs.
    pub fork_server: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct JobStatus {
    pub job: String,
    pub name: String,
    pub schedule: String,
    pub market_hours: bool,
    pub executor: String,
    pub enabled: bool,
    pub running: bool,
    /// An in-process run timed out but its thread has not returned: the job is held.
    pub stuck: bool,
    pub running_run_id: Option<i64>,
    pub running_pid: Option<i64>,
    pub running_since: Option<String>,
    pub last_outcome: Option<String>,
    pub last_started_at: Option<String>,
    pub last_finished_at: Option<String>,
    pub last_duration_ms: Option<i64>,
    pub last_error: Option<String>,
    pub next_fire_at: Option<String>,
    /// Today's slots (exchange date) that ran successfully, and how many the day has.
    pub slots_today_done: u64,
    pub slots_today_expected: u64,
    /// Runs of today's slots that failed, timed out, crashed or were abandoned.
    pub failures_today: u64,
    /// Cluster mode: the node running the job now, else the node of its last run.
    pub node: Option<String>,
    /// Cluster mode: today's slots that ran more than once (extra executions).
    pub duplicates_today: u64,
    /// `pause`: the job's slots are held back (recorded `skipped`, reason paused).
    pub paused: bool,
    /// When the pause ends by itself (`None`: at `resume`).
    pub paused_until: Option<String>,
    /// `backfill`: past slots still to run.
    pub backfill_pending: u64,
}

/// Gathers the status of the daemon and of every configured job at `now`.
pub fn gather(config: &Config, now: DateTime<Utc>) -> Result<Status> {
    let daemon = instance::probe(&config.scheduler.log_dir);
    match History::open_read_only(&config.scheduler.history) {
        Ok(history) => gather_from(config, history.as_ref(), daemon, now),
        Err(e) => {
            // The history is unusable: say so, and show what is known without it.
            let mut status = gather_from(config, None, daemon, now)?;
            status
                .warnings
                .push(format!("cannot read the history: {e}"));
            Ok(status)
        }
    }
}

/// The status from an open history (the daemon's own handle for its reports).
pub fn gather_from(
    config: &Config,
    history: Option<&History>,
    daemon: Option<DaemonInfo>,
    now: DateTime<Utc>,
) -> Result<Status> {
    let running_rows = match history {
        Some(h) => h.running()?,
        None => Vec::new(),
    };
    let stuck_rows: Vec<RunRow> = match history {
        Some(h) => h
            .stuck()?
            .into_iter()
            .filter(|r| r.owner_pid.is_some_and(crate::process::scheduler_alive))
            .collect(),
        None => Vec::new(),
    };
    let mut warnings = config.warnings(now);
    let calendar = config.calendar();
    let tz = calendar.tz();
    let (day_start, day_end) = local_day(now, tz);
    let mut kept = crate::control::read(&config.scheduler.log_dir)
        .and_then(|r| r.ok())
        .unwrap_or_default();
    kept.paused.retain(|_, p| p.until.is_none_or(|u| u > now));
    let mut jobs = Vec::new();
    let seen = Seen {
        history,
        running: &running_rows,
        stuck: &stuck_rows,
        kept: &kept,
        calendar: &calendar,
        day: (day_start, day_end),
        now,
    };
    for job in &config.jobs {
        jobs.push(job_status(job, &seen, &mut warnings)?);
    }

    let daemon = daemon_status(config, history, daemon.as_ref(), now, &mut warnings)?;
    let mut status = Status {
        cluster: None,
        daemon,
        jobs,
        warnings,
        market: crate::market::at_instant(&calendar, now),
    };
    if config.cluster.is_some() {
        cluster_view(config, &mut status, (day_start, day_end), tz);
    }
    Ok(status)
}

/// What `gather_from` reads once for every job.
struct Seen<'a> {
    history: Option<&'a History>,
    running: &'a [RunRow],
    stuck: &'a [RunRow],
    kept: &'a crate::control::Persisted,
    calendar: &'a crate::calendar::Calendar,
    /// Today, in the exchange's zone.
    day: (DateTime<Utc>, DateTime<Utc>),
    now: DateTime<Utc>,
}

/// One job's status (and the warnings about its runs).
fn job_status(
    job: &crate::config::Job,
    seen: &Seen,
    warnings: &mut Vec<String>,
) -> Result<JobStatus> {
    let last = match seen.history {
        Some(h) => h.last_run(&job.id)?,
        None => None,
    };
    // A `running` row counts only while the process that owns it is alive.
    let running = seen
        .running
        .iter()
        .rfind(|r| r.job == job.id && r.owner_pid.is_some_and(crate::process::scheduler_alive));
    let last_done = last_ended(job, seen, last)?;
    orphan_warnings(job, seen, warnings);
    let stuck = seen.stuck.iter().rfind(|r| r.job == job.id);
    if let Some(r) = stuck {
        warnings.push(format!(
            "{}: run {} timed out but its thread is stuck in native code (since {}); the job is held until it returns",
            job.id,
            r.id,
            local(Some(&r.started_at), seen.calendar.tz())
        ));
    }
    let (done, failed) = match seen.history {
        Some(h) => h.day_counts(&job.id, seen.day.0, seen.day.1)?,
        None => (0, 0),
    };
    Ok(JobStatus {
        job: job.id.clone(),
        name: job.name.clone(),
        schedule: job.trigger.schedule.to_string(),
        market_hours: job.trigger.market_hours,
        executor: job.executor.as_str().to_string(),
        running: running.is_some() || stuck.is_some(),
        stuck: stuck.is_some(),
        running_run_id: running.or(stuck).map(|r| r.id),
        running_pid: running.and_then(|r| r.pid),
        running_since: running.or(stuck).map(|r| r.started_at.clone()),
        last_outcome: last_done.as_ref().map(|r| r.outcome.to_string()),
        last_started_at: last_done.as_ref().map(|r| r.started_at.clone()),
        last_finished_at: last_done.as_ref().and_then(|r| r.finished_at.clone()),
        last_duration_ms: last_done.as_ref().and_then(|r| r.duration_ms),
        last_error: last_done.as_ref().and_then(|r| r.error.clone()),
        next_fire_at: job
            .trigger
            .next_fire_after(seen.calendar, seen.now)
            .filter(|_| job.enabled)
            .map(|t| rfc3339_in(t, seen.calendar.tz())),
        enabled: job.enabled,
        slots_today_done: done,
        slots_today_expected: if job.enabled {
            job.trigger
                .count_between(seen.calendar, seen.day.0, seen.day.1)
        } else {
            0
        },
        failures_today: failed,
        node: None,
        duplicates_today: 0,
        paused: seen.kept.paused.contains_key(&job.id),
        paused_until: seen
            .kept
            .paused
            .get(&job.id)
            .and_then(|p| p.until)
            .map(|t| rfc3339_in(t, seen.calendar.tz())),
        backfill_pending: backfill_pending(job, seen),
    })
}

/// The job's last run that ended: a `running` row whose owner died is reported, not shown.
fn last_ended(
    job: &crate::config::Job,
    seen: &Seen,
    last: Option<crate::history::RunRow>,
) -> Result<Option<crate::history::RunRow>> {
    match (&last, seen.history) {
        (Some(l), Some(h)) if l.outcome == Outcome::Running => Ok(h
            .runs(Some(&job.id), 50)?
            .into_iter()
            .find(|x| !matches!(x.outcome, Outcome::Running | Outcome::Skipped))),
        (Some(l), None) if l.outcome == Outcome::Running => Ok(None),
        _ => Ok(last),
    }
}

/// A warning for each `running` row of the job left by a process that died.
fn orphan_warnings(job: &crate::config::Job, seen: &Seen, warnings: &mut Vec<String>) {
    for orphan in seen
        .running
        .iter()
        .filter(|r| r.job == job.id && !r.owner_pid.is_some_and(crate::process::scheduler_alive))
    {
        warnings.push(format!(
            "{}: run {} was left `running` by a process that died; the daemon marks it abandoned when it starts",
            job.id, orphan.id
        ));
    }
}

/// How many slots of the job a backfill still has to run.
fn backfill_pending(job: &crate::config::Job, seen: &Seen) -> u64 {
    seen.kept.backfill.get(&job.id).map_or(0, |spans| {
        spans
            .iter()
            .filter_map(|span| {
                crate::control::missing_slots(job, seen.calendar, seen.history, *span, seen.now)
                    .ok()
            })
            .flatten()
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64
    })
}

/// The daemon's status: its lock says it lives; its heartbeat says whether it still works.
fn daemon_status(
    config: &Config,
    history: Option<&History>,
    daemon: Option<&DaemonInfo>,
    now: DateTime<Utc>,
    warnings: &mut Vec<String>,
) -> Result<DaemonStatus> {
    let state = daemon
        .as_ref()
        .and_then(|_| crate::health::read_state(&config.scheduler.log_dir))
        .filter(|s| daemon.is_some_and(|d| d.pid == i64::from(s.pid)));
    let db_beat = match (history, daemon) {
        (Some(h), Some(d)) => h
            .daemon(d.pid)?
            .and_then(|row| row.heartbeat_at.as_deref().and_then(parse_time)),
        _ => None,
    };
    let heartbeat = [db_beat, state.as_ref().map(|s| s.heartbeat_at)]
        .into_iter()
        .flatten()
        .max();
    if let Some(state) = &state {
        warnings.extend(state.problems.iter().cloned());
    }
    let started = daemon.and_then(|d| d.started_at);
    let age = heartbeat.map(|h| (now - h).num_seconds());
    let interval = i64::try_from(config.scheduler.health_interval.as_secs()).unwrap_or(30);
    let responding = daemon.is_some()
        && match age {
            Some(age) => age <= 2 * interval + 1,
            // No heartbeat yet: a daemon only just started is given the same slack.
            None => started.is_some_and(|s| (now - s).num_seconds() <= 2 * interval + 1),
        };
    Ok(DaemonStatus {
        running: daemon.is_some(),
        pid: daemon.as_ref().map(|d| d.pid),
        started_at: started.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        uptime_seconds: started.map(|s| (now - s).num_seconds()),
        heartbeat_at: heartbeat.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        heartbeat_age_seconds: age,
        responding,
        loop_lag_ms: state.as_ref().and_then(|s| s.loop_lag_ms),
        containment: state.as_ref().and_then(|s| s.containment.clone()),
        notify_failures: state.as_ref().map_or(0, |s| s.notify_failures),
        notify_last_error: state.as_ref().and_then(|s| s.notify_last_error.clone()),
        fork_server: state
            .as_ref()
            .and_then(|s| s.fork_server)
            .filter(|_| daemon.is_some()),
    })
}

/// Cluster mode: every node's view of the jobs, from the cluster's database; this host's
/// journal only (and a first warning saying so) when it cannot be reached.
fn cluster_view(
    config: &Config,
    status: &mut Status,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    tz: Tz,
) {
    let node = config
        .cluster
        .as_ref()
        .map(|c| c.node.clone())
        .unwrap_or_default();
    match crate::cluster::read::status(config, from, to) {
        Ok((cluster, jobs)) => {
            for j in status.jobs.iter_mut() {
                let Some(c) = jobs.get(&j.job) else { continue };
                j.node = c.node.clone();
                j.duplicates_today = c.duplicates_today;
                j.slots_today_done = c.done_today;
                j.failures_today = c.failed_today;
                if !j.stuck {
                    j.running = c.running.is_some();
                    j.running_run_id = c.running.as_ref().map(|r| r.id);
                    j.running_pid = c.running.as_ref().and_then(|r| r.pid);
                    j.running_since = c.running.as_ref().map(|r| r.started_at.clone());
                }
                if let Some(last) = &c.last {
                    j.last_outcome = Some(last.outcome.to_string());
                    j.last_started_at = Some(last.started_at.clone());
                    j.last_finished_at = last.finished_at.clone();
                    j.last_duration_ms = last.duration_ms;
                    j.last_error = last.error.clone();
                }
                if c.duplicates_today > 0 {
                    status.warnings.push(format!(
                        "{}: {} slot execution(s) today were duplicates (more than one node ran a slot)",
                        j.job, c.duplicates_today
                    ));
                }
            }
            if let Some(expected) = cluster.expected
                && (cluster.alive as u32) < expected
            {
                status.warnings.push(format!(
                    "only {} of {expected} cluster nodes are alive",
                    cluster.alive
                ));
            }
            for n in &cluster.nodes {
                match n.clock_offset_ms {
                    Some(off) if off.abs() > 250 && n.state == "alive" => status.warnings.push(
                        format!("node {}'s clock is {off:+} ms off the database's", n.node),
                    ),
                    _ => {}
                }
                if let Some(since) = &n.degraded_since {
                    status.warnings.push(format!(
                        "node {} ran slots without the cluster database since {}",
                        n.node,
                        local(Some(since), tz)
                    ));
                }
            }
            for d in &cluster.config_drift {
                status.warnings.push(format!(
                    "config drift: live nodes define job {d} (hashes differ): they compute different slots"
                ));
            }
            status.cluster = Some(cluster);
        }
        Err(e) => {
            status
                .warnings
                .insert(0, format!("{UNREACHABLE}: showing node {node} only ({e})"));
            status.cluster = crate::cluster::read::unreachable(config);
        }
    }
}

/// How the warning that the cluster's database could not be read begins.
pub(crate) const UNREACHABLE: &str = "cluster database unreachable";

/// Today in the exchange's timezone, as UTC instants `[start, end)`.
fn local_day(now: DateTime<Utc>, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    use chrono::TimeZone;
    let date = now.with_timezone(&tz).date_naive();
    let at = |d: chrono::NaiveDate| {
        tz.from_local_datetime(&d.and_time(chrono::NaiveTime::MIN))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(now)
    };
    (at(date), at(date.succ_opt().unwrap_or(date)))
}

use crate::fmt::rfc3339_in;

/// A stored UTC time shown in the exchange's local time, e.g. `2026-11-27 09:15:00 IST`.
pub fn local_time(stored: Option<&str>, tz: Tz) -> String {
    local(stored, tz)
}

fn local(stored: Option<&str>, tz: Tz) -> String {
    stored
        .and_then(parse_time)
        .map(|t| {
            t.with_timezone(&tz)
                .format("%Y-%m-%d %H:%M:%S %Z")
                .to_string()
        })
        .unwrap_or_else(|| "-".to_string())
}

/// `check-config --json`: what `render_config` shows, as data (env values never).
pub fn config_json(
    config: &Config,
    interpreter: &crate::interpreter::Interpreter,
    now: DateTime<Utc>,
    warnings: Vec<String>,
) -> serde_json::Value {
    let calendar = config.calendar();
    let tz = calendar.tz();
    let jobs: Vec<serde_json::Value> = config
        .jobs
        .iter()
        .map(|job| {
            serde_json::json!({
                "job": job.id,
                "name": job.name,
                "entry": job.entry.to_string(),
                "schedule": job.trigger.schedule.to_string(),
                "market_hours": job.trigger.market_hours,
                "executor": job.executor.as_str(),
                "timeout_seconds": job.timeout.as_secs_f64(),
                "enabled": job.enabled,
                "next_fire": job
                    .trigger
                    .next_fire_after(&calendar, now)
                    .map(|t| rfc3339_in(t, tz)),
                "env_keys": job.env.keys(),
                "inherit_env": job.env.inherit,
            })
        })
        .collect();
    serde_json::json!({
        "valid": true,
        "file": config.file,
        "exchange": config.scheduler.exchange.code(),
        "timezone": tz.name(),
        "python": {
            "executable": interpreter.path,
            "version": interpreter.version,
        },
        "history": config.scheduler.history,
        "log_dir": config.scheduler.log_dir,
        "jobs": jobs,
        "warnings": warnings,
    })
}
