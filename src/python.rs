//! The embedded interpreter (pyo3 executor): the only user of pyo3.
//!
//! One interpreter for the process's life, initialised on first use without Python's signal
//! handlers (the daemon owns SIGINT/SIGTERM). Each run calls `hedge_bridge.embedded.run_json` on a
//! blocking thread; the GIL is held only while Python runs, never on an async worker. A run is
//! interrupted by raising an exception inside its thread; a thread stuck in C code cannot be, and
//! keeps its job's slot until it returns.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyList;

/// The bridge's entry points and `threading.get_ident`, looked up once.
static RUN_JSON: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static JOB_TIMEOUT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static JOB_CANCELLED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GET_IDENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

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
    let embedded = outcome.clone().map_err(Error::Embedded)?;
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
    for p in crate::bridge::search_path(&config.python).iter().rev() {
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

/// Work for a job's Python thread.
type Task = Box<dyn FnOnce(Python<'_>) + Send>;

/// One long-lived Python thread per pyo3 job: it keeps its Python thread state (no set-up and
/// tear-down per run) and holds the GIL only while a task runs. A job whose thread is stuck in
/// native code is held by it, which is what the scheduler wants anyway.
static WORKERS: std::sync::Mutex<
    Option<std::collections::HashMap<String, std::sync::mpsc::Sender<Task>>>,
> = std::sync::Mutex::new(None);

/// Runs `task` on `job`'s Python thread (started on first use), attached to the interpreter.
pub fn submit(job: &str, task: impl FnOnce(Python<'_>) + Send + 'static) -> Result<()> {
    let mut guard = WORKERS
        .lock()
        .map_err(|_| Error::Internal("python workers lock poisoned".into()))?;
    let workers = guard.get_or_insert_with(Default::default);
    let mut task: Task = Box::new(task);
    // A worker that has gone (it panicked) is replaced.
    for _ in 0..2 {
        let tx = match workers.get(job) {
            Some(tx) => tx.clone(),
            None => {
                let (tx, rx) = std::sync::mpsc::channel::<Task>();
                std::thread::Builder::new()
                    .name(format!("py-{job}"))
                    .spawn(move || {
                        // Waiting for work happens detached: the GIL is free meanwhile.
                        let rx = std::sync::Mutex::new(rx);
                        Python::attach(|py| {
                            while let Some(task) =
                                py.detach(|| rx.lock().ok().and_then(|rx| rx.recv().ok()))
                            {
                                task(py);
                            }
                        })
                    })
                    .map_err(|e| Error::io("cannot start a Python thread", e))?;
                workers.insert(job.to_string(), tx.clone());
                tx
            }
        };
        match tx.send(task) {
            Ok(()) => return Ok(()),
            Err(std::sync::mpsc::SendError(t)) => {
                task = t;
                workers.remove(job);
            }
        }
    }
    Err(Error::Internal("the job's Python thread is gone".into()))
}

/// One run's race between Python returning and an interrupt (timeout, cancel), decided once,
/// under the GIL, so an interrupt only ever hits the run it was meant for.
#[derive(Debug, Default)]
pub struct RunPhase {
    /// The Python thread running the job, once it has entered.
    ident: AtomicU64,
    phase: AtomicU8,
}

const RUNNING: u8 = 0;
const RETURNED: u8 = 1;
const INTERRUPTED: u8 = 2;

impl RunPhase {
    /// Whether the interrupt won: the run's outcome is the interrupt's.
    pub fn interrupted(&self) -> bool {
        self.phase.load(Ordering::SeqCst) == INTERRUPTED
    }
}

/// Drops an asynchronous exception still pending for thread `ident` (needs the GIL).
fn clear_pending(_py: Python<'_>, ident: u64) {
    // SAFETY: the GIL is held (`_py`); a NULL exception clears what is pending for the thread.
    unsafe {
        pyo3::ffi::PyThreadState_SetAsyncExc(ident as std::ffi::c_long, std::ptr::null_mut());
    }
}

/// One in-process call on the calling (attached) thread. Whatever an earlier run's interrupt
/// left pending on this thread is cleared first, and the race with an interrupt is decided before
/// the GIL is let go.
pub fn call(
    py: Python<'_>,
    entry: &str,
    context: &str,
    log_file: &Path,
    run_id: i64,
    run: &RunPhase,
) -> std::result::Result<String, String> {
    let thread = enter(py, run)?;
    let outcome = RUN_JSON
        .import(py, "hedge_bridge.embedded", "run_json")
        .and_then(|f| f.call1((entry, context, log_file.display().to_string(), run_id)))
        .and_then(|r| r.extract::<String>());
    leave(py, run, thread);
    outcome.map_err(|e| describe(py, &e))
}

/// A run enters Python on this thread: nothing pending from an earlier run, the thread published
/// for an interrupt; `Err` when the interrupt came first.
fn enter(py: Python<'_>, run: &RunPhase) -> std::result::Result<u64, String> {
    let thread: u64 = GET_IDENT
        .import(py, "threading", "get_ident")
        .and_then(|f| f.call0())
        .and_then(|t| t.extract())
        .map_err(|e| describe(py, &e))?;
    clear_pending(py, thread);
    run.ident.store(thread, Ordering::SeqCst);
    if run.interrupted() {
        return Err("interrupted before the job was entered".to_string());
    }
    Ok(thread)
}

/// Python returned: settle the race (still holding the GIL, which an interrupt needs too) and
/// drop whatever an interrupt left pending.
fn leave(py: Python<'_>, run: &RunPhase, thread: u64) {
    let _ = run
        .phase
        .compare_exchange(RUNNING, RETURNED, Ordering::SeqCst, Ordering::SeqCst);
    clear_pending(py, thread);
}

/// Raises `JobTimeout` (`timeout = true`) or `JobCancelled` in the run's thread, unless Python
/// has already returned; returns whether the interrupt won. Needs the GIL: call it from a
/// blocking thread, never an async worker.
pub fn interrupt(run: &RunPhase, timeout: bool) -> bool {
    Python::attach(|py| {
        if run
            .phase
            .compare_exchange(RUNNING, INTERRUPTED, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        let ident = run.ident.load(Ordering::SeqCst);
        if ident == 0 {
            // Not entered yet: `call` sees the phase and does not enter.
            return true;
        }
        let (lock, name) = if timeout {
            (&JOB_TIMEOUT, "JobTimeout")
        } else {
            (&JOB_CANCELLED, "JobCancelled")
        };
        let raised = lock
            .import(py, "hedge_bridge.embedded", name)
            .map(|exc| {
                // SAFETY: the GIL is held; `exc` is a live exception class.
                unsafe {
                    pyo3::ffi::PyThreadState_SetAsyncExc(ident as std::ffi::c_long, exc.as_ptr())
                }
            })
            .unwrap_or(0);
        if raised == 0 {
            tracing::warn!("could not raise {name} in the job's thread");
        }
        true
    })
}

/// Where the job's in-process output goes.
pub fn log_file(config: &Config, job: &str) -> PathBuf {
    config.job_log_dir().join(format!("{job}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn with_bridge() {
        Python::initialize();
        Python::attach(|py| {
            let bridge = concat!(env!("CARGO_MANIFEST_DIR"), "/python_bridge");
            py.import("sys")
                .and_then(|sys| sys.getattr("path"))
                .and_then(|path| path.call_method1("insert", (0, bridge)))
                .expect("sys.path");
        });
    }

    #[test]
    fn an_interrupt_that_lost_the_race_never_reaches_the_next_run() {
        with_bridge();
        let first = Arc::new(RunPhase::default());
        Python::attach(|py| {
            let thread = enter(py, &first).expect("enter");
            py.run(c"x = 1", None, None).expect("run");
            leave(py, &first, thread);
        });
        // The timeout fires just after Python returned: it loses and raises nothing.
        let late = Arc::clone(&first);
        let raised = std::thread::spawn(move || interrupt(&late, true))
            .join()
            .expect("interrupter");
        assert!(!raised && !first.interrupted());
        // The thread's next run runs undisturbed.
        let next = RunPhase::default();
        Python::attach(|py| {
            let thread = enter(py, &next).expect("enter");
            py.run(c"y = sum(range(100000))", None, None)
                .expect("no JobTimeout in the next run");
            leave(py, &next, thread);
        });
    }

    #[test]
    fn an_interrupt_that_wins_ends_its_own_run() {
        with_bridge();
        let run = Arc::new(RunPhase::default());
        let target = Arc::clone(&run);
        let interrupter = std::thread::spawn(move || {
            while target.ident.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            interrupt(&target, true)
        });
        let outcome = Python::attach(|py| {
            let thread = enter(py, &run).expect("enter");
            // Sleeps in steps, letting the GIL go: the interrupter gets in.
            let r = py.run(
                c"import time\nfor _ in range(500): time.sleep(0.01)",
                None,
                None,
            );
            leave(py, &run, thread);
            r.map_err(|e| describe(py, &e))
        });
        assert!(interrupter.join().expect("interrupter"));
        assert!(run.interrupted());
        let err = outcome.expect_err("the run was interrupted");
        assert!(err.contains("JobTimeout"), "{err}");
    }
}
