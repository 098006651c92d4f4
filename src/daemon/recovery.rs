//! Start-up: rows left `running` by a dead daemon are abandoned and their processes ended.

use crate::error::Result;
use crate::history::{History, Recorder};

/// Rows left `running` by a process that is gone become `abandoned`, and whatever their
/// processes left running is ended (found by the run's tag, so a reused PID is never hit);
/// returns how many.
pub(super) async fn abandon_dead_runs(
    history: &History,
    recorder: &Recorder,
    config: &crate::config::Config,
) -> Result<usize> {
    let grace = config.scheduler.kill_grace;
    let mut n = 0;
    for row in history.running()? {
        let owner_alive = row.owner_pid.is_some_and(crate::process::scheduler_alive);
        if owner_alive {
            continue;
        }
        if let Some(owner) = row.owner_pid.and_then(|p| u32::try_from(p).ok()) {
            let tag = match &row.run_uid {
                Some(uid) => uid.clone(),
                None => crate::runner::legacy_run_tag(owner, row.id),
            };
            let orphans = crate::process::tagged_processes(&tag);
            if !orphans.is_empty() {
                tracing::warn!(
                    "🧹 run {} of {}: ending {} process(es) its dead owner left behind",
                    row.id,
                    row.job,
                    orphans.len()
                );
                crate::process::terminate(crate::process::Target::Tagged(&tag), grace).await;
            }
        }
        // Its result survived it: the run is recorded as it really went.
        let left = row
            .run_uid
            .as_deref()
            .and_then(|uid| crate::runner::judge_left_result(config, &row.job, uid));
        let (outcome, end) = left.unwrap_or_else(|| {
            (
                crate::history::Outcome::Abandoned,
                crate::history::RunEnd {
                    error: Some("the process that ran it died".to_string()),
                    ..Default::default()
                },
            )
        });
        recorder.settle(row.id, row.run_uid.clone(), outcome, end);
        n += 1;
    }
    Ok(n)
}
