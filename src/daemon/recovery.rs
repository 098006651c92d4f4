//! Start-up: rows left `running` by a dead daemon are abandoned and their processes ended.

use std::time::Duration;

use crate::error::Result;
use crate::history::{History, Recorder};

/// Rows left `running` by a process that is gone become `abandoned`, and whatever their
/// processes left running is ended (found by the run's tag, so a reused PID is never hit);
/// returns how many.
pub(super) fn abandon_dead_runs(
    history: &History,
    recorder: &Recorder,
    grace: Duration,
) -> Result<usize> {
    let mut n = 0;
    for row in history.running()? {
        let owner_alive = row.owner_pid.is_some_and(crate::process::scheduler_alive);
        if owner_alive {
            continue;
        }
        if let Some(owner) = row.owner_pid.and_then(|p| u32::try_from(p).ok()) {
            let tag = crate::runner::run_tag(owner, row.id);
            let orphans = crate::process::tagged_processes(&tag);
            if !orphans.is_empty() {
                tracing::warn!(
                    "🧹 run {} of {}: ending {} process(es) its dead owner left behind",
                    row.id,
                    row.job,
                    orphans.len()
                );
                // Before the runtime runs anything else: a plain blocking wait is fine here.
                end_tagged_now(&tag, grace);
            }
        }
        recorder.abandon(row.id, "the process that ran it died".to_string());
        n += 1;
    }
    Ok(n)
}

/// Ends the processes tagged `tag`: SIGTERM, up to `grace`, SIGKILL (blocking; start-up only).
fn end_tagged_now(tag: &str, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for pid in crate::process::tagged_processes(tag) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline && !crate::process::tagged_processes(tag).is_empty()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in crate::process::tagged_processes(tag) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
