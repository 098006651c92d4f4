//! Containment: nothing a run starts outlives the run or the daemon; the keeper; no descriptor
//! leaks into a job.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
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
