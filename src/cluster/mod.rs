//! Cluster mode: N daemons share one PostgreSQL database and each slot runs once cluster-wide.
//!
//! There is no leader. Every node computes the same slots with the same pure function and races
//! a primary-key insert on `slots (job, scheduled_at)`; the winner gets a fencing token and runs
//! the slot. Liveness is a lease per node on the database clock, renewed at every heartbeat; a
//! node whose lease ran out is dead, and its live slots are run again by a survivor (`takeover`)
//! or recorded `abandoned`.
//!
//! This module is the only user of `tokio-postgres`. One task (the coordinator) owns the
//! connection: the daemon's loop never waits for it; a run's task asks for its claim and awaits
//! the answer, and the coordinator tells the loop about takeovers, cancel requests and a lost
//! lease by message. The node's SQLite history is its journal: every row is written there first
//! and uploaded to the cluster's `runs` table (idempotently, by run uid) at every heartbeat.

pub mod manual;
pub mod read;
mod sql;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};

use crate::config::{Cluster as ClusterConfig, Config, Overlap, Takeover};
use crate::error::{Error, Result};
use crate::history::{History, Recorder, RunTag};

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
}

impl View {
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
    LeaseLost,
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

/// How long after a slot a node that finds the job running on a live peer waits before it
/// records the slot `skipped`: the peer's run may end at the slot (its release on its way).
const OVERLAP_WAIT: Duration = Duration::from_millis(500);

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
                .ok_or_else(|| Error::Other("no [cluster] table".to_string()))?,
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
        };
        c.jobs_hash = hash_of(c.jobs.iter().map(|j| format!("{}={}", j.id, j.hash)));
        match c.connect().await {
            Ok(()) => match c.join(true).await {
                Ok(()) => {}
                Err(JoinError::NameTaken(why)) => return Err(Error::Other(why)),
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
                // The connection failed, but the lease may still hold: the database may be
                // back within the trust period (a killed connection, a restart). Until then
                // the slot waits; after it, `on_database_loss` decides.
                Attempt::Done(Claim::Unreachable(why)) if self.view().trusted => {
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

    /// Leaves the cluster (`state = stopped`), so peers take the next slots without waiting for
    /// the lease; bounded.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Leave(tx)).is_ok() {
            let _ = tokio::time::timeout(CALL_TIMEOUT * 2, rx).await;
        }
    }
}

