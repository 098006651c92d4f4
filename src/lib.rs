//! hedge-scheduler: runs the Python jobs of a trading research system on market-hours-aware cron
//! triggers, with timeouts, overlap prevention and a SQLite history.
//!
//! `main.rs` parses the command line and calls [`run`]; everything else lives here so tests can
//! drive it in-process too.

pub(crate) mod bridge;
pub mod calendar;
pub mod cli;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod contain;
pub(crate) mod control;
pub(crate) mod daemon;
pub mod error;
pub(crate) mod fmt;
pub(crate) mod health;
pub mod history;
pub(crate) mod instance;
pub(crate) mod interpreter;
pub(crate) mod legacy;
pub(crate) mod log_dir;
pub(crate) mod logging;
pub(crate) mod logs;
pub(crate) mod market;
pub(crate) mod observe;
pub(crate) mod plan;
pub(crate) mod private;
pub(crate) mod process;
#[cfg(feature = "embedded")]
pub(crate) mod python;
pub(crate) mod runner;
pub(crate) mod status;
pub mod trigger;
pub(crate) mod web;

use std::io::Write;
use std::sync::Arc;

use chrono::{Datelike, Utc};

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::error::{EXIT_NOT_RUNNING, Error, Result};
use crate::history::{History, Outcome, TriggerKind};

pub use contain::{KEEPER_ARG, keeper_from_stdin};

/// Whether this binary embeds a Python interpreter (cargo feature `embedded`): without it,
/// `executor = "pyo3"` is a config error and nothing links libpython.
pub const EMBEDDED: bool = cfg!(feature = "embedded");

/// Readies the Python the config's jobs need before their first run: the embedded interpreter
/// for pyo3 jobs, a fork server for fork jobs (`renew`: a new one even if one runs). A preload
/// that fails or starts a thread is the config's error. Blocking.
pub(crate) fn ready_python(
    config: &Config,
    interpreter: &interpreter::Interpreter,
    forks: &runner::ForkPool,
    renew: bool,
) -> Result<()> {
    init_embedded(config, interpreter)?;
    ready_forks(config, &interpreter.path, forks, renew, true)
}

/// `ready_forks` on a thread of its own, saying nothing yet (the daemon's log is not set up).
fn warm_forks(
    config: &Config,
    python: &std::path::Path,
    forks: &Arc<runner::ForkPool>,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let (c, p, f) = (config.clone(), python.to_path_buf(), Arc::clone(forks));
    std::thread::Builder::new()
        .name("fork-server-start".into())
        .spawn(move || ready_forks(&c, &p, &f, false, false))
        .map_err(|e| Error::io("cannot start a thread", e))
}

/// Starts the embedded interpreter if a pyo3 job needs it. Blocking.
fn init_embedded(config: &Config, interpreter: &interpreter::Interpreter) -> Result<()> {
    #[cfg(feature = "embedded")]
    if config
        .jobs
        .iter()
        .any(|j| j.executor == config::Executor::Pyo3)
    {
        python::init(config, interpreter)?;
    }
    #[cfg(not(feature = "embedded"))]
    let _ = (config, interpreter);
    Ok(())
}

/// Starts the fork server fork jobs need (`renew`: a new one even if one runs); a preload that
/// fails or starts a thread is the config's error. Blocking.
fn ready_forks(
    config: &Config,
    python: &std::path::Path,
    forks: &runner::ForkPool,
    renew: bool,
    announce: bool,
) -> Result<()> {
    if config
        .jobs
        .iter()
        .any(|j| j.executor == config::Executor::Fork)
    {
        let started = match (renew, announce) {
            (true, _) => forks.renew(config, python, "the config was reloaded"),
            (false, true) => forks.warm(config, python),
            (false, false) => forks.warm_quietly(config, python),
        };
        started.map_err(|e| match e {
            runner::StartError::Preload(message) => Error::Config(error::ConfigError {
                file: config.file.clone(),
                position: config.python.preload_at,
                message: format!("python.preload: {message}"),
            }),
            runner::StartError::Other(message) => Error::Other(message),
        })?;
    }
    Ok(())
}

static INVOCATION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// How to call this program again in a hint: with `--config` when this command was given one.
pub(crate) fn me() -> &'static str {
    INVOCATION.get().map_or("hedge-scheduler", String::as_str)
}

