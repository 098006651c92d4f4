//! Calendar files (`config/calendars/<mic>.toml`) and the config's `[calendar]` overrides: the
//! same `closures` and `sessions`, validated with errors that name the file, line and key.

use std::path::Path;

use chrono::{NaiveDate, NaiveTime};
use serde::Deserialize;
use toml::Spanned;

use super::{Exchange, ListedSession, Overrides};
use crate::error::ConfigError;

/// A calendar file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalendarFile {
    exchange: Option<Spanned<String>>,
    known_until: Option<Spanned<String>>,
    #[serde(default)]
    closures: Vec<Spanned<String>>,
    #[serde(default)]
    sessions: Vec<Spanned<RawSession>>,
}

/// A listed session as written: `{ date, open, close, note }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSession {
    date: Spanned<String>,
    open: Option<Spanned<String>>,
    close: Option<Spanned<String>>,
    note: Option<String>,
}

/// What a calendar file holds, validated.
#[derive(Debug, Clone)]
pub struct CalendarData {
    pub overrides: Overrides,
    pub known_until: Option<NaiveDate>,
}

/// Reads the calendar file `path` of `exchange`, whose text is `source`.
pub fn parse(path: &Path, source: &str, exchange: Exchange) -> Result<CalendarData, ConfigError> {
    let raw: RawCalendarFile = toml::from_str(source).map_err(|e| {
        let message = e.message().trim().replace('\n', " ");
        match e.span() {
            Some(span) => ConfigError::at(path, source, span.start, message),
            None => ConfigError::new(path, message),
        }
    })?;
    if let Some(code) = &raw.exchange
        && Exchange::parse(code.get_ref()) != Some(exchange)
    {
        return Err(ConfigError::at(
            path,
            source,
            code.span().start,
            format!(
                "`exchange` is `{}` but this is the calendar file of {}",
                code.get_ref(),
                exchange.code()
            ),
        ));
    }
    let overrides = parse_overrides(path, source, exchange, "", &raw.closures, &raw.sessions)?;
    let known_until = match &raw.known_until {
        Some(k) => Some(date(path, source, k, "known_until")?),
        // Without `known_until`, the data covers the last year it lists a closure in.
        None => overrides
            .closures
            .keys()
            .max()
            .and_then(|d| NaiveDate::from_ymd_opt(chrono::Datelike::year(d), 12, 31)),
    };
    Ok(CalendarData {
        overrides,
        known_until,
    })
}

/// Validates `closures` and `sessions` of a calendar file or of the config's `[calendar]`
/// (`prefix` is the table the keys live in, for messages: "calendar." or "").
pub fn parse_overrides(
    path: &Path,
    source: &str,
    exchange: Exchange,
    prefix: &str,
    closures: &[Spanned<String>],
    sessions: &[Spanned<RawSession>],
) -> Result<Overrides, ConfigError> {
    let mut out = Overrides::default();
    let closures_key = format!("{prefix}closures");
    for c in closures {
        let d = date(path, source, c, &closures_key)?;
        out.closures.insert(d, None);
    }
    let sessions_key = format!("{prefix}sessions");
    let (r_open, r_close) = exchange.regular_hours();
    for s in sessions {
        let raw = s.get_ref();
        let d = date(path, source, &raw.date, &format!("{sessions_key}.date"))?;
        let open = match &raw.open {
            Some(t) => time(path, source, t, &format!("{sessions_key}.open"))?,
            None => r_open,
        };
        let close = match &raw.close {
            Some(t) => time(path, source, t, &format!("{sessions_key}.close"))?,
            None => r_close,
        };
        if open >= close {
            return Err(ConfigError::at(
                path,
                source,
                s.span().start,
                format!(
                    "session on {d} in `{sessions_key}` opens at {} but closes at {} (the close must be later)",
                    open.format("%H:%M"),
                    close.format("%H:%M")
                ),
            ));
        }
        let listed = ListedSession {
            open,
            close,
            note: raw.note.clone(),
        };
        if out.sessions.insert(d, listed).is_some() {
            return Err(ConfigError::at(
                path,
                source,
                raw.date.span().start,
                format!("{d} is listed twice in `{sessions_key}`"),
            ));
        }
    }
    Ok(out)
}

fn date(
    path: &Path,
    source: &str,
    s: &Spanned<String>,
    key: &str,
) -> Result<NaiveDate, ConfigError> {
    NaiveDate::parse_from_str(s.get_ref().trim(), "%Y-%m-%d").map_err(|_| {
        ConfigError::at(
            path,
            source,
            s.span().start,
            format!(
                "invalid date `{}` in `{key}` (expected YYYY-MM-DD)",
                s.get_ref()
            ),
        )
    })
}

fn time(
    path: &Path,
    source: &str,
    s: &Spanned<String>,
    key: &str,
) -> Result<NaiveTime, ConfigError> {
    let text = s.get_ref().trim();
    NaiveTime::parse_from_str(text, "%H:%M")
        .or_else(|_| NaiveTime::parse_from_str(text, "%H:%M:%S"))
        .map_err(|_| {
            ConfigError::at(
                path,
                source,
                s.span().start,
                format!(
                    "invalid time `{}` in `{key}` (expected HH:MM, exchange local time)",
                    s.get_ref()
                ),
            )
        })
}
