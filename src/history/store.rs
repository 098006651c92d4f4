//! The run history: one SQLite database (WAL, so `status` reads while the daemon writes).
//!
//! Every run gets a row when it starts (`running`) and the row is completed when it ends, so a run
//! is never lost even when the process that made it dies. Times are stored as UTC text with
//! microseconds (`2026-11-27T09:15:00.000123Z`), which sorts as it reads. The schema is versioned
//! with `PRAGMA user_version`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use serde::Serialize;

use crate::error::{Error, Result};

/// Schema migrations, applied in order; `user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    job          TEXT    NOT NULL,
    trigger      TEXT    NOT NULL,
    scheduled_at TEXT    NOT NULL,
    started_at   TEXT    NOT NULL,
    entered_at   TEXT,
    finished_at  TEXT,
    attempt      INTEGER NOT NULL DEFAULT 1,
    outcome      TEXT    NOT NULL,
    exit_code    INTEGER,
    signal       TEXT,
    pid          INTEGER,
    owner_pid    INTEGER,
    error        TEXT,
    result       TEXT
);
CREATE INDEX runs_job_id ON runs (job, id);
CREATE INDEX runs_running ON runs (outcome) WHERE outcome = 'running';
CREATE TABLE daemon (
    id           INTEGER PRIMARY KEY,
    pid          INTEGER NOT NULL,
    started_at   TEXT    NOT NULL,
    heartbeat_at TEXT,
    stopped_at   TEXT
);
"#,
    r#"
ALTER TABLE runs ADD COLUMN stuck INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN executor TEXT;
CREATE INDEX runs_job_slot ON runs (job, scheduled_at);
CREATE INDEX runs_stuck ON runs (stuck) WHERE stuck = 1;
"#,
    r#"
ALTER TABLE runs ADD COLUMN peak_rss_bytes INTEGER;
ALTER TABLE runs ADD COLUMN cpu_ms INTEGER;
CREATE INDEX runs_started ON runs (started_at);
"#,
    // Every index is written at every run: the daily prune can scan instead.
    r#"
DROP INDEX IF EXISTS runs_started;
"#,
    // Run ids are handed out by the writer before the row is written (a run never waits for the
    // database); `meta.next_run_id` is the first id no process has reserved. A compact `skipped`
    // row covers a whole gap of missed slots.
    r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
ALTER TABLE runs ADD COLUMN missed_count INTEGER;
ALTER TABLE runs ADD COLUMN missed_from TEXT;
ALTER TABLE runs ADD COLUMN missed_to TEXT;
CREATE INDEX runs_gaps ON runs (job, missed_to) WHERE missed_to IS NOT NULL;
"#,
    // A run's identity that no database hands out (a UUIDv7 made when it starts): its process
    // tag, its result file and every update of its row carry it, so an update never touches
    // another run's row, whatever happened to the file and its ids meanwhile.
    r#"
ALTER TABLE runs ADD COLUMN uid TEXT;
CREATE UNIQUE INDEX runs_uid ON runs (uid);
"#,
    // Cluster mode: the history is the node's journal. Rows carry the node, its incarnation and
    // the slot's fencing token; every change of a cluster row bumps `rev`, and the uploader marks
    // what the cluster's database has with `synced`.
    r#"
ALTER TABLE runs ADD COLUMN node TEXT;
ALTER TABLE runs ADD COLUMN node_epoch INTEGER;
ALTER TABLE runs ADD COLUMN fence INTEGER;
ALTER TABLE runs ADD COLUMN degraded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN rev INTEGER NOT NULL DEFAULT 1;
ALTER TABLE runs ADD COLUMN synced INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_unsynced ON runs (id) WHERE node IS NOT NULL AND synced < rev;
CREATE TRIGGER runs_rev AFTER UPDATE ON runs FOR EACH ROW
  WHEN NEW.node IS NOT NULL AND NEW.synced = OLD.synced AND NEW.rev = OLD.rev
BEGIN
  UPDATE runs SET rev = OLD.rev + 1 WHERE id = NEW.id;
