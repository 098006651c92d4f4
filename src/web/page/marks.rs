//! What became of each slot of a day (its mark), a job's row of marks, and the page's
//! time formats.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::config::Job;
use crate::history::{Outcome, RunRow, parse_time};

/// What became of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Success,
    Failed,
    Timeout,
    Skipped,
    Missed,
    Running,
    Pending,
}

impl Mark {
    pub fn as_str(self) -> &'static str {
        match self {
            Mark::Success => "success",
            Mark::Failed => "failed",
            Mark::Timeout => "timeout",
            Mark::Skipped => "skipped",
            Mark::Missed => "missed",
            Mark::Running => "running",
            Mark::Pending => "pending",
        }
    }

    pub(super) const ALL: [Mark; 7] = [
        Mark::Success,
        Mark::Failed,
        Mark::Timeout,
        Mark::Skipped,
        Mark::Missed,
        Mark::Running,
        Mark::Pending,
    ];
}

/// A job with more slots in a day than this is drawn in groups of slots (a mark per group,
/// its worst outcome): a page stays small however often a job fires.
pub(super) const MAX_MARKS: usize = 600;

impl Mark {
    /// How bad: a group shows its worst.
    pub(super) fn weight(self) -> u8 {
        match self {
            Mark::Success => 0,
            Mark::Pending => 1,
            Mark::Running => 2,
            Mark::Skipped => 3,
            Mark::Missed => 4,
            Mark::Timeout => 5,
            Mark::Failed => 6,
        }
    }
}

/// A slot not yet recorded this long after its instant is `missed` (before that, `pending`: its
/// run may be starting).
pub(super) const UNRECORDED_GRACE: chrono::Duration = chrono::Duration::seconds(60);

/// The mark of each slot of one job, with the run that decided it: a slot's success wins, then a
/// running run, then its newest row; a compact gap row covers its slots; a slot with no row is
/// `pending` until a minute past, `missed` after.
pub fn slot_marks<'a>(
    slots: &[DateTime<Utc>],
    rows: &[&'a RunRow],
    now: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, Mark, Option<&'a RunRow>)> {
    type Placed<'r> = (&'r RunRow, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let parsed: Vec<Placed> = rows
        .iter()
        .map(|r| {
            let at = parse_time(&r.scheduled_at);
            let to = r.missed_to.as_deref().and_then(parse_time);
            (*r, at, to)
        })
        .collect();
    slots
        .iter()
        .map(|slot| {
            let mut own: Vec<&RunRow> = parsed
                .iter()
                .filter(|(r, at, _)| r.missed_count.is_none() && *at == Some(*slot))
                .map(|(r, _, _)| *r)
                .collect();
            own.sort_by_key(|r| r.id);
            let gap = parsed.iter().find(|(r, at, to)| {
                r.missed_count.is_some()
                    && at.is_some_and(|a| a <= *slot)
                    && to.or(*at).is_some_and(|t| *slot <= t)
            });
            if let Some(r) = own.iter().find(|r| r.outcome == Outcome::Success) {
                return (*slot, Mark::Success, Some(*r));
            }
            if let Some(r) = own.iter().find(|r| r.outcome == Outcome::Running) {
                return (*slot, Mark::Running, Some(*r));
            }
            if let Some(r) = own.last() {
                let mark = match r.outcome {
                    Outcome::Timeout => Mark::Timeout,
                    Outcome::Skipped => Mark::Skipped,
                    _ => Mark::Failed,
                };
                return (*slot, mark, Some(*r));
            }
            if let Some((r, _, _)) = gap {
                return (*slot, Mark::Missed, Some(*r));
            }
            if *slot + UNRECORDED_GRACE > now {
                (*slot, Mark::Pending, None)
            } else {
                (*slot, Mark::Missed, None)
            }
        })
        .collect()
}

pub(super) fn hm(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%H:%M").to_string()
}

pub(super) fn hms(stored: Option<&str>, tz: Tz) -> String {
    stored
        .and_then(parse_time)
        .map(|t| t.with_timezone(&tz).format("%H:%M:%S").to_string())
        .unwrap_or_else(|| "—".to_string())
}

/// A job's row on the page.
pub(super) struct Row<'a> {
    pub(super) job: &'a Job,
    pub(super) marks: Vec<(DateTime<Utc>, Mark, Option<&'a RunRow>)>,
    /// Runs of the day not on a slot of it (manual, backfill of other days shown where they ran).
    pub(super) extras: Vec<&'a RunRow>,
}
