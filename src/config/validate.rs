//! `RawConfig` → `Config`: every value checked, every error placed at its key.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use crate::calendar::{Calendar, Exchange};
use crate::error::ConfigError;

use super::*;

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = absolute(path);
        let source = std::fs::read_to_string(&file)
            .map_err(|e| ConfigError::new(&file, format!("cannot read config file: {e}")))?;
        let config = Config::parse(&file, &source)?;
        let key_offset = |key: &str| {
            source
                .lines()
                .scan(0, |at, line| {
                    let start = *at;
                    *at += line.len() + 1;
                    Some((start, line))
                })
                .find(|(_, l)| l.trim_start().starts_with(key))
                .map(|(start, _)| start)
        };
        let placed = |key: &str, message: String| match key_offset(key) {
            Some(at) => ConfigError::at(&file, &source, at, message),
            None => ConfigError::new(&file, message),
        };
        let log_dir = &config.scheduler.log_dir;
        let real = log_dir.canonicalize().unwrap_or_else(|_| log_dir.clone());
        if real.parent().is_none() {
            return Err(placed(
                "log_dir",
                format!(
                    "`scheduler.log_dir` `{}` is a filesystem root: hedge-scheduler makes its log folder private (0700) and keeps its files there; give it a folder of its own, such as \"logs\"",
                    log_dir.display()
                ),
            ));
        }
        if config.scheduler.history.is_dir() {
            return Err(placed(
                "history",
                format!(
                    "`scheduler.history` `{}` is a folder; it names the history's database file, such as \"logs/history.sqlite3\"",
                    config.scheduler.history.display()
                ),
            ));
        }
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
        if let Some(argv) = &config.notify.command
            && !crate::process::executable(&argv[0], &config.python.cwd)
        {
            // Placed at `command` inside [notify] (a job may have a `command` too).
            let at = source.find("[notify]").and_then(|table| {
                source[table..]
                    .lines()
                    .scan(table, |at, line| {
                        let start = *at;
                        *at += line.len() + 1;
                        Some((start, line))
                    })
                    .find(|(_, l)| l.trim_start().starts_with("command"))
                    .map(|(start, _)| start)
            });
            let message = format!(
                "`notify.command` `{}` is not an executable file (a program on PATH, or a path from `python.cwd` {})",
                argv[0],
                config.python.cwd.display()
            );
            return Err(match at {
                Some(at) => ConfigError::at(&file, &source, at, message),
                None => ConfigError::new(&file, message),
            });
        }
        Ok(config)
    }

    /// Validates `source`, the text of the config file `file` (absolute).
    pub fn parse(file: &Path, source: &str) -> Result<Config, ConfigError> {
        let blank = source.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        });
        if blank {
            return Err(ConfigError::new(
                file,
                "the config file is empty: it needs a [scheduler] table and at least one [jobs.<id>] (start from config/hedge-scheduler.toml)".to_string(),
            ));
        }
        let raw: RawConfig = toml::from_str(source).map_err(|e| toml_error(file, source, &e))?;
        let mut v = Validator {
            file,
            source,
            regular: Exchange::Xnse.regular_hours(),
        };
        let base = file.parent().unwrap_or(Path::new("/")).to_path_buf();

        let exchange = match &raw.scheduler.exchange {
            None => Exchange::Xnse,
            Some(s) => v.exchange(s)?,
        };
        v.regular = exchange.regular_hours();
        let scheduler = v.scheduler(&raw.scheduler, &base, exchange)?;
        let python = v.python(raw.python, &base)?;
        let calendar = v.calendar(
            &raw.calendar,
            &base,
            exchange,
            raw.scheduler.strict_calendar.unwrap_or(false),
        )?;
        let cluster = match &raw.cluster {
            Some(c) => Some(v.cluster(c)?),
            None => None,
        };
        let notify = match &raw.notify {
            Some(n) => v.notify(n)?,
            None => Notify::default(),
        };
        let http = match &raw.http {
            Some(h) => v.http(h)?,
            None => None,
        };
        let mut jobs = Vec::new();
        for (id, raw_job) in raw.jobs {
            if cluster.is_none() {
                v.needs_no_cluster(&id, raw_job.get_ref())?;
            }
            if let Some(job) = v.job(&id, raw_job, &python.env)? {
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
            cluster,
            notify,
            http,
        })
    }
}

