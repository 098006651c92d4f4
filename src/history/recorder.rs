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

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::rows::{Key, NewRun, Outcome, RunEnd, RunTag, SkippedRow, TriggerKind};
use super::spill::{self, Spill};
use super::store::History;
use crate::error::{Error, Result};

/// The first pause after a refused write; it doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// After a first write wakes it, the writer waits this long for the writes that follow (a short
/// run's end follows its start within a millisecond): one transaction for both.
const LINGER: Duration = Duration::from_millis(2);
/// How long the writer waits for another process's lock before it lets the batch wait.
const BUSY_TIMEOUT: Duration = Duration::from_millis(500);
/// The same while writes already wait: a refusal is found fast, so what comes meanwhile reaches
/// the spill journal at once.
const BUSY_TIMEOUT_FAILING: Duration = Duration::from_millis(20);

/// What is known about a run when it starts, with the id it was given.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StartRow {
    pub id: i64,
    /// The run's identity (`history::new_uid`): every later write about the run names it.
    pub uid: String,
    pub job: String,
    pub trigger: TriggerKind,
    pub scheduled_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub attempt: u32,
    pub executor: String,
    /// Its process, once known (kept to write the whole row again if it must be).
    #[serde(default)]
    pub pid: Option<u32>,
    /// The process that ran it (set by the writer; a replayed row keeps its dead owner's).
    #[serde(default)]
    pub owner: Option<u32>,
    /// Cluster mode: the node, its incarnation and the slot's fence.
    #[serde(default)]
    pub tag: Option<RunTag>,
}