END;
"#,
];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How a run ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Running,
    Success,
    Failed,
    Timeout,
    Crashed,
    Skipped,
    Cancelled,
    Abandoned,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Crashed => "crashed",
            Outcome::Skipped => "skipped",
            Outcome::Cancelled => "cancelled",
            Outcome::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        [
            Outcome::Running,
            Outcome::Success,
            Outcome::Failed,
            Outcome::Timeout,
            Outcome::Crashed,
            Outcome::Skipped,
            Outcome::Cancelled,
            Outcome::Abandoned,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerKind {
    Schedule,
    Manual,
    Retry,
    CatchUp,
    /// Cluster mode: a slot run again after the node that ran it died.
    Takeover,
    /// A past slot run by `backfill`, with its original `scheduled_at`.
    Backfill,
}

/// Both enums are stored as their words (`success`, `catch-up`) and read back typed.
macro_rules! word_column {
    ($t:ty, $what:literal) => {
        impl rusqlite::types::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }
        impl rusqlite::types::FromSql for $t {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                let word = value.as_str()?;
                <$t>::parse(word).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(
                        format!("unknown {} `{word}` (written by a newer version?)", $what).into(),
                    )
                })
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
word_column!(Outcome, "outcome");
word_column!(TriggerKind, "trigger");

impl TriggerKind {
    pub fn parse(s: &str) -> Option<TriggerKind> {
        [
            TriggerKind::Schedule,
            TriggerKind::Manual,
            TriggerKind::Retry,
            TriggerKind::CatchUp,
            TriggerKind::Takeover,
            TriggerKind::Backfill,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Schedule => "schedule",
            TriggerKind::Manual => "manual",
            TriggerKind::Retry => "retry",
            TriggerKind::CatchUp => "catch-up",
            TriggerKind::Takeover => "takeover",
            TriggerKind::Backfill => "backfill",
        }
    }
}

/// Which row an update is for: a run's own identity, or (for rows found in the file, such as
/// those a dead process left `running`) the row's id.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    Id(i64),
    Uid(&'a str),
}

impl Key<'_> {
    fn column(self) -> &'static str {
        match self {
            Key::Id(_) => "id",
            Key::Uid(_) => "uid",
        }
    }
}

impl rusqlite::ToSql for Key<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Key::Id(id) => id.to_sql(),
            Key::Uid(uid) => uid.to_sql(),
        }
    }
}

/// A new run's identity: a UUIDv7 (its start instant and 74 random bits), unique across
/// restarts, history files and hosts.
pub fn new_uid() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Cluster mode: which node ran a row, in which incarnation, under which fencing token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct RunTag {
    pub node: String,
    pub epoch: i64,
    /// The slot's fencing token (none for a run made without the cluster's database).
    pub fence: Option<i64>,
    /// Run without the cluster's database (`on_database_loss`).
    pub degraded: bool,
}

/// What is known about a run when it starts.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub uid: &'a str,
    pub job: &'a str,
    pub trigger: TriggerKind,
    pub scheduled_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub attempt: u32,
    pub executor: &'a str,
    pub tag: Option<&'a RunTag>,
}

/// What is known about a run when it ends.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct RunEnd {
    pub finished_at: Option<DateTime<Utc>>,
    /// The peak memory (RSS) of the run's process tree, sampled.
    pub peak_rss_bytes: Option<u64>,
    /// CPU time of the run's process tree, sampled.
    pub cpu_ms: Option<u64>,
    pub entered_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub error: Option<String>,
    /// The job's return value, as JSON text.
    pub result: Option<String>,
}

/// A slot (or a gap of slots) that was not run, as the writer records it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SkippedRow {
    pub id: i64,
    pub uid: String,
    pub job: String,
    pub trigger: TriggerKind,
    /// The slot, or the first slot of the gap.
    pub scheduled_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub owner_pid: u32,
    pub reason: String,
    /// For a gap: how many slots, and the last one.
    pub gap: Option<(u64, DateTime<Utc>)>,
    #[serde(default)]
    pub tag: Option<RunTag>,
}

