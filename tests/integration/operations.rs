//! Operations through the binary: one instance, legacy processes, shutdown, crash recovery,
//! heartbeat, status reports, SIGHUP, a vanished history, memory limits, log rotation, `stop`.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::util::*;

const TICK: &str =
    "entry = \"fixture_jobs:noop\"\nschedule = \"* * * * * *\"\nmarket_hours = false";

fn status_json(p: &Project) -> (Option<i32>, Value) {
    let out = p.run(&["status", "--json"]);
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).expect("status JSON"),
    )
}

fn wait_running(p: &Project) -> bool {
    wait_until(Duration::from_secs(20), || status_json(p).0 == Some(0))
}

fn sig(pid: u32, s: Signal) {
    kill(Pid::from_raw(pid as i32), s).expect("signal");
}

#[test]
fn one_instance_and_a_restart_after_kill_9() {
    let p = Project::new();
    p.config("", &job("tick", TICK));
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
    p.config("legacy = \"refuse\"", &job("tick", TICK));
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
    p.config("legacy = \"warn\"", &job("tick", TICK));
    let daemon = p.spawn_daemon();
    assert!(wait_running(&p));
    let out = stop_clean(&p, daemon);
    assert!(
        out.contains(&format!("the old system is running: PID {}", old.id())),
        "{out}"
    );
    assert!(pid_alive(old.id() as i32));

    let p = Project::new();
    p.config("legacy = \"stop\"\nkill_grace = \"1s\"", &job("tick", TICK));
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
    p.config("legacy = \"refuse\"", &job("tick", TICK));
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
    p.config("health_interval = \"1s\"", &job("tick", TICK));
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

    sig(daemon.id(), Signal::SIGSTOP);
    let stale = wait_until(Duration::from_secs(10), || {
        status_json(&p).1["daemon"]["responding"] == false
    });
    let human = p.run(&["status"]);
    sig(daemon.id(), Signal::SIGCONT);
    assert!(stale);
    assert!(String::from_utf8_lossy(&human.stdout).contains("not responding"));
    assert!(wait_until(Duration::from_secs(10), || {
        status_json(&p).1["daemon"]["responding"] == true
    }));
    let _ = stop_clean(&p, daemon);
}

#[test]
fn status_reports_at_the_configured_interval() {
    let p = Project::new();
    p.config("report_interval = \"1s\"", &job("tick", TICK));
    let daemon = p.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || p
        .runs_with("success")
        .len()
        >= 4));
    let out = stop_clean(&p, daemon);
    let reports = out.matches("📊 Status report").count();
    assert!(reports >= 2, "{reports} reports:\n{out}");
    assert!(out.contains("TODAY"), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains(" tick ") && l.contains("✅ success"))
        .unwrap_or_default();
    assert!(!line.is_empty(), "{out}");
    // Today's slots: done/expected (every second: 86400 a day, or 82800/90000 on a DST day).
    let (_, s) = status_json(&p);
    let j = &s["jobs"][0];
    assert!(j["slots_today_done"].as_u64().unwrap() >= 4, "{j}");
    assert!(j["slots_today_expected"].as_u64().unwrap() >= 82_800, "{j}");
    assert_eq!(j["failures_today"], 0);
}

