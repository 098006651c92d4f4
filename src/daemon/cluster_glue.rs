//! Cluster mode, as a run's task sees it: claim the slot (or apply `on_database_loss` when the
//! database cannot be reached), then start at the slot's instant.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::*;
use crate::cluster::{Claim, ClaimRequest, Node};
use crate::config::DatabaseLoss;
use crate::history::{Outcome, RunTag};
use crate::runner::{RunEnv, RunReport, RunRequest};

/// How close to its instant a run's task hands over to the runner (which waits the rest on a
/// blocking thread, finely).
const NEAR: Duration = Duration::from_millis(20);

/// Claims the request's slot: the tag to run under, or the report of a slot not run here (and
/// recorded, when this node must record it).
pub(super) async fn claim(
    env: &RunEnv,
    node: &Node,
    claim: ClaimRequest,
    req: &RunRequest,
) -> Result<RunTag, Box<RunReport>> {
    let job = &req.job;
    let answer = node.claim(claim).await;
    let not_run = |busy: String, taken_by: Option<String>| not_run(req, busy, taken_by);
    match answer {
        Claim::Won(tag) => Ok(tag),
        Claim::Taken { by } => Err(not_run(format!("the slot runs on node {by}"), Some(by))),
        Claim::Busy { holder, recorded } => {
            let reason = format!("previous {holder}");
            if recorded {
                env.record_skipped(&job.id, req.trigger, req.scheduled_at, &reason);
            }
            Err(not_run(reason, None))
        }
        Claim::Expired(why) => {
            // One row cluster-wide, under the claim's guards: the node that writes the slot's
            // row records it (others may have given up on the same slot).
            if node.skip_slot(&job.id, req.scheduled_at).await {
                env.record_skipped(&job.id, req.trigger, req.scheduled_at, &why);
            }
            Err(not_run(why, None))
        }
        Claim::Unreachable(why) => unreachable(env, node, req, &why),
    }
}

/// The slot's claim could not reach the database: `on_database_loss` decides. Under `run`, and
/// under `primary` on a primary that may still be the primary, the slot runs here without a
/// claim (degraded); otherwise it is recorded skipped, with the reason.
fn unreachable(
    env: &RunEnv,
    node: &Node,
    req: &RunRequest,
    why: &str,
) -> Result<RunTag, Box<RunReport>> {
    let job = &req.job;
    let policy = env.config.database_loss(job);
    // The primary runs alone only if it may still be the primary: it lost the database while
    // its lease held, its incarnation joined before the slot's first try, and it was not
    // standing by for its clock then (its peers, which read its last offset, run its slots
    // meanwhile: the nemesis, seed 22).
    let view = node.view();
    let first_try = req.scheduled_at - node.config.claim_lead();
    let primary = node.config.priority == 0
        && (policy != DatabaseLoss::Primary
            || (view.may_run_alone(node.config.lease, first_try) && !view.standing_by_for_clock));
    if policy == DatabaseLoss::Run || (policy == DatabaseLoss::Primary && primary) {
        node.mark_degraded(&job.id, req.scheduled_at);
        tracing::warn!(
            "⚠️  {}: cluster database unreachable ({why}): running the slot here without a claim (on_database_loss = \"{}\")",
            job.id,
            policy.as_str()
        );
        let mut tag = env.recorder.tag().unwrap_or_else(|| RunTag {
            node: node.config.node.clone(),
            epoch: 0,
            fence: None,
            degraded: true,
        });
        tag.fence = None;
        tag.degraded = true;
        return Ok(tag);
    }
    let reason = format!(
        "cluster database unreachable ({why}); on_database_loss = \"{}\"{}",
        policy.as_str(),
        match policy {
            DatabaseLoss::Primary if node.config.priority == 0 => {
                not_alone_because(&view, node.config.lease)
            }
            DatabaseLoss::Primary => ": only the priority-0 node runs",
            _ => "",
        }
    );
    env.record_skipped(&job.id, req.trigger, req.scheduled_at, &reason);
    Err(not_run(req, reason, None))
}

