//! The config file: `RawConfig` (what TOML says, unknown keys refused) validated into `Config`
//! (what the program uses: parsed crons, resolved paths, durations).
//!
//! Every error names the file, the line and column, and the key. Relative paths resolve against
//! the folder that holds the config file, never against the current directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::calendar::file::RawSession;
use crate::calendar::{Calendar, Exchange};
use crate::error::ConfigError;
use crate::trigger::{Schedule, SessionPoint, Trigger};

/// The config file used when neither `--config` nor `HEDGE_SCHEDULER_CONFIG` names one.
pub const DEFAULT_CONFIG: &str = "config/hedge-scheduler.toml";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    scheduler: RawScheduler,
    #[serde(default)]
    python: RawPython,
    #[serde(default)]
    calendar: RawCalendar,
    #[serde(default)]
    jobs: BTreeMap<String, Spanned<RawJob>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalendar {
    file: Option<Spanned<String>>,
    #[serde(default)]
    closures: Vec<Spanned<String>>,
    #[serde(default)]
    sessions: Vec<Spanned<RawSession>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduler {
    exchange: Option<Spanned<String>>,
    log_dir: Option<String>,
    history: Option<String>,
    shutdown_grace: Option<Spanned<String>>,
    kill_grace: Option<Spanned<String>>,
    strict_calendar: Option<bool>,
    health_interval: Option<Spanned<String>>,
    report_interval: Option<Spanned<String>>,
    history_retention: Option<Spanned<String>>,
    log_files_kept: Option<Spanned<i64>>,
    legacy: Option<Spanned<String>>,
    legacy_scripts: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPython {
    executable: Option<Spanned<String>>,
    venv: Option<Spanned<String>>,
    path: Option<Vec<String>>,
    cwd: Option<Spanned<String>>,
    probe_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Option<String>,
    entry: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    schedule: Spanned<String>,
    market_hours: Option<bool>,
    window_start: Option<Spanned<String>>,
    window_end: Option<Spanned<String>>,
    executor: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    retry: Option<Spanned<RawRetry>>,
    overlap: Option<Spanned<String>>,
    catch_up: Option<Spanned<String>>,
    misfire_grace: Option<Spanned<String>>,
    max_memory: Option<Spanned<String>>,
    args: Option<toml::Table>,
    enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: Option<Spanned<i64>>,
    backoff: Option<Spanned<String>>,
    factor: Option<Spanned<f64>>,
    max_backoff: Option<Spanned<String>>,
    on: Option<Vec<Spanned<String>>>,
}

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
}

/// How a job's code is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// A short-lived process in its own process group: hard kill, crash isolation.
    Subprocess,
    /// In the daemon's embedded interpreter: no start-up cost, modules imported once.
    Pyo3,
}

impl Executor {
    pub fn as_str(self) -> &'static str {
        match self {
            Executor::Subprocess => "subprocess",
            Executor::Pyo3 => "pyo3",
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
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = absolute(path);
        let source = std::fs::read_to_string(&file)
            .map_err(|e| ConfigError::new(&file, format!("cannot read config file: {e}")))?;
        let config = Config::parse(&file, &source)?;
        if !config.python.cwd.is_dir() {
            return Err(ConfigError {
                file,
                position: config.python.cwd_at,
                message: format!(
                    "`python.cwd` `{}` is not a folder",
                    config.python.cwd.display()
                ),
            });
        }
        Ok(config)
    }

