//! The dispatcher's decisions, pure: which slots are due, what catch-up, overlap and retry do.
//! Each function takes a job's state, its config (in the state), the calendar and explicit
//! instants, changes the state and returns the `Action`s the dispatcher carries out (start a run,
//! record a skipped slot or a gap, cancel a run). No clock, no I/O: the table tests below drive
//! them with instants written out.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

use crate::calendar::Calendar;
use crate::config::{CatchUp, Job, Overlap};
use crate::history::TriggerKind;

mod ended;
mod state;

pub(crate) use ended::*;
pub(crate) use state::*;

/// The loop wakes this much before a slot, so the run is prepared (lock, log) when its instant
/// comes; the run itself starts at the slot exactly.
pub(crate) const LEAD: Duration = Duration::milliseconds(4);
/// A slot found later than this is treated as missed (catch-up), not as on time.
pub(crate) const LATE: Duration = Duration::seconds(2);
/// How far back a restarted daemon accounts for missed slots.
pub(crate) const MAX_GAP: Duration = Duration::days(7);
/// `config::OVERLAP_GRACE`, in the loop's arithmetic.
pub(crate) const OVERLAP_GRACE: Duration =
    Duration::milliseconds(crate::config::OVERLAP_GRACE.as_millis() as i64);

/// The missed slots of one wake-up, without keeping them all.
#[derive(Debug, Default)]
struct Missed {
    count: u64,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    /// The one before `last`.
    prev: Option<DateTime<Utc>>,
    /// Slots older than the look-back: never run, only counted.
    old: u64,
    old_last: Option<DateTime<Utc>>,
    /// Slots inside the look-back, kept only for `catch_up = "all"`.
    recent: Vec<DateTime<Utc>>,
}

/// Fires what is due at `wake.now` for one job: a retry whose time has come, then its regular
/// slots, on time or missed (catch-up).
pub(crate) fn tick(state: &mut JobState, wake: &Wake<'_>) -> Vec<Action> {
    let now = wake.now;
    let mut actions = Vec::new();
    if let Some(retry) = state
        .retry
        .take_if(|r| r.at.is_some_and(|at| at <= now + LEAD))
    {
        actions.push(state.start(retry, now));
    }
    let lead = state.slot_lead(wake.lead);
    let soon = now + lead;
    // A standby looks at a slot after its instant on purpose: that is not late.
    let late = LATE + (-lead).max(Duration::zero());
    if !state.overlaps() {
        state.overlap_seen = None;
    } else if state.pause.is_none() && state.next.is_some_and(|t| t <= soon) {
        // The slot comes while the job runs: its overlap is decided a moment later, when a run
        // that ended just now (or during a pause of this process) has been reaped.
        let seen = *state.overlap_seen.get_or_insert(now);
        if now < seen + OVERLAP_GRACE {
            return actions;
        }
        state.overlap_seen = None;
    }
    state.checked = state.checked.max(soon);
    if state
        .pause
        .as_ref()
        .is_some_and(|p| p.until.is_some_and(|u| u <= soon))
    {
        state.pause = None;
        actions.push(Action::Resumed);
    }
    let Some(first) = state.next.filter(|t| *t <= soon) else {
        actions.extend(next_backfill(state, now));
        return actions;
    };
    if state.pause.is_some() {
        actions.extend(hold_back(state, first, soon, wake));
        return actions;
    }
    let (missed, on_time) = due_slots(state, first, soon, late, wake);
    if missed.count > 0 {
        actions.extend(catch_up(state, missed, on_time.is_some(), wake));
    }
    if let Some(t) = on_time {
        actions.extend(request(
            state,
            TriggerKind::Schedule,
            t,
            wake.now,
            wake.tz(),
        ));
    }
    actions.extend(next_backfill(state, now));
    actions
}

/// What holds the job: its run (which, its PID, since when, stuck or not), or a pending retry.
fn busy(state: &JobState, tz: Tz) -> String {
    match &state.running {
        Some(r) => format!(
            "previous run {}{} {} since {}",
            r.run_id
                .map_or_else(|| "(starting)".to_string(), |id| id.to_string()),
            r.pid.map_or_else(String::new, |p| format!(" (PID {p})")),
            if r.stuck {
                "stuck in native code"
            } else {
                "still running"
            },
            hms_zone(r.started_at, tz)
        ),
        None => "a retry of the previous slot is pending".to_string(),
    }
}

