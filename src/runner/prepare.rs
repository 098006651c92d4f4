//! Readying the Python the config's jobs need before their first run: the embedded interpreter
//! for pyo3 jobs, a fork server for fork jobs.

use std::sync::Arc;

use crate::config::{self, Config};
use crate::error::{self, Error, Result};
use crate::interpreter;

/// Readies the Python the config's jobs need before their first run: the embedded interpreter
/// for pyo3 jobs, a fork server for fork jobs (`renew`: a new one even if one runs). A preload
/// that fails or starts a thread is the config's error. Blocking.
pub(crate) fn ready_python(
    config: &Config,
    interpreter: &interpreter::Interpreter,
    forks: &super::ForkPool,
    renew: bool,
) -> Result<()> {
    init_embedded(config, interpreter)?;
    ready_forks(config, &interpreter.path, forks, renew, true)
}

/// `ready_forks` on a thread of its own, saying nothing yet (the daemon's log is not set up).
pub(crate) fn warm_forks(
    config: &Config,
    python: &std::path::Path,
    forks: &Arc<super::ForkPool>,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let (c, p, f) = (config.clone(), python.to_path_buf(), Arc::clone(forks));
    std::thread::Builder::new()
        .name("fork-server-start".into())
        .spawn(move || ready_forks(&c, &p, &f, false, false))
        .map_err(|e| Error::io("cannot start a thread", e))
}

/// Starts the embedded interpreter if a pyo3 job needs it. Blocking.
pub(crate) fn init_embedded(config: &Config, interpreter: &interpreter::Interpreter) -> Result<()> {
    #[cfg(feature = "embedded")]
    if config
        .jobs
        .iter()
        .any(|j| j.executor == config::Executor::Pyo3)
    {
        crate::python::init(config, interpreter)?;
    }
    #[cfg(not(feature = "embedded"))]
    let _ = (config, interpreter);
    Ok(())
}

/// Starts the fork server fork jobs need (`renew`: a new one even if one runs); a preload that
/// fails or starts a thread is the config's error. Blocking.
pub(crate) fn ready_forks(
    config: &Config,
    python: &std::path::Path,
    forks: &super::ForkPool,
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
            super::StartError::Preload(message) => Error::Config(error::ConfigError {
                file: config.file.clone(),
                position: config.python.preload_at,
                message: format!("python.preload: {message}"),
            }),
            super::StartError::Other(message) => Error::ForkServer(message),
        })?;
    }
    Ok(())
}
