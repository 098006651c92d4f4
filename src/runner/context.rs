//! The run's context: what the job is told (its slot, the session, the times, its args).

use chrono::{DateTime, SecondsFormat, Utc};

use crate::config::{Config, Entry, Job};

use super::*;

/// A session as the run context gives it: its date, open and close with the exchange's offset,
/// and its kind (`regular`, `early_close` or `special`).
fn session_json(tz: chrono_tz::Tz, s: &crate::calendar::Session) -> serde_json::Value {
    use chrono::TimeZone;
    let at = |t: chrono::NaiveTime| {
        tz.from_local_datetime(&s.date.and_time(t))
            .earliest()
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, false))
    };
    serde_json::json!({
        "date": s.date.to_string(),
        "open": at(s.open),
        "close": at(s.close),
        "kind": match s.kind {
            crate::calendar::SessionKind::Regular => "regular",
            crate::calendar::SessionKind::EarlyClose => "early_close",
            crate::calendar::SessionKind::LateOpen | crate::calendar::SessionKind::Special => "special",
        },
    })
}

/// What the calendar says of a run at `scheduled_at`: the exchange's session that day (`null`
/// when closed), the last session opened at or before it, the slot before it (the start of the
/// data interval the run covers) and when its timeout hits.
pub(crate) fn context_times(
    calendar: &crate::calendar::Calendar,
    trigger: Option<&crate::trigger::Trigger>,
    scheduled_at: DateTime<Utc>,
    started_at: DateTime<Utc>,
    timeout: std::time::Duration,
) -> serde_json::Map<String, serde_json::Value> {
    let tz = calendar.tz();
    let date = scheduled_at.with_timezone(&tz).date_naive();
    let session = calendar.session(date);
    let last_session = (0..=30)
        .filter_map(|back| date.checked_sub_days(chrono::Days::new(back)))
        .filter_map(|d| calendar.session(d))
        .find(|s| {
            use chrono::TimeZone;
            tz.from_local_datetime(&s.date.and_time(s.open))
                .earliest()
                .is_some_and(|open| open <= scheduled_at)
        });
    let rfc = |t: DateTime<Utc>| {
        t.with_timezone(&tz)
            .to_rfc3339_opts(SecondsFormat::Micros, false)
    };
    let mut m = serde_json::Map::new();
    m.insert(
        "session".into(),
        session
            .as_ref()
            .map_or(serde_json::Value::Null, |s| session_json(tz, s)),
    );
    m.insert(
        "last_session".into(),
        last_session
            .as_ref()
            .map_or(serde_json::Value::Null, |s| session_json(tz, s)),
    );
    m.insert(
        "interval_start".into(),
        trigger
            .and_then(|t| t.previous_fire_before(calendar, scheduled_at))
            .map(rfc)
            .into(),
    );
    m.insert(
        "deadline".into(),
        chrono::Duration::from_std(timeout)
            .ok()
            .map(|d| rfc(started_at + d))
            .into(),
    );
    m
}

/// The run context handed to Python, as JSON.
pub(super) fn run_context(
    config: &Config,
    job: &Job,
    req: &RunRequest,
    run_id: i64,
    uid: &str,
) -> serde_json::Value {
    let tz = config.scheduler.exchange.tz();
    let entry = match &job.entry {
        Entry::Script(path) => config.python.cwd.join(path).display().to_string(),
        other => other.to_string(),
    };
    let mut context = serde_json::json!({
        "job": job.id,
        "name": job.name,
        "entry": entry,
        "run_id": run_id,
        "run_uid": uid,
        "owner": std::process::id(),
        "scheduled_at": req.scheduled_at.with_timezone(&tz).to_rfc3339_opts(SecondsFormat::Micros, false),
        "attempt": req.attempt,
        "trigger": req.trigger.as_str(),
        "args": job.args,
        "exchange": config.scheduler.exchange.code(),
        "timezone": tz.name(),
        "node": req.tag.as_ref().map(|t| &t.node),
        "fence": req.tag.as_ref().and_then(|t| t.fence),
        "degraded": req.tag.as_ref().is_some_and(|t| t.degraded),
    });
    if let Some(map) = context.as_object_mut() {
        map.extend(context_times(
            &config.calendar(),
            Some(&job.trigger),
            req.scheduled_at,
            Utc::now(),
            job.timeout,
        ));
    }
    context
}
