//! The config file: `RawConfig` (what TOML says, unknown keys refused) validated into `Config`
//! (what the program uses: parsed crons, resolved paths, durations).
//!
//! Every error names the file, the line and column, and the key. Relative paths resolve against
//! the folder that holds the config file, never against the current directory.

mod cluster;
mod job;
pub mod locate;
mod ops;
mod raw;
pub mod secrets;
mod units;
mod validate;
mod warnings;

pub use cluster::{CLAIM_AHEAD, Cluster, DatabaseLoss, Takeover, Tls};
pub use ops::{Event, HeartbeatWhen, Http, Notify, WebhookFormat};
use raw::*;
use units::*;
pub use units::{parse_duration, parse_size};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::calendar::{Calendar, Exchange};
use crate::trigger::Trigger;

/// Whether this binary embeds a Python interpreter (cargo feature `embedded`): without it,
/// `executor = "pyo3"` is a config error and nothing links libpython.
pub const EMBEDDED: bool = cfg!(feature = "embedded");
/// The config file used when neither `--config` nor `HEDGE_SCHEDULER_CONFIG` names one.
pub const DEFAULT_CONFIG: &str = "config/hedge-scheduler.toml";
/// `scheduler.log_dir` when the config does not say, relative to the config's folder.
pub const DEFAULT_LOG_DIR: &str = "../logs";

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file, absolute.
    pub file: PathBuf,
    pub scheduler: Scheduler,
    pub python: Python,
    /// The exchange's calendar with the config's overrides.
    pub calendar: Arc<Calendar>,
    /// Enabled jobs, sorted by id.
    pub jobs: Vec<Job>,
    /// `[cluster]`: the daemons sharing a PostgreSQL database; `None` runs alone.
    pub cluster: Option<Cluster>,
    /// `[notify]`: who hears about failures, missed slots and recoveries (defaults: nobody).
    pub notify: Notify,
    /// `[http]`: the read-only endpoint (page, metrics, status); `None`: off.
    pub http: Option<Http>,
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    pub exchange: Exchange,
    pub log_dir: PathBuf,
    pub history: PathBuf,
    /// How long a stopping daemon waits for running jobs before ending them.
    pub shutdown_grace: Duration,
    /// Between SIGTERM and SIGKILL when a job's process group is ended.
    pub kill_grace: Duration,
    /// Heartbeat, belt-and-braces timeouts, resource and disk checks.
    pub health_interval: Duration,
    /// The status table on the console and in the log.
    pub report_interval: Duration,
    /// Runs older than this are pruned from the history, daily.
    pub history_retention: Duration,
    /// Daily log files kept, per log (the daemon's and each job's).
    pub log_files_kept: usize,
    /// What to do about the old system's scripts still running.
    pub legacy: Legacy,
    /// The old system's scripts, by file name.
    pub legacy_scripts: Vec<String>,
    /// How runs are contained: a cgroup per run, or the daemon as the runs' subreaper.
    pub containment: Containment,
}

/// How the processes of a run are kept from outliving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Containment {
    /// A cgroup per run where one can be made, else the subreaper.
    Auto,
    /// A cgroup v2 per run, ended with `cgroup.kill`; refuse to start without one.
    Cgroup,
    /// The daemon adopts what escapes a run (`PR_SET_CHILD_SUBREAPER`) and ends it.
    Subreaper,
}

/// What the daemon does when it finds the old system's scripts running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Legacy {
    /// Refuse to start (both would collect the same data).
    Refuse,
    Warn,
    /// Terminate them, then go on.
    Stop,
}

/// The old system's scripts, looked for by default.
pub const LEGACY_SCRIPTS: [&str; 4] = [
    "start_options_analysis_background.py",
    "start_intraday_data_collector_fixed.py",
    "start_options_collector_background.py",
    "start_all_background_services.py",
];

#[derive(Debug, Clone)]
pub struct Python {
    /// As written in the config (or the venv's interpreter); resolved to the real interpreter at
    /// start-up.
    pub executable: String,
    /// `python.venv`: both executors use its packages.
    pub venv: Option<PathBuf>,
    /// Where `executable` is written, for errors found when resolving it.
    pub executable_at: Option<(usize, usize)>,
    /// Added to `PYTHONPATH` for every job, in order.
    pub path: Vec<PathBuf>,
    /// The working directory of every job.
    pub cwd: PathBuf,
    /// Where `cwd` is written.
    pub cwd_at: Option<(usize, usize)>,
    /// How long the interpreter may take to answer the start-up probe (start, reload,
    /// `check-config`) before it is killed and the config refused.
    pub probe_timeout: Duration,
    /// Modules the fork server imports once, before its first fork.
    pub preload: Vec<String>,
    /// Where `preload` is written.
    pub preload_at: Option<(usize, usize)>,
    /// A fork server is replaced after this many runs.
    pub fork_max_runs: u32,
    /// A fork server is replaced once its resident memory passes this.
    pub fork_max_memory: u64,
    /// `[python] env_file` and `inherit_env`: every job's environment before its own.
    pub env: secrets::JobEnv,
}

/// How a job's code is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// A short-lived process in its own process group: hard kill, crash isolation.
    Subprocess,
    /// In the daemon's embedded interpreter: no start-up cost, modules imported once.
    Pyo3,
    /// A child forked from a warm fork server: a subprocess's isolation, modules imported once.
    Fork,
}