impl Validator<'_> {
    /// `scheduler.exchange`: one of the exchanges we have calendars for.
    fn exchange(&self, s: &Spanned<String>) -> Result<Exchange, ConfigError> {
        Exchange::parse(s.get_ref()).ok_or_else(|| {
            let known: Vec<_> = Exchange::ALL.iter().map(|e| e.code()).collect();
            self.at(
                s,
                format!(
                    "unknown exchange `{}` in `scheduler.exchange` (expected one of: {})",
                    s.get_ref(),
                    known.join(", ")
                ),
            )
        })
    }

    /// The calendar: the exchange's shipped file (or `calendar.file`), with the config's own
    /// closures and sessions over it.
    fn calendar(
        &self,
        raw: &super::raw::RawCalendar,
        base: &Path,
        exchange: Exchange,
        strict: bool,
    ) -> Result<Arc<Calendar>, ConfigError> {
        let calendar_file = raw
            .file
            .as_ref()
            .map(|f| normalize(&base.join(f.get_ref())));
        if let (Some(path), Some(raw_file)) = (&calendar_file, &raw.file)
            && !path.is_file()
        {
            return Err(self.at(
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
            self.file,
            self.source,
            exchange,
            "calendar.",
            &raw.closures,
            &raw.sessions,
        )?;
        Ok(Arc::new(calendar.with_overrides(overrides, strict)))
    }

    /// `takeover` and `on_database_loss` say what a cluster does: without one, an error.
    fn needs_no_cluster(&self, id: &str, raw: &RawJob) -> Result<(), ConfigError> {
        if let Some(k) = raw.takeover.as_ref().or(raw.on_database_loss.as_ref()) {
            let key = if raw.takeover.is_some() {
                "takeover"
            } else {
                "on_database_loss"
            };
            return Err(self.at(
                k,
                format!("`{key}` in [jobs.{id}] needs a [cluster] table (it says what a cluster of daemons does)"),
            ));
        }
        Ok(())
    }
}

pub(super) struct Validator<'a> {
    pub(super) file: &'a Path,
    pub(super) source: &'a str,
    /// The exchange's regular hours, to check windows against.
    pub(super) regular: (chrono::NaiveTime, chrono::NaiveTime),
}

/// A policy written as one of a few lowercase words: deserialized by serde, refused with the
/// words it accepts.
pub(super) trait Policy: Sized + serde::de::DeserializeOwned {
    /// What the error calls it: "overlap policy".
    const WHAT: &'static str;
    const WORDS: &'static [&'static str];
}

impl Policy for Legacy {
    const WHAT: &'static str = "policy";
    const WORDS: &'static [&'static str] = &["refuse", "warn", "stop"];
}

impl Policy for Containment {
    const WHAT: &'static str = "containment";
    const WORDS: &'static [&'static str] = &["auto", "cgroup", "subreaper"];
}

impl Policy for Executor {
    const WHAT: &'static str = "executor";
    const WORDS: &'static [&'static str] = &["subprocess", "pyo3", "fork"];
}

impl Policy for Overlap {
    const WHAT: &'static str = "overlap policy";
    const WORDS: &'static [&'static str] = &["skip", "queue", "replace"];
}

impl Policy for CatchUp {
    const WHAT: &'static str = "catch-up policy";
    const WORDS: &'static [&'static str] = &["latest", "none", "all"];
}

/// The shortest health or report interval: shorter ones would keep the daemon busy.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

