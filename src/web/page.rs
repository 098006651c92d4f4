//! The trading-day page: one row per job, one mark per slot of the day on a time axis, the
//! session, what runs now, the last problems and the next fires. Server-rendered HTML with an
//! inline SVG; no script. And a run's page: its row and its log lines.

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::config::{Config, Job};
use crate::error::Result;
use crate::history::{History, Outcome, RunRow, parse_time};

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

    const ALL: [Mark; 7] = [
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
const MAX_MARKS: usize = 600;

impl Mark {
    /// How bad: a group shows its worst.
    fn weight(self) -> u8 {
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
const UNRECORDED_GRACE: chrono::Duration = chrono::Duration::seconds(60);

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

/// The local day `date` as UTC instants `[start, end)`.
fn day_bounds(tz: Tz, date: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let at = |d: NaiveDate| {
        tz.from_local_datetime(&d.and_time(NaiveTime::MIN))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN)))
    };
    (at(date), at(date.succ_opt().unwrap_or(date)))
}

const STYLE: &str = r#"
:root{--bg:#fff;--fg:#1b1f24;--mute:#667;--line:#d8dde3;--success:#2da44e;--failed:#cf222e;--timeout:#bc4c00;--skipped:#8c959f;--missed:#a40e26;--running:#0969da;--pending:#e6eaef}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--mute:#8b949e;--line:#30363d;--pending:#21262d}}
*{box-sizing:border-box}body{margin:0;padding:12px 16px;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--fg)}
h1{font-size:18px;margin:0 0 4px}h2{font-size:15px;margin:18px 0 6px}
nav a{margin-right:12px}a{color:var(--running)}
.session{color:var(--mute);margin-bottom:8px}.closed{color:var(--failed);font-weight:600}
table{border-collapse:collapse;width:100%;max-width:900px}td,th{text-align:left;padding:3px 8px 3px 0;border-bottom:1px solid var(--line);vertical-align:top}
.wrap{overflow-x:auto}svg.timeline{width:100%;min-width:860px;height:auto;display:block}
svg text{fill:var(--fg);font-size:14px}svg .axis text{fill:var(--mute);font-size:13px}
@media (max-width:600px){body{padding:8px}td,th{padding-right:4px}h1{font-size:16px}}svg .axis line{stroke:var(--line)}
.mark.success{fill:var(--success)}.mark.failed{fill:var(--failed)}.mark.timeout{fill:var(--timeout)}.mark.skipped{fill:var(--skipped)}
.mark.missed{fill:var(--missed);opacity:.55}.mark.running{fill:var(--running)}.mark.pending{fill:var(--pending);stroke:var(--line)}
.extra{fill:var(--running);opacity:.7}.now-line{stroke:var(--running);stroke-width:2}.bound{stroke:var(--mute);stroke-dasharray:4 3}
.legend span{display:inline-block;margin-right:12px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px;border-radius:2px}
pre{white-space:pre-wrap;word-break:break-all;font:12px/1.35 ui-monospace,Menlo,Consolas,monospace;background:var(--pending);padding:8px;max-width:100%}
.stderr{color:var(--failed)}.hedge{color:var(--mute)}
"#;

fn layout(title: &str, refresh: bool, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh { meta http-equiv="refresh" content="30"; }
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
    .into_string()
}

fn hm(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%H:%M").to_string()
}

fn hms(stored: Option<&str>, tz: Tz) -> String {
    stored
        .and_then(parse_time)
        .map(|t| t.with_timezone(&tz).format("%H:%M:%S").to_string())
        .unwrap_or_else(|| "—".to_string())
}

/// A job's row on the page.
struct Row<'a> {
    job: &'a Job,
    marks: Vec<(DateTime<Utc>, Mark, Option<&'a RunRow>)>,
    /// Runs of the day not on a slot of it (manual, backfill of other days shown where they ran).
    extras: Vec<&'a RunRow>,
}