    /// Validates `source`, the text of the config file `file` (absolute).
    pub fn parse(file: &Path, source: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(source).map_err(|e| toml_error(file, source, &e))?;
        let mut v = Validator {
            file,
            source,
            regular: Exchange::Xnse.regular_hours(),
        };
        let base = file.parent().unwrap_or(Path::new("/")).to_path_buf();

        let exchange = match &raw.scheduler.exchange {
            None => Exchange::Xnse,
            Some(s) => Exchange::parse(s.get_ref()).ok_or_else(|| {
                let known: Vec<_> = Exchange::ALL.iter().map(|e| e.code()).collect();
                v.at(
                    s,
                    format!(
                        "unknown exchange `{}` in `scheduler.exchange` (expected one of: {})",
                        s.get_ref(),
                        known.join(", ")
                    ),
                )
            })?,
        };
        v.regular = exchange.regular_hours();
        let scheduler = Scheduler {
            exchange,
            log_dir: base.join(raw.scheduler.log_dir.as_deref().unwrap_or("../logs")),
            history: base.join(
                raw.scheduler
                    .history
                    .as_deref()
                    .unwrap_or("../logs/history.sqlite3"),
            ),
            shutdown_grace: v.duration(
                raw.scheduler.shutdown_grace.as_ref(),
                "scheduler.shutdown_grace",
                DEFAULT_SHUTDOWN_GRACE,
            )?,
            kill_grace: v.duration(
                raw.scheduler.kill_grace.as_ref(),
                "scheduler.kill_grace",
                DEFAULT_KILL_GRACE,
            )?,
            health_interval: v.duration(
                raw.scheduler.health_interval.as_ref(),
                "scheduler.health_interval",
                Duration::from_secs(30),
            )?,
            report_interval: v.duration(
                raw.scheduler.report_interval.as_ref(),
                "scheduler.report_interval",
                Duration::from_secs(300),
            )?,
            history_retention: v.duration(
                raw.scheduler.history_retention.as_ref(),
                "scheduler.history_retention",
                Duration::from_secs(90 * 86_400),
            )?,
            log_files_kept: match &raw.scheduler.log_files_kept {
                None => 7,
                Some(n) => usize::try_from(*n.get_ref())
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        v.at(
                            n,
                            "`scheduler.log_files_kept` must be 1 to 1000".to_string(),
                        )
                    })?,
            },
            legacy: v.policy(
                raw.scheduler.legacy.as_ref(),
                "scheduler.legacy",
                None,
                Legacy::Refuse,
            )?,
            legacy_scripts: raw
                .scheduler
                .legacy_scripts
                .clone()
                .unwrap_or_else(|| LEGACY_SCRIPTS.map(String::from).to_vec()),
        };

        if let (Some(_), Some(venv)) = (&raw.python.executable, &raw.python.venv) {
            return Err(v.at(
                venv,
                "set either `python.executable` or `python.venv`, not both (the venv's interpreter is used)".to_string(),
            ));
        }
        let venv = raw
            .python
            .venv
            .as_ref()
            .map(|v| normalize(&base.join(v.get_ref())));
        let probe_timeout = v.duration(
            raw.python.probe_timeout.as_ref(),
            "python.probe_timeout",
            Duration::from_secs(10),
        )?;
        let python = Python {
            probe_timeout,
            executable: match (&venv, &raw.python.executable) {
                (Some(v), _) => v.join("bin/python").display().to_string(),
                (None, Some(e)) => e.get_ref().clone(),
                (None, None) => "python3".to_string(),
            },
            venv,
            executable_at: raw
                .python
                .executable
                .as_ref()
                .or(raw.python.venv.as_ref())
                .map(|s| crate::error::line_col(source, s.span().start)),
            path: raw
                .python
                .path
                .unwrap_or_else(|| vec!["../python_bridge".to_string()])
                .iter()
                .map(|p| base.join(p))
                .collect(),
            cwd: base.join(
                raw.python
                    .cwd
                    .as_ref()
                    .map_or(".", |c| c.get_ref().as_str()),
            ),
            cwd_at: raw
                .python
                .cwd
                .as_ref()
                .map(|c| crate::error::line_col(source, c.span().start)),
        };

        let calendar_file = raw
            .calendar
            .file
            .as_ref()
            .map(|f| normalize(&base.join(f.get_ref())));
        if let (Some(path), Some(raw_file)) = (&calendar_file, &raw.calendar.file)
            && !path.is_file()
        {
            return Err(v.at(
                raw_file,
                format!(
                    "calendar file `{}` for `calendar.file` not found (looked for `{}`)",
                    raw_file.get_ref(),
                    path.display()
                ),
            ));
        }
        let calendar = Calendar::load(
            exchange,
            &calendar_file
                .clone()
                .unwrap_or_else(|| base.join("calendars").join(exchange.file_name())),
            calendar_file.is_some(),
        )?;
        let overrides = crate::calendar::file::parse_overrides(
            file,
            source,
            exchange,
            "calendar.",
            &raw.calendar.closures,
            &raw.calendar.sessions,
        )?;
        let calendar = Arc::new(
            calendar.with_overrides(overrides, raw.scheduler.strict_calendar.unwrap_or(false)),
        );

        let mut jobs = Vec::new();
        for (id, raw_job) in raw.jobs {
            if let Some(job) = v.job(&id, raw_job)? {
                jobs.push(job);
            }
        }

        Ok(Config {
            file: file.to_path_buf(),
            scheduler: Scheduler {
                log_dir: normalize(&scheduler.log_dir),
                history: normalize(&scheduler.history),
                ..scheduler
            },
            python: Python {
                path: python.path.iter().map(|p| normalize(p)).collect(),
                cwd: normalize(&python.cwd),
                ..python
            },
            calendar,
            jobs,
        })
    }

    pub fn calendar(&self) -> Arc<Calendar> {
        Arc::clone(&self.calendar)
    }

    /// The folder holding the config file.
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("/"))
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

    /// Where the per-job logs go.
    pub fn job_log_dir(&self) -> PathBuf {
        self.scheduler.log_dir.join("jobs")
    }
}

