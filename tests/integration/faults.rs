//! Containment and security, through the binary: each test is a fault a hostile operator or a
//! misbehaving job brought about, named for it. Jobs record what really happened in files of
//! their own, so assertions count what ran, not only our rows.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

/// `[jobs.<id>]` running `fixture_jobs:<function>` on `schedule`, outside market hours, with
/// `extra` TOML lines.
fn fixture(id: &str, function: &str, schedule: &str, extra: &str) -> String {
    job(
        id,
        &format!(
            "entry = \"fixture_jobs:{function}\"\nschedule = \"{schedule}\"\nmarket_hours = false\n{extra}"
        ),
    )
}

/// The lines of a witness file (`start <uid> <pid>` / `end <uid>`).
fn witnessed(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn history_deleted_mid_run_keeps_each_run_on_its_own_row() {
    let p = Project::new();
    let long = p.path().join("long.witness");
    let quick = p.path().join("quick.witness");
    let jobs = fixture(
        "long",
        "witness",
        "* * * * * *",
        &format!(
            "args = {{ file = {:?}, seconds = 300 }}",
            long.display().to_string()
        ),
    ) + &fixture(
        "quick",
        "witness",
        "0 0 0 1 1 *",
        &format!("args = {{ file = {:?} }}", quick.display().to_string()),
    );
    p.config("shutdown_grace = \"1s\"", &jobs);
    let mut daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || !witnessed(&long).is_empty()),
        "{}",
        p.daemon_output()
    );
    let long_pid: i32 = witnessed(&long)[0][2].parse().unwrap();
    assert!(wait_until(Duration::from_secs(10), || p
        .runs_with("running")
        .len()
        == 1));
    // An operator removes the history mid-run (restoring a backup does the same).
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!(
            "{}{ext}",
            p.log_dir().join("history.sqlite3").display()
        ));
    }
    // Another process starts afresh in the new file: its first run id collides with ours.
    let out = p.run(&["run-once", "quick", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "success", "{report}");
    // Its cleanup did not touch the long run.
    assert!(
        pid_alive(long_pid),
        "the quick run's cleanup ended the long run"
    );
    assert_eq!(witnessed(&quick).len(), 2, "the quick run ran to its end");
    // The long run ends (the daemon stops): its end lands on its own row.
    let status = signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", p.daemon_output());
    let rows = p.history();
    let runs: Vec<&Value> = rows.iter().filter(|r| r["outcome"] != "skipped").collect();
    let q: Vec<&&Value> = runs.iter().filter(|r| r["job"] == "quick").collect();
    assert_eq!(q.len(), 1, "{rows:#?}");
    assert_eq!(q[0]["outcome"], "success", "{rows:#?}");
    assert_eq!(q[0]["exit_code"], 0, "{rows:#?}");
    assert_eq!(q[0]["run_uid"], report["run_uid"]);
    let l: Vec<&&Value> = runs.iter().filter(|r| r["job"] == "long").collect();
    assert_eq!(
        l.len(),
        1,
        "the long run's row was written again: {rows:#?}"
    );
    assert_eq!(l[0]["outcome"], "cancelled", "{rows:#?}");
    assert_ne!(l[0]["id"], q[0]["id"]);
    assert_eq!(
        l[0]["run_uid"].as_str(),
        Some(witnessed(&long)[0][1].as_str()),
        "the row is the run the job saw"
    );
    assert!(!pid_alive(long_pid));
}

/// A config whose one job, `df`, leaves a double-forked, setsid, environment-less descendant.
fn double_fork_project(
    containment: &str,
    keep_stdout: bool,
    executor: &str,
) -> (Project, std::path::PathBuf) {
    let p = Project::new();
    let pid_file = p.path().join("descendant.pid");
    p.config(
        &format!("containment = \"{containment}\""),
        &fixture(
            "df",
            "double_fork",
            "0 0 0 1 1 *",
            &format!(
                "args = {{ pid_file = {:?}, keep_stdout = {keep_stdout} }}\nexecutor = \"{executor}\"",
                pid_file.display().to_string()
            ),
        ),
    );
    (p, pid_file)
}