/// The trading-day page of `date` at `now`.
pub fn day(config: &Config, date: NaiveDate, now: DateTime<Utc>) -> Result<String> {
    let calendar = config.calendar();
    let tz = calendar.tz();
    let (start, end) = day_bounds(tz, date);
    let history = History::open_read_only(&config.scheduler.history)?;
    let rows: Vec<RunRow> = match &history {
        Some(h) => h.runs_between(start, end)?,
        None => Vec::new(),
    };
    let session = calendar.session(date);
    let today = now.with_timezone(&tz).date_naive();
    let jobs: Vec<&Job> = config.jobs.iter().filter(|j| j.enabled).collect();
    let table = job_rows(&jobs, &rows, &calendar, (start, end), now);
    let Axis {
        open,
        close,
        from: axis_from,
        to: axis_to,
    } = axis(&table, session.as_ref(), tz, date, (start, end));
    let (done, expected) = counts(&table);
    let running: Vec<&RunRow> = rows
        .iter()
        .filter(|r| r.outcome == Outcome::Running)
        .collect();
    let problems = latest_problems(&rows);
    let daemon_problems = crate::health::read_state(&config.scheduler.log_dir)
        .map(|s| s.problems)
        .unwrap_or_default();
    let next: Vec<(&Job, Option<DateTime<Utc>>)> = jobs
        .iter()
        .map(|j| (*j, j.trigger.next_fire_after(&calendar, now)))
        .collect();
    let title = format!(
        "{} · {} · hedge-scheduler",
        date.format("%a %d %b %Y"),
        calendar.exchange().code()
    );
    let link = |d: Option<NaiveDate>| d.map(|d| format!("/?date={d}")).unwrap_or_default();

    let body = html! {
        header {
            h1 { "hedge-scheduler · " (calendar.exchange().code()) " · " (date.format("%A %d %B %Y")) }
            nav {
                a href=(link(date.pred_opt())) { "← previous day" }
                a href="/" { "today" }
                a href=(link(date.succ_opt())) { "next day →" }
            }
        }
        p.session #session {
            @match session {
                Some(s) => {
                    "Session " (s.open.format("%H:%M")) "–" (s.close.format("%H:%M")) " " (tz.name())
                    " (" span #session-kind { (s.kind.as_str()) } ")"
                    @if let Some(note) = calendar.note(date) { " · " (note) }
                }
                None => {
                    span.closed { "Market closed" }
                    @if let Some(note) = calendar.note(date) { " · " (note) }
                }
            }
            " · " span #counts { (done) " of " (expected) " slots done" }
            @if date == today { " · now " (now.with_timezone(&tz).format("%H:%M:%S %Z")) }
        }
        (timeline(&table, &Axis { open, close, from: axis_from, to: axis_to }, tz, (date == today).then_some(now)))
        p.legend {
            @for m in Mark::ALL { span { i class=(format!("mark {}", m.as_str())) style=(format!("background:var(--{})", m.as_str())) {} (m.as_str()) } }
        }
        (lists(&table, &next, &running, (&problems, &daemon_problems), tz))
        p.session { "Times are " (tz.name()) ". The page refreshes itself every 30 s while it shows today." }
    };
    Ok(layout(&title, date == today, body))
}

/// Each job's row: its marks on the day's slots, and its runs of the day on no slot of it.
fn job_rows<'a>(
    jobs: &[&'a Job],
    rows: &'a [RunRow],
    calendar: &crate::calendar::Calendar,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
    now: DateTime<Utc>,
) -> Vec<Row<'a>> {
    let mut table: Vec<Row> = Vec::new();
    for &job in jobs {
        let slots = job.trigger.fires_between(calendar, start, end);
        let own: Vec<&RunRow> = rows.iter().filter(|r| r.job == job.id).collect();
        let marks = slot_marks(&slots, &own, now);
        let extras = own
            .iter()
            .filter(|r| {
                r.missed_count.is_none()
                    && parse_time(&r.scheduled_at).is_some_and(|t| !slots.contains(&t))
            })
            .copied()
            .collect();
        table.push(Row { job, marks, extras });
    }
    table
}

/// The day's slots done (successful), and all its slots.
fn counts(table: &[Row]) -> (usize, usize) {
    let done = table
        .iter()
        .map(|r| {
            r.marks
                .iter()
                .filter(|(_, m, _)| *m == Mark::Success)
                .count()
        })
        .sum();
    (done, table.iter().map(|r| r.marks.len()).sum())
}

