//! What `status`, `history` and `check-config` print for people: functions from the typed
//! values (`Status`, the history's rows, the config) to a `String`, so tests can read them.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::config::Config;
use crate::fmt::duration as format_duration;
use crate::history::{RunRow, parse_time};
use crate::status::{Status, UNREACHABLE, local_time as local};

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
    // What `status` shows is only this node's when the cluster's database cannot be read:
    // said on the first line, before anything it qualifies.
    let (first, rest): (Vec<String>, Vec<String>) = status
        .warnings
        .iter()
        .cloned()
        .partition(|w| w.starts_with(UNREACHABLE));
    for w in &first {
        out.push_str(&format!("⚠️  {w}\n"));
    }
    out.push_str(&render_daemon(status, config, tz));
    if let Some(c) = &status.cluster {
        out.push_str(&render_cluster(c, tz));
    }
    out.push_str(&render_jobs(status, config, now));
    out.push_str(&warnings(&rest));
    out
}

/// The daemon's lines: running or not, where, the market now, and failed notifications.
fn render_daemon(status: &Status, config: &Config, tz: Tz) -> String {
    let mut out = String::new();
    let d = &status.daemon;
    match (d.running, d.pid) {
        (true, Some(pid)) => {
            let up = d
                .uptime_seconds
                .map(|s| format_duration(std::time::Duration::from_secs(s.max(0) as u64)))
                .unwrap_or_else(|| "?".into());
            let beat = d.heartbeat_age_seconds.map_or_else(
                || "no heartbeat yet".to_string(),
                |a| format!("heartbeat {a}s ago"),
            );
            if d.responding {
                out.push_str(&format!(
                    "🟢 hedge-scheduler is running (PID {pid}, since {}, up {up}, {beat})\n",
                    local(d.started_at.as_deref(), tz)
                ));
            } else {
                out.push_str(&format!(
                    "🟠 hedge-scheduler is not responding (PID {pid}, since {}, {beat}): hung or stopped?\n",
                    local(d.started_at.as_deref(), tz)
                ));
            }
        }
        _ => out.push_str("🔴 hedge-scheduler is not running\n"),
    }
    let contained = d
        .containment
        .as_deref()
        .filter(|_| d.running)
        .map(|c| format!("  ·  containment {c}"))
        .unwrap_or_default();
    let contained = match d.fork_server {
        Some(pid) => format!("{contained}  ·  fork server {pid}"),
        None => contained,
    };
    out.push_str(&format!(
        "   config {}  ·  exchange {} ({}){contained}\n",
        config.file.display(),
        config.scheduler.exchange.code(),
        tz.name()
    ));
    out.push_str(&format!(
        "{} {}\n\n",
        if status.market.open {
            "   📈"
        } else {
            "   💤"
        },
        status.market.summary
    ));
    if d.notify_failures > 0 {
        out.push_str(&format!(
            "📣 {} failed; the last: {}\n\n",
            if d.notify_failures == 1 {
                "1 notification or ping".to_string()
            } else {
                format!("{} notifications or pings", d.notify_failures)
            },
            d.notify_last_error.as_deref().unwrap_or("?")
        ));
    }
    out
}

/// The nodes of the cluster, one line each.
fn render_cluster(c: &crate::cluster::read::ClusterStatus, tz: Tz) -> String {
    if !c.reachable {
        return format!("CLUSTER  {}  unreachable\n\n", c.database);
    }
    let mut out = format!(
        "CLUSTER  {}  reachable  {}/{} alive{}\n",
        c.database,
        c.alive,
        crate::fmt::n(c.nodes.len(), "node"),
        c.expected
            .map(|e| format!(" (expect {e})"))
            .unwrap_or_default()
    );
    out.push_str(&format!(
        "{:<12} {:<8} {:<16} {:>8} {:<24} {:>10} {:>8}\n",
        "NODE", "STATE", "HOST", "PID", "SINCE", "HEARTBEAT", "CLOCK"
    ));
    for n in &c.nodes {
        out.push_str(&format!(
            "{:<12} {:<8} {:<16} {:>8} {:<24} {:>10} {:>8}\n",
            n.node,
            n.state,
            n.host,
            n.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            local(Some(&n.started_at), tz),
            format!("{:.1}s ago", n.heartbeat_age_seconds),
            n.clock_offset_ms
                .map(|o| format!("{o:+}ms"))
                .unwrap_or_else(|| "-".into())
        ));
    }
    out.push('\n');
    out
}

