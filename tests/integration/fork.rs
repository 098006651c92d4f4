//! The fork executor through the binary: a warm fork server, a child per run, real Python.
//! (The containment faults — double forks, hoppers, a SIGKILLed daemon — run for both executors
//! in `faults.rs`.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

fn job(id: &str, function: &str, extra: &str) -> String {
    format!(
        "\n[jobs.{id}]\nentry = \"fixture_jobs:{function}\"\nschedule = \"0 0 0 1 1 *\"\nexecutor = \"fork\"\n{extra}\n"
    )
}

/// The config with `[python]` lines added (preload and the like).
fn config_with_python(p: &Project, python_extra: &str, jobs: &str) {
    p.config("", jobs);
    let text_ = std::fs::read_to_string(p.config_path()).unwrap();
    std::fs::write(
        p.config_path(),
        text_.replacen("[python]\n", &format!("[python]\n{python_extra}\n"), 1),
    )
    .unwrap();
}

fn lines(path: &Path) -> Vec<String> {
    file_lines(path)
}

/// Runs of `job` in the history, oldest first.
fn runs_of(p: &Project, job: &str) -> Vec<Value> {
    let mut rows: Vec<Value> = p
        .history()
        .into_iter()
        .filter(|r| r["job"] == job && r["outcome"] != "running")
        .collect();
    rows.reverse();
    rows
}

/// `trigger <job>`, then waits for its `n`-th finished run and returns it.
fn trigger_and_wait(p: &Project, job: &str, n: usize) -> Value {
    let out = p.run(&["trigger", job]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        wait_until(Duration::from_secs(30), || runs_of(p, job).len() >= n),
        "run {n} of {job} never finished: {}",
        p.daemon_output()
    );
    runs_of(p, job)[n - 1].clone()
}

/// Starts the daemon (each import of the fixtures' module logged to `imports`) and waits until
/// its fork server is ready and its control socket listens; returns the daemon and the server.
fn start_daemon(p: &Project, imports: &Path) -> (std::process::Child, i32) {
    let daemon = p.spawn_daemon_with(&[], |c| {
        c.env("FIXTURE_IMPORT_LOG", imports);
    });
    assert!(
        wait_until(Duration::from_secs(20), || !fork_servers(
            &p.daemon_output()
        )
        .is_empty()
            && p.log_dir().join("control.sock").exists()),
        "{}",
        p.daemon_output()
    );
    let server = fork_servers(&p.daemon_output())[0];
    (daemon, server)
}

