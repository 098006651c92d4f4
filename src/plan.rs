//! `calendar` and `plan`: what the calendar says and what would fire, for a date range, computed
//! by the same functions the daemon uses. Output is streamed: a long range never piles up.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Days, NaiveDate, SecondsFormat, TimeZone, Utc};

use crate::calendar::{Calendar, Exchange, SessionKind};
use crate::config::{Config, Job};
use crate::error::{Error, Result};

/// A validated, inclusive date range.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Range {
    /// `--from` and `--to` as given; a missing `--from` is `today`, a missing `--to` 7 days after
    /// `--from`.
    pub fn parse_or_week(from: Option<&str>, to: Option<&str>, today: NaiveDate) -> Result<Range> {
        let from = match from {
            Some(f) => Self::date("--from", f)?,
            None => today,
        };
        let to = match to {
            Some(t) => Self::date("--to", t)?,
            None => from + chrono::Days::new(7),
        };
        Self::checked(Range { from, to })
    }

    fn date(flag: &str, s: &str) -> Result<NaiveDate> {
        NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| {
            Error::Usage(format!(
                "invalid date `{s}` for `{flag}` (expected YYYY-MM-DD)"
            ))
        })
    }

    fn checked(range: Range) -> Result<Range> {
        if range.to < range.from {
            return Err(Error::Usage(format!(
                "`--to` {} is before `--from` {}",
                range.to, range.from
            )));
        }
        Ok(range)
    }

    pub fn parse(from: &str, to: &str) -> Result<Range> {
        Self::checked(Range {
            from: Self::date("--from", from)?,
            to: Self::date("--to", to)?,
        })
    }
}

/// The calendar of `code` (or the config's exchange), with the config's overrides when it is the
/// config's own exchange.
pub fn calendar_for(
    code: Option<&str>,
    config: Option<&Config>,
) -> Result<std::sync::Arc<Calendar>> {
    let exchange = match code {
        Some(code) => Exchange::parse(code).ok_or_else(|| {
            Error::Usage(format!(
                "unknown exchange `{code}` for `--exchange` (expected one of: {})",
                Exchange::known()
            ))
        })?,
        None => match config {
            Some(c) => c.scheduler.exchange,
            None => {
                return Err(Error::Usage(
                    "no config found: name an exchange with `--exchange`".to_string(),
                ));
            }
        },
    };
    match config {
        Some(c) if c.scheduler.exchange == exchange => Ok(c.calendar()),
        Some(c) => Ok(std::sync::Arc::new(Calendar::load(
            exchange,
            &c.dir().join("calendars").join(exchange.file_name()),
            false,
        )?)),
        None => Ok(std::sync::Arc::new(Calendar::load(
            exchange,
            &Path::new("config/calendars").join(exchange.file_name()),
            false,
        )?)),
    }
}

/// A note for stderr when the range runs past the calendar's holiday data.
pub fn coverage_note(calendar: &Calendar, range: Range) -> Option<String> {
    let known = calendar.known_until()?;
    (range.to > known).then(|| {
        let after = if calendar.strict() {
            "are closed (strict_calendar)"
        } else {
            "count every weekday as a session"
        };
        format!(
            "note: {} holidays are known up to {known}; dates after it {after}",
            calendar.exchange().code()
        )
    })
}

