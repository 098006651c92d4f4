//! The daemon's life: one instance, stop, restart after SIGKILL, a zombie or stopped daemon,
//! `status` without a daemon, the old system's processes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

/// Holds an exclusive flock on `path` until the returned child is killed.
fn hold_flock(path: &Path) -> std::process::Child {
    python_holding(
        "import fcntl,sys,time\nf=open(sys.argv[1],'a')\nfcntl.flock(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\ntime.sleep(300)",
        path,
    )
}

fn wait_running(p: &Project) -> bool {
    wait_until(Duration::from_secs(20), || status_json(p).0 == Some(0))
}

#[test]
fn status_without_daemon_exits_3_and_still_reports_history() {
    let p = Project::new();
    p.config("", TICK);
    let out = p.run(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let s: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(s["daemon"]["running"], false);
    assert!(s["daemon"]["pid"].is_null());
    assert!(s["daemon"].get("started_at").is_some());
    assert!(s["jobs"][0]["last_outcome"].is_null());

    assert_eq!(p.run(&["run-once", "tick"]).status.code(), Some(0));
    let out = p.run(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let s: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let job = &s["jobs"][0];
    for key in [
        "job",
        "name",
        "running",
        "last_outcome",
        "last_started_at",
        "next_fire_at",
    ] {
        assert!(job.get(key).is_some(), "missing `{key}` in {job}");
    }
    assert_eq!(job["job"], "tick");
    assert_eq!(job["name"], "Every second");
    assert_eq!(job["running"], false);
    assert_eq!(job["last_outcome"], "success");
    let next = chrono::DateTime::parse_from_rfc3339(job["next_fire_at"].as_str().unwrap())
        .expect("next_fire_at is RFC 3339");
    assert_eq!(
        next.offset().local_minus_utc(),
        5 * 3600 + 1800,
        "IST offset"
    );

    let human = p.run(&["status"]);
    assert_eq!(human.status.code(), Some(3));
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("not running"), "{human}");
    assert!(human.contains("tick"), "{human}");

    let rows = p.history();
    for key in [
        "id",
        "job",
        "trigger",
        "scheduled_at",
        "started_at",
        "finished_at",
        "attempt",
        "outcome",
        "exit_code",
        "error",
        "result",
    ] {
        assert!(rows[0].get(key).is_some(), "missing `{key}` in {}", rows[0]);
    }
}

#[test]
fn a_zombie_daemon_counts_as_dead_at_restart() {
    let p = Project::new();
    let pid_file = p.path().join("job.pid");
    p.config(
        "shutdown_grace = \"1s\"",
        &fixture(
            "long",
            "sleepy_pid",
            "* * * * * *",
            &format!(
                "args = {{ pid_file = {:?} }}",
                pid_file.display().to_string()
            ),
        ),
    );
    let mut first = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || p.runs_with("running").len()
            == 1),
        "{}",
        p.daemon_output()
    );
    // Killed and not reaped: a zombie, as under a parent that is busy or gone wrong.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    let zombie = first.id() as i32;
    assert!(wait_until(Duration::from_secs(5), || !pid_alive(zombie)));
    assert!(
        std::path::Path::new(&format!("/proc/{zombie}")).exists(),
        "still a zombie"
    );
    let mut second = p.spawn_daemon();
    let abandoned = wait_until(Duration::from_secs(20), || {
        p.try_history().is_some_and(|rows| {
            rows.iter()
                .any(|r| r["outcome"] == "abandoned" && r["owner_pid"] == zombie)
        })
    });
    assert!(
        abandoned,
        "the zombie's running row was not abandoned: {}",
        p.daemon_output()
    );
    let status = signal_and_wait(&mut second, Signal::SIGTERM, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()));
    first.wait().unwrap();
}

