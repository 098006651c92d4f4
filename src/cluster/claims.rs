//! Claims: a slot's claim under the guards, the overlap across nodes (decided at the slot), the
//! `skipped` rows, and the releases kept until written.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::connection::*;
use super::*;
use crate::history::RunTag;

impl Coordinator {
    pub(super) async fn claim(&mut self, req: &ClaimRequest) -> Attempt {
        if !self.ready().await {
            let why = self
                .view
                .lock()
                .ok()
                .and_then(|v| v.last_error.clone())
                .unwrap_or_else(|| "not connected".to_string());
            return Attempt::Done(Claim::Unreachable(why));
        }
        let (Some(client), Some(epoch)) = (&self.client, self.epoch) else {
            return Attempt::Done(Claim::Unreachable("not joined".to_string()));
        };
        let hash = self.job_hash(&req.job);
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let skew = match self.clock_guard() {
            Ok(skew) => skew,
            Err(attempt) => return attempt,
        };
        let kind = if req.manual { "manual" } else { "slot" };
        let sent = Instant::now();
        let Some(prepared) = self.prepared.clone() else {
            return Attempt::Done(Claim::Unreachable("not connected".to_string()));
        };
        let result = tokio::time::timeout(
            CALL_TIMEOUT,
            client.query_one(
                &prepared.claim,
                &[
                    &req.job,
                    &req.slot,
                    &kind,
                    &self.cfg.node,
                    &epoch,
                    &pid,
                    &req.valid_until,
                    &hash,
                    &skew,
                    &secs(self.cfg.lease),
                    &(req.primary_runs_without_db && self.cfg.priority > 0),
                    &i32::try_from(self.cfg.max_clock_skew.as_millis()).unwrap_or(i32::MAX),
                ],
            ),
        )
        .await;
        let row = match result {
            Err(_) => {
                self.lost_since(
                    "claim: no answer in time",
                    lost_at(sent, true, CALL_TIMEOUT),
                );
                return Attempt::Done(Claim::Unreachable("claim: no answer in time".into()));
            }
            Ok(Err(e)) if is_live_conflict(&e) => return self.overlap(req, epoch).await,
            Ok(Err(e)) => {
                let why = format!("claim: {}", pg_error(&e));
                if connection_in_doubt(&e) {
                    self.lost_since(&why, Instant::now());
                }
                return Attempt::Done(Claim::Unreachable(why));
            }
            Ok(Ok(row)) => row,
        };
        self.answer(req, epoch, sent, &row)
    }

    /// The claim's guard on the database's clock (`max_clock_skew`), or none when the
    /// database's clock is the odd one (its guard would refuse every claim). A host whose own
    /// clock is off does not claim: it stays a standby (the others claim on time).
    fn clock_guard(&self) -> std::result::Result<Option<f64>, Attempt> {
        let (offset, outlier, standing_by) = self
            .view
            .lock()
            .map(|v| {
                (
                    v.clock_offset_ms,
                    v.db_clock_outlier,
                    v.standing_by_for_clock,
                )
            })
            .unwrap_or_default();
        if standing_by {
            return Err(Attempt::Done(Claim::Taken {
                by: format!(
                    "another node (this host's clock is {:+} ms off the database's, beyond max_clock_skew: not claiming)",
                    offset.unwrap_or_default()
                ),
            }));
        }
        Ok((!outlier).then(|| secs(self.cfg.max_clock_skew)))
    }

