//! What a run is asked to be (`RunRequest`), what it tells the loop while it goes
//! (`RunEvent`), and its report at the end (`RunReport`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Job;
use crate::history::{Outcome, RunTag, TriggerKind};

/// A run to make.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub job: Arc<Job>,
    pub trigger: TriggerKind,
    pub scheduled_at: DateTime<Utc>,
    pub attempt: u32,
    /// The run starts at this instant exactly, not earlier: the daemon fires a few milliseconds
    /// ahead so the run's preparation is done by then.
    pub not_before: Option<DateTime<Utc>>,
    /// Cluster mode: the node and the slot's fence (the claim was won before the run).
    pub tag: Option<RunTag>,
}

/// What to do when another process holds the job's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBusy {
    /// Record the slot as `skipped` (the daemon).
    Skip,
    /// Record nothing; the report says who holds it (`run-once`).
    Refuse,
    /// Wait for the lock (`run-once --wait`).
    Wait,
}

/// What a run tells the daemon while and after it runs.
#[derive(Debug)]
pub enum RunEvent {
    Started {
        job: String,
        run_id: i64,
        /// The run's identity (a UUIDv7).
        uid: String,
        pid: Option<u32>,
    },
    Finished(Box<RunReport>),
    /// Cluster mode: the run's slot was claimed under this tag (before the run starts).
    Claimed {
        job: String,
        tag: crate::history::RunTag,
    },
    /// An embedded run that had timed out stuck has finally returned: its slot is free.
    #[cfg_attr(not(feature = "embedded"), allow(dead_code))]
    Released {
        job: String,
    },
}

/// How a run ended, as reported to the daemon or printed by `run-once`.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub job: String,
    pub run_id: Option<i64>,
    /// The run's identity (a UUIDv7), unique across restarts and history files.
    pub run_uid: Option<String>,
    pub trigger: TriggerKind,
    pub scheduled_at: DateTime<Utc>,
    pub attempt: u32,
    pub outcome: Outcome,
    pub started_at: DateTime<Utc>,
    /// When the job's function (or command) was entered.
    pub entered_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    pub error: Option<String>,
    pub exit_code: Option<i32>,
    pub result: Option<String>,
    /// Who holds the job when the run did not start because of it.
    pub busy: Option<String>,
    /// An embedded run whose thread has not returned: the job's slot stays held.
    pub stuck: bool,
    /// Cluster mode: the slot was claimed by this other node (nothing to say about it here).
    pub taken_by: Option<String>,
    /// Cluster mode: the claim the run ran under.
    pub tag: Option<RunTag>,
}

impl RunReport {
    /// A report of a run of `job` that ends (or starts) now with `outcome`, nothing else known.
    pub fn new(
        job: String,
        trigger: TriggerKind,
        scheduled_at: DateTime<Utc>,
        attempt: u32,
        outcome: Outcome,
    ) -> RunReport {
        let now = Utc::now();
        RunReport {
            job,
            run_id: None,
            run_uid: None,
            trigger,
            scheduled_at,
            attempt,
            outcome,
            started_at: now,
            entered_at: None,
            finished_at: now,
            error: None,
            exit_code: None,
            result: None,
            busy: None,
            stuck: false,
            taken_by: None,
            tag: None,
        }
    }

    pub fn duration(&self) -> Duration {
        (self.finished_at - self.started_at)
            .to_std()
            .unwrap_or_default()
    }
}
