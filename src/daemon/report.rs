//! What the daemon prints about itself: its banner and a line per finished run.

use crate::calendar::Calendar;
use crate::config::Config;
use crate::history::Outcome;
use crate::interpreter::Interpreter;
use crate::runner::RunReport;

/// One console line for a finished run, in the old tool's style.
pub fn log_report(report: &RunReport) {
    if let Some(node) = &report.taken_by {
        // Another node won the slot: the normal case for every node but one.
        tracing::debug!(
            "{} at {}: runs on node {node}",
            report.job,
            report.scheduled_at
        );
        return;
    }
    let took = crate::fmt::duration(report.duration());
    // A catch-up or retry says so: its slot is not the one just passed.
    let run = match (report.run_id, report.trigger) {
        (Some(id), crate::history::TriggerKind::Schedule) => format!(" (run {id})"),
        (Some(id), trigger) => format!(" (run {id}, {})", trigger.as_str()),
        (None, _) => String::new(),
    };
    let attempt = if report.attempt > 1 {
        format!(", attempt {}", report.attempt)
    } else {
        String::new()
    };
    match report.outcome {
        Outcome::Success => tracing::info!("✅ {} succeeded in {took}{run}{attempt}", report.job),
        Outcome::Skipped => tracing::info!(
            "⏭️  {} skipped: {}",
            report.job,
            report.busy.as_deref().unwrap_or("busy")
        ),
        other => tracing::warn!(
            "❌ {} {} after {took}{run}{attempt}: {}{}",
            report.job,
            other.as_str(),
            report.error.as_deref().unwrap_or("no detail"),
            report
                .run_id
                .map(|id| format!(
                    " (output and traceback: `{} logs {} --run {id}`)",
                    crate::cli::invocation(),
                    report.job
                ))
                .unwrap_or_default()
        ),
    }
}

/// The start-up lines: the version, the config, the exchange, Python, where the history and
/// logs are, each enabled job, and what of a dead process was settled.
pub(super) fn banner(
    config: &Config,
    interpreter: &Interpreter,
    calendar: &Calendar,
    abandoned: usize,
) {
    tracing::info!("🚀 Starting hedge-scheduler {}", env!("CARGO_PKG_VERSION"));
    tracing::info!("   config:   {}", config.file.display());
    tracing::info!(
        "   exchange: {} ({})",
        calendar.exchange().code(),
        calendar.tz().name()
    );
    tracing::info!(
        "   python:   {} (Python {})",
        interpreter.path.display(),
        interpreter.version
    );
    tracing::info!("   history:  {}", config.scheduler.history.display());
    tracing::info!("   logs:     {}", config.scheduler.log_dir.display());
    for job in config.jobs.iter().filter(|j| j.enabled) {
        tracing::info!(
            "   📋 {:<20} {:<28} {:<16} {}{}",
            job.id,
            job.name,
            job.trigger.schedule.to_string(),
            job.executor.as_str(),
            if job.trigger.market_hours {
                ", market hours"
            } else {
                ""
            }
        );
    }
    if abandoned > 0 {
        tracing::warn!(
            "⚠️  {} of a dead process settled: abandoned, or recorded as they went from the results they left (what of theirs was still running was ended)",
            crate::fmt::n(abandoned, "run")
        );
    }
}