/// Whether this host lets us make a cgroup per run (root with a writable cgroup v2).
fn cgroups_here() -> bool {
    let p = Project::new();
    p.config("containment = \"cgroup\"", "");
    let out = p.run(&["run-once", "nothing"]);
    !String::from_utf8_lossy(&out.stderr).contains("is not possible here")
}

fn assert_nothing_outlives_the_run(containment: &str, keep_stdout: bool, executor: &str) {
    let (p, pid_file) = double_fork_project(containment, keep_stdout, executor);
    let out = p.run(&["run-once", "df", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let row: Value = serde_json::from_slice(&out.stdout).unwrap();
    let descendant = read_pid(&pid_file).expect("the job recorded its descendant");
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(descendant)),
        "{containment}, {executor}: the double-forked descendant {descendant} outlived its run"
    );
    // A descendant holding the run's stdout does not hold the run: a short, bounded drain.
    let ms = row["duration_ms"].as_i64().unwrap();
    assert!(
        ms < 5_000,
        "{containment}, {executor}: the run took {ms} ms: {row}"
    );
    assert_eq!(row["executor"], executor, "{row}");
    let log = std::fs::read_to_string(p.log_dir().join("jobs/df.log")).unwrap();
    assert!(
        log.contains("escaped a run") || log.contains("left in the run's cgroup"),
        "{log}"
    );
}

/// A descendant that ignores SIGTERM and forks-and-exits every 0.2 s (a new PID each time).
fn assert_a_hopping_descendant_is_ended(containment: &str, executor: &str) {
    let p = Project::new();
    let pids = p.path().join("hopper.pids");
    p.config(
        &format!("containment = \"{containment}\""),
        &fixture(
            "hop",
            "hopper",
            "0 0 0 1 1 *",
            &format!(
                "args = {{ pid_file = {:?} }}\nexecutor = \"{executor}\"",
                pids.display().to_string()
            ),
        ),
    );
    let out = p.run(&["run-once", "hop"]);
    assert!(out.status.success(), "{}", text(&out));
    let all = || -> Vec<i32> {
        std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    assert!(!all().is_empty(), "the hopper never started");
    let gone = wait_until(Duration::from_secs(5), || {
        all().iter().all(|p| !pid_alive(*p))
    });
    let alive: Vec<i32> = all().into_iter().filter(|p| pid_alive(*p)).collect();
    for pid in &alive {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL);
    }
    assert!(
        gone,
        "{containment}, {executor}: the hopper outlived its run: {alive:?}"
    );
    // And it stays gone: no new PID after a while.
    let n = all().len();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        all().len(),
        n,
        "{containment}, {executor}: the hopper still hops"
    );
}

#[test]
fn a_descendant_that_hops_to_new_pids_is_ended_with_its_run() {
    for executor in ["subprocess", "fork"] {
        assert_a_hopping_descendant_is_ended("subreaper", executor);
        if cgroups_here() {
            assert_a_hopping_descendant_is_ended("cgroup", executor);
        }
    }
}

#[test]
fn double_forked_setsid_envless_descendant_is_ended_with_its_run_subreaper() {
    assert_nothing_outlives_the_run("subreaper", false, "subprocess");
    assert_nothing_outlives_the_run("subreaper", true, "subprocess");
}

#[test]
fn fork_double_forked_setsid_envless_descendant_is_ended_with_its_run() {
    assert_nothing_outlives_the_run("subreaper", false, "fork");
    assert_nothing_outlives_the_run("subreaper", true, "fork");
    if cgroups_here() {
        assert_nothing_outlives_the_run("cgroup", false, "fork");
        assert_nothing_outlives_the_run("cgroup", true, "fork");
    }
}

#[test]
fn double_forked_setsid_envless_descendant_is_ended_with_its_run_cgroup() {
    if !cgroups_here() {
        // Said plainly rather than passed silently: CI runs as root, where this runs.
        crate::skip::skip(
            "no writable cgroup v2 here (not root, no delegation)",
            "run as root, or with a delegated cgroup",
        );
        assert!(
            std::env::var_os("CI").is_none() || !nix::unistd::geteuid().is_root(),
            "CI runs as root: cgroups must be available"
        );
        return;
    }
    assert_nothing_outlives_the_run("cgroup", false, "subprocess");
    assert_nothing_outlives_the_run("cgroup", true, "subprocess");
}

