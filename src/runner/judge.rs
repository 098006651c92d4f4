//! How a run ended, judged: the executor's account (exit status, interrupt, the bridge's report)
//! becomes an `Outcome` and the history's `RunEnd`. Pure.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::{Entry, Job};
use crate::history::{Outcome, RunEnd};
use crate::process;

/// How the job's call ended, as the bridge says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BridgeStatus {
    /// It returned (`result`).
    Ok,
    /// It raised (`error`, `traceback`).
    Error,
    /// It called `sys.exit` (`exit_code`).
    Exit,
}

/// The JSON `hedge_bridge` reports.
#[derive(Debug, Deserialize)]
pub(crate) struct BridgeOutcome {
    pub(super) status: BridgeStatus,
    /// Kept verbatim: any JSON Python can write is stored as it is (numbers of any size, any
    /// depth), never re-parsed into a value.
    #[serde(default)]
    pub(super) result: Option<Box<serde_json::value::RawValue>>,
    pub(super) error: Option<String>,
    pub(super) exit_code: Option<i32>,
    pub(super) entered_at: Option<f64>,
    /// When the bridge finished (a subprocess run's result file).
    #[serde(default)]
    pub(super) finished_at: Option<f64>,
    /// The run the result belongs to, as the bridge was told (a subprocess run's result file).
    #[serde(default)]
    pub(super) run: Option<LeftRun>,
    /// The job's process's own account (`getrusage`) as it ended: exact where sampling may miss
    /// a short run.
    #[serde(default)]
    pub(super) rusage: Option<Rusage>,
}

/// `getrusage` of the job's process and the children it waited for.
#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) struct Rusage {
    pub(super) maxrss_kib: u64,
    pub(super) cpu_ms: u64,
}

/// What a result file says of its run: enough to record it if its row was lost.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct LeftRun {
    pub(super) job: String,
    pub(super) scheduled_at: String,
    #[serde(default)]
    pub(super) trigger: String,
    #[serde(default)]
    pub(super) attempt: Option<u32>,
    #[serde(default)]
    pub(super) owner: Option<u32>,
}

/// Parses the bridge's report; `None` when it is not one.
pub(crate) fn parse_bridge(text: &[u8]) -> Option<BridgeOutcome> {
    serde_json::from_slice(text).ok()
}

/// Why a run's wait ended; the exit status is `None` for an embedded run.
pub(super) enum Ended {
    Exited(Option<ExitStatus>),
    TimedOut(Option<ExitStatus>),
    Cancelled(Option<ExitStatus>, String),
    /// Its process tree went past `max_memory` (bytes seen).
    OverMemory(Option<ExitStatus>, u64),
}

/// What an executor hands back.
pub(super) struct Execution {
    pub(super) ended: Ended,
    pub(super) bridge: Option<BridgeOutcome>,
    /// Why there is no bridge outcome (could not start, could not call).
    pub(super) failure: Option<String>,
    pub(super) stderr_tail: Vec<String>,
    /// An embedded thread that outlived its run; resolves when it returns and frees the job.
    pub(super) stuck: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Sampled memory and CPU of a subprocess run.
    pub(super) usage: Option<process::TreeUsage>,
}

impl Execution {
    pub(super) fn new(ended: Ended) -> Execution {
        Execution {
            ended,
            bridge: None,
            failure: None,
            stderr_tail: Vec::new(),
            stuck: None,
            usage: None,
        }
    }
}

/// The log's closing line for a run.
pub(super) fn end_note(outcome: Outcome, end: &RunEnd) -> String {
    format!(
        "end: {}{}",
        outcome.as_str(),
        end.error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    )
}

