//! Tracing set-up: the daemon logs to the console in the old tool's style and to a daily-rotated
//! file in `log_dir`; the short-lived commands only print warnings. `HEDGE_LOG` (an env-filter
//! directive such as `debug`) overrides the level.

use std::io::IsTerminal;
use std::path::Path;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::time::ChronoLocal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::error::{Error, Result};

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("HEDGE_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// For the daemon: console (stdout) plus `log_dir/hedge-scheduler.log.YYYY-MM-DD`.
pub fn init_daemon(log_dir: &Path, keep: usize) -> Result<()> {
    std::fs::create_dir_all(log_dir)
        .map_err(|e| Error::io(format!("cannot create log_dir `{}`", log_dir.display()), e))?;
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix("hedge-scheduler.log")
        .max_log_files(keep)
        .build(log_dir)
        .map_err(|e| {
            Error::Other(format!(
                "cannot write the log in `{}`: {e}",
                log_dir.display()
            ))
        })?;
    // Written in place, not through a logging thread: the daemon logs a few lines a minute, and a
    // thread woken for each would cost more than the write (and its queue, memory at idle).
    let file_writer = appender;
    let time = ChronoLocal::new("%Y-%m-%d %H:%M:%S%.3f".to_string());
    let console = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_timer(time.clone())
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    let file = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(false)
        .with_timer(time)
        .with_writer(file_writer);
    let _ = tracing_subscriber::registry()
        .with(filter("info"))
        .with(console)
        .with(file)
        .try_init();
    Ok(())
}

/// For `run-once` and the reading commands: warnings and errors on stderr.
pub fn init_cli(default: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(default))
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}