struct Validator<'a> {
    file: &'a Path,
    source: &'a str,
    /// The exchange's regular hours, to check windows against.
    regular: (chrono::NaiveTime, chrono::NaiveTime),
}

/// A policy written as one of a few lowercase words: deserialized by serde, refused with the
/// words it accepts.
trait Policy: Sized + serde::de::DeserializeOwned {
    /// What the error calls it: "overlap policy".
    const WHAT: &'static str;
    const WORDS: &'static [&'static str];
}

impl Policy for Legacy {
    const WHAT: &'static str = "policy";
    const WORDS: &'static [&'static str] = &["refuse", "warn", "stop"];
}

impl Policy for Executor {
    const WHAT: &'static str = "executor";
    const WORDS: &'static [&'static str] = &["subprocess", "pyo3"];
}

impl Policy for Overlap {
    const WHAT: &'static str = "overlap policy";
    const WORDS: &'static [&'static str] = &["skip", "queue", "replace"];
}

impl Policy for CatchUp {
    const WHAT: &'static str = "catch-up policy";
    const WORDS: &'static [&'static str] = &["latest", "none", "all"];
}

impl Validator<'_> {
    fn at<T>(&self, spanned: &Spanned<T>, message: String) -> ConfigError {
        ConfigError::at(self.file, self.source, spanned.span().start, message)
    }

    /// A policy key (`overlap`, `catch_up`, …): `default` when absent.
    fn policy<P: Policy>(
        &self,
        raw: Option<&Spanned<String>>,
        key: &str,
        table: Option<&str>,
        default: P,
    ) -> Result<P, ConfigError> {
        let Some(raw) = raw else { return Ok(default) };
        let words =
            serde::de::value::StrDeserializer::<serde::de::value::Error>::new(raw.get_ref());
        P::deserialize(words).map_err(|_| {
            self.at(
                raw,
                format!(
                    "unknown {} `{}` for `{key}`{} (expected one of: {})",
                    P::WHAT,
                    raw.get_ref(),
                    table.map(|t| format!(" in [{t}]")).unwrap_or_default(),
                    P::WORDS.join(", ")
                ),
            )
        })
    }

    fn duration(
        &self,
        raw: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(raw) = raw else { return Ok(default) };
        parse_duration(raw.get_ref()).map_err(|why| {
            self.at(
                raw,
                format!(
                    "invalid duration `{}` for `{key}`: {why} (expected e.g. \"150s\", \"2m\", \"1h30m\")",
                    raw.get_ref()
                ),
            )
        })
    }

    fn job(&self, id: &str, raw: Spanned<RawJob>) -> Result<Option<Job>, ConfigError> {
        let table = format!("jobs.{id}");
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(self.at(
                &raw,
                format!("invalid job id `{id}` in [{table}] (use letters, digits, `_` and `-`)"),
            ));
        }
        let job_span = raw.span();
        let raw = raw.into_inner();
        let entry = match (&raw.entry, &raw.command) {
            (None, None) => {
                return Err(ConfigError::at(
                    self.file,
                    self.source,
                    job_span.start,
                    format!(
                        "missing key `entry` in [{table}] (expected \"module:function\", a script \"path/to/script.py\", or `command = [\"prog\", \"arg\"]`)"
                    ),
                ));
            }
            (Some(_), Some(c)) => {
                return Err(self.at(
                    c,
                    format!("set either `entry` or `command` in [{table}], not both"),
                ));
            }
            (None, Some(c)) => {
                if c.get_ref().is_empty() || c.get_ref()[0].trim().is_empty() {
                    return Err(self.at(
                        c,
                        format!("`command` in [{table}] is empty (expected [\"prog\", \"arg\", ...])"),
                    ));
                }
                Entry::Command(c.get_ref().clone())
            }
            (Some(e), None) => parse_entry(e.get_ref()).ok_or_else(|| {
                self.at(
                    e,
                    format!(
                        "invalid `entry` `{}` in [{table}] (expected \"module:function\", e.g. \"hedge_jobs.options_chain:run\", or a script \"path/to/script.py\")",
                        e.get_ref()
                    ),
                )
            })?,
        };
        let schedule = Schedule::parse(raw.schedule.get_ref()).map_err(|why| {
            let (what, expected) = if raw.schedule.get_ref().trim_start().starts_with('@') {
                ("session point", "expected \"@open\", \"@open+5m\", \"@close-10m\"")
            } else {
                (
                    "cron",
                    "expected e.g. \"0 */3 * * * *\": sec min hour day month weekday, or \"@open+5m\"",
                )
            };
            self.at(
                &raw.schedule,
                format!(
                    "invalid {what} `{}` for `schedule` in [{table}]: {why} ({expected})",
                    raw.schedule.get_ref()
                ),
            )
        })?;
        let point = |raw: &Option<Spanned<String>>, key: &str, default: SessionPoint| {
            match raw {
            None => Ok(default),
            Some(s) => SessionPoint::parse(s.get_ref()).map_err(|why| {
                self.at(
                    s,
                    format!(
                        "invalid `{key}` `{}` in [{table}]: {why} (expected e.g. \"@open-15m\" or \"@close+5m\")",
                        s.get_ref()
                    ),
                )
            }),
        }
        };
        let window_start = point(&raw.window_start, "window_start", SessionPoint::OPEN)?;
        let window_end = point(&raw.window_end, "window_end", SessionPoint::CLOSE)?;
        let market_hours = raw.market_hours.unwrap_or(true);
        if let Some(w) = raw.window_end.as_ref().or(raw.window_start.as_ref()) {
            // Checked on a regular session: the window must open before it closes.
            let session = crate::calendar::Session {
                date: chrono::NaiveDate::MIN,
                open: self.regular.0,
                close: self.regular.1,
                kind: crate::calendar::SessionKind::Regular,
            };
            if window_start.in_session(&session) > window_end.in_session(&session) {
                return Err(self.at(
                    w,
                    format!(
                        "the window in [{table}] ends ({window_end}) before it starts ({window_start})"
                    ),
                ));
            }
        }
        if !market_hours && let Some(w) = raw.window_start.as_ref().or(raw.window_end.as_ref()) {
            return Err(self.at(
                w,
                format!("a window needs `market_hours = true` in [{table}]"),
            ));
        }
        let executor = self.policy(
            raw.executor.as_ref(),
            "executor",
            Some(&table),
            Executor::Subprocess,
        )?;
        if let (Executor::Pyo3, Some(e), false) = (
            executor,
            &raw.executor,
            matches!(entry, Entry::Function { .. }),
        ) {
            return Err(self.at(
                e,
                format!(
                    "executor `pyo3` in [{table}] runs a \"module:function\" entry only; scripts and commands run as subprocesses"
                ),
            ));
        }
        let overlap = self.policy(raw.overlap.as_ref(), "overlap", Some(&table), Overlap::Skip)?;
        let catch_up = self.policy(
            raw.catch_up.as_ref(),
            "catch_up",
            Some(&table),
            CatchUp::Latest,
        )?;
        let misfire_grace = match &raw.misfire_grace {
            None => None,
            Some(g) => {
                Some(self.duration(Some(g), &format!("{table}.misfire_grace"), Duration::ZERO)?)
            }
        };
        let retry = match &raw.retry {
            None => Retry::default(),
            Some(r) => self.retry(r, &table)?,
        };
        let max_memory = match &raw.max_memory {
            None => None,
            Some(m) => {
                if executor == Executor::Pyo3 {
                    return Err(self.at(
                        m,
                        format!("`max_memory` in [{table}] needs executor = \"subprocess\" (an in-process run shares the daemon's memory)"),
                    ));
                }
                Some(parse_size(m.get_ref()).map_err(|why| {
                    self.at(
                        m,
                        format!(
                            "invalid size `{}` for `max_memory` in [{table}]: {why} (expected e.g. \"512MiB\", \"2GiB\")",
                            m.get_ref()
                        ),
                    )
                })?)
            }
        };
        let timeout = self.duration(
            raw.timeout.as_ref(),
            &format!("{table}.timeout"),
            DEFAULT_TIMEOUT,
        )?;
        let args = match raw.args {
            None => serde_json::Value::Object(Default::default()),
            Some(t) => toml_to_json(toml::Value::Table(t)),
        };
        let entry_at = raw
            .entry
            .as_ref()
            .map(|e| e.span().start)
            .or(raw.command.as_ref().map(|c| c.span().start))
            .map(|offset| crate::error::line_col(self.source, offset));
        Ok(Some(Job {
            id: id.to_string(),
            name: raw.name.unwrap_or_else(|| id.to_string()),
            entry,
            entry_at,
            enabled: raw.enabled != Some(false),
            trigger: Trigger {
                schedule,
                market_hours,
                window_start,
                window_end,
            },
            executor,
            timeout,
            retry,
            overlap,
            catch_up,
            misfire_grace,
            max_memory,
            args,
        }))
    }

    fn retry(&self, raw: &Spanned<RawRetry>, table: &str) -> Result<Retry, ConfigError> {
        let r = raw.get_ref();
        let mut retry = Retry::default();
        if let Some(a) = &r.attempts {
            retry.attempts = u32::try_from(*a.get_ref())
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| {
                    self.at(
                        a,
                        format!(
                            "`retry.attempts` in [{table}] must be 1 to 100 (attempts in all, the first included)"
                        ),
                    )
                })?;
        }
        retry.backoff = self.duration(
            r.backoff.as_ref(),
            &format!("{table}.retry.backoff"),
            retry.backoff,
        )?;
        retry.max_backoff = self.duration(
            r.max_backoff.as_ref(),
            &format!("{table}.retry.max_backoff"),
            retry.max_backoff.max(retry.backoff),
        )?;
        if let Some(f) = &r.factor {
            if !(1.0..=10.0).contains(f.get_ref()) {
                return Err(self.at(
                    f,
                    format!("`retry.factor` in [{table}] must be from 1 to 10"),
                ));
            }
            retry.factor = *f.get_ref();
        }
        if let Some(on) = &r.on {
            use crate::history::Outcome;
            retry.on = Vec::new();
            for o in on {
                match Outcome::parse(o.get_ref()) {
                    Some(out @ (Outcome::Failed | Outcome::Timeout | Outcome::Crashed)) => {
                        retry.on.push(out)
                    }
                    _ => {
                        return Err(self.at(
                            o,
                            format!(
                                "`retry.on` in [{table}] lists `{}` (expected any of: failed, timeout, crashed)",
                                o.get_ref()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(retry)
    }
}

/// A TOML value as JSON for Python; dates and times become their TOML text ("2026-12-31").
fn toml_to_json(v: toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            J::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// Turns a TOML/serde error into one line, with the table it happened in.
fn toml_error(file: &Path, source: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let table = enclosing_table(source, span.start);
            let message = match table {
                Some(t) if !message.contains(&format!("[{t}]")) => format!("{message} in [{t}]"),
                _ => message,
            };
            ConfigError::at(file, source, span.start, message)
        }
        None => ConfigError::new(file, message),
    }
}

/// The `[table]` header in force at byte `offset` (the header itself when the offset is on it).
fn enclosing_table(source: &str, offset: usize) -> Option<String> {
    let line_end = source
        .get(offset..)
        .and_then(|rest| rest.find('\n'))
        .map_or(source.len(), |i| offset + i);
    let before = source.get(..line_end)?;
    before.lines().rev().find_map(|line| {
        let line = line.trim();
        let inner = line.strip_prefix('[')?.split(']').next()?;
        let inner = inner.trim_start_matches('[').trim();
        (!inner.is_empty()).then(|| inner.to_string())
    })
}

fn parse_entry(s: &str) -> Option<Entry> {
    if s.ends_with(".py") && !s.contains(':') {
        return Some(Entry::Script(PathBuf::from(s)));
    }
    let (module, function) = s.split_once(':')?;
    let ident = |p: &str| {
        !p.is_empty()
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| c.is_alphanumeric() || c == '_')
                    && !part.starts_with(|c: char| c.is_ascii_digit())
            })
    };
    (ident(module) && ident(function) && !function.contains('.')).then(|| Entry::Function {
        module: module.to_string(),
        function: function.to_string(),
    })
}

/// Parses "512MiB", "2GiB", "1.5GB", "800000000" (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().map_err(|_| "no number".to_string())?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown unit `{other}`")),
    };
    let bytes = number * factor;
    if !(1.0..1e15).contains(&bytes) {
        return Err("out of range".to_string());
    }
    Ok(bytes as u64)
}

