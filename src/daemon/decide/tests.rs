//! Table tests of the dispatcher's decisions, with explicit instants.

use std::collections::VecDeque;
use std::path::Path;

use super::*;
use crate::config::Config;
use crate::history::Outcome;

fn config(job: &str) -> Config {
    let src = format!(
        r#"[scheduler]
exchange = "XNYS"
log_dir = "logs"
history = "logs/h.sqlite3"
legacy_scripts = []

[python]
executable = "python3"

[jobs.j]
entry = "m:f"
{job}
"#
    );
    Config::parse(Path::new("/p/c.toml"), &src).expect("test config")
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test instant")
        .with_timezone(&Utc)
}

fn state(c: &Config, next: Option<DateTime<Utc>>) -> JobState {
    JobState {
        job: Arc::new(c.jobs[0].clone()),
        next,
        checked: next.map_or(DateTime::<Utc>::MIN_UTC, |n| n - Duration::seconds(1)),
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

fn kinds(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .map(|a| match a {
            Action::Start(_) => "start",
            Action::Skip { .. } => "skip",
            Action::Gap { .. } => "gap",
            Action::Cancel(_) => "cancel",
            Action::Retry { .. } => "retry",
            Action::NoRetry { .. } => "noretry",
            Action::Paused { .. } => "paused",
            Action::Resumed => "resumed",
        })
        .collect()
}

use TriggerKind::{CatchUp as C, Retry as R, Schedule as S};

// (overlap, running (trigger, stuck), pending, a retry waits, incoming) →
// (actions, pending after, a word the skip reason holds)
type OverlapRow = (
    &'static str,
    Option<(TriggerKind, bool)>,
    &'static [TriggerKind],
    bool,
    TriggerKind,
    &'static [&'static str],
    &'static [TriggerKind],
    &'static str,
);
const OVERLAP_ROWS: &[OverlapRow] = &[
    ("skip", None, &[], false, S, &["start"], &[], ""),
    (
        "skip",
        Some((S, false)),
        &[],
        false,
        S,
        &["skip"],
        &[],
        "still running",
    ),
    (
        "skip",
        Some((S, true)),
        &[],
        false,
        S,
        &["skip"],
        &[],
        "stuck in native code",
    ),
    (
        "skip",
        None,
        &[],
        true,
        S,
        &["skip"],
        &[],
        "retry of the previous slot",
    ),
    ("queue", None, &[], false, S, &["start"], &[], ""),
    ("queue", Some((S, false)), &[], false, S, &[], &[S], ""),
    (
        "queue",
        Some((S, false)),
        &[S],
        false,
        S,
        &["skip"],
        &[S],
        "already queued",
    ),
    ("queue", None, &[], true, S, &[], &[S], ""),
    (
        "replace",
        Some((S, false)),
        &[],
        false,
        S,
        &["cancel"],
        &[S],
        "",
    ),
    ("replace", Some((S, true)), &[], false, S, &[], &[S], ""),
    (
        "replace",
        Some((S, false)),
        &[S],
        false,
        S,
        &["cancel"],
        &[S],
        "",
    ),
    (
        "replace",
        Some((R, false)),
        &[],
        false,
        S,
        &["cancel"],
        &[S],
        "",
    ),
    // A backlog caught up with `all` is worked off first, whatever the policy.
    ("skip", Some((C, false)), &[], false, S, &[], &[S], ""),
    ("skip", Some((S, false)), &[C], false, S, &[], &[C, S], ""),
    (
        "replace",
        Some((C, false)),
        &[C],
        false,
        S,
        &[],
        &[C, S],
        "",
    ),
    ("queue", Some((C, false)), &[S], false, S, &[], &[S, S], ""),
    ("skip", Some((S, false)), &[], false, C, &[], &[C], ""),
    ("queue", Some((S, false)), &[S], false, C, &[], &[S, C], ""),
    ("replace", Some((S, false)), &[], false, C, &[], &[C], ""),
    ("skip", None, &[], false, C, &["start"], &[], ""),
];

#[test]
fn overlap_under_each_policy() {
    let rows = OVERLAP_ROWS;
    let slot = t("2026-11-27T15:00:00Z");
    for (i, (policy, running, pending, retry, incoming, want, after, word)) in
        rows.iter().enumerate()
    {
        let c = config(&format!(
            "schedule = \"0 * * * * *\"\nmarket_hours = false\noverlap = \"{policy}\""
        ));
        let mut s = state(&c, Some(slot));
        s.running = running.map(|(trigger, stuck)| Running {
            trigger,
            run_id: Some(7),
            pid: Some(4242),
            started_at: slot - Duration::minutes(1),
            stuck,
            tag: None,
        });
        s.pending = pending
            .iter()
            .map(|&trigger| Pending {
                trigger,
                scheduled_at: slot - Duration::minutes(2),
                attempt: 1,
                at: None,
                tag: None,
            })
            .collect();
        if *retry {
            s.retry = Some(Pending {
                trigger: R,
                scheduled_at: slot - Duration::minutes(1),
                attempt: 2,
                at: Some(slot + Duration::seconds(5)),
                tag: None,
            });
        }
        let actions = request(&mut s, *incoming, slot, slot, c.calendar().tz());
        assert_eq!(kinds(&actions), *want, "row {i}: {actions:?}");
        let left: Vec<TriggerKind> = s.pending.iter().map(|p| p.trigger).collect();
        assert_eq!(left, *after, "row {i}");
        if let Some(Action::Skip { reason, .. }) = actions.first() {
            assert!(reason.contains(word), "row {i}: {reason}");
        }
        if want.contains(&"start") {
            assert!(s.running.is_some(), "row {i}: a started run holds the job");
        }
    }
}

/// (policy, misfire grace, first unhandled slot, started at, now) → (actions, gap (count,
/// first, last), started slot and trigger, pending after, a word of the gap's reason)
type CatchRow = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    Option<(u64, &'static str, &'static str)>,
    Option<(&'static str, TriggerKind)>,
    usize,
    &'static str,
);

fn check_catch_up(schedule: &str, market_hours: bool, rows: &[CatchRow]) {
    for (i, (policy, grace, next, started, now, want, gap, started_slot, pending, word)) in
        rows.iter().enumerate()
    {
        let grace = if grace.is_empty() {
            String::new()
        } else {
            format!("misfire_grace = \"{grace}\"")
        };
        let c = config(&format!(
            "schedule = \"{schedule}\"\nmarket_hours = {market_hours}\ncatch_up = \"{policy}\"\n{grace}"
        ));
        let cal = c.calendar();
        let mut s = state(&c, Some(t(next)));
        let wake = Wake {
            calendar: &cal,
            now: t(now),
            started_at: t(started),
            late_because: None,
            lead: LEAD,
        };
        let actions = tick(&mut s, &wake);
        assert_eq!(kinds(&actions), *want, "row {i}: {:?}", kinds(&actions));
        let found_gap = actions.iter().find_map(|a| match a {
            Action::Gap {
                first,
                last,
                count,
                reason,
            } => Some((*count, *first, *last, reason.clone())),
            _ => None,
        });
        match (gap, found_gap) {
            (Some((n, first, last)), Some((count, f, l, reason))) => {
                assert_eq!((count, f, l), (*n, t(first), t(last)), "row {i}");
                assert!(reason.contains("missed"), "row {i}: {reason}");
                assert!(reason.contains(word), "row {i}: {reason}");
            }
            (None, None) => {}
            (want, got) => panic!("row {i}: gap {want:?} but {got:?}"),
        }
        let start = actions.iter().find_map(|a| match a {
            Action::Start(p) => Some((p.scheduled_at, p.trigger)),
            _ => None,
        });
        assert_eq!(
            start,
            started_slot.map(|(slot, trigger)| (t(slot), trigger)),
            "row {i}"
        );
        assert_eq!(s.pending.len(), *pending, "row {i}");
        assert!(
            s.next.is_some_and(|n| n > t(now)),
            "row {i}: the next slot is ahead"
        );
    }
}

#[test]
fn catch_up_over_small_gaps() {
    const M: &str = "0 * * * * *";
    let rows: &[CatchRow] = &[
        // One slot found 60 s late beside an on-time one.
        (
            "none",
            "",
            "2026-11-27T09:59:00Z",
            "2026-11-27T09:00:00Z",
            "2026-11-27T10:00:00.001Z",
            &["gap", "start"],
            Some((1, "2026-11-27T09:59:00Z", "2026-11-27T09:59:00Z")),
            Some(("2026-11-27T10:00:00Z", S)),
            0,
            "looked 1m",
        ),
        (
            "latest",
            "",
            "2026-11-27T09:59:00Z",
            "2026-11-27T09:00:00Z",
            "2026-11-27T10:00:00.001Z",
            &["gap", "start"],
            Some((1, "2026-11-27T09:59:00Z", "2026-11-27T09:59:00Z")),
            Some(("2026-11-27T10:00:00Z", S)),
            0,
            "current slot runs instead",
        ),
        (
            "all",
            "",
            "2026-11-27T09:59:00Z",
            "2026-11-27T09:00:00Z",
            "2026-11-27T10:00:00.001Z",
            &["start"],
            None,
            Some(("2026-11-27T09:59:00Z", C)),
            1,
            "",
        ),
        // Three slots missed, none on time.
        (
            "none",
            "",
            "2026-11-27T09:57:00Z",
            "2026-11-27T09:00:00Z",
            "2026-11-27T09:59:30Z",
            &["gap"],
            Some((3, "2026-11-27T09:57:00Z", "2026-11-27T09:59:00Z")),
            None,
            0,
            "",
        ),
        (
            "latest",
            "",
            "2026-11-27T09:57:00Z",
            "2026-11-27T09:00:00Z",
            "2026-11-27T09:59:30Z",
            &["gap", "start"],
            Some((2, "2026-11-27T09:57:00Z", "2026-11-27T09:58:00Z")),
            Some(("2026-11-27T09:59:00Z", C)),
            0,
            "caught up with the slot at",
        ),
        (
            "all",
            "",
            "2026-11-27T09:57:00Z",
            "2026-11-27T09:00:00Z",
            "2026-11-27T09:59:30Z",
            &["start"],
            None,
            Some(("2026-11-27T09:57:00Z", C)),
            2,
            "",
        ),
        // A restart: slots before the daemon started are missed whatever their age.
        (
            "latest",
            "",
            "2026-11-27T09:57:00Z",
            "2026-11-27T09:59:59.5Z",
            "2026-11-27T09:59:59.6Z",
            &["gap", "start"],
            Some((2, "2026-11-27T09:57:00Z", "2026-11-27T09:58:00Z")),
            Some(("2026-11-27T09:59:00Z", C)),
            0,
            "not running",
        ),
        // misfire_grace: a slot older than it is only counted.
        (
            "latest",
            "30s",
            "2026-11-27T09:57:00Z",
            "2026-11-27T09:00:00Z",
            "2026-11-27T09:59:45Z",
            &["gap"],
            Some((3, "2026-11-27T09:57:00Z", "2026-11-27T09:59:00Z")),
            None,
            0,
            "",
        ),
        (
            "all",
            "90s",
            "2026-11-27T09:57:00Z",
            "2026-11-27T09:00:00Z",
            "2026-11-27T09:59:45Z",
            &["gap", "start"],
            Some((2, "2026-11-27T09:57:00Z", "2026-11-27T09:58:00Z")),
            Some(("2026-11-27T09:59:00Z", C)),
            0,
            "look-back",
        ),
        // On time: no catch-up at all.
        (
            "latest",
            "",
            "2026-11-27T10:00:00Z",
            "2026-11-27T09:00:00Z",
            "2026-11-27T10:00:01.9Z",
            &["start"],
            None,
            Some(("2026-11-27T10:00:00Z", S)),
            0,
            "",
        ),
        // Woken 4 ms early: the slot starts (its run waits for the instant itself).
        (
            "latest",
            "",
            "2026-11-27T10:00:00Z",
            "2026-11-27T09:00:00Z",
            "2026-11-27T09:59:59.997Z",
            &["start"],
            None,
            Some(("2026-11-27T10:00:00Z", S)),
            0,
            "",
        ),
    ];
    check_catch_up(M, false, rows);
}

#[test]
fn catch_up_over_a_gap_of_100_000_slots() {
    // Every second; 100,000 slots missed, then 09:59:59 (late: a newer slot is due at the same
    // wake) and 10:00:00 on time.
    let rows: &[CatchRow] = &[
        (
            "none",
            "",
            "2026-11-26T06:13:19Z",
            "2026-11-26T00:00:00Z",
            "2026-11-27T10:00:00.5Z",
            &["gap", "start"],
            Some((100_001, "2026-11-26T06:13:19Z", "2026-11-27T09:59:59Z")),
            Some(("2026-11-27T10:00:00Z", S)),
            0,
            "looked",
        ),
        (
            "latest",
            "",
            "2026-11-26T06:13:19Z",
            "2026-11-26T00:00:00Z",
            "2026-11-27T10:00:00.5Z",
            &["gap", "start"],
            Some((100_001, "2026-11-26T06:13:19Z", "2026-11-27T09:59:59Z")),
            Some(("2026-11-27T10:00:00Z", S)),
            0,
            "current slot",
        ),
        // `all` runs the 86,399 slots of the last day in order, the on-time one after them,
        // and counts the 13,602 older ones in one row.
        (
            "all",
            "",
            "2026-11-26T06:13:19Z",
            "2026-11-26T00:00:00Z",
            "2026-11-27T10:00:00.5Z",
            &["gap", "start"],
            Some((13_602, "2026-11-26T06:13:19Z", "2026-11-26T10:00:00Z")),
            Some(("2026-11-26T10:00:01Z", C)),
            86_398 + 1,
            "look-back",
        ),
    ];
    check_catch_up("* * * * * *", false, rows);
}

#[test]
fn catch_up_across_a_weekend_and_the_dst_change() {
    // XNYS, every 15 minutes in session; down from Friday 15:00 EST to Monday 10:05 EDT (the
    // clocks went forward on Sunday 8 March 2026): Friday's 15:15…16:00 and Monday's 09:30…10:00.
    const Q: &str = "0 */15 * * * *";
    let rows: &[CatchRow] = &[
        (
            "latest",
            "",
            "2026-03-06T20:15:00Z",
            "2026-03-09T14:05:00Z",
            "2026-03-09T14:05:00.1Z",
            &["gap", "start"],
            Some((6, "2026-03-06T20:15:00Z", "2026-03-09T13:45:00Z")),
            Some(("2026-03-09T14:00:00Z", C)),
            0,
            "not running",
        ),
        (
            "all",
            "25m",
            "2026-03-06T20:15:00Z",
            "2026-03-09T14:05:00Z",
            "2026-03-09T14:05:00.1Z",
            &["gap", "start"],
            Some((5, "2026-03-06T20:15:00Z", "2026-03-09T13:30:00Z")),
            Some(("2026-03-09T13:45:00Z", C)),
            1,
            "look-back",
        ),
        (
            "none",
            "",
            "2026-03-06T20:15:00Z",
            "2026-03-09T14:05:00Z",
            "2026-03-09T14:05:00.1Z",
            &["gap"],
            Some((7, "2026-03-06T20:15:00Z", "2026-03-09T14:00:00Z")),
            None,
            0,
            "",
        ),
    ];
    check_catch_up(Q, true, rows);
}

#[test]
fn a_daily_slot_in_the_autumn_fold_fires_once() {
    // 01:30 New York time exists twice on 1 November 2026: it fires at the first.
    let c = config("schedule = \"0 30 1 * * *\"\nmarket_hours = false");
    let cal = c.calendar();
    let mut s = JobState::new(
        Arc::new(c.jobs[0].clone()),
        &cal,
        None,
        t("2026-11-01T05:00:00Z"),
    );
    assert_eq!(s.next, Some(t("2026-11-01T05:30:00Z")));
    let mut starts = 0;
    for now in [
        "2026-11-01T05:30:00.001Z",
        "2026-11-01T06:30:00.001Z",
        "2026-11-01T07:00:00Z",
    ] {
        let wake = Wake {
            calendar: &cal,
            now: t(now),
            started_at: t("2026-11-01T05:00:00Z"),
            late_because: None,
            lead: LEAD,
        };
        let actions = tick(&mut s, &wake);
        starts += actions
            .iter()
            .filter(|a| matches!(a, Action::Start(_)))
            .count();
        s.running = None;
    }
    assert_eq!(starts, 1);
    assert_eq!(s.next, Some(t("2026-11-02T06:30:00Z")));
}

#[test]
fn a_clock_stepped_back_fires_no_slot_twice_and_a_step_forward_is_one_gap() {
    let c = config("schedule = \"* * * * * *\"\nmarket_hours = false");
    let cal = c.calendar();
    let started = t("2026-11-27T09:00:00Z");
    let mut s = state(&c, Some(t("2026-11-27T10:00:00Z")));
    let mut fired = Vec::new();
    let mut wake_at = |s: &mut JobState, now: &str, why: Option<&str>| {
        let wake = Wake {
            calendar: &cal,
            now: t(now),
            started_at: started,
            late_because: why,
            lead: LEAD,
        };
        let actions = tick(s, &wake);
        s.running = None;
        for a in &actions {
            if let Action::Start(p) = a {
                fired.push(p.scheduled_at);
            }
        }
        actions
    };
    wake_at(&mut s, "2026-11-27T10:00:00.001Z", None);
    wake_at(&mut s, "2026-11-27T10:00:01.001Z", None);
    // Back an hour: nothing is due until the clock is past 10:00:01 again.
    assert!(wake_at(&mut s, "2026-11-27T09:00:02Z", None).is_empty());
    assert!(wake_at(&mut s, "2026-11-27T10:00:01.5Z", None).is_empty());
    wake_at(&mut s, "2026-11-27T10:00:02.001Z", None);
    // Forward an hour: one compact row, the newest slot runs.
    let actions = wake_at(
        &mut s,
        "2026-11-27T11:00:03.001Z",
        Some("the wall clock stepped forward by 1h"),
    );
    let gap = actions.iter().find_map(|a| match a {
        Action::Gap {
            count,
            first,
            last,
            reason,
        } => Some((*count, *first, *last, reason.clone())),
        _ => None,
    });
    let (count, first, last, reason) = gap.expect("one gap row");
    assert_eq!(count, 3600);
    assert_eq!(first, t("2026-11-27T10:00:03Z"));
    assert_eq!(last, t("2026-11-27T11:00:02Z"));
    assert!(reason.contains("stepped forward by 1h"), "{reason}");
    let mut unique = fired.clone();
    unique.dedup();
    assert_eq!(unique, fired, "no slot twice");
    assert_eq!(
        fired,
        vec![
            t("2026-11-27T10:00:00Z"),
            t("2026-11-27T10:00:01Z"),
            t("2026-11-27T10:00:02Z"),
            t("2026-11-27T11:00:03Z"),
        ]
    );
}

#[test]
fn retry_is_bounded_by_the_next_slot_and_the_window() {
    // (schedule, market hours, slot, now, outcome, attempt) → Ok(seconds until the retry) or
    // Err(word of the refusal), or None
    type Row = (
        &'static str,
        bool,
        &'static str,
        &'static str,
        Outcome,
        u32,
        Option<Result<i64, &'static str>>,
    );
    let rows: &[Row] = &[
        (
            "0 */5 * * * *",
            false,
            "2026-11-27T10:00:00Z",
            "2026-11-27T10:00:01Z",
            Outcome::Failed,
            1,
            Some(Ok(10)),
        ),
        (
            "0 */5 * * * *",
            false,
            "2026-11-27T10:00:00Z",
            "2026-11-27T10:00:31Z",
            Outcome::Timeout,
            2,
            Some(Ok(20)),
        ),
        (
            "0 */5 * * * *",
            false,
            "2026-11-27T10:00:00Z",
            "2026-11-27T10:01:00Z",
            Outcome::Crashed,
            3,
            None,
        ),
        (
            "0 */5 * * * *",
            false,
            "2026-11-27T10:00:00Z",
            "2026-11-27T10:00:01Z",
            Outcome::Success,
            1,
            None,
        ),
        (
            "0 */5 * * * *",
            false,
            "2026-11-27T10:00:00Z",
            "2026-11-27T10:00:01Z",
            Outcome::Cancelled,
            1,
            None,
        ),
        (
            "0 */5 * * * *",
            false,
            "2026-11-27T10:00:00Z",
            "2026-11-27T10:04:55Z",
            Outcome::Failed,
            1,
            Some(Err("next slot at 05:05:00")),
        ),
        // XNYS in session, every 15 minutes: 15:45 EST fails late, then the 16:00 close slot.
        (
            "0 */15 * * * *",
            true,
            "2026-11-25T20:45:00Z",
            "2026-11-25T20:59:55Z",
            Outcome::Failed,
            1,
            Some(Err("next slot")),
        ),
        (
            "0 */15 * * * *",
            true,
            "2026-11-27T18:00:00Z",
            "2026-11-27T18:00:01Z",
            Outcome::Failed,
            1,
            Some(Err("window ends at 13:00:00")),
        ),
        (
            "0 */15 * * * *",
            true,
            "2026-11-25T21:00:00Z",
            "2026-11-25T21:00:01Z",
            Outcome::Failed,
            1,
            Some(Err("window ends at 16:00:00")),
        ),
        (
            "0 */15 * * * *",
            true,
            "2026-11-25T20:00:00Z",
            "2026-11-25T20:00:01Z",
            Outcome::Failed,
            1,
            Some(Ok(10)),
        ),
    ];
    for (i, (schedule, market_hours, slot, now, outcome, attempt, want)) in rows.iter().enumerate()
    {
        let c = config(&format!(
            "schedule = \"{schedule}\"\nmarket_hours = {market_hours}\n[jobs.j.retry]\nattempts = 3\nbackoff = \"10s\""
        ));
        let ended = Ended {
            run_id: Some(1),
            run_uid: Some("u1".into()),
            scheduled_at: t(slot),
            attempt: *attempt,
            outcome: *outcome,
            error: Some("boom".into()),
            stuck: false,
            tag: None,
        };
        let got = plan_retry(&c.jobs[0], &c.calendar(), &ended, t(now), 1.0);
        match (want, got) {
            (None, None) => {}
            (Some(Ok(secs)), Some(Ok(p))) => {
                assert_eq!(p.at, Some(t(now) + Duration::seconds(*secs)), "row {i}");
                assert_eq!((p.attempt, p.trigger), (attempt + 1, R), "row {i}");
                assert_eq!(p.scheduled_at, t(slot), "row {i}: a retry keeps its slot");
            }
            (Some(Err(word)), Some(Err(why))) => assert!(why.contains(word), "row {i}: {why}"),
            (want, got) => panic!("row {i}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn a_finished_run_plans_its_retry_then_frees_the_job() {
    let c = config(
        "schedule = \"0 */5 * * * *\"\nmarket_hours = false\noverlap = \"queue\"\n[jobs.j.retry]\nattempts = 2\nbackoff = \"10s\"",
    );
    let cal = c.calendar();
    let slot = t("2026-11-27T10:00:00Z");
    let mut s = state(&c, None);
    assert_eq!(kinds(&request(&mut s, S, slot, slot, cal.tz())), ["start"]);
    assert!(
        request(&mut s, S, slot, slot, cal.tz()).is_empty(),
        "queued"
    );
    let failed = Ended {
        run_id: Some(3),
        run_uid: Some("u3".into()),
        scheduled_at: slot,
        attempt: 1,
        outcome: Outcome::Failed,
        error: None,
        stuck: false,
        tag: None,
    };
    let now = slot + Duration::seconds(2);
    // The retry comes first: the queued slot waits for it.
    assert_eq!(kinds(&finished(&mut s, &failed, &cal, now, 1.0)), ["retry"]);
    assert!(s.running.is_none() && s.pending.len() == 1);
    let wake = Wake {
        calendar: &cal,
        now: now + Duration::seconds(10),
        started_at: slot,
        late_because: None,
        lead: LEAD,
    };
    let actions = tick(&mut s, &wake);
    assert!(matches!(&actions[..], [Action::Start(p)] if p.trigger == R && p.attempt == 2));
    let again = Ended {
        attempt: 2,
        ..failed.clone()
    };
    // Attempts spent: nothing to retry, the queued run starts.
    let actions = finished(&mut s, &again, &cal, now + Duration::seconds(20), 1.0);
    assert!(matches!(&actions[..], [Action::Start(p)] if p.trigger == S));
    // A stuck run keeps the job until its thread returns.
    let stuck = Ended {
        stuck: true,
        outcome: Outcome::Timeout,
        ..again
    };
    request(&mut s, S, slot + Duration::minutes(5), now, cal.tz());
    assert!(finished(&mut s, &stuck, &cal, now, 1.0).is_empty());
    assert!(s.running.as_ref().is_some_and(|r| r.stuck));
    assert_eq!(kinds(&released(&mut s, now)), ["start"]);
}

#[test]
fn a_reload_takes_over_after_the_last_slot_dealt_with() {
    let c = config("schedule = \"0 * * * * *\"\nmarket_hours = false");
    let cal = c.calendar();
    let mut s = state(&c, Some(t("2026-11-27T10:00:00Z")));
    let wake = Wake {
        calendar: &cal,
        now: t("2026-11-27T09:59:59.997Z"),
        started_at: t("2026-11-27T09:00:00Z"),
        late_because: None,
        lead: LEAD,
    };
    assert_eq!(kinds(&tick(&mut s, &wake)), ["start"]);
    // The new config (every 30 s) is applied at 10:00:45: its 10:00:30 slot is still due.
    let every_30s = config("schedule = \"*/30 * * * * *\"\nmarket_hours = false");
    s.reconfigure(Arc::new(every_30s.jobs[0].clone()), &cal);
    assert_eq!(s.next, Some(t("2026-11-27T10:00:30Z")));
}

#[test]
fn the_health_check_ends_runs_far_past_their_timeout() {
    let c = config("schedule = \"0 * * * * *\"\nmarket_hours = false\ntimeout = \"10s\"");
    let tz = c.calendar().tz();
    let mut s = state(&c, None);
    let start = t("2026-11-27T10:00:00Z");
    assert_eq!(overdue(&s, start, StdDuration::from_secs(2), tz), None);
    s.running = Some(Running {
        trigger: S,
        run_id: Some(9),
        pid: None,
        started_at: start,
        stuck: false,
        tag: None,
    });
    let grace = StdDuration::from_secs(2);
    // 10 s + 2 × 2 s + 5 s = 19 s.
    assert_eq!(overdue(&s, start + Duration::seconds(19), grace, tz), None);
    assert!(matches!(
        overdue(&s, start + Duration::seconds(20), grace, tz),
        Some(Ok(_))
    ));
    if let Some(r) = s.running.as_mut() {
        r.stuck = true;
    }
    assert!(matches!(
        overdue(&s, start + Duration::seconds(20), grace, tz),
        Some(Err(p)) if p.contains("stuck")
    ));
}

fn wake_at<'a>(cal: &'a Calendar, now: &str) -> Wake<'a> {
    Wake {
        calendar: cal,
        now: t(now),
        started_at: t("2026-11-01T05:00:00Z"),
        late_because: None,
        lead: LEAD,
    }
}

#[test]
fn a_paused_job_holds_its_slots_in_one_growing_row_until_the_pause_ends() {
    let c = config("schedule = \"0 * * * * *\"\nmarket_hours = false");
    let cal = c.calendar();
    let mut s = state(&c, Some(t("2026-11-27T15:00:00Z")));
    s.pause = Some(Pause {
        until: Some(t("2026-11-27T15:03:00Z")),
        gap: None,
    });
    // (now, actions, the pause's row after: count)
    let rows: &[(&str, &[&str], Option<u64>)] = &[
        ("2026-11-27T15:00:00Z", &["paused"], Some(1)),
        ("2026-11-27T15:01:00Z", &["paused"], Some(2)),
        // Late by two slots (the loop slept): both held back into the same row.
        ("2026-11-27T15:02:30Z", &["paused"], Some(3)),
        // The pause ends at 15:03: that slot runs.
        ("2026-11-27T15:03:00Z", &["resumed", "start"], None),
    ];
    for (now, want, count) in rows {
        let actions = tick(&mut s, &wake_at(&cal, now));
        assert_eq!(kinds(&actions), *want, "{now}");
        assert_eq!(
            s.pause.as_ref().and_then(|p| p.gap).map(|g| g.2),
            *count,
            "{now}"
        );
        if let Some(Action::Paused {
            first, count: n, ..
        }) = actions.first()
        {
            assert_eq!(*first, t("2026-11-27T15:00:00Z"));
            assert_eq!(Some(*n), *count);
        }
    }
    // A paused job starts no backfill either.
    let mut s = state(&c, None);
    s.pause = Some(Pause {
        until: None,
        gap: None,
    });
    s.backfill.push_back(t("2026-11-26T15:00:00Z"));
    assert_eq!(next_backfill(&mut s, t("2026-11-27T15:00:00Z")), None);
}

#[test]
fn trigger_starts_queues_once_or_refuses_a_paused_job() {
    let c = config("schedule = \"0 * * * * *\"\nmarket_hours = false\noverlap = \"skip\"");
    let now = t("2026-11-27T15:00:30Z");
    let mut s = state(&c, None);
    let (a, why) = trigger(&mut s, now);
    assert_eq!((kinds(&a), why.as_str()), (vec!["start"], "started"));
    // Running: queued (not skipped, whatever the overlap policy), and only once.
    let (a, why) = trigger(&mut s, now);
    assert!(a.is_empty() && why.starts_with("queued"), "{why}");
    let (a, why) = trigger(&mut s, now);
    assert!(a.is_empty() && why.contains("already queued"), "{why}");
    let mut paused = state(&c, None);
    paused.pause = Some(Pause {
        until: None,
        gap: None,
    });
    let (a, why) = trigger(&mut paused, now);
    assert!(a.is_empty() && why.contains("paused"));
}

#[test]
fn a_backfill_runs_when_idle_and_gives_way_to_a_live_slot() {
    let c = config("schedule = \"0 * * * * *\"\nmarket_hours = false\noverlap = \"skip\"");
    let cal = c.calendar();
    let tz = cal.tz();
    let now = t("2026-11-27T15:00:30Z");
    let old = [t("2026-11-26T15:00:00Z"), t("2026-11-26T15:01:00Z")];
    let mut s = state(&c, Some(t("2026-11-27T15:01:00Z")));
    s.backfill.extend(old);
    let Some(Action::Start(p)) = next_backfill(&mut s, now) else {
        panic!("an idle job starts its backfill");
    };
    assert_eq!((p.trigger, p.scheduled_at), (TriggerKind::Backfill, old[0]));
    assert_eq!(s.backfilling, Some(old[0]));
    // The live slot at 15:01 comes: the backfill run is ended, the slot waits first in line.
    let actions = request(
        &mut s,
        S,
        t("2026-11-27T15:01:00Z"),
        t("2026-11-27T15:01:00Z"),
        tz,
    );
    assert_eq!(kinds(&actions), ["cancel"]);
    // The cancelled backfill run ends: the live slot starts, the backfill slot goes back first.
    let ended = Ended {
        run_id: Some(5),
        run_uid: Some("u5".into()),
        scheduled_at: old[0],
        attempt: 1,
        outcome: Outcome::Cancelled,
        error: None,
        stuck: false,
        tag: None,
    };
    let actions = finished(&mut s, &ended, &cal, t("2026-11-27T15:01:00Z"), 1.0);
    let Some(Action::Start(live)) = actions.first() else {
        panic!("{actions:?}");
    };
    assert_eq!(live.trigger, S);
    assert_eq!(s.backfill, old);
    // The live run ends: the backfill goes on.
    let done = Ended {
        outcome: Outcome::Success,
        scheduled_at: t("2026-11-27T15:01:00Z"),
        ..ended
    };
    let actions = finished(&mut s, &done, &cal, t("2026-11-27T15:01:02Z"), 1.0);
    assert!(
        matches!(actions.as_slice(), [Action::Start(p)] if p.trigger == TriggerKind::Backfill && p.scheduled_at == old[0]),
        "{actions:?}"
    );
}

fn running_since(at: &str) -> Option<Running> {
    Some(Running {
        trigger: S,
        run_id: Some(1),
        pid: Some(42),
        started_at: t(at),
        stuck: false,
        tag: None,
    })
}

fn ended_ok(slot: &str) -> Ended {
    Ended {
        run_id: Some(1),
        run_uid: Some("u1".into()),
        scheduled_at: t(slot),
        attempt: 1,
        outcome: Outcome::Success,
        error: None,
        stuck: false,
        tag: None,
    }
}

/// A2 (cluster nemesis): a cluster node looks at a slot 200 ms ahead (its claim lead). A run
/// that ends in those 200 ms must not make the slot `skipped`: the overlap is decided at the
/// slot's instant, and the run that ended in between lets the slot run.
#[test]
fn overlap_is_decided_at_the_slot_not_at_the_claim_lead() {
    let c = config("schedule = \"*/2 * * * * *\"\nmarket_hours = false\noverlap = \"skip\"");
    let cal = c.calendar();
    let lead = Duration::milliseconds(200);
    let at = |now: &str| Wake {
        lead,
        ..wake_at(&cal, now)
    };
    let mut s = state(&c, Some(t("2026-11-27T15:00:02Z")));
    s.running = running_since("2026-11-27T15:00:00Z");
    // 200 ms ahead of the slot, the previous run still goes on: nothing is decided yet, and the
    // loop next wakes at the slot's instant, not at once.
    let actions = tick(&mut s, &at("2026-11-27T15:00:01.800Z"));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(s.next, Some(t("2026-11-27T15:00:02Z")));
    assert_eq!(s.wake_at(lead), Some(t("2026-11-27T15:00:02Z")));
    // The run ends 190 ms before the slot: the slot starts (claimed ahead, as usual).
    let actions = finished(
        &mut s,
        &ended_ok("2026-11-27T15:00:00Z"),
        &cal,
        t("2026-11-27T15:00:01.810Z"),
        1.0,
    );
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(s.wake_at(lead), Some(t("2026-11-27T15:00:01.800Z")));
    let actions = tick(&mut s, &at("2026-11-27T15:00:01.810Z"));
    assert!(
        matches!(actions.as_slice(), [Action::Start(p)] if p.scheduled_at == t("2026-11-27T15:00:02Z") && p.trigger == S),
        "{actions:?}"
    );
    // A run that really overlaps the slot: skipped, but only once the slot has come and the
    // grace has passed since.
    let mut s = state(&c, Some(t("2026-11-27T15:00:02Z")));
    s.running = running_since("2026-11-27T15:00:00Z");
    assert!(tick(&mut s, &at("2026-11-27T15:00:01.800Z")).is_empty());
    assert!(tick(&mut s, &at("2026-11-27T15:00:02.000Z")).is_empty());
    assert_eq!(s.wake_at(lead), Some(t("2026-11-27T15:00:02.250Z")));
    assert!(tick(&mut s, &at("2026-11-27T15:00:02.249Z")).is_empty());
    let actions = tick(&mut s, &at("2026-11-27T15:00:02.250Z"));
    assert_eq!(kinds(&actions), ["skip"]);
    assert_eq!(s.next, Some(t("2026-11-27T15:00:04Z")));
    assert_eq!(s.overlap_seen, None);
}

/// A3 (cluster nemesis): after SIGCONT the loop's timer and the end of the run that finished
/// during the pause are both ready. Whichever the loop sees first, the slot is not skipped over
/// the run that has already ended: the overlap waits `OVERLAP_GRACE` for its end to be reaped.
#[test]
fn a_slot_seen_before_the_reap_of_a_run_that_ended_during_a_pause_still_runs() {
    let c = config("schedule = \"*/2 * * * * *\"\nmarket_hours = false\noverlap = \"skip\"");
    let cal = c.calendar();
    let mut s = state(&c, Some(t("2026-11-27T15:00:02Z")));
    s.running = running_since("2026-11-27T15:00:00Z");
    // Resumed at 15:00:03.2, 1.2 s after the slot: the run ended at 15:00:01.5 but is not reaped.
    let actions = tick(&mut s, &wake_at(&cal, "2026-11-27T15:00:03.200Z"));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(s.wake_at(LEAD), Some(t("2026-11-27T15:00:03.450Z")));
    // The reap comes a few milliseconds later: the slot runs, late but on its own trigger.
    finished(
        &mut s,
        &ended_ok("2026-11-27T15:00:00Z"),
        &cal,
        t("2026-11-27T15:00:03.205Z"),
        1.0,
    );
    let actions = tick(&mut s, &wake_at(&cal, "2026-11-27T15:00:03.206Z"));
    assert!(
        matches!(actions.as_slice(), [Action::Start(p)] if p.scheduled_at == t("2026-11-27T15:00:02Z") && p.trigger == S),
        "{actions:?}"
    );
}
