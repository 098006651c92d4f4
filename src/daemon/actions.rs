//! What the loop does with a tick's actions: runs started (their claim first, in a cluster),
//! slots skipped, and the end of each run.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::history::Outcome;
use crate::runner::{self, OnBusy, RunEvent, RunReport, RunRequest};
use decide::{Action, JobState};

use super::*;

impl Dispatcher {
    /// Carries out the decisions for one job.
    pub(super) fn dispatch(&mut self, state: &JobState, actions: Vec<Action>) {
        let tz = self.calendar.tz();
        let hms = |t: DateTime<Utc>| t.with_timezone(&tz).format("%H:%M:%S").to_string();
        let job = &state.job.id;
        for action in actions {
            match action {
                Action::Start(p) => self.start(state, p),
                Action::Skip {
                    trigger,
                    slot,
                    reason,
                } => {
                    tracing::info!("⏭️  {job} skipped: {reason}");
                    // In a cluster, say where the run that holds the job is.
                    let reason = match &self.node {
                        Some(n) => format!("node {}: {reason}", n.config.node),
                        None => reason,
                    };
                    self.record_skip(job, trigger, slot, reason, None);
                }
                Action::Gap {
                    first,
                    last,
                    count,
                    reason,
                } => {
                    tracing::warn!(
                        "⏰ {job}: {} missed ({} … {}): {reason}",
                        crate::fmt::n(count, "slot"),
                        hms(first),
                        hms(last)
                    );
                    self.gap(state, (first, last, count), reason);
                }
                Action::Cancel(reason) => {
                    tracing::info!("🔁 {job}: {reason}");
                    if let Some(tx) = self.cancels.get(job) {
                        let _ = tx.send(Some(reason));
                    }
                }
                Action::Retry { at, attempt } => tracing::info!(
                    "🔁 {job} will retry at {} (attempt {attempt}/{})",
                    hms(at),
                    state.job.retry.attempts
                ),
                Action::NoRetry { run_uid, error } => {
                    tracing::info!("   {job}: {error}");
                    self.env.recorder.set_error(&run_uid, error);
                }
                Action::Paused { first, last, count } => {
                    tracing::info!("⏸️  {job}: slot at {} held back (paused)", hms(last));
                    self.paused(state, (first, last, count));
                }
                Action::Resumed => {
                    tracing::info!("▶️  {job}: the pause is over");
                    self.pause_rows.remove(job);
                }
            }
        }
    }

    /// Records the slots from `first` to `last` (`count` of them) missed. In a cluster a slot
    /// still within its bound is not this node's to record as missed: a live node may still
    /// claim it (this one started, or came back, just after it). The gap then ends at the slot
    /// before; the gap audit records that one if nobody runs it.
    fn gap(
        &mut self,
        state: &JobState,
        (first, last, count): (DateTime<Utc>, DateTime<Utc>, u64),
        reason: String,
    ) {
        let (last, count) = if self.node.is_some()
            && crate::cluster::valid_until(&state.job, &self.calendar, last) > self.now()
        {
            match state.job.trigger.previous_fire_before(&self.calendar, last) {
                Some(prev) if count > 1 && prev >= first => (prev, count - 1),
                _ => return,
            }
        } else {
            (last, count)
        };
        // In a cluster the newest slot any node dealt with is the start: slots missed since
        // were missed by every node.
        let reason = match &self.node {
            Some(_) => reason.replace(
                "missed while the scheduler was not running",
                "missed: no node of the cluster was alive",
            ),
            None => reason,
        };
        self.record_skip(
            &state.job.id,
            crate::history::TriggerKind::Schedule,
            first,
            reason,
            Some((count, last)),
        );
    }

    /// The paused job's slots from `first` to `last` (`count`), held back: one row for the
    /// whole pause, rewritten as it grows.
    fn paused(
        &mut self,
        state: &JobState,
        (first, last, count): (DateTime<Utc>, DateTime<Utc>, u64),
    ) {
        let job = &state.job.id;
        let recorder = &self.env.recorder;
        let new = !self.pause_rows.contains_key(job);
        let (id, uid) = self
            .pause_rows
            .entry(job.clone())
            .or_insert_with(|| (recorder.next_id(), crate::history::new_uid()))
            .clone();
        if new {
            self.obs
                .metrics
                .skipped_row(job, crate::history::TriggerKind::Schedule);
        }
        let reason = match state.pause.as_ref().and_then(|p| p.until) {
            Some(until) => format!(
                "paused until {} (`hedge-scheduler pause`)",
                until
                    .with_timezone(&self.calendar.tz())
                    .format("%Y-%m-%d %H:%M %Z")
            ),
            None => "paused (`hedge-scheduler pause`) until `resume`".to_string(),
        };
        recorder.gap_row(id, &uid, job, first, last, count, &reason);
    }