#[test]
fn stop_refuses_a_pid_file_that_names_another_process() {
    let p = Project::new();
    p.config("", "");
    std::fs::create_dir_all(p.log_dir()).unwrap();
    let pid_path = p.log_dir().join("hedge-scheduler.pid");
    // An unrelated process that must survive `stop`.
    let mut bystander = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let mut locker = hold_flock(&pid_path);
    for (content, why) in [
        ("-1\n".to_string(), "can never be"),
        ("1\n".to_string(), "can never be"),
        (format!("{}\n", bystander.id()), "is not hedge-scheduler"),
        (format!("{}\n", locker.id()), "is not hedge-scheduler"),
        ("999999999\n".to_string(), "not running"),
    ] {
        std::fs::write(&pid_path, &content).unwrap();
        let out = p.run(&["stop"]);
        assert_eq!(out.status.code(), Some(1), "{content}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("refusing to stop") && err.contains(why),
            "{content}: {err}"
        );
        assert!(
            pid_alive(bystander.id() as i32),
            "{content}: the bystander was signalled"
        );
        assert!(pid_alive(locker.id() as i32));
    }
    locker.kill().unwrap();
    locker.wait().unwrap();
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    // The real daemon is stopped.
    std::fs::remove_file(&pid_path).unwrap();
    let mut daemon = p.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || p
        .run(&["status"])
        .status
        .success()));
    let out = p.run(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(daemon.wait().unwrap().success());
}

#[test]
fn stop_refuses_a_hedge_scheduler_that_does_not_hold_the_lock() {
    // Another folder's daemon: a real hedge-scheduler, alive, but not this folder's.
    let other = Project::new();
    other.config("", "");
    let mut theirs = other.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || other
        .run(&["status"])
        .status
        .success()));
    let p = Project::new();
    p.config("", "");
    std::fs::create_dir_all(p.log_dir()).unwrap();
    let pid_path = p.log_dir().join("hedge-scheduler.pid");
    let mut locker = hold_flock(&pid_path);
    std::fs::write(&pid_path, format!("{}\n", theirs.id())).unwrap();
    let out = p.run(&["stop"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not hold the lock"),
        "{}",
        text(&out)
    );
    assert!(
        theirs.try_wait().unwrap().is_none(),
        "another folder's daemon was stopped"
    );
    locker.kill().unwrap();
    locker.wait().unwrap();
    let status = signal_and_wait(&mut theirs, Signal::SIGTERM, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()));
}

#[test]
fn legacy_processes_of_other_users_are_reported_never_refused_nor_stopped() {
    let python = Path::new("/usr/bin/python3");
    if !nix::unistd::geteuid().is_root() || !python.exists() {
        crate::skip::skip(
            "needs root (setpriv) and /usr/bin/python3",
            "run as root, Debian package `python3`",
        );
        return;
    }
    // A script another user can read, named like the old system's (a name of this test only).
    let dir = tempfile::Builder::new()
        .prefix("hs-legacy-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.path().join("start_other_users_collector.py");
    std::fs::write(&script, "import time\ntime.sleep(120)\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut theirs = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(python)
        .arg(&script)
        .spawn()
        .expect("setpriv");
    let their_pid = theirs.id() as i32;
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read(format!("/proc/{their_pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("start_other_users_collector"))
    }));
    for policy in ["refuse", "stop"] {
        let p = Project::new();
        p.config(
            &format!(
                "legacy = \"{policy}\"\nlegacy_scripts = [\"start_other_users_collector.py\"]\nhealth_interval = \"1s\""
            ),
            &fixture("tick", "noop", "* * * * * *", ""),
        );
        let mut daemon = p.spawn_daemon();
        // It starts, and says what it saw.
        let said = wait_until(Duration::from_secs(20), || {
            let out = p.run(&["status", "--json"]);
            serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| {
                v["warnings"].as_array().is_some_and(|w| {
                    w.iter().any(|w| {
                        w.as_str()
                            .is_some_and(|w| w.contains("other users") && w.contains("user 65534"))
                    })
                })
            })
        });
        assert!(said, "{policy}: {}", p.daemon_output());
        assert!(
            p.daemon_output().contains("never refused nor stopped"),
            "{}",
            p.daemon_output()
        );
        assert!(
            pid_alive(their_pid),
            "{policy}: another user's process was stopped"
        );
        let status = signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(30));
        assert!(status.is_some_and(|s| s.success()));
    }
    theirs.kill().unwrap();
    theirs.wait().unwrap();
}

#[test]
fn a_second_daemon_is_refused_after_the_pid_file_is_deleted() {
    let p = Project::new();
    p.config("", &fixture("tick", "noop", "* * * * * *", ""));
    let mut first = p.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || p
        .run(&["status"])
        .status
        .success()));
    std::fs::remove_file(p.log_dir().join("hedge-scheduler.pid")).unwrap();
    // `status` still sees it, by the folder's lock.
    let out = p.run(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["daemon"]["pid"], first.id(), "{v}");
    // A second daemon is refused, naming the first.
    let second = p.cmd(&["run"]).output().unwrap();
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    assert!(
        text(&second).contains(&format!("already running (PID {}", first.id())),
        "{}",
        text(&second)
    );
    // `stop` finds and stops it all the same.
    let out = p.run(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(first.wait().unwrap().success());
}

