//! The results runs leave in the private runtime folder: taken at a run's end, and judged
//! for the runs a dead process left.

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::config::{Config, Job};
use crate::history::{History, Outcome, Recorder, RunEnd, StartRow, TriggerKind};

use super::*;

/// The tag the processes of a run written before schema 6 (no uid) carried: owner PID and run id.
pub fn legacy_run_tag(owner_pid: u32, run_id: i64) -> String {
    format!("{owner_pid}-{run_id}")
}

/// How a run went whose process finished while its scheduler was dead, from the result it left;
/// `None` when it left none (or its job is no longer configured).
pub fn judge_left_result(config: &Config, job: &str, uid: &str) -> Option<(Outcome, RunEnd)> {
    let job = config.job(job)?;
    let runtime = crate::log_dir::runtime_dir(&config.scheduler.log_dir).ok()?;
    let bridge = take_result(&result_path(&runtime, uid))?;
    Some(judge_left(
        job,
        bridge,
        "recorded at the next start: it finished while the scheduler was down",
    ))
}

/// How a run went from the result it left, with `note` added to its error.
fn judge_left(job: &Job, bridge: BridgeOutcome, note: &str) -> (Outcome, RunEnd) {
    let finished_at = bridge.finished_at.and_then(epoch_to_utc);
    let mut exec = Execution::new(Ended::Exited(None));
    exec.bridge = Some(bridge);
    let (outcome, mut end) = judge(job, &exec);
    end.finished_at = finished_at;
    end.error = Some(match end.error {
        Some(e) => format!("{e}; {note}"),
        None => note.to_string(),
    });
    (outcome, end)
}

/// Results left in the runtime folder by runs of dead processes that the history has no row
/// for (their rows were lost with a crash while the history refused writes): each is recorded,
/// whole, from what the result says, so its slot counts as run and is never run again. Returns
/// how many.
pub fn record_left_results(config: &Config, history: &History, recorder: &Recorder) -> usize {
    let Ok(runtime) = crate::log_dir::runtime_dir(&config.scheduler.log_dir) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(&runtime) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(uid) = path
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.strip_suffix(".json"))
        else {
            continue;
        };
        match history.run_by_uid(uid) {
            // Recorded (or being settled from this file at start-up): nothing to add.
            Ok(Some(row)) if row.outcome != Outcome::Running => {
                let _ = take_result(&path);
                continue;
            }
            Ok(None) => {}
            _ => continue,
        }
        let Some(bridge) = take_result_if_orphaned(&path) else {
            continue;
        };
        let Some(run) = bridge.run.clone() else {
            continue;
        };
        let (Some(job), Some(scheduled_at)) = (
            config.job(&run.job),
            DateTime::parse_from_rfc3339(&run.scheduled_at)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        ) else {
            continue;
        };
        let started_at = bridge
            .entered_at
            .and_then(epoch_to_utc)
            .unwrap_or(scheduled_at);
        recorder.start(StartRow {
            id: recorder.next_id(),
            uid: uid.to_string(),
            job: run.job.clone(),
            trigger: TriggerKind::parse(&run.trigger).unwrap_or(TriggerKind::Schedule),
            scheduled_at,
            started_at,
            attempt: run.attempt.unwrap_or(1),
            executor: job.executor.as_str().to_string(),
            pid: None,
            owner: run.owner,
            tag: recorder.tag(),
        });
        let (outcome, end) = judge_left(
            job,
            bridge,
            "recorded at the next start from the result it left: the history had lost its row",
        );
        recorder.finish(uid, outcome, end);
        n += 1;
    }
    n
}

/// Takes a result whose writer's scheduler is gone (a live one reads its own).
fn take_result_if_orphaned(path: &std::path::Path) -> Option<BridgeOutcome> {
    let text = std::fs::read(path).ok()?;
    let bridge = parse_bridge(&text)?;
    let owner = bridge.run.as_ref()?.owner?;
    if crate::process::scheduler_alive(i64::from(owner)) {
        return None;
    }
    take_result(path)
}

/// Where run `uid`'s bridge leaves its outcome, its runtime folder made if need be; why not.
pub(super) fn run_result_file(env: &RunEnv, uid: &str) -> std::result::Result<PathBuf, String> {
    crate::log_dir::runtime_dir(&env.config.scheduler.log_dir)
        .map(|dir| result_path(&dir, uid))
        .map_err(|e| format!("cannot prepare the runtime folder: {e}"))
}

/// Where a subprocess run's bridge leaves its outcome: `<runtime>/<uid>.json`.
pub fn result_path(runtime: &std::path::Path, uid: &str) -> PathBuf {
    runtime.join(format!("{uid}.json"))
}

/// Reads and removes a run's result file (never through a link); `None` when there is none or
/// it does not parse.
pub(crate) fn take_result(path: &std::path::Path) -> Option<BridgeOutcome> {
    use std::io::Read;
    let mut text = Vec::new();
    let read = crate::private::open(path, crate::private::Open::Read)
        .and_then(|mut f| f.read_to_end(&mut text));
    let _ = std::fs::remove_file(path);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let _ = std::fs::remove_file(tmp);
    read.ok()?;
    parse_bridge(&text)
}
