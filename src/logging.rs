//! Tracing set-up: the daemon logs to the console in the old tool's style and to
//! `log_dir/hedge-scheduler.log` (private, never written through a link, rotated daily to
//! `hedge-scheduler.log.YYYY-MM-DD`); the short-lived commands only print warnings. `HEDGE_LOG`
//! (an env-filter directive such as `debug`) overrides the level.

use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{NaiveDate, Utc};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::error::{Error, Result};

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("HEDGE_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// The daemon's log file, by its fixed name (so `tail -F` follows it).
pub const LOG_FILE: &str = crate::log_dir::DAEMON_LOG;

/// The daemon's log: opened private and without following a link, moved to
/// `hedge-scheduler.log.<day>` at the first line of a new UTC day (or reopened if removed), with
/// `keep` files in all. Written in place, not through a logging thread: the daemon logs a few
/// lines a minute, and a thread woken for each would cost more than the write.
struct DailyLog {
    path: PathBuf,
    keep: usize,
    open: Mutex<Option<(NaiveDate, File)>>,
}

impl DailyLog {
    fn new(dir: &Path, keep: usize) -> std::io::Result<DailyLog> {
        let log = DailyLog {
            path: dir.join(LOG_FILE),
            keep,
            open: Mutex::new(None),
        };
        log.file_for(Utc::now().date_naive())?;
        Ok(log)
    }

    /// Makes sure today's file is the open one.
    fn file_for(&self, today: NaiveDate) -> std::io::Result<()> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let current = open.as_ref().is_some_and(|(day, _)| *day == today) && self.path.exists();
        if !current {
            crate::runner::rotate_daily(&self.path, self.keep);
            let file = crate::private::open(&self.path, crate::private::Open::Append)?;
            *open = Some((today, file));
        }
        Ok(())
    }
}

impl std::io::Write for &DailyLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file_for(Utc::now().date_naive())?;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match open.as_mut() {
            Some((_, f)) => f.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for DailyLog {
    type Writer = &'a DailyLog;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Log times in the exchange's zone with its abbreviation, as the fire times are written:
/// `2026-11-30 09:15:00.003 IST`.
#[derive(Clone, Copy)]
struct ExchangeTime(chrono_tz::Tz);

impl tracing_subscriber::fmt::time::FormatTime for ExchangeTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(
            w,
            "{}",
            Utc::now()
                .with_timezone(&self.0)
                .format("%Y-%m-%d %H:%M:%S%.3f %Z")
        )
    }
}

/// `--color` as given: `None` until the command line is read.
static COLOR: std::sync::OnceLock<crate::cli::Color> = std::sync::OnceLock::new();

/// Records `--color` for every writer set up after.
pub fn set_color(choice: crate::cli::Color) {
    let _ = COLOR.set(choice);
}

/// Whether to colour what goes to a stream: `--color always|never`, or (auto) a terminal and no
/// `NO_COLOR` (https://no-color.org: set and not empty).
pub fn color(is_terminal: bool) -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    wants_color(
        COLOR.get().copied().unwrap_or_default(),
        is_terminal,
        no_color,
    )
}

/// The decision of [`color`], pure.
pub fn wants_color(choice: crate::cli::Color, is_terminal: bool, no_color: bool) -> bool {
    match choice {
        crate::cli::Color::Always => true,
        crate::cli::Color::Never => false,
        crate::cli::Color::Auto => is_terminal && !no_color,
    }
}

/// For the daemon: console (stdout) plus `log_dir/hedge-scheduler.log`, times in `tz`.
pub fn init_daemon(log_dir: &Path, keep: usize, tz: chrono_tz::Tz) -> Result<()> {
    crate::private::create_dir(log_dir)
        .map_err(|e| Error::io(format!("cannot create log_dir `{}`", log_dir.display()), e))?;
    let file_writer = DailyLog::new(log_dir, keep).map_err(|e| {
        Error::Unwritable(format!(
            "cannot write the log in `{}`: {e}",
            log_dir.display()
        ))
    })?;
    let time = ExchangeTime(tz);
    let console = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_timer(time)
        .with_ansi(color(std::io::stdout().is_terminal()))
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
        .with_ansi(color(std::io::stderr().is_terminal()))
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Color;

    #[test]
    fn colour_follows_the_flag_then_no_color_then_the_terminal() {
        let table = [
            (Color::Auto, true, false, true),
            (Color::Auto, true, true, false),
            (Color::Auto, false, false, false),
            (Color::Always, false, true, true),
            (Color::Never, true, false, false),
        ];
        for (choice, tty, no_color, want) in table {
            assert_eq!(
                wants_color(choice, tty, no_color),
                want,
                "{choice:?} tty={tty} NO_COLOR={no_color}"
            );
        }
    }
}
