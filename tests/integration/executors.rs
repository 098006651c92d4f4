//! Executors in depth through the binary: pyo3 in-process runs, hardened subprocesses, legacy
//! scripts and commands, retry, overlap policies, the cross-process guard and catch-up.

use std::time::Duration;

use serde_json::Value;

use crate::util::*;

/// A cron pattern for the single second `secs` from now (in India, the fixtures' exchange), so a
/// job fires once at a known time and not again for a day.
fn once_in(secs: i64) -> (String, chrono::DateTime<chrono::Utc>) {
    let at = chrono::Utc::now() + chrono::Duration::seconds(secs);
    let at = chrono::DurationRound::duration_trunc(at, chrono::Duration::seconds(1)).unwrap();
    let local = at.with_timezone(&chrono_tz::Asia::Kolkata);
    (local.format("%S %M %H * * *").to_string(), at)
}

/// A daemon of `p` whose job `id` (with `body`, whose `{schedule}` is filled in) fires once, two
/// seconds after the daemon is ready: started on a schedule far away, then reloaded, so a slow
/// start cannot make it miss its one slot. Returns the daemon and the slot.
fn fires_once_when_ready(
    p: &Project,
    id: &str,
    body: &str,
) -> (std::process::Child, chrono::DateTime<chrono::Utc>) {
    p.config("", &job(id, &body.replace("{schedule}", "0 0 0 1 1 *")));
    let daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || p
            .daemon_output()
            .contains("All services initialized")),
        "{}",
        p.daemon_output()
    );
    let (pattern, slot) = once_in(2);
    p.config("", &job(id, &body.replace("{schedule}", &pattern)));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    assert!(
        wait_until(Duration::from_secs(10), || p
            .daemon_output()
            .contains("config reloaded")),
        "{}",
        p.daemon_output()
    );
    (daemon, slot)
}

fn of_job<'a>(rows: &'a [Value], id: &str) -> Vec<&'a Value> {
    rows.iter().filter(|r| r["job"] == id).collect()
}

fn error_of(row: &Value) -> String {
    row["error"].as_str().unwrap_or_default().to_string()
}

// --- pyo3 -----------------------------------------------------------------------------------

