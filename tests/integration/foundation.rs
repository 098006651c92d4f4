//! The foundation: the daemon fires real Python jobs on time, `run-once`, output, timeouts,
//! `status`/`history` JSON, bad configs, and the shipped jobs.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

const TICK: &str = r#"
[jobs.tick]
name = "Every second"
entry = "fixture_jobs:noop"
schedule = "* * * * * *"
market_hours = false
timeout = "10s"
args = { answer = 42 }
"#;

#[test]
fn daemon_fires_every_second_on_time_and_stops_on_sigterm() {
    let p = Project::new();
    p.config("", TICK);
    let mut daemon = p.spawn_daemon();
    let fired = wait_until(Duration::from_secs(20), || {
        p.log_dir().join("history.sqlite3").exists() && p.runs_with("success").len() >= 3
    });
    // While it runs, `status` sees it.
    let status = p.run(&["status", "--json"]);
    let stopped = signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(5));
    assert!(fired, "fewer than 3 successful runs: {:?}", p.history());
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let status: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(status["daemon"]["running"], true);
    assert_eq!(status["daemon"]["pid"], daemon.id());
    let status_code = stopped.expect("daemon did not exit within 5 s of SIGTERM");
    assert_eq!(status_code.code(), Some(0));

    let runs = p.runs_with("success");
    assert!(runs.len() >= 3);
    for r in &runs {
        assert_eq!(r["trigger"], "schedule");
        let late = ts(&r["started_at"]) - ts(&r["scheduled_at"]);
        assert!(
            late >= chrono::Duration::zero() && late < chrono::Duration::seconds(1),
            "run {} started {late} after its slot",
            r["id"]
        );
        assert_eq!(r["result"]["args"]["answer"], 42);
    }
    // Slots are distinct whole seconds.
    let mut slots: Vec<_> = runs.iter().map(|r| ts(&r["scheduled_at"])).collect();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), runs.len());
    // Nothing is left `running` after a clean stop, and the PID file is gone.
    assert!(p.runs_with("running").is_empty());
    assert!(!p.log_dir().join("hedge-scheduler.pid").exists());
    let log = std::fs::read_to_string(p.log_dir().join("jobs/tick.log")).expect("job log");
    assert!(log.contains("noop tick run"), "{log}");
}

#[test]
fn run_once_success_is_a_manual_row() {
    let p = Project::new();
    p.config("", TICK);
    let out = p.run(&["run-once", "tick"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("tick succeeded"));
    let rows = p.history();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r["trigger"], "manual");
    assert_eq!(r["outcome"], "success");
    assert_eq!(r["attempt"], 1);
    assert_eq!(r["result"]["job"], "tick");
    assert_eq!(r["result"]["run_id"], r["id"]);
    assert!(r["exit_code"] == 0);
    assert!(r["entered_at"].is_string());
    assert!(ts(&r["finished_at"]) >= ts(&r["started_at"]));
}

