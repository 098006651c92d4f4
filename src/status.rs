//! What `status`, `history` and `check-config` print, rendered to a String so tests can read it.
//! All of it is read from the config, the PID file and the history: never from the daemon itself.

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::config::Config;
use crate::daemon::format_duration;
use crate::error::Result;
use crate::history::{History, RunRow, parse_time};
use crate::instance::{self, DaemonInfo};
use crate::process::pid_alive;

#[derive(Debug, Serialize)]
pub struct Status {
    pub daemon: DaemonStatus,
    pub jobs: Vec<JobStatus>,
    /// Plain-language problems worth a look (calendar coverage, …).
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DaemonStatus {
    pub running: bool,
    pub pid: Option<i64>,
    pub started_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct JobStatus {
    pub job: String,
    pub name: String,
    pub schedule: String,
    pub market_hours: bool,
    pub running: bool,
    /// An in-process run timed out but its thread has not returned: the job is held.
    pub stuck: bool,
    pub running_pid: Option<i64>,
    pub running_since: Option<String>,
    pub last_outcome: Option<String>,
    pub last_started_at: Option<String>,
    pub last_finished_at: Option<String>,
    pub last_duration_ms: Option<i64>,
    pub last_error: Option<String>,
    pub next_fire_at: Option<String>,
}

/// Gathers the status of the daemon and of every configured job at `now`.
pub fn gather(config: &Config, now: DateTime<Utc>) -> Result<Status> {
    let daemon = instance::probe(&config.scheduler.log_dir);
    let history = History::open_read_only(&config.scheduler.history)?;
    let running_rows = match &history {
        Some(h) => h.running()?,
        None => Vec::new(),
    };
    let stuck_rows: Vec<RunRow> = match &history {
        Some(h) => h
            .stuck()?
            .into_iter()
            .filter(|r| r.owner_pid.is_some_and(pid_alive))
            .collect(),
        None => Vec::new(),
    };
    let mut warnings = crate::config_warnings(config, now);
    let calendar = config.calendar();
    let tz = calendar.tz();
    let mut jobs = Vec::new();
    for job in &config.jobs {
        let last = match &history {
            Some(h) => h.last_run(&job.id)?,
            None => None,
        };
        // A `running` row counts only while the process that owns it is alive.
        let running = running_rows
            .iter()
            .rfind(|r| r.job == job.id && r.owner_pid.is_some_and(pid_alive));
        let last_done = match (&last, running) {
            (Some(l), Some(r)) if l.id == r.id => match &history {
                Some(h) => h
                    .runs(Some(&job.id), 50)?
                    .into_iter()
                    .find(|x| x.outcome != "running" && x.outcome != "skipped"),
                None => None,
            },
            _ => last,
        };
        let stuck = stuck_rows.iter().rfind(|r| r.job == job.id);
        if let Some(r) = stuck {
            warnings.push(format!(
                "{}: run {} timed out but its thread is stuck in native code (since {}); the job is held until it returns",
                job.id,
                r.id,
                local(Some(&r.started_at), tz)
            ));
        }
        jobs.push(JobStatus {
            job: job.id.clone(),
            name: job.name.clone(),
            schedule: job.trigger.schedule.to_string(),
            market_hours: job.trigger.market_hours,
            running: running.is_some() || stuck.is_some(),
            stuck: stuck.is_some(),
            running_pid: running.and_then(|r| r.pid),
            running_since: running.map(|r| r.started_at.clone()),
            last_outcome: last_done.as_ref().map(|r| r.outcome.clone()),
            last_started_at: last_done.as_ref().map(|r| r.started_at.clone()),
            last_finished_at: last_done.as_ref().and_then(|r| r.finished_at.clone()),
            last_duration_ms: last_done.as_ref().and_then(|r| r.duration_ms),
            last_error: last_done.as_ref().and_then(|r| r.error.clone()),
            next_fire_at: job
                .trigger
                .next_fire_after(&calendar, now)
                .map(|t| rfc3339_in(t, tz)),
        });
    }
    Ok(Status {
        daemon: DaemonStatus {
            running: daemon.is_some(),
            pid: daemon.as_ref().map(|d| d.pid),
            started_at: daemon
                .as_ref()
                .and_then(|d: &DaemonInfo| d.started_at)
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        },
        jobs,
        warnings,
    })
}

/// An instant in the exchange's timezone, RFC 3339 with its offset.
pub fn rfc3339_in(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// A stored UTC time shown in the exchange's local time, e.g. `2026-11-27 09:15:00 IST`.
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

fn icon(outcome: &str) -> &'static str {
    match outcome {
        "success" => "✅",
        "running" => "🔄",
        "skipped" => "⏭️",
        "cancelled" => "🛑",
        _ => "❌",
    }
}

/// The human table of `status`.
pub fn render_status(status: &Status, config: &Config, now: DateTime<Utc>) -> String {
    let tz = config.calendar().tz();
    let mut out = String::new();
    match (&status.daemon.running, status.daemon.pid) {
        (true, Some(pid)) => {
            let since = status.daemon.started_at.as_deref().and_then(parse_time);
            let up = since
                .map(|s| format_duration((now - s).to_std().unwrap_or_default()))
                .unwrap_or_else(|| "?".into());
            out.push_str(&format!(
                "🟢 hedge-scheduler is running (PID {pid}, since {}, up {up})\n",
                local(status.daemon.started_at.as_deref(), tz)
            ));
        }
        _ => out.push_str("🔴 hedge-scheduler is not running\n"),
    }
    out.push_str(&format!(
        "   config {}  ·  exchange {} ({})\n\n",
        config.file.display(),
        config.scheduler.exchange.code(),
        tz.name()
    ));
    out.push_str(&format!(
        "{:<20} {:<24} {:<26} {:<12} {:>9}  {}\n",
        "JOB", "STATE", "LAST RUN", "OUTCOME", "DURATION", "NEXT FIRE"
    ));
    for j in &status.jobs {
        let state = if j.stuck {
            "stuck (native code)".to_string()
        } else if j.running {
            let since = j.running_since.as_deref().and_then(parse_time);
            let for_ = since
                .map(|s| format_duration((now - s).to_std().unwrap_or_default()))
                .unwrap_or_default();
            match j.running_pid {
                Some(pid) => format!("running PID {pid} {for_}"),
                None => format!("running {for_}"),
            }
        } else {
            "idle".to_string()
        };
        let outcome = j
            .last_outcome
            .as_deref()
            .map(|o| format!("{} {o}", icon(o)))
            .unwrap_or_else(|| "-".into());
        let duration = j
            .last_duration_ms
            .map(|ms| format_duration(std::time::Duration::from_millis(ms.max(0) as u64)))
            .unwrap_or_else(|| "-".into());
        let next = j
            .next_fire_at
            .as_deref()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "never".into());
        out.push_str(&format!(
            "{:<20} {:<24} {:<26} {:<12} {:>9}  {}\n",
            j.job,
            state,
            local(j.last_started_at.as_deref(), tz),
            outcome,
            duration,
            next
        ));
        if let (Some(err), Some(o)) = (&j.last_error, &j.last_outcome)
            && o != "success"
        {
            out.push_str(&format!("{:<20} └ {}\n", "", one_line(err, 100)));
        }
    }
    out.push_str(&warnings(&status.warnings));
    out
}

/// The human table of `history`.
pub fn render_history(rows: &[RunRow], config: &Config) -> String {
    let tz = config.calendar().tz();
    let mut out = format!(
        "{:>7}  {:<20} {:<9} {:<26} {:<12} {:>9} {:>8}  {}\n",
        "ID", "JOB", "TRIGGER", "SCHEDULED", "OUTCOME", "DURATION", "ATTEMPT", "ERROR"
    );
    for r in rows {
        let duration = r
            .duration_ms
            .map(|ms| format_duration(std::time::Duration::from_millis(ms.max(0) as u64)))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:>7}  {:<20} {:<9} {:<26} {:<12} {:>9} {:>8}  {}\n",
            r.id,
            r.job,
            r.trigger,
            local(Some(&r.scheduled_at), tz),
            format!("{} {}", icon(&r.outcome), r.outcome),
            duration,
            r.attempt,
            r.error
                .as_deref()
                .map(|e| one_line(e, 80))
                .unwrap_or_default()
        ));
    }
    if rows.is_empty() {
        out.push_str("(no runs yet)\n");
    }
    out
}

