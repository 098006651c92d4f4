//! Cluster mode: N daemons share one PostgreSQL database and each slot runs once cluster-wide.
//!
//! There is no leader. Every node computes the same slots with the same pure function and races
//! a primary-key insert on `slots (job, scheduled_at)`; the winner gets a fencing token and runs
//! the slot. Liveness is twofold: a lease per node on the database clock, renewed at every
//! heartbeat (and claim), and the node's presence, an advisory lock its session holds. A node
//! whose lease ran out is dead; its live slots are run again by a survivor (`takeover`) once the
//! process that claimed them is gone, or recorded `abandoned`. The invariants are written down in
//! `docs/cluster.md`.
//!
//! This module is the only user of `tokio-postgres`. One task (the coordinator) owns the
//! connection: the daemon's loop never waits for it; a run's task asks for its claim and awaits
//! the answer, and the coordinator tells the loop about takeovers, cancel requests and a lost
//! lease by message. The node's SQLite history is its journal: every row is written there first
//! and uploaded to the cluster's `runs` table (idempotently, by run uid) at every heartbeat.
//!
//! The rooms: `connection` (the coordinator's task, connecting, the requests it serves),
//! `membership` (join, lease, clocks, trust), `claims` (claims, overlap, skipped rows,
//! releases), `sweep` (dead nodes, takeover, pruning), `upload` (the journal), `manual`
//! (`run-once`'s claim), `read` (`status` and `history` from the cluster), `sql` (the schema and
//! the statements). What a node does without the database is the daemon's
//! (`daemon/cluster_glue.rs`).

mod claims;
mod connection;
pub mod manual;
mod membership;
#[cfg(test)]
mod model;
pub mod read;
mod sql;
mod sweep;
mod tls;
mod upload;

use connection::{Coordinator, JoinError};
use membership::trust_watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{Cluster as ClusterConfig, Config, Overlap, Takeover};
use crate::error::{Error, Result};
use crate::history::{Recorder, RunTag};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a statement may take on the client's side (the server ends it after 2 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Reconnection back-off bounds.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Journal rows uploaded per round.
const UPLOAD_BATCH: usize = 200;

/// What this node knows of itself, for the loop and `status`.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// This incarnation's epoch, once joined.
    pub epoch: Option<i64>,
    pub connected: bool,
    /// Node clock − database clock at the last heartbeat.
    pub clock_offset_ms: Option<i64>,
    pub last_error: Option<String>,
    /// When this node first ran a slot without the database (published at the next renewal).
    pub degraded_since: Option<DateTime<Utc>>,
    /// Every live node's clock is off the database's by about the same amount beyond
    /// `max_clock_skew`: the database's clock is the odd one, and the early-claim guard is off.
    pub db_clock_outlier: bool,
    /// The lease is trusted (renewed within lease − 2 × heartbeat): a claim that fails now
    /// waits for the connection rather than running without the database.
    pub trusted: bool,
    /// Until when (the last renewal's send + lease − 2 × heartbeat).
    pub trusted_until: Option<Instant>,
    /// The database's clock at a monotonic instant (the middle of the last renewal's round
    /// trip): the cluster's time is read from it, so a step of this host's wall clock moves no
    /// slot (nemesis A1).
    pub anchor: Option<(Instant, DateTime<Utc>)>,
    /// This host's clock is off the database's beyond `max_clock_skew` while another live node's
    /// agrees with it: that node runs the slots, this one stays a standby.
    pub standing_by_for_clock: bool,
    /// Slots run here without the database, not yet written to the cluster's `slots`.
    pub degraded_slots: Vec<(String, DateTime<Utc>)>,
    /// When this node last stopped trusting its lease (this host's clock): a run going on then
    /// may have been ended for it (by the keeper, or by `on_database_loss`).
    pub last_lapse: Option<DateTime<Utc>>,
    /// When the last renewal that the database took was sent: the lease runs at least `lease`
    /// from then.
    pub renewed_at: Option<Instant>,
    /// When this node found the database unreachable, since that renewal.
    pub unreachable_at: Option<Instant>,
    /// When this incarnation's join was answered: a slot first tried before it may have been
    /// claimed by a standby while this node was away (down, or declared dead).
    pub joined_at: Option<Instant>,
}

