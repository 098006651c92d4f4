//! A small builder around the real binary, and polling with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_hedge-scheduler");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A throwaway project: a config, the fixture jobs, its own logs and history.
pub struct Project {
    pub dir: tempfile::TempDir,
    /// Daemons this test started: killed when the test ends, even when it fails.
    daemons: std::cell::RefCell<Vec<u32>>,
}

impl Drop for Project {
    fn drop(&mut self) {
        for pid in self.daemons.borrow().iter() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::tempdir().expect("temp dir");
        let jobs = dir.path().join("jobs");
        std::fs::create_dir_all(&jobs).expect("jobs dir");
        std::fs::copy(
            repo().join("tests/fixtures/fixture_jobs.py"),
            jobs.join("fixture_jobs.py"),
        )
        .expect("copy fixtures");
        Project {
            dir,
            daemons: Default::default(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("config.toml")
    }

    /// Writes the config: the usual [scheduler] and [python] sections plus `jobs`.
    pub fn config(&self, scheduler_extra: &str, jobs: &str) -> &Self {
        let bridge = repo().join("python_bridge");
        // Tests run side by side: only the legacy test looks for the old system's scripts.
        let legacy = if scheduler_extra.contains("legacy") {
            ""
        } else {
            "legacy_scripts = []"
        };
        let text = format!(
            r#"[scheduler]
exchange = "XNSE"
log_dir = "logs"
history = "logs/history.sqlite3"
kill_grace = "2s"
{legacy}
{scheduler_extra}

[python]
executable = "python3"
path = [{bridge:?}, "jobs"]

{jobs}
"#
        );
        std::fs::write(self.config_path(), text).expect("write config");
        self
    }

    /// Sets a key of the config (`"scheduler.log_dir"`, `"jobs.tick.args.seconds"`), making its
    /// tables if they are missing. The file is rewritten as TOML: its comments and layout go.
    pub fn set(&self, key: &str, value: impl Into<toml::Value>) -> &Self {
        self.edit_config(key, Some(value.into()))
    }

    /// Removes a key of the config (`"scheduler.log_dir"`): its default applies.
    pub fn unset(&self, key: &str) -> &Self {
        self.edit_config(key, None)
    }

    fn edit_config(&self, key: &str, value: Option<toml::Value>) -> &Self {
        let text = std::fs::read_to_string(self.config_path()).expect("read config");
        let mut table: toml::Table = toml::from_str(&text).expect("the config is TOML");
        let mut path: Vec<&str> = key.split('.').collect();
        let last = path.pop().expect("a key");
        let mut at = &mut table;
        for part in path {
            at = at
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("`{part}` of `{key}` is not a table"));
        }
        match value {
            Some(v) => {
                at.insert(last.to_string(), v);
            }
            None => {
                at.remove(last);
            }
        }
        let text = toml::to_string(&table).expect("TOML");
        std::fs::write(self.config_path(), text).expect("write config");
        self
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_of(Path::new(BIN), args)
    }

    /// `cmd` with another build of the binary.
    pub fn cmd_of(&self, bin: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(self.config_path())
            .args(args)
            .current_dir(self.path())
            .env_remove("HEDGE_SCHEDULER_CONFIG")
            .env_remove("HEDGE_LOG")
            // The bridge the binary writes on first use goes to the project, not the user's cache.
            .env("XDG_CACHE_HOME", self.path().join("cache"))
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run hedge-scheduler")
    }

    /// Starts `run`; its console goes to `daemon.out` in the project (see `daemon_output`).
    pub fn spawn_daemon(&self) -> Child {
        self.spawn_daemon_with(&[], |_| {})
    }

    /// Starts `run` with more arguments, and `tune` applied to its command (environment).
    pub fn spawn_daemon_with(&self, args: &[&str], tune: impl FnOnce(&mut Command)) -> Child {
        let out = std::fs::File::create(self.path().join("daemon.out")).expect("daemon.out");
        let err = out.try_clone().expect("daemon.out");
        let mut argv = vec!["run"];
        argv.extend_from_slice(args);
        let mut cmd = self.cmd(&argv);
        tune(&mut cmd);
        let child = cmd.stdout(out).stderr(err).spawn().expect("spawn daemon");
        self.daemons.borrow_mut().push(child.id());
        child
    }

    /// What the last daemon started printed.
    pub fn daemon_output(&self) -> String {
        std::fs::read_to_string(self.path().join("daemon.out")).unwrap_or_default()
    }

    /// `history --json` for all runs, newest first.
    pub fn history(&self) -> Vec<Value> {
        let out = self.run(&["history", "--limit", "100000", "--json"]);
        assert!(out.status.success(), "history failed: {}", text(&out));
        serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("history JSON")
    }

    /// `history --json`, or nothing while the history cannot be read (being recreated, say).
    pub fn try_history(&self) -> Option<Vec<Value>> {
        let out = self.run(&["history", "--limit", "100000", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice::<Vec<Value>>(&out.stdout).ok()
    }

    pub fn runs_with(&self, outcome: &str) -> Vec<Value> {
        self.history()
            .into_iter()
            .filter(|r| r["outcome"] == outcome)
            .collect()
    }

    pub fn log_dir(&self) -> PathBuf {
        self.path().join("logs")
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `f` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `sig` to the process and waits for it to exit, up to `timeout`.
pub fn signal_and_wait(
    child: &mut Child,
    sig: nix::sys::signal::Signal,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, sig).expect("signal daemon");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still answers kill(0); read its state to tell it from a live process.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

pub fn ts(s: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s.as_str().expect("time string"))
        .expect("RFC 3339")
        .with_timezone(&chrono::Utc)
}

/// The lines of a file a test's job writes (none when it is not there yet).
pub fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The files of a `fixture_jobs:verdict` job: where it records what ran, and its verdict
/// (`says`: "ok" or "fail"), written now.
pub fn verdict_files(p: &Project, says: &str) -> (PathBuf, PathBuf) {
    let (ran, verdict) = (p.path().join("ran.txt"), p.path().join("verdict.txt"));
    std::fs::write(&verdict, says).expect("verdict");
    (ran, verdict)
}

/// The PIDs of the fork servers a daemon's console says it started, in order.
pub fn fork_servers(console: &str) -> Vec<i32> {
    console
        .lines()
        .filter_map(|l| l.split("fork server ").nth(1))
        .filter(|rest| rest.contains(" ready"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Runs `stubborn` (ignores SIGTERM, writes its PID to `term_pid`, 1 s timeout) and `escape`
/// (leaves a grandchild in a session of its own, writes its PID to `escape_pid`, 1 s timeout)
/// with `run-once`: the first is killed after the 2 s grace, the second's grandchild is ended.
pub fn assert_stubborn_killed_and_escape_ended(
    p: &Project,
    executor: &str,
    term_pid: &Path,
    escape_pid: &Path,
) {
    let read_pid =
        |f: &Path| -> i32 { std::fs::read_to_string(f).unwrap().trim().parse().unwrap() };
    let out = p.run(&["run-once", "stubborn"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let row = &p.history()[0];
    assert_eq!(row["outcome"], "timeout", "{row}");
    assert_eq!(row["executor"], executor, "{row}");
    // 1 s timeout + 2 s grace before SIGKILL.
    assert!(row["duration_ms"].as_i64().unwrap() >= 2900, "{row}");
    assert_eq!(row["signal"], "SIGKILL", "{row}");
    let pid = read_pid(term_pid);
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(pid)));

    let out = p.run(&["run-once", "escape"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(p.history()[0]["outcome"], "timeout");
    let pid = read_pid(escape_pid);
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(pid)),
        "{executor}: the grandchild in its own session outlived the run"
    );
}

/// An interpreter of another minor version than `python3`'s, found beside it (pyenv keeps them
/// side by side) or on PATH.
pub fn other_python() -> Option<(PathBuf, String)> {
    let probe = |python: &Path| -> Option<String> {
        let out = std::process::Command::new(python)
            .args([
                "-c",
                "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.base_prefix)",
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    };
    let ours = probe(Path::new("python3"))?;
    let mut ours = ours.lines();
    let (minor, prefix) = (ours.next()?.to_string(), PathBuf::from(ours.next()?));
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(prefix.parent()?)
        .map(|d| d.flatten().map(|e| e.path().join("bin/python3")).collect())
        .unwrap_or_default();
    candidates.sort();
    candidates.extend(
        ["3.13", "3.12", "3.10", "3.9"]
            .iter()
            .map(|v| PathBuf::from(format!("/usr/bin/python{v}"))),
    );
    // The oldest supported (3.9) first: the bridge must keep working there.
    let mut found: Vec<(u32, PathBuf, String)> = candidates
        .into_iter()
        .filter(|c| c.exists())
        .filter_map(|c| {
            let v = probe(&c)?;
            let v = v.lines().next()?.to_string();
            let (major, min) = v.split_once('.')?;
            let min: u32 = min.parse().ok()?;
            (major == "3" && min >= 9 && v != minor).then_some((min, c, v))
        })
        .collect();
    found.sort_by_key(|(min, _, _)| *min);
    found.into_iter().next().map(|(_, c, v)| (c, v))
}

/// [`other_python`], or `None` after saying the test is skipped (never on CI, which has pyenv's
/// other versions).
pub fn other_python_or_skip() -> Option<(PathBuf, String)> {
    let found = other_python();
    if found.is_none() {
        crate::skip::skip(
            "no Python 3.9+ of another version than python3's here",
            "a second CPython, e.g. with pyenv",
        );
    }
    found
}

/// Makes a venv of `python` in the project (`venv-other`) and points the config's `[python]` at
/// it instead of `python3`.
pub fn use_venv_of(p: &Project, python: &Path) {
    let made = Command::new(python)
        .args(["-m", "venv", "--without-pip"])
        .arg(p.path().join("venv-other"))
        .status()
        .expect("python -m venv");
    assert!(made.success());
    p.unset("python.executable")
        .set("python.venv", "venv-other");
}

/// A job's table in a config: `[jobs.<id>]` and its keys.
pub fn job(id: &str, body: &str) -> String {
    format!("\n[jobs.{id}]\n{body}\n")
}

/// Stops a daemon of `p` with SIGTERM, asserts it exited 0 (within 40 s), and returns its
/// console output.
pub fn stop_clean(p: &Project, mut daemon: std::process::Child) -> String {
    let status = signal_and_wait(
        &mut daemon,
        nix::sys::signal::Signal::SIGTERM,
        Duration::from_secs(40),
    );
    let out = p.daemon_output();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the daemon did not stop cleanly: {status:?}\n{out}"
    );
    out
}

pub const TICK: &str = r#"
[jobs.tick]
name = "Every second"
entry = "fixture_jobs:noop"
schedule = "* * * * * *"
market_hours = false
timeout = "10s"
args = { answer = 42 }
"#;

pub(crate) fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "__pycache__" {
                copy_tree(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

pub const NOOP: &str = "\n[jobs.q]\nentry = \"fixture_jobs:noop\"\nschedule = \"0 */15 * * * *\"\nmarket_hours = true\nexecutor = \"subprocess\"\n";

/// `[jobs.<id>]` running `fixture_jobs:<function>` on `schedule`, outside market hours, with
/// `extra` TOML lines.
pub fn fixture(id: &str, function: &str, schedule: &str, extra: &str) -> String {
    job(
        id,
        &format!(
            "entry = \"fixture_jobs:{function}\"\nschedule = \"{schedule}\"\nmarket_hours = false\n{extra}"
        ),
    )
}

/// Runs a Python `script` (with `arg`) that takes a lock, prints `locked` and holds it until the
/// returned child is killed.
pub fn python_holding(script: &str, arg: &Path) -> std::process::Child {
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(arg)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("locker");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    child
}

/// A job on `* * * * * *` that journals each run into `<name>.journal` in the project.
pub fn journaled(p: &Project, id: &str, executor: &str) -> String {
    let file = p.path().join(format!("{id}.journal"));
    format!(
        "\n[jobs.{id}]\nentry = \"fixture_jobs:journal\"\nschedule = \"* * * * * *\"\nmarket_hours = false\nexecutor = \"{executor}\"\nargs = {{ file = {:?} }}\n",
        file.display().to_string()
    )
}

/// One journaled run: (slot, trigger, run id, when the function was entered).
#[derive(Debug, Clone)]
pub struct Ran {
    pub slot: DateTime<Utc>,
    pub trigger: String,
    pub run_id: i64,
    pub entered: f64,
}

pub fn journal(p: &Project, id: &str) -> Vec<Ran> {
    let text = std::fs::read_to_string(p.path().join(format!("{id}.journal"))).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Ran {
                slot: DateTime::parse_from_rfc3339(f.first()?)
                    .ok()?
                    .with_timezone(&Utc),
                trigger: f.get(1)?.to_string(),
                run_id: f.get(2)?.parse().ok()?,
                entered: f.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

pub fn stop_within(mut daemon: std::process::Child, within: Duration) {
    let status = signal_and_wait(&mut daemon, Signal::SIGTERM, within);
    assert!(
        status.is_some_and(|s| s.success()),
        "the daemon did not stop cleanly within {within:?}: {status:?}"
    );
}

/// libfaketime, installed from Debian's `faketime` package (`.ci/run` installs it).
/// Whether libfaketime is here; if not, the test is marked skipped (a failure under `CI=true`).
pub(crate) fn have_faketime() -> bool {
    let found = faketime_path().is_some();
    if !found {
        crate::skip::skip("libfaketime is not installed", "Debian package `faketime`");
    }
    found
}

pub fn faketime_path() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
}

/// libfaketime (a test that uses it first checks [`have_faketime`]).
pub(crate) fn libfaketime() -> PathBuf {
    faketime_path().expect("libfaketime not found: install Debian's `faketime` package")
}

pub(crate) fn set_fake(file: &Path, offset: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, offset).expect("faketime file");
    std::fs::rename(&tmp, file).expect("faketime file");
}

pub const TICK_JOB: &str =
    "entry = \"fixture_jobs:noop\"\nschedule = \"* * * * * *\"\nmarket_hours = false";

pub fn status_json(p: &Project) -> (Option<i32>, Value) {
    let out = p.run(&["status", "--json"]);
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).expect("status JSON"),
    )
}

pub fn sig_pid(pid: u32, s: Signal) {
    kill(Pid::from_raw(pid as i32), s).expect("signal");
}
