//! Exchange calendars: is a date a session, and if so when does it open and close (local time).
//!
//! XNYS is computed by rule for any year (`xnys`); XNSE holidays are data the exchange publishes
//! yearly, read from a calendar file (`file`) with a built-in copy of the shipped one. Overrides
//! (from the calendar file or the config) win over both: a listed session beats a listed closure,
//! and the config's overrides beat the file's.
//!
//! Invariant: every time a calendar hands out is in the exchange's own timezone; converting to an
//! instant is the trigger's job, which knows how to treat DST gaps and folds.

pub mod file;
pub mod xnys;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{Datelike, Days, NaiveDate, NaiveTime, Weekday};
use chrono_tz::Tz;

use crate::error::ConfigError;

/// How long before its data runs out a listed calendar starts warning: a month and a half, so the
/// warning is up before the exchange publishes next year's list (usually in December).
pub const COVERAGE_WARNING_DAYS: u64 = 45;

/// The exchanges hedge-scheduler knows, by their ISO 10383 MIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exchange {
    /// National Stock Exchange of India, 09:15–15:30 Asia/Kolkata; holidays are listed data.
    Xnse,
    /// New York Stock Exchange, 09:30–16:00 America/New_York; holidays by rule.
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

    /// The known codes, for error messages.
    pub fn known() -> String {
        Exchange::ALL.map(|e| e.code()).join(", ")
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

    /// The calendar file's name under `config/calendars/`.
    pub fn file_name(self) -> String {
        format!("{}.toml", self.code().to_ascii_lowercase())
    }

    /// The calendar file shipped with hedge-scheduler, used when no file is found on disk.
    fn builtin_file(self) -> &'static str {
        match self {
            Exchange::Xnse => include_str!("../../config/calendars/xnse.toml"),
            Exchange::Xnys => include_str!("../../config/calendars/xnys.toml"),
        }
    }

    /// Whether holidays are computed by rule (true) or listed year by year (false).
    fn by_rule(self) -> bool {
        matches!(self, Exchange::Xnys)
    }
}

/// What kind of day a session is, relative to the regular hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Regular,
    EarlyClose,
    LateOpen,
    Special,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Regular => "regular",
            SessionKind::EarlyClose => "early close",
            SessionKind::LateOpen => "late open",
            SessionKind::Special => "special session",
        }
    }
}

/// One trading session, in the exchange's local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub date: NaiveDate,
    pub open: NaiveTime,
    pub close: NaiveTime,
    pub kind: SessionKind,
}

/// A listed session replacing the regular one on its date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSession {
    pub open: NaiveTime,
    pub close: NaiveTime,
    pub note: Option<String>,
}

/// Closures and sessions listed in a calendar file or the config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub closures: HashMap<NaiveDate, Option<String>>,
    pub sessions: HashMap<NaiveDate, ListedSession>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        self.closures.is_empty() && self.sessions.is_empty()
    }
}

/// Answers "is this date a session, and when" for one exchange.
#[derive(Debug, Clone)]
pub struct Calendar {
    exchange: Exchange,
    /// From the calendar file (or its built-in copy).
    listed: Overrides,
    /// From the config's `[calendar]`: they win over everything.
    overrides: Overrides,
    /// For a listed calendar, the last date its holiday data covers.
    known_until: Option<NaiveDate>,
    strict: bool,
    /// The calendar file, as users should edit it (for messages).
    data_file: PathBuf,
    /// The data is the built-in copy: `data_file` does not exist.
    builtin: bool,
}

impl Calendar {
    /// The calendar with its built-in data and no overrides.
    pub fn builtin(exchange: Exchange) -> Calendar {
        let path = PathBuf::from("config/calendars").join(exchange.file_name());
        file::parse(&path, exchange.builtin_file(), exchange)
            .map(|data| Calendar {
                builtin: true,
                ..Calendar::from_data(exchange, data, &path)
            })
            // The shipped file is checked by a unit test; this arm only keeps the rules usable.
            .unwrap_or_else(|_| Calendar {
                exchange,
                listed: Overrides::default(),
                overrides: Overrides::default(),
                known_until: (!exchange.by_rule()).then_some(NaiveDate::MIN),
                strict: false,
                data_file: path,
                builtin: true,
            })
    }

