//! The history keeps every run: its file deleted, removed, refused or on a full disk, an older
//! version, results of a dead daemon's runs.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

/// The lines of a witness file (`start <uid> <pid>` / `end <uid>`).
fn witnessed(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
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

/// Holds `BEGIN EXCLUSIVE` on the history until the returned process is killed.
fn lock_history(db: &Path) -> std::process::Child {
    python_holding(
        "import sqlite3,sys,time\nc=sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(300)",
        db,
    )
}

#[test]
fn nan_results_disabled_jobs_and_the_history_of_a_removed_job() {
    let p = Project::new();
    p.config(
        "",
        r#"
[jobs.nan]
entry = "fixture_jobs:not_a_number"
schedule = "0 0 * * * *"

[jobs.off]
entry = "fixture_jobs:noop"
schedule = "* * * * * *"
market_hours = false
enabled = false

[jobs.tick]
entry = "fixture_jobs:noop"
schedule = "* * * * * *"
market_hours = false
"#,
    );
    let out = p.run(&["run-once", "nan"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let row = &p.history()[0];
    assert_eq!(row["outcome"], "success");
    assert!(row["result"]["iv"].is_null());
    assert_eq!(row["result"]["pcr"], 1.25);

    // A disabled job runs by hand but never fires.
    let out = p.run(&["run-once", "off"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut daemon = p.spawn_daemon();
    // Proof by event, not by a sleep: the loop fired `tick`'s slots of three seconds, and `off`,
    // due at the same instants, fired none of them.
    assert!(
        wait_until(Duration::from_secs(20), || p
            .history()
            .iter()
            .filter(|r| r["job"] == "tick" && r["trigger"] == "schedule")
            .count()
            >= 3),
        "{}",
        p.daemon_output()
    );
    signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(10));
    let rows = p.history();
    assert!(
        rows.iter()
            .filter(|r| r["job"] == "off")
            .all(|r| r["trigger"] == "manual"),
        "{rows:#?}"
    );
    let (_, status) = (
        0,
        serde_json::from_slice::<Value>(&p.run(&["status", "--json"]).stdout).unwrap(),
    );
    let off = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "off")
        .unwrap()
        .clone();
    assert_eq!(off["enabled"], false);
    assert!(off["next_fire_at"].is_null());

    // Once removed from the config, its past is still there to read.
    let text_ = std::fs::read_to_string(p.config_path()).unwrap();
    let cut = text_.find("[jobs.off]").unwrap();
    std::fs::write(p.config_path(), &text_[..cut]).unwrap();
    let out = p.run(&["history", "off", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = p.run(&["history", "never_existed"]);
    assert_eq!(out.status.code(), Some(2));
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
fn status_never_fails_while_a_fresh_daemon_creates_the_history() {
    for _ in 0..3 {
        let p = Project::new();
        p.config("", &journaled(&p, "tick", "subprocess"));
        let daemon = p.spawn_daemon();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut answers = 0;
        loop {
            let out = p.run(&["status", "--json"]);
            assert!(
                matches!(out.status.code(), Some(0) | Some(3)),
                "{}",
                text(&out)
            );
            let v: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
            assert!(v["jobs"].is_array());
            assert!(out.stderr.is_empty(), "status complained: {}", text(&out));
            answers += 1;
            if out.status.code() == Some(0) && !journal(&p, "tick").is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{}", p.daemon_output());
        }
        assert!(answers > 1);
        stop_within(daemon, Duration::from_secs(10));
    }
}

#[test]
fn a_history_from_an_older_version_is_upgraded_by_status() {
    let p = Project::new();
    p.config(
        "",
        "\n[jobs.old]\nentry = \"fixture_jobs:noop\"\nschedule = \"0 0 * * * *\"\nmarket_hours = false\n",
    );
    std::fs::create_dir_all(p.log_dir()).expect("logs");
    // The schema 197d81c wrote (user_version 4), with one finished run.
    let script = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.executescript('''
CREATE TABLE runs (id INTEGER PRIMARY KEY, job TEXT NOT NULL, trigger TEXT NOT NULL,
  scheduled_at TEXT NOT NULL, started_at TEXT NOT NULL, entered_at TEXT, finished_at TEXT,
  attempt INTEGER NOT NULL DEFAULT 1, outcome TEXT NOT NULL, exit_code INTEGER, signal TEXT,
  pid INTEGER, owner_pid INTEGER, error TEXT, result TEXT);
CREATE INDEX runs_job_id ON runs (job, id);
CREATE INDEX runs_running ON runs (outcome) WHERE outcome = 'running';
CREATE TABLE daemon (id INTEGER PRIMARY KEY, pid INTEGER NOT NULL, started_at TEXT NOT NULL,
  heartbeat_at TEXT, stopped_at TEXT);
ALTER TABLE runs ADD COLUMN stuck INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN executor TEXT;
CREATE INDEX runs_job_slot ON runs (job, scheduled_at);
CREATE INDEX runs_stuck ON runs (stuck) WHERE stuck = 1;
ALTER TABLE runs ADD COLUMN peak_rss_bytes INTEGER;
ALTER TABLE runs ADD COLUMN cpu_ms INTEGER;
INSERT INTO runs (job, trigger, scheduled_at, started_at, finished_at, outcome, executor)
  VALUES ('old', 'schedule', '2026-11-27T09:00:00.000000Z', '2026-11-27T09:00:00.000100Z',
          '2026-11-27T09:00:01.000000Z', 'success', 'subprocess');
PRAGMA user_version = 4;
''')
c.commit()
"#;
    let db = p.log_dir().join("history.sqlite3");
    let ok = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&db)
        .status()
        .expect("python3");
    assert!(ok.success());
    let out = p.run(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(v["jobs"][0]["last_outcome"], "success", "{v:#}");
    let rows = p.history();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["outcome"], "success");
    assert!(rows[0]["missed_count"].is_null());
    // The daemon then writes into the upgraded file, after the old row.
    let out = p.run(&["run-once", "old"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows = p.history();
    assert_eq!(rows.len(), 2);
    assert!(rows[0]["id"].as_i64() > rows[1]["id"].as_i64());
}

#[test]
fn a_removed_history_database_is_recreated_and_firing_goes_on() {
    let p = Project::new();
    p.config("", &job("tick", TICK_JOB));
    let daemon = p.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || p
        .runs_with("success")
        .len()
        >= 2));
    let db = p.log_dir().join("history.sqlite3");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let removed_at = chrono::Utc::now();
    let recreated = wait_until(Duration::from_secs(15), || {
        db.exists()
            && p.try_history().is_some_and(|rows| {
                rows.iter()
                    .filter(|r| r["outcome"] == "success" && ts(&r["started_at"]) > removed_at)
                    .count()
                    >= 2
            })
    });
    let out = stop_clean(&p, daemon);
    assert!(recreated, "{out}");
    assert!(
        out.contains("was removed or replaced: recreating it"),
        "{out}"
    );
}
