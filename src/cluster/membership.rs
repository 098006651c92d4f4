//! Membership and leases: joining as a new incarnation, renewing the lease (and the cluster's
//! time), the clocks, the trust deadline, being declared dead, leaving.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::connection::*;
use super::*;
use crate::config::Cluster as ClusterConfig;
use crate::history::RunTag;

/// The trust deadline, watched on its own: a database call that hangs (a black hole) must not
/// delay it. Past it without a renewal the node acts as if its lease were lost: `Event::
/// TrustLost` (once per lapse), and claims stop waiting for the database.
pub(super) async fn trust_watch(
    cfg: Arc<ClusterConfig>,
    view: Arc<Mutex<View>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut said_for: Option<Instant> = None;
    loop {
        let until = view.lock().ok().and_then(|v| v.trusted_until);
        match until {
            Some(u) if Instant::now() < u => tokio::time::sleep_until(u).await,
            Some(u) => {
                // Lapsed, unless a renewal moved the deadline meanwhile (checked and marked
                // under one lock, so a renewal is never overwritten).
                let lapsed = view.lock().is_ok_and(|mut v| {
                    let lapsed = v.trusted_until == Some(u);
                    if lapsed {
                        v.trusted = false;
                        v.last_lapse = Some(Utc::now());
                    }
                    lapsed
                });
                if lapsed && said_for != Some(u) {
                    said_for = Some(u);
                    tracing::warn!(
                        "⚠️  node {}: no lease renewal for {}: acting as if the lease were lost (on_database_loss applies to running jobs)",
                        cfg.node,
                        humantime::format_duration(cfg.trust())
                    );
                    if events.send(Event::TrustLost).is_err() {
                        return;
                    }
                }
                tokio::time::sleep(cfg.heartbeat / 4).await;
            }
            None => tokio::time::sleep(cfg.heartbeat).await,
        }
        if events.is_closed() {
            return;
        }
    }
}

impl Coordinator {
    /// Joins as a new incarnation of the node.
    pub(super) async fn join(&mut self, at_start: bool) -> std::result::Result<(), JoinError> {
        let Some(client) = &self.client else {
            return Err(JoinError::Db("not connected".to_string()));
        };
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let priority = i32::try_from(self.cfg.priority).unwrap_or(i32::MAX);
        let own_restart = own_restart(client, &self.cfg.node, &host, &boot).await?;
        let sent = Instant::now();
        let row = call(
            "join",
            client.query_opt(
                sql::JOIN,
                &[
                    &self.cfg.node,
                    &host,
                    &pid,
                    &boot,
                    &env!("CARGO_PKG_VERSION"),
                    &self.jobs_hash,
                    &priority,
                    &secs(self.cfg.lease),
                    &own_restart,
                ],
            ),
        )
        .await
        .map_err(|e| JoinError::Db(e.message))?;
        let Some(row) = row else {
            return Err(name_taken(client, &self.cfg.node).await);
        };
        let epoch: i64 = row.get(0);
        let previous: Option<i64> = row.get(1);
        self.check_drift(epoch).await?;
        self.register(epoch).await?;
        self.epoch = Some(epoch);
        self.set_view(|v| v.degraded_since = None);
        self.recorder.set_tag(Some(RunTag {
            node: self.cfg.node.clone(),
            epoch,
            fence: None,
            degraded: false,
        }));
        // A new lease, from the join's send; a new incarnation, from now.
        self.set_view(|v| {
            v.epoch = Some(epoch);
            v.renewed_at = Some(sent);
            v.unreachable_at = None;
            v.joined_at = Some(Instant::now());
        });
        tracing::info!(
            "🤝 joined the cluster at {} as node {} (epoch {epoch}, priority {}){}",
            self.cfg.database_shown,
            self.cfg.node,
            self.cfg.priority,
            match (previous, at_start) {
                (Some(p), _) if p != epoch =>
                    format!("; the previous incarnation (epoch {p}) is settled now"),
                _ => String::new(),
            }
        );
        // This process's own previous incarnation (declared dead meanwhile): what it still
        // holds is adopted first. Whatever an earlier process of ours left live is settled.
        self.adopt().await;
        self.sweep().await;
        Ok(())
    }