/// The trust deadline, watched on its own: a database call that hangs (a black hole) must not
/// delay it. Past it without a renewal the node acts as if its lease were lost: `Event::
/// TrustLost` (once per lapse), and claims stop waiting for the database.
async fn trust_watch(
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

enum JoinError {
    NameTaken(String),
    Db(String),
}

/// The statements of every heartbeat and fire, prepared once per connection (a statement by
/// text costs a second round trip each time).
#[derive(Clone)]
struct Prepared {
    claim: tokio_postgres::Statement,
    heartbeat: tokio_postgres::Statement,
    release: tokio_postgres::Statement,
    upload: tokio_postgres::Statement,
}

impl Prepared {
    async fn new(client: &Client) -> std::result::Result<Prepared, CallError> {
        Ok(Prepared {
            claim: call("prepare", client.prepare(sql::CLAIM)).await?,
            heartbeat: call("prepare", client.prepare(sql::HEARTBEAT)).await?,
            release: call("prepare", client.prepare(sql::RELEASE)).await?,
            upload: call("prepare", client.prepare(sql::UPLOAD)).await?,
        })
    }
}

struct Coordinator {
    cfg: Arc<ClusterConfig>,
    prepared: Option<Prepared>,
    jobs: Vec<JobInfo>,
    jobs_hash: String,
    client: Option<Client>,
    backoff: Duration,
    next_connect: Instant,
    epoch: Option<i64>,
    events: mpsc::UnboundedSender<Event>,
    view: Arc<Mutex<View>>,
    recorder: Recorder,
    history: std::path::PathBuf,
    /// A read connection on the journal, for uploads (used on blocking threads).
    journal: Arc<Mutex<Option<History>>>,
    /// Since when the database has been unreachable.
    failing_since: Option<DateTime<Utc>>,
    /// Since when this node's connection has worked: it declares others dead only after a
    /// lease of it (they may be reconnecting after the same outage).
    connected_since: Option<Instant>,
    /// `run --allow-config-drift`: join even when a live node defines a shared job otherwise.
    allow_drift: bool,
    db_outlier_said: bool,
    skew_said: bool,
    /// `scheduler.history_retention`: older cluster rows are pruned (any node; hourly).
    retention: Duration,
    last_prune: Option<Instant>,
    /// The advisory lock this node's session holds while it lives (`nodes.lock_key`).
    lock_key: i64,
    locked: bool,
    /// Releases not yet written (the database was unreachable when the run ended): tried again
    /// at every heartbeat until written, so a finished run never keeps its job held cluster-wide
    /// (nemesis A9).
    releases: Vec<Release>,
}

/// A slot's claim to end: its run ended for good (`done`) or was given up (`skipped`).
#[derive(Debug, Clone)]
struct Release {
    job: String,
    slot: DateTime<Utc>,
    fence: i64,
    state: &'static str,
}

/// A failed database call: the server refused the statement, or the connection is in doubt
/// (broken, or no answer in time).
#[derive(Debug, Clone)]
struct CallError {
    message: String,
    connection: bool,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<CallError> for String {
    fn from(e: CallError) -> String {
        e.message
    }
}

/// A database call with the client-side timeout.
async fn call<T>(
    what: &str,
    f: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> std::result::Result<T, CallError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CallError {
            message: format!("{what}: {}", pg_error(&e)),
            // A statement the server refused leaves the connection usable; only a timeout
            // on the server's side (the server is slow or stuck) puts it in doubt.
            connection: e.as_db_error().is_none_or(|db| {
                db.code() == &tokio_postgres::error::SqlState::QUERY_CANCELED
                    || db.code().code().starts_with("08")
                    || db.code().code().starts_with("57")
            }),
        }),
        Err(_) => Err(CallError {
            message: format!(
                "{what}: no answer within {}",
                humantime::format_duration(CALL_TIMEOUT)
            ),
            connection: true,
        }),
    }
}