#[test]
fn sighup_applies_a_valid_config_and_keeps_the_old_one_otherwise() {
    let p = Project::new();
    p.config("", &job("tick", TICK));
    let daemon = p.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || p
        .runs_with("success")
        .len()
        >= 2));

    // While the daemon's config is broken, read the history through a copy of the good one.
    let good = std::fs::read_to_string(p.config_path()).unwrap();
    std::fs::write(p.path().join("reader.toml"), &good).unwrap();
    let runs = |outcome: &str| -> usize {
        let out = std::process::Command::new(BIN)
            .args(["--config"])
            .arg(p.path().join("reader.toml"))
            .args(["history", "--limit", "100000", "--json"])
            .output()
            .unwrap();
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        rows.iter().filter(|r| r["outcome"] == outcome).count()
    };

    // Invalid: rejected, the old config keeps firing.
    std::fs::write(
        p.config_path(),
        format!("{good}\n[jobs.broken]\nschedule = \"nope\"\n"),
    )
    .unwrap();
    sig(daemon.id(), Signal::SIGHUP);
    let before = runs("success");
    assert!(wait_until(Duration::from_secs(10), || runs("success") >= before + 2));

    // Valid: a new job fires.
    std::fs::write(
        p.config_path(),
        format!(
            "{good}{}",
            job(
                "tock",
                "entry = \"fixture_jobs:counter\"\nschedule = \"* * * * * *\"\nmarket_hours = false"
            )
        ),
    )
    .unwrap();
    sig(daemon.id(), Signal::SIGHUP);
    let added = wait_until(Duration::from_secs(15), || {
        p.history()
            .iter()
            .any(|r| r["job"] == "tock" && r["outcome"] == "success")
    });
    let out = stop_clean(&p, daemon);
    assert!(added, "{out}");
    assert!(
        out.contains("config rejected, keeping the old one"),
        "{out}"
    );
    assert!(out.contains("config reloaded: 2 jobs"), "{out}");
}

#[test]
fn a_removed_history_database_is_recreated_and_firing_goes_on() {
    let p = Project::new();
    p.config("", &job("tick", TICK));
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

#[test]
fn max_memory_ends_a_run_and_usage_is_recorded() {
    let p = Project::new();
    p.config(
        "",
        &[
            job("hog", "entry = \"fixture_jobs:hog\"\nschedule = \"0 0 * * * *\"\nmax_memory = \"100MiB\"\nargs = { mb = 300, seconds = 10 }"),
            job("modest", "entry = \"fixture_jobs:hog\"\nschedule = \"0 0 * * * *\"\nargs = { mb = 20, seconds = 1.5 }"),
        ]
        .concat(),
    );
    let out = p.run(&["run-once", "hog"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let row = &p.history()[0];
    assert_eq!(row["outcome"], "failed", "{row}");
    assert!(
        row["error"].as_str().unwrap().contains("over max_memory"),
        "{row}"
    );
    assert!(row["duration_ms"].as_i64().unwrap() < 8000, "{row}");
    assert!(
        row["peak_rss_bytes"].as_i64().unwrap() > 100 * 1024 * 1024,
        "{row}"
    );

    let out = p.run(&["run-once", "modest"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let row = &p.history()[0];
    let rss = row["peak_rss_bytes"].as_i64().unwrap();
    assert!(rss > 20 * 1024 * 1024 && rss < 200 * 1024 * 1024, "{row}");
    assert!(row["cpu_ms"].is_number(), "{row}");
}

#[test]
fn job_logs_rotate_daily_and_keep_their_count() {
    let p = Project::new();
    p.config("log_files_kept = 3", &job("tick", TICK));
    let jobs = p.log_dir().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    for day in ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"] {
        std::fs::write(jobs.join(format!("tick.log.{day}")), day).unwrap();
    }
    let current = jobs.join("tick.log");
    std::fs::write(&current, "from an earlier day\n").unwrap();
    let yesterday = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(&current)
        .unwrap()
        .set_modified(yesterday)
        .unwrap();
    let out = p.run(&["run-once", "tick"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut names: Vec<String> = std::fs::read_dir(&jobs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let rotated = chrono::DateTime::<chrono::Utc>::from(yesterday).date_naive();
    assert_eq!(
        names,
        [
            "tick.log".to_string(),
            "tick.log.2026-01-04".into(),
            format!("tick.log.{rotated}")
        ]
    );
    let fresh = std::fs::read_to_string(&current).unwrap();
    assert!(
        !fresh.contains("earlier day") && fresh.contains("noop tick"),
        "{fresh}"
    );
}

#[test]
fn stop_command_and_an_unwritable_log_dir() {
    let p = Project::new();
    p.config("", &job("tick", TICK));
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
    q.config("", &job("tick", TICK));
    q.set("scheduler.log_dir", "not-a-dir/logs");
    let out = q.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("scheduler.log_dir") && stderr.contains("not-a-dir/logs"),
        "{stderr}"
    );
}