/// One line per job: state, last run, next fire, today's slots and failures (the status
/// report's table too).
pub fn render_jobs(status: &Status, config: &Config, now: DateTime<Utc>) -> String {
    let tz = config.calendar().tz();
    let mut out = format!(
        "{:<20} {:<24} {:<24} {:<12} {:>8} {:>9} {:>6}  {}\n",
        "JOB", "STATE", "LAST RUN", "OUTCOME", "DURATION", "TODAY", "FAILED", "NEXT FIRE"
    );
    for j in &status.jobs {
        let state = job_state(j, tz, now);
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
            .map(|t| {
                t.with_timezone(&tz)
                    .format("%Y-%m-%d %H:%M:%S %Z")
                    .to_string()
            })
            .unwrap_or_else(|| "never".into());
        out.push_str(&format!(
            "{:<20} {:<24} {:<24} {:<12} {:>8} {:>9} {:>6}  {}\n",
            j.job,
            state,
            local(j.last_started_at.as_deref(), tz),
            outcome,
            duration,
            format!("{}/{}", j.slots_today_done, j.slots_today_expected),
            j.failures_today,
            next
        ));
        if let (Some(err), Some(o)) = (&j.last_error, &j.last_outcome)
            && o != "success"
        {
            out.push_str(&format!("{:<20} └ {}\n", "", one_line(err, 100)));
        }
        if j.backfill_pending > 0 {
            out.push_str(&format!(
                "{:<20} └ {} to backfill\n",
                "",
                crate::fmt::n(j.backfill_pending, "slot")
            ));
        }
    }
    out
}

/// A job's STATE column: disabled, stuck, running (where, which PID, for how long), paused
/// (until when) or idle.
fn job_state(j: &crate::status::JobStatus, tz: Tz, now: DateTime<Utc>) -> String {
    let since = j.running_since.as_deref().and_then(parse_time);
    let for_ = since
        .map(|s| format_duration((now - s).to_std().unwrap_or_default()))
        .unwrap_or_default();
    if !j.enabled {
        "disabled".to_string()
    } else if j.stuck {
        format!("stuck {for_}")
    } else if j.running {
        let on = j
            .node
            .as_deref()
            .map(|n| format!(" on {n}"))
            .unwrap_or_default();
        match j.running_pid {
            Some(pid) => format!("running{on} PID {pid} {for_}"),
            None => format!("running{on} {for_}"),
        }
    } else if j.paused {
        match j
            .paused_until
            .as_deref()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        {
            Some(t) => format!(
                "paused until {}",
                t.with_timezone(&tz).format("%m-%d %H:%M")
            ),
            None => "paused".to_string(),
        }
    } else {
        "idle".to_string()
    }
}

/// The human table of `history`.
pub fn render_history(rows: &[RunRow], config: &Config) -> String {
    let tz = config.calendar().tz();
    let cluster = config.cluster.is_some();
    let mut out = format!(
        "{:>7}  {:<20} {:<9} {:<26} {:<12} {:>9} {:>8}  {}{}\n",
        "ID",
        "JOB",
        "TRIGGER",
        "SCHEDULED",
        "OUTCOME",
        "DURATION",
        "ATTEMPT",
        if cluster { "NODE          " } else { "" },
        "ERROR"
    );
    for r in rows {
        let duration = r
            .duration_ms
            .map(|ms| format_duration(std::time::Duration::from_millis(ms.max(0) as u64)))
            .unwrap_or_else(|| "-".into());
        let node = if cluster {
            let marks = [(r.stale, " stale"), (r.degraded, " degraded")]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, m)| *m)
                .collect::<String>();
            format!(
                "{:<14}",
                format!("{}{marks}", r.node.as_deref().unwrap_or("-"))
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{:>7}  {:<20} {:<9} {:<26} {:<12} {:>9} {:>8}  {node}{}\n",
            r.id,
            r.job,
            r.trigger.as_str(),
            local(Some(&r.scheduled_at), tz),
            format!("{} {}", icon(r.outcome.as_str()), r.outcome),
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
        "✅ {} is valid\n   exchange {} ({}) · python {}\n   history {}\n   logs {}\n{}\n",
        config.file.display(),
        config.scheduler.exchange.code(),
        tz.name(),
        python,
        config.scheduler.history.display(),
        config.scheduler.log_dir.display(),
        destinations(config),
    );
    out.push_str(&format!(
        "{:<20} {:<34} {:<16} {:<12} {:>8}  {}\n",
        "JOB", "ENTRY", "SCHEDULE", "EXECUTOR", "TIMEOUT", "NEXT FIRE"
    ));
    for job in &config.jobs {
        out.push_str(&config_job(job, &calendar, now));
    }
    out.push_str(&warnings(&config.warnings(now)));
    out
}

/// Where alerts go and where the page is, a line each; URLs without their path, the token
/// never.
fn destinations(config: &Config) -> String {
    let mut out = String::new();
    let n = &config.notify;
    let mut to: Vec<String> = Vec::new();
    if let Some(argv) = &n.command {
        to.push(format!("command {}", argv[0]));
    }
    if let Some(url) = &n.webhook {
        to.push(format!(
            "web hook {} ({})",
            crate::observe::deliver::shown(url),
            match n.webhook_format {
                crate::config::WebhookFormat::Json => "json",
                crate::config::WebhookFormat::Slack => "slack",
            }
        ));
    }
    if !to.is_empty() {
        let events: Vec<&str> = n.events.iter().map(|e| e.as_str()).collect();
        out.push_str(&format!(
            "   notify {} on {}\n",
            to.join(" and "),
            events.join(", ")
        ));
    }
    if let Some(http) = &config.http {
        out.push_str(&format!(
            "   http://{}/ (the trading-day page, /metrics, /api/status, /healthz){}\n",
            http.listen,
            if http.token.is_some() {
                ", bearer token required"
            } else {
                ""
            }
        ));
    }
    out
}

