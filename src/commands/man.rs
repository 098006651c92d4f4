//! `completions` and `man`: generated from the command line's own definition.

use std::io::Write;

use crate::cli::Cli;
use crate::error::{Error, Result};

/// `completions`.
pub(crate) fn completions(shell: clap_complete::Shell) -> Result<i32> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "hedge-scheduler", &mut std::io::stdout());
    Ok(0)
}

/// `man`.
pub(crate) fn man() -> Result<i32> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let mut out = Vec::new();
    man_page(cmd, &mut out).map_err(|e| Error::io("cannot write the manual page", e))?;
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| Error::io("cannot write the manual page", e))?;
    Ok(0)
}

/// The COMMANDS section: each command with its own options, as `--help` gives them.
fn commands_section(cmd: &clap::Command, roff: &mut clap_mangen::roff::Roff) {
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
}

/// The manual page: the command, each subcommand's section, then where things are.
fn man_page(cmd: clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let mut roff = clap_mangen::roff::Roff::new();
    commands_section(&cmd, &mut roff);
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
