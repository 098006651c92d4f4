//! The run history: one SQLite database (WAL, so `status` reads while the daemon writes).
//!
//! Every run gets a row when it starts (`running`) and the row is completed when it ends, so a run
//! is never lost even when the process that made it dies. Times are stored as UTC text with
//! microseconds (`2026-11-27T09:15:00.000123Z`), which sorts as it reads. The schema is versioned
//! with `PRAGMA user_version`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::rows::*;
use super::schema::{MIGRATIONS, SCHEMA_VERSION};
use crate::error::{Error, Result};

/// The history's database, open for reading and writing (the daemon's writer, a run-once) or
/// for reading only (`status`, `history`, the page).
pub struct History {
    pub(super) conn: Connection,
    path: PathBuf,
    /// (device, inode) of the file when it was opened.
    identity: Option<(u64, u64)>,
}

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

    pub(super) fn err(&self, e: rusqlite::Error) -> Error {
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

    /// Notes that the cluster's database has revision `rev` of run `uid`.
    pub fn set_synced(&self, uid: &str, rev: i64) -> Result<bool> {
        self.update_where(
            Key::Uid(uid),
            "synced = ?2",
            " AND synced < ?2",
            params![uid, rev],
        )
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
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
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
