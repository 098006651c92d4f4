//! The dispatcher's decisions, pure: which slots are due, what catch-up, overlap and retry do.
//! Each function takes a job's state, its config (in the state), the calendar and explicit
//! instants, changes the state and returns the `Action`s the dispatcher carries out (start a run,
//! record a skipped slot or a gap, cancel a run). No clock, no I/O: the table tests below drive
//! them with instants written out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

use crate::calendar::Calendar;
use crate::config::{CatchUp, Job, Overlap};
use crate::history::{Outcome, RunTag, TriggerKind};

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

/// A run waiting to start: queued by overlap or catch-up, or a retry (with its start time).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pending {
    pub trigger: TriggerKind,
    pub scheduled_at: DateTime<Utc>,
    pub attempt: u32,
    pub at: Option<DateTime<Utc>>,
    /// Cluster mode: the slot is already ours (a retry, a takeover) under this fence.
    pub tag: Option<RunTag>,
}

/// A run in progress, as the loop knows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Running {
    pub trigger: TriggerKind,
    pub run_id: Option<i64>,
    pub pid: Option<u32>,
    pub started_at: DateTime<Utc>,
    /// The run has ended (timeout) but its embedded thread has not returned.
    pub stuck: bool,
    /// Cluster mode: the claim it runs under, once won.
    pub tag: Option<RunTag>,
}

/// What the loop knows about one job.
#[derive(Debug, Clone)]
pub(crate) struct JobState {
    pub job: Arc<Job>,
    /// The next regular slot not yet dealt with.
    pub next: Option<DateTime<Utc>>,
    /// Every slot at or before this instant has been dealt with (a reload starts after it).
    pub checked: DateTime<Utc>,
    pub running: Option<Running>,
    pub pending: VecDeque<Pending>,
    pub retry: Option<Pending>,
    /// Removed from the config by a reload: dropped once its run ends.
    pub retired: bool,
    /// `pause`: no slot runs until `resume` (or the pause's end).
    pub pause: Option<Pause>,
    /// `backfill`: past slots to run, one at a time, when the job is otherwise idle.
    pub backfill: VecDeque<DateTime<Utc>>,
    /// The slot of the backfill run in progress.
    pub backfilling: Option<DateTime<Utc>>,
    /// When the loop first found a slot due while the job ran: the overlap is decided
    /// `OVERLAP_GRACE` after it (and never before the slot's instant).
    pub overlap_seen: Option<DateTime<Utc>>,
}

/// A pause of a job's firing.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pause {
    /// When it ends by itself; `None`: at `resume`.
    pub until: Option<DateTime<Utc>>,
    /// The slots it held back so far: first, last, how many (one compact row).
    pub gap: Option<(DateTime<Utc>, DateTime<Utc>, u64)>,
}

/// What the dispatcher does for a decision.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Start a run now (the state already says it runs).
    Start(Pending),
    /// Record one slot that does not run.
    Skip {
        trigger: TriggerKind,
        slot: DateTime<Utc>,
        reason: String,
    },
    /// Record a gap of missed slots as one compact row.
    Gap {
        first: DateTime<Utc>,
        last: DateTime<Utc>,
        count: u64,
        reason: String,
    },
    /// End the running run.
    Cancel(String),
    /// A failed run is tried again at `at`.
    Retry { at: DateTime<Utc>, attempt: u32 },
    /// A failed run is not tried again: its row says why.
    NoRetry { run_uid: String, error: String },
    /// Slots held back by a pause: the pause's compact row grows to this.
    Paused {
        first: DateTime<Utc>,
        last: DateTime<Utc>,
        count: u64,
    },
    /// The pause ended by itself.
    Resumed,
}

impl JobState {
    /// A job's state when the daemon starts (or a reload adds it): slots after `last` (the
    /// newest slot the history knows of) and before `now` were missed, as far back as `MAX_GAP`.
    pub(crate) fn new(
        job: Arc<Job>,
        calendar: &Calendar,
        last: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> JobState {
        let from = match last {
            Some(last) if last < now => last.max(now - MAX_GAP),
            _ => now,
        };
        JobState {
            next: job.trigger.next_fire_after(calendar, from),
            checked: from,
            job,
            running: None,
            pending: VecDeque::new(),
            retry: None,
            retired: false,
            pause: None,
            backfill: VecDeque::new(),
            backfilling: None,
            overlap_seen: None,
        }
    }

    /// When this job next needs the loop: `lead` before its next slot, or `LEAD` before its
    /// retry.
    pub(crate) fn wake_at(&self, lead: Duration) -> Option<DateTime<Utc>> {
        let lead = self.slot_lead(lead);
        [
            self.next
                .map(|t| (t - lead).max(self.overlap_seen.map_or(t - lead, |s| s + OVERLAP_GRACE))),
            self.retry.as_ref().and_then(|r| r.at).map(|t| t - LEAD),
            self.pause.as_ref().and_then(|p| p.until),
            // A backfill waiting for an idle job: now (the dispatcher starts it).
            (!self.backfill.is_empty() && self.idle()).then_some(DateTime::<Utc>::MIN_UTC),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A reloaded job: the new definition takes over after the last slot dealt with, so a slot
    /// that fell due while the config was being read is neither lost nor run twice.
    pub(crate) fn reconfigure(&mut self, job: Arc<Job>, calendar: &Calendar) {
        self.next = job.trigger.next_fire_after(calendar, self.checked);
        self.job = job;
        self.retired = false;
    }

    /// How long before a slot the loop deals with it: the wake's `lead`, but never before the
    /// slot's instant while a run of the job (other than a backfill, which gives way) goes on,
    /// since that run may end before the slot comes (then the slot runs, not its overlap policy).
    fn slot_lead(&self, lead: Duration) -> Duration {
        if self.overlaps() {
            lead.min(Duration::zero())
        } else {
            lead
        }
    }

    /// A run of the job goes on that a new slot would overlap.
    fn overlaps(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| r.trigger != TriggerKind::Backfill)
    }

    /// Nothing runs, waits or is held back: a backfill run may start.
    fn idle(&self) -> bool {
        self.running.is_none()
            && self.pending.is_empty()
            && self.retry.is_none()
            && self.pause.is_none()
            && !self.retired
    }

    fn start(&mut self, p: Pending, now: DateTime<Utc>) -> Action {
        self.backfilling = (p.trigger == TriggerKind::Backfill).then_some(p.scheduled_at);
        self.running = Some(Running {
            trigger: p.trigger,
            run_id: None,
            pid: None,
            started_at: now,
            stuck: false,
            tag: p.tag.clone(),
        });
        Action::Start(p)
    }

    /// Whether missed slots caught up with `all` are being worked off.
    fn draining_backlog(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| r.trigger == TriggerKind::CatchUp)
            || self
                .pending
                .iter()
                .any(|p| p.trigger == TriggerKind::CatchUp)
    }
}

/// What the loop knows at a wake-up, besides the job.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wake<'a> {
    pub calendar: &'a Calendar,
    pub now: DateTime<Utc>,
    /// Slots before this were missed by the daemon, however recent.
    pub started_at: DateTime<Utc>,
    /// Why slots are late at this wake-up, when the loop knows (a clock step).
    pub late_because: Option<&'a str>,
    /// How long before a slot the loop deals with it: `LEAD` alone, or a cluster node's claim
    /// lead (negative for a standby, which tries after the slot).
    pub lead: Duration,
}

impl Wake<'_> {
    fn tz(&self) -> Tz {
        self.calendar.tz()
    }
}

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
#[path = "decide_tests.rs"]
mod tests;
