//! A job's state as the decisions see it (its run, what waits, its pause), the actions they
//! return, and the wake they are taken at.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

use crate::calendar::Calendar;
use crate::config::Job;
use crate::history::{RunTag, TriggerKind};

use super::*;

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
    pub(super) fn slot_lead(&self, lead: Duration) -> Duration {
        if self.overlaps() {
            lead.min(Duration::zero())
        } else {
            lead
        }
    }

    /// A run of the job goes on that a new slot would overlap.
    pub(super) fn overlaps(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|r| r.trigger != TriggerKind::Backfill)
    }

    /// Nothing runs, waits or is held back: a backfill run may start.
    pub(super) fn idle(&self) -> bool {
        self.running.is_none()
            && self.pending.is_empty()
            && self.retry.is_none()
            && self.pause.is_none()
            && !self.retired
    }

    pub(super) fn start(&mut self, p: Pending, now: DateTime<Utc>) -> Action {
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
    pub(super) fn draining_backlog(&self) -> bool {
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
    pub(super) fn tz(&self) -> Tz {
        self.calendar.tz()
    }
}
