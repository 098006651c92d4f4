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
    file: Option<String>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPython {
    executable: Option<Spanned<String>>,
    path: Option<Vec<String>>,
    cwd: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Option<String>,
    entry: Option<Spanned<String>>,
    schedule: Spanned<String>,
    market_hours: Option<bool>,
    window_start: Option<Spanned<String>>,
    window_end: Option<Spanned<String>>,
    executor: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    args: Option<toml::Table>,
    enabled: Option<bool>,
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
}

#[derive(Debug, Clone)]
pub struct Python {
    /// As written in the config; resolved to the real interpreter at start-up.
    pub executable: String,
    /// Where `executable` is written, for errors found when resolving it.
    pub executable_at: Option<(usize, usize)>,
    /// Added to `PYTHONPATH` for every job, in order.
    pub path: Vec<PathBuf>,
    /// The working directory of every job.
    pub cwd: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executor {
    Subprocess,
}

impl Executor {
    pub fn as_str(self) -> &'static str {
        match self {
            Executor::Subprocess => "subprocess",
        }
    }
}

/// A Python entry point, `module:function`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub module: String,
    pub function: String,
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.module, self.function)
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub entry: Entry,
    pub trigger: Trigger,
    pub executor: Executor,
    pub timeout: Duration,
    /// The job's `args` table, handed to Python as `ctx.args`.
    pub args: serde_json::Value,
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = absolute(path);
        let source = std::fs::read_to_string(&file)
            .map_err(|e| ConfigError::new(&file, format!("cannot read config file: {e}")))?;
        Config::parse(&file, &source)
    }

    /// Validates `source`, the text of the config file `file` (absolute).
    pub fn parse(file: &Path, source: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(source).map_err(|e| toml_error(file, source, &e))?;
        let v = Validator { file, source };
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
        };

        let python = Python {
            executable: raw
                .python
                .executable
                .as_ref()
                .map_or_else(|| "python3".to_string(), |s| s.get_ref().clone()),
            executable_at: raw
                .python
                .executable
                .as_ref()
                .map(|s| crate::error::line_col(source, s.span().start)),
            path: raw
                .python
                .path
                .unwrap_or_else(|| vec!["../python_bridge".to_string()])
                .iter()
                .map(|p| base.join(p))
                .collect(),
            cwd: base.join(raw.python.cwd.as_deref().unwrap_or(".")),
        };

        let calendar_file = raw
            .calendar
            .file
            .as_deref()
            .map(|f| normalize(&base.join(f)));
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
}

impl Validator<'_> {
    fn at<T>(&self, spanned: &Spanned<T>, message: String) -> ConfigError {
        ConfigError::at(self.file, self.source, spanned.span().start, message)
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
        let entry = match &raw.entry {
            None => {
                return Err(ConfigError::at(
                    self.file,
                    self.source,
                    job_span.start,
                    format!("missing key `entry` in [{table}] (expected \"module:function\")"),
                ));
            }
            Some(e) => parse_entry(e.get_ref()).ok_or_else(|| {
                self.at(
                    e,
                    format!(
                        "invalid `entry` `{}` in [{table}] (expected \"module:function\", e.g. \"hedge_jobs.options_chain:run\")",
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
        if !market_hours && let Some(w) = raw.window_start.as_ref().or(raw.window_end.as_ref()) {
            return Err(self.at(
                w,
                format!("a window needs `market_hours = true` in [{table}]"),
            ));
        }
        let executor = match &raw.executor {
            None => Executor::Subprocess,
            Some(e) => match e.get_ref().as_str() {
                "subprocess" => Executor::Subprocess,
                other => {
                    return Err(self.at(
                        e,
                        format!(
                            "unknown executor `{other}` for `executor` in [{table}] (expected one of: subprocess)"
                        ),
                    ));
                }
            },
        };
        let timeout = self.duration(
            raw.timeout.as_ref(),
            &format!("{table}.timeout"),
            DEFAULT_TIMEOUT,
        )?;
        if raw.enabled == Some(false) {
            return Ok(None);
        }
        let args = match raw.args {
            None => serde_json::Value::Object(Default::default()),
            Some(t) => serde_json::to_value(t).map_err(|e| {
                ConfigError::at(
                    self.file,
                    self.source,
                    job_span.start,
                    format!("`args` in [{table}] cannot be handed to Python: {e}"),
                )
            })?,
        };
        Ok(Some(Job {
            id: id.to_string(),
            name: raw.name.unwrap_or_else(|| id.to_string()),
            entry,
            trigger: Trigger {
                schedule,
                market_hours,
                window_start,
                window_end,
            },
            executor,
            timeout,
            args,
        }))
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

/// The `[table]` header in force at byte `offset`, if any.
fn enclosing_table(source: &str, offset: usize) -> Option<String> {
    let before = source.get(..offset)?;
    before.lines().rev().find_map(|line| {
        let line = line.trim();
        let inner = line.strip_prefix('[')?.split(']').next()?;
        let inner = inner.trim_start_matches('[').trim();
        (!inner.is_empty()).then(|| inner.to_string())
    })
}

fn parse_entry(s: &str) -> Option<Entry> {
    let (module, function) = s.split_once(':')?;
    let ident = |p: &str| {
        !p.is_empty()
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| c.is_alphanumeric() || c == '_')
                    && !part.starts_with(|c: char| c.is_ascii_digit())
            })
    };
    (ident(module) && ident(function) && !function.contains('.')).then(|| Entry {
        module: module.to_string(),
        function: function.to_string(),
    })
}

/// Parses "150s", "2m", "1h30m", "500ms".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero".to_string());
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
    fn durations() {
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
    }

    #[test]
    fn entries() {
        assert!(parse_entry("a.b:run").is_some());
        assert!(parse_entry("a.b").is_none());
        assert!(parse_entry("a.b:").is_none());
        assert!(parse_entry("a..b:run").is_none());
        assert!(parse_entry("a:b.c").is_none());
    }
}