impl Executor {
    pub fn as_str(self) -> &'static str {
        match self {
            Executor::Subprocess => "subprocess",
            Executor::Pyo3 => "pyo3",
            Executor::Fork => "fork",
        }
    }
}

/// What a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A Python function, `module:function`, called with the run context.
    Function { module: String, function: String },
    /// A legacy script run as `__main__` (path relative to `python.cwd`).
    Script(PathBuf),
    /// Any executable with its arguments.
    Command(Vec<String>),
}

impl Entry {
    /// The module to check at start-up, for a function entry.
    pub fn module(&self) -> Option<&str> {
        match self {
            Entry::Function { module, .. } => Some(module),
            _ => None,
        }
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Function { module, function } => write!(f, "{module}:{function}"),
            Entry::Script(path) => write!(f, "{}", path.display()),
            Entry::Command(argv) => write!(f, "{}", argv.join(" ")),
        }
    }
}

/// A slot that comes while the job's previous run is still running is decided (overlap) no
/// earlier than its instant, and no earlier than this long after the slot was first seen so: a
/// run that ends meanwhile (its end not yet reaped after a pause, or at the slot's instant) lets
/// the slot run, a little late, instead of skipping it over a run that has already ended.
pub const OVERLAP_GRACE: Duration = Duration::from_millis(250);

/// What a job does when a slot comes while its previous run still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Record the slot as `skipped`, with the reason.
    Skip,
    /// Keep at most one pending run, started when the running one ends.
    Queue,
    /// Cancel the running run and start the new one.
    Replace,
}

/// What a job does about slots missed while the daemon was down or asleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Run the most recent missed slot once.
    Latest,
    None,
    /// Run every missed slot, in order.
    All,
}

/// When a failed run is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Attempts in all, the first included (1: no retry).
    pub attempts: u32,
    pub backoff: Duration,
    pub factor: f64,
    pub max_backoff: Duration,
    /// Outcomes that are retried.
    pub on: Vec<crate::history::Outcome>,
}

impl Default for Retry {
    fn default() -> Self {
        use crate::history::Outcome;
        Retry {
            attempts: 1,
            backoff: Duration::from_secs(10),
            factor: 2.0,
            max_backoff: Duration::from_secs(120),
            on: vec![Outcome::Failed, Outcome::Timeout, Outcome::Crashed],
        }
    }
}

impl Retry {
    /// The delay before attempt `next` (2 for the first retry), before jitter.
    pub fn delay_before(&self, next: u32) -> Duration {
        let exp = i32::try_from(next.saturating_sub(2)).unwrap_or(i32::MAX);
        let secs = self.backoff.as_secs_f64() * self.factor.powi(exp);
        Duration::from_secs_f64(secs.min(self.max_backoff.as_secs_f64()).max(0.0))
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub entry: Entry,
    /// Where `entry` (or `command`) is written, for errors found later (module not found).
    pub entry_at: Option<(usize, usize)>,
    /// `enabled = false`: configured (and runnable with `run-once`) but never fired.
    pub enabled: bool,
    pub trigger: Trigger,
    pub executor: Executor,
    pub timeout: Duration,
    pub retry: Retry,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    /// How late a missed slot is still worth running; `None`: anywhere in the current session
    /// (or the last day, for a job not tied to sessions).
    pub misfire_grace: Option<Duration>,
    /// A run whose process tree uses more memory than this is ended (outcome `failed`).
    pub max_memory: Option<u64>,
    /// The job's `args` table, handed to Python as `ctx.args`.
    pub args: serde_json::Value,
    /// Cluster mode: what happens to a slot whose node died mid-run.
    pub takeover: Takeover,
    /// Cluster mode: overrides `[cluster] on_database_loss` for this job.
    pub on_database_loss: Option<DatabaseLoss>,
    /// `notify = false`: this job's events reach no notifier.
    pub notify: bool,
    /// A healthchecks.io-style URL: `/start`, the URL itself on success, `/fail` on failure.
    pub ping: Option<String>,
    /// What the job's process gets in its environment (`env`, `env_file`, `inherit_env`).
    pub env: secrets::JobEnv,
}

impl Config {
    pub fn calendar(&self) -> Arc<Calendar> {
        Arc::clone(&self.calendar)
    }

    /// The folder holding the config file.
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("/"))
    }

    /// What `job` does while the cluster's database is unreachable.
    pub fn database_loss(&self, job: &Job) -> DatabaseLoss {
        job.on_database_loss
            .or(self.cluster.as_ref().map(|c| c.on_database_loss))
            .unwrap_or(DatabaseLoss::Run)
    }

    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.id == id)
    }

    /// The configured job ids, comma-separated, for error messages.
    pub fn job_list(&self) -> String {
        if self.jobs.is_empty() {
            return "none".to_string();
        }
        self.jobs
            .iter()
            .map(|j| j.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether any enabled job fires by the exchange calendar (then its holiday data matters).
    pub fn uses_calendar(&self) -> bool {
        self.jobs
            .iter()
            .any(|j| j.enabled && j.trigger.follows_sessions())
    }

    /// Where the per-job logs go.
    pub fn job_log_dir(&self) -> PathBuf {
        self.scheduler.log_dir.join("jobs")
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