/// A PostgreSQL error in one line (the server's message when there is one).
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            s
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Coordinator {
    fn set_view(&self, f: impl FnOnce(&mut View)) {
        if let Ok(mut v) = self.view.lock() {
            f(&mut v);
        }
    }

    /// Opens the connection and brings the schema up to date.
    async fn connect(&mut self) -> std::result::Result<(), String> {
        let pg = read::pg_config(&self.cfg, "node")?;
        let (mut client, connection) =
            match tokio::time::timeout(CONNECT_TIMEOUT, pg.connect(NoTls)).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => return Err(pg_error(&e)),
                Err(_) => {
                    return Err(format!(
                        "no connection within {}",
                        humantime::format_duration(CONNECT_TIMEOUT)
                    ));
                }
            };
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("cluster connection ended: {e}");
            }
        });
        migrate(&mut client, &self.cfg.schema).await?;
        self.prepared = Some(Prepared::new(&client).await?);
        // The server notices a host that vanished (no FIN) within about a lease: its session,
        // and so its presence, end (ignored on a Unix socket, and by servers without
        // tcp_user_timeout).
        let lease_ms = self.cfg.lease.as_millis();
        let idle = self.cfg.heartbeat.as_secs().max(1);
        let _ = call(
            "connect",
            client.batch_execute(&format!(
                "SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = 1;
                 SET tcp_keepalives_count = 2; SET tcp_user_timeout = {lease_ms}"
            )),
        )
        .await;
        self.locked = false;
        self.client = Some(client);
        self.take_presence().await;
        self.connected_since = Some(Instant::now());
        self.backoff = MIN_BACKOFF.min(self.cfg.heartbeat);
        self.set_view(|v| {
            v.connected = true;
            v.last_error = None;
        });
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                "🔌 cluster database {} reachable again (unreachable since {})",
                self.cfg.database_shown,
                crate::fmt::instant(since)
            );
        }
        Ok(())
    }

    /// Takes this node's presence lock on the connection, unless held already. Another session
    /// may hold it: a connection of this node's that the server has not noticed is gone yet, or
    /// a live twin (refused at join). Tried again at every heartbeat.
    async fn take_presence(&mut self) {
        if self.locked {
            return;
        }
        let Some(client) = &self.client else { return };
        match call(
            "presence",
            client.query_one("SELECT pg_try_advisory_lock($1)", &[&self.lock_key]),
        )
        .await
        {
            Ok(row) => self.locked = row.get(0),
            Err(e) => tracing::debug!("cluster presence lock: {e}"),
        }
    }

    /// The hash of a job's definition, as this node has it.
    fn job_hash(&self, job: &str) -> String {
        self.jobs
            .iter()
            .find(|j| j.id == job)
            .map(|j| j.hash.clone())
            .unwrap_or_default()
    }

    /// The database declared this incarnation dead: its runs belong to others now; the next
    /// call rejoins as a new one.
    fn declared_dead(&mut self) {
        tracing::error!(
            "❗ the cluster declared node {} dead (its lease ran out): its runs belong to others now; rejoining",
            self.cfg.node
        );
        self.epoch = None;
        self.set_view(|v| {
            v.epoch = None;
            v.trusted = false;
            v.trusted_until = None;
        });
        let _ = self.events.send(Event::LeaseLost);
    }

    /// A call failed: a connection in doubt is dropped; a refused statement is only logged.
    fn fail(&mut self, e: &CallError) {
        if e.connection {
            self.lost(&e.message);
        } else {
            tracing::error!("❗ cluster database refused a statement: {e}");
        }
    }

    /// The connection broke (or a call timed out): drop it; the next call reconnects.
    fn lost(&mut self, why: &str) {
        if self.failing_since.is_none() {
            tracing::warn!(
                "⚠️  cluster database {} unreachable: {why}",
                self.cfg.database_shown
            );
            self.failing_since = Some(Utc::now());
        }
        self.client = None;
        self.prepared = None;
        self.locked = false;
        self.connected_since = None;
        self.next_connect = Instant::now() + self.backoff;
        // Never slower than the heartbeat: a node must be back before its lease runs out.
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF).min(self.cfg.heartbeat);
        self.set_view(|v| {
            v.connected = false;
            v.last_error = Some(why.to_string());
        });
    }

    /// A connection, joined, if one can be had now.
    async fn ready(&mut self) -> bool {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.lost("the connection was closed");
        }
        if self.client.is_none() {
            if Instant::now() < self.next_connect {
                return false;
            }
            if let Err(e) = self.connect().await {
                self.lost(&e);
                return false;
            }
            // Back after an outage: first the ends of runs that finished meanwhile (a sweeper
            // must find their slots done before it may think of running them again), then the
            // lease (it may have run out meanwhile; nobody declares it dead for a lease after
            // the server or its peers came back).
            self.write_releases().await;
            if self.client.is_none() {
                return false;
            }
            if self.epoch.is_some() && !self.renew().await && self.client.is_none() {
                return false;
            }
        }
        if self.epoch.is_none() {
            match self.join(false).await {
                Ok(()) => {}
                Err(JoinError::NameTaken(why)) => {
                    tracing::error!("❗ cannot rejoin the cluster: {why}");
                    return false;
                }
                Err(JoinError::Db(e)) => {
                    self.lost(&e);
                    return false;
                }
            }
        }
        true
    }

    /// Joins as a new incarnation of the node.
    async fn join(&mut self, at_start: bool) -> std::result::Result<(), JoinError> {
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
        // Our own restart on this host (same boot) is proven when the previous incarnation's
        // process is gone: then its runs are settled at once, whatever its lease says. A live
        // twin on this host with another log folder is not a restart.
        let previous = call(
            "join",
            client.query_opt(
                "SELECT host, boot_id, pid FROM nodes WHERE node = $1",
                &[&self.cfg.node],
            ),
        )
        .await
        .map_err(|e| JoinError::Db(e.message))?;
        let own_restart = previous.is_some_and(|r| {
            r.get::<_, String>(0) == host
                && r.get::<_, String>(1) == boot
                && !crate::process::scheduler_alive(i64::from(r.get::<_, i32>(2)))
        });
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
            let holder = call(
                "join",
                client.query_opt(sql::NODE_HOLDER, &[&self.cfg.node]),
            )
            .await
            .map_err(|e| JoinError::Db(e.message))?;
            let who = match holder {
                Some(r) => format!(
                    "on host {} (PID {}, heartbeat {:.1} s ago)",
                    r.get::<_, String>(0),
                    r.get::<_, i32>(1),
                    r.get::<_, f64>(2)
                ),
                None => "elsewhere".to_string(),
            };
            return Err(JoinError::NameTaken(format!(
                "node `{}` is live {who}; give this daemon another name with [cluster] node",
                self.cfg.node
            )));
        };
        let epoch: i64 = row.get(0);
        let previous: Option<i64> = row.get(1);
        // Which jobs this node defines, with their hashes (for the drift check).
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
        self.epoch = Some(epoch);
        self.set_view(|v| v.degraded_since = None);
        self.recorder.set_tag(Some(RunTag {
            node: self.cfg.node.clone(),
            epoch,
            fence: None,
            degraded: false,
        }));
        self.set_view(|v| v.epoch = Some(epoch));
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
        // Whatever an earlier incarnation of ours left live is settled at once.
        self.sweep().await;
        Ok(())
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                req = rx.recv() => match req {
                    None => break,
                    Some(Request::Leave(done)) => {
                        self.leave().await;
                        let _ = done.send(());
                        break;
                    }
                    Some(req) => self.handle(req).await,
                },
                _ = tick.tick() => {
                    self.beat().await;
                    self.upload().await;
                }
            }
        }
    }

    async fn handle(&mut self, req: Request) {
        match req {
            Request::Claim(req, reply) => {
                let answer = self.claim(&req).await;
                let _ = reply.send(answer);
            }
            Request::AskCancel { job, reason } => {
                if !self.ready().await {
                    return;
                }
                if let Some(client) = &self.client
                    && let Err(e) = call(
                        "cancel request",
                        client.execute(
                            "UPDATE slots SET cancel_requested = $2
                              WHERE job = $1 AND state IN ('claimed', 'running')",
                            &[&job, &reason],
                        ),
                    )
                    .await
                {
                    self.fail(&e);
                }
            }
            Request::Release {
                job,
                slot,
                fence,
                state,
            } => {
                self.releases.push(Release {
                    job,
                    slot,
                    fence,
                    state,
                });
                self.release_pending().await;
            }
            Request::Nudge => self.upload().await,
            Request::SkipSlot { job, slot, reply } => {
                let answer = self.skip_row(&job, slot).await;
                if let Skip::Refused(why) = &answer {
                    tracing::warn!(
                        "⏰ {job}: the slot at {} is not recorded skipped here: {why}",
                        crate::fmt::instant(slot)
                    );
                }
                let _ = reply.send(matches!(answer, Skip::Written | Skip::Unreachable));
            }
            Request::LastSlots(reply) => {
                let mut last = HashMap::new();
                if self.ready().await
                    && let Some(client) = &self.client
                {
                    match call(
                        "last slots",
                        client.query(
                            "SELECT job, max(scheduled_at) FROM slots WHERE kind = 'slot' GROUP BY job",
                            &[],
                        ),
                    )
                    .await
                    {
                        Ok(rows) => {
                            for r in rows {
                                last.insert(r.get(0), r.get(1));
                            }
                        }
                        Err(e) => self.fail(&e),
                    }
                }
                let _ = reply.send(last);
            }
            Request::Leave(_) => {}
        }
    }

    async fn claim(&mut self, req: &ClaimRequest) -> Attempt {
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
            // This host's clock is off: it stays a standby (the others claim on time).
            return Attempt::Done(Claim::Taken {
                by: format!(
                    "another node (this host's clock is {:+} ms off the database's, beyond max_clock_skew: not claiming)",
                    offset.unwrap_or_default()
                ),
            });
        }
        // The database's clock is the odd one: its guard would refuse every claim.
        let skew = (!outlier).then(|| secs(self.cfg.max_clock_skew));
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
                    &secs(self.cfg.trust()),
                ],
            ),
        )
        .await;
        let row = match result {
            Err(_) => {
                self.lost("claim: no answer in time");
                return Attempt::Done(Claim::Unreachable("claim: no answer in time".into()));
            }
            Ok(Err(e)) if is_live_conflict(&e) => return self.overlap(req, epoch).await,
            Ok(Err(e)) => {
                let why = format!("claim: {}", pg_error(&e));
                if e.as_db_error().is_none() {
                    self.lost(&why);
                }
                return Attempt::Done(Claim::Unreachable(why));
            }
            Ok(Ok(row)) => row,
        };
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
                "the primary node, which may be running the slot without the database".to_string(),
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
            (None, None) => {
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
        }
    }

    /// The job is live on some node: apply its overlap policy across the cluster.
    async fn overlap(&mut self, req: &ClaimRequest, epoch: i64) -> Attempt {
        let Some(client) = &self.client else {
            return Attempt::Done(Claim::Unreachable("not connected".to_string()));
        };
        let live = match call(
            "claim",
            client.query_opt(sql::LIVE_CLAIM, &[&req.job, &secs(self.cfg.lease)]),
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
            // Our own claim that was never released (the database was unreachable when its
            // run ended): the loop asks for a claim only when the job is idle here.
            if let Err(e) = call(
                "claim",
                client.execute(sql::RELEASE_OWN, &[&req.job, &self.cfg.node, &fence]),
            )
            .await
            {
                self.fail(&e);
                return Attempt::Done(Claim::Unreachable(e.message));
            }
            return Attempt::Early(Duration::from_millis(1));
        }
        let silent: Option<f64> = live.get(7);
        let db_now: DateTime<Utc> = live.get(8);
        let present: bool = live.get(9);
        let settled: bool = live.get(10);
        let suspect = alive && silent.is_none_or(|s| s > (self.cfg.heartbeat * 2).as_secs_f64());
        // A dead owner, one whose session is gone (its process died: PostgreSQL ended its
        // session at once), or one that stopped renewing (paused, frozen, cut off) holds the
        // job's new slots no longer: its claim is set aside for the sweep, and the new slot is
        // claimed now (nemesis A4: new slots waited for the lease or for a suspect owner). Its
        // own slot is not run again while its process may still finish it.
        if !alive || suspect || (!present && settled) {
            if let Err(e) = call("claim", client.execute(sql::ORPHAN, &[&req.job, &fence])).await {
                self.fail(&e);
                return Attempt::Done(Claim::Unreachable(e.message));
            }
            tracing::info!(
                "🪦 {}: the claim of the slot at {} on node {owner} is set aside ({}): the job's new slots go on",
                req.job,
                crate::fmt::instant(slot),
                if !alive {
                    "its node is dead"
                } else if suspect {
                    "its node has stopped renewing its lease"
                } else {
                    "its session is gone"
                }
            );
            return Attempt::Early(Duration::from_millis(1));
        }
        let holder = format!(
            "run of the slot at {} on node {owner}{} still running",
            crate::fmt::instant(slot),
            owner_pid.map(|p| format!(" (PID {p})")).unwrap_or_default(),
        );
        if req.wait || (!req.manual && req.overlap != Overlap::Skip) {
            return Attempt::Wait(holder, None);
        }
        if req.manual {
            return Attempt::Done(Claim::Busy {
                holder,
                recorded: false,
            });
        }
        // The overlap is decided after the slot's instant, never at the claim lead: the run on
        // the other node may end before the slot comes, or just at it (nemesis A2).
        let decide_at = req.slot + chrono::Duration::from_std(OVERLAP_WAIT).unwrap_or_default();
        if db_now < decide_at {
            let wait = (decide_at - db_now).to_std().unwrap_or_default();
            return Attempt::Wait(holder, Some(wait.max(Duration::from_millis(10))));
        }
        match self.skip_row(&req.job, req.slot).await {
            Skip::Written => Attempt::Done(Claim::Busy {
                holder,
                recorded: true,
            }),
            Skip::Decided => Attempt::Early(Duration::from_millis(1)),
            Skip::Refused(why) => Attempt::Done(Claim::Taken {
                by: format!("another node ({why})"),
            }),
            Skip::Unreachable => Attempt::Done(Claim::Unreachable(
                self.view
                    .lock()
                    .ok()
                    .and_then(|v| v.last_error.clone())
                    .unwrap_or_else(|| "not connected".to_string()),
            )),
        }
    }

    /// Writes a slot's `skipped` row, under the claim's guards.
    async fn skip_row(&mut self, job: &str, slot: DateTime<Utc>) -> Skip {
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
    async fn release_pending(&mut self) {
        if self.releases.is_empty() || !self.ready().await {
            return;
        }
        self.write_releases().await;
    }

    /// Writes the kept releases on the connection there is (fenced: whatever the lease says).
    async fn write_releases(&mut self) {
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

    /// Renews the lease, measures the clock, sweeps dead nodes and reads cancel requests.
    async fn beat(&mut self) {
        if !self.ready().await {
            return;
        }
        if !self.renew().await {
            return;
        }
        self.take_presence().await;
        self.release_pending().await;
        self.check_clocks().await;
        self.sweep().await;
        self.cancel_requests().await;
        if self
            .last_prune
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(3600))
        {
            self.prune().await;
        }
    }

    /// Runs and slots older than `history_retention` go (several nodes may prune at once:
    /// plain deletes, harmless).
    async fn prune(&mut self) {
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

    /// Renews the lease and measures the clock; false when it could not (the node may have
    /// been declared dead: it rejoins).
    async fn renew(&mut self) -> bool {
        let (Some(client), Some(epoch)) = (&self.client, self.epoch) else {
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
        // The slots this node ran without the database are on record before its lease is
        // trusted again (a standby waiting for that reads them: nemesis A6).
        let ran: Vec<(String, DateTime<Utc>)> = self
            .view
            .lock()
            .map(|v| v.degraded_slots.clone())
            .unwrap_or_default();
        if !ran.is_empty() {
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
                Ok(_) => self.set_view(|v| v.degraded_slots.retain(|d| !ran.contains(d))),
                Err(e) => {
                    self.fail(&e);
                    return false;
                }
            }
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
        let until = sent + self.cfg.trust();
        self.set_view(|v| {
            v.trusted = true;
            v.trusted_until = Some(until);
        });
        let db_now: DateTime<Utc> = row.get(0);
        let elapsed = sent.elapsed();
        let rtt = chrono::Duration::from_std(elapsed).unwrap_or_default();
        let mid = before + rtt / 2;
        let offset = (mid - db_now).num_milliseconds();
        self.set_view(|v| {
            v.clock_offset_ms = Some(offset);
            v.anchor = Some((sent + elapsed / 2, db_now));
        });
        true
    }

    /// Whether the database's clock is the odd one: every live node off it by about the same
    /// amount beyond `max_clock_skew` (then the early-claim guard would silence the cluster).
    async fn check_clocks(&mut self) {
        let Some(client) = &self.client else { return };
        let Ok(rows) = call(
            "clocks",
            client.query(
                "SELECT clock_offset_ms, node FROM nodes WHERE state = 'alive' AND lease_until > now()",
                &[],
            ),
        )
        .await
        else {
            return;
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

    /// Dead incarnations' live slots: taken over (rerun) or abandoned.
    async fn sweep(&mut self) {
        let (Some(client), Some(epoch)) = (&self.client, self.epoch) else {
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
        let rerun: Vec<&str> = self
            .jobs
            .iter()
            .filter(|j| j.takeover == Takeover::Rerun)
            .map(|j| j.id.as_str())
            .collect();
        let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        for d in dead {
            let node: String = d.get(0);
            let dead_epoch: i64 = d.get(1);
            let state: String = d.get(2);
            let lease_until: Option<DateTime<Utc>> = d.get(3);
            let current_epoch: Option<i64> = d.get(4);
            let restarted = current_epoch.is_some_and(|e| e != dead_epoch);
            // A live owner's slots are its own, but those it gave back.
            let owner_alive = state == "alive" && !restarted;
            let reason = if owner_alive {
                format!(
                    "node {node} gave the slot back (its run ended when it could not trust its lease)"
                )
            } else if restarted {
                format!("node {node}'s daemon restarted (epoch {dead_epoch} ended)")
            } else if state == "stopped" {
                format!("node {node} stopped")
            } else {
                format!(
                    "node {node} lost its lease at {}",
                    lease_until.map(crate::fmt::instant).unwrap_or_default()
                )
            };
            // A stopped node's runs were cancelled on purpose: never run again.
            let may_rerun: Vec<&str> = if state == "stopped" && !restarted {
                Vec::new()
            } else {
                rerun.clone()
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
                    return;
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
                    return;
                }
            };
            // Each slot's run gets its own reason: run again here, or why not.
            let mut settled: Vec<(String, DateTime<Utc>, String)> = Vec::new();
            for r in taken.iter() {
                settled.push((
                    r.get(0),
                    r.get(1),
                    format!("{reason}; its slot is run again on {}", self.cfg.node),
                ));
            }
            for r in abandoned.iter() {
                let job: String = r.get(0);
                let valid_until: DateTime<Utc> = r.get(2);
                let why = if !may_rerun.contains(&job.as_str()) && state != "stopped" {
                    format!("{reason}; abandoned (takeover = \"abandon\" here)")
                } else if state == "stopped" && !restarted {
                    format!("{reason}; abandoned (a stopped node's runs are not run again)")
                } else {
                    format!(
                        "{reason}; not run again: too late, the next slot (or the window's end) is at {}",
                        crate::fmt::instant(valid_until)
                    )
                };
                settled.push((job, r.get(1), why));
            }
            for (job, slot, why) in &settled {
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
            // Anything else of it still `running` (its slot already settled); a live owner's
            // other runs are its own.
            if !owner_alive {
                let _ = call(
                    "takeover",
                    client.execute(
                        sql::ABANDON_RUNS,
                        &[&node, &dead_epoch, &format!("{reason}; abandoned")],
                    ),
                )
                .await;
            }
            if !taken.is_empty() || !abandoned.is_empty() {
                tracing::warn!(
                    "🪦 {reason}: {} taken over here, {} abandoned",
                    crate::fmt::n(taken.len(), "slot"),
                    abandoned.len()
                );
            }
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
                    reason: reason.clone(),
                });
            }
        }
    }

    /// Cancel requests for runs of ours (overlap `replace` on another node).
    async fn cancel_requests(&mut self) {
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

    /// Uploads the journal's new rows and revisions.
    async fn upload(&mut self) {
        if self.client.is_none() || self.epoch.is_none() {
            return;
        }
        let journal = Arc::clone(&self.journal);
        let path = self.history.clone();
        let rows = tokio::task::spawn_blocking(move || {
            let mut guard = journal
                .lock()
                .map_err(|_| "journal lock poisoned".to_string())?;
            if guard.is_none() {
                *guard = History::open_read_only(&path).map_err(|e| e.to_string())?;
            }
            match guard.as_ref() {
                Some(h) => h.unsynced(UPLOAD_BATCH).map_err(|e| e.to_string()),
                None => Ok(Vec::new()),
            }
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!("cluster upload: cannot read the journal: {e}");
                if let Ok(mut j) = self.journal.lock() {
                    *j = None;
                }
                return;
            }
        };
        let Some(client) = &self.client else { return };
        let mut failed = None;
        for u in rows {
            let Some(prepared) = &self.prepared else {
                return;
            };
            match upload_row(client, &prepared.upload, &u.row, u.rev).await {
                Ok(()) => {
                    if let Some(uid) = &u.row.run_uid {
                        self.recorder.synced(uid, u.rev);
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            self.fail(&e);
        }
    }

    async fn leave(&mut self) {
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

/// Uploads one journal row (revision `rev`) to the cluster's `runs`, idempotently.
async fn upload_row<S: tokio_postgres::ToStatement + ?Sized>(
    client: &Client,
    statement: &S,
    r: &crate::history::RunRow,
    rev: i64,
) -> std::result::Result<(), CallError> {
    let t = |s: &Option<String>| s.as_deref().and_then(crate::history::parse_time);
    let Some(scheduled_at) = crate::history::parse_time(&r.scheduled_at) else {
        return Ok(());
    };
    let started_at = crate::history::parse_time(&r.started_at).unwrap_or(scheduled_at);
    let attempt = i32::try_from(r.attempt).unwrap_or(i32::MAX);
    let pid = r.pid.and_then(|p| i32::try_from(p).ok());
    let owner = r.owner_pid.and_then(|p| i32::try_from(p).ok());
    let result = r.result.as_ref().map(|v| v.get().to_string());
    let node = r.node.clone().unwrap_or_default();
    let node_epoch = r.node_epoch.unwrap_or(0);
    call(
        "upload",
        client.execute(
            statement,
            &[
                r.run_uid.as_ref().unwrap_or(&String::new()),
                &r.job,
                &r.trigger.as_str(),
                &scheduled_at,
                &started_at,
                &t(&r.entered_at),
                &t(&r.finished_at),
                &attempt,
                &r.outcome.as_str(),
                &r.exit_code,
                &r.signal,
                &pid,
                &owner,
                &r.error,
                &result,
                &r.executor,
                &r.stuck,
                &r.peak_rss_bytes,
                &r.cpu_ms,
                &r.missed_count,
                &t(&r.missed_from),
                &t(&r.missed_to),
                &node,
                &node_epoch,
                &r.fence,
                &r.degraded,
                &r.id,
                &rev,
            ],
        ),
    )
    .await
    .map(|_| ())
}

/// A claim refused because the job is live elsewhere (`slots_one_live`).
fn is_live_conflict(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some("slots_one_live")
    })
}

/// Creates or upgrades the schema, once, whoever else starts at the same time.
async fn migrate(client: &mut Client, schema: &str) -> std::result::Result<(), String> {
    let tx = call("migrate", client.transaction()).await?;
    call(
        "migrate",
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("hedge-scheduler migrate {schema}")],
        ),
    )
    .await?;
    call(
        "migrate",
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.meta (version int NOT NULL);"
        )),
    )
    .await?;
    let version: i32 = match call("migrate", tx.query_opt("SELECT version FROM meta", &[])).await? {
        Some(r) => r.get(0),
        None => {
            call(
                "migrate",
                tx.execute("INSERT INTO meta (version) VALUES (0)", &[]),
            )
            .await?;
            0
        }
    };
    let known = i32::try_from(sql::MIGRATIONS.len()).unwrap_or(i32::MAX);
    if version > known {
        return Err(format!(
            "the cluster schema `{schema}` has version {version}, newer than this build's {known}: upgrade hedge-scheduler on this host"
        ));
    }
    for m in &sql::MIGRATIONS[usize::try_from(version).unwrap_or(0)..] {
        call("migrate", tx.batch_execute(m)).await?;
    }
    if version < known {
        call(
            "migrate",
            tx.execute("UPDATE meta SET version = $1", &[&known]),
        )
        .await?;
    }
    call("migrate", tx.commit()).await?;
    Ok(())
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