    /// Cluster mode: a new slot is claimed first (a retry or a takeover already owns it; a
    /// backfill runs where it was asked for, its past slot's claim long settled).
    fn claim_for(
        &self,
        state: &JobState,
        p: &decide::Pending,
    ) -> Option<(crate::cluster::Node, crate::cluster::ClaimRequest)> {
        let node = self.node.as_ref()?;
        if p.tag.is_some() || p.trigger == crate::history::TriggerKind::Backfill {
            return None;
        }
        let catch_up = p.trigger == crate::history::TriggerKind::CatchUp;
        Some((
            node.clone(),
            crate::cluster::ClaimRequest {
                job: state.job.id.clone(),
                slot: p.scheduled_at,
                manual: p.trigger == crate::history::TriggerKind::Manual,
                // A missed slot being caught up is past its own bound already: it may wait its
                // turn behind the backlog for as long as a run may take.
                valid_until: if catch_up {
                    self.now() + chrono::Duration::from_std(state.job.timeout).unwrap_or_default()
                } else {
                    crate::cluster::valid_until(&state.job, &self.calendar, p.scheduled_at)
                },
                overlap: state.job.overlap,
                // A backlog is worked off in order, cluster-wide too: a catch-up waits for the
                // job's run on another node instead of being skipped by it.
                wait: catch_up,
                primary_runs_without_db: self.config.database_loss(&state.job)
                    == crate::config::DatabaseLoss::Primary,
            },
        ))
    }

    /// Starts a run of the job now (the state already holds it as running).
    pub(super) fn start(&mut self, state: &JobState, p: decide::Pending) {
        let (cancel_tx, cancel_rx) = watch::channel(None);
        self.cancels.insert(state.job.id.clone(), cancel_tx);
        let req = RunRequest {
            job: Arc::clone(&state.job),
            trigger: p.trigger,
            scheduled_at: p.scheduled_at,
            attempt: p.attempt,
            // A slot (or a retry) starts at its instant exactly, however early the loop woke.
            not_before: Some(p.at.unwrap_or(p.scheduled_at)),
            tag: p.tag.clone(),
        };
        let claim = self.claim_for(state, &p);
        let env = Arc::clone(&self.env);
        let events = self.events.clone();
        let node_for_start = self.node.clone();
        let (job, trigger, scheduled_at, attempt) = (
            state.job.id.clone(),
            req.trigger,
            req.scheduled_at,
            req.attempt,
        );
        let run = tokio::spawn({
            let events = events.clone();
            async move {
                let mut req = req;
                if let Some((node, claim)) = claim {
                    match cluster_glue::claim(&env, &node, claim, &req).await {
                        Ok(tag) => {
                            // A clock ahead of the database's waits that much more, so the run
                            // starts at the slot's instant by the database's clock.
                            req.not_before =
                                req.not_before.map(|t| t + cluster_glue::clock_shift(&node));
                            let _ = events.send(RunEvent::Claimed {
                                job: req.job.id.clone(),
                                tag: tag.clone(),
                            });
                            req.tag = Some(tag);
                        }
                        Err(report) => return *report,
                    }
                }
                cluster_glue::sleep_until_near(req.not_before).await;
                if let Some(node) = &node_for_start
                    && let Some(report) = cluster_glue::may_start(&env, node, &req)
                {
                    return *report;
                }
                runner::run(&env, req, cancel_rx, Some(events), OnBusy::Skip).await
            }
        });
        // A run that panics must still free its job: report it as failed.
        self.tasks.spawn(async move {
            let report = match run.await {
                Ok(report) => report,
                Err(e) => {
                    tracing::error!(job = %job, "the run's task failed: {e}");
                    let mut r =
                        RunReport::new(job, trigger, scheduled_at, attempt, Outcome::Failed);
                    r.error = Some(format!("internal error: {e}"));
                    r
                }
            };
            let _ = events.send(RunEvent::Finished(Box::new(report)));
        });
    }