#[test]
fn pyo3_success_exception_and_sys_exit() {
    let p = Project::new();
    p.config(
        "",
        &[
            job(
                "ok",
                "entry = \"fixture_jobs:counter\"\nschedule = \"0 0 * * * *\"\nexecutor = \"pyo3\"",
            ),
            job(
                "raises",
                "entry = \"fixture_jobs:boom\"\nschedule = \"0 0 * * * *\"\nexecutor = \"pyo3\"",
            ),
            job(
                "exits",
                "entry = \"fixture_jobs:exit3\"\nschedule = \"0 0 * * * *\"\nexecutor = \"pyo3\"",
            ),
        ]
        .concat(),
    );
    let out = p.run(&["run-once", "ok"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let row = &p.history()[0];
    assert_eq!(row["outcome"], "success");
    assert_eq!(row["result"]["calls"], 1);
    assert!(row["entered_at"].is_string());
    let log = std::fs::read_to_string(p.log_dir().join("jobs/ok.log")).unwrap();
    assert!(
        log.contains("[run 1 stdout] counter call 1 in run 1"),
        "{log}"
    );

    let out = p.run(&["run-once", "raises"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let row = &p.history()[0];
    assert_eq!(row["outcome"], "failed");
    assert!(error_of(row).contains("ValueError: boom"), "{row}");
    let log = std::fs::read_to_string(p.log_dir().join("jobs/raises.log")).unwrap();
    assert!(
        log.contains("Traceback") && log.contains("about to fail"),
        "{log}"
    );

    let out = p.run(&["run-once", "exits"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let row = &p.history()[0];
    assert_eq!(row["outcome"], "failed");
    assert_eq!(row["exit_code"], 3);
    assert!(error_of(row).contains("SystemExit: 3"), "{row}");
}

#[test]
fn pyo3_imports_once_keeps_logs_apart_and_survives_a_busy_loop() {
    let p = Project::new();
    p.config(
        "",
        &[
            job("counter", "entry = \"fixture_jobs:counter\"\nschedule = \"* * * * * *\"\nmarket_hours = false\nexecutor = \"pyo3\""),
            job("alpha", "entry = \"fixture_jobs:talk\"\nschedule = \"*/2 * * * * *\"\nmarket_hours = false\nexecutor = \"pyo3\"\nargs = { lines = 30, pause = 0.02 }"),
            job("beta", "entry = \"fixture_jobs:talk\"\nschedule = \"*/2 * * * * *\"\nmarket_hours = false\nexecutor = \"pyo3\"\nargs = { lines = 30, pause = 0.02 }"),
            job("spin", "entry = \"fixture_jobs:busy\"\nschedule = \"*/2 * * * * *\"\nmarket_hours = false\nexecutor = \"pyo3\"\ntimeout = \"1s\""),
        ]
        .concat(),
    );
    let daemon = p.spawn_daemon();
    let pid = daemon.id();
    let enough = wait_until(Duration::from_secs(30), || {
        let rows = p.history();
        of_job(&rows, "spin")
            .iter()
            .filter(|r| r["outcome"] == "timeout")
            .count()
            >= 2
            && of_job(&rows, "alpha")
                .iter()
                .filter(|r| r["outcome"] == "success")
                .count()
                >= 2
            && of_job(&rows, "counter")
                .iter()
                .filter(|r| r["outcome"] == "success")
                .count()
                >= 4
    });
    stop_clean(&p, daemon);
    let rows = p.history();
    assert!(enough, "{rows:#?}");

    // One module, imported once: the counter goes up by one each run, in the daemon's process.
    let mut counts: Vec<(i64, i64)> = of_job(&rows, "counter")
        .iter()
        .filter(|r| r["outcome"] == "success")
        .map(|r| {
            (
                r["id"].as_i64().unwrap(),
                r["result"]["calls"].as_i64().unwrap(),
            )
        })
        .collect();
    counts.sort();
    let calls: Vec<i64> = counts.iter().map(|c| c.1).collect();
    assert_eq!(calls, (1..=calls.len() as i64).collect::<Vec<_>>());
    for r in of_job(&rows, "counter") {
        assert_eq!(
            r["result"]["pid"], pid,
            "an embedded run runs in the daemon"
        );
    }

    // The busy loop timed out each time and the daemon went on firing.
    for r in of_job(&rows, "spin") {
        assert_eq!(r["outcome"], "timeout", "{r}");
    }

    // alpha and beta ran at the same time, each into its own log.
    let overlap = of_job(&rows, "alpha").iter().any(|a| {
        of_job(&rows, "beta").iter().any(|b| {
            a["finished_at"].is_string()
                && b["finished_at"].is_string()
                && ts(&a["started_at"]) < ts(&b["finished_at"])
                && ts(&b["started_at"]) < ts(&a["finished_at"])
        })
    });
    assert!(overlap, "alpha and beta never ran concurrently");
    let alpha = std::fs::read_to_string(p.log_dir().join("jobs/alpha.log")).unwrap();
    let beta = std::fs::read_to_string(p.log_dir().join("jobs/beta.log")).unwrap();
    for (log, own, other) in [(&alpha, "alpha", "beta"), (&beta, "beta", "alpha")] {
        assert!(log.contains(&format!("stdout] {own} line 29")), "{log}");
        assert!(log.contains(&format!("stderr] {own} err 5")), "{log}");
        assert!(
            log.contains(&format!("INFO hedge.{own}: {own} log 10")),
            "{log}"
        );
        assert!(!log.contains(other), "{own}'s log holds {other}'s output");
    }
    // None of it leaked to the console.
}

#[test]
fn pyo3_thread_stuck_in_c_holds_its_slot_until_it_returns() {
    let p = Project::new();
    p.config(
        "",
        &job(
            "sleeper",
            "entry = \"fixture_jobs:stuck\"\nschedule = \"* * * * * *\"\nmarket_hours = false\nexecutor = \"pyo3\"\ntimeout = \"1s\"\nargs = { seconds = 6 }",
        ),
    )
    .set("scheduler.kill_grace", "1s");
    let daemon = p.spawn_daemon();
    let stuck_seen = wait_until(Duration::from_secs(15), || {
        p.history()
            .iter()
            .any(|r| r["outcome"] == "timeout" && r["stuck"] == true)
    });
    let status = p.run(&["status", "--json"]);
    let skipped_seen = wait_until(Duration::from_secs(10), || {
        p.history()
            .iter()
            .any(|r| r["outcome"] == "skipped" && error_of(r).contains("stuck in native code"))
    });
    let released = wait_until(Duration::from_secs(20), || {
        let rows = p.history();
        let first_timeout = rows
            .iter()
            .filter(|r| r["outcome"] == "timeout")
            .map(|r| r["id"].as_i64().unwrap())
            .min();
        first_timeout.is_some_and(|id| {
            rows.iter().any(|r| r["id"] == id && r["stuck"] == false)
                && rows
                    .iter()
                    .any(|r| r["id"].as_i64().unwrap() > id && r["outcome"] != "skipped")
        })
    });
    stop_clean(&p, daemon);
    let rows = p.history();
    assert!(stuck_seen, "{rows:#?}");
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["jobs"][0]["stuck"], true, "{status}");
    assert!(
        status["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("stuck in native code")),
        "{status}"
    );
    assert!(skipped_seen, "{rows:#?}");
    assert!(
        released,
        "the job never ran again after its thread returned: {rows:#?}"
    );
    let timeout = rows.iter().find(|r| r["outcome"] == "timeout").unwrap();
    assert!(
        error_of(timeout).contains("stuck in native code"),
        "{timeout}"
    );
}

#[test]
fn pyo3_refuses_a_venv_of_another_python_version() {
    let p = Project::new();
    let venv = p.path().join("venv312");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    // A stand-in interpreter that answers the start-up probe as Python 3.12 would.
    let fake = venv.join("bin/python");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho '{\"executable\": \"'\"$0\"'\", \"version\": \"3.12.1\", \"prefix\": \"/x\", \"site_packages\": [], \"found\": {\"hedge_bridge\": true, \"fixture_jobs\": true}}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p.config(
        "",
        &job(
            "j",
            "entry = \"fixture_jobs:counter\"\nschedule = \"0 0 * * * *\"\nexecutor = \"pyo3\"",
        ),
    );
    p.unset("python.executable").set("python.venv", "venv312");
    let out = p.run(&["run-once", "j"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("python.venv") && stderr.contains("3.12"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn a_venv_serves_both_executors() {
    let p = Project::new();
    let venv = p.path().join(".venv");
    let made = std::process::Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(made.success());
    let site = std::fs::read_dir(venv.join("lib"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
        .join("site-packages");
    std::fs::write(
        site.join("venv_only.py"),
        "import sys\ndef run(ctx):\n    return {'prefix': sys.prefix, 'executable': sys.executable}\n",
    )
    .unwrap();
    p.config(
        "",
        &[
            job(
                "sub",
                "entry = \"venv_only:run\"\nschedule = \"0 0 * * * *\"",
            ),
            job(
                "emb",
                "entry = \"venv_only:run\"\nschedule = \"0 0 * * * *\"\nexecutor = \"pyo3\"",
            ),
        ]
        .concat(),
    );
    p.unset("python.executable").set("python.venv", ".venv");
    for id in ["sub", "emb"] {
        let out = p.run(&["run-once", id]);
        assert_eq!(out.status.code(), Some(0), "{id}: {}", text(&out));
    }
    let rows = p.history();
    let sub = of_job(&rows, "sub")[0];
    assert!(
        sub["result"]["prefix"].as_str().unwrap().ends_with(".venv"),
        "{sub}"
    );
}

// --- subprocess -----------------------------------------------------------------------------

#[test]
fn subprocess_crash_ignored_sigterm_escaped_grandchild_and_big_output() {
    let p = Project::new();
    let term_pid = p.path().join("term.pid");
    let escape_pid = p.path().join("escape.pid");
    p.config(
        "",
        &[
            job("crash", "entry = \"fixture_jobs:segfault\"\nschedule = \"0 0 * * * *\""),
            job("stubborn", &format!("entry = \"fixture_jobs:ignores_sigterm\"\nschedule = \"0 0 * * * *\"\ntimeout = \"1s\"\nargs = {{ pid_file = {term_pid:?} }}")),
            job("escape", &format!("entry = \"fixture_jobs:escapes\"\nschedule = \"0 0 * * * *\"\ntimeout = \"1s\"\nargs = {{ pid_file = {escape_pid:?} }}")),
            job("flood", "entry = \"fixture_jobs:chatty\"\nschedule = \"0 0 * * * *\"\ntimeout = \"60s\"\nargs = { lines = 104000 }"),
        ]
        .concat(),
    );
    let out = p.run(&["run-once", "crash"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let row = &p.history()[0];
    assert_eq!(row["outcome"], "crashed", "{row}");
    assert_eq!(row["signal"], "SIGSEGV");
    assert!(error_of(row).contains("SIGSEGV"));

    assert_stubborn_killed_and_escape_ended(&p, "subprocess", &term_pid, &escape_pid);
    let log = std::fs::read_to_string(p.log_dir().join("jobs/escape.log")).unwrap();
    assert!(log.contains("left the job's group"), "{log}");

    let out = p.run(&["run-once", "flood"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = std::fs::metadata(p.log_dir().join("jobs/flood.log")).unwrap();
    assert!(log.len() > 10_000_000, "{} bytes", log.len());
}

#[test]
fn legacy_scripts_and_commands_run_too() {
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("src/data")).unwrap();
    std::fs::write(
        p.path().join("src/data/collector.py"),
        "import sys\nprint('legacy', sys.argv[1:], __name__)\nif '--fail' in sys.argv:\n    sys.exit(2)\n",
    )
    .unwrap();
    p.config(
        "",
        &[
            job("script", "entry = \"src/data/collector.py\"\nschedule = \"0 0 * * * *\"\nargs = { argv = [\"--once\"] }"),
            job("script_fails", "entry = \"src/data/collector.py\"\nschedule = \"0 0 * * * *\"\nargs = { argv = [\"--fail\"] }"),
            job("cmd", "command = [\"sh\", \"-c\", \"echo from-sh; exit 0\"]\nschedule = \"0 0 * * * *\""),
            job("cmd_fails", "command = [\"sh\", \"-c\", \"echo oops >&2; exit 3\"]\nschedule = \"0 0 * * * *\""),
        ]
        .concat(),
    );
    p.set("python.cwd", ".");
    for (id, code) in [
        ("script", 0),
        ("script_fails", 1),
        ("cmd", 0),
        ("cmd_fails", 1),
    ] {
        let out = p.run(&["run-once", id]);
        assert_eq!(out.status.code(), Some(code), "{id}: {}", text(&out));
    }
    let rows = p.history();
    assert_eq!(of_job(&rows, "script")[0]["outcome"], "success");
    let log = std::fs::read_to_string(p.log_dir().join("jobs/script.log")).unwrap();
    assert!(log.contains("legacy ['--once'] __main__"), "{log}");
    assert_eq!(of_job(&rows, "script_fails")[0]["exit_code"], 2);
    assert_eq!(of_job(&rows, "cmd")[0]["outcome"], "success");
    let failed = of_job(&rows, "cmd_fails")[0];
    assert_eq!(failed["exit_code"], 3);
    assert!(error_of(failed).contains("oops"), "{failed}");
    // A script that is not there is a config error before anything runs.
    p.set("jobs.script.entry", "src/data/missing.py");
    let out = p.run(&["run-once", "script"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.py"));
}

// --- retry ----------------------------------------------------------------------------------

#[test]
fn retry_twice_then_succeed_with_backoff() {
    let p = Project::new();
    let count = p.path().join("count.txt");
    let (daemon, slot) = fires_once_when_ready(
        &p,
        "flaky",
        &format!(
            "entry = \"fixture_jobs:flaky\"\nschedule = \"{{schedule}}\"\nmarket_hours = false\nretry = {{ attempts = 3, backoff = \"1s\", factor = 2 }}\nargs = {{ count_file = {count:?}, fail_times = 2 }}"
        ),
    );
    let done = wait_until(Duration::from_secs(20), || {
        !p.runs_with("success").is_empty()
    });
    stop_clean(&p, daemon);
    let mut rows = p.history();
    assert!(done, "{rows:#?}");
    rows.reverse();
    let outcomes: Vec<(&str, &str, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["outcome"].as_str().unwrap(),
                r["trigger"].as_str().unwrap(),
                r["attempt"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("failed", "schedule", 1),
            ("failed", "retry", 2),
            ("success", "retry", 3)
        ]
    );
    for r in &rows {
        assert_eq!(ts(&r["scheduled_at"]), slot, "every attempt keeps the slot");
    }
    let gap =
        |a: &Value, b: &Value| (ts(&b["started_at"]) - ts(&a["finished_at"])).num_milliseconds();
    let (g1, g2) = (gap(&rows[0], &rows[1]), gap(&rows[1], &rows[2]));
    assert!((850..1400).contains(&g1), "first backoff {g1} ms");
    assert!((1750..2500).contains(&g2), "second backoff {g2} ms");
    assert_eq!(rows[2]["result"]["attempt"], 3);
}

#[test]
fn no_retry_that_would_pass_the_next_slot() {
    let p = Project::new();
    p.config(
        "",
        &job(
            "fails",
            "entry = \"fixture_jobs:boom\"\nschedule = \"*/3 * * * * *\"\nmarket_hours = false\nretry = { attempts = 3, backoff = \"5s\" }",
        ),
    );
    let daemon = p.spawn_daemon();
    let seen = wait_until(Duration::from_secs(15), || {
        p.history()
            .iter()
            .any(|r| error_of(r).contains("no retry: next slot at"))
    });
    stop_clean(&p, daemon);
    let rows = p.history();
    assert!(seen, "{rows:#?}");
    assert!(rows.iter().all(|r| r["trigger"] != "retry"), "{rows:#?}");
}

// --- overlap --------------------------------------------------------------------------------

fn intervals(
    rows: &[&Value],
) -> Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    let mut v: Vec<_> = rows
        .iter()
        .filter(|r| r["outcome"] != "skipped" && r["finished_at"].is_string())
        .map(|r| (ts(&r["started_at"]), ts(&r["finished_at"])))
        .collect();
    v.sort();
    v
}

#[test]
fn overlap_queue_runs_one_pending_after_the_current() {
    let p = Project::new();
    p.config(
        "",
        &job("slow", "entry = \"fixture_jobs:slow\"\nschedule = \"* * * * * *\"\nmarket_hours = false\noverlap = \"queue\"\nargs = { seconds = 1.5 }"),
    );
    let daemon = p.spawn_daemon();
    let enough = wait_until(Duration::from_secs(30), || {
        p.runs_with("success").len() >= 3 && !p.runs_with("skipped").is_empty()
    });
    stop_clean(&p, daemon);
    let rows = p.history();
    assert!(enough, "{rows:#?}");
    let runs = intervals(&of_job(&rows, "slow"));
    for w in runs.windows(2) {
        assert!(w[0].1 <= w[1].0, "runs overlapped: {w:?}");
        // A queued run starts as soon as the previous one ends.
        assert!(
            (w[1].0 - w[0].1).num_milliseconds() < 600,
            "queued run waited: {w:?}"
        );
    }
    let skipped = p.runs_with("skipped");
    assert!(
        error_of(&skipped[0]).contains("already queued"),
        "{skipped:?}"
    );
}

#[test]
fn overlap_replace_cancels_the_running_run() {
    let p = Project::new();
    p.config(
        "",
        &job("slow", "entry = \"fixture_jobs:slow\"\nschedule = \"* * * * * *\"\nmarket_hours = false\noverlap = \"replace\"\nargs = { seconds = 30 }"),
    );
    let daemon = p.spawn_daemon();
    let enough = wait_until(Duration::from_secs(20), || {
        p.runs_with("cancelled").len() >= 2
    });
    stop_clean(&p, daemon);
    let rows = p.history();
    assert!(enough, "{rows:#?}");
    let cancelled = p.runs_with("cancelled");
    assert!(
        error_of(&cancelled[cancelled.len() - 1]).contains("replaced by the slot at"),
        "{cancelled:?}"
    );
    for w in intervals(&of_job(&rows, "slow")).windows(2) {
        assert!(w[0].1 <= w[1].0, "runs overlapped: {w:?}");
    }
    assert!(p.runs_with("skipped").is_empty());
}

#[test]
fn run_once_refuses_or_waits_while_the_daemon_runs_the_job() {
    let p = Project::new();
    let (daemon, _) = fires_once_when_ready(
        &p,
        "slow",
        "entry = \"fixture_jobs:slow\"\nschedule = \"{schedule}\"\nmarket_hours = false\nargs = { seconds = 4 }",
    );
    let running = wait_until(Duration::from_secs(15), || {
        p.log_dir().join("history.sqlite3").exists()
            && p.history()
                .iter()
                .any(|r| r["outcome"] == "running" && r["pid"].is_number())
    });
    assert!(running);
    let daemon_run = p.history()[0].clone();
    let out = p.run(&["run-once", "slow"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    assert!(
        stderr.contains(&format!("PID {}", daemon_run["pid"])),
        "{stderr}"
    );
    assert!(stderr.contains("running since"), "{stderr}");
    // No row for the refused manual run.
    assert!(p.history().iter().all(|r| r["trigger"] != "manual"));

    let out = p.run(&["run-once", "slow", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    stop_clean(&p, daemon);
    let rows = p.history();
    let manual = rows
        .iter()
        .find(|r| r["trigger"] == "manual")
        .expect("a manual row");
    let scheduled = rows.iter().find(|r| r["trigger"] == "schedule").unwrap();
    assert_eq!(scheduled["outcome"], "success");
    assert!(
        ts(&manual["started_at"]) >= ts(&scheduled["finished_at"]),
        "{rows:#?}"
    );
}

// --- catch-up -------------------------------------------------------------------------------

/// Records in the history that `job`'s slot `minutes_ago` whole minutes back ran, as if the
/// daemon had been stopped since.
fn pretend_last_slot(p: &Project, job: &str, minutes_ago: i64) -> chrono::DateTime<chrono::Utc> {
    let out = p.run(&["run-once", job]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let now = chrono::Utc::now();
    let minute = chrono::DurationRound::duration_trunc(now, chrono::Duration::minutes(1)).unwrap();
    let last = minute - chrono::Duration::minutes(minutes_ago);
    let stamp = last.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let db = p.log_dir().join("history.sqlite3");
    let sql = format!(
        "INSERT INTO runs (job, trigger, scheduled_at, started_at, finished_at, attempt, outcome) \
         VALUES ('{job}', 'schedule', '{stamp}', '{stamp}', '{stamp}', 1, 'success')"
    );
    let done = std::process::Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()"])
        .arg(&db)
        .arg(sql)
        .status()
        .unwrap();
    assert!(done.success());
    last
}

fn catch_up_rows(
    policy: &str,
) -> (
    Vec<Value>,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
) {
    let p = Project::new();
    p.config(
        "",
        &job("minutely", &format!("entry = \"fixture_jobs:slot\"\nschedule = \"0 * * * * *\"\nmarket_hours = false\ncatch_up = \"{policy}\"")),
    );
    // The slots expected are counted before the daemon starts: not across a minute's turn (a
    // start that crosses it has one more slot to catch up).
    let second = chrono::Timelike::second(&chrono::Utc::now());
    if second >= 50 {
        std::thread::sleep(Duration::from_secs(u64::from(61 - second)));
    }
    let last = pretend_last_slot(&p, "minutely", 3);
    let started = chrono::Utc::now();
    let daemon = p.spawn_daemon();
    // Missed slots are accounted for: run, or counted in one compact row per gap.
    let settled = wait_until(Duration::from_secs(15), || {
        p.history()
            .iter()
            .map(|r| match (r["outcome"].as_str(), r["trigger"].as_str()) {
                (Some("skipped"), _) => r["missed_count"].as_u64().unwrap_or(1),
                (_, Some("catch-up")) => 1,
                _ => 0,
            })
            .sum::<u64>()
            >= 3
    });
    // Give a wrong extra catch-up the time to show up.
    std::thread::sleep(Duration::from_millis(1500));
    stop_clean(&p, daemon);
    assert!(settled, "{:#?}", p.history());
    let rows = p
        .history()
        .into_iter()
        .filter(|r| r["trigger"] != "manual")
        .collect();
    (rows, last, started)
}

#[test]
fn catch_up_latest_runs_exactly_the_most_recent_missed_slot() {
    let (rows, last, started) = catch_up_rows("latest");
    let catch: Vec<&Value> = rows.iter().filter(|r| r["trigger"] == "catch-up").collect();
    assert_eq!(catch.len(), 1, "{rows:#?}");
    let slot = ts(&catch[0]["scheduled_at"]);
    assert!(slot > last && slot <= started, "{slot}");
    assert!(
        started - slot < chrono::Duration::minutes(1),
        "not the latest missed slot: {slot}"
    );
    assert_eq!(catch[0]["outcome"], "success");
    assert_eq!(
        ts(&catch[0]["result"]["scheduled_at"]),
        slot,
        "the job saw its original slot"
    );
    // The other missed slots are one compact row.
    let skipped: Vec<&Value> = rows.iter().filter(|r| r["outcome"] == "skipped").collect();
    assert_eq!(skipped.len(), 1, "{skipped:#?}");
    assert!(error_of(skipped[0]).contains("missed"), "{skipped:?}");
    let count = skipped[0]["missed_count"].as_i64().expect("missed_count");
    assert!((1..=2).contains(&count), "{skipped:?}");
    assert_eq!(
        ts(&skipped[0]["missed_from"]),
        last + chrono::Duration::minutes(1)
    );
    assert!(ts(&skipped[0]["missed_to"]) < slot);
    assert_eq!(
        ts(&skipped[0]["missed_to"]),
        slot - chrono::Duration::minutes(1)
    );
}

#[test]
fn catch_up_none_and_all() {
    let (rows, last, _) = catch_up_rows("none");
    assert!(rows.iter().all(|r| r["trigger"] != "catch-up"), "{rows:#?}");
    let gap: Vec<&Value> = rows.iter().filter(|r| r["outcome"] == "skipped").collect();
    assert_eq!(gap.len(), 1, "one compact row: {rows:#?}");
    assert_eq!(
        ts(&gap[0]["missed_from"]),
        last + chrono::Duration::minutes(1)
    );
    assert!(error_of(gap[0]).contains("not running"), "{gap:?}");

    let (rows, last, started) = catch_up_rows("all");
    let mut slots: Vec<_> = rows
        .iter()
        .filter(|r| r["trigger"] == "catch-up")
        .map(|r| (r["id"].as_i64().unwrap(), ts(&r["scheduled_at"])))
        .collect();
    slots.sort();
    let expected: Vec<_> = (1..=3)
        .map(|m| last + chrono::Duration::minutes(m))
        .filter(|t| *t <= started)
        .collect();
    assert_eq!(
        slots.iter().map(|s| s.1).collect::<Vec<_>>(),
        expected,
        "in order: {rows:#?}"
    );
}
