//! What fires when: a cron pattern (with seconds) evaluated in the exchange's timezone and gated
//! by the exchange's sessions, or a point relative to each session (`@open+5m`). Pure: no clock,
//! no I/O; every caller passes the instant to search from. The daemon, `status` and `plan` all use
//! `Trigger::next_fire_after`.
//!
//! Invariants: `next_fire_after(t)` is strictly later than `t`; a local slot that does not exist
//! (the spring-forward gap) is skipped; a local slot that exists twice (the fall-back fold) fires
//! once, at its first occurrence.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use crate::calendar::{Calendar, Session};

/// How far ahead a search looks before concluding a trigger never fires again.
const HORIZON_DAYS: u64 = 3 * 366;

/// A parsed cron pattern; seconds are optional (5 fields mean second 0).
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    source: String,
}

impl CronSchedule {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern)
            .map_err(|e| e.to_string())?;
        Ok(CronSchedule {
            cron,
            source: pattern.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The next local slot after `cursor` (or at it, when `inclusive`).
    fn next_local(&self, cursor: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        self.cron.find_next_occurrence(&cursor, inclusive).ok()
    }
}

/// The open or the close of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Open,
    Close,
}

/// A point relative to a session: `@open`, `@open+5m`, `@close-10m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPoint {
    pub anchor: Anchor,
    pub offset: Duration,
}

impl SessionPoint {
    pub const OPEN: SessionPoint = SessionPoint {
        anchor: Anchor::Open,
        offset: Duration::zero(),
    };
    pub const CLOSE: SessionPoint = SessionPoint {
        anchor: Anchor::Close,
        offset: Duration::zero(),
    };

    /// Parses `@open`, `@close`, optionally followed by `+` or `-` and a duration (`5m`, `1h30m`).
    pub fn parse(s: &str) -> Result<SessionPoint, String> {
        let s = s.trim();
        let (anchor, rest) = if let Some(rest) = s.strip_prefix("@open") {
            (Anchor::Open, rest)
        } else if let Some(rest) = s.strip_prefix("@close") {
            (Anchor::Close, rest)
        } else {
            return Err("expected `@open` or `@close`".to_string());
        };
        let rest = rest.trim();
        if rest.is_empty() {
            return Ok(SessionPoint {
                anchor,
                offset: Duration::zero(),
            });
        }
        let mut chars = rest.chars();
        let sign = match chars.next() {
            Some('+') => 1,
            Some('-') => -1,
            _ => return Err("expected `+` or `-` and a duration after the anchor".to_string()),
        };
        let amount = chars.as_str();
        let d = humantime::parse_duration(amount.trim()).map_err(|e| e.to_string())?;
        if d > std::time::Duration::from_secs(12 * 3600) {
            return Err("an offset of more than 12h".to_string());
        }
        let offset = Duration::from_std(d).map_err(|e| e.to_string())?;
        Ok(SessionPoint {
            anchor,
            offset: offset * sign,
        })
    }

    /// This point in `session`, as a local date-time.
    pub fn in_session(&self, session: &Session) -> NaiveDateTime {
        let base = match self.anchor {
            Anchor::Open => session.open,
            Anchor::Close => session.close,
        };
        session.date.and_time(base) + self.offset
    }
}

impl std::fmt::Display for SessionPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let anchor = match self.anchor {
            Anchor::Open => "@open",
            Anchor::Close => "@close",
        };
        let secs = self.offset.num_seconds();
        if secs == 0 {
            return f.write_str(anchor);
        }
        let sign = if secs < 0 { '-' } else { '+' };
        let d = std::time::Duration::from_secs(secs.unsigned_abs());
        write!(f, "{anchor}{sign}{}", humantime::format_duration(d))
    }
}