/// Paused: each due slot from `first` (on time or late) is held back, into the pause's one
/// row; the row's new span, if it grew.
fn hold_back(
    state: &mut JobState,
    first: DateTime<Utc>,
    soon: DateTime<Utc>,
    wake: &Wake<'_>,
) -> Option<Action> {
    let pause = state.pause.as_mut()?;
    let mut slot = Some(first);
    let mut held: Option<(DateTime<Utc>, DateTime<Utc>, u64)> = pause.gap;
    while let Some(t) = slot.filter(|t| *t <= soon && pause.until.is_none_or(|u| *t < u)) {
        held = Some(match held {
            Some((f, _, n)) => (f, t, n + 1),
            None => (t, t, 1),
        });
        slot = state.job.trigger.next_fire_after(wake.calendar, t);
    }
    state.next = slot;
    let (first, last, count) = held.filter(|h| Some(*h) != pause.gap)?;
    pause.gap = held;
    Some(Action::Paused { first, last, count })
}

/// The job's slots due by `soon`, from `first`: the missed ones (more than `late` past, found
/// behind a newer one, or from before this start) and the one on time (only the newest due
/// slot can be on time). Moves the job's next slot past them.
fn due_slots(
    state: &mut JobState,
    first: DateTime<Utc>,
    soon: DateTime<Utc>,
    late: Duration,
    wake: &Wake<'_>,
) -> (Missed, Option<DateTime<Utc>>) {
    let now = wake.now;
    let job = Arc::clone(&state.job);
    let lookback = lookback_start(&job, wake.calendar, now);
    let mut missed = Missed::default();
    let mut on_time = None;
    let mut slot = Some(first);
    while let Some(t) = slot.filter(|t| *t <= soon) {
        let next = job.trigger.next_fire_after(wake.calendar, t);
        let newest = next.is_none_or(|n| n > soon);
        if !newest || now - t > late || t < wake.started_at {
            missed.count += 1;
            missed.first.get_or_insert(t);
            missed.prev = missed.last.replace(t);
            if t < lookback {
                missed.old += 1;
                missed.old_last = Some(t);
            } else if job.catch_up == CatchUp::All {
                missed.recent.push(t);
            }
        } else {
            on_time = Some(t);
        }
        slot = next;
    }
    state.next = slot;
    (missed, on_time)
}

/// Starts the next backfill slot when the job is idle.
pub(crate) fn next_backfill(state: &mut JobState, now: DateTime<Utc>) -> Option<Action> {
    if !state.idle() {
        return None;
    }
    let slot = state.backfill.pop_front()?;
    Some(state.start(
        Pending {
            trigger: TriggerKind::Backfill,
            scheduled_at: slot,
            attempt: 1,
            at: Some(now),
            tag: None,
        },
        now,
    ))
}

/// `trigger`: a manual run now, or after what runs (never skipped by the overlap policy: it
/// was asked for). Returns what to do and what to tell the caller.
pub(crate) fn trigger(state: &mut JobState, now: DateTime<Utc>) -> (Vec<Action>, String) {
    let pending = Pending {
        trigger: TriggerKind::Manual,
        scheduled_at: now,
        attempt: 1,
        at: None,
        tag: None,
    };
    if state.pause.is_some() {
        return (
            Vec::new(),
            "the job is paused: `resume` it first".to_string(),
        );
    }
    if state
        .running
        .as_ref()
        .is_some_and(|r| r.trigger == TriggerKind::Backfill)
    {
        let actions = vec![Action::Cancel(
            "a manual run comes first; the backfill goes on after it".to_string(),
        )];
        state.pending.push_front(pending);
        return (actions, "started (a backfill run gave way)".to_string());
    }
    if state.running.is_none() && state.pending.is_empty() && state.retry.is_none() {
        return (vec![state.start(pending, now)], "started".to_string());
    }
    if state
        .pending
        .iter()
        .any(|p| p.trigger == TriggerKind::Manual)
    {
        return (Vec::new(), "a manual run is already queued".to_string());
    }
    state.pending.push_back(pending);
    (
        Vec::new(),
        "queued: it starts when the run in progress ends".to_string(),
    )
}

/// Why a slot at `last` was missed, in words.
fn missed_reason(last: DateTime<Utc>, wake: &Wake<'_>) -> String {
    if last < wake.started_at {
        format!(
            "missed while the scheduler was not running (it started at {})",
            hms(wake.started_at, wake.tz())
        )
    } else if let Some(why) = wake.late_because {
        format!("missed: {why}")
    } else {
        format!(
            "missed: the scheduler looked {} after the slot (the machine was suspended or overloaded)",
            humantime::format_duration(round_s(wake.now - last))
        )
    }
}

