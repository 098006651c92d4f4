//! Containment and security, through the binary: each test is a fault a hostile operator or a
//! misbehaving job brought about, named for it. Jobs record what really happened in files of
//! their own, so assertions count what ran, not only our rows.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

/// `[jobs.<id>]` with the given body.
fn job(id: &str, body: &str) -> String {
    format!("\n[jobs.{id}]\n{body}\n")
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
    let jobs = job(
        "long",
        &format!(
            "entry = \"fixture_jobs:witness\"\nschedule = \"* * * * * *\"\nmarket_hours = false\nargs = {{ file = {:?}, seconds = 300 }}",
            long.display().to_string()
        ),
    ) + &job(
        "quick",
        &format!(
            "entry = \"fixture_jobs:witness\"\nschedule = \"0 0 0 1 1 *\"\nmarket_hours = false\nargs = {{ file = {:?} }}",
            quick.display().to_string()
        ),
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