/// `path` as one shell word.
fn shell_word(path: &std::path::Path) -> String {
    let text = path.display().to_string();
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@%=".contains(c))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Runs one command; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    // What we create is ours alone; the runs get the user's umask back.
    private::set_umask();
    logging::set_color(cli.color);
    let found = config::locate::find(cli.config.as_deref());
    if let Some(at) = found
        .as_ref()
        .filter(|at| at.source == config::locate::Source::Flag)
    {
        let _ = INVOCATION.set(format!("hedge-scheduler --config {}", shell_word(&at.path)));
    }
    let load = || -> Result<Config> {
        let at = config::locate::locate(cli.config.as_deref())?;
        Config::load(&at.path).map_err(|mut e| {
            if e.message.starts_with("cannot read config file") {
                e.message = format!("{} ({})", e.message, at.origin());
            }
            Error::Config(e)
        })
    };
    match cli.command {
        Command::Run { allow_config_drift } => {
            // First, before any thread, lock or sizeable allocation (the keeper is a forked copy
            // of us: what we hold now, it holds): the runs die with us, however we die.
            contain::start_keeper().map_err(|e| Error::io("cannot start the keeper", e))?;
            let config = load()?;
            refuse_strict_past_coverage(&config)?;
            bridge::ensure(&config.scheduler.log_dir)?;
            // The fork server imports its preloads on a thread of its own (a Python start and its
            // imports: tens of milliseconds this start-up need not wait for), from the
            // interpreter the last start resolved while the probe answers, if there was one.
            let forks = Arc::new(runner::ForkPool::default());
            let guess = interpreter::remembered(&config);
            let mut warming = match &guess {
                Some(python) => Some(warm_forks(&config, python, &forks)?),
                None => None,
            };
            let interpreter = interpreter::resolve(&config, None)?;
            if guess.as_ref() != Some(&interpreter.path) {
                if let Some(early) = warming.take() {
                    let _ = early.join();
                    forks.shutdown();
                }
                warming = Some(warm_forks(&config, &interpreter.path, &forks)?);
            }
            let warming = match warming {
                Some(w) => w,
                None => warm_forks(&config, &interpreter.path, &forks)?,
            };
            check_log_dir(&config)?;
            interpreter::remember(&config, &interpreter);
            logging::init_daemon(
                &config.scheduler.log_dir,
                config.scheduler.log_files_kept,
                config.calendar().tz(),
            )?;
            let mode = contain_runs(&config)?;
            tracing::info!("🔒 containment: {}", mode.describe());
            legacy_at_start(&config)?;
            // The embedded interpreter starts here, never on an async worker.
            init_embedded(&config, &interpreter)?;
            let rt = runtime()?;
            let outcome = rt.block_on(daemon::run(
                config,
                interpreter,
                allow_config_drift,
                (Arc::clone(&forks), warming),
            ));
            forks.shutdown();
            // A reload's probe still hanging is ours: it goes with us.
            interpreter::end_probes();
            // Threads stuck in native code end with the process; do not wait for them.
            rt.shutdown_timeout(std::time::Duration::from_millis(500));
            contain::cleanup();
            outcome?;
            Ok(0)
        }
        Command::RunOnce { job, json, wait } => {
            contain::start_keeper().map_err(|e| Error::io("cannot start the keeper", e))?;
            logging::init_cli("warn");
            let config = load()?;
            bridge::ensure(&config.scheduler.log_dir)?;
            let outcome = run_once(config, &job, json, wait);
            contain::cleanup();
            outcome
        }
        Command::Status { json } => {
            logging::init_cli("warn");
            let config = match load() {
                Ok(config) => config,
                Err(e) => return status_without_config(found.as_ref(), e, json),
            };
            let now = Utc::now();
            let status = status::gather(&config, now)?;
            if json {
                println!("{}", to_json(&status)?);
            } else {
                print!("{}", status::render_status(&status, &config, now));
            }
            Ok(if status.daemon.running {
                0
            } else {
                EXIT_NOT_RUNNING
            })
        }
        Command::History {
            job,
            limit,
            node,
            json,
        } => {
            logging::init_cli("warn");
            let config = load()?;
            let local = |job: Option<&str>| -> Result<Vec<history::RunRow>> {
                Ok(match History::open_read_only(&config.scheduler.history)? {
                    Some(h) => h.runs(job, limit)?,
                    None => Vec::new(),
                })
            };
            let rows = match &config.cluster {
                // Every node's runs, from the cluster's database; this host's journal when it
                // cannot be reached (and a first line saying so).
                Some(cluster) => {
                    match cluster::read::history(&config, job.as_deref(), node.as_deref(), limit) {
                        Ok(rows) => rows,
                        Err(e) => {
                            let warning = format!(
                                "⚠️  cluster database unreachable: showing node {} only ({e})",
                                cluster.node
                            );
                            if json {
                                eprintln!("{warning}");
                            } else {
                                println!("{warning}");
                            }
                            let mut rows = local(job.as_deref())?;
                            rows.retain(|r| {
                                node.as_deref().is_none_or(|n| r.node.as_deref() == Some(n))
                            });
                            rows
                        }
                    }
                }
                None => {
                    if node.is_some() {
                        return Err(Error::Usage(
                            "`history --node` needs a [cluster] table in the config".to_string(),
                        ));
                    }
                    local(job.as_deref())?
                }
            };
            // A job no longer configured still has its past: unknown only when it has none.
            if let Some(id) = &job
                && config.job(id).is_none()
                && rows.is_empty()
            {
                return Err(Error::UnknownJob {
                    job: id.clone(),
                    known: config.job_list(),
                });
            }
            if json {
                println!("{}", to_json(&rows)?);
            } else {
                print!("{}", status::render_history(&rows, &config));
            }
            Ok(0)
        }
        Command::Stop => {
            logging::init_cli("warn");
            match load() {
                Ok(config) => stop(
                    &config.scheduler.log_dir,
                    config.scheduler.shutdown_grace + config.scheduler.kill_grace,
                ),
                Err(e) => {
                    // The running daemon read the config before it broke: reach it by the log
                    // folder alone, waiting as long as the longest graces would need.
                    let log_dir = fallback_log_dir(found.as_ref(), e)?;
                    stop(&log_dir, std::time::Duration::from_secs(600))
                }
            }
        }
        Command::CheckConfig { json } => {
            logging::init_cli("warn");
            let checked = (|| -> Result<(Config, interpreter::Interpreter)> {
                let config = load()?;
                bridge::ensure(&config.scheduler.log_dir)?;
                let interpreter = interpreter::resolve(&config, None)?;
                interpreter::check_entries(&config, &interpreter)?;
                // pyo3 jobs: the embedded Python must be the interpreter's version.
                init_embedded(&config, &interpreter)?;
                // The preloads are imported as the daemon would: one that starts a thread is
                // refused.
                let forks = runner::ForkPool::default();
                let started = ready_forks(&config, &interpreter.path, &forks, false, true);
                forks.shutdown();
                started?;
                Ok((config, interpreter))
            })();
            let (config, interpreter) = match (checked, json) {
                (Ok(c), _) => c,
                (Err(e), false) => return Err(e),
                (Err(e), true) => {
                    let (file, position) = match &e {
                        Error::Config(c) => (Some(c.file.clone()), c.position),
                        _ => (None, None),
                    };
                    let doc = serde_json::json!({
                        "valid": false,
                        "error": e.to_string(),
                        "file": file,
                        "line": position.map(|p| p.0),
                        "column": position.map(|p| p.1),
                    });
                    println!("{}", to_json(&doc)?);
                    return Ok(e.exit_code());
                }
            };
            let forks = config
                .jobs
                .iter()
                .any(|j| j.executor == config::Executor::Fork);
            let mut warnings = config_warnings(&config, Utc::now());
            warnings.extend(cluster_data_warnings(&config));
            if json {
                println!(
                    "{}",
                    to_json(&status::config_json(
                        &config,
                        &interpreter,
                        Utc::now(),
                        warnings
                    ))?
                );
                return Ok(0);
            }
            let python = format!(
                "{} (Python {})",
                interpreter.path.display(),
                interpreter.version
            );
            print!("{}", status::render_config(&config, &python, Utc::now()));
            if forks {
                println!(
                    "🍴 fork server: started, {} imported, no thread running after them",
                    crate::fmt::n(config.python.preload.len(), "preload")
                );
            }
            for w in cluster_data_warnings(&config) {
                println!("⚠️  {w}");
            }
            Ok(0)
        }
        Command::Logs {
            job,
            run,
            last,
            lines,
            follow,
            json,
        } => {
            logging::init_cli("warn");
            let config = load()?;
            logs_command(&config, &job, run, last, lines, follow, json)
        }
        Command::Pause { job, until } => {
            logging::init_cli("warn");
            let config = load()?;
            let until = until
                .as_deref()
                .map(|u| pause_until(&config, u, Utc::now()))
                .transpose()?;
            control_command(&config, control::Request::Pause { job, until })
        }
        Command::Reload => {
            logging::init_cli("warn");
            let config = load()?;
            control_command(&config, control::Request::Reload)
        }
        Command::Resume { job } => {
            logging::init_cli("warn");
            let config = load()?;
            control_command(&config, control::Request::Resume { job })
        }
        Command::Trigger { job } => {
            logging::init_cli("warn");
            let config = load()?;
            control_command(&config, control::Request::Trigger { job })
        }
        Command::Backfill { job, from, to } => {
            logging::init_cli("warn");
            let config = load()?;
            let range = plan::Range::parse(&from, &to)?;
            let (span, slots) = backfill_slots(&config, &job, range, Utc::now())?;
            if slots.is_empty() {
                println!(
                    "{job}: nothing to backfill: every past slot from {from} to {to} has a successful run"
                );
                return Ok(0);
            }
            control_command(
                &config,
                control::Request::Backfill {
                    job,
                    range: span,
                    slots,
                },
            )
        }
        Command::Context {
            job,
            entry,
            at,
            args,
            exchange,
        } => {
            logging::init_cli("warn");
            let config = match &found {
                Some(_) => Some(load()?),
                None => None,
            };
            let context = context_command(config.as_ref(), job, entry, at, args, exchange)?;
            println!("{}", to_json(&context)?);
            Ok(0)
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "hedge-scheduler", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            man_page(cmd, &mut out).map_err(|e| Error::io("cannot write the manual page", e))?;
            std::io::stdout()
                .write_all(&out)
                .map_err(|e| Error::io("cannot write the manual page", e))?;
            Ok(0)
        }
        Command::Calendar {
            exchange,
            from,
            to,
            json,
        } => {
            logging::init_cli("warn");
            let config = match &found {
                Some(_) => Some(load()?),
                None => None,
            };
            let calendar = plan::calendar_for(exchange.as_deref(), config.as_ref())?;
            let today = Utc::now().with_timezone(&calendar.tz()).date_naive();
            let range = plan::Range::parse_or_week(from.as_deref(), to.as_deref(), today)?;
            listing(&calendar, range, |out| {
                plan::write_calendar(out, &calendar, range, json)
            })
        }
        Command::Plan {
            job,
            from,
            to,
            json,
        } => {
            logging::init_cli("warn");
            let config = load()?;
            let today = Utc::now()
                .with_timezone(&config.calendar().tz())
                .date_naive();
            let range = plan::Range::parse_or_week(from.as_deref(), to.as_deref(), today)?;
            let jobs: Vec<&config::Job> = match &job {
                Some(id) => vec![config.job(id).ok_or_else(|| Error::UnknownJob {
                    job: id.clone(),
                    known: config.job_list(),
                })?],
                None => config.jobs.iter().filter(|j| j.enabled).collect(),
            };
            if let Some(j) = jobs.iter().find(|j| !j.enabled) {
                eprintln!(
                    "note: `{}` is disabled (enabled = false): it never fires",
                    j.id
                );
            }
            let jobs: Vec<&config::Job> = jobs.into_iter().filter(|j| j.enabled).collect();
            let calendar = config.calendar();
            listing(&calendar, range, |out| {
                plan::write_plan(out, &calendar, &jobs, range, json)
            })
        }
    }
}