    /// The calendar of `exchange` from the calendar file `path`; when that file does not exist
    /// and `required` is false, the built-in copy of the shipped file.
    pub fn load(exchange: Exchange, path: &Path, required: bool) -> Result<Calendar, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(source) => {
                let data = file::parse(path, &source, exchange)?;
                Ok(Calendar::from_data(exchange, data, path))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                let mut cal = Calendar::builtin(exchange);
                cal.data_file = path.to_path_buf();
                Ok(cal)
            }
            Err(e) => Err(ConfigError::new(
                path,
                format!("cannot read calendar file: {e}"),
            )),
        }
    }

    fn from_data(exchange: Exchange, data: file::CalendarData, path: &Path) -> Calendar {
        let known_until = if exchange.by_rule() {
            None
        } else {
            Some(data.known_until.unwrap_or(NaiveDate::MIN))
        };
        Calendar {
            exchange,
            listed: data.overrides,
            overrides: Overrides::default(),
            known_until,
            strict: false,
            data_file: path.to_path_buf(),
            builtin: false,
        }
    }

    /// Adds the config's overrides (they win over the file's) and the strictness.
    pub fn with_overrides(mut self, overrides: Overrides, strict: bool) -> Calendar {
        self.overrides = overrides;
        self.strict = strict;
        self
    }

    pub fn exchange(&self) -> Exchange {
        self.exchange
    }

    /// The calendar's data in a canonical text (sorted), to compare two nodes' calendars.
    pub fn fingerprint(&self) -> String {
        let mut lines = Vec::new();
        for (origin, o) in [("file", &self.listed), ("config", &self.overrides)] {
            for (d, note) in &o.closures {
                lines.push(format!(
                    "{origin} closed {d} {}",
                    note.as_deref().unwrap_or("")
                ));
            }
            for (d, s) in &o.sessions {
                lines.push(format!("{origin} session {d} {}-{}", s.open, s.close));
            }
        }
        lines.sort();
        lines.push(format!(
            "strict={} until={:?}",
            self.strict, self.known_until
        ));
        lines.join("\n")
    }

    pub fn tz(&self) -> Tz {
        self.exchange.tz()
    }

    pub fn strict(&self) -> bool {
        self.strict
    }

    /// The last date the holiday data covers; `None` for a calendar computed by rule.
    pub fn known_until(&self) -> Option<NaiveDate> {
        self.known_until
    }

    pub fn data_file(&self) -> &Path {
        &self.data_file
    }

    /// The session on `date`, or `None` when the exchange is closed that day.
    pub fn session(&self, date: NaiveDate) -> Option<Session> {
        let regular = self.exchange.regular_hours();
        for layer in [&self.overrides, &self.listed] {
            if let Some(s) = layer.sessions.get(&date) {
                return Some(self.make(date, s.open, s.close));
            }
            if layer.closures.contains_key(&date) {
                return None;
            }
        }
        if matches!(date.weekday(), Weekday::Sat | Weekday::Sun) {
            return None;
        }
        match self.exchange {
            Exchange::Xnys => {
                if xnys::is_holiday(date) {
                    None
                } else if xnys::is_early_close(date) {
                    Some(self.make(date, regular.0, hm(13, 0)))
                } else {
                    Some(self.make(date, regular.0, regular.1))
                }
            }
            Exchange::Xnse => {
                if self.strict && self.known_until.is_some_and(|k| date > k) {
                    None
                } else {
                    Some(self.make(date, regular.0, regular.1))
                }
            }
        }
    }

    fn make(&self, date: NaiveDate, open: NaiveTime, close: NaiveTime) -> Session {
        let (r_open, r_close) = self.exchange.regular_hours();
        let kind = if (open, close) == (r_open, r_close) {
            SessionKind::Regular
        } else if open == r_open && close < r_close {
            SessionKind::EarlyClose
        } else if open > r_open && close == r_close {
            SessionKind::LateOpen
        } else {
            SessionKind::Special
        };
        Session {
            date,
            open,
            close,
            kind,
        }
    }

    /// The note of a listed session or closure on `date` ("Muhurat trading").
    pub fn note(&self, date: NaiveDate) -> Option<&str> {
        for layer in [&self.overrides, &self.listed] {
            if let Some(s) = layer.sessions.get(&date) {
                return s.note.as_deref();
            }
            if let Some(note) = layer.closures.get(&date) {
                return note.as_deref();
            }
        }
        None
    }

    /// Every session from `from` to `to`, both inclusive.
    pub fn sessions(&self, from: NaiveDate, to: NaiveDate) -> Vec<Session> {
        let mut out = Vec::new();
        let mut date = from;
        while date <= to {
            out.extend(self.session(date));
            match date.succ_opt() {
                Some(next) => date = next,
                None => break,
            }
        }
        out
    }

    /// A plain warning when the holiday data ends within `COVERAGE_WARNING_DAYS` of `today` (or
    /// has ended).
    pub fn coverage_warning(&self, today: NaiveDate) -> Option<String> {
        let known = self.known_until?;
        let warn_from = known.checked_sub_days(Days::new(COVERAGE_WARNING_DAYS))?;
        if today < warn_from {
            return None;
        }
        let file = display_path(&self.data_file);
        let code = self.exchange.code();
        let after = if self.strict {
            "strict_calendar: no slot after it fires"
        } else {
            "after it every weekday counts as a regular session"
        };
        if known == NaiveDate::MIN {
            return Some(format!(
                "{code} has no holiday data; add the exchange's holidays to {file} ({after})"
            ));
        }
        let next_year = known.year() + 1;
        let copy = if self.builtin {
            " (it does not exist yet: start from the shipped config/calendars/ file)"
        } else {
            ""
        };
        Some(format!(
            "{code} holidays are known up to {known}; add {next_year} to {file}{copy} ({after})"
        ))
    }
}

/// A path as the user would type it: relative to the current directory when it is below it.
fn display_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

fn hm(h: u32, m: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, m, 0).unwrap_or(NaiveTime::MIN)
}

#[cfg(test)]
mod tests;
