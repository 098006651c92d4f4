//! A run's end: its retry planned, what waits started; a takeover; a release.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

use crate::calendar::Calendar;
use crate::config::Job;
use crate::history::{Outcome, RunTag, TriggerKind};

use super::*;

/// How a run ended, as far as the decisions need it.
#[derive(Debug, Clone)]
pub(crate) struct Ended {
    pub run_id: Option<i64>,
    pub run_uid: Option<String>,
    pub scheduled_at: DateTime<Utc>,
    pub attempt: u32,
    pub outcome: Outcome,
    pub error: Option<String>,
    /// An embedded run whose thread has not returned: the job stays held.
    pub stuck: bool,
    /// Cluster mode: the claim it ran under (a retry keeps it).
    pub tag: Option<RunTag>,
}

/// A run of the job ended: plan its retry (with `jitter`, a factor near 1), then start what
/// waits.
pub(crate) fn finished(
    state: &mut JobState,
    ended: &Ended,
    calendar: &Calendar,
    now: DateTime<Utc>,
    jitter: f64,
) -> Vec<Action> {
    if ended.stuck {
        if let Some(r) = state.running.as_mut() {
            r.stuck = true;
        }
    } else {
        state.running = None;
        state.overlap_seen = None;
    }
    // A backfill run that gave way (or was stopped) is run again later.
    if let Some(slot) = state.backfilling.take()
        && ended.outcome == Outcome::Cancelled
        && !state.backfill.contains(&slot)
    {
        state.backfill.push_front(slot);
    }
    if state.retired {
        return Vec::new();
    }
    let mut actions = Vec::new();
    match plan_retry(&state.job, calendar, ended, now, jitter) {
        Some(Ok(retry)) => {
            actions.push(Action::Retry {
                at: retry.at.unwrap_or(now),
                attempt: retry.attempt,
            });
            state.retry = Some(retry);
        }
        Some(Err(why)) => {
            if let Some(run_uid) = ended.run_uid.clone() {
                let error = match &ended.error {
                    Some(e) => format!("{e}; {why}"),
                    None => why,
                };
                actions.push(Action::NoRetry { run_uid, error });
            }
        }
        None => {}
    }
    actions.extend(start_pending(state, now));
    actions.extend(next_backfill(state, now));
    actions
}

/// Cluster mode: a dead node's slot is ours to run again. It starts now if the job is free
/// here; otherwise it is given up (`Skip`): the job is busy on this node.
pub(crate) fn takeover(
    state: &mut JobState,
    p: Pending,
    now: DateTime<Utc>,
    tz: Tz,
) -> Vec<Action> {
    if state.retired {
        return vec![Action::Skip {
            trigger: p.trigger,
            slot: p.scheduled_at,
            reason: "taken over from a dead node, but the job is no longer configured here"
                .to_string(),
        }];
    }
    if state.running.is_none() && state.retry.is_none() {
        return vec![state.start(p, now)];
    }
    vec![Action::Skip {
        trigger: p.trigger,
        slot: p.scheduled_at,
        reason: match &state.running {
            Some(r) => format!(
                "taken over from a dead node, but the job already runs here (since {})",
                hms_zone(r.started_at, tz)
            ),
            None => {
                "taken over from a dead node, but a retry of the job is pending here".to_string()
            }
        },
    }]
}

/// A stuck run's thread returned: the job is free again.
pub(crate) fn released(state: &mut JobState, now: DateTime<Utc>) -> Vec<Action> {
    state.running = None;
    if state.retired {
        return Vec::new();
    }
    start_pending(state, now)
        .into_iter()
        .chain(next_backfill(state, now))
        .collect()
}

/// Starts the next queued run once the job is free (and no retry waits).
fn start_pending(state: &mut JobState, now: DateTime<Utc>) -> Option<Action> {
    if state.running.is_none() && state.retry.is_none() {
        let next = state.pending.pop_front()?;
        return Some(state.start(next, now));
    }
    None
}

/// The retry of a failed run: `None` when its outcome is not retried or its attempts are spent,
/// `Err(why)` when the retry would start at or after the next slot or past the session's window.
pub(crate) fn plan_retry(
    job: &Job,
    calendar: &Calendar,
    ended: &Ended,
    now: DateTime<Utc>,
    jitter: f64,
) -> Option<Result<Pending, String>> {
    let policy = &job.retry;
    ended.run_id?;
    if !policy.on.contains(&ended.outcome) || ended.attempt >= policy.attempts {
        return None;
    }
    let attempt = ended.attempt + 1;
    let delay = policy.delay_before(attempt).mul_f64(jitter.clamp(0.0, 2.0));
    let at = now + Duration::from_std(delay).unwrap_or(Duration::MAX / 2);
    let tz = calendar.tz();
    let next_slot = job
        .trigger
        .next_fire_after(calendar, ended.scheduled_at.max(now));
    let window_end = job.trigger.window_end_for(calendar, ended.scheduled_at);
    match (next_slot, window_end) {
        (Some(next), _) if at >= next => Some(Err(format!(
            "no retry: next slot at {}",
            hms_zone(next, tz)
        ))),
        (_, Some(end)) if at > end => Some(Err(format!(
            "no retry: the session's window ends at {}",
            hms_zone(end, tz)
        ))),
        _ => Some(Ok(Pending {
            trigger: TriggerKind::Retry,
            scheduled_at: ended.scheduled_at,
            attempt,
            at: Some(at),
            tag: ended.tag.clone(),
        })),
    }
}

/// What the health check finds about one job's run: a reason to end it (far past its timeout),
/// or a problem to show (a thread stuck in native code).
pub(crate) fn overdue(
    state: &JobState,
    now: DateTime<Utc>,
    kill_grace: StdDuration,
    tz: Tz,
) -> Option<Result<String, String>> {
    let r = state.running.as_ref()?;
    if r.stuck {
        return Some(Err(format!(
            "{}: run {} is stuck in native code since {}; the job is held until it returns",
            state.job.id,
            r.run_id.unwrap_or_default(),
            hms_zone(r.started_at, tz)
        )));
    }
    let limit = state.job.timeout + kill_grace * 2 + StdDuration::from_secs(5);
    let over = (now - r.started_at).to_std().is_ok_and(|d| d > limit);
    over.then(|| Ok("health check: past its timeout".to_string()))
}