    /// What the claim's row says: won (the fence), taken (by whom), declared dead (rejoin
    /// first), a primary that may run the slot (wait), or too early by the database's clock. A
    /// claim by a live node renewed its lease.
    fn answer(
        &mut self,
        req: &ClaimRequest,
        epoch: i64,
        sent: Instant,
        row: &tokio_postgres::Row,
    ) -> Attempt {
        let fence: Option<i64> = row.get(0);
        let owner: Option<String> = row.get(1);
        let db_now: DateTime<Utc> = row.get(2);
        let alive: bool = row.get(3);
        let primary_in_doubt: bool = row.get(4);
        if alive {
            // The claim renewed the lease: trust it from when the claim was sent.
            let until = sent + self.cfg.trust();
            self.set_view(|v| {
                v.trusted = true;
                if v.trusted_until.is_none_or(|u| u < until) {
                    v.trusted_until = Some(until);
                }
                if v.renewed_at.is_none_or(|r| r < sent) {
                    v.renewed_at = Some(sent);
                    v.unreachable_at = None;
                }
            });
        }
        if fence.is_none() && owner.is_none() && !alive {
            // Declared dead while we did not look (stopped, paused, cut off): our runs belong
            // to others now. Rejoin, then claim as the new incarnation.
            self.declared_dead();
            return Attempt::Early(Duration::from_millis(1));
        }
        if fence.is_none() && owner.is_none() && primary_in_doubt {
            return Attempt::Wait(
                "the primary node, whose slot it is while it lives (it may be running it without the database)".to_string(),
                Some(Duration::from_millis(100)),
            );
        }
        match (fence, owner) {
            (Some(fence), _) => {
                tracing::debug!(
                    "{}: claimed the slot at {} (fence {fence}) in {} µs",
                    req.job,
                    crate::fmt::instant(req.slot),
                    sent.elapsed().as_micros()
                );
                Attempt::Done(Claim::Won(RunTag {
                    node: self.cfg.node.clone(),
                    epoch,
                    fence: Some(fence),
                    degraded: false,
                }))
            }
            (None, Some(by)) => Attempt::Done(Claim::Taken { by }),
            (None, None) => self.refused_early(req, db_now),
        }
    }

    /// The database's clock refused the claim as too early: try again then, unless this host's
    /// clock is well ahead of the database's (it does not claim: holding the job while it waited
    /// would keep its next slots from others).
    fn refused_early(&self, req: &ClaimRequest, db_now: DateTime<Utc>) -> Attempt {
        let early = (req.slot
            - chrono::Duration::from_std(self.cfg.max_clock_skew).unwrap_or_default())
            - db_now;
        let early = early.to_std().unwrap_or_default();
        if early > crate::config::CLAIM_AHEAD {
            // This host's clock is well ahead of the database's: it does not claim
            // (holding the job while it waited would keep its next slots from others).
            tracing::warn!(
                "⏰ {}: the database's clock refused the claim as {} early: this host's clock is ahead of it by more than max_clock_skew; not claiming",
                req.job,
                humantime::format_duration(Duration::from_millis(early.as_millis() as u64))
            );
            return Attempt::Done(Claim::Taken {
                by: "another node (this host's clock is ahead of the database's)".into(),
            });
        }
        Attempt::Early(early.max(Duration::from_millis(10)))
    }

    /// The job's live run is a manual one (`run-once` on a node), which has no loop to decide
    /// the overlap at the slot's instant: this node does, under `skip`, once the slot's instant
    /// and the grace a run that ends at it needs to be released have passed on the database's
    /// clock (`db_now`).
    async fn skip_over_manual(
        &mut self,
        req: &ClaimRequest,
        holder: String,
        db_now: DateTime<Utc>,
    ) -> Attempt {
        let decide_at =
            req.slot + chrono::Duration::from_std(crate::config::OVERLAP_GRACE).unwrap_or_default();
        if db_now < decide_at {
            let wait = (decide_at - db_now).to_std().unwrap_or_default();
            return Attempt::Wait(holder, Some(wait.max(Duration::from_millis(10))));
        }
        match self.skip_row(&req.job, req.slot).await {
            Skip::Written => Attempt::Done(Claim::Busy {
                holder,
                recorded: true,
            }),
            Skip::Decided => Attempt::Done(Claim::Busy {
                holder,
                recorded: false,
            }),
            // Not live, or the database's clock behind this one's: look again shortly (a node
            // declared dead rejoins on its next claim; the slot's bound ends it).
            Skip::Refused(_) => Attempt::Wait(holder, Some(Duration::from_millis(100))),
            Skip::Unreachable => Attempt::Done(Claim::Unreachable(
                self.view
                    .lock()
                    .ok()
                    .and_then(|v| v.last_error.clone())
                    .unwrap_or_else(|| "not connected".into()),
            )),
        }
    }