impl StartRow {
    fn as_new_run(&self) -> NewRun<'_> {
        NewRun {
            uid: &self.uid,
            job: &self.job,
            trigger: self.trigger,
            scheduled_at: self.scheduled_at,
            started_at: self.started_at,
            attempt: self.attempt,
            executor: &self.executor,
            tag: self.tag.as_ref(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Write {
    Start(StartRow),
    Pid {
        uid: String,
        pid: u32,
    },
    Finish {
        uid: String,
        outcome: Outcome,
        end: RunEnd,
    },
    Skipped(SkippedRow),
    /// A gap row that grows (a pause's slots): written if new, else extended.
    Gap(SkippedRow),
    Stuck {
        uid: String,
        stuck: bool,
    },
    Error {
        uid: String,
        error: String,
    },
    /// How the run was really made (a fork run that fell back to a plain subprocess).
    Executor {
        uid: String,
        executor: String,
    },
    /// A row left `running` by a dead process: `abandoned`, or what its surviving result says.
    Settle {
        id: i64,
        uid: Option<String>,
        outcome: Outcome,
        end: RunEnd,
    },
    DaemonStarted {
        pid: u32,
        at: DateTime<Utc>,
    },
    Heartbeat {
        at: DateTime<Utc>,
    },
    DaemonStopped {
        at: DateTime<Utc>,
    },
    Prune {
        before: DateTime<Utc>,
    },
    /// The cluster's database has revision `rev` of the run's row.
    Synced {
        uid: String,
        rev: i64,
    },
}

enum Msg {
    Write(Write),
    /// Answered with how many writes wait, once none does.
    Flush(Sender<usize>),
    /// Write what can be written until the instant, answer, and end the thread.
    Close(Instant, Sender<usize>),
}

/// How the writer is doing, for the health check.
#[derive(Debug, Clone, Default)]
pub struct RecorderHealth {
    /// Writes queued and not yet in the database.
    pub waiting: usize,
    /// The last error, and since when writes have been failing; `None` once a batch succeeds.
    pub problem: Option<(DateTime<Utc>, String)>,
}

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

/// What the writer remembers between batches; a batch works on a copy that replaces it only
/// when the batch commits.
#[derive(Debug, Clone, Default)]
struct State {
    /// Runs started and not yet ended, by uid: a write that finds no row writes the whole row
    /// again first (the file was removed or replaced mid-run).
    inflight: HashMap<String, StartRow>,
    /// The daemon's record, and what it was started with (to write it again into a new file).
    daemon: Option<(i64, u32, DateTime<Utc>)>,
    /// `meta.next_run_id` as we last wrote it.
    ceiling: i64,
}

struct Writer {
    spill: Option<Spill>,
    /// How many of the queue's writes the spill journal holds.
    spilled: usize,
    /// Spill journals of gone processes, replayed: removed once their writes are in.
    claimed: Vec<PathBuf>,
    path: PathBuf,
    history: Option<History>,
    queue: VecDeque<Write>,
    state: State,
    ids: Arc<AtomicI64>,
    ahead: i64,
    health: Arc<Mutex<RecorderHealth>>,
    waiting: Arc<AtomicUsize>,
    owner: u32,
    /// Since when, and why, batches fail.
    failing_since: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut waiters: Vec<Sender<usize>> = Vec::new();
        let mut closing: Option<Instant> = None;
        let mut backoff = MIN_BACKOFF;
        loop {
            let first = if self.queue.is_empty() && closing.is_none() {
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(backoff)
            };
            let disconnected = match first {
                Ok(m) => {
                    if self.queue.is_empty() && matches!(m, Msg::Write(_)) {
                        std::thread::sleep(LINGER);
                    }
                    self.take(m, &mut waiters, &mut closing);
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            while let Ok(m) = rx.try_recv() {
                self.take(m, &mut waiters, &mut closing);
            }
            // While the database refuses, what just came is journaled before it is tried: a crash
            // in the attempt loses nothing.
            if self.failing_since.is_some() && self.queue.len() > self.spilled {
                self.save_spill();
            }
            let ok = self.write_batch();
            backoff = if ok {
                MIN_BACKOFF
            } else {
                (backoff * 2).min(MAX_BACKOFF)
            };
            self.publish();
            let over = closing.is_some_and(|at| Instant::now() >= at);
            if closing.is_some() && self.queue.is_empty() {
                self.release_reservation();
            }
            if self.queue.is_empty() || over {
                for w in waiters.drain(..) {
                    let _ = w.send(self.queue.len());
                }
            }
            if (closing.is_some() && (self.queue.is_empty() || over))
                || (disconnected && (self.queue.is_empty() || !ok))
            {
                match (self.spill.take(), self.queue.is_empty()) {
                    (Some(spill), true) => spill.remove(),
                    (Some(spill), false) => tracing::error!(
                        "❗ {} history write(s) could not be made; they are kept in `{}` and written by the next process to open the history",
                        self.queue.len(),
                        spill.path().display()
                    ),
                    (None, false) => tracing::error!(
                        "❗ {} history write(s) could not be made before the writer stopped: they are lost",
                        self.queue.len()
                    ),
                    (None, true) => {}
                }
                return;
            }
        }
    }

    fn take(&mut self, m: Msg, waiters: &mut Vec<Sender<usize>>, closing: &mut Option<Instant>) {
        match m {
            Msg::Write(w) => self.queue.push_back(w),
            Msg::Flush(tx) => waiters.push(tx),
            Msg::Close(at, tx) => {
                *closing = Some(at);
                waiters.push(tx);
            }
        }
    }

    fn publish(&self) {
        if let Ok(mut h) = self.health.lock() {
            h.problem = None;
            if let Some(since) = self.failing_since
                && let Some(e) = self.last_error.as_ref()
            {
                h.problem = Some((since, e.clone()));
            }
        }
    }
}

impl Writer {
    /// Gives back the ids reserved and not used, so the next process goes on from ours without a
    /// gap (unless another process reserved past us meanwhile).
    fn release_reservation(&mut self) {
        let Some(h) = self.history.as_ref() else {
            return;
        };
        let next = self.ids.load(Ordering::SeqCst);
        if next < self.state.ceiling && h.release_reservation(self.state.ceiling, next).is_ok() {
            self.state.ceiling = next;
        }
    }

    /// Writes the whole queue in one transaction; on a refusal keeps it all for the next try.
    fn write_batch(&mut self) -> bool {
        if self.queue.is_empty() {
            return true;
        }
        match self.try_batch() {
            Ok(()) => {
                let n = self.queue.len();
                self.queue.clear();
                if let Some(spill) = self.spill.as_mut() {
                    spill.clear();
                }
                self.spilled = 0;
                for path in self.claimed.drain(..) {
                    let _ = std::fs::remove_file(path);
                }
                if let Some(h) = self.history.as_ref() {
                    let _ = h.set_busy_timeout(BUSY_TIMEOUT);
                }
                self.waiting.fetch_sub(n, Ordering::SeqCst);
                if self.failing_since.take().is_some() {
                    tracing::info!("history: writing again; {n} delayed write(s) recorded");
                }
                self.last_error = None;
                true
            }
            Err(e) => {
                if self.failing_since.is_none() {
                    tracing::error!(
                        "❗ history write failed, {} kept to retry: {e}",
                        crate::fmt::n(self.queue.len(), "write")
                    );
                    self.failing_since = Some(Utc::now());
                }
                self.last_error = Some(e.to_string());
                if let Some(h) = self.history.as_ref() {
                    let _ = h.set_busy_timeout(BUSY_TIMEOUT_FAILING);
                }
                // What waits survives us: a crash now loses nothing that was queued.
                self.save_spill();
                false
            }
        }
    }

    /// Writes the whole queue over the spill journal. The journals of gone processes it
    /// replays are in the queue now: once ours holds them, theirs go (or a next process would
    /// replay them twice).
    fn save_spill(&mut self) {
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        let lines: Vec<String> = self
            .queue
            .iter()
            .filter_map(|w| serde_json::to_string(w).ok())
            .collect();
        match spill.save(&lines) {
            Ok(()) => {
                self.spilled = self.queue.len();
                for path in self.claimed.drain(..) {
                    let _ = std::fs::remove_file(path);
                }
            }
            Err(e) => tracing::error!(
                "❗ history: cannot keep the waiting writes in `{}`: {e}",
                spill.path().display()
            ),
        }
    }

    fn try_batch(&mut self) -> Result<()> {
        let current = self.history.as_ref().is_some_and(History::file_is_current);
        if !current {
            if self.history.take().is_some() {
                tracing::error!(
                    "❗ the history database `{}` was removed or replaced: recreating it",
                    self.path.display()
                );
            }
            let h = History::open(&self.path)?;
            h.set_busy_timeout(BUSY_TIMEOUT)?;
            self.history = Some(h);
            // A new file knows nothing of our ids and our daemon record.
            self.state.ceiling = 0;
        }
        let Some(h) = self.history.as_ref() else {
            return Err(Error::Internal("the history is not open".into()));
        };
        let mut st = self.state.clone();
        h.begin()?;
        let applied = (|| {
            reserve(h, &mut st, &self.ids, self.ahead)?;
            for w in &self.queue {
                apply(h, &mut st, &self.ids, self.owner, w)?;
            }
            Ok(())
        })();
        match applied.and_then(|()| h.commit()) {
            Ok(()) => {
                self.state = st;
                Ok(())
            }
            Err(e) => {
                h.rollback();
                Err(e)
            }
        }
    }
}

/// Keeps `meta.next_run_id` ahead of the ids we hand out; jumps our counter past ids another
/// process reserved meanwhile, so ids stay in the order runs start.
fn reserve(h: &History, st: &mut State, ids: &AtomicI64, ahead: i64) -> Result<()> {
    let theirs = h.reserved_until()?.unwrap_or(0);
    if theirs > st.ceiling {
        ids.fetch_max(theirs, Ordering::SeqCst);
    }
    let next = ids.load(Ordering::SeqCst);
    if next + ahead / 2 >= st.ceiling || theirs > st.ceiling {
        let until = next + ahead;
        h.reserve_until(until)?;
        st.ceiling = until;
    }
    Ok(())
}

/// Whether a failed statement is about this write only (it is dropped) rather than the database.
fn only_this_write(e: &Error) -> bool {
    matches!(
        e,
        Error::History {
            source: rusqlite::Error::SqliteFailure(f, _),
            ..
        } if matches!(f.code, rusqlite::ErrorCode::ConstraintViolation | rusqlite::ErrorCode::TooBig)
    )
}

/// A fresh id for a row whose id another process took first.
fn fresh_id(h: &History, ids: &AtomicI64) -> Result<i64> {
    let free = h.first_free_id()?;
    ids.fetch_max(free + 1, Ordering::SeqCst);
    Ok(ids.fetch_add(1, Ordering::SeqCst).max(free))
}

/// Writes a run's `running` row under its id, or under a fresh one when another process took
/// that id; returns the id used.
fn insert_start(h: &History, ids: &AtomicI64, owner: u32, row: &StartRow) -> Result<i64> {
    let mut id = row.id;
    for _ in 0..3 {
        match h.insert_run(id, &row.as_new_run(), row.owner.unwrap_or(owner), row.pid) {
            Err(e) if only_this_write(&e) => {
                let fresh = fresh_id(h, ids)?;
                tracing::warn!(
                    "history: run id {id} was taken by another process; run {} of {} is recorded as {fresh}",
                    row.id,
                    row.job
                );
                id = fresh;
            }
            other => {
                other?;
                break;
            }
        }
    }
    Ok(id)
}

/// Applies `update` to run `uid`'s row; when there is none (the file was removed or replaced
/// since the run started), writes the run's whole start row again first. An update never
/// touches another run's row: it names the run by its uid, never by an id.
fn update_run(
    h: &History,
    st: &State,
    ids: &AtomicI64,
    owner: u32,
    uid: &str,
    what: &str,
    update: impl Fn(&History) -> Result<bool>,
) -> Result<()> {
    if update(h)? {
        return Ok(());
    }
    match st.inflight.get(uid) {
        Some(start) => {
            tracing::warn!(
                "history: the row of run {} ({}) was gone; writing the whole run",
                start.id,
                start.job
            );
            insert_start(h, ids, owner, start)?;
            update(h)?;
        }
        None => tracing::error!("history: run {uid} has no row to record its {what}"),
    }
    Ok(())
}

/// Inserts a skipped row (nothing if its uid is there), under a fresh id if its id was taken.
fn insert_skipped(h: &History, ids: &AtomicI64, row: &SkippedRow) -> Result<()> {
    let mut row = row.clone();
    for _ in 0..3 {
        match h.insert_skipped(&row) {
            Err(e) if only_this_write(&e) => row.id = fresh_id(h, ids)?,
            other => return other,
        }
    }
    Ok(())
}

fn apply(h: &History, st: &mut State, ids: &AtomicI64, owner: u32, w: &Write) -> Result<()> {
    match w {
        Write::Start(row) => {
            insert_start(h, ids, owner, row)?;
            st.inflight.insert(row.uid.clone(), row.clone());
        }
        Write::Pid { uid, pid } => {
            if let Some(start) = st.inflight.get_mut(uid) {
                start.pid = Some(*pid);
            }
            update_run(h, st, ids, owner, uid, "PID", |h| {
                h.set_pid(Key::Uid(uid), *pid)
            })?
        }
        Write::Finish { uid, outcome, end } => {
            update_run(h, st, ids, owner, uid, outcome.as_str(), |h| {
                h.finish_run(Key::Uid(uid), *outcome, end)
            })?;
            st.inflight.remove(uid);
        }
        Write::Skipped(row) => insert_skipped(h, ids, row)?,
        Write::Gap(row) => {
            insert_skipped(h, ids, row)?;
            if let Some((count, last)) = row.gap {
                h.grow_gap(&row.uid, count, last)?;
            }
        }
        Write::Stuck { uid, stuck } => update_run(h, st, ids, owner, uid, "stuck mark", |h| {
            h.set_stuck(Key::Uid(uid), *stuck)
        })?,
        Write::Error { uid, error } => update_run(h, st, ids, owner, uid, "error", |h| {
            h.set_error(Key::Uid(uid), error)
        })?,
        Write::Executor { uid, executor } => {
            if let Some(start) = st.inflight.get_mut(uid) {
                start.executor.clone_from(executor);
            }
            update_run(h, st, ids, owner, uid, "executor", |h| {
                h.set_executor(Key::Uid(uid), executor)
            })?
        }
        Write::Settle {
            id,
            uid,
            outcome,
            end,
        } => {
            let key = match uid {
                Some(uid) => Key::Uid(uid),
                None => Key::Id(*id),
            };
            h.settle_run(key, *outcome, end)?;
        }
        Write::DaemonStarted { pid, at } => {
            let row = h.daemon_started(*pid, *at)?;
            st.daemon = Some((row, *pid, *at));
        }
        Write::Heartbeat { at } => {
            if let Some((row, pid, started)) = st.daemon
                && !h.heartbeat(row, *at)?
            {
                // The file was replaced: our record goes into the new one.
                let row = h.daemon_started(pid, started)?;
                h.heartbeat(row, *at)?;
                st.daemon = Some((row, pid, started));
            }
        }
        Write::DaemonStopped { at } => {
            if let Some((row, _, _)) = st.daemon {
                h.daemon_stopped(row, *at)?;
            }
        }
        Write::Synced { uid, rev } => {
            h.set_synced(uid, *rev)?;
        }
        Write::Prune { before } => {
            let n = h.prune(*before)?;
            if n > 0 {
                tracing::info!(
                    "🧹 pruned {} older than {}",
                    crate::fmt::n(n, "run"),
                    before.date_naive()
                );
            }
        }
    }
    Ok(())
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
