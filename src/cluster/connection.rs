//! The coordinator's connection: the task that owns it, its state, connecting (schema, prepared
//! statements, the presence lock), reconnecting with back-off, and the requests it serves.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::Client;

use super::*;
use crate::config::Cluster as ClusterConfig;
use crate::history::{History, Recorder};

pub(super) enum JoinError {
    NameTaken(String),
    Db(String),
}

/// The statements of every heartbeat and fire, prepared once per connection (a statement by
/// text costs a second round trip each time).
#[derive(Clone)]
pub(super) struct Prepared {
    pub(super) claim: tokio_postgres::Statement,
    pub(super) heartbeat: tokio_postgres::Statement,
    pub(super) release: tokio_postgres::Statement,
    pub(super) upload: tokio_postgres::Statement,
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

pub(super) struct Coordinator {
    pub(super) cfg: Arc<ClusterConfig>,
    pub(super) prepared: Option<Prepared>,
    pub(super) jobs: Vec<JobInfo>,
    pub(super) jobs_hash: String,
    pub(super) client: Option<Client>,
    pub(super) backoff: Duration,
    pub(super) next_connect: Instant,
    pub(super) epoch: Option<i64>,
    pub(super) events: mpsc::UnboundedSender<Event>,
    pub(super) view: Arc<Mutex<View>>,
    pub(super) recorder: Recorder,
    pub(super) history: std::path::PathBuf,
    /// A read connection on the journal, for uploads (used on blocking threads).
    pub(super) journal: Arc<Mutex<Option<History>>>,
    /// Since when the database has been unreachable.
    pub(super) failing_since: Option<DateTime<Utc>>,
    /// Since when this node's connection has worked: it declares others dead only after a
    /// lease of it (they may be reconnecting after the same outage).
    pub(super) connected_since: Option<Instant>,
    /// `run --allow-config-drift`: join even when a live node defines a shared job otherwise.
    pub(super) allow_drift: bool,
    pub(super) db_outlier_said: bool,
    pub(super) skew_said: bool,
    /// `scheduler.history_retention`: older cluster rows are pruned (any node; hourly).
    pub(super) retention: Duration,
    pub(super) last_prune: Option<Instant>,
    /// The advisory lock this node's session holds while it lives (`nodes.lock_key`).
    pub(super) lock_key: i64,
    pub(super) locked: bool,
    /// Releases not yet written (the database was unreachable when the run ended): tried again
    /// at every heartbeat until written, so a finished run never keeps its job held cluster-wide
    /// (nemesis A9).
    pub(super) releases: Vec<Release>,
    /// The incarnation of this process the cluster declared dead, until the new one has
    /// adopted what of it is still its own.
    pub(super) dead_epoch: Option<i64>,
}

/// A slot's claim to end: its run ended for good (`done`) or was given up (`skipped`).
#[derive(Debug, Clone)]
pub(super) struct Release {
    pub(super) job: String,
    pub(super) slot: DateTime<Utc>,
    pub(super) fence: i64,
    pub(super) state: &'static str,
}

/// A failed database call: the server refused the statement, or the connection is in doubt
/// (broken, or no answer in time).
#[derive(Debug, Clone)]
pub(super) struct CallError {
    pub(super) message: String,
    pub(super) connection: bool,
    /// When the database was found gone (`lost_at`).
    pub(super) sent: Instant,
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

/// Whether an error of the server (or of the connection) leaves the connection in doubt: any
/// error that is not a statement the server refused, a query cancelled (a server-side timeout:
/// the server is slow or stuck), a connection exception (08) or an operator intervention (57,
/// a shutdown).
pub(super) fn connection_in_doubt(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_none_or(|db| {
        db.code() == &tokio_postgres::error::SqlState::QUERY_CANCELED
            || db.code().code().starts_with("08")
            || db.code().code().starts_with("57")
    })
}

/// When the database was found gone, for a call sent at `sent` that failed now: its send time
/// if it hung until its timeout (the database stopped answering then), else now (an error that
/// came later than the timeout, or at all, says the database was there when the call was sent,
/// as far as this node knows: it may have been stopped meanwhile, and a send time from before a
/// pause would place the loss before it).
pub(super) fn lost_at(sent: Instant, timed_out: bool, timeout: Duration) -> Instant {
    let now = Instant::now();
    if timed_out && now.saturating_duration_since(sent) < timeout + Duration::from_secs(1) {
        sent
    } else {
        now
    }
}

/// A database call with the client-side timeout.
pub(super) async fn call<T>(
    what: &str,
    f: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> std::result::Result<T, CallError> {
    let sent = Instant::now();
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CallError {
            sent: lost_at(sent, false, CALL_TIMEOUT),
            message: format!("{what}: {}", pg_error(&e)),
            connection: connection_in_doubt(&e),
        }),
        Err(_) => Err(CallError {
            message: format!(
                "{what}: no answer within {}",
                humantime::format_duration(CALL_TIMEOUT)
            ),
            connection: true,
            sent: lost_at(sent, true, CALL_TIMEOUT),
        }),
    }
}

/// A PostgreSQL error in one line (the server's message when there is one).
pub(super) fn pg_error(e: &tokio_postgres::Error) -> String {
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

pub(super) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A claim refused because the job is live elsewhere (`slots_one_live`).
pub(super) fn is_live_conflict(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some("slots_one_live")
    })
}

/// Creates or upgrades the schema, once, whoever else starts at the same time.
pub(super) async fn migrate(client: &mut Client, schema: &str) -> std::result::Result<(), String> {
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

impl Coordinator {
    pub(super) fn set_view(&self, f: impl FnOnce(&mut View)) {
        if let Ok(mut v) = self.view.lock() {
            f(&mut v);
        }
    }

    /// Opens the connection and brings the schema up to date.
    pub(super) async fn connect(&mut self) -> std::result::Result<(), String> {
        let pg = read::pg_config(&self.cfg, "node")?;
        let (mut client, connection) = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            pg.connect(super::tls::connector(&self.cfg)?),
        )
        .await
        {
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
    pub(super) async fn take_presence(&mut self) {
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
            Err(e) => self.fail(&e),
        }
    }

    /// The hash of a job's definition, as this node has it.
    pub(super) fn job_hash(&self, job: &str) -> String {
        self.jobs
            .iter()
            .find(|j| j.id == job)
            .map(|j| j.hash.clone())
            .unwrap_or_default()
    }

    /// A call failed: a connection in doubt is dropped; a refused statement is only logged.
    pub(super) fn fail(&mut self, e: &CallError) {
        if e.connection {
            self.lost_since(&e.message, e.sent);
        } else {
            tracing::error!("❗ cluster database refused a statement: {e}");
        }
    }

    /// The connection broke (or a call timed out): drop it; the next call reconnects.
    pub(super) fn lost(&mut self, why: &str) {
        self.lost_since(why, Instant::now());
    }

    /// `lost`, for a call made at `sent` (a call that hung until its timeout found the database
    /// gone when it was made).
    pub(super) fn lost_since(&mut self, why: &str, sent: Instant) {
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
            v.unreachable_at.get_or_insert(sent);
        });
    }

    /// A connection, joined, if one can be had now.
    pub(super) async fn ready(&mut self) -> bool {
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

    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
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

    pub(super) async fn handle(&mut self, req: Request) {
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
            Request::Audit { job, slots, reply } => {
                let gaps = self.audit(&job, &slots).await;
                let _ = reply.send(gaps);
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

    /// Renews the lease, measures the clock, sweeps dead nodes and reads cancel requests.
    pub(super) async fn beat(&mut self) {
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
}