/// `context`: the run context a run of `job` (or of `entry`) scheduled at `at` would get, built
/// by the daemon's own code.
fn context_command(
    config: Option<&Config>,
    job: Option<String>,
    entry: Option<String>,
    at: Option<String>,
    args: Option<String>,
    exchange: Option<String>,
) -> Result<serde_json::Value> {
    let calendar = plan::calendar_for(
        exchange.as_deref().or(config.is_none().then_some("XNSE")),
        config,
    )?;
    let tz = calendar.tz();
    let configured = match (&job, &entry, config) {
        (Some(id), _, Some(c)) => Some(c.job(id).ok_or_else(|| Error::UnknownJob {
            job: id.clone(),
            known: c.job_list(),
        })?),
        (Some(id), _, None) => {
            return Err(Error::Usage(format!(
                "job `{id}`: no config found to read it from; give --entry instead"
            )));
        }
        (None, Some(e), Some(c)) => c.jobs.iter().find(|j| j.entry.to_string() == *e),
        (None, _, _) => None,
    };
    let entry = match (configured, &entry) {
        (_, Some(e)) => e.clone(),
        (Some(j), None) => j.entry.to_string(),
        (None, None) => {
            return Err(Error::Usage(
                "`context` needs a job of the config or --entry module:function".to_string(),
            ));
        }
    };
    let scheduled_at = match at.as_deref() {
        None => Utc::now(),
        Some(text) => parse_at(text, tz)?,
    };
    let mut merged = configured
        .map(|j| j.args.clone())
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(text) = &args {
        let extra: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::Usage(format!("`--args` is not JSON: {e}")))?;
        let (Some(into), Some(from)) = (merged.as_object_mut(), extra.as_object()) else {
            return Err(Error::Usage("`--args` must be a JSON object".to_string()));
        };
        into.extend(from.clone());
    }
    let id = configured.map_or_else(
        || entry.split(':').next().unwrap_or("job").replace('.', "_"),
        |j| j.id.clone(),
    );
    let timeout = configured.map_or(config::DEFAULT_TIMEOUT, |j| j.timeout);
    let mut context = serde_json::json!({
        "job": id,
        "name": configured.map_or(id.as_str(), |j| j.name.as_str()),
        "entry": entry,
        "run_id": 0,
        "run_uid": uuid::Uuid::now_v7().to_string(),
        "scheduled_at": scheduled_at.with_timezone(&tz).to_rfc3339_opts(chrono::SecondsFormat::Micros, false),
        "attempt": 1,
        "trigger": "test",
        "args": merged,
        "exchange": calendar.exchange().code(),
        "timezone": tz.name(),
    });
    if let Some(map) = context.as_object_mut() {
        map.extend(runner::context_times(
            &calendar,
            configured.map(|j| &j.trigger),
            scheduled_at,
            scheduled_at,
            timeout,
        ));
    }
    Ok(context)
}

