//! The one writer of the history: every row (a run's start and end, a skipped slot or gap, a
//! stuck mark, the daemon's record and heartbeat, the daily prune) goes through its queue and is
//! written on its own thread, in order, a batch per transaction.
//!
//! Nobody waits for it: a run's id is handed out at once from a counter (ids are reserved ahead in
//! `meta.next_run_id`, so another process such as `run-once` takes ids past ours), and a write is
//! a message. When the database refuses (locked by another process, disk full, file removed) the
//! writes stay queued, in order, and are retried with a growing pause; the health check shows how
//! many wait and why. A run's end is an upsert: if its start row is gone (the file was removed or
//! replaced mid-run), the whole row is written again.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::queue::*;
use super::rows::{Outcome, RunEnd, RunTag, SkippedRow, TriggerKind};
use super::spill::{self, Spill};
use super::store::History;
use super::writer::{State, Writer};
use crate::error::{Error, Result};

/// A handle on the writer: cheap to clone, never blocks (but `flush` and `close`).
#[derive(Clone)]
pub struct Recorder {
    tx: Sender<Msg>,
    ids: Arc<AtomicI64>,
    /// Writes sent and not yet committed.
    waiting: Arc<AtomicUsize>,
    health: Arc<Mutex<RecorderHealth>>,
    owner: u32,
    /// The spill journal, where refused writes outlive us.
    spill_path: Option<PathBuf>,
    /// Cluster mode: the node and incarnation that rows recorded now belong to.
    tag: Arc<Mutex<Option<RunTag>>>,
}