/// One row of the history, as `history --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: i64,
    pub job: String,
    pub trigger: TriggerKind,
    pub scheduled_at: String,
    pub started_at: String,
    pub entered_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub attempt: u32,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub pid: Option<i64>,
    pub owner_pid: Option<i64>,
    pub error: Option<String>,
    /// The job's return value, verbatim (any JSON Python wrote: big numbers, deep nesting).
    pub result: Option<Box<serde_json::value::RawValue>>,
    pub executor: Option<String>,
    /// An in-process run that timed out but whose thread has not returned yet.
    pub stuck: bool,
    pub peak_rss_bytes: Option<i64>,
    pub cpu_ms: Option<i64>,
    /// A compact `skipped` row for a gap: how many slots were missed, the first and the last.
    pub missed_count: Option<i64>,
    pub missed_from: Option<String>,
    pub missed_to: Option<String>,
    /// The run's identity, unique across restarts, hosts and history files (a UUIDv7); absent
    /// from rows written before schema 6.
    pub run_uid: Option<String>,
    /// Cluster mode: the node that recorded the row, and its incarnation.
    pub node: Option<String>,
    pub node_epoch: Option<i64>,
    /// Cluster mode: the slot's fencing token when the run was made.
    pub fence: Option<i64>,
    /// The run finished after its slot had been given to another node: kept, never decisive.
    pub stale: bool,
    /// Run without the cluster's database, uploaded on reconnect.
    pub degraded: bool,
}

#[cfg(test)]
impl RunRow {
    /// A row of `job` for slot `scheduled_at` (a `fmt_time` string), started then, with
    /// `outcome` and nothing else: for tests to fill in what they look at.
    pub(crate) fn sample(id: i64, job: &str, scheduled_at: &str, outcome: Outcome) -> RunRow {
        RunRow {
            id,
            job: job.into(),
            trigger: TriggerKind::Schedule,
            scheduled_at: scheduled_at.into(),
            started_at: scheduled_at.into(),
            entered_at: None,
            finished_at: None,
            duration_ms: None,
            attempt: 1,
            outcome,
            exit_code: None,
            signal: None,
            pid: None,
            owner_pid: None,
            error: None,
            result: None,
            executor: None,
            stuck: false,
            peak_rss_bytes: None,
            cpu_ms: None,
            missed_count: None,
            missed_from: None,
            missed_to: None,
            run_uid: None,
            node: None,
            node_epoch: None,
            fence: None,
            stale: false,
            degraded: false,
        }
    }
}

/// A journal row the cluster's database does not have yet (or not in this revision).
#[derive(Debug, Clone)]
pub struct Unsynced {
    pub row: RunRow,
    pub rev: i64,
}

/// A daemon's record: when it started and its last heartbeat.
#[derive(Debug, Clone)]
pub struct DaemonRow {
    pub pid: i64,
    pub started_at: String,
    pub heartbeat_at: Option<String>,
}

pub struct History {
    conn: Connection,
    path: PathBuf,
    /// (device, inode) of the file when it was opened.
    identity: Option<(u64, u64)>,
}

/// Formats an instant the way the history stores it.
pub fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

const RUN_COLUMNS: &str = "id, job, trigger, scheduled_at, started_at, entered_at, finished_at, \
     attempt, outcome, exit_code, signal, pid, owner_pid, error, result, executor, stuck, \
     peak_rss_bytes, cpu_ms, missed_count, missed_from, missed_to, uid, node, node_epoch, fence, \
     degraded, rev";