/// The day's ten latest runs that did not succeed (nor still run), newest first.
fn latest_problems(rows: &[RunRow]) -> Vec<&RunRow> {
    let mut problems: Vec<&RunRow> = rows
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Success | Outcome::Running))
        .collect();
    problems.sort_by_key(|r| std::cmp::Reverse(r.id));
    problems.truncate(10);
    problems
}

/// The day's timeline: a row of slot marks per job on the axis (hour ticks, the session's
/// bounds, and `now` when the page shows today).
fn timeline(
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
fn hour_ticks(from: DateTime<Utc>, to: DateTime<Utc>, tz: chrono_tz::Tz) -> Vec<DateTime<Utc>> {
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
fn axis(
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
struct Axis {
    /// The session's open and close, if it has one.
    open: Option<DateTime<Utc>>,
    close: Option<DateTime<Utc>>,
    /// The span shown.
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// The page's lists: the jobs (done, failed, next fire), what runs now, the last problems.
fn lists(
    table: &[Row],
    next: &[(&Job, Option<DateTime<Utc>>)],
    running: &[&RunRow],
    (problems, daemon_problems): (&[&RunRow], &[String]),
    tz: chrono_tz::Tz,
) -> maud::Markup {
    html! {
        h2 { "Jobs" }
        table #jobs {
            tr { th { "job" } th { "done / expected" } th { "failed" } th { "next fire" } }
            @for (row, (_, next)) in table.iter().zip(next) {
                tr data-job=(row.job.id) {
                    td { (row.job.name) }
                    td { (row.marks.iter().filter(|(_, m, _)| *m == Mark::Success).count()) " / " (row.marks.len()) }
                    td { (row.marks.iter().filter(|(_, m, _)| matches!(m, Mark::Failed | Mark::Timeout)).count()) }
                    td { @match next { Some(t) => (t.with_timezone(&tz).format("%a %d %b %H:%M:%S %Z")), None => "—" } }
                }
            }
        }
        h2 { "Running now" }
        @if running.is_empty() { p #running { "Nothing is running." } } @else {
            table #running {
                @for r in running {
                    tr { td { a href=(format!("/runs/{}", r.id)) { (r.job) " run " (r.id) } } td { "since " (hms(Some(&r.started_at), tz)) } td { (r.trigger.as_str()) } }
                }
            }
        }
        h2 { "Last problems" }
        @if problems.is_empty() && daemon_problems.is_empty() { p #problems { "None." } } @else {
            table #problems {
                @for p in daemon_problems { tr { td { "daemon" } td colspan="3" { (p) } } }
                @for r in problems {
                    tr {
                        td { a href=(format!("/runs/{}", r.id)) { (r.job) " " (hms(Some(&r.scheduled_at), tz)) } }
                        td { (r.outcome.as_str()) @if let Some(n) = r.missed_count { " (" (n) " slots)" } }
                        td { (r.error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

/// A run's page: its row and its log lines; `None` when the history has no such run.
pub fn run(config: &Config, id: i64) -> Result<Option<String>> {
    let Some(history) = History::open_read_only(&config.scheduler.history)? else {
        return Ok(None);
    };
    let Some(row) = history.run_by_id(id)? else {
        return Ok(None);
    };
    let tz = config.calendar().tz();
    let lines = crate::logs::lines(&config.job_log_dir(), &row.job, Some(id), Some(5000));
    let day = parse_time(&row.scheduled_at)
        .map(|t| t.with_timezone(&tz).date_naive().to_string())
        .unwrap_or_default();
    let fields = run_fields(&row, tz);
    let body = html! {
        header {
            h1 { (row.job) " · run " (row.id) }
            nav { a href=(format!("/?date={day}")) { "← the day" } }
        }
        table #run data-outcome=(row.outcome.as_str()) {
            @for (k, v) in &fields {
                @if !v.is_empty() { tr { th { (k) } td { (v) } } }
            }
        }
        h2 { "Output (" (lines.len()) " lines)" }
        @if lines.is_empty() { p { "No output." } } @else {
            pre #log {
                @for l in &lines {
                    span class=(l.stream) { (l.at) " " (l.stream) " " (l.text) "\n" }
                }
            }
        }
    };
    Ok(Some(layout(
        &format!("{} run {} · hedge-scheduler", row.job, row.id),
        row.outcome == Outcome::Running,
        body,
    )))
}

/// A run's fields on its page, in order (empty ones are left out).
fn run_fields(row: &RunRow, tz: chrono_tz::Tz) -> Vec<(&'static str, String)> {
    vec![
        ("job", row.job.clone()),
        ("outcome", row.outcome.as_str().to_string()),
        ("trigger", row.trigger.as_str().to_string()),
        (
            "scheduled at",
            crate::status::local_time(Some(&row.scheduled_at), tz),
        ),
        (
            "started at",
            crate::status::local_time(Some(&row.started_at), tz),
        ),
        (
            "entered at",
            crate::status::local_time(row.entered_at.as_deref(), tz),
        ),
        (
            "finished at",
            crate::status::local_time(row.finished_at.as_deref(), tz),
        ),
        (
            "duration",
            row.duration_ms
                .map(|ms| format!("{:.3} s", ms as f64 / 1000.0))
                .unwrap_or_default(),
        ),
        ("attempt", row.attempt.to_string()),
        ("executor", row.executor.clone().unwrap_or_default()),
        (
            "exit code",
            row.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        ),
        ("signal", row.signal.clone().unwrap_or_default()),
        ("pid", row.pid.map(|p| p.to_string()).unwrap_or_default()),
        (
            "peak memory",
            row.peak_rss_bytes
                .map(|b| crate::fmt::bytes(b as u64))
                .unwrap_or_default(),
        ),
        (
            "cpu",
            row.cpu_ms.map(|c| format!("{c} ms")).unwrap_or_default(),
        ),
        ("error", row.error.clone().unwrap_or_default()),
        (
            "result",
            row.result
                .as_ref()
                .map(|r| r.get().to_string())
                .unwrap_or_default(),
        ),
        (
            "missed slots",
            row.missed_count.map(|n| n.to_string()).unwrap_or_default(),
        ),
        ("node", row.node.clone().unwrap_or_default()),
        ("run uid", row.run_uid.clone().unwrap_or_default()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 30, h, m, 0)
            .single()
            .unwrap_or_default()
    }

    fn row(id: i64, slot: DateTime<Utc>, outcome: Outcome) -> RunRow {
        RunRow::sample(id, "j", &crate::history::fmt_time(slot), outcome)
    }

    #[test]
    fn marks_table() {
        let slots: Vec<_> = (0..8).map(|i| t(4, i * 3)).collect();
        let retried_ok = [
            row(2, slots[1], Outcome::Failed),
            row(3, slots[1], Outcome::Success),
        ];
        let mut gap = row(6, slots[4], Outcome::Skipped);
        gap.missed_count = Some(2);
        gap.missed_to = Some(crate::history::fmt_time(slots[5]));
        let rows = [
            row(1, slots[0], Outcome::Success),
            retried_ok[0].clone(),
            retried_ok[1].clone(),
            row(4, slots[2], Outcome::Timeout),
            row(5, slots[3], Outcome::Skipped),
            gap,
            row(7, slots[6], Outcome::Running),
        ];
        let refs: Vec<&RunRow> = rows.iter().collect();
        // Now: just after the 8th slot (unrecorded, still within its grace) — slot 7 pending.
        let now = slots[7] + chrono::Duration::seconds(5);
        let got: Vec<Mark> = slot_marks(&slots, &refs, now)
            .into_iter()
            .map(|(_, m, _)| m)
            .collect();
        use Mark::*;
        assert_eq!(
            got,
            [
                Success, Success, Timeout, Skipped, Missed, Missed, Running, Pending
            ]
        );
        // A minute later the unrecorded slot is missed.
        let later = slots[7] + chrono::Duration::seconds(61);
        assert_eq!(slot_marks(&slots, &refs, later)[7].1, Missed);
    }
}