/// Parses "150s", "2m", "1h30m", "500ms".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero".to_string());
    }
    if d > Duration::from_secs(10 * 366 * 86_400) {
        return Err("too long (at most 10 years)".to_string());
    }
    Ok(d)
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        normalize(path)
    } else {
        std::env::current_dir()
            .map(|cwd| normalize(&cwd.join(path)))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Removes `.` and `..` components lexically, so paths print the way users expect.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[scheduler]
exchange = "XNSE"
log_dir = "../logs"
history = "../logs/history.sqlite3"

[python]
executable = "python3"
path = ["../python_bridge"]

[jobs.options_chain]
name = "Options Chain Collection"
entry = "hedge_jobs.options_chain:run"
schedule = "0 */3 * * * *"
market_hours = true
executor = "subprocess"
timeout = "150s"
args = { indices = ["NIFTY", "BANKNIFTY"] }
"#;

    fn parse(src: &str) -> Result<Config, String> {
        Config::parse(Path::new("/p/config/c.toml"), src).map_err(|e| e.to_string())
    }

    #[test]
    fn good_config_resolves_paths_against_its_folder() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.scheduler.log_dir, Path::new("/p/logs"));
        assert_eq!(c.scheduler.history, Path::new("/p/logs/history.sqlite3"));
        assert_eq!(c.python.path, vec![PathBuf::from("/p/python_bridge")]);
        let j = &c.jobs[0];
        assert_eq!(j.id, "options_chain");
        assert_eq!(j.entry.to_string(), "hedge_jobs.options_chain:run");
        assert_eq!(j.timeout, Duration::from_secs(150));
        assert_eq!(j.args["indices"][1], "BANKNIFTY");
    }

    #[test]
    fn unknown_key_names_file_line_and_table() {
        let src = GOOD.replace("market_hours = true", "schedual = 1");
        let e = parse(&src).unwrap_err();
        assert!(
            e.starts_with("/p/config/c.toml:15:1: unknown field `schedual`"),
            "{e}"
        );
        assert!(e.contains("[jobs.options_chain]"), "{e}");
    }

    #[test]
    fn bad_values_are_placed_and_named() {
        let cases = [
            (
                "\"0 */3 * * * *\"",
                "\"0 */3 * * * * * *\"",
                "14:12: invalid cron",
                "schedule",
            ),
            (
                "\"XNSE\"",
                "\"XLON\"",
                "3:12: unknown exchange `XLON`",
                "scheduler.exchange",
            ),
            (
                "\"subprocess\"",
                "\"thread\"",
                "16:12: unknown executor `thread`",
                "executor",
            ),
            (
                "\"150s\"",
                "\"soon\"",
                "17:11: invalid duration `soon`",
                "jobs.options_chain.timeout",
            ),
            (
                "\"hedge_jobs.options_chain:run\"",
                "\"hedge_jobs\"",
                "13:9: invalid `entry`",
                "jobs.options_chain",
            ),
        ];
        for (from, to, want, key) in cases {
            let e = parse(&GOOD.replace(from, to)).unwrap_err();
            assert!(e.contains(want), "{e}");
            assert!(e.contains(key), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn missing_entry_names_the_job() {
        let src = GOOD.replace("entry = \"hedge_jobs.options_chain:run\"\n", "");
        let e = parse(&src).unwrap_err();
        assert!(
            e.contains("missing key `entry` in [jobs.options_chain]"),
            "{e}"
        );
    }

    #[test]
    fn review_cases_are_placed_errors() {
        // A job without `schedule`: the error names the job's table, not the one before it.
        let src = "[python]\npath = []\n\n[jobs.a]\nentry = \"m:f\"\n";
        let e = parse(src).unwrap_err();
        assert!(
            e.contains("missing field `schedule`") && e.contains("[jobs.a]"),
            "{e}"
        );
        assert!(!e.contains("[python]"), "{e}");
        // A window that ends before it starts.
        let src = GOOD.replace(
            "market_hours = true",
            "market_hours = true\nwindow_start = \"@close\"\nwindow_end = \"@open\"",
        );
        let e = parse(&src).unwrap_err();
        assert!(e.contains("ends (@open) before it starts (@close)"), "{e}");
        // Absurd durations are refused, not a panic later.
        let e = parse(&GOOD.replace("\"150s\"", "\"500000000000y\"")).unwrap_err();
        assert!(
            e.contains("too long") || e.contains("invalid duration"),
            "{e}"
        );
        // A non-ASCII character after an anchor is an error, not a panic.
        let e = parse(&GOOD.replace("0 */3 * * * *", "@open€")).unwrap_err();
        assert!(e.contains("invalid session point"), "{e}");
    }

    #[test]
    fn toml_dates_in_args_reach_python_as_text() {
        let src = GOOD.replace(
            "args = { indices = [\"NIFTY\", \"BANKNIFTY\"] }",
            "args = { until = 2026-12-31, at = 09:15:00, ratio = 1.5 }",
        );
        let c = parse(&src).unwrap();
        assert_eq!(c.jobs[0].args["until"], "2026-12-31");
        assert_eq!(c.jobs[0].args["at"], "09:15:00");
        assert_eq!(c.jobs[0].args["ratio"], 1.5);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GiB").unwrap(), 2 * 1024 * 1024 * 1024);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("2XB").is_err());
    }

    #[test]
    fn entries() {
        assert!(parse_entry("a.b:run").is_some());
        assert!(parse_entry("a.b").is_none());
        assert!(parse_entry("a.b:").is_none());
        assert!(parse_entry("a..b:run").is_none());
        assert!(parse_entry("a:b.c").is_none());
        assert_eq!(
            parse_entry("src/data/collector.py"),
            Some(Entry::Script(PathBuf::from("src/data/collector.py")))
        );
    }
}
