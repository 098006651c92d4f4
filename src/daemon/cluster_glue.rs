//! Cluster mode, as a run's task sees it: claim the slot (or apply `on_database_loss` when the
//! database cannot be reached), then start at the slot's instant.

use std::time::Duration;

use chrono::{DateTime, Utc};

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
    let not_run = |busy: String, taken_by: Option<String>| {
        let mut r = RunReport::new(
            job.id.clone(),
            req.trigger,
            req.scheduled_at,
            req.attempt,
            Outcome::Skipped,
        );
        r.busy = Some(busy);
        r.taken_by = taken_by;
        Box::new(r)
    };
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
            env.record_skipped(&job.id, req.trigger, req.scheduled_at, &why);
            Err(not_run(why, None))
        }
        Claim::Unreachable(why) => {
            let policy = env.config.database_loss(job);
            let primary = node.config.priority == 0;
            match (policy, primary) {
                (DatabaseLoss::Run, _) | (DatabaseLoss::Primary, true) => {
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
                    Ok(tag)
                }
                (DatabaseLoss::Primary, false) | (DatabaseLoss::Skip, _) => {
                    let reason = format!(
                        "cluster database unreachable ({why}); on_database_loss = \"{}\"{}",
                        policy.as_str(),
                        if policy == DatabaseLoss::Primary {
                            ": only the priority-0 node runs"
                        } else {
                            ""
                        }
                    );
                    env.record_skipped(&job.id, req.trigger, req.scheduled_at, &reason);
                    Err(not_run(reason, None))
                }
            }
        }
    }
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