/// A daemon running a Python job (with a child in its group) and a shell command (with
/// children), SIGKILLed: everything of its runs dies with it.
fn assert_runs_die_with_a_killed_daemon(containment: &str, executor: &str) {
    let p = Project::new();
    let py_pids = p.path().join("py.pid");
    let sh_pid = p.path().join("sh.pid");
    let jobs = fixture(
        "py",
        "sleepy",
        "* * * * * *",
        &format!(
            "args = {{ pid_file = {:?} }}\nexecutor = \"{executor}\"",
            py_pids.display().to_string()
        ),
    ) + &job(
        "sh",
        &format!(
            "command = [\"sh\", \"-c\", \"sleep 300 & echo $$ $! > {}; sleep 300\"]\nschedule = \"* * * * * *\"\nmarket_hours = false",
            sh_pid.display()
        ),
    );
    p.config(&format!("containment = \"{containment}\""), &jobs);
    let mut daemon = p.spawn_daemon();
    let pids = |f: &Path| -> Vec<i32> {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(20), || pids(&py_pids).len() == 2
            && pids(&sh_pid).len() == 2),
        "{}",
        p.daemon_output()
    );
    let mut all: Vec<i32> = pids(&py_pids).into_iter().chain(pids(&sh_pid)).collect();
    // The fork server goes with its daemon too.
    all.extend(fork_servers(&p.daemon_output()));
    assert_eq!(
        fork_servers(&p.daemon_output()).len(),
        usize::from(executor == "fork"),
        "{}",
        p.daemon_output()
    );
    assert!(all.iter().all(|p| pid_alive(*p)));
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || all
            .iter()
            .all(|p| !pid_alive(*p))),
        "{containment}, {executor}: processes of the runs outlived their daemon: {:?}",
        all.iter().filter(|p| pid_alive(**p)).collect::<Vec<_>>()
    );
}

#[test]
fn job_processes_die_with_a_sigkilled_daemon() {
    assert_runs_die_with_a_killed_daemon("subreaper", "subprocess");
    if cgroups_here() {
        assert_runs_die_with_a_killed_daemon("cgroup", "subprocess");
    }
}

