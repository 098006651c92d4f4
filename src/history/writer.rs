//! The history writer's thread: it takes the queue's writes, writes them a batch per
//! transaction, keeps them in the spill journal while the database refuses them, and retries
//! with a growing pause (see `recorder` for the handle everybody else holds).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::queue::*;
use super::rows::{Key, SkippedRow};
use super::spill::Spill;
use super::store::History;
use crate::error::{Error, Result};

/// What the writer remembers between batches; a batch works on a copy that replaces it only
/// when the batch commits.
#[derive(Debug, Clone, Default)]
pub(super) struct State {
    /// Runs started and not yet ended, by uid: a write that finds no row writes the whole row
    /// again first (the file was removed or replaced mid-run).
    pub(super) inflight: HashMap<String, StartRow>,
    /// The daemon's record, and what it was started with (to write it again into a new file).
    pub(super) daemon: Option<(i64, u32, DateTime<Utc>)>,
    /// `meta.next_run_id` as we last wrote it.
    pub(super) ceiling: i64,
}

pub(super) struct Writer {
    pub(super) spill: Option<Spill>,
    /// How many of the queue's writes the spill journal holds.
    pub(super) spilled: usize,
    /// Spill journals of gone processes, replayed: removed once their writes are in.
    pub(super) claimed: Vec<PathBuf>,
    pub(super) path: PathBuf,
    pub(super) history: Option<History>,
    pub(super) queue: VecDeque<Write>,
    pub(super) state: State,
    pub(super) ids: Arc<AtomicI64>,
    pub(super) ahead: i64,
    pub(super) health: Arc<Mutex<RecorderHealth>>,
    pub(super) waiting: Arc<AtomicUsize>,
    pub(super) owner: u32,
    /// Since when, and why, batches fail.
    pub(super) failing_since: Option<DateTime<Utc>>,
    pub(super) last_error: Option<String>,
}

impl Writer {
    pub(super) fn run(mut self, rx: Receiver<Msg>) {
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