    /// The new incarnation's session lock key, and the jobs this node runs (with their
    /// definitions' hashes).
    async fn register(&self, epoch: i64) -> std::result::Result<(), JoinError> {
        let Some(client) = &self.client else {
            return Err(JoinError::Db("not connected".to_string()));
        };
        let ids: Vec<&str> = self.jobs.iter().map(|j| j.id.as_str()).collect();
        let hashes: Vec<&str> = self.jobs.iter().map(|j| j.hash.as_str()).collect();
        call(
            "join",
            client.execute(
                "UPDATE nodes SET lock_key = $2 WHERE node = $1 AND epoch = $3",
                &[&self.cfg.node, &self.lock_key, &epoch],
            ),
        )
        .await
        .map_err(|e| JoinError::Db(e.message))?;
        call(
            "join",
            client.execute(
                "WITH gone AS (DELETE FROM node_jobs WHERE node = $1)
                 INSERT INTO node_jobs (node, job, hash)
                 SELECT $1, j, h FROM unnest($2::text[], $3::text[]) AS t(j, h)
                 ON CONFLICT (node, job) DO UPDATE SET hash = EXCLUDED.hash",
                &[&self.cfg.node, &ids, &hashes],
            ),
        )
        .await
        .map_err(|e| JoinError::Db(e.message))?;
        Ok(())
    }

