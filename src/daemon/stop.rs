//! The stop: runs ended within the graces, their rows written.

use std::collections::HashMap;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::runner::RunEvent;
use decide::JobState;

use super::*;

impl Dispatcher {
    pub(super) async fn shutdown(
        &mut self,
        signal_name: &str,
        jobs: &mut [JobState],
        events: &mut mpsc::UnboundedReceiver<RunEvent>,
        sigterm: &mut tokio::signal::unix::Signal,
        sigint: &mut tokio::signal::unix::Signal,
    ) {
        for state in jobs.iter_mut() {
            state.pending.clear();
            state.retry = None;
        }
        // Stuck threads cannot be waited for: they end with the process.
        let running = |jobs: &[JobState]| {
            jobs.iter()
                .filter(|s| s.running.as_ref().is_some_and(|r| !r.stuck))
                .count()
        };
        let n = running(jobs);
        if n == 0 {
            tracing::info!("🛑 {signal_name}: stopping (no job running)");
            return;
        }
        let grace = self.config.scheduler.shutdown_grace;
        tracing::info!(
            "🛑 {signal_name}: stopping; waiting up to {} for {n} running job(s) (a second signal ends them now)",
            crate::fmt::duration(grace)
        );
        let deadline = Instant::now() + grace;
        let mut cancelled = false;
        let cancel_all = |cancels: &HashMap<String, watch::Sender<Option<String>>>, why: &str| {
            for tx in cancels.values() {
                let _ = tx.send(Some(why.to_string()));
            }
        };
        while running(jobs) > 0 {
            tokio::select! {
                Some(event) = events.recv() => {
                    if let RunEvent::Finished(report) = event {
                        log_report(&report);
                        if let Some(state) = find(jobs, &report.job) {
                            if report.stuck {
                                if let Some(r) = state.running.as_mut() { r.stuck = true; }
                            } else {
                                state.running = None;
                            }
                        }
                        if !report.stuck {
                            // Cancelled by the shutdown, on purpose: nobody runs it again.
                            self.release(&report, true);
                        }
                    }
                }
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                _ = tokio::time::sleep_until(deadline), if !cancelled => {
                    tracing::warn!("⏱️  shutdown grace is over: ending {} running job(s)", running(jobs));
                    cancelled = true;
                    cancel_all(&self.cancels, "the scheduler is shutting down");
                }
                _ = sigterm.recv(), if !cancelled => {
                    tracing::warn!("🛑 second signal: ending running jobs now");
                    cancelled = true;
                    cancel_all(&self.cancels, "the scheduler is shutting down (second signal)");
                }
                _ = sigint.recv(), if !cancelled => {
                    tracing::warn!("🛑 second signal: ending running jobs now");
                    cancelled = true;
                    cancel_all(&self.cancels, "the scheduler is shutting down (second signal)");
                }
            }
        }
    }
}

/// After the loop: the runs ended (`shutdown`), the last words said, the journal uploaded and
/// the node gone (cluster), the history closed. An error when rows could not be written.
pub(super) async fn finish(
    mut d: Dispatcher,
    mut jobs: Vec<JobState>,
    mut inbox: Inbox,
    recorder: Recorder,
    signal_name: &str,
) -> Result<()> {
    crate::health::notify_systemd("STOPPING=1");
    d.shutdown(
        signal_name,
        &mut jobs,
        &mut inbox.events,
        &mut inbox.sigterm,
        &mut inbox.sigint,
    )
    .await;
    while d.tasks.join_next().await.is_some() {}
    recorder.daemon_stopped(Utc::now());
    d.obs.daemon(
        &d.config,
        format!("🔴 hedge-scheduler stopped ({signal_name})"),
    );
    // The last words go out (bounded): a stop is worth hearing about.
    let drain = d.obs.outbox.drain();
    let _ = tokio::task::spawn_blocking(move || drain.wait(Duration::from_secs(3))).await;
    if let Some(node) = &d.node {
        // The journal's last rows go up, then the node says it stopped: peers take the next
        // slots without waiting for its lease.
        let r = recorder.clone();
        let _ = tokio::task::spawn_blocking(move || r.flush(Duration::from_secs(2))).await;
        node.leave().await;
    }
    let spill = recorder.spill_path().map(Path::to_path_buf);
    let left = tokio::task::spawn_blocking(move || recorder.close(Duration::from_secs(10)))
        .await
        .unwrap_or(0);
    let _ = std::fs::remove_file(crate::health::state_path(&d.config.scheduler.log_dir));
    if left > 0 {
        // Not a clean stop: say so by the exit code, and where the rows are.
        return Err(crate::error::Error::Unwritable(match spill {
            Some(spill) => format!(
                "stopped with {left} history write(s) the database refused; they are kept in `{}` and written at the next start",
                spill.display()
            ),
            None => {
                format!("stopped with {left} history write(s) the database refused: they are lost")
            }
        }));
    }
    tracing::info!("👋 hedge-scheduler stopped");
    Ok(())
}