#[test]
fn fork_success_raise_exit_and_segfault_leave_the_server_serving_and_a_killed_server_is_replaced() {
    let p = Project::new();
    let imports = p.path().join("imports.log");
    config_with_python(
        &p,
        "preload = [\"fixture_jobs\"]",
        &[
            job("ok", "counter", ""),
            job("raises", "boom", ""),
            job("exits", "exit3", ""),
            job("crash", "segfault", ""),
        ]
        .concat(),
    );
    let (daemon, server) = start_daemon(&p, &imports);
    // The server imported the preload; nothing else has yet.
    assert_eq!(lines(&imports), vec![server.to_string()]);

    let crash = trigger_and_wait(&p, "crash", 1);
    assert_eq!(crash["outcome"], "crashed", "{crash}");
    assert_eq!(crash["signal"], "SIGSEGV", "{crash}");
    assert_eq!(crash["executor"], "fork", "{crash}");
    assert!(pid_alive(server), "a child's segfault took the server down");

    // Each child starts from the server's state: the module-level counter is at its preload
    // value (0) in every one, so each run counts 1; each run is a process of its own.
    let mut pids = Vec::new();
    for n in 1..=3 {
        let ok = trigger_and_wait(&p, "ok", n);
        assert_eq!(ok["outcome"], "success", "{ok}");
        assert_eq!(ok["result"]["calls"], 1, "{ok}");
        let pid = ok["result"]["pid"].as_i64().unwrap() as i32;
        assert_ne!(pid, server);
        assert_eq!(ok["pid"].as_i64(), Some(i64::from(pid)), "{ok}");
        assert!(!pid_alive(pid), "run {n}'s child outlived it");
        pids.push(pid);
    }
    pids.dedup();
    assert_eq!(pids.len(), 3);

    let raised = trigger_and_wait(&p, "raises", 1);
    assert_eq!(raised["outcome"], "failed", "{raised}");
    assert!(
        raised["error"]
            .as_str()
            .unwrap()
            .contains("ValueError: boom"),
        "{raised}"
    );
    assert_eq!(raised["exit_code"], 1, "{raised}");
    let log = std::fs::read_to_string(p.log_dir().join("jobs/raises.log")).unwrap();
    assert!(
        log.contains("about to fail") && log.contains("Traceback"),
        "{log}"
    );
    let exited = trigger_and_wait(&p, "exits", 1);
    assert_eq!(exited["outcome"], "failed", "{exited}");
    assert_eq!(exited["exit_code"], 3, "{exited}");

    // Six runs, one import: the module was imported by the server alone.
    assert_eq!(lines(&imports), vec![server.to_string()]);
    assert!(pid_alive(server));

    // The server SIGKILLed between runs: the next run is recorded and succeeds, from a new one.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(server)));
    let ok = trigger_and_wait(&p, "ok", 4);
    assert_eq!(ok["outcome"], "success", "{ok}");
    assert_eq!(ok["result"]["calls"], 1, "{ok}");
    assert!(ok["executor"].as_str().unwrap().starts_with("fork"), "{ok}");
    // Unless a health check replaced it first, the run's row says it waited for a new server.
    let log = std::fs::read_to_string(p.log_dir().join("jobs/ok.log")).unwrap();
    if log.contains("was killed by SIGKILL: started a new one") {
        assert!(
            ok["executor"]
                .as_str()
                .unwrap()
                .starts_with("fork (on a new fork server: the fork server"),
            "{ok}"
        );
    }
    let imported = lines(&imports);
    assert_eq!(imported.len(), 2, "{imported:?}");
    let second: i32 = imported[1].parse().unwrap();
    assert_ne!(second, server);
    assert!(pid_alive(second));
    let console = p.daemon_output();
    assert!(
        console.contains(&format!("fork server {server} was killed by SIGKILL")),
        "{console}"
    );

    stop_clean(&p, daemon);
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(second)),
        "the fork server outlived its daemon"
    );
}

