//! Exchange calendars: is a date a session, and if so when does it open and close (local time).
//!
//! Invariant: every time a calendar hands out is in the exchange's own timezone; converting to an
//! instant is the trigger's job, which knows how to treat DST gaps and folds.

use chrono::{Datelike, NaiveDate, NaiveTime, Weekday};
use chrono_tz::Tz;

/// The exchanges hedge-scheduler knows, by their ISO 10383 MIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exchange {
    /// National Stock Exchange of India, 09:15–15:30 Asia/Kolkata.
    Xnse,
    /// New York Stock Exchange, 09:30–16:00 America/New_York.
    Xnys,
}

impl Exchange {
    pub const ALL: [Exchange; 2] = [Exchange::Xnse, Exchange::Xnys];

    pub fn parse(code: &str) -> Option<Exchange> {
        Exchange::ALL
            .into_iter()
            .find(|e| e.code().eq_ignore_ascii_case(code))
    }

    pub fn code(self) -> &'static str {
        match self {
            Exchange::Xnse => "XNSE",
            Exchange::Xnys => "XNYS",
        }
    }

    pub fn tz(self) -> Tz {
        match self {
            Exchange::Xnse => chrono_tz::Asia::Kolkata,
            Exchange::Xnys => chrono_tz::America::New_York,
        }
    }

    /// The regular session's open and close in local time.
    pub fn regular_hours(self) -> (NaiveTime, NaiveTime) {
        match self {
            Exchange::Xnse => (hm(9, 15), hm(15, 30)),
            Exchange::Xnys => (hm(9, 30), hm(16, 0)),
        }
    }
}

/// One trading session, in the exchange's local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub date: NaiveDate,
    pub open: NaiveTime,
    pub close: NaiveTime,
}

/// Answers "is this date a session, and when" for one exchange.
#[derive(Debug, Clone)]
pub struct Calendar {
    exchange: Exchange,
}

impl Calendar {
    pub fn new(exchange: Exchange) -> Self {
        Calendar { exchange }
    }

    pub fn exchange(&self) -> Exchange {
        self.exchange
    }

    pub fn tz(&self) -> Tz {
        self.exchange.tz()
    }

    /// The session on `date`, or `None` when the exchange is closed that day.
    pub fn session(&self, date: NaiveDate) -> Option<Session> {
        if matches!(date.weekday(), Weekday::Sat | Weekday::Sun) {
            return None;
        }
        let (open, close) = self.exchange.regular_hours();
        Some(Session { date, open, close })
    }
}

fn hm(h: u32, m: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, m, 0).unwrap_or(NaiveTime::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekends_are_closed_weekdays_open() {
        let cal = Calendar::new(Exchange::Xnse);
        let sat = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap();
        let fri = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        assert!(cal.session(sat).is_none());
        let s = cal.session(fri).unwrap();
        assert_eq!((s.open, s.close), (hm(9, 15), hm(15, 30)));
    }

    #[test]
    fn exchange_codes_parse_case_insensitively() {
        assert_eq!(Exchange::parse("xnys"), Some(Exchange::Xnys));
        assert_eq!(Exchange::parse("XNSE"), Some(Exchange::Xnse));
        assert_eq!(Exchange::parse("NASDAQ"), None);
    }
}