/// What a job's `schedule` says.
#[derive(Debug, Clone)]
pub enum Schedule {
    Cron(Box<CronSchedule>),
    /// Once per session, at a point relative to it.
    Session(SessionPoint),
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Schedule, String> {
        if s.trim_start().starts_with('@') && (s.contains("@open") || s.contains("@close")) {
            SessionPoint::parse(s).map(Schedule::Session)
        } else {
            CronSchedule::parse(s).map(|c| Schedule::Cron(Box::new(c)))
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Cron(c) => f.write_str(c.as_str()),
            Schedule::Session(p) => write!(f, "{p}"),
        }
    }
}

/// A job's trigger: its schedule, whether it is gated by the exchange's sessions, and the window
/// of each session it may fire in (by default open ≤ slot ≤ close, both inclusive).
#[derive(Debug, Clone)]
pub struct Trigger {
    pub schedule: Schedule,
    pub market_hours: bool,
    pub window_start: SessionPoint,
    pub window_end: SessionPoint,
}

impl Trigger {
    /// A cron trigger with the default window.
    pub fn cron(cron: CronSchedule, market_hours: bool) -> Trigger {
        Trigger {
            schedule: Schedule::Cron(Box::new(cron)),
            market_hours,
            window_start: SessionPoint::OPEN,
            window_end: SessionPoint::CLOSE,
        }
    }

    /// Whether the calendar decides when this trigger fires.
    pub fn follows_sessions(&self) -> bool {
        self.market_hours || matches!(self.schedule, Schedule::Session(_))
    }

    /// The first fire instant strictly after `after`, or `None` if there is none within the
    /// search horizon (a pattern like `0 0 0 30 2 *`, or a calendar with no more sessions).
    pub fn next_fire_after(
        &self,
        calendar: &Calendar,
        after: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let tz = calendar.tz();
        match &self.schedule {
            Schedule::Cron(cron) if !self.market_hours => next_cron(cron, tz, after),
            Schedule::Cron(cron) => self.next_cron_in_sessions(cron, calendar, after),
            Schedule::Session(point) => next_session_point(*point, calendar, after),
        }
    }