#[test]
fn fork_timeout_of_a_child_that_ignores_sigterm_an_escaped_grandchild_and_10_mb_of_output() {
    let p = Project::new();
    let term_pid = p.path().join("term.pid");
    let escape_pid = p.path().join("escape.pid");
    p.config(
        "",
        &[
            job(
                "stubborn",
                "ignores_sigterm",
                &format!("timeout = \"1s\"\nargs = {{ pid_file = {term_pid:?} }}"),
            ),
            job(
                "escape",
                "escapes",
                &format!("timeout = \"1s\"\nargs = {{ pid_file = {escape_pid:?} }}"),
            ),
            job(
                "flood",
                "chatty",
                "timeout = \"60s\"\nargs = { lines = 104000 }",
            ),
        ]
        .concat(),
    );
    assert_stubborn_killed_and_escape_ended(&p, "fork", &term_pid, &escape_pid);

    let out = p.run(&["run-once", "flood", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let row: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(row["result"]["lines"], 104000, "{row}");
    let log = std::fs::read_to_string(p.log_dir().join("jobs/flood.log")).unwrap();
    assert!(log.len() > 10_000_000, "{} bytes", log.len());
    assert!(log.contains("CHATTY-DONE"));
    assert_eq!(log.matches("[run 3 stdout]").count(), 104_001);
}

#[test]
fn fork_preload_that_starts_a_thread_is_a_config_error() {
    let p = Project::new();
    std::fs::write(
        p.path().join("jobs/threaded_at_import.py"),
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), name='poller', daemon=True).start()\n",
    )
    .unwrap();
    config_with_python(
        &p,
        "preload = [\"json\", \"threaded_at_import\"]",
        &job("ok", "noop", ""),
    );
    for args in [&["run"][..], &["run-once", "ok"], &["check-config"]] {
        let out = p.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or_default().to_string();
        assert!(
            first.contains("config.toml:")
                && first.contains("python.preload")
                && first.contains("'threaded_at_import'")
                && first.contains("poller"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Nothing ran, nothing was recorded.
    assert!(p.try_history().unwrap_or_default().is_empty());

    // A preload that cannot be imported is named too.
    config_with_python(
        &p,
        "preload = [\"no_such_module_here\"]",
        &job("ok", "noop", ""),
    );
    let out = p.run(&["run-once", "ok"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("'no_such_module_here'"),
        "{}",
        text(&out)
    );
}

#[test]
fn fork_runs_in_a_venv_of_another_python_version() {
    let Some((python, version)) = other_python_or_skip() else {
        return;
    };
    let p = Project::new();
    config_with_python(&p, "", &job("which", "python_version", ""));
    use_venv_of(&p, &python);
    let out = p.run(&["run-once", "which", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let row: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(row["executor"], "fork", "{row}");
    let got = row["result"]["version"].as_str().unwrap();
    assert!(
        got.starts_with(&format!("{version}.")),
        "{got} vs {version}"
    );
    assert!(
        row["result"]["prefix"]
            .as_str()
            .unwrap()
            .ends_with("venv-other"),
        "{row}"
    );
}

#[test]
fn fork_server_is_recycled_after_fork_max_runs_and_when_a_preloaded_module_changes() {
    let p = Project::new();
    let imports = p.path().join("imports.log");
    config_with_python(
        &p,
        "preload = [\"fixture_jobs\"]\nfork_max_runs = 2",
        &job("ok", "counter", ""),
    );
    let (daemon, _) = start_daemon(&p, &imports);
    assert_eq!(lines(&imports).len(), 1);
    // Two runs from the first server, then a new one (started as the second run ends).
    for n in 1..=2 {
        assert_eq!(trigger_and_wait(&p, "ok", n)["outcome"], "success");
    }
    assert!(
        wait_until(Duration::from_secs(10), || lines(&imports).len() == 2),
        "{:?}",
        lines(&imports)
    );
    assert_eq!(trigger_and_wait(&p, "ok", 3)["outcome"], "success");
    assert_eq!(lines(&imports).len(), 2);
    assert!(
        !pid_alive(lines(&imports)[0].parse().unwrap()),
        "the retired server lingers"
    );

    // A preloaded module edited on disk: the next run comes from a server that imported it anew.
    let module = p.path().join("jobs/fixture_jobs.py");
    let source = std::fs::read_to_string(&module).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(
        &module,
        source.replace("counter call", "counter (edited) call"),
    )
    .unwrap();
    let ok = trigger_and_wait(&p, "ok", 4);
    assert_eq!(ok["outcome"], "success");
    let log = std::fs::read_to_string(p.log_dir().join("jobs/ok.log")).unwrap();
    assert!(log.contains("counter (edited) call"), "{log}");
    assert!(log.contains("changed on disk"), "{log}");
    assert_eq!(lines(&imports).len(), 3);

    // `reload` starts a new server at once, and says when it is done.
    let out = p.run(&["reload"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("config reloaded"), "{}", text(&out));
    // The log says who asked.
    assert!(
        p.daemon_output().contains("🔄 `reload`: reloading"),
        "{}",
        p.daemon_output()
    );
    assert_eq!(lines(&imports).len(), 4);
    assert_eq!(trigger_and_wait(&p, "ok", 5)["outcome"], "success");

    // A reload whose preload starts a thread is refused; the old server goes on serving.
    std::fs::write(
        p.path().join("jobs/threaded_at_import.py"),
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n",
    )
    .unwrap();
    p.set(
        "python.preload",
        toml::Value::Array(vec!["fixture_jobs".into(), "threaded_at_import".into()]),
    );
    let out = p.run(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("python.preload"), "{}", text(&out));
    // The refused server imported the module, then went; the run comes from the one before.
    assert_eq!(lines(&imports).len(), 5);
    let refused: i32 = lines(&imports)[4].parse().unwrap();
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(refused)));
    let ok = trigger_and_wait(&p, "ok", 6);
    assert_eq!(ok["outcome"], "success");
    let log = std::fs::read_to_string(p.log_dir().join("jobs/ok.log")).unwrap();
    let serving = lines(&imports)[3].clone();
    assert!(
        log.lines()
            .any(|l| l.contains("[run 6 hedge]") && l.contains(&format!("fork server {serving})"))),
        "{log}"
    );
    stop_clean(&p, daemon);
}

/// The binary built without the embedded interpreter: `.ci/run` builds it with
/// `cargo build --no-default-features --target-dir target/no-embedded`.
fn no_embedded_binary() -> Option<PathBuf> {
    let bin = std::env::var_os("HEDGE_NO_EMBEDDED_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/no-embedded/debug/hedge-scheduler"));
    bin.exists().then_some(bin)
}

#[test]
fn without_the_embedded_feature_no_libpython_is_linked_and_a_pyo3_job_is_a_config_error() {
    let Some(bin) = no_embedded_binary() else {
        crate::skip::skip(
            "no build without the embedded interpreter",
            "cargo build --no-default-features --target-dir target/no-embedded",
        );
        return;
    };
    let ldd = std::process::Command::new("ldd")
        .arg(&bin)
        .output()
        .unwrap();
    let linked = String::from_utf8_lossy(&ldd.stdout).to_string();
    assert!(ldd.status.success(), "{linked}");
    assert!(!linked.contains("libpython"), "{linked}");
    let ours = std::process::Command::new("ldd").arg(BIN).output();
    if let Ok(ours) = ours {
        // The default build does link it (the contrast this feature exists for).
        assert!(String::from_utf8_lossy(&ours.stdout).contains("libpython"));
    }

    let p = Project::new();
    p.config(
        "",
        "\n[jobs.emb]\nentry = \"fixture_jobs:noop\"\nschedule = \"0 0 0 1 1 *\"\nexecutor = \"pyo3\"\n",
    );
    let out = p.cmd_of(&bin, &["check-config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("config.toml:")
            && stderr.contains("[jobs.emb]")
            && stderr.contains("embedded"),
        "{stderr}"
    );

    // Fork and subprocess jobs run, with the interpreter of a venv of another Python version
    // where there is one.
    let p = Project::new();
    p.config(
        "",
        &[
            job("forked", "python_version", ""),
            "\n[jobs.sub]\nentry = \"fixture_jobs:python_version\"\nschedule = \"0 0 0 1 1 *\"\n"
                .to_string(),
        ]
        .concat(),
    );
    let expected = match other_python() {
        Some((python, version)) => {
            use_venv_of(&p, &python);
            Some(version)
        }
        None => None,
    };
    for id in ["forked", "sub"] {
        let out = p
            .cmd_of(&bin, &["run-once", id, "--json"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{id}: {}", text(&out));
        let row: Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(v) = &expected {
            let got = row["result"]["version"].as_str().unwrap();
            assert!(got.starts_with(&format!("{v}.")), "{id}: {got} vs {v}");
        }
    }
}

#[test]
fn fork_server_that_hangs_is_killed_and_the_run_goes_on_from_a_new_one() {
    let p = Project::new();
    let witness = p.path().join("witness.log");
    config_with_python(
        &p,
        "preload = [\"fixture_jobs\"]",
        &job("ok", "witness", &format!("args = {{ file = {witness:?} }}")),
    );
    let (daemon, server) = start_daemon(&p, &p.path().join("imports.log"));
    // Frozen: it takes requests into its socket and never answers.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server), Signal::SIGSTOP).unwrap();
    let ok = trigger_and_wait(&p, "ok", 1);
    assert_eq!(ok["outcome"], "success", "{ok}");
    // The row says the run went on a new server, and why.
    let executor = ok["executor"].as_str().unwrap();
    assert!(
        executor.starts_with("fork (on a new fork server:") && executor.contains("did not answer"),
        "{ok}"
    );
    let log = std::fs::read_to_string(p.log_dir().join("jobs/ok.log")).unwrap();
    assert!(log.contains("did not answer"), "{log}");
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(server)),
        "the hung server was not ended"
    );
    let servers = fork_servers(&p.daemon_output());
    assert_eq!(servers.len(), 2, "{}", p.daemon_output());
    assert!(pid_alive(servers[1]));
    // Exactly one execution, by the job's own record: the request the frozen server held was
    // never run.
    assert_eq!(runs_of(&p, "ok").len(), 1);
    let started: Vec<String> = lines(&witness)
        .into_iter()
        .filter(|l| l.starts_with("start"))
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    stop_clean(&p, daemon);
}

#[test]
fn fork_server_over_fork_max_memory_is_replaced_before_the_next_run() {
    let p = Project::new();
    let imports = p.path().join("imports.log");
    config_with_python(
        &p,
        "preload = [\"fixture_jobs\"]\nfork_max_memory = \"1MiB\"",
        &job("ok", "counter", ""),
    );
    let (daemon, _) = start_daemon(&p, &imports);
    assert_eq!(lines(&imports).len(), 1);
    // Any interpreter is over 1 MiB: each run comes from a server started for it.
    for n in 1..=2 {
        assert_eq!(trigger_and_wait(&p, "ok", n)["outcome"], "success");
    }
    let log = std::fs::read_to_string(p.log_dir().join("jobs/ok.log")).unwrap();
    assert!(log.contains("python.fork_max_memory"), "{log}");
    assert!(lines(&imports).len() >= 3, "{:?}", lines(&imports));
    stop_clean(&p, daemon);
}

#[test]
fn fork_server_started_from_a_remembered_interpreter_the_probe_contradicts_is_replaced() {
    let Some((other, other_version)) = other_python_or_skip() else {
        return;
    };
    let p = Project::new();
    config_with_python(&p, "", &job("which", "python_version", ""));
    let (daemon, _) = start_daemon(&p, &p.path().join("imports.log"));
    stop_clean(&p, daemon);
    // What the last start resolved, as if python3 had meant another interpreter then.
    let kept = p.log_dir().join("interpreter.json");
    let mut remembered: Value = serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
    let ours = remembered["resolved"].as_str().unwrap().to_string();
    remembered["resolved"] = Value::String(other.display().to_string());
    std::fs::write(&kept, remembered.to_string()).unwrap();

    let (daemon, server) = start_daemon(&p, &p.path().join("imports.log"));
    let ran = trigger_and_wait(&p, "which", 1);
    assert_eq!(ran["outcome"], "success", "{ran}");
    let version = ran["result"]["version"].as_str().unwrap();
    assert!(!version.starts_with(&format!("{other_version}.")), "{ran}");
    let exe = std::fs::read_link(format!("/proc/{server}/exe")).unwrap();
    assert_eq!(
        std::fs::canonicalize(&exe).unwrap(),
        std::fs::canonicalize(&ours).unwrap()
    );
    stop_clean(&p, daemon);
    // The probe's answer is remembered again.
    let again: Value = serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
    assert_eq!(again["resolved"], ours.as_str());
}

/// The fork server is its children's parent: a library the dynamic loader put in the daemon
/// (`LD_PRELOAD`) would be in every child it forks, environment or not. When no fork job
/// inherits the daemon's environment (`inherit_env = false`), the server does not either (seen
/// under the nemesis: the daemon's libfaketime broke its fork jobs' `time.sleep`).
#[test]
fn fork_jobs_that_inherit_nothing_get_nothing_the_daemon_preloaded() {
    if !crate::util::have_faketime() {
        return;
    }
    let lib = crate::util::libfaketime();
    let needle = lib
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("libfaketime")
        .to_string();
    for (inherit, want) in [("false", "absent"), ("true", "loaded")] {
        let p = Project::new();
        let record = p.path().join("maps.txt");
        config_with_python(
            &p,
            &format!("inherit_env = {inherit}"),
            &job(
                "probe",
                "mapped",
                &format!("args = {{ record = {record:?}, needle = {needle:?} }}"),
            ),
        );
        let lib = lib.clone();
        let daemon = p.spawn_daemon_with(&[], move |c| {
            c.env("LD_PRELOAD", &lib);
        });
        assert!(
            wait_until(Duration::from_secs(20), || p
                .log_dir()
                .join("control.sock")
                .exists()),
            "{}",
            p.daemon_output()
        );
        trigger_and_wait(&p, "probe", 1);
        assert_eq!(
            lines(&record),
            [format!("probe {want}")],
            "inherit_env = {inherit}: {}",
            p.daemon_output()
        );
        stop_clean(&p, daemon);
    }
}
