//! Sweep and takeover: dead nodes, their slots run again (only when the process that claimed
//! them is gone) or abandoned, cancel requests, pruning.

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::connection::*;
use super::*;
use crate::history::RunTag;

impl Coordinator {
    /// Dead incarnations' live slots: taken over (rerun) or abandoned.
    pub(super) async fn sweep(&mut self) {
        let (Some(client), Some(_)) = (&self.client, self.epoch) else {
            return;
        };
        let settled = self
            .connected_since
            .is_some_and(|t| t.elapsed() >= self.cfg.lease);
        // Since when each node's process has been absent (its session gone): a process is taken
        // for gone only after two heartbeats of absence, the time a node cut off and back needs
        // to reconnect and hold its lock again (its old session may end first).
        if let Err(e) = call("sweep", client.execute(sql::ABSENCE, &[])).await {
            self.fail(&e);
            return;
        }
        if settled
            && let Err(e) = call(
                "sweep",
                client.execute(sql::SWEEP_DEAD, &[&secs(self.cfg.lease)]),
            )
            .await
        {
            self.fail(&e);
            return;
        }
        match call("sweep", client.query(sql::EXPIRE_MANUAL, &[])).await {
            Ok(rows) => {
                for r in rows {
                    let (job, slot, node): (String, DateTime<Utc>, String) =
                        (r.get(0), r.get(1), r.get(2));
                    let why = format!(
                        "the manual run on node {node} stopped renewing its claim (its process died)"
                    );
                    tracing::warn!("🪦 {job}: {why}");
                    let _ = call(
                        "sweep",
                        client.execute(sql::ABANDON_MANUAL_RUN, &[&job, &slot, &node, &why]),
                    )
                    .await;
                }
            }
            Err(e) => {
                self.fail(&e);
                return;
            }
        }
        let Some(client) = &self.client else { return };
        let dead = match call(
            "sweep",
            client.query(
                "SELECT DISTINCT s.owner_node, s.owner_epoch, coalesce(n.state, 'dead'),
                        n.lease_until, n.epoch
                   FROM slots s LEFT JOIN nodes n ON n.node = s.owner_node
                  WHERE s.state IN ('claimed', 'running', 'queued', 'orphan', 'returned')
                    AND s.kind = 'slot'
                    AND (n.node IS NULL OR n.state <> 'alive' OR n.epoch <> s.owner_epoch
                         OR s.state = 'returned')",
                &[],
            ),
        )
        .await
        {
            Ok(rows) => rows,
            Err(e) => {
                self.fail(&e);
                return;
            }
        };
        let rerun: Vec<String> = self
            .jobs
            .iter()
            .filter(|j| j.takeover == Takeover::Rerun)
            .map(|j| j.id.clone())
            .collect();
        for d in dead {
            if !self.settle(&d, &rerun).await {
                return;
            }
        }
    }

    /// One dead (or superseded) incarnation's slots: run again here, or abandoned, each with
    /// its reason; false when the database failed meanwhile.
    async fn settle(&mut self, d: &tokio_postgres::Row, rerun: &[String]) -> bool {
        let (Some(client), Some(epoch)) = (&self.client, self.epoch) else {
            return false;
        };
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let node: String = d.get(0);
        let dead_epoch: i64 = d.get(1);
        let state: String = d.get(2);
        let lease_until: Option<DateTime<Utc>> = d.get(3);
        let current_epoch: Option<i64> = d.get(4);
        let restarted = current_epoch.is_some_and(|e| e != dead_epoch);
        // A live owner's slots are its own, but those it gave back.
        let owner_alive = state == "alive" && !restarted;
        let reason = settle_reason(&node, dead_epoch, &state, lease_until, restarted);
        // A stopped node's runs were cancelled on purpose: never run again.
        let may_rerun: Vec<&str> = if state == "stopped" && !restarted {
            Vec::new()
        } else {
            rerun.iter().map(String::as_str).collect()
        };
        let taken = match call(
            "takeover",
            client.query(
                sql::TAKE_OVER,
                &[
                    &node,
                    &dead_epoch,
                    &self.cfg.node,
                    &epoch,
                    &pid,
                    &may_rerun,
                    &owner_alive,
                    &secs(self.cfg.heartbeat * 2),
                ],
            ),
        )
        .await
        {
            Ok(rows) => rows,
            Err(e) => {
                self.fail(&e);
                return false;
            }
        };
        let abandoned = match call(
            "takeover",
            client.query(
                sql::ABANDON_SLOTS,
                &[&node, &dead_epoch, &may_rerun, &owner_alive],
            ),
        )
        .await
        {
            Ok(rows) => rows,
            Err(e) => {
                self.fail(&e);
                return false;
            }
        };
        let settled = settled_reasons(
            &reason,
            &self.cfg.node,
            (&taken, &abandoned),
            &may_rerun,
            (state == "stopped", restarted),
        );
        record_settled(client, &node, dead_epoch, &settled).await;
        if !owner_alive {
            abandon_runs(client, &node, dead_epoch, &reason).await;
        }
        if !taken.is_empty() || !abandoned.is_empty() {
            tracing::warn!(
                "🪦 {reason}: {} taken over here, {} abandoned",
                crate::fmt::n(taken.len(), "slot"),
                abandoned.len()
            );
        }
        self.hand_over(taken, epoch, &reason);
        true
    }