#[test]
fn stop_ends_a_daemon_that_was_sigstopped() {
    let p = Project::new();
    p.config("", &fixture("tick", "noop", "* * * * * *", ""));
    let mut daemon = p.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || p
        .run(&["status"])
        .status
        .success()));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        Signal::SIGSTOP,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = p.run(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(daemon.wait().unwrap().success());
    // Well inside stop's own deadline (shutdown_grace + kill_grace + 15 s).
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn one_instance_and_a_restart_after_kill_9() {
    let p = Project::new();
    p.config("", &job("tick", TICK_JOB));
    let mut first = p.spawn_daemon();
    assert!(wait_running(&p));
    let second = p.run(&["run"]);
    assert_ne!(second.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!(
            "hedge-scheduler is already running (PID {}, since",
            first.id()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("IST"), "{stderr}");
    first.kill().unwrap();
    first.wait().unwrap();
    // The PID file is still there, but its lock died with the process.
    assert!(p.log_dir().join("hedge-scheduler.pid").exists());
    let third = p.spawn_daemon();
    assert!(wait_running(&p), "a restart after kill -9 was blocked");
    assert_eq!(status_json(&p).1["daemon"]["pid"], third.id());
    stop_clean(&p, third);
}

#[test]
fn legacy_processes_are_refused_warned_about_or_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("start_options_collector_background.py");
    std::fs::write(&script, "import time\ntime.sleep(120)\n").unwrap();
    let legacy = || {
        std::process::Command::new("python3")
            .arg(&script)
            .spawn()
            .unwrap()
    };
    let mut old = legacy();
    // An editor (here: tail) holding the file is not the old system.
    let mut viewer = std::process::Command::new("tail")
        .arg("-f")
        .arg(&script)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let p = Project::new();
    p.config("legacy = \"refuse\"", &job("tick", TICK_JOB));
    let out = p.run(&["run"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("PID {}", old.id())), "{stderr}");
    assert!(
        stderr.contains("start_options_collector_background.py"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&format!("PID {}", viewer.id())),
        "{stderr}"
    );

    let p = Project::new();
    p.config("legacy = \"warn\"", &job("tick", TICK_JOB));
    let daemon = p.spawn_daemon();
    assert!(wait_running(&p));
    let out = stop_clean(&p, daemon);
    assert!(
        out.contains(&format!("the old system is running: PID {}", old.id())),
        "{out}"
    );
    assert!(pid_alive(old.id() as i32));

    let p = Project::new();
    p.config(
        "legacy = \"stop\"\nkill_grace = \"1s\"",
        &job("tick", TICK_JOB),
    );
    let text_ = std::fs::read_to_string(p.config_path()).unwrap();
    std::fs::write(
        p.config_path(),
        text_.replacen("kill_grace = \"2s\"\n", "", 1),
    )
    .unwrap();
    let daemon = p.spawn_daemon();
    assert!(wait_running(&p));
    let _ = old.wait();
    assert!(
        !pid_alive(old.id() as i32),
        "the old system's process was not stopped"
    );
    let _ = stop_clean(&p, daemon);
    assert!(
        pid_alive(viewer.id() as i32),
        "the viewer must be left alone"
    );

    // Nothing of the old system runs now: the default (refuse) starts.
    old = legacy();
    old.kill().unwrap();
    old.wait().unwrap();
    let p = Project::new();
    p.config("legacy = \"refuse\"", &job("tick", TICK_JOB));
    let daemon = p.spawn_daemon();
    assert!(wait_running(&p));
    let _ = stop_clean(&p, daemon);
    viewer.kill().unwrap();
    viewer.wait().unwrap();
}

#[test]
fn sigterm_cancels_a_long_run_and_lets_a_short_one_finish() {
    let pid_file_dir = tempfile::tempdir().unwrap();
    let pid_file = pid_file_dir.path().join("job.pid");
    let p = Project::new();
    p.config(
        "shutdown_grace = \"1s\"",
        &job("long", &format!("entry = \"fixture_jobs:sleepy_pid\"\nschedule = \"* * * * * *\"\nmarket_hours = false\nargs = {{ pid_file = {pid_file:?} }}")),
    );
    let daemon = p.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || pid_file.exists()
        && !p.runs_with("running").is_empty()));
    let job_pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = stop_clean(&p, daemon);
    let rows = p.history();
    let long = rows
        .iter()
        .find(|r| r["outcome"] == "cancelled")
        .expect("a cancelled row");
    assert!(
        long["error"].as_str().unwrap().contains("shutting down"),
        "{long}"
    );
    assert!(p.runs_with("running").is_empty());
    assert!(!pid_alive(job_pid), "the job outlived the daemon");
    assert!(!p.log_dir().join("hedge-scheduler.pid").exists());

    let p = Project::new();
    p.config(
        "shutdown_grace = \"10s\"",
        &job("short", "entry = \"fixture_jobs:slow\"\nschedule = \"* * * * * *\"\nmarket_hours = false\nargs = { seconds = 1.5 }"),
    );
    let daemon = p.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || p
        .log_dir()
        .join("history.sqlite3")
        .exists()
        && !p.runs_with("running").is_empty()));
    let _ = stop_clean(&p, daemon);
    assert!(!p.runs_with("success").is_empty(), "{:#?}", p.history());
    assert!(p.runs_with("cancelled").is_empty(), "{:#?}", p.history());
}

