//! The `hedge-scheduler` binary: parse the command line, run, print the error, exit with its code.

use clap::Parser;

fn main() {
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