    /// The last fire instant strictly before `before`: the slot a run at `before` follows, so
    /// the start of the data interval it covers; `None` when there is none within 400 days. A few
    /// dozen `next_fire_after` calls, however many slots lie between: the span is widened until
    /// it holds a fire, then halved down to the last one.
    pub fn previous_fire_before(
        &self,
        calendar: &Calendar,
        before: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        // Whether a fire lies in [from, before).
        let fires_from = |from: DateTime<Utc>| {
            self.next_fire_after(calendar, from - Duration::nanoseconds(1))
                .is_some_and(|t| t < before)
        };
        let mut span = Duration::hours(1);
        let mut lo = loop {
            if fires_from(before - span) {
                break before - span;
            }
            if span >= Duration::days(400) {
                return None;
            }
            span = (span * 4).min(Duration::days(400));
        };
        // A fire in [lo, before), none in [hi, before): narrow to under a second, where at most
        // one whole-second instant fits.
        let mut hi = before;
        while hi - lo > Duration::seconds(1) {
            let mid = lo + (hi - lo) / 2;
            if fires_from(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.next_fire_after(calendar, lo - Duration::nanoseconds(1))
            .filter(|t| *t < before)
    }

    fn next_cron_in_sessions(
        &self,
        cron: &CronSchedule,
        calendar: &Calendar,
        after: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let tz = calendar.tz();
        let after_local = floor_second(after.with_timezone(&tz).naive_local());
        // A window may begin the evening before (a large negative offset): start a day early.
        let mut date = after_local.date().pred_opt()?;
        let last = after_local
            .date()
            .checked_add_days(chrono::Days::new(HORIZON_DAYS))?;
        'days: while date <= last {
            if let Some(session) = calendar.session(date) {
                let start = self.window_start.in_session(&session);
                let end = self.window_end.in_session(&session);
                if end >= after_local {
                    let (mut cursor, mut inclusive) = if start > after_local {
                        (start, true)
                    } else {
                        (after_local, false)
                    };
                    loop {
                        let slot = cron.next_local(cursor, inclusive)?;
                        if slot > end {
                            // No session before the day of the pattern's next slot can hold one.
                            if let Some(jump) = slot.date().pred_opt()
                                && jump > date
                            {
                                date = jump;
                                continue 'days;
                            }
                            break;
                        }
                        if let Some(t) = to_instant(tz, slot).filter(|t| *t > after) {
                            return Some(t);
                        }
                        cursor = slot;
                        inclusive = false;
                    }
                }
            }
            date = date.succ_opt()?;
        }
        None
    }

    /// The end of the window `slot` fired in, for a market-hours cron job; `None` otherwise.
    pub fn window_end_for(
        &self,
        calendar: &Calendar,
        slot: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if !self.market_hours || !matches!(self.schedule, Schedule::Cron(_)) {
            return None;
        }
        let tz = calendar.tz();
        let local = slot.with_timezone(&tz).naive_local();
        // The window may have begun the day before (a negative offset past midnight).
        [Some(local.date()), local.date().pred_opt()]
            .into_iter()
            .flatten()
            .filter_map(|d| calendar.session(d))
            .find(|s| {
                self.window_start.in_session(s) <= local && local <= self.window_end.in_session(s)
            })
            .and_then(|s| to_instant(tz, self.window_end.in_session(&s)))
    }

    /// How many fire instants fall in `[from, to)`.
    pub fn count_between(
        &self,
        calendar: &Calendar,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> u64 {
        let mut n = 0;
        let mut t = from - Duration::nanoseconds(1);
        while let Some(next) = self.next_fire_after(calendar, t) {
            if next >= to {
                break;
            }
            n += 1;
            t = next;
        }
        n
    }

    /// Every fire instant in `[from, to)`, in order.
    pub fn fires_between(
        &self,
        calendar: &Calendar,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = from - Duration::nanoseconds(1);
        while let Some(next) = self.next_fire_after(calendar, t) {
            if next >= to {
                break;
            }
            out.push(next);
            t = next;
        }
        out
    }
}

/// The next slot of an ungated cron pattern.
fn next_cron(cron: &CronSchedule, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let start = floor_second(after.with_timezone(&tz).naive_local());
    let horizon = start + Duration::days(HORIZON_DAYS as i64);
    let mut cursor = start;
    loop {
        let slot = cron.next_local(cursor, false)?;
        if slot > horizon {
            return None;
        }
        if let Some(t) = to_instant(tz, slot).filter(|t| *t > after) {
            return Some(t);
        }
        cursor = slot;
    }
}

/// The next session's point (`@open+5m`) after `after`.
fn next_session_point(
    point: SessionPoint,
    calendar: &Calendar,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let tz = calendar.tz();
    let mut date: NaiveDate = after.with_timezone(&tz).date_naive().pred_opt()?;
    for _ in 0..HORIZON_DAYS {
        if let Some(session) = calendar.session(date)
            && let Some(t) = to_instant(tz, point.in_session(&session)).filter(|t| *t > after)
        {
            return Some(t);
        }
        date = date.succ_opt()?;
    }
    None
}

/// A local time as an instant: `None` in a DST gap, the first occurrence in a fold.
fn to_instant(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::None => None,
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
    }
}

/// Slots are whole seconds: searching after the truncated second cannot skip one.
fn floor_second(t: NaiveDateTime) -> NaiveDateTime {
    t.with_nanosecond(0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::{Exchange, ListedSession, Overrides};

    fn at(tz: Tz, s: &str) -> DateTime<Utc> {
        let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap();
        tz.from_local_datetime(&naive)
            .earliest()
            .unwrap()
            .with_timezone(&Utc)
    }

    fn trigger(p: &str, market_hours: bool) -> Trigger {
        Trigger {
            schedule: Schedule::parse(p).unwrap(),
            market_hours,
            window_start: SessionPoint::OPEN,
            window_end: SessionPoint::CLOSE,
        }
    }

    fn local_times(cal: &Calendar, fires: &[DateTime<Utc>]) -> Vec<String> {
        fires
            .iter()
            .map(|t| t.with_timezone(&cal.tz()).format("%m-%d %H:%M").to_string())
            .collect()
    }

    #[test]
    fn the_previous_slot_is_the_one_before_across_nights_weekends_and_holidays() {
        let cal = Calendar::builtin(Exchange::Xnse);
        let tz = cal.tz();
        let q = trigger("0 */15 * * * *", true);
        let every3 = trigger("0 */3 * * * *", false);
        let table: &[(&Trigger, &str, Option<&str>)] = &[
            (&q, "2026-11-30 10:00:00", Some("2026-11-30 09:45:00")),
            // The first slot of Monday follows Friday's last.
            (&q, "2026-11-30 09:15:00", Some("2026-11-27 15:30:00")),
            // A time between slots: the one just before.
            (&q, "2026-11-30 10:07:30", Some("2026-11-30 10:00:00")),
            // After Diwali (2025-10-21 Muhurat 13:45–14:45, 10-22 closed): the 23rd's first slot
            // follows the Muhurat session's last.
            (&q, "2025-10-23 09:15:00", Some("2025-10-21 14:45:00")),
            (&every3, "2026-11-28 00:00:00", Some("2026-11-27 23:57:00")),
        ];
        for (t, at_, want) in table {
            let got = t.previous_fire_before(&cal, at(tz, at_));
            assert_eq!(got, want.map(|w| at(tz, w)), "{at_}");
        }
    }

    #[test]
    fn the_previous_slot_agrees_with_listing_every_slot_before_it() {
        let cal = Calendar::builtin(Exchange::Xnse);
        let tz = cal.tz();
        // Each with a span that surely holds its previous slot, to list the slots over.
        let triggers = [
            (trigger("0 */3 * * * *", true), Duration::days(5)),
            (trigger("0 */15 * * * *", true), Duration::days(5)),
            (trigger("* * * * * *", false), Duration::seconds(5)),
            (trigger("@close-10m", true), Duration::days(5)),
            (trigger("30 7 12 * * MON", false), Duration::days(8)),
        ];
        // Every 36 minutes and a second over a week with a weekend, plus exact slot instants.
        let start = at(tz, "2026-11-26 08:00:00");
        let mut instants: Vec<DateTime<Utc>> = (0..280)
            .map(|i| start + Duration::seconds(i * 2161))
            .collect();
        instants.push(at(tz, "2026-11-30 09:15:00"));
        instants.push(at(tz, "2026-11-27 15:20:00") + Duration::milliseconds(500));
        for (t, span) in &triggers {
            for &before in &instants {
                let listed = t.fires_between(&cal, before - *span, before).pop();
                assert_eq!(t.previous_fire_before(&cal, before), listed, "{before}");
            }
        }
    }

    #[test]
    fn every_second_is_strictly_increasing() {
        let cal = Calendar::builtin(Exchange::Xnse);
        let t = trigger("* * * * * *", false);
        let start = Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap();
        let a = t.next_fire_after(&cal, start).unwrap();
        assert_eq!(a, start + Duration::seconds(1));
        let b = t.next_fire_after(&cal, a).unwrap();
        assert_eq!(b, a + Duration::seconds(1));
        let mid = start + Duration::milliseconds(500);
        assert_eq!(t.next_fire_after(&cal, mid).unwrap(), a);
    }

    #[test]
    fn market_hours_gate_xnse_inclusive_of_open_and_close() {
        let cal = Calendar::builtin(Exchange::Xnse);
        let tz = cal.tz();
        let t = trigger("0 */15 * * * *", true);
        let fires = t.fires_between(
            &cal,
            at(tz, "2026-11-27 00:00:00"),
            at(tz, "2026-11-28 00:00:00"),
        );
        assert_eq!(fires.first().copied(), Some(at(tz, "2026-11-27 09:15:00")));
        assert_eq!(fires.last().copied(), Some(at(tz, "2026-11-27 15:30:00")));
        assert_eq!(fires.len(), 26);
        // Friday's close is followed by Monday's open.
        let next = t
            .next_fire_after(&cal, at(tz, "2026-11-27 15:30:00"))
            .unwrap();
        assert_eq!(next, at(tz, "2026-11-30 09:15:00"));
        // A holiday (2026-11-24) has no slot.
        let fires = t.fires_between(
            &cal,
            at(tz, "2026-11-24 00:00:00"),
            at(tz, "2026-11-25 00:00:00"),
        );
        assert!(fires.is_empty());
        // Muhurat trading 2024-11-01 18:00–19:00 replaces the regular session.
        let fires = t.fires_between(
            &cal,
            at(tz, "2024-11-01 00:00:00"),
            at(tz, "2024-11-02 00:00:00"),
        );
        assert_eq!(
            local_times(&cal, &fires),
            [
                "11-01 18:00",
                "11-01 18:15",
                "11-01 18:30",
                "11-01 18:45",
                "11-01 19:00"
            ]
        );
    }

    #[test]
    fn nyse_across_dst_and_early_close() {
        let cal = Calendar::builtin(Exchange::Xnys);
        let tz = cal.tz();
        let t = trigger("0 */15 * * * *", true);
        // The week DST starts (Sunday 2026-03-08): every session 09:30…16:00 local.
        for day in 9..=13 {
            let from = at(tz, &format!("2026-03-{day:02} 00:00:00"));
            let fires = t.fires_between(&cal, from, from + Duration::days(1));
            let local = local_times(&cal, &fires);
            assert_eq!(fires.len(), 27, "{local:?}");
            assert_eq!(local[0], format!("03-{day:02} 09:30"));
            assert_eq!(local[26], format!("03-{day:02} 16:00"));
        }
        // Thanksgiving has nothing; the day after closes at 13:00.
        let from = at(tz, "2026-11-26 00:00:00");
        assert!(
            t.fires_between(&cal, from, from + Duration::days(1))
                .is_empty()
        );
        let fires = t.fires_between(&cal, from + Duration::days(1), from + Duration::days(2));
        let local = local_times(&cal, &fires);
        assert_eq!(local.first().map(String::as_str), Some("11-27 09:30"));
        assert_eq!(local.last().map(String::as_str), Some("11-27 13:00"));
        assert_eq!(fires.len(), 15);
    }

    #[test]
    fn spring_forward_gap_is_skipped_and_fold_fires_once() {
        let cal = Calendar::builtin(Exchange::Xnys);
        let tz = cal.tz();
        // 2026-03-08 02:30 does not exist in New York.
        let t = trigger("0 30 2 * * *", false);
        let next = t
            .next_fire_after(&cal, at(tz, "2026-03-08 00:00:00"))
            .unwrap();
        assert_eq!(next, at(tz, "2026-03-09 02:30:00"));
        // 2026-11-01 01:30 happens twice; it fires once.
        let t = trigger("0 30 1 * * *", false);
        let first = t
            .next_fire_after(&cal, at(tz, "2026-11-01 00:00:00"))
            .unwrap();
        assert_eq!(first, at(tz, "2026-11-01 01:30:00"));
        let second = t.next_fire_after(&cal, first).unwrap();
        assert_eq!(second, at(tz, "2026-11-02 01:30:00"));
        // Every 10 minutes through the fold: each local slot once, always increasing.
        let t = trigger("0 */10 * * * *", false);
        let from = at(tz, "2026-11-01 00:00:00");
        let fires = t.fires_between(&cal, from, from + Duration::hours(4));
        assert!(fires.windows(2).all(|w| w[0] < w[1]));
        let local = local_times(&cal, &fires);
        let mut dedup = local.clone();
        dedup.dedup();
        assert_eq!(local, dedup);
    }

    #[test]
    fn session_relative_triggers_follow_early_closes() {
        let cal = Calendar::builtin(Exchange::Xnys);
        let tz = cal.tz();
        let from = at(tz, "2026-11-25 00:00:00");
        let to = at(tz, "2026-11-28 00:00:00");
        let close = trigger("@close-10m", true);
        assert_eq!(
            local_times(&cal, &close.fires_between(&cal, from, to)),
            ["11-25 15:50", "11-27 12:50"]
        );
        let after = trigger("@close+15m", true);
        assert_eq!(
            local_times(&cal, &after.fires_between(&cal, from, to)),
            ["11-25 16:15", "11-27 13:15"]
        );
        let open = trigger("@open+5m", true);
        assert_eq!(
            local_times(&cal, &open.fires_between(&cal, from, to)),
            ["11-25 09:35", "11-27 09:35"]
        );
        assert_eq!(
            local_times(&cal, &trigger("@open", true).fires_between(&cal, from, to)),
            ["11-25 09:30", "11-27 09:30"]
        );
    }

    #[test]
    fn windows_widen_the_session() {
        let cal = Calendar::builtin(Exchange::Xnse);
        let tz = cal.tz();
        let mut t = trigger("0 */5 * * * *", true);
        t.window_start = SessionPoint::parse("@open-15m").unwrap();
        t.window_end = SessionPoint::parse("@close+5m").unwrap();
        let from = at(tz, "2026-11-27 00:00:00");
        let local = local_times(&cal, &t.fires_between(&cal, from, from + Duration::days(1)));
        assert_eq!(local.first().map(String::as_str), Some("11-27 09:00"));
        assert_eq!(local.last().map(String::as_str), Some("11-27 15:35"));
    }

    #[test]
    fn an_added_closure_has_no_slot() {
        let mut o = Overrides::default();
        o.closures
            .insert(NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(), None);
        o.sessions.insert(
            NaiveDate::from_ymd_opt(2026, 11, 28).unwrap(),
            ListedSession {
                open: chrono::NaiveTime::from_hms_opt(10, 0, 0).unwrap(),
                close: chrono::NaiveTime::from_hms_opt(11, 0, 0).unwrap(),
                note: None,
            },
        );
        let cal = Calendar::builtin(Exchange::Xnse).with_overrides(o, false);
        let tz = cal.tz();
        let t = trigger("0 0 * * * *", true);
        let fires = t.fires_between(
            &cal,
            at(tz, "2026-11-27 16:00:00"),
            at(tz, "2026-12-02 00:00:00"),
        );
        assert_eq!(
            local_times(&cal, &fires)[..3],
            [
                "11-28 10:00".to_string(),
                "11-28 11:00".into(),
                "12-01 10:00".into()
            ]
        );
    }

    #[test]
    fn impossible_pattern_has_no_fire() {
        let cal = Calendar::builtin(Exchange::Xnse);
        let t = trigger("0 0 0 30 2 *", false);
        assert!(t.next_fire_after(&cal, Utc::now()).is_none());
        let t = trigger("0 0 0 30 2 *", true);
        assert!(t.next_fire_after(&cal, Utc::now()).is_none());
    }

    #[test]
    fn session_points_parse_and_print() {
        for (s, shown) in [
            ("@open", "@open"),
            ("@open+5m", "@open+5m"),
            ("@close-10m", "@close-10m"),
            ("@close+1h30m", "@close+1h 30m"),
        ] {
            assert_eq!(SessionPoint::parse(s).unwrap().to_string(), shown);
        }
        assert!(SessionPoint::parse("@noon").is_err());
        assert!(SessionPoint::parse("@open*5m").is_err());
        assert!(SessionPoint::parse("@open+13h").is_err());
        assert!(SessionPoint::parse("@open€").is_err());
        assert!(SessionPoint::parse("@close€5m").is_err());
    }
}
