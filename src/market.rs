//! Whether the exchange is open now, and when it next opens: what `status` and the daemon's
//! start-up say about the market (a pure function of the calendar and an instant).

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::calendar::{Calendar, Session};

/// The market as of one instant, in the exchange's zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Market {
    /// In session right now.
    pub open: bool,
    /// Today's session (exchange date), if there is one: "HH:MM–HH:MM" and its kind.
    pub today: Option<Day>,
    /// Why today has no session: "weekend", or the calendar's note ("Diwali"), or "holiday".
    pub closed_because: Option<String>,
    /// While open: when this session closes (RFC 3339, the exchange's offset).
    pub closes_at: Option<String>,
    /// Outside a session: when the next one opens (RFC 3339, the exchange's offset).
    pub next_open: Option<String>,
    /// Seconds until `next_open` (or `closes_at` while open).
    pub seconds_to_change: Option<i64>,
    /// One line for people.
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Day {
    pub date: NaiveDate,
    pub open: String,
    pub close: String,
    pub kind: &'static str,
}

/// How far the next sessions are looked for: beyond any run of holidays.
const LOOK_AHEAD_DAYS: u64 = 30;

fn at(tz: Tz, session: &Session) -> (DateTime<Utc>, DateTime<Utc>) {
    let instant = |t: chrono::NaiveTime| {
        tz.from_local_datetime(&session.date.and_time(t))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    };
    let open = instant(session.open).unwrap_or_default();
    (open, instant(session.close).unwrap_or(open))
}

/// `1 d 23 h`, `2 h 05 min`, `7 min`, `40 s`: how long until something, roughly.
pub fn rough(d: Duration) -> String {
    let s = d.num_seconds().max(0);
    let (days, hours, mins) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    if days > 0 {
        format!("{days} d {hours} h")
    } else if hours > 0 {
        format!("{hours} h {mins:02} min")
    } else if mins > 0 {
        format!("{mins} min")
    } else {
        format!("{s} s")
    }
}

/// Why the market is closed on `date`: the calendar's note, else the weekend or a holiday.
fn closed_because(calendar: &Calendar, date: NaiveDate) -> String {
    calendar
        .note(date)
        .map(str::to_string)
        .unwrap_or_else(|| match date.weekday() {
            chrono::Weekday::Sat | chrono::Weekday::Sun => "weekend".to_string(),
            _ => "holiday".to_string(),
        })
}

/// An instant as a person says it from `date`: "today 2026-12-08 09:15 IST", "tomorrow …", or
/// the weekday.
fn when(t: DateTime<Utc>, date: NaiveDate, tz: Tz) -> String {
    let l = t.with_timezone(&tz);
    let day = if l.date_naive() == date {
        "today".to_string()
    } else if Some(l.date_naive()) == date.succ_opt() {
        "tomorrow".to_string()
    } else {
        l.format("%A").to_string()
    };
    format!("{day} {} {}", l.format("%Y-%m-%d"), l.format("%H:%M %Z"))
}

/// The market at `now`.
pub fn at_instant(calendar: &Calendar, now: DateTime<Utc>) -> Market {
    let tz = calendar.tz();
    let local = now.with_timezone(&tz);
    let date = local.date_naive();
    let today = calendar.session(date);
    let hm = |t: DateTime<Utc>| t.with_timezone(&tz).format("%H:%M %Z").to_string();
    let day = today.as_ref().map(|s| Day {
        date: s.date,
        open: s.open.format("%H:%M").to_string(),
        close: s.close.format("%H:%M").to_string(),
        kind: s.kind.as_str(),
    });
    let closed_because = match &today {
        Some(_) => None,
        None => Some(closed_because(calendar, date)),
    };
    if let Some(s) = &today {
        let (open, close) = at(tz, s);
        if now >= open && now < close {
            let kind = if s.kind.as_str() == "regular" {
                String::new()
            } else {
                format!(" ({})", s.kind.as_str())
            };
            return Market {
                open: true,
                today: day,
                closed_because,
                closes_at: Some(crate::fmt::rfc3339_in(close, tz)),
                next_open: None,
                seconds_to_change: Some((close - now).num_seconds()),
                summary: format!(
                    "market open{kind}: closes at {} (in {})",
                    hm(close),
                    rough(close - now)
                ),
            };
        }
    }
    let end = date + chrono::Days::new(LOOK_AHEAD_DAYS);
    let next = calendar
        .sessions(date, end)
        .into_iter()
        .map(|s| at(tz, &s).0)
        .find(|open| *open > now);
    let head = match (&today, &closed_because) {
        (Some(s), _) if now >= at(tz, s).1 => {
            format!("market closed for today (closed at {})", hm(at(tz, s).1))
        }
        (Some(_), _) => "market not open yet".to_string(),
        (None, Some(why)) => format!("market closed today ({why})"),
        (None, None) => "market closed today".to_string(),
    };
    let summary = match next {
        Some(open) => format!(
            "{head}; next session {} (in {})",
            when(open, date, tz),
            rough(open - now)
        ),
        None => format!("{head}; no session in the next {LOOK_AHEAD_DAYS} days"),
    };
    Market {
        open: false,
        today: day,
        closed_because,
        closes_at: None,
        next_open: next.map(|t| crate::fmt::rfc3339_in(t, tz)),
        seconds_to_change: next.map(|t| (t - now).num_seconds()),
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::Exchange;

    fn nse() -> Calendar {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/calendars/xnse.toml");
        Calendar::load(Exchange::Xnse, &file, true).expect("the shipped NSE calendar")
    }

    #[test]
    fn the_market_line_says_open_closed_and_when_it_next_opens() {
        let cal = nse();
        let table: &[(&str, bool, &str)] = &[
            // Saturday: closed, next Monday.
            (
                "2026-11-28T15:55:00Z",
                false,
                "market closed today (weekend); next session Monday 2026-11-30 09:15 IST (in 1 d 11 h)",
            ),
            // Monday before the open.
            (
                "2026-11-30T03:00:00Z",
                false,
                "market not open yet; next session today 2026-11-30 09:15 IST (in 45 min)",
            ),
            // In session.
            (
                "2026-11-30T05:00:00Z",
                true,
                "market open: closes at 15:30 IST (in 5 h 00 min)",
            ),
            // After the close: tomorrow.
            (
                "2026-11-30T10:30:00Z",
                false,
                "market closed for today (closed at 15:30 IST); next session tomorrow 2026-12-01 09:15 IST (in 17 h 15 min)",
            ),
        ];
        for (now, open, want) in table {
            let now: DateTime<Utc> = now.parse().expect("instant");
            let m = at_instant(&cal, now);
            assert_eq!(m.open, *open, "{now}");
            assert_eq!(m.summary, *want, "{now}");
        }
        // A holiday with a note, and a Muhurat-only day (a special session in the evening).
        let diwali: DateTime<Utc> = "2025-10-21T04:00:00Z".parse().expect("instant");
        let m = at_instant(&cal, diwali);
        assert_eq!(
            m.today.as_ref().map(|d| d.kind),
            Some("special session"),
            "{m:?}"
        );
        assert!(
            !m.open
                && m.summary
                    .starts_with("market not open yet; next session today"),
            "{m:?}"
        );
    }
}
