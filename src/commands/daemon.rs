//! `run`: the daemon. Its start-up in order: the keeper first, the config, the bridge, the fork
//! server warming while the interpreter is resolved, the log folder, logging, containment, the old
//! system's scripts, the embedded interpreter; then the loop (`daemon::run`).

use std::sync::Arc;

use chrono::{Datelike, Utc};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::{
    bridge, config, contain, daemon, error, interpreter, legacy, log_dir, logging, private, runner,
};

use super::*;
use crate::runner::prepare::*;

/// `run`.
pub(crate) fn run(inv: &Invocation, allow_config_drift: bool) -> Result<i32> {
    // First, before any thread, lock or sizeable allocation (the keeper is a forked copy
    // of us: what we hold now, it holds): the runs die with us, however we die.
    contain::start_keeper().map_err(|e| Error::io("cannot start the keeper", e))?;
    let config = inv.load()?;
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

/// Prepares the containment of runs (`scheduler.containment`).
pub(super) fn contain_runs(config: &Config) -> Result<&'static contain::Mode> {
    contain::init(config.scheduler.containment).map_err(|why| {
        Error::Config(error::ConfigError::new(
            &config.file,
            format!("`scheduler.containment` = \"cgroup\" is not possible here: {why}"),
        ))
    })
}

/// `log_dir` must exist (it is created, 0700) and be writable, before anything starts; what
/// the scheduler keeps there is made private.
pub(super) fn check_log_dir(config: &Config) -> Result<()> {
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
        config::Legacy::Refuse => Err(Error::LegacyRunning(format!(
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