impl Validator<'_> {
    /// `[scheduler]`, its paths against the config's folder `base`.
    fn scheduler(
        &self,
        raw: &RawScheduler,
        base: &Path,
        exchange: Exchange,
    ) -> Result<Scheduler, ConfigError> {
        Ok(Scheduler {
            exchange,
            log_dir: base.join(raw.log_dir.as_deref().unwrap_or(DEFAULT_LOG_DIR)),
            history: base.join(raw.history.as_deref().unwrap_or("../logs/history.sqlite3")),
            shutdown_grace: self.duration(
                raw.shutdown_grace.as_ref(),
                "scheduler.shutdown_grace",
                DEFAULT_SHUTDOWN_GRACE,
            )?,
            kill_grace: self.duration(
                raw.kill_grace.as_ref(),
                "scheduler.kill_grace",
                DEFAULT_KILL_GRACE,
            )?,
            health_interval: self.at_least(
                raw.health_interval.as_ref(),
                "scheduler.health_interval",
                Duration::from_secs(30),
                MIN_INTERVAL,
            )?,
            report_interval: self.at_least(
                raw.report_interval.as_ref(),
                "scheduler.report_interval",
                Duration::from_secs(300),
                MIN_INTERVAL,
            )?,
            history_retention: self.duration(
                raw.history_retention.as_ref(),
                "scheduler.history_retention",
                Duration::from_secs(90 * 86_400),
            )?,
            log_files_kept: match &raw.log_files_kept {
                None => 7,
                Some(n) => usize::try_from(*n.get_ref())
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        self.at(
                            n,
                            "`scheduler.log_files_kept` must be 1 to 1000".to_string(),
                        )
                    })?,
            },
            legacy: self.policy(
                raw.legacy.as_ref(),
                "scheduler.legacy",
                None,
                Legacy::Refuse,
            )?,
            legacy_scripts: raw
                .legacy_scripts
                .clone()
                .unwrap_or_else(|| LEGACY_SCRIPTS.map(String::from).to_vec()),
            containment: self.policy(
                raw.containment.as_ref(),
                "scheduler.containment",
                None,
                Containment::Auto,
            )?,
        })
    }

    /// `[python]`, its paths against the config's folder `base`.
    /// When a fork server is recycled: `python.fork_max_runs` (1,000 by default) and
    /// `python.fork_max_memory` (1 GiB).
    fn fork_limits(&self, raw: &RawPython) -> Result<(u32, u64), ConfigError> {
        let runs = match &raw.fork_max_runs {
            None => 1000,
            Some(n) => u32::try_from(*n.get_ref())
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    self.at(
                        n,
                        "`python.fork_max_runs` must be a whole number of runs, 1 or more"
                            .to_string(),
                    )
                })?,
        };
        let memory = match &raw.fork_max_memory {
            None => 1024 * 1024 * 1024,
            Some(m) => parse_size(m.get_ref()).map_err(|why| {
                self.at(
                    m,
                    format!(
                        "invalid size `{}` for `python.fork_max_memory`: {why} (expected e.g. \"512MiB\", \"2GiB\")",
                        m.get_ref()
                    ),
                )
            })?,
        };
        Ok((runs, memory))
    }

    /// `python.preload`: module names.
    fn preload(&self, list: &[Spanned<String>]) -> Result<Vec<String>, ConfigError> {
        let mut names = Vec::new();
        for name in list {
            let ok = !name.get_ref().is_empty()
                && name.get_ref().split('.').all(|part| {
                    part.chars()
                        .next()
                        .is_some_and(|c| c.is_alphabetic() || c == '_')
                        && part.chars().all(|c| c.is_alphanumeric() || c == '_')
                });
            if !ok {
                return Err(self.at(
                    name,
                    format!(
                        "`{}` in `python.preload` is not a module name (expected e.g. \"pandas\", \"hedge_jobs.options_chain\")",
                        name.get_ref()
                    ),
                ));
            }
            names.push(name.get_ref().clone());
        }
        Ok(names)
    }

    fn python(&self, raw: RawPython, base: &Path) -> Result<Python, ConfigError> {
        if let (Some(_), Some(venv)) = (&raw.executable, &raw.venv) {
            return Err(self.at(
                venv,
                "set either `python.executable` or `python.venv`, not both (the venv's interpreter is used)".to_string(),
            ));
        }
        let venv = raw
            .venv
            .as_ref()
            .map(|p| normalize(&base.join(p.get_ref())));
        let probe_timeout = self.duration(
            raw.probe_timeout.as_ref(),
            "python.probe_timeout",
            Duration::from_secs(10),
        )?;
        let preload = match &raw.preload {
            None => Vec::new(),
            Some(list) => self.preload(list.get_ref())?,
        };
        let (fork_max_runs, fork_max_memory) = self.fork_limits(&raw)?;
        let python_env = secrets::JobEnv {
            inherit: raw.inherit_env.as_ref().is_none_or(|i| *i.get_ref()),
            vars: match &raw.env_file {
                Some(f) => self.env_file(f, "python.env_file")?,
                None => Vec::new(),
            },
        };
        Ok(Python {
            preload,
            preload_at: raw
                .preload
                .as_ref()
                .map(|p| crate::error::line_col(self.source, p.span().start)),
            fork_max_runs,
            fork_max_memory,
            env: python_env,
            probe_timeout,
            executable: match (&venv, &raw.executable) {
                (Some(v), _) => v.join("bin/python").display().to_string(),
                (None, Some(e)) => e.get_ref().clone(),
                (None, None) => "python3".to_string(),
            },
            venv,
            executable_at: raw
                .executable
                .as_ref()
                .or(raw.venv.as_ref())
                .map(|s| crate::error::line_col(self.source, s.span().start)),
            path: raw
                .path
                .unwrap_or_else(|| vec!["../python_bridge".to_string()])
                .iter()
                .map(|p| base.join(p))
                .collect(),
            cwd: base.join(raw.cwd.as_ref().map_or(".", |c| c.get_ref().as_str())),
            cwd_at: raw
                .cwd
                .as_ref()
                .map(|c| crate::error::line_col(self.source, c.span().start)),
        })
    }
}

impl Validator<'_> {
    /// A duration key that must be at least `min`.
    pub(super) fn at_least(
        &self,
        raw: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
        min: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(raw, key, default)?;
        match raw {
            Some(r) if d < min => Err(self.at(
                r,
                format!(
                    "`{key}` = \"{}\" is too short: at least {}",
                    r.get_ref(),
                    humantime::format_duration(min)
                ),
            )),
            _ => Ok(d),
        }
    }

    pub(super) fn at<T>(&self, spanned: &Spanned<T>, message: String) -> ConfigError {
        ConfigError::at(self.file, self.source, spanned.span().start, message)
    }

    /// A policy key (`overlap`, `catch_up`, …): `default` when absent.
    pub(super) fn policy<P: Policy>(
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

    pub(super) fn duration(
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

    /// `path` (relative to the config's folder) read as an env file, or the error at `key`.
    pub(super) fn env_file(
        &self,
        path: &Spanned<String>,
        key: &str,
    ) -> Result<Vec<(String, secrets::Secret)>, ConfigError> {
        let file = self
            .file
            .parent()
            .unwrap_or(Path::new("/"))
            .join(path.get_ref());
        secrets::read_env_file(&file).map_err(|why| self.at(path, format!("`{key}`: {why}")))
    }
}