/// Decides the outcome of a run from how it ended and what the bridge reported.
pub(super) fn judge(job: &Job, exec: &Execution) -> (Outcome, RunEnd) {
    let bridge = exec.bridge.as_ref();
    let mut end = RunEnd {
        entered_at: bridge.and_then(|b| b.entered_at).and_then(epoch_to_utc),
        ..RunEnd::default()
    };
    let status = match &exec.ended {
        Ended::Exited(s)
        | Ended::TimedOut(s)
        | Ended::Cancelled(s, _)
        | Ended::OverMemory(s, _) => *s,
    };
    usage(job, exec, &mut end);
    end.exit_code = status.and_then(|s| s.code());
    if status.is_none()
        && matches!(exec.ended, Ended::Exited(_))
        && let Some(b) = bridge
    {
        // An in-process run reports as `python -m hedge_bridge` would exit: 0, the code given
        // to `sys.exit`, 1 for a raise.
        end.exit_code = match b.status {
            BridgeStatus::Ok => Some(0),
            BridgeStatus::Exit => b.exit_code,
            BridgeStatus::Error => Some(1),
        };
    }
    end.signal = status.and_then(|s| s.signal()).map(process::signal_name);
    // The job returned: the bridge reported the return (it writes its report after the job's
    // function returned, before the process exits). It completed, whatever came after: a
    // cancel seen together with its end, as after a pause of the daemon (nemesis A8), or a
    // signal that ended the process on its way out (the keeper, at a frozen daemon's trust
    // deadline: the long nemesis run, seed 21; a rerun would have doubled the slot's work).
    let returned = exec.failure.is_none() && bridge.is_some_and(|b| b.status == BridgeStatus::Ok);
    let completed = returned
        && match &exec.ended {
            Ended::Exited(s) => s.is_some_and(|s| s.signal().is_some()),
            _ => status.is_some_and(|s| s.code() == Some(0) || s.signal().is_some()),
        };
    let outcome = match &exec.ended {
        _ if completed => {
            end.result = bridge
                .and_then(|b| b.result.as_ref())
                .map(|r| r.get().to_string());
            Outcome::Success
        }
        Ended::TimedOut(_) => {
            let mut error = format!(
                "timed out after {}",
                humantime::format_duration(job.timeout)
            );
            if exec.stuck.is_some() {
                error.push_str("; its thread is stuck in native code and holds the job's slot until it returns");
            }
            end.error = Some(error);
            Outcome::Timeout
        }
        Ended::Cancelled(_, reason) => {
            end.error = Some(format!("cancelled: {reason}"));
            Outcome::Cancelled
        }
        Ended::OverMemory(_, rss) => {
            end.error = Some(format!(
                "memory: the job's processes used {}, over max_memory {}",
                crate::fmt::bytes(*rss),
                crate::fmt::bytes(job.max_memory.unwrap_or_default())
            ));
            Outcome::Failed
        }
        Ended::Exited(Some(status)) if status.signal().is_some() => {
            let sig = process::signal_name(status.signal().unwrap_or_default());
            end.error = Some(format!("killed by {sig}"));
            Outcome::Crashed
        }
        Ended::Exited(status) => exited(job, exec, *status, &mut end),
    };
    (outcome, end)
}

/// What the run used: its peak memory and CPU time. The process's own account covers a run
/// too short to be sampled; the samples cover what it started and did not wait for. The
/// larger of each.
fn usage(job: &Job, exec: &Execution, end: &mut RunEnd) {
    if let Some(u) = &exec.usage {
        end.peak_rss_bytes = (u.peak_rss > 0).then_some(u.peak_rss);
        end.cpu_ms = (u.peak_rss > 0).then(|| u.cpu_ms());
    }
    if let Some(r) = exec.bridge.as_ref().and_then(|b| b.rusage)
        && job.executor != crate::config::Executor::Pyo3
    {
        end.peak_rss_bytes = Some(end.peak_rss_bytes.unwrap_or(0).max(r.maxrss_kib * 1024));
        end.cpu_ms = Some(end.cpu_ms.unwrap_or(0).max(r.cpu_ms));
    }
}

/// The outcome of a run whose process exited by itself (not by a signal), from what the
/// bridge reported: a command by its exit code alone.
fn exited(job: &Job, exec: &Execution, status: Option<ExitStatus>, end: &mut RunEnd) -> Outcome {
    let bridge = exec.bridge.as_ref();
    let code = status.and_then(|s| s.code());
    match (&job.entry, bridge, &exec.failure) {
        (_, _, Some(failure)) => {
            end.error = Some(failure.clone());
            Outcome::Failed
        }
        // A command reports by its exit code alone.
        (Entry::Command(_), _, None) => {
            if code == Some(0) {
                Outcome::Success
            } else {
                end.error = Some(explain(code, &exec.stderr_tail));
                Outcome::Failed
            }
        }
        (_, Some(b), None) => match (b.status, b.exit_code) {
            (BridgeStatus::Ok, _) if code.unwrap_or(0) == 0 => {
                end.result = b.result.as_ref().map(|r| r.get().to_string());
                Outcome::Success
            }
            (BridgeStatus::Exit, Some(0)) if code.unwrap_or(0) == 0 => Outcome::Success,
            (status, exit) => {
                if status == BridgeStatus::Exit {
                    end.exit_code = exit.or(end.exit_code);
                }
                end.error = b
                    .error
                    .clone()
                    .or_else(|| Some(explain(code, &exec.stderr_tail)));
                Outcome::Failed
            }
        },
        // The bridge exits 0 only when the job returned: its report could not be
        // written (a full disk), the exit code tells how it went.
        (_, None, None) if code == Some(0) => Outcome::Success,
        (_, None, None) => {
            end.error = Some(explain(code, &exec.stderr_tail));
            Outcome::Failed
        }
    }
}

