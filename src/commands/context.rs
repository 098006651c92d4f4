//! `context`: the run context a run would get, built by the daemon's own code.

use chrono::Utc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::{config, logging, plan, runner};

use super::*;

/// `context`.
pub(crate) fn command(
    inv: &Invocation,
    job: Option<String>,
    entry: Option<String>,
    at: Option<String>,
    args: Option<String>,
    exchange: Option<String>,
) -> Result<i32> {
    logging::init_cli("warn");
    let config = match &inv.found {
        Some(_) => Some(inv.load()?),
        None => None,
    };
    let context = context_command(config.as_ref(), job, entry, at, args, exchange)?;
    println!("{}", to_json(&context)?);
    Ok(0)
}

/// `context`: the run context a run of `job` (or of `entry`) scheduled at `at` would get, built
/// by the daemon's own code.
fn context_command(
    config: Option<&Config>,
    job: Option<String>,
    entry: Option<String>,
    at: Option<String>,
    args: Option<String>,
    exchange: Option<String>,
) -> Result<serde_json::Value> {
    let calendar = plan::calendar_for(
        exchange.as_deref().or(config.is_none().then_some("XNSE")),
        config,
    )?;
    let tz = calendar.tz();
    let configured = match (&job, &entry, config) {
        (Some(id), _, Some(c)) => Some(c.job(id).ok_or_else(|| Error::UnknownJob {
            job: id.clone(),
            known: c.job_list(),
        })?),
        (Some(id), _, None) => {
            return Err(Error::Usage(format!(
                "job `{id}`: no config found to read it from; give --entry instead"
            )));
        }
        (None, Some(e), Some(c)) => c.jobs.iter().find(|j| j.entry.to_string() == *e),
        (None, _, _) => None,
    };
    let entry = match (configured, &entry) {
        (_, Some(e)) => e.clone(),
        (Some(j), None) => j.entry.to_string(),
        (None, None) => {
            return Err(Error::Usage(
                "`context` needs a job of the config or --entry module:function".to_string(),
            ));
        }
    };
    let scheduled_at = match at.as_deref() {
        None => Utc::now(),
        Some(text) => parse_at(text, tz)?,
    };
    let mut merged = configured
        .map(|j| j.args.clone())
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(text) = &args {
        let extra: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::Usage(format!("`--args` is not JSON: {e}")))?;
        let (Some(into), Some(from)) = (merged.as_object_mut(), extra.as_object()) else {
            return Err(Error::Usage("`--args` must be a JSON object".to_string()));
        };
        into.extend(from.clone());
    }
    let id = configured.map_or_else(
        || entry.split(':').next().unwrap_or("job").replace('.', "_"),
        |j| j.id.clone(),
    );
    let timeout = configured.map_or(config::DEFAULT_TIMEOUT, |j| j.timeout);
    let mut context = serde_json::json!({
        "job": id,
        "name": configured.map_or(id.as_str(), |j| j.name.as_str()),
        "entry": entry,
        "run_id": 0,
        "run_uid": uuid::Uuid::now_v7().to_string(),
        "scheduled_at": scheduled_at.with_timezone(&tz).to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
        "attempt": 1,
        "trigger": "test",
        "args": merged,
        "exchange": calendar.exchange().code(),
        "timezone": tz.name(),
    });
    if let Some(map) = context.as_object_mut() {
        map.extend(runner::context_times(
            &calendar,
            configured.map(|j| &j.trigger),
            scheduled_at,
            scheduled_at,
            timeout,
        ));
    }
    Ok(context)
}

/// `--at`: RFC 3339, or a date and time in the exchange's zone (`2026-11-30T09:15[:00]`, a space
/// for the `T` too).
fn parse_at(text: &str, tz: chrono_tz::Tz) -> Result<chrono::DateTime<Utc>> {
    use chrono::TimeZone;
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let normal = text.trim().replace(' ', "T");
    ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(&normal, f).ok())
        .and_then(|local| tz.from_local_datetime(&local).earliest())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| {
            Error::Usage(format!(
                "invalid time `{text}` for `--at` (expected RFC 3339, such as 2026-11-30T09:15:00+05:30, or 2026-11-30T09:15 in the exchange's zone)"
            ))
        })
}
