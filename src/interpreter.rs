//! Resolves `[python] executable` once, at start-up, to the real interpreter, and checks that the
//! bridge and every job's module can be found — so a typo fails before anything is started.
//!
//! `python3` on PATH is often a shim (pyenv) that costs tens of milliseconds a start: asking the
//! interpreter for `sys.executable` once means no run ever pays for the shim again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::config::Config;
use crate::error::{ConfigError, Error, Result};

/// Prints the interpreter's facts and which of the given modules it can find, as JSON.
const PROBE: &str = r#"
import importlib.util, json, site, sys
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = importlib.util.find_spec(name) is not None
    except Exception as exc:
        found[name] = False
try:
    packages = site.getsitepackages()
except AttributeError:
    packages = []
print(json.dumps({"executable": sys.executable, "version": "%d.%d.%d" % sys.version_info[:3],
                  "prefix": sys.prefix, "site_packages": packages, "found": found}))
"#;

/// `check-config`'s deeper look: imports each job's module and looks its function up. Answers
/// `{"module:function": null | "why not"}`.
const ENTRY_PROBE: &str = r#"
import difflib, importlib, json, sys
answer = {}
for entry in sys.argv[1:]:
    module, _, function = entry.partition(":")
    try:
        m = importlib.import_module(module)
    except BaseException as exc:
        answer[entry] = "importing `%s` failed: %s: %s" % (module, type(exc).__name__, exc)
        continue
    f = getattr(m, function, None)
    if f is None:
        near = difflib.get_close_matches(function, [n for n in dir(m) if callable(getattr(m, n, None)) and not n.startswith("_")], 1)
        answer[entry] = "module `%s` has no function `%s`%s" % (module, function, " (did you mean `%s`?)" % near[0] if near else "")
    elif not callable(f):
        answer[entry] = "`%s` in module `%s` is not callable" % (function, module)
    else:
        answer[entry] = None
print(json.dumps(answer))
"#;

