//! The command line (clap derive). Names, flags and exit codes here are a contract.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "hedge-scheduler",
    version,
    about = "Runs market-data Python jobs on market-hours-aware cron triggers, with timeouts, overlap guards and a SQLite history",
    propagate_version = true
)]
pub struct Cli {
    /// The config file [env: HEDGE_SCHEDULER_CONFIG; else the first of
    /// ./config/hedge-scheduler.toml, $XDG_CONFIG_HOME/hedge-scheduler/hedge-scheduler.toml,
    /// /etc/hedge-scheduler/hedge-scheduler.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Colour in the console: auto (a terminal, unless NO_COLOR is set), always or never
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto, value_name = "WHEN")]
    pub color: Color,

    #[command(subcommand)]
    pub command: Command,
}

/// `--color`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Color {
    #[default]
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (stop with Ctrl+C or SIGTERM)
    Run {
        /// Cluster mode: join even though a live node defines a shared job differently (for a
        /// rolling upgrade)
        #[arg(long)]
        allow_config_drift: bool,
    },
    /// Run one job now and print its outcome (exit 0 on success, 1 on failure)
    RunOnce {
        /// The job's id, as in `[jobs.<id>]`
        job: String,
        /// Print the run as JSON
        #[arg(long)]
        json: bool,
        /// If the job is running elsewhere (the daemon), wait for it instead of refusing (exit 4)
        #[arg(long)]
        wait: bool,
    },
    /// Whether the daemon runs, and per job: last run, running now, next fire (exit 3: no daemon)
    Status {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Past runs, newest first
    History {
        /// Only this job's runs
        job: Option<String>,
        /// How many runs to show
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Cluster mode: only this node's runs
        #[arg(long)]
        node: Option<String>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// A job's output: its last lines, one run's, or followed live (across rotated files)
    Logs {
        /// The job's id, as in `[jobs.<id>]`
        job: String,
        /// Only this run's lines (its id, as in `history`)
        #[arg(long, value_name = "ID", conflicts_with = "last")]
        run: Option<i64>,
        /// Only the lines of the job's last run
        #[arg(long)]
        last: bool,
        /// How many lines [default: 50; all of a run's with --run or --last]
        #[arg(short = 'n', long = "lines", value_name = "N")]
        lines: Option<usize>,
        /// Follow the output live (with --run or --last: until the run ends)
        #[arg(short = 'f', long)]
        follow: bool,
        /// One JSON object per line: {"at", "run_id", "stream", "text"}
        #[arg(long)]
        json: bool,
    },
    /// Pause a job in the running daemon: its slots are recorded `skipped` (paused) until
    /// `resume` or the pause's end (kept across restarts; exit 3: no daemon)
    Pause {
        /// The job's id, as in `[jobs.<id>]`
        job: String,
        /// When the pause ends by itself: YYYY-MM-DD (that day's start), YYYY-MM-DDTHH:MM
        /// (exchange time), or @close (the current or next session's close)
        #[arg(long, value_name = "DATE|@close")]
        until: Option<String>,
    },
    /// Resume a paused job: its next slot fires as usual (exit 3: no daemon)
    Resume {
        /// The job's id, as in `[jobs.<id>]`
        job: String,
    },
    /// Have the running daemon read its config again, as SIGHUP does, and start a new fork
    /// server (what changed on disk is imported afresh); waits for the outcome (exit 1: the
    /// config was refused and the old one kept; exit 3: no daemon)
    Reload,
    /// Have the running daemon run a job now (trigger `manual`), under its overlap guard and
    /// containment (exit 3: no daemon)
    Trigger {
        /// The job's id, as in `[jobs.<id>]`
        job: String,
    },
    /// Have the running daemon run each past slot of a date range that has no successful run
    /// (trigger `backfill`, with the slot's own time), one at a time (exit 3: no daemon)
    Backfill {
        /// The job's id, as in `[jobs.<id>]`
        job: String,
        /// First date, YYYY-MM-DD (inclusive, exchange time)
        #[arg(long)]
        from: String,
        /// Last date, YYYY-MM-DD (inclusive, exchange time)
        #[arg(long)]
        to: String,
    },
    /// Stop the running daemon (SIGTERM) and wait for it to exit (exit 3: none running)
    Stop,
    /// Validate the config (and import each job's module, as a run would) and print a summary of
    /// its jobs (exit 2: the config is refused, with the file, line and key)
    CheckConfig {
        /// Print JSON: `valid`, the jobs, the warnings; or `valid: false` and the `error`
        #[arg(long)]
        json: bool,
    },
    /// The sessions of an exchange in a date range (closed days absent)
    Calendar {
        /// XNSE or XNYS [default: the config's exchange]
        #[arg(long)]
        exchange: Option<String>,
        /// First date, YYYY-MM-DD (inclusive) [default: today, in the exchange's zone]
        #[arg(long)]
        from: Option<String>,
        /// Last date, YYYY-MM-DD (inclusive) [default: 7 days after --from]
        #[arg(long)]
        to: Option<String>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Every fire instant of the jobs in a date range, running nothing
    Plan {
        /// Only this job
        #[arg(long)]
        job: Option<String>,
        /// First date, YYYY-MM-DD (inclusive, exchange time) [default: today]
        #[arg(long)]
        from: Option<String>,
        /// Last date, YYYY-MM-DD (inclusive, exchange time) [default: 7 days after --from]
        #[arg(long)]
        to: Option<String>,
        /// Print JSON instead of a listing
        #[arg(long)]
        json: bool,
    },
    /// The run context (JSON) a run scheduled at --at would get: what `hedge_bridge.testing`
    /// runs a job with, outside the daemon
    Context {
        /// A job of the config [default: the config's job with --entry, or none]
        job: Option<String>,
        /// The entry point, `module:function`, when it is not a configured job's
        #[arg(long)]
        entry: Option<String>,
        /// When the run is scheduled: RFC 3339 (`2026-11-30T09:15:00+05:30`), or a time in the
        /// exchange's zone (`2026-11-30T09:15`) [default: now]
        #[arg(long)]
        at: Option<String>,
        /// A JSON object merged over the job's `args`
        #[arg(long)]
        args: Option<String>,
        /// XNSE or XNYS, when no config names one [default: XNSE]
        #[arg(long)]
        exchange: Option<String>,
    },
    /// A shell's completion script, on stdout (bash: `hedge-scheduler completions bash >
    /// ~/.local/share/bash-completion/completions/hedge-scheduler`)
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// The manual page (roff), on stdout: `hedge-scheduler man | man -l -`
    Man,
}

static INVOCATION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Remembers the config file given with `--config`, for the hints that say how to call us again.
pub fn set_invocation(config: &std::path::Path) {
    let _ = INVOCATION.set(format!("hedge-scheduler --config {}", shell_word(config)));
}

/// How to call this program again in a hint: with `--config` when this command was given one.
pub(crate) fn invocation() -> &'static str {
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