/// Applies the job's `catch_up` to the slots found late; `superseded` when a slot is due on
/// time now.
fn catch_up(state: &mut JobState, m: Missed, superseded: bool, wake: &Wake<'_>) -> Vec<Action> {
    let (Some(first), Some(last)) = (m.first, m.last) else {
        return Vec::new();
    };
    let why = missed_reason(last, wake);
    let tz = wake.tz();
    let gap = |first, last, count, reason: String| Action::Gap {
        first,
        last,
        count,
        reason,
    };
    let mut actions = Vec::new();
    match state.job.catch_up {
        CatchUp::None => actions.push(gap(first, last, m.count, why)),
        // The latest slot is older than the look-back when every missed slot is.
        CatchUp::Latest if superseded || m.old == m.count => actions.push(gap(
            first,
            last,
            m.count,
            if superseded {
                format!("{why}; the current slot runs instead")
            } else {
                why
            },
        )),
        CatchUp::Latest => {
            if let Some(prev) = m.prev {
                actions.push(gap(
                    first,
                    prev,
                    m.count - 1,
                    format!(
                        "{why}; caught up with the slot at {} instead",
                        hms(last, tz)
                    ),
                ));
            }
            actions.extend(request(state, TriggerKind::CatchUp, last, wake.now, tz));
        }
        CatchUp::All => {
            if let Some(old_last) = m.old_last {
                actions.push(gap(
                    first,
                    old_last,
                    m.old,
                    format!("{why}; older than the catch-up look-back"),
                ));
            }
            for t in m.recent {
                actions.extend(request(state, TriggerKind::CatchUp, t, wake.now, tz));
            }
        }
    }
    actions
}

/// A slot (or a catch-up) wants to run: start it, or apply the job's overlap policy.
pub(crate) fn request(
    state: &mut JobState,
    trigger: TriggerKind,
    slot: DateTime<Utc>,
    now: DateTime<Utc>,
    tz: Tz,
) -> Vec<Action> {
    let pending = Pending {
        trigger,
        scheduled_at: slot,
        attempt: 1,
        at: None,
        tag: None,
    };
    if state.running.is_none() && state.pending.is_empty() && state.retry.is_none() {
        return vec![state.start(pending, now)];
    }
    // A backfill gives way to a live slot: it goes on after it.
    if state
        .running
        .as_ref()
        .is_some_and(|r| r.trigger == TriggerKind::Backfill)
    {
        state.pending.push_front(pending);
        return vec![Action::Cancel(format!(
            "the slot at {} comes first; the backfill goes on after it",
            hms_zone(slot, tz)
        ))];
    }
    // A backlog caught up with `all` is worked off in order, and the slots that come meanwhile
    // wait their turn behind it whatever the overlap policy.
    if trigger == TriggerKind::CatchUp || state.draining_backlog() {
        state.pending.push_back(pending);
        return Vec::new();
    }
    let busy = busy(state, tz);
    match state.job.overlap {
        Overlap::Skip => vec![Action::Skip {
            trigger,
            slot,
            reason: busy,
        }],
        Overlap::Queue => match state
            .pending
            .iter()
            .find(|p| p.trigger == TriggerKind::Schedule)
        {
            Some(queued) => vec![Action::Skip {
                trigger,
                slot,
                reason: format!(
                    "{busy}, and the slot at {} is already queued",
                    hms_zone(queued.scheduled_at, tz)
                ),
            }],
            None => {
                state.pending.push_back(pending);
                Vec::new()
            }
        },
        Overlap::Replace => {
            let mut actions = Vec::new();
            if state.running.as_ref().is_some_and(|r| !r.stuck) {
                actions.push(Action::Cancel(format!(
                    "replaced by the slot at {}",
                    hms_zone(slot, tz)
                )));
            }
            state.pending.retain(|p| p.trigger != TriggerKind::Schedule);
            state.pending.push_back(pending);
            actions
        }
    }
}

/// Missed slots older than this are not run: the current session for a job that follows
/// sessions (from local midnight), a day otherwise, and never past `misfire_grace`.
pub(crate) fn lookback_start(job: &Job, calendar: &Calendar, now: DateTime<Utc>) -> DateTime<Utc> {
    let mut start = if job.trigger.follows_sessions() {
        let tz = calendar.tz();
        let midnight = now
            .with_timezone(&tz)
            .date_naive()
            .and_time(chrono::NaiveTime::MIN);
        chrono::TimeZone::from_local_datetime(&tz, &midnight)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(now - Duration::days(1))
    } else {
        now - Duration::days(1)
    };
    if let Some(grace) = job.misfire_grace.and_then(|g| Duration::from_std(g).ok()) {
        start = start.max(now - grace);
    }
    start
}

fn hms(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%H:%M:%S").to_string()
}

fn hms_zone(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%H:%M:%S %Z").to_string()
}

fn round_s(d: Duration) -> StdDuration {
    StdDuration::from_secs(d.num_seconds().max(0).unsigned_abs())
}

#[cfg(test)]
mod tests;