/// The report of a slot not run here: why (`busy`), and the node it runs on, if another.
fn not_run(req: &RunRequest, busy: String, taken_by: Option<String>) -> Box<RunReport> {
    let mut r = RunReport::new(
        req.job.id.clone(),
        req.trigger,
        req.scheduled_at,
        req.attempt,
        Outcome::Skipped,
    );
    r.busy = Some(busy);
    r.taken_by = taken_by;
    Box::new(r)
}

/// Why a primary runs a `primary` job's slot not alone without the database.
fn not_alone_because(view: &crate::cluster::View, lease: Duration) -> &'static str {
    if view.standing_by_for_clock {
        ": this primary was standing by for its clock when it lost the database (its peers run its slots)"
    } else if view.lease_ran_out_first(lease) {
        ": this primary's lease ran out before it found the database gone (it was stopped or starved): a standby may have the slot, so it runs nothing alone until it renews"
    } else {
        ": this primary (re)joined the cluster after the slot's first try, or has not joined yet: a standby may have run the slot while it was away, so it runs nothing alone until it reaches the database"
    }
}

/// Whether a claimed slot may still start now: a `skip` job's run does not start once this node
/// no longer trusts its lease (it was stopped or cut off since the claim, and the slot may be
/// given to another node: the model's trace of two fenced runs at once). Its claim is given back
/// (`returned`, for the sweep to run it where the lease holds) and the report says why.
pub(super) fn may_start(env: &RunEnv, node: &Node, req: &RunRequest) -> Option<Box<RunReport>> {
    let tag = req.tag.as_ref()?;
    let fence = tag.fence?;
    if env.config.database_loss(&req.job) != DatabaseLoss::Skip {
        return None;
    }
    let trusted = node
        .view()
        .trusted_until
        .is_some_and(|u| tokio::time::Instant::now() < u);
    if trusted {
        return None;
    }
    let why = "not started: this node no longer trusts its cluster lease (on_database_loss = \"skip\"); the slot is given back".to_string();
    tracing::warn!("⚠️  {}: {why}", req.job.id);
    node.release(&req.job.id, req.scheduled_at, fence, "returned");
    let mut r = RunReport::new(
        req.job.id.clone(),
        req.trigger,
        req.scheduled_at,
        req.attempt,
        Outcome::Skipped,
    );
    r.busy = Some(why);
    Some(Box::new(r))
}

/// Sleeps until shortly before `at` (a cluster node claims its slots well ahead of them).
pub(super) async fn sleep_until_near(at: Option<DateTime<Utc>>) {
    let Some(at) = at else { return };
    let Ok(ahead) = (at - Utc::now()).to_std() else {
        return;
    };
    if ahead > NEAR {
        tokio::time::sleep(ahead - NEAR).await;
    }
}

/// How much later than the cluster's time this host's wall clock reads: a run starts at its
/// slot's instant by the database's clock, which is this much later by this host's (negative
/// when this host's clock is behind; none while the database's own clock is the odd one).
pub(super) fn clock_shift(node: &Node) -> chrono::Duration {
    let view = node.view();
    if view.db_clock_outlier {
        return chrono::Duration::zero();
    }
    Utc::now() - view.now()
}

/// The gap audit's next slots of a job, pure: those after `from` whose bound (`valid_until`) is
/// more than `margin` before `now` (no node claims them any more), at most `max`; and the instant
/// audited up to (the last of them, or `from`).
pub(super) fn audit_slots(
    job: &crate::config::Job,
    calendar: &crate::calendar::Calendar,
    from: DateTime<Utc>,
    now: DateTime<Utc>,
    margin: chrono::Duration,
    max: usize,
) -> (Vec<DateTime<Utc>>, DateTime<Utc>) {
    let mut slots = Vec::new();
    let mut upto = from;
    while slots.len() < max {
        let Some(next) = job.trigger.next_fire_after(calendar, upto) else {
            break;
        };
        if crate::cluster::valid_until(job, calendar, next) + margin > now {
            break;
        }
        slots.push(next);
        upto = next;
    }
    (slots, upto)
}

