//! The `hedge-scheduler` binary: parse the command line, run, print the error, exit with its code.

use clap::Parser;

fn main() {
    // A keeper started again by a daemon whose first keeper died (see `contain`): not a command.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == hedge_scheduler::KEEPER_ARG)
    {
        hedge_scheduler::keeper_from_stdin();
    }
    let cli = hedge_scheduler::cli::Cli::parse();
    let code = match hedge_scheduler::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