impl Recorder {
    /// Opens (creating and migrating if needed) the history at `path` and starts its writer.
    /// `ahead` ids are reserved at a time: many for a daemon, one for a single run.
    pub fn open(path: &Path, ahead: i64) -> Result<Recorder> {
        let history = History::open(path)?;
        history.set_busy_timeout(BUSY_TIMEOUT)?;
        let next = history.first_free_id()?;
        let ids = Arc::new(AtomicI64::new(next));
        let health = Arc::new(Mutex::new(RecorderHealth::default()));
        let waiting = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let owner = std::process::id();
        let reserve = if ahead > 0 {
            spill::DAEMON_RESERVE
        } else {
            spill::RUN_RESERVE
        };
        let spill = match Spill::open(path, reserve) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    "history: no spill journal ({e}): writes the database refuses are kept in memory only"
                );
                None
            }
        };
        let spill_path = spill.as_ref().map(|s| s.path().to_path_buf());
        // What processes that are gone could not write comes first.
        let (lines, claimed) = spill::leftovers(path);
        let mut queue = VecDeque::new();
        for line in &lines {
            match serde_json::from_str::<Write>(line) {
                Ok(Write::Heartbeat { .. }) => {}
                Ok(w) => queue.push_back(w),
                Err(e) => tracing::error!("history: a spilled write cannot be read ({e}): {line}"),
            }
        }
        if !queue.is_empty() {
            tracing::warn!(
                "history: writing {} row update(s) that a previous process could not write",
                queue.len()
            );
        }
        waiting.fetch_add(queue.len(), Ordering::SeqCst);
        let writer = Writer {
            spill,
            spilled: 0,
            claimed,
            path: path.to_path_buf(),
            history: Some(history),
            queue,
            state: State::default(),
            ids: Arc::clone(&ids),
            ahead: ahead.max(0),
            health: Arc::clone(&health),
            waiting: Arc::clone(&waiting),
            owner,
            failing_since: None,
            last_error: None,
        };
        std::thread::Builder::new()
            .name("history".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::io("cannot start the history writer", e))?;
        Ok(Recorder {
            tx,
            ids,
            waiting,
            health,
            owner,
            spill_path,
            tag: Arc::default(),
        })
    }

    /// Cluster mode: the node (and incarnation) whose rows are recorded from now on.
    pub fn set_tag(&self, tag: Option<RunTag>) {
        if let Ok(mut t) = self.tag.lock() {
            *t = tag;
        }
    }

    /// The node tag of rows recorded now (cluster mode), with no fence.
    pub fn tag(&self) -> Option<RunTag> {
        self.tag.lock().ok().and_then(|t| t.clone())
    }

    /// Notes that the cluster's database has revision `rev` of run `uid`.
    pub fn synced(&self, uid: &str, rev: i64) {
        self.send(Write::Synced {
            uid: uid.to_string(),
            rev,
        });
    }

    /// A new run id, at once.
    pub fn next_id(&self) -> i64 {
        self.ids.fetch_add(1, Ordering::SeqCst)
    }

    fn send(&self, w: Write) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(Msg::Write(w)).is_err() {
            tracing::error!("❗ the history writer has stopped: a row is lost");
        }
    }

    pub fn start(&self, mut row: StartRow) {
        row.owner.get_or_insert(self.owner);
        self.send(Write::Start(row));
    }

    pub fn set_pid(&self, uid: &str, pid: u32) {
        self.send(Write::Pid {
            uid: uid.to_string(),
            pid,
        });
    }

    /// Records how the run is really made, when it is not as its start row said.
    pub fn set_executor(&self, uid: &str, executor: String) {
        self.send(Write::Executor {
            uid: uid.to_string(),
            executor,
        });
    }

    pub fn finish(&self, uid: &str, outcome: Outcome, end: RunEnd) {
        self.send(Write::Finish {
            uid: uid.to_string(),
            outcome,
            end,
        });
    }

    /// Records a slot that was not run, or a gap of `count` slots up to `last`; returns its id.
    pub fn skipped(
        &self,
        job: &str,
        trigger: TriggerKind,
        slot: DateTime<Utc>,
        reason: &str,
        gap: Option<(u64, DateTime<Utc>)>,
    ) -> i64 {
        let id = self.next_id();
        self.send(Write::Skipped(SkippedRow {
            id,
            uid: super::new_uid(),
            job: job.to_string(),
            trigger,
            scheduled_at: slot,
            recorded_at: Utc::now(),
            owner_pid: self.owner,
            reason: reason.to_string(),
            gap,
            tag: self.tag(),
        }));
        id
    }

    /// Records (or grows) the compact row `uid` of a gap of `count` slots from `first` to `last`:
    /// a pause's slots go into one row that grows as they pass. `id` is used the first time.
    #[allow(clippy::too_many_arguments)]
    pub fn gap_row(
        &self,
        id: i64,
        uid: &str,
        job: &str,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
        count: u64,
        reason: &str,
    ) {
        self.send(Write::Gap(SkippedRow {
            id,
            uid: uid.to_string(),
            job: job.to_string(),
            trigger: TriggerKind::Schedule,
            scheduled_at: first,
            recorded_at: Utc::now(),
            owner_pid: self.owner,
            reason: reason.to_string(),
            gap: Some((count, last)),
            tag: self.tag(),
        }));
    }

    pub fn set_stuck(&self, uid: &str, stuck: bool) {
        self.send(Write::Stuck {
            uid: uid.to_string(),
            stuck,
        });
    }

    pub fn set_error(&self, uid: &str, error: String) {
        self.send(Write::Error {
            uid: uid.to_string(),
            error,
        });
    }

    /// Completes a row found `running` in the file whose process is gone (by its uid when it
    /// has one, else its id).
    pub fn settle(&self, id: i64, uid: Option<String>, outcome: Outcome, end: RunEnd) {
        self.send(Write::Settle {
            id,
            uid,
            outcome,
            end,
        });
    }

    pub fn daemon_started(&self, pid: u32, at: DateTime<Utc>) {
        self.send(Write::DaemonStarted { pid, at });
    }

    pub fn heartbeat(&self, at: DateTime<Utc>) {
        self.send(Write::Heartbeat { at });
    }

    pub fn daemon_stopped(&self, at: DateTime<Utc>) {
        self.send(Write::DaemonStopped { at });
    }

    pub fn prune(&self, before: DateTime<Utc>) {
        self.send(Write::Prune { before });
    }

    /// Waits (blocking) until every queued write is in the database, up to `timeout`; returns
    /// how many still wait.
    pub fn flush(&self, timeout: Duration) -> usize {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_err() {
            return self.waiting();
        }
        rx.recv_timeout(timeout).unwrap_or_else(|_| self.waiting())
    }

    /// Writes what it can within `timeout` and stops the writer (blocking); returns how many
    /// writes could not be made.
    pub fn close(&self, timeout: Duration) -> usize {
        let (tx, rx) = std::sync::mpsc::channel();
        if self
            .tx
            .send(Msg::Close(Instant::now() + timeout, tx))
            .is_err()
        {
            return self.waiting();
        }
        rx.recv_timeout(timeout + BUSY_TIMEOUT * 2)
            .unwrap_or_else(|_| self.waiting())
    }

    /// Where writes the database refused are kept for the next process.
    pub fn spill_path(&self) -> Option<&Path> {
        self.spill_path.as_deref()
    }

    pub fn health(&self) -> RecorderHealth {
        let mut h = self.health.lock().map(|h| h.clone()).unwrap_or_default();
        h.waiting = self.waiting();
        h
    }

    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(r: &Recorder, job: &str) -> i64 {
        let id = r.next_id();
        r.start(StartRow {
            id,
            uid: format!("uid-{job}-{id}"),
            job: job.into(),
            trigger: TriggerKind::Schedule,
            scheduled_at: Utc::now(),
            started_at: Utc::now(),
            attempt: 1,
            executor: "subprocess".into(),
            pid: None,
            owner: None,
            tag: None,
        });
        id
    }

    #[test]
    fn writes_wait_while_another_process_holds_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite3");
        let r = Recorder::open(&path, 64).unwrap();
        let locker = rusqlite::Connection::open(&path).unwrap();
        locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let a = start(&r, "a");
        let b = start(&r, "b");
        assert_eq!(b, a + 1, "ids are handed out without the database");
        r.finish(&format!("uid-a-{a}"), Outcome::Success, RunEnd::default());
        assert_eq!(
            r.flush(Duration::from_millis(1500)),
            3,
            "the lock holds the writes back"
        );
        assert!(r.health().problem.is_some());
        locker.execute_batch("COMMIT").unwrap();
        assert_eq!(r.flush(Duration::from_secs(10)), 0);
        assert!(r.health().problem.is_none());
        let h = History::open_read_only(&path).unwrap().unwrap();
        let rows = h.runs(None, 10).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows.iter().find(|r| r.id == a).unwrap().outcome,
            Outcome::Success
        );
        assert_eq!(
            rows.iter().find(|r| r.id == b).unwrap().outcome,
            Outcome::Running
        );
    }

    #[test]
    fn a_run_whose_file_was_replaced_is_written_whole_and_ids_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite3");
        let r = Recorder::open(&path, 64).unwrap();
        let a = start(&r, "a");
        assert_eq!(r.flush(Duration::from_secs(5)), 0);
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
        r.finish(&format!("uid-a-{a}"), Outcome::Success, RunEnd::default());
        let b = start(&r, "b");
        assert_eq!(r.flush(Duration::from_secs(5)), 0);
        assert!(b > a);
        let h = History::open_read_only(&path).unwrap().unwrap();
        let rows = h.runs(None, 10).unwrap();
        let row_a = rows.iter().find(|r| r.id == a).expect("run a rewritten");
        assert_eq!(row_a.outcome, Outcome::Success);
        assert_eq!(row_a.job, "a");
    }

    #[test]
    fn another_process_taking_ids_moves_ours_past_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite3");
        let r = Recorder::open(&path, 4).unwrap();
        let a = start(&r, "a");
        assert_eq!(r.flush(Duration::from_secs(5)), 0);
        // Another process (run-once) takes an id past our reservation.
        let other = Recorder::open(&path, 1).unwrap();
        let theirs = start(&other, "x");
        assert_eq!(other.close(Duration::from_secs(5)), 0);
        assert!(theirs > a);
        // Our next write learns of it; ids handed out after that come after theirs.
        let b = start(&r, "a");
        assert_eq!(r.flush(Duration::from_secs(5)), 0);
        let c = start(&r, "a");
        assert!(b < theirs && c > theirs, "{b} {theirs} {c}");
        assert_eq!(r.flush(Duration::from_secs(5)), 0);
        // A tool inserting by hand takes the id we hand out next: ours is recorded under
        // another one, nothing is lost.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO runs (job, trigger, scheduled_at, started_at, outcome) VALUES ('y', 'manual', 'x', 'x', 'success')",
            [],
        )
        .unwrap();
        let by_hand = conn.last_insert_rowid();
        let d = start(&r, "a");
        assert_eq!(d, by_hand, "the collision this test is about");
        r.finish(&format!("uid-a-{d}"), Outcome::Success, RunEnd::default());
        assert_eq!(r.flush(Duration::from_secs(5)), 0);
        let h = History::open_read_only(&path).unwrap().unwrap();
        let rows = h.runs(None, 100).unwrap();
        assert_eq!(rows.iter().filter(|r| r.job == "a").count(), 4, "{rows:#?}");
        assert_eq!(
            rows.iter()
                .filter(|r| r.job == "a" && r.outcome == Outcome::Success)
                .count(),
            1,
            "the end found the remapped row: {rows:#?}"
        );
        assert_eq!(rows.iter().find(|r| r.id == by_hand).unwrap().job, "y");
    }

    #[test]
    fn ids_go_on_without_gaps_across_processes_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite3");
        let mut ids = Vec::new();
        // A daemon (reserving ahead), then two run-once processes, then a daemon again.
        for ahead in [16, 0, 0, 16] {
            let r = Recorder::open(&path, ahead).unwrap();
            ids.push(start(&r, "a"));
            ids.push(start(&r, "a"));
            assert_eq!(r.close(Duration::from_secs(5)), 0);
        }
        assert_eq!(ids, (1..=8).collect::<Vec<i64>>());
    }

    #[test]
    fn an_update_never_touches_another_runs_row_after_the_file_was_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite3");
        let r = Recorder::open(&path, 64).unwrap();
        let long = start(&r, "long");
        assert_eq!(r.flush(Duration::from_secs(5)), 0);
        // The history is deleted mid-run; another process starts afresh and takes id 1, the
        // long run's id, for a run of its own that ends `success`.
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
        }
        let other = Recorder::open(&path, 0).unwrap();
        let quick = start(&other, "quick");
        assert_eq!(quick, long, "the collision this test is about");
        other.finish(
            &format!("uid-quick-{quick}"),
            Outcome::Success,
            RunEnd::default(),
        );
        assert_eq!(other.close(Duration::from_secs(5)), 0);
        // The long run ends: its end must not land on the quick run's row.
        r.finish(
            &format!("uid-long-{long}"),
            Outcome::Failed,
            RunEnd {
                error: Some("long failed".into()),
                ..RunEnd::default()
            },
        );
        assert_eq!(r.flush(Duration::from_secs(5)), 0);
        let h = History::open_read_only(&path).unwrap().unwrap();
        let rows = h.runs(None, 10).unwrap();
        assert_eq!(rows.len(), 2, "{rows:#?}");
        let q = rows.iter().find(|r| r.job == "quick").unwrap();
        assert_eq!((q.id, q.outcome), (quick, Outcome::Success));
        assert_eq!(q.error, None);
        let l = rows.iter().find(|r| r.job == "long").unwrap();
        assert_eq!(l.outcome, Outcome::Failed);
        assert_ne!(l.id, q.id);
        assert_eq!(
            l.run_uid.as_deref(),
            Some(format!("uid-long-{long}").as_str())
        );
    }
}
