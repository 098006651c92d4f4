//! `check-config`: the config, its Python, its entry points and its preloads, checked as the
//! daemon would at start, and what it means.

use chrono::Utc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::{bridge, config, interpreter, logging, runner, status};

use super::*;
use crate::runner::prepare::*;

/// `check-config`.
pub(crate) fn command(inv: &Invocation, json: bool) -> Result<i32> {
    logging::init_cli("warn");
    let checked = (|| -> Result<(Config, interpreter::Interpreter)> {
        let config = inv.load()?;
        bridge::ensure(&config.scheduler.log_dir)?;
        let interpreter = interpreter::resolve(&config, None)?;
        interpreter::check_entries(&config, &interpreter)?;
        // pyo3 jobs: the embedded Python must be the interpreter's version.
        init_embedded(&config, &interpreter)?;
        // The preloads are imported as the daemon would: one that starts a thread is
        // refused.
        let forks = runner::ForkPool::default();
        let started = ready_forks(&config, &interpreter.path, &forks, false, true);
        forks.shutdown();
        started?;
        Ok((config, interpreter))
    })();
    let (config, interpreter) = match (checked, json) {
        (Ok(c), _) => c,
        (Err(e), false) => return Err(e),
        (Err(e), true) => {
            let (file, position) = match &e {
                Error::Config(c) => (Some(c.file.clone()), c.position),
                _ => (None, None),
            };
            let doc = serde_json::json!({
                "valid": false,
                "error": e.to_string(),
                "file": file,
                "line": position.map(|p| p.0),
                "column": position.map(|p| p.1),
            });
            println!("{}", to_json(&doc)?);
            return Ok(e.exit_code());
        }
    };
    let forks = config
        .jobs
        .iter()
        .any(|j| j.executor == config::Executor::Fork);
    let mut warnings = config.warnings(Utc::now());
    warnings.extend(config.cluster_data_warnings());
    if json {
        println!(
            "{}",
            to_json(&status::config_json(
                &config,
                &interpreter,
                Utc::now(),
                warnings
            ))?
        );
        return Ok(0);
    }
    let python = format!(
        "{} (Python {})",
        interpreter.path.display(),
        interpreter.version
    );
    print!(
        "{}",
        crate::render::render_config(&config, &python, Utc::now())
    );
    if forks {
        println!(
            "🍴 fork server: started, {} imported, no thread running after them",
            crate::fmt::n(config.python.preload.len(), "preload")
        );
    }
    for w in config.cluster_data_warnings() {
        println!("⚠️  {w}");
    }
    Ok(0)
}