impl Dispatcher {
    /// Cluster mode, at every health check: the slots no node claimed, recorded or ran (all
    /// nodes' clocks off, a claim lost with its node before it was written, …) are recorded as
    /// missed, once cluster-wide, and alerted, so a lost slot is never silent.
    pub(super) fn audit_gaps(&mut self, jobs: &[JobState]) {
        let Some(node) = &self.node else { return };
        let now = self.now();
        // Past a slot's bound no node claims it any more; two leases more let every node's
        // journal (what it ran or skipped while cut off) reach the cluster first.
        let margin = chrono::Duration::from_std(node.config.lease * 2).unwrap_or_default();
        for state in jobs {
            let id = state.job.id.clone();
            let from = *self.audited.entry(id.clone()).or_insert(now);
            if state.pause.is_some() {
                // Held back here on purpose: not this node's to call missed.
                self.audited.insert(id, now);
                continue;
            }
            let (slots, upto) =
                cluster_glue::audit_slots(&state.job, &self.calendar, from, now, margin, 500);
            if slots.is_empty() {
                continue;
            }
            self.audited.insert(id.clone(), upto);
            let (node, recorder) = (node.clone(), self.env.recorder.clone());
            let (config, notice) = (Arc::clone(&self.config), self.obs.missed_notice());
            tokio::spawn(async move {
                let gaps = node.audit(&id, slots).await;
                let (Some(first), Some(last)) = (gaps.first().copied(), gaps.last().copied())
                else {
                    return;
                };
                let reason = "missed: no node of the cluster claimed it (found by the gap audit)";
                tracing::warn!(
                    "⏰ {id}: {} no node claimed ({} … {})",
                    crate::fmt::n(gaps.len(), "slot"),
                    crate::fmt::instant(first),
                    crate::fmt::instant(last)
                );
                for slot in &gaps {
                    recorder.skipped(
                        &id,
                        crate::history::TriggerKind::Schedule,
                        *slot,
                        reason,
                        None,
                    );
                }
                if let Some(j) = config.job(&id) {
                    notice.send(
                        &config,
                        j,
                        crate::history::TriggerKind::Schedule,
                        first,
                        gaps.len() as u64,
                        reason,
                    );
                }
            });
        }
    }

    /// A dead node's slot is ours to run now (its claim already moved to us): run it, or give
    /// it back `skipped` if this node does not have the job or the job's overlap skips it.
    fn takeover(
        &mut self,
        jobs: &mut [JobState],
        (job, slot, attempt): (String, DateTime<Utc>, u32),
        tag: crate::history::RunTag,
        reason: &str,
    ) {
        let Some(i) = jobs.iter().position(|s| s.job.id == job) else {
            if let Some(node) = &self.node
                && let Some(fence) = tag.fence
            {
                node.release(&job, slot, fence, "skipped");
            }
            return;
        };
        tracing::warn!(
            "🪂 {job}: {reason}; running its slot at {} here",
            slot.with_timezone(&self.calendar.tz()).format("%H:%M:%S")
        );
        let pending = decide::Pending {
            trigger: crate::history::TriggerKind::Takeover,
            scheduled_at: slot,
            attempt,
            at: None,
            tag: Some(tag.clone()),
        };
        let actions = decide::takeover(&mut jobs[i], pending, self.now(), self.calendar.tz());
        if actions.iter().any(|a| matches!(a, Action::Skip { .. }))
            && let (Some(node), Some(fence)) = (&self.node, tag.fence)
        {
            node.release(&job, slot, fence, "skipped");
        }
        self.dispatch(&jobs[i], actions);
    }

    /// The node stopped trusting its lease: runs of jobs that must not run without the
    /// database end (`on_database_loss`), unless a renewal (or a claim, which renews) came
    /// since the lapse: then the lease holds, and a run claimed meanwhile goes on (nemesis
    /// A10).
    fn trust_lost(&self, jobs: &[JobState]) {
        if self.node.as_ref().is_some_and(|n| {
            n.view()
                .trusted_until
                .is_some_and(|u| tokio::time::Instant::now() < u)
        }) {
            return;
        }
        let primary = self.node.as_ref().is_some_and(|n| n.config.priority == 0);
        for state in jobs {
            let keep = match self.config.database_loss(&state.job) {
                crate::config::DatabaseLoss::Run => true,
                crate::config::DatabaseLoss::Primary => primary,
                crate::config::DatabaseLoss::Skip => false,
            };
            // Only runs that started: a run still claiming its slot learns from the claim
            // whether the lease holds (a cancel sent now would end it at once).
            if !keep
                && started(state)
                && let Some(tx) = self.cancels.get(&state.job.id)
            {
                let _ = tx.send(Some(
                    "lost the cluster lease (the database is unreachable): on_database_loss ends the run".to_string(),
                ));
            }
        }
    }