pub fn write_calendar(
    out: &mut impl Write,
    calendar: &Calendar,
    range: Range,
    json: bool,
) -> std::io::Result<()> {
    let sessions = calendar.sessions(range.from, range.to);
    if json {
        let rows: Vec<_> = sessions
            .iter()
            .map(|s| {
                let mut row = serde_json::json!({
                    "date": s.date.format("%Y-%m-%d").to_string(),
                    "open": s.open.format("%H:%M").to_string(),
                    "close": s.close.format("%H:%M").to_string(),
                });
                if s.kind != SessionKind::Regular {
                    row["kind"] = s.kind.as_str().into();
                }
                if let Some(note) = calendar.note(s.date) {
                    row["note"] = note.into();
                }
                row
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        return writeln!(out);
    }
    writeln!(
        out,
        "{} sessions {} … {} ({})",
        calendar.exchange().code(),
        range.from,
        range.to,
        calendar.tz().name()
    )?;
    writeln!(
        out,
        "{:<12} {:<4} {:<6} {:<6}",
        "DATE", "DAY", "OPEN", "CLOSE"
    )?;
    for s in &sessions {
        let mark = match (s.kind, calendar.note(s.date)) {
            (SessionKind::Regular, _) => String::new(),
            (kind, Some(note)) => format!("  {} ({note})", kind.as_str()),
            (kind, None) => format!("  {}", kind.as_str()),
        };
        writeln!(
            out,
            "{:<12} {:<4} {:<6} {}{mark}",
            s.date.format("%Y-%m-%d"),
            s.date.format("%a"),
            s.open.format("%H:%M"),
            s.close.format("%H:%M"),
        )?;
    }
    let special = sessions
        .iter()
        .filter(|s| s.kind != SessionKind::Regular)
        .count();
    writeln!(out, "{} sessions ({special} not regular)", sessions.len())
}

/// One fire of `plan --json`.
#[derive(serde::Serialize)]
struct PlanEntry<'a> {
    job: &'a str,
    at: String,
}

/// Every fire of `jobs` in the range, merged in time order.
pub fn write_plan(
    out: &mut impl Write,
    calendar: &Calendar,
    jobs: &[&Job],
    range: Range,
    json: bool,
) -> std::io::Result<()> {
    let tz = calendar.tz();
    let midnight = |d: NaiveDate| -> DateTime<Utc> {
        tz.from_local_datetime(&d.and_time(chrono::NaiveTime::MIN))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| d.and_time(chrono::NaiveTime::MIN).and_utc())
    };
    let from = midnight(range.from);
    let to = midnight(range.to.checked_add_days(Days::new(1)).unwrap_or(range.to));
    // One cursor per job; always emit the earliest next fire (ties in job order).
    let mut next: Vec<Option<DateTime<Utc>>> = jobs
        .iter()
        .map(|j| {
            j.trigger
                .next_fire_after(calendar, from - chrono::Duration::nanoseconds(1))
        })
        .collect();
    let mut first = true;
    let mut day: Option<(NaiveDate, Vec<String>)> = None;
    if json {
        write!(out, "[")?;
    }
    while let Some((i, at)) = next
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.map(|t| (i, t)))
        .filter(|(_, t)| *t < to)
        .min_by_key(|(i, t)| (*t, *i))
    {
        next[i] = jobs[i].trigger.next_fire_after(calendar, at);
        let local = at.with_timezone(&tz);
        if json {
            let sep = if first { "\n  " } else { ",\n  " };
            let entry = PlanEntry {
                job: &jobs[i].id,
                at: local.to_rfc3339_opts(SecondsFormat::Secs, false),
            };
            write!(out, "{sep}")?;
            serde_json::to_writer(&mut *out, &entry)?;
        } else {
            let date = local.date_naive();
            if day.as_ref().is_some_and(|(d, _)| *d != date)
                && let Some((d, lines)) = day.take()
            {
                write_day(out, d, &lines)?;
            }
            day.get_or_insert_with(|| (date, Vec::new()))
                .1
                .push(format!("  {}  {}", local.format("%H:%M:%S %Z"), jobs[i].id));
        }
        first = false;
    }
    if json {
        writeln!(out, "{}]", if first { "" } else { "\n" })?;
    } else {
        if let Some((d, lines)) = day.take() {
            write_day(out, d, &lines)?;
        }
        if first {
            writeln!(out, "nothing fires from {} to {}", range.from, range.to)?;
        }
    }
    Ok(())
}

fn write_day(out: &mut impl Write, date: NaiveDate, lines: &[String]) -> std::io::Result<()> {
    writeln!(
        out,
        "{} {} — {} fire{}",
        date.format("%Y-%m-%d"),
        date.format("%a"),
        lines.len(),
        if lines.len() == 1 { "" } else { "s" }
    )?;
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