    /// Tells the loop of each slot taken over here: it runs it under the new fence.
    fn hand_over(&self, taken: Vec<tokio_postgres::Row>, epoch: i64, reason: &str) {
        for r in taken {
            let job: String = r.get(0);
            let slot: DateTime<Utc> = r.get(1);
            let fence: i64 = r.get(2);
            let attempts: i32 = r.get(3);
            let _ = self.events.send(Event::Takeover {
                job,
                slot,
                attempt: u32::try_from(attempts).unwrap_or(2),
                tag: RunTag {
                    node: self.cfg.node.clone(),
                    epoch,
                    fence: Some(fence),
                    degraded: false,
                },
                reason: reason.to_string(),
            });
        }
    }

    /// Cancel requests for runs of ours (overlap `replace` on another node).
    pub(super) async fn cancel_requests(&mut self) {
        let (Some(client), Some(epoch)) = (&self.client, self.epoch) else {
            return;
        };
        let rows = call(
            "cancel requests",
            client.query(
                "UPDATE slots SET cancel_requested = NULL
                  WHERE owner_node = $1 AND owner_epoch = $2 AND cancel_requested IS NOT NULL
                    AND state IN ('claimed', 'running')
                 RETURNING job, (SELECT cancel_requested FROM slots o
                                  WHERE o.job = slots.job AND o.scheduled_at = slots.scheduled_at)",
                &[&self.cfg.node, &epoch],
            ),
        )
        .await;
        match rows {
            Ok(rows) => {
                for r in rows {
                    let _ = self.events.send(Event::Cancel {
                        job: r.get(0),
                        reason: r.get::<_, Option<String>>(1).unwrap_or_default(),
                    });
                }
            }
            Err(e) => self.fail(&e),
        }
    }

    /// Runs and slots older than `history_retention` go (several nodes may prune at once:
    /// plain deletes, harmless).
    pub(super) async fn prune(&mut self) {
        let Some(client) = &self.client else { return };
        match call(
            "prune",
            client.query_one(sql::PRUNE, &[&secs(self.retention)]),
        )
        .await
        {
            Ok(row) => {
                self.last_prune = Some(Instant::now());
                let (runs, slots): (i64, i64) = (row.get(0), row.get(1));
                if runs + slots > 0 {
                    tracing::info!(
                        "🧹 pruned {} and {} older than {} from the cluster history",
                        crate::fmt::n(runs, "run"),
                        crate::fmt::n(slots, "slot"),
                        humantime::format_duration(self.retention)
                    );
                }
            }
            Err(e) => self.fail(&e),
        }
    }
}

/// The runs of a dead incarnation's settled slots: its running row (if uploaded) ends
/// `abandoned` with the slot's reason, or one is written for it (it died before its row
/// reached the database); the node's own upload, if it comes, takes that one's place.
async fn record_settled(
    client: &tokio_postgres::Client,
    node: &str,
    dead_epoch: i64,
    settled: &[(String, DateTime<Utc>, String)],
) {
    for (job, slot, why) in settled {
        let _ = call(
            "takeover",
            client.execute(sql::ABANDON_RUN, &[&node, &dead_epoch, job, slot, why]),
        )
        .await;
        let _ = call(
            "takeover",
            client.execute(
                sql::ABANDONED_ROW,
                &[
                    &crate::history::new_uid(),
                    job,
                    slot,
                    why,
                    &node,
                    &dead_epoch,
                    &None::<i64>,
                ],
            ),
        )
        .await;
    }
}

/// Anything else of a dead incarnation still `running` (its slot already settled) is
/// abandoned (a live owner's other runs are its own: not called for it).
async fn abandon_runs(client: &tokio_postgres::Client, node: &str, dead_epoch: i64, reason: &str) {
    let _ = call(
        "takeover",
        client.execute(
            sql::ABANDON_RUNS,
            &[&node, &dead_epoch, &format!("{reason}; abandoned")],
        ),
    )
    .await;
}

/// Why a dead (or superseded, or stopped) incarnation's slots are settled now.
fn settle_reason(
    node: &str,
    dead_epoch: i64,
    state: &str,
    lease_until: Option<DateTime<Utc>>,
    restarted: bool,
) -> String {
    if state == "alive" && !restarted {
        format!("node {node} gave the slot back (its run ended when it could not trust its lease)")
    } else if restarted {
        format!("node {node}'s daemon restarted (epoch {dead_epoch} ended)")
    } else if state == "stopped" {
        format!("node {node} stopped")
    } else {
        format!(
            "node {node} lost its lease at {}",
            lease_until.map(crate::fmt::instant).unwrap_or_default()
        )
    }
}

/// Each settled slot with its own reason: run again on `here`, or why not (`takeover =
/// "abandon"`, a stopped node's, too late).
fn settled_reasons(
    reason: &str,
    here: &str,
    (taken, abandoned): (&[tokio_postgres::Row], &[tokio_postgres::Row]),
    may_rerun: &[&str],
    (stopped, restarted): (bool, bool),
) -> Vec<(String, DateTime<Utc>, String)> {
    let mut settled: Vec<(String, DateTime<Utc>, String)> = Vec::new();
    for r in taken {
        settled.push((
            r.get(0),
            r.get(1),
            format!("{reason}; its slot is run again on {here}"),
        ));
    }
    for r in abandoned {
        let job: String = r.get(0);
        let valid_until: DateTime<Utc> = r.get(2);
        let why = if !may_rerun.contains(&job.as_str()) && !stopped {
            format!("{reason}; abandoned (takeover = \"abandon\" here)")
        } else if stopped && !restarted {
            format!("{reason}; abandoned (a stopped node's runs are not run again)")
        } else {
            format!(
                "{reason}; not run again: too late, the next slot (or the window's end) is at {}",
                crate::fmt::instant(valid_until)
            )
        };
        settled.push((job, r.get(1), why));
    }
    settled
}