#[test]
fn fork_job_processes_and_their_server_die_with_a_sigkilled_daemon() {
    assert_runs_die_with_a_killed_daemon("subreaper", "fork");
    if cgroups_here() {
        assert_runs_die_with_a_killed_daemon("cgroup", "fork");
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

/// Runs a Python `script` (with `arg`) that takes a lock, prints `locked` and holds it until the
/// returned child is killed.
fn python_holding(script: &str, arg: &Path) -> std::process::Child {
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

/// Holds an exclusive flock on `path` until the returned child is killed.
fn hold_flock(path: &Path) -> std::process::Child {
    python_holding(
        "import fcntl,sys,time\nf=open(sys.argv[1],'a')\nfcntl.flock(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\ntime.sleep(300)",
        path,
    )
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

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn files_the_scheduler_creates_are_private_and_jobs_keep_the_users_umask() {
    let p = Project::new();
    let witness = p.path().join("made-by-the-job.txt");
    p.config(
        "health_interval = \"1s\"",
        &fixture(
            "w",
            "witness",
            "* * * * * *",
            &format!("args = {{ file = {:?} }}", witness.display().to_string()),
        ),
    );
    let mut daemon = p.spawn_daemon();
    let logs = p.log_dir();
    assert!(
        wait_until(Duration::from_secs(20), || logs
            .join("hedge-scheduler.state.json")
            .exists()
            && !p.runs_with("success").is_empty()),
        "{}",
        p.daemon_output()
    );
    for dir in ["", "jobs", "locks", "runtime"] {
        assert_eq!(mode_of(&logs.join(dir)), 0o700, "folder `{dir}`");
    }
    for file in [
        "history.sqlite3",
        "history.sqlite3-wal",
        "hedge-scheduler.pid",
        "hedge-scheduler.state.json",
        "jobs/w.log",
        "locks/w.lock",
    ] {
        assert_eq!(mode_of(&logs.join(file)), 0o600, "file `{file}`");
    }
    for entry in std::fs::read_dir(&logs).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            assert_eq!(mode_of(&entry.path()), 0o600, "{}", entry.path().display());
        }
    }
    // The job's own files follow the umask the scheduler was started with (this test's).
    let umask = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
        .unwrap();
    assert_eq!(mode_of(&witness), 0o666 & !umask);
    let status = signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()));
    // Files an older version left readable are made private at the next start.
    std::fs::set_permissions(
        logs.join("jobs/w.log"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // Nothing else in the folder is touched: a file of someone else's keeps its mode, and an
    // existing log folder its own.
    let foreign = logs.join("notes.txt");
    std::fs::write(&foreign, b"mine").unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = p.run(&["run-once", "w"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode_of(&logs.join("jobs/w.log")), 0o600);
    assert_eq!(mode_of(&foreign), 0o644);
    assert_eq!(mode_of(&logs), 0o755);
    // A log folder others may write in (a shared folder, /tmp) is refused, and left as it is.
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = p.run(&["run-once", "w"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("`scheduler.log_dir`")
            && text(&out).contains("other users may write in it"),
        "{}",
        text(&out)
    );
    assert_eq!(mode_of(&logs) & 0o7777, 0o1777);
    assert_eq!(mode_of(&foreign), 0o644);
}

#[test]
fn symlinks_planted_in_log_dir_are_never_followed() {
    let p = Project::new();
    p.config("", &fixture("w", "noop", "0 0 0 1 1 *", ""));
    // No shared temporary folder is used: nothing appears in TMPDIR.
    let tmp = tempfile::tempdir().unwrap();
    let out = p
        .cmd(&["run-once", "w"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    let victim = p.path().join("victim.txt");
    let plant = |name: &str| {
        std::fs::write(&victim, b"precious").unwrap();
        let link = p.log_dir().join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        link
    };
    // A job log: the run fails, saying why, and is recorded; the target is untouched.
    let link = plant("jobs/w.log");
    let out = p.run(&["run-once", "w"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("symbolic link"), "{}", text(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let row = &p.history()[0];
    assert_eq!(row["outcome"], "failed", "{row}");
    assert!(
        row["error"].as_str().unwrap().contains("could not start"),
        "{row}"
    );
    std::fs::remove_file(link).unwrap();
    // The runtime folder (where results come back): a link in its place is refused.
    std::fs::remove_dir_all(p.log_dir().join("runtime")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), p.log_dir().join("runtime")).unwrap();
    let out = p.run(&["run-once", "w"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("runtime"), "{}", text(&out));
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    std::fs::remove_file(p.log_dir().join("runtime")).unwrap();
    // The job's lock.
    let link = plant("locks/w.lock");
    let out = p.run(&["run-once", "w"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("symbolic link"), "{}", text(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    std::fs::remove_file(link).unwrap();
    // The daemon's log: the daemon refuses to start.
    let link = plant("hedge-scheduler.log");
    let out = p.run(&["run"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("symbolic link"), "{}", text(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    std::fs::remove_file(link).unwrap();
    // The PID file: the daemon refuses to start.
    let link = plant("hedge-scheduler.pid");
    let out = p.run(&["run"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("symbolic link"), "{}", text(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    std::fs::remove_file(link).unwrap();
    // The history.
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!(
            "{}{ext}",
            p.log_dir().join("history.sqlite3").display()
        ));
    }
    let _link = plant("history.sqlite3");
    let out = p.run(&["run-once", "w"]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    // The state file is replaced by a rename, never written through.
    std::fs::remove_file(p.log_dir().join("history.sqlite3")).unwrap();
    let _state = plant("hedge-scheduler.state.json");
    p.config(
        "health_interval = \"1s\"",
        &fixture("w", "noop", "0 0 0 1 1 *", ""),
    );
    let mut daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::symlink_metadata(
            p.log_dir().join("hedge-scheduler.state.json")
        )
        .is_ok_and(|m| m.file_type().is_file())),
        "{}",
        p.daemon_output()
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let status = signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(30));
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
fn check_config_refuses_a_missing_function_and_warns_of_a_cron_that_never_fires() {
    let p = Project::new();
    p.config("", &fixture("typo", "no_such_function", "* * * * * *", ""));
    let out = p.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "`entry` of [jobs.typo]: module `fixture_jobs` has no function `no_such_function`"
        ),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    p.config("", &fixture("feb30", "noop", "0 0 0 30 2 *", ""));
    let out = p.run(&["check-config"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("[jobs.feb30] never fires"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_run_that_finished_while_the_daemon_was_dead_is_recorded_as_it_went() {
    let p = Project::new();
    let witness = p.path().join("w.witness");
    p.config(
        "",
        &fixture(
            "w",
            "witness",
            "* * * * * *",
            &format!(
                "args = {{ file = {:?}, seconds = 1.5 }}",
                witness.display().to_string()
            ),
        ),
    );
    let mut daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || !witnessed(&witness).is_empty()),
        "{}",
        p.daemon_output()
    );
    let uid = witnessed(&witness)[0][1].clone();
    // The daemon is frozen while its run ends and leaves its result, then killed.
    let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
    nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
    let result = p.log_dir().join("runtime").join(format!("{uid}.json"));
    let left = wait_until(Duration::from_secs(10), || result.exists());
    nix::sys::signal::kill(pid, Signal::SIGKILL).unwrap();
    daemon.wait().unwrap();
    assert!(left, "the run left no result");
    assert_eq!(witnessed(&witness).len(), 2, "the run finished");
    p.config(
        "",
        &fixture(
            "w",
            "witness",
            "0 0 0 1 1 *",
            &format!("args = {{ file = {:?} }}", witness.display().to_string()),
        ),
    );
    let mut second = p.spawn_daemon();
    let recorded = wait_until(Duration::from_secs(20), || {
        p.try_history().is_some_and(|rows| {
            rows.iter()
                .any(|r| r["run_uid"] == uid.as_str() && r["outcome"] != "running")
        })
    });
    assert!(recorded, "{}", p.daemon_output());
    let row = p
        .history()
        .into_iter()
        .find(|r| r["run_uid"] == uid.as_str())
        .unwrap();
    assert_eq!(row["outcome"], "success", "{row}");
    assert_eq!(row["result"]["run_uid"], uid.as_str(), "{row}");
    assert!(
        row["error"]
            .as_str()
            .unwrap_or_default()
            .contains("while the scheduler was down"),
        "{row}"
    );
    assert!(!result.exists());
    let status = signal_and_wait(&mut second, Signal::SIGTERM, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()));
}

/// A small tmpfs mounted on `dir` for the length of a test (root only), unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }

    /// Fills it up; returns the filler's path.
    fn fill(&self) -> std::path::PathBuf {
        let filler = self.0.join("filler");
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", filler.display()))
            .stderr(std::process::Stdio::null())
            .status();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn disk_full_then_sigterm_keeps_every_row_and_exits_non_zero() {
    let p = Project::new();
    let Some(disk) = SmallDisk::mount(&p.path().join("disk"), "16m") else {
        crate::skip::skip("cannot mount a tmpfs here", "run as root");
        assert!(
            std::env::var_os("CI").is_none() || !nix::unistd::geteuid().is_root(),
            "CI runs as root: the full-disk test must run"
        );
        return;
    };
    let witness = p.path().join("w.witness");
    let jobs = fixture(
        "w",
        "witness",
        "* * * * * *",
        &format!("args = {{ file = {:?} }}", witness.display().to_string()),
    );
    p.config("", &jobs)
        .set("scheduler.log_dir", "disk/logs")
        .set("scheduler.history", "disk/logs/history.sqlite3");
    let ends = || {
        witnessed(&witness)
            .iter()
            .filter(|l| l.first().is_some_and(|w| w == "end"))
            .count()
    };
    let mut daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || ends() >= 2),
        "{}",
        p.daemon_output()
    );
    let filler = disk.fill();
    let full_at = ends();
    // Runs go on while nothing can be written.
    assert!(
        wait_until(Duration::from_secs(30), || ends() >= full_at + 6),
        "{}",
        p.daemon_output()
    );
    let status = signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(40));
    let out = p.daemon_output();
    assert!(
        status.is_some_and(|s| !s.success()),
        "a stop that left rows unwritten must not exit 0: {status:?}\n{out}"
    );
    assert!(out.contains("are kept in"), "{out}");
    let ran = ends();
    // Space again: the next process writes what was kept, in order, before anything else.
    std::fs::remove_file(filler).unwrap();
    let out = p.run(&["run-once", "w"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows = p.history();
    let successes: Vec<&Value> = rows
        .iter()
        .filter(|r| r["job"] == "w" && r["outcome"] == "success")
        .collect();
    assert_eq!(
        successes.len(),
        ran + 1,
        "every run the job made has its row (+ the run-once): {rows:#?}"
    );
    assert!(rows.iter().all(|r| r["outcome"] != "running"), "{rows:#?}");
    // Each row is the run the job saw.
    let uids: std::collections::BTreeSet<String> = witnessed(&witness)
        .iter()
        .filter(|l| l[0] == "end")
        .map(|l| l[1].clone())
        .collect();
    let row_uids: std::collections::BTreeSet<String> = successes
        .iter()
        .map(|r| r["run_uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(uids, row_uids);
}

#[test]
fn pyo3_and_subprocess_report_alike_bytes_raises_big_results_and_self_signals() {
    let p = Project::new();
    let mut jobs = String::new();
    for executor in ["subprocess", "pyo3"] {
        for f in [
            "bytes_out",
            "boom",
            "big_result",
            "self_segv",
            "signal_from_thread",
        ] {
            jobs += &fixture(
                &format!("{f}_{executor}"),
                f,
                "0 0 0 1 1 *",
                &format!("executor = \"{executor}\""),
            );
        }
    }
    p.config("", &jobs);
    let run = |id: &str| {
        let out = p.run(&["run-once", id, "--json"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let log = |id: &str| {
        std::fs::read_to_string(p.log_dir().join(format!("jobs/{id}.log"))).unwrap_or_default()
    };
    for executor in ["subprocess", "pyo3"] {
        // Bytes through sys.stdout.buffer reach the log under both.
        let id = format!("bytes_out_{executor}");
        let (code, out) = run(&id);
        assert_eq!(code, Some(0), "{id}: {out}");
        assert!(log(&id).contains("bytes-out é"), "{id}: {}", log(&id));
        if executor == "pyo3" {
            assert!(
                log(&id).contains("no file descriptor of its own"),
                "{}",
                log(&id)
            );
        }
        // A raise is exit code 1 under both.
        let id = format!("boom_{executor}");
        let (code, out) = run(&id);
        assert_eq!(code, Some(1));
        let row: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(row["outcome"], "failed", "{id}: {row}");
        assert_eq!(row["exit_code"], 1, "{id}: {row}");
        // Any JSON Python writes is stored as it is.
        let id = format!("big_result_{executor}");
        let (code, out) = run(&id);
        assert_eq!(code, Some(0), "{id}: {out}");
        assert!(
            out.contains(&format!("\"big\": 1{}", "0".repeat(400))),
            "{id}: {out}"
        );
        assert!(
            out.contains(&format!("{}{}", "[".repeat(300), "]".repeat(300))),
            "{id}"
        );
        let history = p.run(&["history", &id, "--json"]);
        assert!(String::from_utf8_lossy(&history.stdout).contains(&"0".repeat(400)));
        if executor == "pyo3" {
            // From a thread it starts, or at the scheduler's group, or at every process: refused.
            let id = "signal_from_thread_pyo3";
            let (code, out) = run(id);
            assert_eq!(code, Some(1), "{id}: {out}");
            let row: Value = serde_json::from_str(&out).unwrap();
            assert!(
                row["error"]
                    .as_str()
                    .unwrap()
                    .contains("may not signal its own process"),
                "{row}"
            );
        }
        // A signal the job sends its own process: the subprocess crashes, the pyo3 job is
        // refused (it would have hit the scheduler).
        let id = format!("self_segv_{executor}");
        let (code, out) = run(&id);
        assert_eq!(code, Some(1), "{id}: {out}");
        let row: Value = serde_json::from_str(&out).unwrap();
        if executor == "subprocess" {
            assert_eq!(row["outcome"], "crashed", "{row}");
            assert_eq!(row["signal"], "SIGSEGV", "{row}");
        } else {
            assert_eq!(row["outcome"], "failed", "{row}");
            assert!(
                row["error"]
                    .as_str()
                    .unwrap()
                    .contains("may not signal its own process"),
                "{row}"
            );
        }
    }
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
fn a_link_swapped_in_for_a_pyo3_jobs_log_is_not_written_through() {
    let p = Project::new();
    p.config(
        "",
        &fixture("talk", "noop", "* * * * * *", "executor = \"pyo3\""),
    );
    let log = p.log_dir().join("jobs/talk.log");
    let mut daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("noop talk"))),
        "{}",
        p.daemon_output()
    );
    let victim = p.path().join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::rename(&log, p.path().join("talk.log.moved")).unwrap();
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let seen = p.history().len();
    assert!(wait_until(Duration::from_secs(20), || p.history().len() >= seen + 3));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let status = signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()));
}

/// The `hedge-keeper` children of `daemon`.
fn keepers_of(daemon: u32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let comm = stat.split('(').nth(1).and_then(|r| r.split(')').next());
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            comm == Some("hedge-keeper") && ppid == Some(daemon) && pid_alive(*pid)
        })
        .collect()
}

#[test]
fn a_killed_keeper_is_replaced_and_runs_still_die_with_the_daemon() {
    let p = Project::new();
    let pids = p.path().join("py.pid");
    p.config(
        "health_interval = \"1s\"",
        &fixture(
            "py",
            "sleepy",
            "* * * * * *",
            &format!("args = {{ pid_file = {:?} }}", pids.display().to_string()),
        ),
    );
    let mut daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(&pids)
            .is_ok_and(|t| t.split_whitespace().count() == 2)),
        "{}",
        p.daemon_output()
    );
    let first = keepers_of(daemon.id());
    assert_eq!(first.len(), 1, "one keeper: {first:?}");
    // A job (or anyone of our user) kills the keeper.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first[0]), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let now = keepers_of(daemon.id());
            now.len() == 1 && now[0] != first[0]
        }),
        "no new keeper: {}",
        p.daemon_output()
    );
    assert!(
        p.daemon_output().contains("started a new one"),
        "{}",
        p.daemon_output()
    );
    let job: Vec<i32> = std::fs::read_to_string(&pids)
        .unwrap()
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || job
            .iter()
            .all(|p| !pid_alive(*p))),
        "the run outlived its daemon after the keeper was replaced"
    );
}

#[test]
fn jobs_inherit_no_descriptor_the_scheduler_was_started_with() {
    use std::os::fd::AsRawFd;
    let p = Project::new();
    p.config(
        "",
        &job(
            "fds",
            "command = [\"sh\", \"-c\", \"ls /proc/$$/fd\"]\nschedule = \"0 0 0 1 1 *\"\nmarket_hours = false",
        ),
    );
    // A descriptor the launching process leaves inheritable (a secret file, a socket).
    let secret = std::fs::File::open(p.config_path()).unwrap();
    let fd = secret.as_raw_fd();
    nix::fcntl::fcntl(
        &secret,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let out = p.run(&["run-once", "fds"]);
    assert!(out.status.success(), "{}", text(&out));
    let log = std::fs::read_to_string(p.log_dir().join("jobs/fds.log")).unwrap();
    let listed: Vec<i32> = log
        .lines()
        .filter(|l| l.contains(" stdout] "))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(listed.contains(&0) && listed.contains(&2), "{log}");
    assert!(!listed.contains(&fd), "fd {fd} reached the job: {log}");
    drop(secret);
}

/// Holds `BEGIN EXCLUSIVE` on the history until the returned process is killed.
fn lock_history(db: &Path) -> std::process::Child {
    python_holding(
        "import sqlite3,sys,time\nc=sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(300)",
        db,
    )
}

#[test]
fn a_crash_while_the_history_refuses_writes_loses_no_run_and_runs_no_slot_twice() {
    let p = Project::new();
    let journal = p.path().join("j.journal");
    p.config(
        "health_interval = \"1s\"",
        &fixture(
            "j",
            "journal",
            "* * * * * *",
            &format!("args = {{ file = {:?} }}", journal.display().to_string()),
        ),
    );
    let slots = || -> Vec<String> {
        std::fs::read_to_string(&journal)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    };
    let mut first = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || slots().len() >= 2),
        "{}",
        p.daemon_output()
    );
    let first_pid = first.id();
    let mut locker = lock_history(&p.log_dir().join("history.sqlite3"));
    // The writer knows the history refuses (status says writes wait)…
    assert!(wait_until(Duration::from_secs(15), || {
        let out = p.run(&["status", "--json"]);
        String::from_utf8_lossy(&out.stdout).contains(" waiting)")
    }));
    // …runs go on, and the daemon dies right after one.
    let seen = slots().len();
    assert!(wait_until(Duration::from_secs(15), || slots().len() >= seen + 2));
    first.kill().unwrap();
    first.wait().unwrap();
    locker.kill().unwrap();
    locker.wait().unwrap();
    let ran_before = slots();
    // The next start writes what was kept, settles what the dead daemon left, and catches up
    // without running any slot again.
    let mut second = p.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || slots().len()
        >= ran_before.len() + 3));
    let status = signal_and_wait(&mut second, Signal::SIGTERM, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", p.daemon_output());
    let all = slots();
    let mut seen = std::collections::BTreeSet::new();
    let twice: Vec<&String> = all.iter().filter(|s| !seen.insert(s.as_str())).collect();
    assert!(twice.is_empty(), "slots run twice: {twice:?}");
    let rows = p.history();
    for slot in &ran_before {
        let at = ts(&Value::String(slot.clone()));
        let row = rows
            .iter()
            .find(|r| r["job"] == "j" && r["outcome"] != "skipped" && ts(&r["scheduled_at"]) == at);
        let row = row.unwrap_or_else(|| panic!("slot {slot} ran but has no row: {rows:#?}"));
        assert_ne!(row["outcome"], "running", "{row}");
        if ts(&row["started_at"]) > at + chrono::Duration::seconds(60) {
            panic!("{row}");
        }
        if row["owner_pid"] != first_pid {
            panic!("a replayed row took another owner: {row}");
        }
    }
    assert!(rows.iter().all(|r| r["outcome"] != "running"), "{rows:#?}");
}

#[test]
fn a_log_dir_whose_parent_others_may_write_is_refused() {
    let p = Project::new();
    let open = p.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    p.config("", &fixture("w", "noop", "0 0 0 1 1 *", ""));
    p.set("scheduler.log_dir", "open/logs");
    let out = p.run(&["run-once", "w"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("may be written by other users"),
        "{}",
        text(&out)
    );
    // Sticky, as /tmp is, with the folder below ours: fine.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = p.run(&["run-once", "w"]);
    assert!(out.status.success(), "{}", text(&out));
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
fn a_reload_names_a_disabled_job_as_disabled_not_removed() {
    let p = Project::new();
    let jobs = |b_enabled: bool| {
        fixture("a", "noop", "0 0 0 1 1 *", "")
            + &fixture(
                "b",
                "noop",
                "0 0 0 1 1 *",
                &format!("enabled = {b_enabled}"),
            )
    };
    p.config("", &jobs(true));
    let mut daemon = p.spawn_daemon();
    // SIGHUP is handled once the daemon is ready (before, it would end the process).
    assert!(wait_until(Duration::from_secs(20), || p
        .daemon_output()
        .contains("All services initialized")));
    p.config("", &jobs(false));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        Signal::SIGHUP,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || p
            .daemon_output()
            .contains("config reloaded")),
        "{}",
        p.daemon_output()
    );
    let out = p.daemon_output();
    assert!(out.contains("; disabled: b"), "{out}");
    assert!(!out.contains("removed: b"), "{out}");
    let status = signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()));
}
