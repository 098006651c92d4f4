//! The embedded interpreter (pyo3 executor): the only user of pyo3.
//!
//! One interpreter for the process's life, initialised on first use without Python's signal
//! handlers (the daemon owns SIGINT/SIGTERM). Each run calls `hedge_bridge.embedded.run_json` on a
//! blocking thread; the GIL is held only while Python runs, never on an async worker. A run is
//! interrupted by raising an exception inside its thread; a thread stuck in C code cannot be, and
//! keeps its job's slot until it returns.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::config::Config;
use crate::error::{ConfigError, Error, Result};
use crate::interpreter::Interpreter;

/// The embedded interpreter's version, once initialised.
static EMBEDDED: OnceLock<std::result::Result<String, String>> = OnceLock::new();

/// Starts the embedded interpreter (once) with the config's path, venv and working directory.
pub fn init(config: &Config, interpreter: &Interpreter) -> Result<()> {
    let outcome = EMBEDDED.get_or_init(|| {
        Python::initialize();
        Python::attach(|py| setup(py, config, interpreter)).map_err(|e| {
            Python::attach(|py| format!("cannot prepare the embedded Python: {}", describe(py, &e)))
        })
    });
    let embedded = outcome.clone().map_err(Error::Other)?;
    let minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    if minor(&embedded) != minor(&interpreter.version) {
        return Err(Error::Config(ConfigError {
            file: config.file.clone(),
            position: config.python.executable_at,
            message: format!(
                "pyo3 jobs run on the embedded Python {}, but `python.{}` is Python {}: their packages would not match (use a venv of Python {}, or executor = \"subprocess\")",
                minor(&embedded),
                if config.python.venv.is_some() {
                    "venv"
                } else {
                    "executable"
                },
                minor(&interpreter.version),
                minor(&embedded)
            ),
        }));
    }
    Ok(())
}

fn setup(py: Python<'_>, config: &Config, interpreter: &Interpreter) -> PyResult<String> {
    let sys = py.import("sys")?;
    let path = sys.getattr("path")?.cast_into::<PyList>()?;
    for p in config.python.path.iter().rev() {
        path.insert(0, p.display().to_string())?;
    }
    if config.python.venv.is_some() {
        let site = py.import("site")?;
        for dir in &interpreter.site_packages {
            site.call_method1("addsitedir", (dir.display().to_string(),))?;
        }
    }
    // Jobs that start a Python subprocess use sys.executable: the real interpreter, not us.
    sys.setattr("executable", interpreter.path.display().to_string())?;
    sys.setattr("argv", vec!["hedge-scheduler"])?;
    py.import("os")?
        .call_method1("chdir", (config.python.cwd.display().to_string(),))?;
    py.import("hedge_bridge.embedded")?;
    let info = sys.getattr("version_info")?;
    let part = |i: usize| -> PyResult<u32> { info.get_item(i)?.extract() };
    Ok(format!("{}.{}.{}", part(0)?, part(1)?, part(2)?))
}

fn describe(py: Python<'_>, e: &PyErr) -> String {
    e.value(py)
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| e.to_string())
}

/// One in-process call: the Python thread it runs on is published in `ident` before the job starts.
pub fn call(
    entry: &str,
    context: &str,
    log_file: &Path,
    run_id: i64,
    ident: &AtomicU64,
) -> std::result::Result<String, String> {
    Python::attach(|py| {
        let run = || -> PyResult<String> {
            let thread: u64 = py
                .import("threading")?
                .call_method0("get_ident")?
                .extract()?;
            ident.store(thread, Ordering::SeqCst);
            py.import("hedge_bridge.embedded")?
                .call_method1(
                    "run_json",
                    (entry, context, log_file.display().to_string(), run_id),
                )?
                .extract()
        };
        run().map_err(|e| describe(py, &e))
    })
}

/// Raises `JobTimeout` (`timeout = true`) or `JobCancelled` in the Python thread `ident`.
/// Needs the GIL: call it from a blocking thread, never an async worker.
pub fn interrupt(ident: u64, timeout: bool) -> bool {
    Python::attach(|py| {
        py.import("hedge_bridge.embedded")
            .and_then(|m| {
                m.call_method1(
                    "interrupt",
                    (ident, if timeout { "timeout" } else { "cancel" }),
                )
            })
            .and_then(|n| n.extract::<i64>())
            .map(|n| n > 0)
            .unwrap_or(false)
    })
}

/// Where the job's in-process output goes.
pub fn log_file(config: &Config, job: &str) -> PathBuf {
    config.job_log_dir().join(format!("{job}.log"))
}
