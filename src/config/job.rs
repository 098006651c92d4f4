//! A `[jobs.<id>]` table → `Job`: its id, entry, schedule and window, executor, policies,
//! limits, retry, environment and arguments, each error placed at its key.

use std::time::Duration;

use toml::Spanned;

use crate::error::ConfigError;
use crate::trigger::{Schedule, SessionPoint, Trigger};

use super::validate::Validator;
use super::*;

/// The longest job id: it names the job's log and lock files.
pub const MAX_JOB_ID: usize = 64;
/// The largest `args` of a job, as JSON.
const MAX_ARGS: usize = 100 * 1024;

impl Validator<'_> {
    /// A job's environment: every job's (`defaults`), then its `env_file`, then its `env`.
    fn job_env(
        &self,
        raw: &RawJob,
        table: &str,
        executor: Executor,
        defaults: &secrets::JobEnv,
    ) -> Result<secrets::JobEnv, ConfigError> {
        let mut own = match &raw.env_file {
            Some(f) => self.env_file(f, &format!("{table}.env_file"))?,
            None => Vec::new(),
        };
        if let Some(env) = &raw.env {
            let Some(vars) = env.get_ref().as_table() else {
                return Err(self.at(
                    env,
                    format!("`env` in [{table}] must be a table: env = {{ KEY = \"value\" }}"),
                ));
            };
            for (key, value) in vars {
                secrets::check_key(key)
                    .map_err(|why| self.at(env, format!("`env` in [{table}]: {why}")))?;
                let Some(value) = value.as_str() else {
                    return Err(self.at(
                        env,
                        format!("`env.{key}` in [{table}] must be a string (quote it)"),
                    ));
                };
                own.push((key.clone(), secrets::Secret::new(value.to_string())));
            }
        }
        let env = secrets::JobEnv {
            inherit: raw
                .inherit_env
                .as_ref()
                .map_or(defaults.inherit, |i| *i.get_ref()),
            vars: defaults.then(own),
        };
        if executor == Executor::Pyo3 && !env.is_plain() {
            let at = raw
                .env
                .as_ref()
                .map(|e| e.span().start)
                .or(raw.env_file.as_ref().map(|e| e.span().start))
                .or(raw.inherit_env.as_ref().map(|e| e.span().start));
            let message = format!(
                "[{table}] has an environment of its own (`env`, `env_file`, `inherit_env` here or in [python]), but executor `pyo3` runs inside the daemon, whose environment every job shares: use executor = \"fork\" or \"subprocess\""
            );
            return Err(match at {
                Some(at) => ConfigError::at(self.file, self.source, at, message),
                None => ConfigError::new(self.file, message),
            });
        }
        Ok(env)
    }

    pub(super) fn job(
        &self,
        id: &str,
        raw: Spanned<RawJob>,
        env_defaults: &secrets::JobEnv,
    ) -> Result<Option<Job>, ConfigError> {
        let table = format!("jobs.{id}");
        self.job_id(id, &raw, &table)?;
        let job_span = raw.span();
        let raw = raw.into_inner();
        let entry = self.entry(&raw, &table, job_span.start)?;
        let (schedule, window_start, window_end, market_hours) = self.when(&raw, &table)?;
        let executor = self.executor(&raw, &table, &entry)?;
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
            Some(m) => Some(self.max_memory(m, &table, executor)?),
        };
        let timeout = self.duration(
            raw.timeout.as_ref(),
            &format!("{table}.timeout"),
            DEFAULT_TIMEOUT,
        )?;
        let env = self.job_env(&raw, &table, executor, env_defaults)?;
        let (takeover, on_database_loss) = self.job_cluster_keys(&raw, &table)?;
        let args = self.args(raw.args, &table, job_span.start)?;
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
            takeover,
            on_database_loss,
            notify: raw.notify != Some(false),
            ping: match &raw.ping {
                None => None,
                Some(u) => Some(self.url(u, &format!("{table}.ping"))?),
            },
            env,
        }))
    }

    /// A job's `takeover` and `on_database_loss` (none: the cluster's).
    fn job_cluster_keys(
        &self,
        raw: &RawJob,
        table: &str,
    ) -> Result<(Takeover, Option<DatabaseLoss>), ConfigError> {
        let takeover = self.policy(
            raw.takeover.as_ref(),
            "takeover",
            Some(table),
            Takeover::Rerun,
        )?;
        let on_database_loss = match &raw.on_database_loss {
            None => None,
            Some(p) => {
                Some(self.policy(Some(p), "on_database_loss", Some(table), DatabaseLoss::Run)?)
            }
        };
        Ok((takeover, on_database_loss))
    }

    /// A job id names the job's files: letters, digits, `_` and `-`, at most `MAX_JOB_ID`.
    fn job_id(&self, id: &str, raw: &Spanned<RawJob>, table: &str) -> Result<(), ConfigError> {
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(self.at(
                raw,
                format!("invalid job id `{id}` in [{table}] (use letters, digits, `_` and `-`)"),
            ));
        }
        if id.len() > MAX_JOB_ID {
            return Err(self.at(
                raw,
                format!(
                    "job id `{}…` is {} characters long; at most {MAX_JOB_ID} (it names the job's files)",
                    &id[..16],
                    id.len()
                ),
            ));
        }
        Ok(())
    }

    /// `max_memory`: a size, for a job run in a process of its own.
    fn max_memory(
        &self,
        m: &Spanned<String>,
        table: &str,
        executor: Executor,
    ) -> Result<u64, ConfigError> {
        if executor == Executor::Pyo3 {
            return Err(self.at(
                m,
                format!("`max_memory` in [{table}] needs executor = \"subprocess\" or \"fork\" (an in-process run shares the daemon's memory)"),
            ));
        }
        parse_size(m.get_ref()).map_err(|why| {
            self.at(
                m,
                format!(
                    "invalid size `{}` for `max_memory` in [{table}]: {why} (expected e.g. \"512MiB\", \"2GiB\")",
                    m.get_ref()
                ),
            )
        })
    }

    /// `args` as JSON; the run context travels in one environment variable (at most 128 KiB
    /// on Linux), so they are bounded.
    fn args(
        &self,
        raw: Option<toml::Table>,
        table: &str,
        at: usize,
    ) -> Result<serde_json::Value, ConfigError> {
        let args = match raw {
            None => serde_json::Value::Object(Default::default()),
            Some(t) => toml_to_json(toml::Value::Table(t)),
        };
        let args_len = args.to_string().len();
        if args_len > MAX_ARGS {
            return Err(ConfigError::at(
                self.file,
                self.source,
                at,
                format!(
                    "`args` of [{table}] is {} KiB as JSON; at most {} KiB (it travels in the run's environment): put large inputs in a file and pass its path",
                    args_len.div_ceil(1024),
                    MAX_ARGS / 1024
                ),
            ));
        }
        Ok(args)
    }

    pub(super) fn retry(&self, raw: &Spanned<RawRetry>, table: &str) -> Result<Retry, ConfigError> {
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

impl Validator<'_> {
    /// A job's `entry` or `command` (exactly one of them); `at` places a missing one.
    fn entry(&self, raw: &RawJob, table: &str, at: usize) -> Result<Entry, ConfigError> {
        Ok(match (&raw.entry, &raw.command) {
            (None, None) => {
                return Err(ConfigError::at(
                    self.file,
                    self.source,
                    at,
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
        })
    }

    /// A job's `schedule`, its window (`window_start`, `window_end`) and `market_hours`.
    fn when(
        &self,
        raw: &RawJob,
        table: &str,
    ) -> Result<(Schedule, SessionPoint, SessionPoint, bool), ConfigError> {
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
        Ok((schedule, window_start, window_end, market_hours))
    }

    /// A job's `executor`, which must suit its entry and this build.
    fn executor(&self, raw: &RawJob, table: &str, entry: &Entry) -> Result<Executor, ConfigError> {
        let executor = self.policy(
            raw.executor.as_ref(),
            "executor",
            Some(table),
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
        if let (Executor::Fork, Some(e), Entry::Command(_)) = (executor, &raw.executor, entry) {
            return Err(self.at(
                e,
                format!(
                    "executor `fork` in [{table}] runs Python (a \"module:function\" entry or a script); a command runs as a subprocess"
                ),
            ));
        }
        if let (Executor::Pyo3, Some(e), false) = (executor, &raw.executor, super::EMBEDDED) {
            return Err(self.at(
                e,
                format!(
                    "executor `pyo3` in [{table}]: this hedge-scheduler was built without the embedded interpreter (cargo feature `embedded`); use executor = \"fork\" or \"subprocess\""
                ),
            ));
        }
        Ok(executor)
    }
}