    /// Releases our own claim (`fence`) that was never released (the database was unreachable
    /// when its run ended: the loop asks for a claim only when the job is idle here); the claim
    /// is tried again at once.
    async fn release_own(&mut self, req: &ClaimRequest, fence: i64) -> Attempt {
        let Some(client) = &self.client else {
            return Attempt::Done(Claim::Unreachable("not connected".to_string()));
        };
        if let Err(e) = call(
            "claim",
            client.execute(sql::RELEASE_OWN, &[&req.job, &self.cfg.node, &fence]),
        )
        .await
        {
            self.fail(&e);
            return Attempt::Done(Claim::Unreachable(e.message));
        }
        Attempt::Early(Duration::from_millis(1))
    }

    /// Sets aside (`orphan`) the live claim of `owner`'s slot at `slot` (`fence`), which holds
    /// the job's new slots no longer (`why`); the claim is tried again at once.
    async fn set_aside(
        &mut self,
        req: &ClaimRequest,
        (owner, slot, fence): (&str, DateTime<Utc>, i64),
        why: &str,
    ) -> Attempt {
        let Some(client) = &self.client else {
            return Attempt::Done(Claim::Unreachable("not connected".to_string()));
        };
        if let Err(e) = call("claim", client.execute(sql::ORPHAN, &[&req.job, &fence])).await {
            self.fail(&e);
            return Attempt::Done(Claim::Unreachable(e.message));
        }
        tracing::info!(
            "🪦 {}: the claim of the slot at {} on node {owner} is set aside ({why}): the job's new slots go on",
            req.job,
            crate::fmt::instant(slot),
        );
        Attempt::Early(Duration::from_millis(1))
    }

    /// The job is live on some node: apply its overlap policy across the cluster.
    pub(super) async fn overlap(&mut self, req: &ClaimRequest, epoch: i64) -> Attempt {
        let Some(client) = &self.client else {
            return Attempt::Done(Claim::Unreachable("not connected".to_string()));
        };
        let live = match call(
            "claim",
            client.query_opt(
                sql::LIVE_CLAIM,
                &[
                    &req.job,
                    &secs(self.cfg.lease),
                    &secs(self.cfg.heartbeat * 2),
                ],
            ),
        )
        .await
        {
            Ok(Some(row)) => row,
            // It ended meanwhile: try again at once.
            Ok(None) => return Attempt::Early(Duration::from_millis(1)),
            Err(e) => {
                self.fail(&e);
                return Attempt::Done(Claim::Unreachable(e.message));
            }
        };
        let owner: String = live.get(0);
        let owner_epoch: i64 = live.get(1);
        let owner_pid: Option<i32> = live.get(2);
        let slot: DateTime<Utc> = live.get(3);
        let fence: i64 = live.get(4);
        let alive: bool = live.get(6);
        if owner == self.cfg.node && owner_epoch == epoch {
            return self.release_own(req, fence).await;
        }
        let silent: Option<f64> = live.get(7);
        let present: bool = live.get(9);
        let settled: bool = live.get(10);
        let suspect = alive && silent.is_none_or(|s| s > (self.cfg.heartbeat * 2).as_secs_f64());
        // A dead owner, one whose session is gone (its process died: PostgreSQL ended its
        // session at once), or one that stopped renewing (paused, frozen, cut off) holds the
        // job's new slots no longer: its claim is set aside for the sweep, and the new slot is
        // claimed now (nemesis A4: new slots waited for the lease or for a suspect owner). Its
        // own slot is not run again while its process may still finish it.
        if !alive || suspect || (!present && settled) {
            let why = if !alive {
                "its node is dead"
            } else if suspect {
                "its node has stopped renewing its lease"
            } else {
                "its session is gone"
            };
            return self.set_aside(req, (&owner, slot, fence), why).await;
        }
        let holder = format!(
            "run of the slot at {} on node {owner}{} still running",
            crate::fmt::instant(slot),
            owner_pid.map(|p| format!(" (PID {p})")).unwrap_or_default(),
        );
        if req.manual {
            return if req.wait {
                Attempt::Wait(holder, None)
            } else {
                Attempt::Done(Claim::Busy {
                    holder,
                    recorded: false,
                })
            };
        }
        let manual_holder: bool = live.get(11);
        if manual_holder && req.overlap == Overlap::Skip {
            return self.skip_over_manual(req, holder, live.get(8)).await;
        }
        // A live holder that renews its lease decides the overlap itself, at the slot's instant:
        // it alone knows whether its run still goes on then (nemesis A2; and the model: a node
        // that wrote the skip over another's run that ended at the slot lost the slot). This
        // node waits for its release (then claims), its `skipped` row (then the slot is taken),
        // its silence or death (then sets its claim aside), or the slot's bound.
        Attempt::Wait(holder, None)
    }