impl History {
    /// Opens (creating if needed) the history for writing, and brings its schema up to date.
    pub fn open(path: &Path) -> Result<History> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::io(
                    format!("cannot create the history folder `{}`", dir.display()),
                    e,
                )
            })?;
        }
        // Never through a link planted where the history should be.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(|e| Error::history(path, e))?;
        let h = History {
            conn,
            path: path.to_path_buf(),
            identity: identity(path),
        };
        h.configure().map_err(|e| Error::history(path, e))?;
        h.migrate().map_err(|e| Error::history(path, e))?;
        Ok(h)
    }

    /// Opens an existing history for reading; `None` when there is none yet. A history written by
    /// an older version is brought up to date first (in one transaction, as the daemon would);
    /// when that is not possible the error says how to do it.
    pub fn open_read_only(path: &Path) -> Result<Option<History>> {
        if !path.exists() {
            return Ok(None);
        }
        let open = || -> Result<(Connection, i64)> {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_NOFOLLOW,
            )
            .map_err(|e| Error::history(path, e))?;
            conn.busy_timeout(Duration::from_secs(5))
                .map_err(|e| Error::history(path, e))?;
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(|e| Error::history(path, e))?;
            Ok((conn, version))
        };
        let (mut conn, mut version) = open()?;
        if version == 0 {
            // Empty, or being created right now: nothing to read yet.
            return Ok(None);
        }
        if version < SCHEMA_VERSION {
            drop(conn);
            History::open(path).map_err(|e| {
                Error::Unwritable(format!(
                    "the history `{}` has schema version {version}, older than this build's {SCHEMA_VERSION}, and cannot be upgraded here ({e}); run `hedge-scheduler run` or `run-once` once as a user who can write it",
                    path.display()
                ))
            })?;
            (conn, version) = open()?;
        }
        let _ = version;
        Ok(Some(History {
            conn,
            path: path.to_path_buf(),
            identity: identity(path),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn configure(&self) -> rusqlite::Result<()> {
        self.conn.busy_timeout(Duration::from_secs(5))?;
        let _mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        // WAL with synchronous=NORMAL survives a process crash; only an OS crash can lose the
        // last transactions, and never corrupts the database.
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(())
    }

    /// Brings the schema up to date in one transaction: a reader sees the old schema or the new
    /// one, never a step between.
    fn migrate(&self) -> rusqlite::Result<()> {
        let current = |conn: &Connection| -> rusqlite::Result<i64> {
            conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        };
        if current(&self.conn)? >= SCHEMA_VERSION {
            return Ok(());
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let applied = (|| {
            // Read again under the write lock: another process may have migrated meanwhile.
            let version = current(&self.conn)?;
            let done = usize::try_from(version).unwrap_or(0);
            for sql in MIGRATIONS.iter().skip(done) {
                self.conn.execute_batch(sql)?;
            }
            if version < SCHEMA_VERSION {
                self.conn
                    .pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            Ok(())
        })();
        match applied {
            Ok(()) => self.conn.execute_batch("COMMIT"),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// The first run id no process has taken: past every row and every reservation.
    pub fn first_free_id(&self) -> Result<i64> {
        let max: i64 = self
            .conn
            .query_row("SELECT coalesce(max(id), 0) + 1 FROM runs", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))?;
        Ok(max.max(self.reserved_until()?.unwrap_or(0)))
    }

    /// `meta.next_run_id`: ids below it are taken or reserved by some process.
    pub fn reserved_until(&self) -> Result<Option<i64>> {
        self.conn
            .prepare_cached("SELECT value FROM meta WHERE key = 'next_run_id'")
            .and_then(|mut st| st.query_row([], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    /// Sets `meta.next_run_id` to `until` (it only grows).
    pub fn reserve_until(&self, until: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('next_run_id', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            )
            .and_then(|mut st| st.execute(params![until]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Lowers `meta.next_run_id` from `ours` to `next` if nobody moved it past `ours`.
    pub fn release_reservation(&self, ours: i64, next: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE meta SET value = ?2 WHERE key = 'next_run_id' AND value = ?1")
            .and_then(|mut st| st.execute(params![ours, next]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Writes the `running` row of run `id`, started by process `owner`.
    pub fn insert_run(
        &self,
        id: i64,
        run: &NewRun<'_>,
        owner: u32,
        pid: Option<u32>,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO runs (id, job, trigger, scheduled_at, started_at, attempt, outcome,
                                   owner_pid, executor, pid, uid, node, node_epoch, fence,
                                   degraded)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                 ON CONFLICT (uid) DO NOTHING",
            )
            .and_then(|mut st| {
                st.execute(params![
                    id,
                    run.job,
                    run.trigger.as_str(),
                    fmt_time(run.scheduled_at),
                    fmt_time(run.started_at),
                    run.attempt,
                    owner,
                    run.executor,
                    pid,
                    run.uid,
                    run.tag.map(|t| &t.node),
                    run.tag.map(|t| t.epoch),
                    run.tag.and_then(|t| t.fence),
                    run.tag.is_some_and(|t| t.degraded),
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Writes a `skipped` row (a slot, or a gap of slots).
    pub fn insert_skipped(&self, row: &SkippedRow) -> Result<()> {
        let (count, to) = match row.gap {
            Some((n, to)) => (
                Some(i64::try_from(n).unwrap_or(i64::MAX)),
                Some(fmt_time(to)),
            ),
            None => (None, None),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO runs (id, job, trigger, scheduled_at, started_at, finished_at, attempt,
                                   outcome, owner_pid, error, missed_count, missed_from, missed_to,
                                   uid, node, node_epoch, fence, degraded)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1, 'skipped', ?6, ?7, ?8, ?9, ?10, ?11, ?12,
                         ?13, ?14, ?15)
                 ON CONFLICT (uid) DO NOTHING",
            )
            .and_then(|mut st| {
                st.execute(params![
                    row.id,
                    row.job,
                    row.trigger.as_str(),
                    fmt_time(row.scheduled_at),
                    fmt_time(row.recorded_at),
                    row.owner_pid,
                    row.reason,
                    count,
                    count.map(|_| fmt_time(row.scheduled_at)),
                    to,
                    row.uid,
                    row.tag.as_ref().map(|t| &t.node),
                    row.tag.as_ref().map(|t| t.epoch),
                    row.tag.as_ref().and_then(|t| t.fence),
                    row.tag.as_ref().is_some_and(|t| t.degraded),
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Grows the compact gap row `uid` to `count` slots up to `last` (never shrinks it).
    pub fn grow_gap(&self, uid: &str, count: u64, last: DateTime<Utc>) -> Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE runs SET missed_count = max(coalesce(missed_count, 0), ?2),
                                 missed_to = max(coalesce(missed_to, ''), ?3)
                 WHERE uid = ?1 AND missed_count IS NOT NULL",
            )
            .and_then(|mut st| {
                st.execute(params![
                    uid,
                    i64::try_from(count).unwrap_or(i64::MAX),
                    fmt_time(last)
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// How long a statement waits for another process's lock before it fails.
    pub fn set_busy_timeout(&self, d: Duration) -> Result<()> {
        self.conn.busy_timeout(d).map_err(|e| self.err(e))
    }

    /// Starts a write transaction (the writer's batches).
    pub fn begin(&self) -> Result<()> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err(e))
    }

    pub fn commit(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT").map_err(|e| self.err(e))
    }

    pub fn rollback(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        Error::history(&self.path, e)
    }

    /// Writes the `running` row of a run that starts now, with the next free id (for tools and
    /// benchmarks; the daemon's writer hands ids out itself); returns the id.
    pub fn start_run(&self, run: &NewRun<'_>) -> Result<i64> {
        let id = self.first_free_id()?;
        self.insert_run(id, run, std::process::id(), None)?;
        self.reserve_until(id + 1)?;
        Ok(id)
    }

    /// Records the PID of the process that runs `id`.
    pub fn set_pid(&self, key: Key<'_>, pid: u32) -> Result<bool> {
        self.update(key, "pid = ?2", params![key, pid])
    }

    /// Runs `UPDATE runs SET {set} WHERE <key> = ?1`; returns whether a row changed.
    fn update(&self, key: Key<'_>, set: &str, params: &[&dyn rusqlite::ToSql]) -> Result<bool> {
        self.update_where(key, set, "", params)
    }

    /// `update` with a further condition (` AND …`).
    fn update_where(
        &self,
        key: Key<'_>,
        set: &str,
        and: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<bool> {
        let n = self
            .conn
            .prepare_cached(&format!(
                "UPDATE runs SET {set} WHERE {} = ?1{and}",
                key.column()
            ))
            .and_then(|mut st| st.execute(params))
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// Completes the row of run `id`; returns whether there was one.
    pub fn finish_run(&self, key: Key<'_>, outcome: Outcome, end: &RunEnd) -> Result<bool> {
        self.end_run(key, outcome, end, "")
    }

    /// Completes the row only if it is still `running` (a row settled at start-up must not undo
    /// an end that a replayed write recorded first).
    pub fn settle_run(&self, key: Key<'_>, outcome: Outcome, end: &RunEnd) -> Result<bool> {
        self.end_run(key, outcome, end, " AND outcome = 'running'")
    }

    fn end_run(&self, key: Key<'_>, outcome: Outcome, end: &RunEnd, and: &str) -> Result<bool> {
        let finished = end.finished_at.unwrap_or_else(Utc::now);
        self.update_where(
            key,
            "outcome = ?2, finished_at = ?3, entered_at = ?4, exit_code = ?5, signal = ?6,
             error = ?7, result = ?8, peak_rss_bytes = ?9, cpu_ms = ?10",
            and,
            params![
                key,
                outcome.as_str(),
                fmt_time(finished),
                end.entered_at.map(fmt_time),
                end.exit_code,
                end.signal,
                end.error,
                end.result,
                end.peak_rss_bytes.and_then(|b| i64::try_from(b).ok()),
                end.cpu_ms.and_then(|b| i64::try_from(b).ok()),
            ],
        )
    }

    /// Whether the database file on disk is still the one this handle writes to (it may have
    /// been removed or replaced while we ran).
    pub fn file_is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let on_disk = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        on_disk.is_some() && on_disk == self.identity
    }

    /// The daemon's heartbeat; false when its record is gone.
    pub fn heartbeat(&self, id: i64, at: DateTime<Utc>) -> Result<bool> {
        let n = self
            .conn
            .prepare_cached("UPDATE daemon SET heartbeat_at = ?2 WHERE id = ?1")
            .and_then(|mut st| st.execute(params![id, fmt_time(at)]))
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// Deletes runs that started before `before`; returns how many.
    pub fn prune(&self, before: DateTime<Utc>) -> Result<usize> {
        let n = self
            .conn
            .execute(
                "DELETE FROM runs WHERE started_at < ?1 AND outcome <> 'running'",
                params![fmt_time(before)],
            )
            .map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// Distinct slots of `job` in `[from, to)` that ran successfully, and failed runs started
    /// in that span.
    pub fn day_counts(
        &self,
        job: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(u64, u64)> {
        let (from, to) = (fmt_time(from), fmt_time(to));
        let done: i64 = self
            .conn
            .prepare_cached(
                "SELECT count(DISTINCT scheduled_at) FROM runs
                 WHERE job = ?1 AND scheduled_at >= ?2 AND scheduled_at < ?3
                   AND outcome = 'success' AND trigger <> 'manual'",
            )
            .and_then(|mut st| st.query_row(params![job, from, to], |r| r.get(0)))
            .map_err(|e| self.err(e))?;
        let failed: i64 = self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM runs
                 WHERE job = ?1 AND scheduled_at >= ?2 AND scheduled_at < ?3
                   AND outcome IN ('failed', 'timeout', 'crashed', 'abandoned')",
            )
            .and_then(|mut st| st.query_row(params![job, from, to], |r| r.get(0)))
            .map_err(|e| self.err(e))?;
        Ok((done.max(0) as u64, failed.max(0) as u64))
    }

    /// Marks an in-process run whose thread is stuck (or, with false, has returned).
    pub fn set_stuck(&self, key: Key<'_>, stuck: bool) -> Result<bool> {
        self.update(key, "stuck = ?2", params![key, stuck])
    }

    /// Replaces the executor of run `id`.
    pub fn set_executor(&self, key: Key<'_>, executor: &str) -> Result<bool> {
        self.update(key, "executor = ?2", params![key, executor])
    }

    /// Replaces the error text of run `id`.
    pub fn set_error(&self, key: Key<'_>, error: &str) -> Result<bool> {
        self.update(key, "error = ?2", params![key, error])
    }

    /// The latest slot of `job` the scheduler dealt with (ran, retried, caught up or skipped):
    /// slots after it and before now were missed.
    pub fn last_slot(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        let s: Option<String> = self
            .conn
            .prepare_cached(
                "SELECT max(scheduled_at) FROM runs
                 WHERE job = ?1 AND trigger IN ('schedule', 'catch-up', 'retry')",
            )
            .and_then(|mut st| st.query_row(params![job], |r| r.get(0)))
            .map_err(|e| self.err(e))?;
        // A compact gap row stands for slots up to its last one.
        let gap: Option<String> = self
            .conn
            .prepare_cached(
                "SELECT max(missed_to) FROM runs WHERE job = ?1 AND missed_to IS NOT NULL",
            )
            .and_then(|mut st| st.query_row(params![job], |r| r.get(0)))
            .map_err(|e| self.err(e))?;
        Ok([s, gap]
            .iter()
            .flatten()
            .filter_map(|t| parse_time(t))
            .max())
    }

    /// The newest runs, of one job or of all, newest first.
    pub fn runs(&self, job: Option<&str>, limit: usize) -> Result<Vec<RunRow>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match job {
            Some(job) => {
                let mut st = self
                    .conn
                    .prepare_cached(&format!(
                        "SELECT {RUN_COLUMNS} FROM runs WHERE job = ?1 ORDER BY id DESC LIMIT ?2"
                    ))
                    .map_err(|e| self.err(e))?;
                st.query_map(params![job, limit], run_row)
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            }
            None => {
                let mut st = self
                    .conn
                    .prepare_cached(&format!(
                        "SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?1"
                    ))
                    .map_err(|e| self.err(e))?;
                st.query_map(params![limit], run_row)
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            }
        };
        rows.map_err(|e| self.err(e))
    }

    /// The newest run of `job` that was not skipped.
    pub fn last_run(&self, job: &str) -> Result<Option<RunRow>> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE job = ?1 AND outcome <> 'skipped'
                 ORDER BY id DESC LIMIT 1"
            ))
            .and_then(|mut st| st.query_row(params![job], run_row).optional())
            .map_err(|e| self.err(e))
    }

    /// When the last successful run of `job` ended.
    pub fn last_success(&self, job: &str) -> Result<Option<String>> {
        self.conn
            .prepare_cached(
                "SELECT max(finished_at) FROM runs WHERE job = ?1 AND outcome = 'success'",
            )
            .and_then(|mut st| st.query_row(params![job], |r| r.get(0)))
            .map_err(|e| self.err(e))
    }

    /// Every row whose slot (or gap of slots) falls in `[from, to)`, oldest slot first.
    pub fn runs_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<RunRow>> {
        let (from, to) = (fmt_time(from), fmt_time(to));
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs
                 WHERE scheduled_at < ?2 AND (scheduled_at >= ?1 OR missed_to >= ?1)
                 ORDER BY scheduled_at, id"
            ))
            .map_err(|e| self.err(e))?;
        st.query_map(params![from, to], run_row)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))
    }

    /// The row of run `id`.
    pub fn run_by_id(&self, id: i64) -> Result<Option<RunRow>> {
        self.conn
            .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"))
            .and_then(|mut st| st.query_row(params![id], run_row).optional())
            .map_err(|e| self.err(e))
    }

    /// The row of the run with this identity.
    pub fn run_by_uid(&self, uid: &str) -> Result<Option<RunRow>> {
        self.conn
            .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE uid = ?1"))
            .and_then(|mut st| st.query_row(params![uid], run_row).optional())
            .map_err(|e| self.err(e))
    }

    /// Cluster rows the cluster's database does not have in their latest revision, oldest
    /// first.
    pub fn unsynced(&self, limit: usize) -> Result<Vec<Unsynced>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE node IS NOT NULL AND synced < rev
                 ORDER BY id LIMIT ?1"
            ))
            .and_then(|mut st| {
                st.query_map(params![limit], |r| {
                    Ok(Unsynced {
                        row: run_row(r)?,
                        rev: r.get(27)?,
                    })
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            })
            .map_err(|e| self.err(e))
    }

    /// Notes that the cluster's database has revision `rev` of run `uid`.
    pub fn set_synced(&self, uid: &str, rev: i64) -> Result<bool> {
        self.update_where(
            Key::Uid(uid),
            "synced = ?2",
            " AND synced < ?2",
            params![uid, rev],
        )
    }

    /// Rows still marked `running`, oldest first.
    pub fn running(&self) -> Result<Vec<RunRow>> {
        self.rows_where("outcome = 'running'")
    }

    /// Embedded runs that timed out while their thread is stuck, oldest first.
    pub fn stuck(&self) -> Result<Vec<RunRow>> {
        self.rows_where("stuck = 1")
    }

    /// The runs matching a fixed condition (served by a partial index), oldest first.
    fn rows_where(&self, condition: &str) -> Result<Vec<RunRow>> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE {condition} ORDER BY id"
            ))
            .and_then(|mut st| {
                st.query_map([], run_row)
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            })
            .map_err(|e| self.err(e))
    }

    /// Records that a daemon started; returns the record's id.
    pub fn daemon_started(&self, pid: u32, at: DateTime<Utc>) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO daemon (pid, started_at, heartbeat_at) VALUES (?1, ?2, ?2)",
                params![pid, fmt_time(at)],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn daemon_stopped(&self, id: i64, at: DateTime<Utc>) -> Result<()> {
        self.conn
            .execute(
                "UPDATE daemon SET stopped_at = ?2 WHERE id = ?1",
                params![id, fmt_time(at)],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The newest daemon record of process `pid`.
    pub fn daemon(&self, pid: i64) -> Result<Option<DaemonRow>> {
        self.conn
            .query_row(
                "SELECT pid, started_at, heartbeat_at FROM daemon WHERE pid = ?1
                 ORDER BY id DESC LIMIT 1",
                params![pid],
                |r| {
                    Ok(DaemonRow {
                        pid: r.get(0)?,
                        started_at: r.get(1)?,
                        heartbeat_at: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn run_row(r: &Row<'_>) -> rusqlite::Result<RunRow> {
    let started_at: String = r.get(4)?;
    let finished_at: Option<String> = r.get(6)?;
    let duration_ms = match (
        parse_time(&started_at),
        finished_at.as_deref().and_then(parse_time),
    ) {
        (Some(s), Some(f)) => Some((f - s).num_milliseconds()),
        _ => None,
    };
    let result: Option<String> = r.get(14)?;
    Ok(RunRow {
        id: r.get(0)?,
        job: r.get(1)?,
        trigger: r.get(2)?,
        scheduled_at: r.get(3)?,
        started_at,
        entered_at: r.get(5)?,
        finished_at,
        duration_ms,
        attempt: r.get(7)?,
        outcome: r.get(8)?,
        exit_code: r.get(9)?,
        signal: r.get(10)?,
        pid: r.get(11)?,
        owner_pid: r.get(12)?,
        error: r.get(13)?,
        result: result.and_then(|s| serde_json::value::RawValue::from_string(s).ok()),
        executor: r.get(15)?,
        stuck: r.get::<_, i64>(16)? != 0,
        peak_rss_bytes: r.get(17)?,
        cpu_ms: r.get(18)?,
        missed_count: r.get(19)?,
        missed_from: r.get(20)?,
        missed_to: r.get(21)?,
        run_uid: r.get(22)?,
        node: r.get(23)?,
        node_epoch: r.get(24)?,
        fence: r.get(25)?,
        stale: false,
        degraded: r.get::<_, i64>(26)? != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_recorded_at_start_and_completed_at_end() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(&dir.path().join("h.sqlite3")).unwrap();
        let t0 = Utc::now();
        h.start_run(&NewRun {
            uid: "u",
            job: "j",
            trigger: TriggerKind::Manual,
            scheduled_at: t0,
            started_at: t0,
            attempt: 1,
            executor: "subprocess",
            tag: None,
        })
        .unwrap();
        assert_eq!(h.running().unwrap().len(), 1);
        h.finish_run(
            Key::Uid("u"),
            Outcome::Success,
            &RunEnd {
                result: Some("{\"n\": 3}".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let rows = h.runs(Some("j"), 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].outcome, Outcome::Success);
        assert_eq!(rows[0].result.as_ref().unwrap().get(), r#"{"n": 3}"#);
        assert!(h.running().unwrap().is_empty());
        // Reopening keeps the schema and the rows.
        drop(h);
        let h = History::open(&dir.path().join("h.sqlite3")).unwrap();
        assert_eq!(h.runs(None, 10).unwrap().len(), 1);
    }

    #[test]
    fn times_round_trip_with_microseconds() {
        let t = Utc::now();
        let back = parse_time(&fmt_time(t)).unwrap();
        assert!((back - t).num_microseconds().unwrap().abs() < 1);
    }
}