impl View {
    /// Whether this primary may run alone (`on_database_loss = "primary"`) the slot first tried
    /// at `first_try`: only if it lost the database while its lease still held, so nobody can
    /// have declared it dead since (unless it alone was cut off, which the policy allows for),
    /// and its incarnation joined before that try.
    /// - A node that lost the database only after its lease ran out (it was stopped, frozen or
    ///   starved past it) may have been declared dead while the database was up, and a standby
    ///   may reach the database before it does: it runs nothing alone until it has renewed (the
    ///   nemesis: a primary stopped past its lease woke to a database stop and ran the slot a
    ///   standby had run; another, resumed as the database came back, ran alone the slot a
    ///   standby claimed a moment later).
    /// - A node that started, or rejoined after it was declared dead, since the slot's first
    ///   try cannot know whether a standby claimed the slot while it was away (the model's
    ///   `alone_only_in_own_epoch`: a primary restarted into a database stop ran the slot a
    ///   standby had just run).
    pub fn may_run_alone(&self, lease: Duration, first_try: DateTime<Utc>) -> bool {
        !self.lease_ran_out_first(lease) && self.joined_before(first_try)
    }

    /// Whether this incarnation joined before `at` (the cluster's time).
    pub fn joined_before(&self, at: DateTime<Utc>) -> bool {
        self.joined_at.is_some_and(|joined| {
            let ago = chrono::Duration::from_std(joined.elapsed()).unwrap_or_default();
            self.now() - ago <= at
        })
    }

    /// Whether this node's lease ran out before it found the database gone: it may have been
    /// declared dead while the database was up (it was stopped, frozen or starved past it).
    pub fn lease_ran_out_first(&self, lease: Duration) -> bool {
        match (self.renewed_at, self.unreachable_at) {
            (Some(renewed), Some(lost)) => lost >= renewed + lease,
            _ => false,
        }
    }

    /// The cluster's time now: the database's clock carried forward on this host's monotonic
    /// clock, or this host's wall clock before the first renewal and while the database's own
    /// clock is the odd one.
    pub fn now(&self) -> DateTime<Utc> {
        match self.anchor {
            Some((at, db)) if !self.db_clock_outlier => {
                db + chrono::Duration::from_std(at.elapsed()).unwrap_or_default()
            }
            _ => Utc::now(),
        }
    }
}

/// The answer to a claim.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The slot is ours: run it under this tag.
    Won(RunTag),
    /// Another node claimed the slot first: it runs it and records it.
    Taken { by: String },
    /// The job still runs on another node (an overlap across hosts). `recorded` says whether
    /// this node wrote the slot's `skipped` row (only one node does).
    Busy { holder: String, recorded: bool },
    /// The database cannot be reached: `on_database_loss` decides.
    Unreachable(String),
    /// The slot could not be claimed in time (its `valid_until` passed while waiting).
    Expired(String),
}

/// What the coordinator tells the daemon's loop.
#[derive(Debug, Clone)]
pub enum Event {
    /// A dead node's slot is now ours to run again.
    Takeover {
        job: String,
        slot: DateTime<Utc>,
        attempt: u32,
        tag: RunTag,
        reason: String,
    },
    /// Another node asked that the job's run here end (overlap `replace`).
    Cancel { job: String, reason: String },
    /// The database declared this node dead: its runs belong to others now.
    LeaseLost {
        /// The fences of the previous incarnation's slots the node's new one adopted (still
        /// its own: nobody took them over): their runs go on.
        kept: Vec<i64>,
    },
    /// No renewal for lease − 2 × heartbeat: the lease may be lost. Runs of jobs that must
    /// not run without the database (`on_database_loss = "skip"`) end now.
    TrustLost,
}