#[test]
fn kill_9_mid_run_ends_the_job_and_a_restart_abandons_the_row() {
    let pid_dir = tempfile::tempdir().unwrap();
    let pid_file = pid_dir.path().join("job.pid");
    let p = Project::new();
    let at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let pattern = at
        .with_timezone(&chrono_tz::Asia::Kolkata)
        .format("%S %M %H * * *")
        .to_string();
    p.config(
        "",
        &job("orphan", &format!("entry = \"fixture_jobs:sleepy_pid\"\nschedule = \"{pattern}\"\nmarket_hours = false\ncatch_up = \"none\"\nargs = {{ pid_file = {pid_file:?} }}")),
    );
    let mut daemon = p.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || pid_file.exists()
        && !p.runs_with("running").is_empty()));
    let job_pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    // The job dies with its daemon (its keeper ends the run's group or cgroup).
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(job_pid)),
        "the job outlived its daemon"
    );

    let daemon = p.spawn_daemon();
    assert!(wait_running(&p));
    // The row is written by the history writer a moment later.
    assert!(wait_until(
        Duration::from_secs(10),
        || p.history()[0]["outcome"] == "abandoned"
    ));
    let rows = p.history();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["outcome"], "abandoned");
    let _ = stop_clean(&p, daemon);
}

#[test]
fn heartbeat_ages_and_a_stopped_daemon_is_not_responding() {
    let p = Project::new();
    p.config("health_interval = \"1s\"", &job("tick", TICK_JOB));
    let daemon = p.spawn_daemon();
    assert!(wait_running(&p));
    assert!(wait_until(Duration::from_secs(10), || {
        status_json(&p).1["daemon"]["heartbeat_age_seconds"]
            .as_i64()
            .is_some()
    }));
    let (_, s) = status_json(&p);
    assert_eq!(s["daemon"]["responding"], true, "{s}");
    assert!(s["daemon"]["heartbeat_age_seconds"].as_i64().unwrap() <= 2);

    sig_pid(daemon.id(), Signal::SIGSTOP);
    let stale = wait_until(Duration::from_secs(10), || {
        status_json(&p).1["daemon"]["responding"] == false
    });
    let human = p.run(&["status"]);
    sig_pid(daemon.id(), Signal::SIGCONT);
    assert!(stale);
    assert!(String::from_utf8_lossy(&human.stdout).contains("not responding"));
    assert!(wait_until(Duration::from_secs(10), || {
        status_json(&p).1["daemon"]["responding"] == true
    }));
    let _ = stop_clean(&p, daemon);
}

#[test]
fn stop_command_and_an_unwritable_log_dir() {
    let p = Project::new();
    p.config("", &job("tick", TICK_JOB));
    let out = p.run(&["stop"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let mut daemon = p.spawn_daemon();
    assert!(wait_running(&p));
    let out = p.run(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped"));
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    assert_eq!(status_json(&p).0, Some(3));

    // A log_dir that cannot be a folder: a clear error before anything starts.
    let q = Project::new();
    std::fs::write(q.path().join("not-a-dir"), "").unwrap();
    q.config("", &job("tick", TICK_JOB));
    q.set("scheduler.log_dir", "not-a-dir/logs");
    let out = q.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("scheduler.log_dir") && stderr.contains("not-a-dir/logs"),
        "{stderr}"
    );
}