/// A job's line in `check-config`, and which variables its environment sets (never their
/// values).
fn config_job(
    job: &crate::config::Job,
    calendar: &crate::calendar::Calendar,
    now: DateTime<Utc>,
) -> String {
    let tz = calendar.tz();
    let next = job
        .trigger
        .next_fire_after(calendar, now)
        .map(|t| {
            t.with_timezone(&tz)
                .format("%Y-%m-%d %H:%M:%S %Z")
                .to_string()
        })
        .unwrap_or_else(|| "never".into());
    let mut out = format!(
        "{:<20} {:<34} {:<16} {:<12} {:>8}  {}{}\n",
        job.id,
        job.entry.to_string(),
        job.trigger.schedule.to_string(),
        job.executor.as_str(),
        format_duration(job.timeout),
        next,
        match (job.enabled, job.trigger.market_hours) {
            (false, _) => " (disabled)",
            (true, true) => " (market hours)",
            (true, false) => "",
        }
    );
    // Which variables a job's environment sets: never their values.
    if !job.env.is_plain() {
        let keys = job.env.keys();
        out.push_str(&format!(
            "{:<20} env: {}{}\n",
            "",
            if keys.is_empty() {
                "nothing set".to_string()
            } else {
                format!("{} (values hidden)", keys.join(", "))
            },
            if job.env.inherit {
                ""
            } else {
                "; the daemon's environment not inherited"
            }
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Outcome, RunRow};

    const CONFIG: &str = r#"
[scheduler]
exchange = "XNSE"
log_dir = "/nonexistent/hedge-render-test/logs"

[jobs.options_chain]
name = "Options Chain Collection"
entry = "hedge_jobs.options_chain:run"
schedule = "0 */3 * * * *"

[jobs.intraday]
name = "Intraday Collector"
entry = "hedge_jobs.intraday:run"
schedule = "0 */15 * * * *"
executor = "fork"

[jobs.off]
entry = "m:f"
schedule = "0 0 * * * *"
enabled = false
"#;

    /// Compares `text` with the snapshot `name` (`HEDGE_BLESS=1 cargo test --lib render`
    /// writes it after a deliberate change: review the diff).
    fn snapshot(name: &str, text: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/render/snapshots")
            .join(name);
        if std::env::var_os("HEDGE_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            text, want,
            "{name} changed: review it and bless it (HEDGE_BLESS=1)"
        );
    }

    fn config() -> Config {
        Config::parse(std::path::Path::new("/p/config/c.toml"), CONFIG).unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// `status` of a stopped daemon with no history, in a session and on a holiday.
    #[test]
    fn status_reads_the_same_as_its_snapshot() {
        crate::logging::set_color(crate::cli::Color::Never);
        let config = config();
        for (name, now) in [
            ("status_in_session.txt", "2026-11-27T05:00:00Z"),
            ("status_on_a_holiday.txt", "2026-11-24T05:00:00Z"),
        ] {
            let now = at(now);
            let status = crate::status::gather_from(&config, None, None, now).unwrap();
            snapshot(name, &render_status(&status, &config, now));
        }
    }

    /// `history` with a success, a failure, a skipped gap and a run still going on.
    #[test]
    fn history_reads_the_same_as_its_snapshot() {
        crate::logging::set_color(crate::cli::Color::Never);
        let config = config();
        let row = |id: i64, outcome: Outcome, minute: u32| {
            let t = format!("2026-11-27T05:{minute:02}:00.000000Z");
            let mut r = RunRow::sample(id, "options_chain", &t, outcome);
            r.finished_at = (outcome != Outcome::Running).then(|| t.replace(":00.", ":02."));
            r.duration_ms = (outcome != Outcome::Running).then_some(2000);
            r.pid = Some(4242);
            r.executor = Some("subprocess".into());
            if outcome == Outcome::Failed {
                r.error = Some("ValueError: boom\nTraceback (most recent call last): …".into());
            }
            if outcome == Outcome::Skipped {
                r.missed_count = Some(3);
                r.error = Some("missed while the daemon was down".into());
            }
            r
        };
        let rows = [
            row(4, Outcome::Running, 12),
            row(3, Outcome::Skipped, 9),
            row(2, Outcome::Failed, 6),
            row(1, Outcome::Success, 3),
        ];
        snapshot("history.txt", &render_history(&rows, &config));
    }

    /// `check-config`'s human form.
    #[test]
    fn check_config_reads_the_same_as_its_snapshot() {
        crate::logging::set_color(crate::cli::Color::Never);
        let config = config();
        snapshot(
            "check_config.txt",
            &render_config(
                &config,
                "/usr/bin/python3 (Python 3.11.9)",
                at("2026-11-27T05:00:00Z"),
            ),
        );
    }
}