/// A claim to make.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub job: String,
    pub slot: DateTime<Utc>,
    pub manual: bool,
    /// The latest instant the slot is still worth starting.
    pub valid_until: DateTime<Utc>,
    pub overlap: Overlap,
    /// Whether a refused claim may wait for the job's live run elsewhere to end (`queue`,
    /// `replace`, `run-once --wait`).
    pub wait: bool,
    /// `on_database_loss = "primary"`: the priority-0 node runs the job's slots without the
    /// database, so a standby claims one only while the primary is dead, or trusts its lease
    /// (and so has not run the slot on its own: nemesis A6).
    pub primary_runs_without_db: bool,
}

enum Request {
    Claim(ClaimRequest, oneshot::Sender<Attempt>),
    AskCancel {
        job: String,
        reason: String,
    },
    Release {
        job: String,
        slot: DateTime<Utc>,
        fence: i64,
        state: &'static str,
    },
    Nudge,
    SkipSlot {
        job: String,
        slot: DateTime<Utc>,
        reply: oneshot::Sender<bool>,
    },
    LastSlots(oneshot::Sender<HashMap<String, DateTime<Utc>>>),
    Audit {
        job: String,
        slots: Vec<DateTime<Utc>>,
        reply: oneshot::Sender<Vec<DateTime<Utc>>>,
    },
    Leave(oneshot::Sender<()>),
}

/// One claim statement's answer.
#[derive(Debug)]
enum Attempt {
    Done(Claim),
    /// The database clock says it is too early: try again after this long.
    Early(Duration),
    /// The job is live elsewhere and the request may wait (this long, when the wait is for
    /// an instant rather than for the run to end).
    Wait(String, Option<Duration>),
}

/// What became of a `skipped` row a node tried to write.
#[derive(Debug, Clone, PartialEq)]
enum Skip {
    /// Written: this node records the slot.
    Written,
    /// The slot already had its row (claimed, skipped): another node deals with it.
    Decided,
    /// Refused by the guards: the database's clock has not reached the slot, or this
    /// incarnation is not live. Nothing is recorded.
    Refused(String),
    /// The database cannot say: each node records what it saw.
    Unreachable,
}

/// A handle on the coordinator: cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub config: Arc<ClusterConfig>,
    tx: mpsc::UnboundedSender<Request>,
    view: Arc<Mutex<View>>,
}

/// Per job, what the coordinator needs: its definition's hash and its takeover policy.
#[derive(Debug, Clone)]
struct JobInfo {
    id: String,
    hash: String,
    takeover: Takeover,
}