    /// What the cluster's coordinator tells the loop.
    pub(super) fn on_cluster(&mut self, jobs: &mut [JobState], event: crate::cluster::Event) {
        use crate::cluster::Event;
        match event {
            Event::Takeover {
                job,
                slot,
                attempt,
                tag,
                reason,
            } => self.takeover(jobs, (job, slot, attempt), tag, &reason),
            Event::Cancel { job, reason } => {
                tracing::info!("🔁 {job}: {reason}");
                if let Some(tx) = self.cancels.get(&job) {
                    let _ = tx.send(Some(reason));
                }
            }
            Event::TrustLost => self.trust_lost(jobs),
            Event::LeaseLost { kept } => {
                for state in jobs.iter() {
                    // Only runs whose slot another node took over end: a run still claiming its
                    // slot claims it as the node's next incarnation, a run without a fence
                    // (without the database) was never the cluster's to give, and a slot the
                    // new incarnation adopted is still this node's.
                    let taken = state
                        .running
                        .as_ref()
                        .and_then(|r| r.tag.as_ref())
                        .and_then(|t| t.fence)
                        .is_some_and(|f| !kept.contains(&f));
                    if started(state)
                        && taken
                        && let Some(tx) = self.cancels.get(&state.job.id)
                    {
                        let _ = tx.send(Some(
                            "this node lost its cluster lease: the slot belongs to another node now"
                                .to_string(),
                        ));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("instant")
            .with_timezone(&Utc)
    }

    #[test]
    fn the_gap_audit_takes_the_slots_no_node_can_still_claim() {
        let src = "[scheduler]\nexchange = \"XNYS\"\nlog_dir = \"logs\"\nhistory = \"logs/h.sqlite3\"\nlegacy_scripts = []\n\n[python]\nexecutable = \"python3\"\n\n[jobs.j]\nentry = \"m:f\"\nschedule = \"*/10 * * * * *\"\nmarket_hours = false\n";
        let c =
            crate::config::Config::parse(std::path::Path::new("/p/c.toml"), src).expect("config");
        let cal = c.calendar();
        let job = &c.jobs[0];
        let margin = chrono::Duration::seconds(6);
        // (from, now, max) → (slots, audited up to)
        let rows: &[(&str, &str, usize, &[&str], &str)] = &[
            // 10:00:10's bound is 10:00:20, + 6 s = 10:00:26: not before.
            (
                "2026-12-07T10:00:00Z",
                "2026-12-07T10:00:25Z",
                10,
                &[],
                "2026-12-07T10:00:00Z",
            ),
            (
                "2026-12-07T10:00:00Z",
                "2026-12-07T10:00:26Z",
                10,
                &["2026-12-07T10:00:10Z"],
                "2026-12-07T10:00:10Z",
            ),
            (
                "2026-12-07T10:00:00Z",
                "2026-12-07T10:01:00Z",
                10,
                // 10:00:40's bound + 6 s is 10:00:56; 10:00:50's is 10:01:06.
                &[
                    "2026-12-07T10:00:10Z",
                    "2026-12-07T10:00:20Z",
                    "2026-12-07T10:00:30Z",
                    "2026-12-07T10:00:40Z",
                ],
                "2026-12-07T10:00:40Z",
            ),
            // At most `max` at a time: the rest next time.
            (
                "2026-12-07T10:00:00Z",
                "2026-12-07T10:01:00Z",
                2,
                &["2026-12-07T10:00:10Z", "2026-12-07T10:00:20Z"],
                "2026-12-07T10:00:20Z",
            ),
        ];
        for (from, now, max, want, upto) in rows {
            let (slots, to) = audit_slots(job, &cal, t(from), t(now), margin, *max);
            let want: Vec<DateTime<Utc>> = want.iter().map(|w| t(w)).collect();
            assert_eq!((slots, to), (want, t(upto)), "{from} {now}");
        }
    }
}