#[test]
fn run_once_failure_records_the_exception() {
    let p = Project::new();
    p.config(
        "",
        r#"
[jobs.fails]
entry = "fixture_jobs:boom"
schedule = "0 */3 * * * *"
[jobs.exits]
entry = "fixture_jobs:exit3"
schedule = "0 */3 * * * *"
"#,
    );
    let out = p.run(&["run-once", "fails"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let rows = p.history();
    assert_eq!(rows[0]["outcome"], "failed");
    let error = rows[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("ValueError: boom: the feed returned nothing"),
        "{error}"
    );
    // The traceback is in the job's log, from the job's own code on, and the message says where.
    let log = std::fs::read_to_string(p.log_dir().join("jobs/fails.log")).expect("job log");
    assert!(log.contains("Traceback"), "{log}");
    assert!(log.contains("about to fail"), "{log}");
    assert!(!log.contains("hedge_bridge"), "{log}");
    assert!(log.contains("fixture_jobs.py"), "{log}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!(
            "its output and traceback: `hedge-scheduler --config {} logs fails --run {}`",
            p.config_path().display(),
            rows[0]["id"]
        )) && said.contains("jobs/fails.log"),
        "{said}"
    );

    let out = p.run(&["run-once", "exits"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let rows = p.history();
    assert_eq!(rows[0]["outcome"], "failed");
    assert_eq!(rows[0]["exit_code"], 3);
}

#[test]
fn five_megabytes_of_output_do_not_stall_a_job() {
    let p = Project::new();
    p.config(
        "",
        r#"
[jobs.chatty]
entry = "fixture_jobs:chatty"
schedule = "0 */3 * * * *"
timeout = "60s"
"#,
    );
    let out = p.run(&["run-once", "chatty"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(p.history()[0]["outcome"], "success");
    let log = std::fs::read_to_string(p.log_dir().join("jobs/chatty.log")).expect("job log");
    assert!(log.len() > 5_000_000, "log holds {} bytes", log.len());
    assert!(log.contains("00051999 xxx"));
    assert!(log.contains("CHATTY-DONE"));
}

#[test]
fn timeout_ends_the_whole_process_group() {
    let p = Project::new();
    let pid_file = p.path().join("pids.txt");
    p.config(
        "",
        &format!(
            r#"
[jobs.sleepy]
entry = "fixture_jobs:sleepy"
schedule = "0 */3 * * * *"
timeout = "2s"
args = {{ pid_file = {:?} }}
"#,
            pid_file
        ),
    );
    let out = p.run(&["run-once", "sleepy"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let rows = p.history();
    assert_eq!(rows[0]["outcome"], "timeout", "{rows:?}");
    assert!(
        rows[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out")
    );
    let pids = std::fs::read_to_string(&pid_file).expect("the job wrote its PIDs");
    let pids: Vec<i32> = pids
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(
            wait_until(Duration::from_secs(5), || !pid_alive(pid)),
            "process {pid} of the job's group outlived the run"
        );
    }
}

#[test]
fn a_slot_that_finds_its_job_still_running_is_skipped() {
    let p = Project::new();
    p.config(
        "",
        r#"
[jobs.slow]
entry = "fixture_jobs:slow"
schedule = "* * * * * *"
market_hours = false
args = { seconds = 2.5 }
"#,
    );
    let mut daemon = p.spawn_daemon();
    let seen = wait_until(Duration::from_secs(20), || {
        p.log_dir().join("history.sqlite3").exists()
            && !p.runs_with("skipped").is_empty()
            && !p.runs_with("success").is_empty()
    });
    // A second signal ends the running job at once.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        Signal::SIGTERM,
    );
    std::thread::sleep(Duration::from_millis(200));
    let status = signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(10));
    assert!(seen, "{:?}", p.history());
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let skipped = &p.runs_with("skipped")[0];
    assert!(
        skipped["error"]
            .as_str()
            .unwrap_or_default()
            .contains("still running since"),
        "{skipped}"
    );
    // Nothing is left `running`: the run ended by the second signal is `cancelled`.
    assert!(p.runs_with("running").is_empty(), "{:?}", p.history());
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
fn bad_configs_exit_2_naming_file_and_key_and_start_nothing() {
    let good_job = r#"
[jobs.tick]
entry = "fixture_jobs:noop"
schedule = "* * * * * *"
market_hours = false
"#;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "",
            "[jobs.tick]\nentry = \"fixture_jobs:noop\"\nschedual = \"* * * * * *\"\n".to_string(),
            "schedual",
        ),
        (
            "",
            good_job.replace("* * * * * *", "61 * * * * *"),
            "schedule",
        ),
        (
            "",
            good_job.replace("* * * * * *", "every minute"),
            "schedule",
        ),
        ("", format!("{good_job}executor = \"thread\"\n"), "executor"),
        ("", format!("{good_job}timeout = \"soon\"\n"), "timeout"),
        (
            "",
            good_job.replace("entry = \"fixture_jobs:noop\"\n", ""),
            "entry",
        ),
        (
            "",
            good_job.replace("fixture_jobs:noop", "fixture_jobs"),
            "entry",
        ),
        (
            "",
            good_job.replace("fixture_jobs:noop", "no_such_module:run"),
            "entry",
        ),
        (
            "shutdown_grace = \"-1s\"",
            good_job.to_string(),
            "shutdown_grace",
        ),
    ];
    for (extra, jobs, key) in &cases {
        let p = Project::new();
        p.config(extra, jobs);
        for args in [&["check-config"][..], &["run"], &["run-once", "tick"]] {
            let out = p.run(args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?} with {key}: {}",
                text(&out)
            );
            assert!(stderr.contains("config.toml:"), "{args:?}: {stderr}");
            assert!(
                stderr.contains(key),
                "{args:?} should name `{key}`: {stderr}"
            );
            assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
        assert!(
            !p.log_dir().join("history.sqlite3").exists(),
            "a bad config must start nothing"
        );
    }

    // An unknown exchange, and a file that cannot be read.
    let p = Project::new();
    p.config("", TICK);
    let text_ = std::fs::read_to_string(p.config_path()).unwrap();
    std::fs::write(p.config_path(), text_.replace("\"XNSE\"", "\"XLON\"")).unwrap();
    let out = p.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config.toml:2:12: unknown exchange `XLON`"),
        "{stderr}"
    );
    assert!(stderr.contains("scheduler.exchange"), "{stderr}");

    let out = p
        .cmd(&["status"])
        .arg("--config")
        .arg("/nonexistent/hs.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/hs.toml: cannot read config file"),
        "{stderr}"
    );
}

#[test]
fn unknown_job_lists_the_configured_ones() {
    let p = Project::new();
    p.config("", TICK);
    let out = p.run(&["run-once", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown job `nope`"), "{stderr}");
    assert!(stderr.contains("tick"), "{stderr}");
}

#[test]
fn config_comes_from_flag_in_any_position_or_environment() {
    let p = Project::new();
    p.config("", TICK);
    let cfg = p.config_path();
    let after = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(after.status.code(), Some(0), "{}", text(&after));
    let env = std::process::Command::new(BIN)
        .arg("check-config")
        .env("HEDGE_SCHEDULER_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_eq!(env.status.code(), Some(0), "{}", text(&env));
    assert!(String::from_utf8_lossy(&env.stdout).contains("tick"));
}

#[test]
fn shipped_jobs_run_once_and_fill_the_market_database() {
    // A copy of the repository's config and bridge, as a fresh clone has them.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("config")).unwrap();
    std::fs::copy(
        repo().join("config/hedge-scheduler.toml"),
        root.join("config/hedge-scheduler.toml"),
    )
    .unwrap();
    copy_tree(&repo().join("python_bridge"), &root.join("python_bridge"));
    for job in ["options_chain", "intraday", "options_analysis"] {
        let out = std::process::Command::new(BIN)
            .args(["run-once", job])
            .current_dir(root)
            .env_remove("HEDGE_SCHEDULER_CONFIG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{job}: {}", text(&out));
    }
    let db_path = root.join("data/market.sqlite3");
    let db = rusqlite_count(&db_path);
    for (table, min) in [
        ("chain_snapshots", 2),
        ("chain_quotes", 80),
        ("analysis", 2),
    ] {
        let n = db(table);
        assert!(n >= min, "{table} has {n} rows");
    }
    // Bars only of today's session, as completed by now: none on a closed day.
    let rows = std::process::Command::new(BIN)
        .args(["history", "intraday", "--json", "--limit", "1"])
        .current_dir(root)
        .env_remove("HEDGE_SCHEDULER_CONFIG")
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&rows.stdout).unwrap();
    let result = &rows[0]["result"];
    let written: i64 = ["NIFTY", "BANKNIFTY"]
        .iter()
        .map(|i| result["bars_written"][i].as_i64().unwrap_or(-1))
        .sum();
    assert_eq!(db("intraday_bars"), written, "{result}");
    if result["session"].is_null() {
        assert_eq!(written, 0, "{result}");
    }
    assert!(root.join("logs/history.sqlite3").exists());
}

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

/// Counts rows with the sqlite3 module of the real Python, as a user of the data would.
fn rusqlite_count(db: &std::path::Path) -> impl Fn(&str) -> i64 + '_ {
    move |table| {
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from {table}').fetchone()[0])"
            ))
            .arg(db)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(-1)
    }
}

#[test]
fn run_once_killed_by_sigterm_ends_its_job_and_says_so() {
    let p = Project::new();
    let pid_file = p.path().join("job.pid");
    p.config(
        "",
        &format!(
            "[jobs.long]\nentry = \"fixture_jobs:sleepy_pid\"\nschedule = \"0 0 * * * *\"\nargs = {{ pid_file = {pid_file:?} }}\n"
        ),
    );
    let mut once = p
        .cmd(&["run-once", "long"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(15), || pid_file.exists()));
    let job_pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let status = signal_and_wait(&mut once, Signal::SIGTERM, Duration::from_secs(10))
        .expect("run-once exits");
    assert_eq!(status.code(), Some(1));
    assert!(!pid_alive(job_pid), "the job outlived run-once");
    let row = &p.history()[0];
    assert_eq!(row["outcome"], "cancelled", "{row}");
    assert!(row["error"].as_str().unwrap().contains("SIGTERM"), "{row}");
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
