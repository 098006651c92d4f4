//! The history's queries: runs by job, day, id or uid, today's counts, the last slot dealt
//! with, the rows still to upload, and the daemons' rows.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};

use super::*;
use crate::error::Result;

const RUN_COLUMNS: &str = "id, job, trigger, scheduled_at, started_at, entered_at, finished_at, \
     attempt, outcome, exit_code, signal, pid, owner_pid, error, result, executor, stuck, \
     peak_rss_bytes, cpu_ms, missed_count, missed_from, missed_to, uid, node, node_epoch, fence, \
     degraded, rev";

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

impl History {
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
