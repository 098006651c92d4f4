//! The front hall: one file per command word. Each takes the `Invocation` (where the config
//! is, and how to load it) and its own arguments, and returns the exit code.

pub(crate) mod check_config;
pub(crate) mod context;
pub(crate) mod control;
pub(crate) mod daemon;
pub(crate) mod listing;
pub(crate) mod logs;
pub(crate) mod man;
pub(crate) mod run_once;
pub(crate) mod status;
pub(crate) mod stop;

use crate::config::{self, Config};
use crate::error::{Error, Result};

/// What every command starts from: the config file given (`--config`), and the one found.
pub(crate) struct Invocation {
    pub(crate) flag: Option<std::path::PathBuf>,
    pub(crate) found: Option<config::locate::Located>,
}

impl Invocation {
    /// The config: located (flag, environment, the usual places) and loaded.
    pub(crate) fn load(&self) -> Result<Config> {
        let at = config::locate::locate(self.flag.as_deref())?;
        Config::load(&at.path).map_err(|mut e| {
            if e.message.starts_with("cannot read config file") {
                e.message = format!("{} ({})", e.message, at.origin());
            }
            Error::Config(e)
        })
    }
}

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

/// One thread for all the async work (timers, pipes, signals): the work is I/O and hand-offs, and
/// a single thread wakes less and switches less. Python and SQLite run on blocking threads.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", e))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map_err(|e| Error::Internal(format!("cannot write JSON: {e}")))
}
