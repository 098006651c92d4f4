//! `calendar` and `plan`: listings over a range of dates.

use std::io::Write;

use chrono::Utc;

use crate::error::{Error, Result};
use crate::{calendar, config, logging, plan};

use super::*;

/// `calendar`.
pub(crate) fn calendar(
    inv: &Invocation,
    exchange: Option<String>,
    from: Option<String>,
    to: Option<String>,
    json: bool,
) -> Result<i32> {
    logging::init_cli("warn");
    let config = match &inv.found {
        Some(_) => Some(inv.load()?),
        None => None,
    };
    let calendar = plan::calendar_for(exchange.as_deref(), config.as_ref())?;
    let today = Utc::now().with_timezone(&calendar.tz()).date_naive();
    let range = plan::Range::parse_or_week(from.as_deref(), to.as_deref(), today)?;
    listing(&calendar, range, |out| {
        plan::write_calendar(out, &calendar, range, json)
    })
}

/// `plan`.
pub(crate) fn plan(
    inv: &Invocation,
    job: Option<String>,
    from: Option<String>,
    to: Option<String>,
    json: bool,
) -> Result<i32> {
    logging::init_cli("warn");
    let config = inv.load()?;
    let today = Utc::now()
        .with_timezone(&config.calendar().tz())
        .date_naive();
    let range = plan::Range::parse_or_week(from.as_deref(), to.as_deref(), today)?;
    let jobs: Vec<&config::Job> = match &job {
        Some(id) => vec![config.job(id).ok_or_else(|| Error::UnknownJob {
            job: id.clone(),
            known: config.job_list(),
        })?],
        None => config.jobs.iter().filter(|j| j.enabled).collect(),
    };
    if let Some(j) = jobs.iter().find(|j| !j.enabled) {
        eprintln!(
            "note: `{}` is disabled (enabled = false): it never fires",
            j.id
        );
    }
    let jobs: Vec<&config::Job> = jobs.into_iter().filter(|j| j.enabled).collect();
    let calendar = config.calendar();
    listing(&calendar, range, |out| {
        plan::write_plan(out, &calendar, &jobs, range, json)
    })
}

/// Writes a listing over a range to stdout, after a note on stderr when the range runs past the
/// calendar's holiday data.
fn listing(
    calendar: &calendar::Calendar,
    range: plan::Range,
    write: impl FnOnce(&mut std::io::BufWriter<std::io::StdoutLock<'static>>) -> std::io::Result<()>,
) -> Result<i32> {
    if let Some(note) = plan::coverage_note(calendar, range) {
        eprintln!("{note}");
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // A closed pipe (`| head`) is a normal way for a listing to end.
    match write(&mut out).and_then(|_| out.flush()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(Error::io("cannot write the output", e)),
    }
}
