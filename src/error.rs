//! The one error type of hedge-scheduler and its exit codes.
//!
//! A job that fails is not an `Error`: it is a recorded outcome (see `runner`). An `Error` is
//! something that stops a command: bad input from the user (exit 2), or the environment refusing
//! what the command needs (exit 1).

use std::path::{Path, PathBuf};

/// Exit code for bad input: a bad config, an unknown job, bad arguments.
pub const EXIT_USAGE: i32 = 2;
/// Exit code of `status` when no daemon runs (the LSB convention).
pub const EXIT_NOT_RUNNING: i32 = 3;
/// Exit code of `run-once` when the job is already running elsewhere.
pub const EXIT_BUSY: i32 = 4;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem in a config (or calendar) file, located as precisely as we can.
    #[error("{0}")]
    Config(#[from] ConfigError),

    #[error("unknown job `{job}` (configured jobs: {known})")]
    UnknownJob { job: String, known: String },

    #[error("{0}")]
    Usage(String),

    #[error("history database `{path}`: {source}")]
    History {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "hedge-scheduler is already running (PID {pid}, since {since}); stop it with `{} stop`",
        crate::cli::invocation()
    )]
    AlreadyRunning { pid: i64, since: String },

    #[error("{0}")]
    Busy(String),

    /// The running daemon cannot be reached, proven ours, or stopped.
    #[error("{0}")]
    Daemon(String),

    /// The cluster's database or membership refuses what the command needs.
    #[error("{0}")]
    Cluster(String),

    /// The fork server could not be started (other than by its preloads: a config error).
    #[error("{0}")]
    ForkServer(String),

    /// The embedded interpreter could not be prepared.
    #[error("{0}")]
    Embedded(String),

    /// Something the scheduler keeps could not be written (its log, the bridge, history rows).
    #[error("{0}")]
    Unwritable(String),

    /// The old system's scripts run, and the config says to refuse.
    #[error("{0}")]
    LegacyRunning(String),

    /// A wait was given up (a signal, a cancel).
    #[error("{0}")]
    Interrupted(String),

    /// A bug of ours (a task that panicked, a poisoned lock): never the user's doing.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The process exit code this error maps to.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::UnknownJob { .. } | Error::Usage(_) => EXIT_USAGE,
            Error::Busy(_) => EXIT_BUSY,
            Error::History { .. }
            | Error::Io { .. }
            | Error::AlreadyRunning { .. }
            | Error::Daemon(_)
            | Error::Cluster(_)
            | Error::ForkServer(_)
            | Error::Embedded(_)
            | Error::Unwritable(_)
            | Error::LegacyRunning(_)
            | Error::Interrupted(_)
            | Error::Internal(_) => 1,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn history(path: &Path, source: rusqlite::Error) -> Self {
        Error::History {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An error in a file the user wrote, printed as `file:line:col: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the error can be placed.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            position: None,
            message: message.into(),
        }
    }

    /// Places the error at byte offset `offset` of `source`.
    pub fn at(file: &Path, source: &str, offset: usize, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            position: Some(line_col(source, offset)),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// 1-based line and column (in characters) of byte `offset` in `source`.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 9), (2, 4));
        assert_eq!(line_col(src, 999), (3, 1));
    }

    #[test]
    fn config_error_reads_as_file_line_col() {
        let e = ConfigError::at(Path::new("c.toml"), "x\ny = 2", 2, "unknown key `y`");
        assert_eq!(e.to_string(), "c.toml:2:1: unknown key `y`");
    }
}
