//! The history's rows and their fields: outcomes, triggers, a run's start, end and tags, and
//! times as the history stores them (UTC text with microseconds, which sorts as it reads).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

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
    pub(super) fn column(self) -> &'static str {
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

/// Formats an instant the way the history stores it.
pub fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