    pub(super) fn on_event(&mut self, jobs: &mut Vec<JobState>, event: RunEvent) {
        let now = self.now();
        match event {
            RunEvent::Started {
                job,
                run_id,
                uid,
                pid,
            } => {
                if let Some(state) = find(jobs, &job) {
                    self.obs.run_started(&self.config, &state.job, run_id, &uid);
                    if let Some(r) = state.running.as_mut() {
                        r.run_id = Some(run_id);
                        r.pid = pid;
                    }
                }
            }
            RunEvent::Finished(report) => {
                log_report(&report);
                let Some(i) = jobs.iter().position(|s| s.job.id == report.job) else {
                    self.obs.run_ended(&self.config, &report, true);
                    return;
                };
                let ended = decide::Ended {
                    run_id: report.run_id,
                    run_uid: report.run_uid.clone(),
                    scheduled_at: report.scheduled_at,
                    attempt: report.attempt,
                    outcome: report.outcome,
                    error: report.error.clone(),
                    stuck: report.stuck,
                    tag: report.tag.clone(),
                };
                let actions = decide::finished(&mut jobs[i], &ended, &self.calendar, now, jitter());
                self.obs
                    .run_ended(&self.config, &report, jobs[i].retry.is_none());
                // The slot is free cluster-wide once its run ended for good (a retry keeps it;
                // a stuck thread keeps it until it returns).
                if jobs[i].retry.is_none() && !report.stuck {
                    self.release(&report, report.outcome == Outcome::Success);
                }
                self.dispatch(&jobs[i], actions);
                self.drop_retired(jobs);
            }
            RunEvent::Claimed { job, tag } => {
                if let Some(r) = find(jobs, &job).and_then(|s| s.running.as_mut()) {
                    r.tag = Some(tag);
                }
            }
            RunEvent::Released { job } => {
                if let Some(i) = jobs.iter().position(|s| s.job.id == job) {
                    let actions = decide::released(&mut jobs[i], now);
                    self.dispatch(&jobs[i], actions);
                    self.drop_retired(jobs);
                }
            }
        }
    }

    /// Cluster mode: the slot's claim ends: `done`, or `returned` when the run did not complete
    /// and was ended for the lease (this daemon was silent or cut off past its trust, and the
    /// keeper or `on_database_loss` ended its job; or it was declared dead meanwhile). A
    /// returned slot is run again by the cluster's sweep while it is still worth running; a run
    /// that completed is never run again (nemesis A5).
    pub(super) fn release(&self, report: &RunReport, completed: bool) {
        let (Some(node), Some(tag)) = (&self.node, report.tag.as_ref()) else {
            return;
        };
        let Some(fence) = tag.fence else { return };
        let view = node.view();
        // Ended for the lease: the keeper ended it while this daemon was silent, or
        // `on_database_loss` did, or the node was declared dead meanwhile.
        let ended_from_outside = matches!(report.outcome, Outcome::Cancelled | Outcome::Crashed);
        let for_the_lease = ended_from_outside
            && (view.epoch != Some(tag.epoch)
                || view.last_lapse.is_some_and(|t| t >= report.started_at));
        let state = if completed || !for_the_lease {
            "done"
        } else {
            "returned"
        };
        node.release(&report.job, report.scheduled_at, fence, state);
    }

    /// Records a slot (or a gap of slots from `slot`) that does not run. In a cluster, once for
    /// all nodes: the node that marks the slot `skipped` in the database records it.
    pub(super) fn record_skip(
        &self,
        job: &str,
        trigger: crate::history::TriggerKind,
        slot: DateTime<Utc>,
        reason: String,
        gap: Option<(u64, DateTime<Utc>)>,
    ) {
        let recorder = self.env.recorder.clone();
        let notice = self.obs.missed_notice();
        let (config, count) = (Arc::clone(&self.config), gap.map_or(1, |(n, _)| n));
        let told = move |job: &str, reason: &str| {
            if let Some(j) = config.job(job) {
                notice.send(&config, j, trigger, slot, count, reason);
            }
        };
        match &self.node {
            // A taken-over slot is ours already: its row is ours to write.
            Some(node) if trigger != crate::history::TriggerKind::Takeover => {
                let node = node.clone();
                let job = job.to_string();
                // A gap is marked at its last slot: a node that starts later reads that as the
                // newest slot dealt with, so its own gap (if any) begins after it and never
                // covers the same slots under another first slot.
                let mark = gap.map_or(slot, |(_, last)| last);
                tokio::spawn(async move {
                    // Said by the one node that records it.
                    if node.skip_slot(&job, mark).await {
                        recorder.skipped(&job, trigger, slot, &reason, gap);
                        told(&job, &reason);
                    }
                });
            }
            _ => {
                recorder.skipped(job, trigger, slot, &reason, gap);
                told(job, &reason);
            }
        }
    }
}
