//! The trading-day page: one row per job, one mark per slot of the day on a time axis, the
//! session, what runs now, the last problems and the next fires. Server-rendered HTML with an
//! inline SVG; no script. And a run's page: its row and its log lines.

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::config::{Config, Job};
use crate::error::Result;
use crate::history::{History, Outcome, RunRow, parse_time};

mod marks;
mod timeline;

pub use marks::*;
use timeline::*;

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