    /// The gap audit's statement: the slots of `slots` with no row of their own and no run
    /// anywhere become `skipped` under this node (the claim's guards), and are returned.
    pub(super) async fn audit(&mut self, job: &str, slots: &[DateTime<Utc>]) -> Vec<DateTime<Utc>> {
        if slots.is_empty() || !self.ready().await {
            return Vec::new();
        }
        let (Some(client), Some(epoch)) = (&self.client, self.epoch) else {
            return Vec::new();
        };
        let hash = self.job_hash(job);
        match call(
            "audit",
            client.query(
                sql::AUDIT_GAPS,
                &[&job, &slots, &self.cfg.node, &epoch, &hash],
            ),
        )
        .await
        {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(e) => {
                self.fail(&e);
                Vec::new()
            }
        }
    }

    /// Writes a slot's `skipped` row, under the claim's guards.
    pub(super) async fn skip_row(&mut self, job: &str, slot: DateTime<Utc>) -> Skip {
        let (Some(client), Some(epoch)) = (&self.client, self.epoch) else {
            return Skip::Unreachable;
        };
        let hash = self.job_hash(job);
        match call(
            "skip",
            client.query_one(
                sql::SLOT_SKIPPED,
                &[&job, &slot, &self.cfg.node, &epoch, &hash],
            ),
        )
        .await
        {
            Ok(row) => {
                let (fence, existed, live): (Option<i64>, bool, bool) =
                    (row.get(0), row.get(1), row.get(2));
                match (fence, existed, live) {
                    (Some(_), _, _) => Skip::Written,
                    (None, true, _) => Skip::Decided,
                    (None, false, false) => {
                        Skip::Refused("this node is not a live member of the cluster".into())
                    }
                    (None, false, true) => {
                        Skip::Refused("the database's clock has not reached the slot yet".into())
                    }
                }
            }
            Err(e) => {
                self.fail(&e);
                Skip::Unreachable
            }
        }
    }

    /// Writes the releases not written yet, oldest first; those the database could not take
    /// stay for the next try. A release whose fence has moved on (the slot was taken over)
    /// changes nothing and is done with.
    pub(super) async fn release_pending(&mut self) {
        if self.releases.is_empty() || !self.ready().await {
            return;
        }
        self.write_releases().await;
    }

    /// Writes the kept releases on the connection there is (fenced: whatever the lease says).
    pub(super) async fn write_releases(&mut self) {
        while let Some(r) = self.releases.first().cloned() {
            let (Some(client), Some(prepared)) = (&self.client, &self.prepared) else {
                return;
            };
            match call(
                "release",
                client.execute(&prepared.release, &[&r.job, &r.slot, &r.fence, &r.state]),
            )
            .await
            {
                Ok(_) => {
                    self.releases.remove(0);
                }
                Err(e) => {
                    if !e.connection {
                        // Refused for good (it would be refused again): said, and dropped.
                        self.releases.remove(0);
                    }
                    self.fail(&e);
                    if e.connection {
                        return;
                    }
                }
            }
        }
    }
}
