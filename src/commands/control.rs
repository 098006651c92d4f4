//! The control commands (`pause`, `resume`, `reload`, `trigger`, `backfill`): a request to the
//! running daemon over its socket.

use chrono::Utc;

use crate::config::Config;
use crate::error::{EXIT_NOT_RUNNING, Error, Result};
use crate::history::History;
use crate::{control, instance, logging, plan};

use super::*;

/// `pause`.
pub(crate) fn pause(inv: &Invocation, job: String, until: Option<String>) -> Result<i32> {
    logging::init_cli("warn");
    let config = inv.load()?;
    let until = until
        .as_deref()
        .map(|u| pause_until(&config, u, Utc::now()))
        .transpose()?;
    control_command(&config, control::Request::Pause { job, until })
}

/// `reload`.
pub(crate) fn reload(inv: &Invocation) -> Result<i32> {
    logging::init_cli("warn");
    let config = inv.load()?;
    control_command(&config, control::Request::Reload)
}

/// `resume`.
pub(crate) fn resume(inv: &Invocation, job: String) -> Result<i32> {
    logging::init_cli("warn");
    let config = inv.load()?;
    control_command(&config, control::Request::Resume { job })
}

/// `trigger`.
pub(crate) fn trigger(inv: &Invocation, job: String) -> Result<i32> {
    logging::init_cli("warn");
    let config = inv.load()?;
    control_command(&config, control::Request::Trigger { job })
}

/// `backfill`.
pub(crate) fn backfill(inv: &Invocation, job: String, from: String, to: String) -> Result<i32> {
    logging::init_cli("warn");
    let config = inv.load()?;
    let range = plan::Range::parse(&from, &to)?;
    let (span, slots) = backfill_slots(&config, &job, range, Utc::now())?;
    if slots.is_empty() {
        println!(
            "{job}: nothing to backfill: every past slot from {from} to {to} has a successful run"
        );
        return Ok(0);
    }
    control_command(
        &config,
        control::Request::Backfill {
            job,
            range: span,
            slots,
        },
    )
}

/// Sends a control request to the running daemon: 0 done, 1 refused, 3 no daemon.
fn control_command(config: &Config, req: control::Request) -> Result<i32> {
    if !matches!(req, control::Request::Reload) && config.job(req.job()).is_none() {
        return Err(Error::UnknownJob {
            job: req.job().to_string(),
            known: config.job_list(),
        });
    }
    match control::send(&config.scheduler.log_dir, &req) {
        Ok(reply) if reply.ok => {
            println!("{}", reply.message);
            Ok(0)
        }
        Ok(reply) => {
            eprintln!("error: {}", reply.message);
            Ok(1)
        }
        Err(control::SendError::NotRunning)
            if let Some(d) = instance::probe(&config.scheduler.log_dir) =>
        {
            eprintln!(
                "error: hedge-scheduler runs (PID {}) but its control socket `{}` is missing or not a socket: it is made again at the daemon's next health check (a file in its place must be removed); `status` says more",
                d.pid,
                config.scheduler.log_dir.join(control::SOCKET).display()
            );
            Ok(1)
        }
        Err(control::SendError::NotRunning) => {
            eprintln!(
                "hedge-scheduler is not running (no daemon listens in {}): start it with `{} run`",
                config.scheduler.log_dir.display(),
                crate::cli::invocation()
            );
            Ok(EXIT_NOT_RUNNING)
        }
        Err(control::SendError::Other(e)) => Err(Error::Daemon(e)),
    }
}

/// `pause --until`: a date (its start), a local date and time, or `@close`.
fn pause_until(
    config: &Config,
    text: &str,
    now: chrono::DateTime<Utc>,
) -> Result<chrono::DateTime<Utc>> {
    use chrono::TimeZone;
    let calendar = config.calendar();
    let tz = calendar.tz();
    let local = |t: chrono::NaiveDateTime| {
        tz.from_local_datetime(&t)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    };
    let found = if text.trim() == "@close" {
        let today = now.with_timezone(&tz).date_naive();
        today
            .iter_days()
            .take(30)
            .filter_map(|d| calendar.session(d))
            .filter_map(|s| local(s.date.and_time(s.close)))
            .find(|close| *close > now)
    } else if let Ok(d) = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        local(d.and_time(chrono::NaiveTime::MIN))
    } else if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%dT%H:%M") {
        local(t)
    } else {
        return Err(Error::Usage(format!(
            "invalid `--until` `{text}` (expected YYYY-MM-DD, YYYY-MM-DDTHH:MM in exchange time, or @close)"
        )));
    };
    match found {
        Some(t) if t > now => Ok(t),
        Some(_) => Err(Error::Usage(format!("`--until` `{text}` is in the past"))),
        None => Err(Error::Usage(
            "`--until @close`: no session in the next 30 days".to_string(),
        )),
    }
}

/// The range of `backfill` as instants, and its past slots without a successful run in the
/// history. A range in the future, older than the history keeps, or of more than
/// `MAX_BACKFILL` slots is refused.
fn backfill_slots(
    config: &Config,
    job_id: &str,
    range: plan::Range,
    now: chrono::DateTime<Utc>,
) -> Result<(control::Span, Vec<chrono::DateTime<Utc>>)> {
    use chrono::TimeZone;
    let Some(job) = config.job(job_id) else {
        return Err(Error::UnknownJob {
            job: job_id.to_string(),
            known: config.job_list(),
        });
    };
    let calendar = config.calendar();
    let tz = calendar.tz();
    let today = now.with_timezone(&tz).date_naive();
    if range.from > today {
        return Err(Error::Usage(format!(
            "`--from` {} is in the future: backfill runs past slots (today is {today})",
            range.from
        )));
    }
    let kept = chrono::Duration::from_std(config.scheduler.history_retention)
        .unwrap_or(chrono::Duration::days(90));
    let oldest = (now - kept).with_timezone(&tz).date_naive();
    if range.from < oldest {
        return Err(Error::Usage(format!(
            "`--from` {} is older than the history keeps (`history_retention`: from {oldest} on): whether those slots ran is no longer known",
            range.from
        )));
    }
    let start = |d: chrono::NaiveDate| {
        tz.from_local_datetime(&d.and_time(chrono::NaiveTime::MIN))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(now)
    };
    let span = control::Span {
        from: start(range.from),
        to: start(range.to.succ_opt().unwrap_or(range.to)).min(now),
    };
    let history = History::open_read_only(&config.scheduler.history)?;
    let slots = control::missing_slots(job, &calendar, history.as_ref(), span, now)?;
    if slots.len() > control::MAX_BACKFILL {
        return Err(Error::Usage(format!(
            "{} slots of `{job_id}` to backfill: at most {} at a time; split the range",
            slots.len(),
            control::MAX_BACKFILL
        )));
    }
    Ok((span, slots))
}
