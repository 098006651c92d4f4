//! hedge-scheduler: runs the Python jobs of a trading research system on market-hours-aware cron
//! triggers, with timeouts, overlap prevention and a SQLite history.
//!
//! `main.rs` parses the command line and calls [`run`]; everything else lives here so tests can
//! drive it in-process too.

pub(crate) mod bridge;
pub mod calendar;
pub mod cli;
pub(crate) mod cluster;
pub(crate) mod commands;
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
pub(crate) mod render;
pub(crate) mod runner;
pub(crate) mod status;
pub mod trigger;
pub(crate) mod web;

use crate::cli::{Cli, Command};
use crate::commands::Invocation;
use crate::error::Result;

pub use contain::{KEEPER_ARG, keeper_from_stdin};

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
        cli::set_invocation(&at.path);
    }
    let inv = Invocation {
        flag: cli.config,
        found,
    };
    match cli.command {
        Command::Run { allow_config_drift } => commands::daemon::run(&inv, allow_config_drift),
        Command::RunOnce { job, json, wait } => commands::run_once::command(&inv, job, json, wait),
        Command::Status { json } => commands::status::status(&inv, json),
        Command::History {
            job,
            limit,
            node,
            json,
        } => commands::status::history(&inv, job, limit, node, json),
        Command::Stop => commands::stop::command(&inv),
        Command::CheckConfig { json } => commands::check_config::command(&inv, json),
        Command::Logs {
            job,
            run,
            last,
            lines,
            follow,
            json,
        } => commands::logs::command(&inv, job, run, last, lines, follow, json),
        Command::Pause { job, until } => commands::control::pause(&inv, job, until),
        Command::Reload => commands::control::reload(&inv),
        Command::Resume { job } => commands::control::resume(&inv, job),
        Command::Trigger { job } => commands::control::trigger(&inv, job),
        Command::Backfill { job, from, to } => commands::control::backfill(&inv, job, from, to),
        Command::Context {
            job,
            entry,
            at,
            args,
            exchange,
        } => commands::context::command(&inv, job, entry, at, args, exchange),
        Command::Completions { shell } => commands::man::completions(shell),
        Command::Man => commands::man::man(),
        Command::Calendar {
            exchange,
            from,
            to,
            json,
        } => commands::listing::calendar(&inv, exchange, from, to, json),
        Command::Plan {
            job,
            from,
            to,
            json,
        } => commands::listing::plan(&inv, job, from, to, json),
    }
}