    /// Whether a live node defines a shared job otherwise (it would compute other slots): a
    /// refusal (the new row left stopped), unless `--allow-config-drift`.
    async fn check_drift(&mut self, epoch: i64) -> std::result::Result<(), JoinError> {
        let Some(client) = &self.client else {
            return Err(JoinError::Db("not connected".to_string()));
        };
        // Which jobs this node defines, with their hashes.
        let ids: Vec<&str> = self.jobs.iter().map(|j| j.id.as_str()).collect();
        let hashes: Vec<&str> = self.jobs.iter().map(|j| j.hash.as_str()).collect();
        let drift = call(
            "join",
            client.query(sql::DRIFT, &[&self.cfg.node, &ids, &hashes]),
        )
        .await
        .map_err(|e| JoinError::Db(e.message))?;
        if !drift.is_empty() {
            let list = drift
                .iter()
                .map(|r| {
                    format!(
                        "`{}` on node {}",
                        r.get::<_, String>(1),
                        r.get::<_, String>(0)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let what = format!(
                "a live node defines a job differently (schedule, window, exchange or calendar): {list}; the nodes would compute different slots and both run them"
            );
            if !self.allow_drift {
                // Leave the row as we found it: stopped, so the name is free.
                let _ = call(
                    "join",
                    client.execute(sql::LEAVE, &[&self.cfg.node, &epoch]),
                )
                .await;
                return Err(JoinError::NameTaken(format!(
                    "{what}; make the configs agree, or start with `run --allow-config-drift` during a rolling upgrade"
                )));
            }
            tracing::warn!("⚠️  {what} (joining anyway: --allow-config-drift)");
        }
        Ok(())
    }

    /// The database declared this incarnation dead: its runs belong to others now; the next
    /// call rejoins as a new one.
    pub(super) fn declared_dead(&mut self) {
        tracing::error!(
            "❗ the cluster declared node {} dead (its lease ran out): its runs belong to others now; rejoining",
            self.cfg.node
        );
        self.dead_epoch = self.epoch.take().or(self.dead_epoch);
        self.set_view(|v| {
            v.epoch = None;
            v.trusted = false;
            v.trusted_until = None;
        });
    }

    /// After a rejoin that followed a declaration of death: the previous incarnation's slots
    /// that nobody took over (their fence is still ours) are adopted by the new one and their
    /// runs go on; the loop ends only the runs whose slots were taken (the model's trace: a slot
    /// too late to take over was lost when its run was killed on the rejoin).
    pub(super) async fn adopt(&mut self) {
        let Some(old) = self.dead_epoch.take() else {
            return;
        };
        let (Some(client), Some(epoch)) = (&self.client, self.epoch) else {
            return;
        };
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let kept: Vec<i64> = match call(
            "rejoin",
            client.query(sql::ADOPT, &[&self.cfg.node, &old, &epoch, &pid]),
        )
        .await
        {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(e) => {
                self.fail(&e);
                Vec::new()
            }
        };
        let _ = self.events.send(Event::LeaseLost { kept });
    }

    /// Renews the lease and measures the clock; false when it could not (the node may have
    /// been declared dead: it rejoins).
    pub(super) async fn renew(&mut self) -> bool {
        let Some(epoch) = self.epoch.filter(|_| self.client.is_some()) else {
            return false;
        };
        let before = Utc::now();
        let sent = Instant::now();
        let (offset, degraded) = self
            .view
            .lock()
            .map(|v| {
                (
                    v.clock_offset_ms.and_then(|o| i32::try_from(o).ok()),
                    v.degraded_since,
                )
            })
            .unwrap_or_default();
        let Some(prepared) = self.prepared.clone() else {
            return false;
        };
        if !self.record_degraded(epoch).await {
            return false;
        }
        let Some(client) = &self.client else {
            return false;
        };
        let row = call(
            "heartbeat",
            client.query_opt(
                &prepared.heartbeat,
                &[
                    &self.cfg.node,
                    &epoch,
                    &secs(self.cfg.lease),
                    &offset,
                    &degraded,
                ],
            ),
        )
        .await;
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                self.fail(&e);
                return false;
            }
        };
        let Some(row) = row else {
            self.declared_dead();
            return false;
        };
        self.renewed(sent, before, row.get(0));
        true
    }

    /// A renewal sent at `sent` (this host's clock then: `before`) was taken: the lease is
    /// trusted from its send, and the database's clock (`db_now`, read at the middle of the
    /// round trip) anchors the cluster's time and measures this host's offset.
    fn renewed(&mut self, sent: Instant, before: DateTime<Utc>, db_now: DateTime<Utc>) {
        let until = sent + self.cfg.trust();
        self.set_view(|v| {
            v.trusted = true;
            v.trusted_until = Some(until);
            v.renewed_at = Some(sent);
            v.unreachable_at = None;
        });
        let elapsed = sent.elapsed();
        let rtt = chrono::Duration::from_std(elapsed).unwrap_or_default();
        let mid = before + rtt / 2;
        let offset = (mid - db_now).num_milliseconds();
        self.set_view(|v| {
            v.clock_offset_ms = Some(offset);
            v.anchor = Some((sent + elapsed / 2, db_now));
        });
    }

    /// The slots this node ran without the database are put on record before its lease is
    /// trusted again (a standby waiting for that reads them: nemesis A6). False when the
    /// database failed.
    async fn record_degraded(&mut self, epoch: i64) -> bool {
        let Some(client) = &self.client else {
            return false;
        };
        let ran: Vec<(String, DateTime<Utc>)> = self
            .view
            .lock()
            .map(|v| v.degraded_slots.clone())
            .unwrap_or_default();
        if ran.is_empty() {
            return true;
        }
        let (jobs, slots): (Vec<String>, Vec<DateTime<Utc>>) = ran.iter().cloned().unzip();
        let hashes: Vec<String> = jobs.iter().map(|j| self.job_hash(j)).collect();
        match call(
            "heartbeat",
            client.execute(
                sql::DEGRADED_SLOTS,
                &[&jobs, &slots, &self.cfg.node, &epoch, &hashes],
            ),
        )
        .await
        {
            Ok(_) => {
                self.set_view(|v| v.degraded_slots.retain(|d| !ran.contains(d)));
                true
            }
            Err(e) => {
                self.fail(&e);
                false
            }
        }
    }

    /// Whether the database's clock is the odd one: every live node off it by about the same
    /// amount beyond `max_clock_skew` (then the early-claim guard would silence the cluster).
    pub(super) async fn check_clocks(&mut self) {
        let Some(client) = &self.client else { return };
        let rows = match call(
            "clocks",
            client.query(
                "SELECT clock_offset_ms, node FROM nodes WHERE state = 'alive' AND lease_until > now()",
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
        // Every live node must have measured its clock: one that has not yet might agree with
        // the database, and then the database is not the odd one.
        let Some(offsets) = rows
            .iter()
            .map(|r| r.get::<_, Option<i32>>(0).map(i64::from))
            .collect::<Option<Vec<i64>>>()
        else {
            self.set_view(|v| v.db_clock_outlier = false);
            return;
        };
        let max_skew = i64::try_from(self.cfg.max_clock_skew.as_millis()).unwrap_or(i64::MAX);
        let (lo, hi) = (
            offsets.iter().copied().min().unwrap_or(0),
            offsets.iter().copied().max().unwrap_or(0),
        );
        // One node alone cannot tell whose clock is wrong: it goes by the database's (its
        // loop reads the cluster's time from it, so its slots run on time all the same).
        let outlier = offsets.len() >= 2
            && offsets.iter().all(|o| o.abs() > max_skew)
            && (lo > 0) == (hi > 0)
            && hi - lo <= max_skew;
        if outlier && !self.db_outlier_said {
            tracing::warn!(
                "⚠️  every live node's clock is {lo:+}…{hi:+} ms off the cluster database's: the database's clock is wrong; claims go by the nodes' clocks until it is fixed"
            );
        }
        self.db_outlier_said = outlier;
        self.set_view(|v| v.db_clock_outlier = outlier);
        let own = self.view.lock().ok().and_then(|v| v.clock_offset_ms);
        // Another live node whose clock agrees with the database's runs the slots.
        let covered = rows.iter().any(|r| {
            r.get::<_, String>(1) != self.cfg.node
                && r.get::<_, Option<i32>>(0)
                    .is_some_and(|o| i64::from(o).abs() <= max_skew)
        });
        let skewed = !outlier && covered && own.is_some_and(|o| o.abs() > max_skew);
        self.set_view(|v| v.standing_by_for_clock = skewed);
        if skewed != self.skew_said {
            if skewed {
                tracing::warn!(
                    "⏰ this host's clock is {:+} ms off the cluster database's, beyond max_clock_skew ({}): not claiming slots until it is fixed (the other nodes run them)",
                    own.unwrap_or_default(),
                    humantime::format_duration(self.cfg.max_clock_skew)
                );
            } else {
                tracing::info!(
                    "⏰ this host's clock agrees with the cluster database's again: claiming slots"
                );
            }
            self.skew_said = skewed;
        }
    }

    pub(super) async fn leave(&mut self) {
        self.release_pending().await;
        self.upload().await;
        if let (Some(client), Some(epoch)) = (&self.client, self.epoch) {
            match call(
                "leave",
                client.execute(sql::LEAVE, &[&self.cfg.node, &epoch]),
            )
            .await
            {
                Ok(_) => tracing::info!("👋 left the cluster (node {} stopped)", self.cfg.node),
                Err(e) => tracing::warn!("⚠️  could not leave the cluster cleanly: {e}"),
            }
        }
    }
}

/// Whether this join is our own restart on this host (same boot): proven when the previous
/// incarnation's process is gone; then its runs are settled at once, whatever its lease says.
/// A live twin on this host with another log folder is not a restart.
async fn own_restart(
    client: &tokio_postgres::Client,
    node: &str,
    host: &str,
    boot: &str,
) -> std::result::Result<bool, JoinError> {
    let previous = call(
        "join",
        client.query_opt(
            "SELECT host, boot_id, pid FROM nodes WHERE node = $1",
            &[&node],
        ),
    )
    .await
    .map_err(|e| JoinError::Db(e.message))?;
    Ok(previous.is_some_and(|r| {
        r.get::<_, String>(0) == host
            && r.get::<_, String>(1) == boot
            && !crate::process::scheduler_alive(i64::from(r.get::<_, i32>(2)))
    }))
}

/// The join was refused: the name is held by a live node; where.
async fn name_taken(client: &tokio_postgres::Client, node: &str) -> JoinError {
    let holder = match call("join", client.query_opt(sql::NODE_HOLDER, &[&node])).await {
        Ok(holder) => holder,
        Err(e) => return JoinError::Db(e.message),
    };
    let who = match holder {
        Some(r) => format!(
            "on host {} (PID {}, heartbeat {:.1} s ago)",
            r.get::<_, String>(0),
            r.get::<_, i32>(1),
            r.get::<_, f64>(2)
        ),
        None => "elsewhere".to_string(),
    };
    JoinError::NameTaken(format!(
        "node `{node}` is live {who}; give this daemon another name with [cluster] node"
    ))
}
