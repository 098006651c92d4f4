//! The day's timeline: the axis (the session, the hours) and a row of slot marks per job.

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use maud::html;

use crate::history::parse_time;

use super::marks::*;

/// The day's timeline: a row of slot marks per job on the axis (hour ticks, the session's
/// bounds, and `now` when the page shows today).
pub(super) fn timeline(
    table: &[Row],
    axis: &Axis,
    tz: chrono_tz::Tz,
    now: Option<DateTime<Utc>>,
) -> maud::Markup {
    let (open, close, axis_from, axis_to) = (axis.open, axis.close, axis.from, axis.to);
    const W: f64 = 1000.0;
    const LEFT: f64 = 8.0;
    const ROW: f64 = 46.0;
    const TOP: f64 = 24.0;
    let span = (axis_to - axis_from).num_seconds().max(1) as f64;
    let x =
        |t: DateTime<Utc>| LEFT + (W - 2.0 * LEFT) * ((t - axis_from).num_seconds() as f64 / span);
    let height = TOP + ROW * table.len().max(1) as f64 + 8.0;
    let ticks = hour_ticks(axis_from, axis_to, tz);

    html! {
        div.wrap {
            svg.timeline #timeline xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {W} {height}")) role="img" aria-label="slots of the day" {
                g.axis {
                    @for t in &ticks {
                        line x1=(x(*t)) x2=(x(*t)) y1="14" y2=(height) {}
                        text x=(x(*t) + 2.0) y="11" { (hm(*t, tz)) }
                    }
                }
                @if let Some(o) = open { line.bound.open x1=(x(o)) x2=(x(o)) y1="14" y2=(height) { title { "open " (hm(o, tz)) } } }
                @if let Some(c) = close { line.bound.close x1=(x(c)) x2=(x(c)) y1="14" y2=(height) { title { "close " (hm(c, tz)) } } }
                @for (i, row) in table.iter().enumerate() {
                    @let y = TOP + ROW * i as f64;
                    @let spacing = if row.marks.len() > 1 { (W - 2.0 * LEFT) * (row.marks.len() as f64).recip() * ((row.marks[row.marks.len()-1].0 - row.marks[0].0).num_seconds() as f64 / span) } else { 12.0 };
                    @let w = (spacing * 0.7).clamp(2.0, 12.0);
                    g.job-row data-job=(row.job.id) {
                        text x=(LEFT) y=(y + 12.0) { (row.job.name) " · " (row.marks.iter().filter(|(_, m, _)| *m == Mark::Success).count()) "/" (row.marks.len()) }
                        @if row.marks.len() > MAX_MARKS {
                            @let per = row.marks.len().div_ceil(MAX_MARKS);
                            @for group in row.marks.chunks(per) {
                                @let (first, last) = (group[0].0, group[group.len() - 1].0);
                                @let worst = group.iter().map(|(_, m, _)| *m).max_by_key(|m| m.weight()).unwrap_or(Mark::Pending);
                                @let ok = group.iter().filter(|(_, m, _)| *m == Mark::Success).count();
                                rect class=(format!("mark bin {}", worst.as_str())) x=(x(first) - 1.0) y=(y + 18.0) width=((x(last) - x(first)).max(2.0)) height="20" rx="2" {
                                    title { (hm(first, tz)) "–" (hm(last, tz)) ": " (group.len()) " slots, " (ok) " successful; the worst: " (worst.as_str()) }
                                }
                            }
                        }
                        @for (t, mark, run) in row.marks.iter().filter(|_| row.marks.len() <= MAX_MARKS) {
                            @let tip = format!("{} {}{}", hm(*t, tz), mark.as_str(), run.and_then(|r| r.error.as_deref()).map(|e| format!(": {}", e.lines().next().unwrap_or(""))).unwrap_or_default());
                            @match run {
                                Some(r) => {
                                    a href=(format!("/runs/{}", r.id)) {
                                        rect class=(format!("mark slot {}", mark.as_str())) data-slot=(crate::fmt::rfc3339_in(*t, tz)) data-outcome=(r.outcome.as_str()) x=(x(*t) - w / 2.0) y=(y + 18.0) width=(w) height="20" rx="2" { title { (tip) } }
                                    }
                                }
                                None => {
                                    rect class=(format!("mark slot {}", mark.as_str())) data-slot=(crate::fmt::rfc3339_in(*t, tz)) x=(x(*t) - w / 2.0) y=(y + 18.0) width=(w) height="20" rx="2" { title { (tip) } }
                                }
                            }
                        }
                        @for r in &row.extras {
                            @if let Some(t) = parse_time(&r.started_at) {
                                a href=(format!("/runs/{}", r.id)) {
                                    circle.extra cx=(x(t)) cy=(y + 42.0) r="3" { title { (r.trigger.as_str()) " run " (r.id) " at " (hm(t, tz)) ": " (r.outcome.as_str()) } }
                                }
                            }
                        }
                    }
                }
                @if let Some(now) = now.filter(|n| *n >= axis_from && *n <= axis_to) {
                    line.now-line x1=(x(now)) x2=(x(now)) y1="14" y2=(height) { title { "now " (hm(now, tz)) } }
                }
            }
        }
    }
}

/// The whole hours (in `tz`) from `from` to `to`.
pub(super) fn hour_ticks(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tz: chrono_tz::Tz,
) -> Vec<DateTime<Utc>> {
    use chrono::Timelike;
    let mut ticks = Vec::new();
    let mut t = from
        .with_timezone(&tz)
        .with_minute(0)
        .and_then(|l| l.with_second(0))
        .and_then(|l| l.with_nanosecond(0))
        .map(|l| l.with_timezone(&Utc))
        .unwrap_or(from);
    while t <= to {
        if t >= from {
            ticks.push(t);
        }
        t += chrono::Duration::hours(1);
    }
    ticks
}

/// The page's time axis: the session's open and close, and the span shown (the session, or the
/// slots' and runs' span, or the whole day, with a margin).
pub(super) fn axis(
    table: &[Row],
    session: Option<&crate::calendar::Session>,
    tz: chrono_tz::Tz,
    date: NaiveDate,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> Axis {
    let local = |t: NaiveTime| {
        tz.from_local_datetime(&date.and_time(t))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    };
    let (open, close) = match session {
        Some(s) => (local(s.open), local(s.close)),
        None => (None, None),
    };
    let mut first = open;
    let mut last = close;
    for row in table {
        for (t, _, _) in &row.marks {
            first = Some(first.map_or(*t, |f| f.min(*t)));
            last = Some(last.map_or(*t, |l| l.max(*t)));
        }
        for r in &row.extras {
            if let Some(t) = parse_time(&r.started_at) {
                first = Some(first.map_or(t, |f| f.min(t)));
                last = Some(last.map_or(t, |l| l.max(t)));
            }
        }
    }
    let margin = chrono::Duration::minutes(15);
    let (axis_from, axis_to) = match (first, last) {
        (Some(f), Some(l)) if l > f => (f - margin, l + margin),
        (Some(f), _) => (
            f - chrono::Duration::hours(1),
            f + chrono::Duration::hours(1),
        ),
        _ => (start, end),
    };
    Axis {
        open,
        close,
        from: axis_from,
        to: axis_to,
    }
}

/// The page's time axis.
pub(super) struct Axis {
    /// The session's open and close, if it has one.
    pub(super) open: Option<DateTime<Utc>>,
    pub(super) close: Option<DateTime<Utc>>,
    /// The span shown.
    pub(super) from: DateTime<Utc>,
    pub(super) to: DateTime<Utc>,
}