pub(super) fn explain(code: Option<i32>, stderr_tail: &[String]) -> String {
    let why = stderr_tail.last().cloned();
    match (code, why) {
        (Some(c), Some(why)) => format!("exit code {c}: {why}"),
        (Some(c), None) => format!("exit code {c}"),
        (None, Some(why)) => why,
        (None, None) => "the job reported no outcome".to_string(),
    }
}

pub(super) fn epoch_to_utc(secs: f64) -> Option<DateTime<Utc>> {
    if !secs.is_finite() {
        return None;
    }
    let micros = (secs * 1e6).round() as i64;
    DateTime::from_timestamp_micros(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        let src = "[scheduler]\nexchange = \"XNYS\"\nlog_dir = \"logs\"\nhistory = \"logs/h.sqlite3\"\nlegacy_scripts = []\n\n[python]\nexecutable = \"python3\"\n\n[jobs.j]\nentry = \"m:f\"\nschedule = \"0 * * * * *\"\n";
        crate::config::Config::parse(std::path::Path::new("/p/c.toml"), src)
            .expect("test config")
            .jobs[0]
            .clone()
    }

    fn exec(ended: Ended, bridge: &str) -> Execution {
        let mut e = Execution::new(ended);
        e.bridge = parse_bridge(bridge.as_bytes());
        e
    }

    /// A8 (cluster nemesis): a run whose job returned while the daemon was stopped, then was
    /// "cancelled" by a lease event seen together with its end, is a success; so is one whose
    /// process was killed on its way out after its job returned (A14); a run ended before its
    /// job returned is not.
    #[test]
    fn a_run_that_completed_before_its_cancel_landed_is_a_success() {
        let ok = r#"{"status": "ok", "result": {"n": 1}}"#;
        let exited0 = Some(ExitStatus::from_raw(0));
        let killed = Some(ExitStatus::from_raw(libc_sigterm()));
        let rows: &[(Ended, &str, Outcome)] = &[
            (
                Ended::Cancelled(exited0, "lease".into()),
                ok,
                Outcome::Success,
            ),
            (Ended::TimedOut(exited0), ok, Outcome::Success),
            // Ended by the cancel after its job returned: it completed.
            (
                Ended::Cancelled(killed, "lease".into()),
                ok,
                Outcome::Success,
            ),
            // Killed from outside (the keeper) after its job returned: it completed.
            (Ended::Exited(killed), ok, Outcome::Success),
            // Killed before its job returned: it did not.
            (Ended::Exited(killed), "", Outcome::Crashed),
            (
                Ended::Cancelled(killed, "lease".into()),
                "",
                Outcome::Cancelled,
            ),
            (
                Ended::Cancelled(exited0, "lease".into()),
                r#"{"status": "error", "error": "boom"}"#,
                Outcome::Cancelled,
            ),
            (
                Ended::Cancelled(exited0, "lease".into()),
                "",
                Outcome::Cancelled,
            ),
        ];
        for (ended, bridge, want) in rows.iter().map(|(e, b, w)| (clone(e), *b, *w)) {
            let (outcome, end) = judge(&job(), &exec(ended, bridge));
            assert_eq!(outcome, want, "{bridge}");
            if want == Outcome::Success {
                assert_eq!(end.result.as_deref(), Some(r#"{"n": 1}"#));
            }
        }
    }

    fn libc_sigterm() -> i32 {
        nix::sys::signal::Signal::SIGTERM as i32
    }

    fn clone(e: &Ended) -> Ended {
        match e {
            Ended::Exited(s) => Ended::Exited(*s),
            Ended::TimedOut(s) => Ended::TimedOut(*s),
            Ended::Cancelled(s, r) => Ended::Cancelled(*s, r.clone()),
            Ended::OverMemory(s, n) => Ended::OverMemory(*s, *n),
        }
    }
}