/// `--at`: RFC 3339, or a date and time in the exchange's zone (`2026-11-30T09:15[:00]`, a space
/// for the `T` too).
fn parse_at(text: &str, tz: chrono_tz::Tz) -> Result<chrono::DateTime<Utc>> {
    use chrono::TimeZone;
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(t.with_timezone(&Utc));
    }
    let normal = text.trim().replace(' ', "T");
    ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(&normal, f).ok())
        .and_then(|local| tz.from_local_datetime(&local).earliest())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| {
            Error::Usage(format!(
                "invalid time `{text}` for `--at` (expected RFC 3339, such as 2026-11-30T09:15:00+05:30, or 2026-11-30T09:15 in the exchange's zone)"
            ))
        })
}

/// The manual page: the command, each subcommand's section, then where things are.
fn man_page(cmd: clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    // Each command with its own options, as `--help` gives them.
    let mut roff = clap_mangen::roff::Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands() {
        let args: Vec<String> = sub
            .get_arguments()
            .filter(|a| !a.is_global_set())
            .map(|a| match (a.get_long(), a.is_positional()) {
                (Some(long), _) => format!("[--{long}]"),
                (None, _) => format!("<{}>", a.get_id()),
            })
            .collect();
        roff.control("TP", []);
        roff.text([clap_mangen::roff::bold(format!(
            "hedge-scheduler {} {}",
            sub.get_name(),
            args.join(" ")
        ))]);
        roff.text([clap_mangen::roff::roman(
            sub.get_about().map(|a| a.to_string()).unwrap_or_default(),
        )]);
        for a in sub.get_arguments().filter(|a| !a.is_global_set()) {
            let name = match a.get_long() {
                Some(long) => format!("--{long}"),
                None => format!("<{}>", a.get_id()),
            };
            roff.control("RS", []);
            roff.text([
                clap_mangen::roff::italic(name),
                clap_mangen::roff::roman(format!(
                    "  {}",
                    a.get_help().map(|h| h.to_string()).unwrap_or_default()
                )),
            ]);
            roff.control("RE", []);
        }
    }
    // A section of `term: what` entries.
    let mut entries = |title: &str, items: &[(&str, &str)]| {
        roff.control("SH", [title]);
        for (term, what) in items {
            roff.control("TP", []);
            roff.text([clap_mangen::roff::bold(*term)]);
            roff.text([clap_mangen::roff::roman(*what)]);
        }
    };
    entries(
        "FILES",
        &[
            (
                "./config/hedge-scheduler.toml, $XDG_CONFIG_HOME/hedge-scheduler/hedge-scheduler.toml, /etc/hedge-scheduler/hedge-scheduler.toml",
                "the config, the first found, unless --config or HEDGE_SCHEDULER_CONFIG names one",
            ),
            (
                "<log_dir>/hedge-scheduler.log",
                "the daemon's log (rotated daily to hedge-scheduler.log.YYYY-MM-DD)",
            ),
            ("<log_dir>/jobs/<job>.log", "each job's output"),
            (
                "$XDG_CACHE_HOME/hedge-scheduler/bridge-<version>-<digest>/",
                "the Python bridge this binary carries, written on first use",
            ),
        ],
    );
    entries(
        "EXIT STATUS",
        &[
            ("0", "success"),
            ("1", "failure: a failed run, an unusable environment"),
            ("2", "bad input: config, arguments, unknown job"),
            ("3", "no daemon runs (status, stop, the control commands)"),
            ("4", "the job already runs elsewhere (run-once)"),
        ],
    );
    entries(
        "ENVIRONMENT",
        &[
            (
                "HEDGE_SCHEDULER_CONFIG",
                "the config file, when --config is not given",
            ),
            ("HEDGE_LOG", "the log level or filter (debug, info, warn)"),
            (
                "NO_COLOR",
                "no colour in the console (unless --color always)",
            ),
        ],
    );
    roff.to_writer(out)?;
    man.render_version_section(out)?;
    Ok(())
}

