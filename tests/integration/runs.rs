//! One run: `run-once`, its output, its timeout, its result and resources, a signal that stops it.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

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
fn a_short_run_has_its_peak_memory_and_cpu_from_its_own_rusage() {
    let p = Project::new();
    p.config(
        "",
        "[jobs.sub]\nentry = \"fixture_jobs:touch_memory\"\nschedule = \"0 0 0 1 1 *\"\nexecutor = \"subprocess\"\nargs = { mb = 64 }\n\n\
         [jobs.forked]\nentry = \"fixture_jobs:touch_memory\"\nschedule = \"0 0 0 1 1 *\"\nexecutor = \"fork\"\nargs = { mb = 64 }\n",
    );
    for job in ["sub", "forked"] {
        let out = p.run(&["run-once", job, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let row: Value = serde_json::from_slice(&out.stdout).unwrap();
        let rss = row["peak_rss_bytes"].as_u64().unwrap_or(0);
        assert!(rss >= 64 * 1024 * 1024, "{job}: {row}");
        assert!(row["cpu_ms"].as_u64().is_some(), "{job}: {row}");
    }
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
fn a_pyo3_timeout_never_lands_in_the_next_run() {
    // Runs that end within ±20 ms of their 100 ms timeout: the interrupt and Python's return
    // race every time. An interrupt that lost must not hit the thread's next run.
    let p = Project::new();
    let file = p.path().join("edge.journal");
    p.config(
        "",
        &format!(
            "\n[jobs.edge]\nentry = \"fixture_jobs:edge\"\nschedule = \"* * * * * *\"\nmarket_hours = false\nexecutor = \"pyo3\"\ntimeout = \"100ms\"\nargs = {{ file = {:?}, ms = 100 }}\n",
            file.display().to_string()
        ),
    );
    let daemon = p.spawn_daemon();
    let enough = wait_until(Duration::from_secs(40), || {
        p.try_history().is_some_and(|rows| {
            let done = |o: &str| rows.iter().filter(|r| r["outcome"] == o).count();
            done("success") >= 4 && done("timeout") >= 4 || rows.len() >= 25
        })
    });
    stop_within(daemon, Duration::from_secs(10));
    assert!(enough, "{:#?}", p.history());
    let journal = std::fs::read_to_string(&file).unwrap_or_default();
    let entered = |id: i64| journal.lines().any(|l| l == format!("enter {id}"));
    for row in p.history() {
        let id = row["id"].as_i64().expect("id");
        let outcome = row["outcome"].as_str().unwrap_or_default();
        let error = row["error"].as_str().unwrap_or_default();
        match outcome {
            "success" => assert!(
                journal.lines().any(|l| l == format!("leave {id}")),
                "run {id} succeeded without finishing"
            ),
            "timeout" => {
                let ms = row["duration_ms"].as_i64().unwrap_or_default();
                assert!(ms >= 95, "run {id} timed out after only {ms} ms: {row:#}");
            }
            // Cancelled by the shutdown at the end.
            "cancelled" => {}
            other => panic!("run {id}: {other}: {error}"),
        }
        if outcome != "cancelled" {
            assert!(entered(id), "run {id} never entered the job: {row:#}");
        }
        assert!(
            !(outcome != "timeout" && error.contains("JobTimeout")),
            "a timeout landed in run {id}: {row:#}"
        );
    }
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
