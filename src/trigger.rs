//! What fires when: a cron pattern (with seconds) evaluated in the exchange's timezone, gated by
//! the exchange's sessions. Pure: no clock, no I/O; every caller passes the instant to search from.
//!
//! Invariants: `next_fire_after(t)` is strictly later than `t`; a local slot that does not exist
//! (the spring-forward gap) is skipped; a local slot that exists twice (the fall-back fold) fires
//! once, at its first occurrence.

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use crate::calendar::Calendar;

/// How far ahead a search looks before concluding a trigger never fires again.
const HORIZON_DAYS: i64 = 3 * 366;

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

/// A job's trigger: its cron pattern and whether it is gated by the exchange's sessions.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub cron: CronSchedule,
    pub market_hours: bool,
}

impl Trigger {
    /// The first fire instant strictly after `after`, or `None` if there is none within the
    /// search horizon (a pattern like `0 0 0 30 2 *`, or a calendar with no more sessions).
    pub fn next_fire_after(
        &self,
        calendar: &Calendar,
        after: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let tz = calendar.tz();
        let start_local = after.with_timezone(&tz).naive_local();
        let horizon = start_local + Duration::days(HORIZON_DAYS);
        // Slots are whole seconds: searching after the truncated second cannot skip one.
        let mut cursor = start_local.with_nanosecond(0).unwrap_or(start_local);
        let mut inclusive = false;
        loop {
            let slot = self.cron.next_local(cursor, inclusive)?;
            if slot > horizon {
                return None;
            }
            if self.market_hours {
                match calendar.session(slot.date()) {
                    None => {
                        cursor = slot.date().succ_opt()?.and_time(chrono::NaiveTime::MIN);
                        inclusive = true;
                        continue;
                    }
                    Some(session) if slot.time() < session.open => {
                        cursor = slot.date().and_time(session.open);
                        inclusive = true;
                        continue;
                    }
                    Some(session) if slot.time() > session.close => {
                        cursor = slot.date().succ_opt()?.and_time(chrono::NaiveTime::MIN);
                        inclusive = true;
                        continue;
                    }
                    Some(_) => {}
                }
            }
            match tz.from_local_datetime(&slot) {
                // The spring-forward gap: this wall-clock time never happens.
                LocalResult::None => {}
                // A fold fires once, at its first occurrence.
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                    let t = t.with_timezone(&Utc);
                    if t > after {
                        return Some(t);
                    }
                }
            }
            cursor = slot;
            inclusive = false;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::Exchange;
    use chrono_tz::Tz;

    fn at(tz: Tz, s: &str) -> DateTime<Utc> {
        let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap();
        tz.from_local_datetime(&naive)
            .earliest()
            .unwrap()
            .with_timezone(&Utc)
    }

    fn trigger(p: &str, market_hours: bool) -> Trigger {
        Trigger {
            cron: CronSchedule::parse(p).unwrap(),
            market_hours,
        }
    }

    #[test]
    fn every_second_is_strictly_increasing() {
        let cal = Calendar::new(Exchange::Xnse);
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
        let cal = Calendar::new(Exchange::Xnse);
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
    }

    #[test]
    fn spring_forward_gap_is_skipped_and_fold_fires_once() {
        let cal = Calendar::new(Exchange::Xnys);
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
    }

    #[test]
    fn impossible_pattern_has_no_fire() {
        let cal = Calendar::new(Exchange::Xnse);
        let t = trigger("0 0 0 30 2 *", false);
        assert!(t.next_fire_after(&cal, Utc::now()).is_none());
    }
}