impl Node {
    /// Connects, migrates the schema and joins the cluster as `[cluster] node`; then keeps the
    /// lease on a task of its own. A live daemon with the same node name is an error; an
    /// unreachable database is not (the node starts disconnected and keeps trying).
    pub async fn start(
        config: &Config,
        recorder: Recorder,
        allow_drift: bool,
    ) -> Result<(Node, mpsc::UnboundedReceiver<Event>)> {
        let cfg = Arc::new(
            config
                .cluster
                .clone()
                .ok_or_else(|| Error::Internal("no [cluster] table".to_string()))?,
        );
        let jobs = job_infos(config);
        let view = Arc::new(Mutex::new(View::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut c = Coordinator {
            cfg: Arc::clone(&cfg),
            prepared: None,
            jobs,
            jobs_hash: String::new(),
            client: None,
            backoff: MIN_BACKOFF.min(cfg.heartbeat),
            next_connect: Instant::now(),
            epoch: None,
            events: events_tx,
            view: Arc::clone(&view),
            recorder,
            history: config.scheduler.history.clone(),
            journal: Arc::new(Mutex::new(None)),
            failing_since: None,
            connected_since: None,
            allow_drift,
            db_outlier_said: false,
            skew_said: false,
            retention: config.scheduler.history_retention,
            last_prune: None,
            lock_key: lock_key(&cfg.schema, &cfg.node),
            locked: false,
            releases: Vec::new(),
            dead_epoch: None,
        };
        c.jobs_hash = hash_of(c.jobs.iter().map(|j| format!("{}={}", j.id, j.hash)));
        match c.connect().await {
            Ok(()) => match c.join(true).await {
                Ok(()) => {}
                Err(JoinError::NameTaken(why)) => return Err(Error::Cluster(why)),
                Err(JoinError::Db(e)) => c.lost(&e),
            },
            Err(e) => {
                tracing::warn!(
                    "⚠️  cluster database {} unreachable at start ({e}): running disconnected (on_database_loss applies) and retrying",
                    cfg.database_shown
                );
            }
        }
        tokio::spawn(trust_watch(
            Arc::clone(&cfg),
            Arc::clone(&view),
            c.events.clone(),
        ));
        tokio::spawn(c.run(rx));
        Ok((
            Node {
                config: cfg,
                tx,
                view,
            },
            events,
        ))
    }

    pub fn view(&self) -> View {
        self.view.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The cluster's time now (see `View::now`): what the daemon's loop decides slots by.
    pub fn now(&self) -> DateTime<Utc> {
        self.view
            .lock()
            .map(|v| v.now())
            .unwrap_or_else(|_| Utc::now())
    }

    /// Whether a claim that could not reach the database waits for it. The lease may still
    /// hold: the database may be back within the trust period (a killed connection, a
    /// restart); until then the slot waits, after it `on_database_loss` decides. So does a
    /// `primary` job's slot on a primary that may not run it alone (see `View::may_run_alone`):
    /// a standby may reach the database first and claim it (the long nemesis run: a primary
    /// resumed as the database came back ran alone the slot a standby claimed a moment later).
    fn waits_for_database(&self, req: &ClaimRequest) -> bool {
        let view = self.view();
        view.trusted
            || (req.primary_runs_without_db
                && self.config.priority == 0
                && !view.may_run_alone(self.config.lease, req.slot - self.config.claim_lead()))
    }

    /// The claim starts waiting for the job's live run elsewhere (`holder`): said once, and
    /// under overlap `replace` (not for a manual run) that run is asked to end.
    fn start_waiting(&self, req: &ClaimRequest, holder: &str) {
        tracing::info!("⏳ {}: waiting for {holder}", req.job);
        if req.overlap == Overlap::Replace && !req.manual {
            let _ = self.tx.send(Request::AskCancel {
                job: req.job.clone(),
                reason: format!(
                    "replaced by the slot at {} on {}",
                    crate::fmt::instant(req.slot),
                    self.config.node
                ),
            });
        }
    }

    /// Claims a slot for a run. Waits (at the heartbeat) for a live run of the job elsewhere
    /// when the request allows it, never past `valid_until`.
    pub async fn claim(&self, req: ClaimRequest) -> Claim {
        let mut early_tries = 0;
        let mut waited_for: Option<String> = None;
        // The database's error while the slot waits for it within the lease's trust.
        let mut unreachable: Option<String>;
        loop {
            unreachable = None;
            let (tx, rx) = oneshot::channel();
            if self.tx.send(Request::Claim(req.clone(), tx)).is_err() {
                return Claim::Unreachable("the cluster coordinator has stopped".to_string());
            }
            let answer = match rx.await {
                Ok(a) => a,
                Err(_) => {
                    return Claim::Unreachable("the cluster coordinator has stopped".to_string());
                }
            };
            let pause = match answer {
                Attempt::Done(Claim::Unreachable(why)) if self.waits_for_database(&req) => {
                    if waited_for.is_none() {
                        tracing::info!(
                            "⏳ {}: cluster database unreachable ({why}); waiting until the lease is in doubt",
                            req.job
                        );
                        waited_for = Some(format!("the cluster database ({why})"));
                    }
                    unreachable = Some(why);
                    Duration::from_millis(100)
                }
                Attempt::Done(claim) => return claim,
                Attempt::Early(wait) if early_tries < 3 => {
                    early_tries += 1;
                    wait
                }
                Attempt::Early(_) => {
                    return Claim::Expired(
                        "the database clock kept refusing the claim as too early".to_string(),
                    );
                }
                Attempt::Wait(holder, until) => {
                    if waited_for.is_none() {
                        self.start_waiting(&req, &holder);
                    }
                    waited_for = Some(holder);
                    until.unwrap_or(self.config.heartbeat.min(Duration::from_millis(500)))
                }
            };
            let then = self.now() + chrono::Duration::from_std(pause).unwrap_or_default();
            // Waiting for the database must not cost the slot: by half its bound at the latest,
            // `on_database_loss` decides, as it would once the trust had lapsed (nemesis A7: the
            // first slot of an outage was lost on every node).
            if let Some(why) = unreachable
                && then > req.slot + (req.valid_until - req.slot) / 2
            {
                return Claim::Unreachable(why);
            }
            if then > req.valid_until {
                return Claim::Expired(match waited_for {
                    Some(h) => format!("waited for {h} until it was too late"),
                    None => "too late to claim".to_string(),
                });
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Marks a slot `skipped` cluster-wide; true when this node did it first (and so records
    /// it), or when the database cannot say (each node then records what it saw).
    pub async fn skip_slot(&self, job: &str, slot: DateTime<Utc>) -> bool {
        let (tx, rx) = oneshot::channel();
        let req = Request::SkipSlot {
            job: job.to_string(),
            slot,
            reply: tx,
        };
        if self.tx.send(req).is_err() {
            return true;
        }
        rx.await.unwrap_or(true)
    }

    /// A slot runs here without the database (`on_database_loss`): said at the next renewal,
    /// and the slot's row is written then (before the renewal), so a standby that waits for
    /// this node's lease to be trusted again finds the slot taken.
    pub fn mark_degraded(&self, job: &str, slot: DateTime<Utc>) {
        if let Ok(mut v) = self.view.lock() {
            v.degraded_since.get_or_insert_with(Utc::now);
            v.degraded_slots.push((job.to_string(), slot));
        }
    }

    /// The slot's run has ended for good (`done`), or was given up (`skipped`).
    pub fn release(&self, job: &str, slot: DateTime<Utc>, fence: i64, state: &'static str) {
        let _ = self.tx.send(Request::Release {
            job: job.to_string(),
            slot,
            fence,
            state,
        });
        let _ = self.tx.send(Request::Nudge);
    }

    /// The newest slot of each job that any node dealt with (empty when the database cannot
    /// be reached).
    pub async fn last_slots(&self) -> HashMap<String, DateTime<Utc>> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::LastSlots(tx)).is_err() {
            return HashMap::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The gap audit: of `slots` (past their bound, so no node will still claim them), those
    /// no node claimed, recorded or ran are written `skipped` under this node, which records them
    /// (the ones returned); empty when the database cannot be reached.
    pub async fn audit(&self, job: &str, slots: Vec<DateTime<Utc>>) -> Vec<DateTime<Utc>> {
        let (tx, rx) = oneshot::channel();
        let req = Request::Audit {
            job: job.to_string(),
            slots,
            reply: tx,
        };
        if self.tx.send(req).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Leaves the cluster (`state = stopped`), so peers take the next slots without waiting for
    /// the lease; bounded.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Leave(tx)).is_ok() {
            let _ = tokio::time::timeout(CALL_TIMEOUT * 2, rx).await;
        }
    }
}

/// Each job's hash: what makes two nodes compute the same slots for it.
fn job_infos(config: &Config) -> Vec<JobInfo> {
    config
        .jobs
        .iter()
        .map(|j| JobInfo {
            id: j.id.clone(),
            hash: hash_of([
                j.trigger.schedule.to_string(),
                j.trigger.market_hours.to_string(),
                j.trigger.window_start.to_string(),
                j.trigger.window_end.to_string(),
                config.scheduler.exchange.code().to_string(),
                config.calendar.fingerprint(),
            ]),
            takeover: j.takeover,
        })
        .collect()
}

/// A short stable hash (FNV-1a, 64 bits) of some strings.
fn hash_of(parts: impl IntoIterator<Item = String>) -> String {
    format!("{:016x}", fnv(parts))
}

fn fnv(parts: impl IntoIterator<Item = String>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The key of a node's presence lock (positive, so its halves read back from `pg_locks`).
fn lock_key(schema: &str, node: &str) -> i64 {
    let h = fnv([
        "hedge-scheduler presence".to_string(),
        schema.to_string(),
        node.to_string(),
    ]);
    i64::try_from(h >> 1).unwrap_or(i64::MAX)
}

/// The latest instant a slot is still worth starting (a rerun or a retry of it too): before
/// the job's next slot, inside the session's window, within `misfire_grace`.
pub fn valid_until(
    job: &crate::config::Job,
    calendar: &crate::calendar::Calendar,
    slot: DateTime<Utc>,
) -> DateTime<Utc> {
    let mut until = job
        .trigger
        .next_fire_after(calendar, slot)
        .unwrap_or(slot + chrono::Duration::days(1));
    if let Some(end) = job.trigger.window_end_for(calendar, slot) {
        until = until.min(end.max(slot));
    }
    if let Some(grace) = job
        .misfire_grace
        .and_then(|g| chrono::Duration::from_std(g).ok())
    {
        until = until.min(slot + grace);
    }
    until
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `may_run_alone`, in a table: a primary that lost the database while its lease held runs
    /// alone the slots first tried after it joined; one that lost it only after its lease ran
    /// out does not (until it renews), nor one that has not joined, nor one that joined after
    /// the slot's first try (it started, or rejoined, since: a standby may have run the slot).
    #[test]
    fn a_primary_runs_alone_only_while_nobody_can_have_declared_it_dead() {
        // The cluster's time is 10:00:00 at `t0`; the test's instants are up to 5 s after it.
        let t0 = Instant::now() - Duration::from_secs(60);
        let at_t0 = chrono::DateTime::parse_from_rfc3339("2026-12-08T10:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("a valid instant");
        let lease = Duration::from_secs(2);
        let mono = |s: f64| t0 + Duration::from_secs_f64(s);
        let wall = |s: f64| at_t0 + chrono::Duration::milliseconds((s * 1000.0) as i64);
        // (joined at, renewed at, found the database gone at, the slot's first try, may run
        // alone)
        type Row = (Option<f64>, Option<f64>, Option<f64>, f64, bool);
        let table: [Row; 8] = [
            (Some(0.0), Some(0.0), None, 3.0, true),
            (Some(0.0), Some(0.0), Some(1.5), 3.0, true),
            (Some(0.0), Some(0.0), Some(2.0), 3.0, false),
            (Some(0.0), Some(0.0), Some(4.3), 5.0, false),
            (None, None, Some(5.0), 5.0, false),
            (Some(1.0), Some(1.0), Some(1.5), 0.5, false),
            (Some(1.0), Some(1.0), Some(1.5), 1.1, true),
            (Some(1.0), Some(2.5), Some(3.0), 2.0, true),
        ];
        for (joined, renewed, lost, first_try, want) in table {
            let view = View {
                anchor: Some((t0, at_t0)),
                joined_at: joined.map(mono),
                renewed_at: renewed.map(mono),
                unreachable_at: lost.map(mono),
                ..View::default()
            };
            assert_eq!(
                view.may_run_alone(lease, wall(first_try)),
                want,
                "joined {joined:?}, renewed {renewed:?}, lost {lost:?}, first try {first_try}"
            );
        }
    }

    /// The instant the database was found gone: a call that hung until its timeout found it
    /// gone when it was sent; one that failed otherwise, or long after (a pause), when it failed.
    #[test]
    fn the_database_is_lost_when_a_hung_call_was_sent_else_when_the_failure_came() {
        let timeout = Duration::from_secs(3);
        let now = Instant::now();
        let hung = now - Duration::from_millis(3_050);
        assert_eq!(connection::lost_at(hung, true, timeout), hung);
        let paused = now - Duration::from_secs(6);
        assert!(connection::lost_at(paused, true, timeout) >= now);
        assert!(connection::lost_at(paused, false, timeout) >= now);
    }
}