/// Imports every function job's module (with `python.probe_timeout`) and checks its function is
/// there: the first that is not is an error at its `entry`.
pub fn check_entries(config: &Config, interpreter: &Interpreter) -> Result<()> {
    let entries: Vec<(&crate::config::Job, String)> = config
        .jobs
        .iter()
        .filter(|j| matches!(j.entry, crate::config::Entry::Function { .. }))
        .map(|j| (j, j.entry.to_string()))
        .collect();
    if entries.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new(&interpreter.path);
    cmd.arg("-c")
        .arg(ENTRY_PROBE)
        .args(entries.iter().map(|(_, e)| e))
        .current_dir(&config.python.cwd)
        .env(
            "PYTHONPATH",
            std::env::join_paths(crate::bridge::search_path(&config.python)).unwrap_or_default(),
        )
        .stdin(Stdio::null());
    let at = |job: Option<&crate::config::Job>, message: String| {
        Error::Config(ConfigError {
            file: config.file.clone(),
            position: job.and_then(|j| j.entry_at),
            message,
        })
    };
    let output = output_within(cmd, config.python.probe_timeout)
        .map_err(|e| at(None, format!("cannot start python to check the entries: {e}")))?
        .ok_or_else(|| {
            at(
                None,
                format!(
                    "importing the jobs' modules did not finish within {} (`python.probe_timeout`): it was ended",
                    humantime::format_duration(config.python.probe_timeout)
                ),
            )
        })?;
    let answer: std::collections::HashMap<String, Option<String>> =
        serde_json::from_slice(&output.stdout).map_err(|e| {
            let stderr = String::from_utf8_lossy(&output.stderr);
            at(
                None,
                format!(
                    "checking the entries gave no answer ({e}): {}",
                    stderr.lines().last().unwrap_or("").trim()
                ),
            )
        })?;
    for (job, entry) in &entries {
        if let Some(Some(why)) = answer.get(entry) {
            return Err(at(
                Some(job),
                format!("`entry` of [jobs.{}]: {why}", job.id),
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct Probe {
    executable: String,
    version: String,
    #[serde(default)]
    site_packages: Vec<String>,
    found: std::collections::HashMap<String, bool>,
}

/// Where the interpreter the last start resolved is kept (in the private log folder).
const REMEMBERED: &str = "interpreter.json";

/// What `python.executable` resolved to at the last start, if it was asked the same way (same
/// executable, venv and PATH): the fork server may start with it before the probe answers. The
/// probe's answer is what counts; a guess it contradicts costs a second start, nothing else.
pub fn remembered(config: &Config) -> Option<PathBuf> {
    use std::io::Read;
    let mut text = String::new();
    crate::private::open(
        &config.scheduler.log_dir.join(REMEMBERED),
        crate::private::Open::Read,
    )
    .ok()?
    .read_to_string(&mut text)
    .ok()?;
    let kept: serde_json::Value = serde_json::from_str(&text).ok()?;
    (kept["asked"] == asked(config))
        .then(|| kept["resolved"].as_str().map(PathBuf::from))
        .flatten()
        .filter(|p| p.is_file())
}

/// Keeps what the probe resolved, for `remembered`.
pub fn remember(config: &Config, interpreter: &Interpreter) {
    let kept = serde_json::json!({
        "asked": asked(config),
        "resolved": interpreter.path.display().to_string(),
    });
    let _ = crate::private::write_atomic(
        &config.scheduler.log_dir.join(REMEMBERED),
        kept.to_string().as_bytes(),
    );
}

fn asked(config: &Config) -> serde_json::Value {
    serde_json::json!({
        "executable": config.python.executable,
        "dir": config.dir().display().to_string(),
        "path": std::env::var("PATH").unwrap_or_default(),
        "pyenv": std::env::var("PYENV_VERSION").unwrap_or_default(),
    })
}

/// The interpreter every job of this config runs on.
#[derive(Debug, Clone)]
pub struct Interpreter {
    pub path: PathBuf,
    pub version: String,
    /// Its site-packages folders (a venv's own, for a venv): the embedded interpreter adds them.
    #[cfg_attr(not(feature = "embedded"), allow(dead_code))]
    pub site_packages: Vec<PathBuf>,
}

/// Resolves the configured interpreter and checks that `hedge_bridge` and every job's module
/// (of `jobs`, or of all jobs) can be imported with the configured path.
pub fn resolve(config: &Config, jobs: Option<&[&str]>) -> Result<Interpreter> {
    let exe = &config.python.executable;
    let program = if exe.contains('/') {
        config.file.parent().unwrap_or(Path::new("/")).join(exe)
    } else {
        PathBuf::from(exe)
    };
    let located = |message: String| -> Error {
        Error::Config(ConfigError {
            file: config.file.clone(),
            position: config.python.executable_at,
            message,
        })
    };

    let modules = modules_to_probe(config, jobs)?;
    let pythonpath =
        std::env::join_paths(crate::bridge::search_path(&config.python)).unwrap_or_default();
    let mut cmd = Command::new(&program);
    cmd.arg("-c")
        .arg(PROBE)
        .args(&modules)
        .current_dir(&config.python.cwd)
        .env("PYTHONPATH", pythonpath)
        .stdin(Stdio::null());
    let output = output_within(cmd, config.python.probe_timeout)
        .map_err(|e| {
            located(format!(
                "cannot start python `{exe}` for `python.executable`: {e}"
            ))
        })?
        .ok_or_else(|| {
            located(format!(
                "python `{exe}` for `python.executable` did not answer within {} (`python.probe_timeout`): it was ended",
                humantime::format_duration(config.python.probe_timeout)
            ))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").trim();
        return Err(located(format!(
            "python `{exe}` for `python.executable` failed to start ({}): {last}",
            output.status
        )));
    }
    let probe: Probe = serde_json::from_slice(&output.stdout).map_err(|e| {
        located(format!(
            "python `{exe}` for `python.executable` gave an unexpected answer: {e}"
        ))
    })?;
    check_found(config, &probe)?;
    Ok(Interpreter {
        path: PathBuf::from(probe.executable),
        version: probe.version,
        site_packages: probe.site_packages.into_iter().map(PathBuf::from).collect(),
    })
}

/// The modules to probe for: the bridge's and each selected job's (`jobs`, or all); a job's
/// script must exist.
fn modules_to_probe(config: &Config, jobs: Option<&[&str]>) -> Result<Vec<String>> {
    let mut modules = vec!["hedge_bridge".to_string()];
    let selected = |id: &str| jobs.is_none_or(|ids| ids.contains(&id));
    for job in config.jobs.iter().filter(|j| selected(&j.id)) {
        match &job.entry {
            crate::config::Entry::Function { module, .. } => modules.push(module.clone()),
            crate::config::Entry::Script(script) => {
                let path = config.python.cwd.join(script);
                if !path.is_file() {
                    return Err(Error::Config(ConfigError {
                        file: config.file.clone(),
                        position: job.entry_at,
                        message: format!(
                            "script `{}` of `entry` in [jobs.{}] not found (looked for `{}`; scripts are relative to `python.cwd`)",
                            script.display(),
                            job.id,
                            path.display()
                        ),
                    }));
                }
            }
            crate::config::Entry::Command(_) => {}
        }
    }
    Ok(modules)
}

/// The bridge and every job's module were found by the probe.
fn check_found(config: &Config, probe: &Probe) -> Result<()> {
    if probe.found.get("hedge_bridge") != Some(&true) {
        return Err(Error::Config(ConfigError::new(
            &config.file,
            format!(
                "module `hedge_bridge` (the bridge this binary writes to its cache) cannot be imported from ({})",
                crate::bridge::search_path(&config.python)
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )));
    }
    for job in &config.jobs {
        if let Some(module) = job.entry.module()
            && probe.found.get(module) == Some(&false)
        {
            return Err(Error::Config(ConfigError {
                file: config.file.clone(),
                position: job.entry_at,
                message: format!(
                    "module `{module}` of `entry` in [jobs.{}] not found on `python.path`",
                    job.id
                ),
            }));
        }
    }
    Ok(())
}

/// Runs `cmd` in a process group of its own and collects its output; `None` (the group killed)
/// when it has not exited within `timeout`.
fn output_within(
    mut cmd: Command,
    timeout: std::time::Duration,
) -> std::io::Result<Option<std::process::Output>> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // Registered as ours, so the subreaper never takes it for a run's stray.
    let (mut child, _spawned) = crate::contain::Spawned::spawn(|| cmd.spawn(), |c| Some(c.id()))?;
    // The pipes are drained on threads so a chatty interpreter cannot block on them.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let pgid = i32::try_from(child.id()).unwrap_or(0);
    let _registered = Running::register(pgid);
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            kill_group(pgid);
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    Ok(Some(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }))
}

/// Process groups of probes running now, so a daemon that stops meanwhile ends them.
static PROBES: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// A probe's place in `PROBES`, given up when dropped.
struct Running(i32);

impl Running {
    fn register(pgid: i32) -> Running {
        if let Ok(mut p) = PROBES.lock() {
            p.push(pgid);
        }
        Running(pgid)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut p) = PROBES.lock() {
            p.retain(|g| *g != self.0);
        }
    }
}

fn kill_group(pgid: i32) {
    if pgid > 1 {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Ends the probes still running (a daemon stopping while a reload's probe hangs): they are
/// ours, in process groups we made.
pub fn end_probes() {
    let groups = PROBES.lock().map(|p| p.clone()).unwrap_or_default();
    for pgid in groups {
        kill_group(pgid);
    }
}