/// The summary `check-config` prints.
pub fn render_config(config: &Config, python: &str, now: DateTime<Utc>) -> String {
    let calendar = config.calendar();
    let tz = calendar.tz();
    let mut out = format!(
        "✅ {} is valid\n   exchange {} ({}) · python {}\n   history {}\n   logs {}\n\n",
        config.file.display(),
        config.scheduler.exchange.code(),
        tz.name(),
        python,
        config.scheduler.history.display(),
        config.scheduler.log_dir.display(),
    );
    out.push_str(&format!(
        "{:<20} {:<34} {:<16} {:<12} {:>8}  {}\n",
        "JOB", "ENTRY", "SCHEDULE", "EXECUTOR", "TIMEOUT", "NEXT FIRE"
    ));
    for job in &config.jobs {
        let next = job
            .trigger
            .next_fire_after(&calendar, now)
            .map(|t| {
                t.with_timezone(&tz)
                    .format("%Y-%m-%d %H:%M:%S %Z")
                    .to_string()
            })
            .unwrap_or_else(|| "never".into());
        out.push_str(&format!(
            "{:<20} {:<34} {:<16} {:<12} {:>8}  {}{}\n",
            job.id,
            job.entry.to_string(),
            job.trigger.schedule.to_string(),
            job.executor.as_str(),
            format_duration(job.timeout),
            next,
            if job.trigger.market_hours {
                " (market hours)"
            } else {
                ""
            }
        ));
    }
    out.push_str(&warnings(&crate::config_warnings(config, now)));
    out
}

/// The warnings block: one `⚠️` line each.
fn warnings(list: &[String]) -> String {
    list.iter().map(|w| format!("⚠️  {w}\n")).collect()
}

fn one_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    if line.chars().count() > max {
        let cut: String = line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}