/// Prepares the containment of runs (`scheduler.containment`).
fn contain_runs(config: &Config) -> Result<&'static contain::Mode> {
    contain::init(config.scheduler.containment).map_err(|why| {
        Error::Config(error::ConfigError::new(
            &config.file,
            format!("`scheduler.containment` = \"cgroup\" is not possible here: {why}"),
        ))
    })
}

/// `log_dir` must exist (it is created, 0700) and be writable, before anything starts; what
/// the scheduler keeps there is made private.
fn check_log_dir(config: &Config) -> Result<()> {
    let dir = &config.scheduler.log_dir;
    let probe = dir.join(format!(".write-test.{}", std::process::id()));
    private::create_dir(dir)
        .and_then(|_| private::open(&probe, private::Open::CreateNew))
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| {
            Error::Config(error::ConfigError::new(
                &config.file,
                format!(
                    "`scheduler.log_dir` `{}` is not a writable folder: {e}",
                    dir.display()
                ),
            ))
        })?;
    if let Some(why) = log_dir::unsafe_log_dir(dir) {
        return Err(Error::Config(error::ConfigError::new(
            &config.file,
            format!("`scheduler.log_dir` `{}` is not safe: {why}", dir.display()),
        )));
    }
    let tightened = log_dir::tighten_log_dir(dir, &config.scheduler.history);
    if tightened > 0 {
        eprintln!(
            "note: made {} in `{}` private (others could read them)",
            if tightened == 1 {
                "1 file or folder".to_string()
            } else {
                format!("{tightened} files and folders")
            },
            dir.display()
        );
    }
    Ok(())
}

/// The old system's scripts at start: refuse (default), warn, or stop them.
fn legacy_at_start(config: &Config) -> Result<()> {
    let (found, others) = legacy::split(legacy::find(&config.scheduler.legacy_scripts));
    if !others.is_empty() {
        tracing::warn!(
            "⚠️  processes of other users are named like the old system's scripts: {}; not ours, so never refused nor stopped",
            legacy::list(&others)
        );
    }
    if found.is_empty() {
        return Ok(());
    }
    let list = legacy::list(&found);
    match config.scheduler.legacy {
        config::Legacy::Refuse => Err(Error::Other(format!(
            "the old system is running ({list}): both would collect the same data; stop it, or set `scheduler.legacy` to \"stop\" or \"warn\""
        ))),
        config::Legacy::Warn => {
            tracing::warn!("⚠️  the old system is running: {list}");
            Ok(())
        }
        config::Legacy::Stop => {
            tracing::warn!("🧹 stopping the old system's processes: {list}");
            runtime()?.block_on(legacy::stop(&found, config.scheduler.kill_grace));
            Ok(())
        }
    }
}

/// `stop`: SIGTERM to the daemon, then wait until it has exited.
/// When the config does not load: the log folder it names (read leniently), said on stderr with
/// the config's error; the error itself when not even that can be read.
fn fallback_log_dir(
    found: Option<&config::locate::Located>,
    e: Error,
) -> Result<std::path::PathBuf> {
    let Some(log_dir) = found.and_then(|at| config::locate::log_dir_only(&at.path)) else {
        return Err(e);
    };
    eprintln!("warning: the config does not load: {e}");
    eprintln!(
        "warning: using the log folder it names, `{}`, to reach the daemon",
        log_dir.display()
    );
    Ok(log_dir)
}

