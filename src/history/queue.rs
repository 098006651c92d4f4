//! What travels from the recorder's handle to the writer's thread: the writes, the messages,
//! a run's start row, the writer's health, and the writer's timings.

use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::rows::{NewRun, Outcome, RunEnd, RunTag, SkippedRow, TriggerKind};

/// The first pause after a refused write; it doubles up to `MAX_BACKOFF`.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(50);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// After a first write wakes it, the writer waits this long for the writes that follow (a short
/// run's end follows its start within a millisecond): one transaction for both.
pub(super) const LINGER: Duration = Duration::from_millis(2);
/// How long the writer waits for another process's lock before it lets the batch wait.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_millis(500);
/// The same while writes already wait: a refusal is found fast, so what comes meanwhile reaches
/// the spill journal at once.
pub(super) const BUSY_TIMEOUT_FAILING: Duration = Duration::from_millis(20);

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
    pub(super) fn as_new_run(&self) -> NewRun<'_> {
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
pub(super) enum Write {
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

pub(super) enum Msg {
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