/// `status` when the config does not load: whether the daemon of the log folder it names runs.
fn status_without_config(
    found: Option<&config::locate::Located>,
    e: Error,
    json: bool,
) -> Result<i32> {
    let log_dir = fallback_log_dir(found, e)?;
    let daemon = instance::probe(&log_dir);
    if json {
        let doc = serde_json::json!({
            "daemon": {
                "running": daemon.is_some(),
                "pid": daemon.as_ref().map(|d| d.pid),
                "started_at": daemon.as_ref().and_then(|d| d.started_at).map(|t| t.to_rfc3339()),
            },
            "log_dir": log_dir,
            "config_error": true,
        });
        println!("{}", to_json(&doc)?);
    } else {
        match &daemon {
            Some(d) => println!(
                "🟢 hedge-scheduler is running (PID {}{}), on the config it read before this one broke",
                d.pid,
                d.started_at
                    .map(|t| format!(", since {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                    .unwrap_or_default()
            ),
            None => println!("🔴 hedge-scheduler is not running"),
        }
        println!(
            "   log folder {}  ·  fix the config, then `{} reload`",
            log_dir.display(),
            me()
        );
    }
    Ok(if daemon.is_some() {
        0
    } else {
        EXIT_NOT_RUNNING
    })
}

fn stop(log_dir: &std::path::Path, graces: std::time::Duration) -> Result<i32> {
    let Some(daemon) = instance::probe(log_dir) else {
        println!("hedge-scheduler is not running");
        return Ok(EXIT_NOT_RUNNING);
    };
    // Never a signal to a process we cannot prove is this folder's daemon.
    instance::verify(log_dir, &daemon).map_err(|why| {
        Error::Other(format!(
            "refusing to stop: {why} (PID file `{}`)",
            log_dir.join(instance::PID_FILE).display()
        ))
    })?;
    let pid = nix::unistd::Pid::from_raw(
        i32::try_from(daemon.pid).map_err(|_| Error::Other("bad PID in the PID file".into()))?,
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| Error::Other(format!("cannot signal PID {pid}: {e}")))?;
    // A daemon someone stopped (SIGSTOP, Ctrl+Z) cannot act on SIGTERM until it continues.
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    println!("🛑 stopping hedge-scheduler (PID {pid})…");
    let limit = graces + std::time::Duration::from_secs(15);
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if instance::probe(log_dir).is_none() {
            println!("✅ hedge-scheduler stopped");
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(Error::Other(format!(
        "hedge-scheduler (PID {pid}) has not exited after {}",
        fmt::duration(limit)
    )))
}

/// Writes a listing over a range to stdout, after a note on stderr when the range runs past the
/// calendar's holiday data.
fn listing(
    calendar: &calendar::Calendar,
    range: plan::Range,
    write: impl FnOnce(&mut std::io::BufWriter<std::io::StdoutLock<'static>>) -> std::io::Result<()>,
) -> Result<i32> {
    if let Some(note) = plan::coverage_note(calendar, range) {
        eprintln!("{note}");
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // A closed pipe (`| head`) is a normal way for a listing to end.
    match write(&mut out).and_then(|_| out.flush()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(Error::io("cannot write the output", e)),
    }
}

/// With `strict_calendar`, a calendar whose data has already run out would fire nothing: refuse.
fn refuse_strict_past_coverage(config: &Config) -> Result<()> {
    let calendar = config.calendar();
    let today = Utc::now().with_timezone(&calendar.tz()).date_naive();
    match calendar.known_until() {
        Some(known) if calendar.strict() && today > known => {
            Err(Error::Config(error::ConfigError::new(
                &config.file,
                format!(
                    "`scheduler.strict_calendar` is set and {} holidays are known only up to {known}: no slot would fire (add {} to {})",
                    calendar.exchange().code(),
                    known.year() + 1,
                    calendar.data_file().display()
                ),
            )))
        }
        _ => Ok(()),
    }
}

/// Today's warnings about the config: calendar coverage.
pub fn config_warnings(config: &Config, now: chrono::DateTime<Utc>) -> Vec<String> {
    let calendar = config.calendar();
    let today = now.with_timezone(&calendar.tz()).date_naive();
    // The holiday data's end matters only to jobs that fire by the calendar.
    let mut warnings: Vec<String> = calendar
        .coverage_warning(today)
        .filter(|_| config.uses_calendar())
        .into_iter()
        .collect();
    for job in config.jobs.iter().filter(|j| j.enabled) {
        if job.trigger.next_fire_after(&calendar, now).is_none() {
            warnings.push(format!(
                "[jobs.{}] never fires: its schedule has no instant ahead{}",
                job.id,
                if job.trigger.market_hours {
                    " inside market hours"
                } else {
                    ""
                }
            ));
        }
    }
    warnings
}

/// Cluster mode: jobs whose `args` name a local SQLite file. After a failover, one session's
/// data would be split across the hosts' files: a shared store, written idempotently by slot,
/// keeps it whole (see the README's "Cluster" section).
fn cluster_data_warnings(config: &Config) -> Vec<String> {
    let Some(cluster) = &config.cluster else {
        return Vec::new();
    };
    fn local_files(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s)
                if [".sqlite", ".sqlite3", ".db", ".duckdb"]
                    .iter()
                    .any(|ext| s.ends_with(ext)) =>
            {
                out.push(s.clone())
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| local_files(v, out)),
            serde_json::Value::Object(o) => o.values().for_each(|v| local_files(v, out)),
            _ => {}
        }
    }
    let mut warnings = Vec::new();
    for job in &config.jobs {
        let mut files = Vec::new();
        local_files(&job.args, &mut files);
        for f in files {
            warnings.push(format!(
                "[jobs.{}] writes `{f}`, a file on the host that runs the slot (node {} here): after a failover one session's data is split across hosts; prefer a shared store written idempotently by (symbol, ctx.scheduled_at) with ctx.fence",
                job.id, cluster.node
            ));
        }
    }
    warnings
}

/// Sends a control request to the running daemon: 0 done, 1 refused, 3 no daemon.
fn control_command(config: &Config, req: control::Request) -> Result<i32> {
    if !matches!(req, control::Request::Reload) && config.job(req.job()).is_none() {
        return Err(Error::UnknownJob {
            job: req.job().to_string(),
            known: config.job_list(),
        });
    }
    match control::send(&config.scheduler.log_dir, &req) {
        Ok(reply) if reply.ok => {
            println!("{}", reply.message);
            Ok(0)
        }
        Ok(reply) => {
            eprintln!("error: {}", reply.message);
            Ok(1)
        }
        Err(control::SendError::NotRunning)
            if let Some(d) = instance::probe(&config.scheduler.log_dir) =>
        {
            eprintln!(
                "error: hedge-scheduler runs (PID {}) but its control socket `{}` is missing or not a socket: it is made again at the daemon's next health check (a file in its place must be removed); `status` says more",
                d.pid,
                config.scheduler.log_dir.join(control::SOCKET).display()
            );
            Ok(1)
        }
        Err(control::SendError::NotRunning) => {
            eprintln!(
                "hedge-scheduler is not running (no daemon listens in {}): start it with `{} run`",
                config.scheduler.log_dir.display(),
                me()
            );
            Ok(EXIT_NOT_RUNNING)
        }
        Err(control::SendError::Other(e)) => Err(Error::Other(e)),
    }
}

/// `pause --until`: a date (its start), a local date and time, or `@close`.
fn pause_until(
    config: &Config,
    text: &str,
    now: chrono::DateTime<Utc>,
) -> Result<chrono::DateTime<Utc>> {
    use chrono::TimeZone;
    let calendar = config.calendar();
    let tz = calendar.tz();
    let local = |t: chrono::NaiveDateTime| {
        tz.from_local_datetime(&t)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    };
    let found = if text.trim() == "@close" {
        let today = now.with_timezone(&tz).date_naive();
        today
            .iter_days()
            .take(30)
            .filter_map(|d| calendar.session(d))
            .filter_map(|s| local(s.date.and_time(s.close)))
            .find(|close| *close > now)
    } else if let Ok(d) = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        local(d.and_time(chrono::NaiveTime::MIN))
    } else if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%dT%H:%M") {
        local(t)
    } else {
        return Err(Error::Usage(format!(
            "invalid `--until` `{text}` (expected YYYY-MM-DD, YYYY-MM-DDTHH:MM in exchange time, or @close)"
        )));
    };
    match found {
        Some(t) if t > now => Ok(t),
        Some(_) => Err(Error::Usage(format!("`--until` `{text}` is in the past"))),
        None => Err(Error::Usage(
            "`--until @close`: no session in the next 30 days".to_string(),
        )),
    }
}

/// The range of `backfill` as instants, and its past slots without a successful run in the
/// history. A range in the future, older than the history keeps, or of more than
/// `MAX_BACKFILL` slots is refused.
fn backfill_slots(
    config: &Config,
    job_id: &str,
    range: plan::Range,
    now: chrono::DateTime<Utc>,
) -> Result<(control::Span, Vec<chrono::DateTime<Utc>>)> {
    use chrono::TimeZone;
    let Some(job) = config.job(job_id) else {
        return Err(Error::UnknownJob {
            job: job_id.to_string(),
            known: config.job_list(),
        });
    };
    let calendar = config.calendar();
    let tz = calendar.tz();
    let today = now.with_timezone(&tz).date_naive();
    if range.from > today {
        return Err(Error::Usage(format!(
            "`--from` {} is in the future: backfill runs past slots (today is {today})",
            range.from
        )));
    }
    let kept = chrono::Duration::from_std(config.scheduler.history_retention)
        .unwrap_or(chrono::Duration::days(90));
    let oldest = (now - kept).with_timezone(&tz).date_naive();
    if range.from < oldest {
        return Err(Error::Usage(format!(
            "`--from` {} is older than the history keeps (`history_retention`: from {oldest} on): whether those slots ran is no longer known",
            range.from
        )));
    }
    let start = |d: chrono::NaiveDate| {
        tz.from_local_datetime(&d.and_time(chrono::NaiveTime::MIN))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(now)
    };
    let span = control::Span {
        from: start(range.from),
        to: start(range.to.succ_opt().unwrap_or(range.to)).min(now),
    };
    let history = History::open_read_only(&config.scheduler.history)?;
    let slots = control::missing_slots(job, &calendar, history.as_ref(), span, now)?;
    if slots.len() > control::MAX_BACKFILL {
        return Err(Error::Usage(format!(
            "{} slots of `{job_id}` to backfill: at most {} at a time; split the range",
            slots.len(),
            control::MAX_BACKFILL
        )));
    }
    Ok((span, slots))
}

/// `logs`: a job's lines, one run's, or followed live.
fn logs_command(
    config: &Config,
    job: &str,
    run: Option<i64>,
    last: bool,
    limit: Option<usize>,
    follow: bool,
    json: bool,
) -> Result<i32> {
    if config.job(job).is_none() {
        return Err(Error::UnknownJob {
            job: job.to_string(),
            known: config.job_list(),
        });
    }
    let history = History::open_read_only(&config.scheduler.history)?;
    let run = match (run, last) {
        (Some(id), _) => {
            match history
                .as_ref()
                .map(|h| h.run_by_id(id))
                .transpose()?
                .flatten()
            {
                Some(row) if row.job != job => {
                    return Err(Error::Usage(format!(
                        "run {id} is a run of `{}`, not of `{job}`",
                        row.job
                    )));
                }
                Some(_) => {}
                // Not in the history (pruned, or never): its lines may still be in the logs.
                None if logs::lines(&config.job_log_dir(), job, Some(id), Some(1)).is_empty() => {
                    return Err(Error::Usage(format!(
                        "no run {id} of `{job}` in the history or its logs (`history {job}` lists its runs)"
                    )));
                }
                None => {}
            }
            Some(id)
        }
        (None, true) => match history
            .as_ref()
            .map(|h| h.last_run(job))
            .transpose()?
            .flatten()
        {
            Some(row) => Some(row.id),
            None => {
                eprintln!("{job} has no run yet");
                return Ok(1);
            }
        },
        (None, false) => None,
    };
    drop(history);
    let limit = limit.or(if run.is_some() { None } else { Some(50) });
    let dir = config.job_log_dir();
    let (lines, end) = logs::snapshot(&dir, job, run, limit);
    let mut out = std::io::stdout().lock();
    let print = |out: &mut std::io::StdoutLock, l: &logs::Line| -> bool {
        let text = if json {
            serde_json::to_string(l).unwrap_or_default()
        } else {
            l.render()
        };
        writeln!(out, "{text}").and_then(|_| out.flush()).is_ok()
    };
    for l in &lines {
        if !print(&mut out, l) {
            return Ok(0);
        }
    }
    if !follow {
        return Ok(0);
    }
    // A run is followed until it has ended and its last lines are read.
    let history_path = config.scheduler.history.clone();
    let mut ended_seen: Option<std::time::Instant> = None;
    let mut last_check = std::time::Instant::now();
    logs::follow(
        &dir,
        job,
        end,
        |l| run.is_some_and(|r| l.run_id != r) || print(&mut out, &l),
        || {
            let Some(id) = run else { return true };
            if let Some(at) = ended_seen {
                return at.elapsed() < std::time::Duration::from_millis(500);
            }
            if last_check.elapsed() >= std::time::Duration::from_millis(300) {
                last_check = std::time::Instant::now();
                let running = History::open_read_only(&history_path)
                    .ok()
                    .flatten()
                    .and_then(|h| h.run_by_id(id).ok().flatten())
                    .is_none_or(|row| row.outcome == Outcome::Running);
                if !running {
                    ended_seen = Some(std::time::Instant::now());
                }
            }
            true
        },
    );
    Ok(0)
}

fn run_once(config: Config, job_id: &str, json: bool, wait: bool) -> Result<i32> {
    let Some(job) = config.job(job_id).cloned() else {
        return Err(Error::UnknownJob {
            job: job_id.to_string(),
            known: config.job_list(),
        });
    };
    let interpreter = interpreter::resolve(&config, Some(&[job_id]))?;
    contain_runs(&config)?;
    check_log_dir(&config)?;
    let forks = Arc::new(runner::ForkPool::default());
    {
        // Only this job's needs.
        let mut only = config.clone();
        only.jobs.retain(|j| j.id == job_id);
        ready_python(&only, &interpreter, &forks, false)?;
    }
    // A single run reserves no ids ahead: the next process goes on right after it.
    let recorder = history::Recorder::open(&config.scheduler.history, 0)?;
    let env = runner::RunEnv::new(
        Arc::new(config),
        interpreter.path,
        recorder.clone(),
        Arc::clone(&forks),
    );
    let rt = runtime()?;
    // Cluster mode: the job must run nowhere else in the cluster meanwhile.
    let manual = match &env.config.cluster {
        Some(_) => Some(rt.block_on(cluster::manual::claim(&env.config, job_id, wait))?),
        None => None,
    };
    let report = rt.block_on(async {
        let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(None);
        let req = runner::RunRequest {
            job: Arc::new(job),
            trigger: TriggerKind::Manual,
            scheduled_at: manual.as_ref().map_or_else(Utc::now, |m| m.slot),
            attempt: 1,
            not_before: None,
            tag: manual.as_ref().map(|m| m.tag.clone()),
        };
        let on_busy = if wait {
            runner::OnBusy::Wait
        } else {
            runner::OnBusy::Refuse
        };
        let run = runner::run(&env, req, cancel_rx, None, on_busy);
        tokio::pin!(run);
        // Whatever stops us, the job's process group goes first and the row says why.
        let stop_signal = async {
            use tokio::signal::unix::{SignalKind, signal};
            let kinds = [
                (SignalKind::interrupt(), "SIGINT"),
                (SignalKind::terminate(), "SIGTERM"),
                (SignalKind::hangup(), "SIGHUP"),
            ];
            let mut streams = Vec::new();
            for (kind, name) in kinds {
                if let Ok(s) = signal(kind) {
                    streams.push((s, name));
                }
            }
            let waits = streams.iter_mut().map(|(s, name)| {
                Box::pin(async move {
                    s.recv().await;
                    *name
                })
            });
            futures_select_first(waits.collect()).await
        };
        // Cluster mode: another node's slot may replace this run (its overlap `replace`).
        let replaced = async {
            match manual.as_ref().map(|m| m.cancel.clone()) {
                Some(mut rx) => loop {
                    if let Some(why) = rx.borrow_and_update().clone() {
                        return why;
                    }
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            report = &mut run => report,
            name = stop_signal => {
                let _ = cancel_tx.send(Some(format!("run-once interrupted ({name})")));
                run.await
            }
            why = replaced => {
                let _ = cancel_tx.send(Some(why));
                run.await
            }
        }
    });
    if let Some(manual) = manual {
        recorder.flush(std::time::Duration::from_secs(2));
        rt.block_on(manual.finish(&env.config.scheduler.history, report.run_uid.as_deref()));
    }
    // A stuck embedded thread must not keep the process alive.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    let unwritten = recorder.close(std::time::Duration::from_secs(10));
    if unwritten > 0 {
        eprintln!(
            "warning: the history `{}` refused {} ({}); {}",
            env.config.scheduler.history.display(),
            crate::fmt::n(unwritten, "write"),
            recorder.health().problem.map(|p| p.1).unwrap_or_default(),
            match recorder.spill_path() {
                Some(p) => format!(
                    "they are kept in `{}` and written by the next process to open the history",
                    p.display()
                ),
                None => "this run is not recorded".to_string(),
            }
        );
    }
    if let Some(holder) = &report.busy {
        return Err(Error::Busy(format!(
            "`{job_id}` is already running: {holder} (use --wait to wait for it)"
        )));
    }
    if json {
        // Found by the run's own identity: its id may have changed if another process took it.
        let row = match &report.run_uid {
            Some(uid) => History::open_read_only(&env.config.scheduler.history)
                .ok()
                .flatten()
                .and_then(|h| h.run_by_uid(uid).ok().flatten()),
            None => None,
        };
        match row {
            Some(row) => println!("{}", to_json(&row)?),
            None => println!(
                "{}",
                serde_json::json!({"job": job_id, "outcome": report.outcome.as_str(), "error": report.error})
            ),
        }
    } else {
        let took = fmt::duration(report.duration());
        let run = report
            .run_id
            .map_or_else(String::new, |id| format!(" (run {id})"));
        match report.outcome {
            Outcome::Success => {
                println!("✅ {job_id} succeeded in {took}{run}");
                if let Some(result) = report.result.as_deref().filter(|r| *r != "null") {
                    println!("   result: {result}");
                }
            }
            other => {
                println!(
                    "❌ {job_id} {} after {took}{run}: {}",
                    other.as_str(),
                    report.error.as_deref().unwrap_or("no detail")
                );
                if let Some(id) = report.run_id {
                    println!(
                        "   its output and traceback: `{} logs {job_id} --run {id}` (in {})",
                        me(),
                        env.config
                            .job_log_dir()
                            .join(format!("{job_id}.log"))
                            .display()
                    );
                }
            }
        }
    }
    // A run the history could not take is not a clean success: say so by the exit code.
    Ok(if report.outcome == Outcome::Success && unwritten == 0 {
        0
    } else {
        1
    })
}

/// The first of several futures to finish (all of the same output).
async fn futures_select_first<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> F::Output {
    std::future::poll_fn(move |cx| {
        for f in futures.iter_mut() {
            if let std::task::Poll::Ready(out) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(out);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// One thread for all the async work (timers, pipes, signals): the work is I/O and hand-offs, and
/// a single thread wakes less and switches less. Python and SQLite run on blocking threads.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", e))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::Other(format!("cannot write JSON: {e}")))
}
