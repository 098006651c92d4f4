//! Run-time control of a running daemon: `pause`/`resume`, `trigger`, `backfill`; each survives
//! the daemon's restart. Each test's job records what really ran in a file of its own.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

/// `fixture_jobs:verdict` on `schedule`, recording each execution (run id, attempt, trigger,
/// slot) in `ran`.
fn recorded(
    id: &str,
    schedule: &str,
    market_hours: bool,
    ran: &Path,
    verdict: &Path,
    seconds: f64,
) -> String {
    job(
        id,
        &format!(
            "entry = \"fixture_jobs:verdict\"\nschedule = \"{schedule}\"\nmarket_hours = {market_hours}\nargs = {{ file = {ran:?}, verdict = {verdict:?}, seconds = {seconds} }}"
        ),
    )
}

fn executions(path: &Path) -> Vec<String> {
    file_lines(path)
}

fn status(p: &Project) -> Value {
    serde_json::from_slice(&p.run(&["status", "--json"]).stdout).expect("status JSON")
}

fn job_status(p: &Project, id: &str) -> Value {
    status(p)["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["job"] == id).cloned())
        .expect("the job in status")
}

fn ready(p: &Project) -> bool {
    wait_until(Duration::from_secs(20), || {
        p.path().join("logs/control.sock").exists()
            && p.run(&["status", "--json"]).status.code() == Some(0)
    })
}

/// How many executions the job records over `quiet`, after a settling second.
fn executions_during(ran: &Path, quiet: Duration) -> usize {
    std::thread::sleep(Duration::from_millis(1500));
    let before = executions(ran).len();
    std::thread::sleep(quiet);
    executions(ran).len() - before
}

#[test]
fn pause_and_resume_a_running_daemon_and_the_pause_survives_a_restart() {
    let p = Project::new();
    let (ran, verdict) = verdict_files(&p, "ok");
    p.config(
        "",
        &recorded("feed", "* * * * * *", false, &ran, &verdict, 0.0),
    );
    // No daemon: exit 3.
    let out = p.run(&["pause", "feed"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let daemon = p.spawn_daemon();
    assert!(ready(&p), "{}", p.daemon_output());
    assert!(wait_until(Duration::from_secs(20), || executions(&ran)
        .len()
        >= 2));

    let out = p.run(&["pause", "feed"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("paused"));
    let s = job_status(&p, "feed");
    assert_eq!(s["paused"], true, "{s:#}");
    assert_eq!(s["paused_until"], Value::Null);
    assert!(String::from_utf8_lossy(&p.run(&["status"]).stdout).contains("paused"));
    assert_eq!(
        executions_during(&ran, Duration::from_secs(3)),
        0,
        "a paused job ran"
    );
    // One compact row holds the paused slots, and it grows.
    let paused_rows = |p: &Project| -> Vec<Value> {
        p.history()
            .into_iter()
            .filter(|r| {
                r["outcome"] == "skipped"
                    && r["error"].as_str().is_some_and(|e| e.starts_with("paused"))
            })
            .collect()
    };
    let rows = paused_rows(&p);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let first_count = rows[0]["missed_count"].as_i64().unwrap_or(0);
    assert!(first_count >= 3, "{rows:#?}");
    assert!(wait_until(Duration::from_secs(10), || {
        paused_rows(&p)[0]["missed_count"]
            .as_i64()
            .is_some_and(|n| n > first_count)
    }));

    // A restart keeps the pause.
    stop_clean(&p, daemon);
    let daemon = p.spawn_daemon();
    assert!(ready(&p), "{}", p.daemon_output());
    assert_eq!(job_status(&p, "feed")["paused"], true);
    assert_eq!(
        executions_during(&ran, Duration::from_secs(3)),
        0,
        "paused job ran after a restart"
    );

    let out = p.run(&["resume", "feed"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(wait_until(Duration::from_secs(10), || executions_during(
        &ran,
        Duration::from_secs(1)
    ) > 0));
    assert_eq!(job_status(&p, "feed")["paused"], false);
    // Every slot is accounted for exactly once: run, or held back in a paused row.
    let history = p.history();
    let runs = history.iter().filter(|r| r["outcome"] == "success").count();
    assert!(executions(&ran).len() >= runs);

    // `--until`: in the past is refused; `@close` is the session's close in exchange time.
    let out = p.run(&["pause", "feed", "--until", "2020-01-01"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in the past"));
    let out = p.run(&["pause", "feed", "--until", "@close"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let until = job_status(&p, "feed")["paused_until"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(until.ends_with("T15:30:00+05:30"), "{until}");
    let out = p.run(&["resume", "feed"]);
    assert_eq!(out.status.code(), Some(0));
    // An unknown job: a usage error naming the known ones.
    let out = p.run(&["pause", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("feed"));
    stop_clean(&p, daemon);
}

#[test]
fn trigger_runs_now_under_the_overlap_guard_and_a_queued_one_survives_a_restart() {
    let p = Project::new();
    let (ran, verdict) = verdict_files(&p, "ok");
    // A job that never fires by itself; each run takes 2 s.
    p.config(
        "shutdown_grace = \"30s\"",
        &recorded("report", "0 0 0 1 1 *", false, &ran, &verdict, 2.0),
    );
    let daemon = p.spawn_daemon();
    assert!(ready(&p), "{}", p.daemon_output());
    let out = p.run(&["trigger", "report"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("started"),
        "{}",
        text(&out)
    );
    assert!(wait_until(Duration::from_secs(10), || executions(&ran)
        .len()
        == 1));
    // While it runs: a second is queued, a third is refused as already queued.
    let out = p.run(&["trigger", "report"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("queued"),
        "{}",
        text(&out)
    );
    let out = p.run(&["trigger", "report"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already queued"),
        "{}",
        text(&out)
    );
    // The daemon stops (waiting for the running one); the queued run survives the restart.
    stop_clean(&p, daemon);
    assert_eq!(executions(&ran).len(), 1);
    let daemon = p.spawn_daemon();
    assert!(ready(&p), "{}", p.daemon_output());
    assert!(
        wait_until(Duration::from_secs(20), || executions(&ran).len() == 2),
        "{}",
        p.daemon_output()
    );
    assert!(wait_until(Duration::from_secs(10), || p
        .runs_with("success")
        .len()
        == 2));
    let manual: Vec<Value> = p
        .history()
        .into_iter()
        .filter(|r| r["trigger"] == "manual")
        .collect();
    assert_eq!(manual.len(), 2, "{manual:#?}");
    assert!(executions(&ran).iter().all(|l| l.contains(" manual ")));
    // A paused job is not triggered.
    assert_eq!(p.run(&["pause", "report"]).status.code(), Some(0));
    let out = p.run(&["trigger", "report"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("paused"));
    stop_clean(&p, daemon);
    assert_eq!(executions(&ran).len(), 2);
}

#[test]
fn backfill_runs_each_missing_slot_once_with_its_own_time_and_survives_a_restart() {
    let p = Project::new();
    let (ran, verdict) = verdict_files(&p, "ok");
    p.config(
        "shutdown_grace = \"30s\"",
        &recorded("bars", "0 */15 * * * *", true, &ran, &verdict, 0.2),
    );
    let day = "2026-11-26";
    let plan: Vec<Value> = serde_json::from_slice(
        &p.run(&[
            "plan", "--job", "bars", "--from", day, "--to", day, "--json",
        ])
        .stdout,
    )
    .expect("plan JSON");
    let expected: Vec<chrono::DateTime<chrono::Utc>> = plan.iter().map(|f| ts(&f["at"])).collect();
    assert!(expected.len() > 20, "{plan:#?}");
    let daemon = p.spawn_daemon();
    assert!(ready(&p), "{}", p.daemon_output());
    let out = p.run(&["backfill", "bars", "--from", day, "--to", day]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Stopped midway, started again: the rest goes on.
    assert!(wait_until(Duration::from_secs(30), || executions(&ran)
        .len()
        >= 5));
    stop_clean(&p, daemon);
    let midway = executions(&ran).len();
    assert!(
        midway < expected.len(),
        "the backfill ended before the restart"
    );
    let daemon = p.spawn_daemon();
    assert!(ready(&p), "{}", p.daemon_output());
    assert!(
        wait_until(Duration::from_secs(60), || executions(&ran).len()
            >= expected.len()),
        "{} of {}\n{}",
        executions(&ran).len(),
        expected.len(),
        p.daemon_output()
    );
    assert!(wait_until(Duration::from_secs(10), || job_status(
        &p, "bars"
    )["backfill_pending"]
        == 0));
    // Each slot ran once, with its own time, trigger `backfill`.
    let mut slots: Vec<chrono::DateTime<chrono::Utc>> = executions(&ran)
        .iter()
        .map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(parts[2], "backfill", "{l}");
            ts(&Value::String(parts[3].to_string()))
        })
        .collect();
    slots.sort();
    assert_eq!(slots, expected);
    let rows: Vec<Value> = p
        .history()
        .into_iter()
        .filter(|r| r["trigger"] == "backfill" && r["outcome"] == "success")
        .collect();
    assert_eq!(rows.len(), expected.len());
    // Asked again: nothing is missing.
    let out = p.run(&["backfill", "bars", "--from", day, "--to", day]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to backfill"),
        "{}",
        text(&out)
    );
    stop_clean(&p, daemon);
    assert_eq!(executions(&ran).len(), expected.len());
}

#[test]
fn a_big_backfill_never_holds_the_live_slots_and_absurd_ranges_are_refused() {
    let p = Project::new();
    let (ran, verdict) = verdict_files(&p, "ok");
    // 17,280 slots a day: yesterday's are one big backfill.
    p.config(
        "health_interval = \"1s\"",
        &recorded("every5", "*/5 * * * * *", false, &ran, &verdict, 0.0),
    );
    let daemon = p.spawn_daemon();
    assert!(ready(&p), "{}", p.daemon_output());
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Kolkata)
        .date_naive();
    let day = |n: i64| (today + chrono::Duration::days(n)).to_string();
    // Refused: the future, older than the history keeps, more than 20,000 slots.
    for (from, to, says) in [
        (day(1), day(1), "in the future"),
        (day(-400), day(-400), "older than the history keeps"),
        (day(-3), day(-1), "at most 20000"),
    ] {
        let out = p.run(&["backfill", "every5", "--from", &from, "--to", &to]);
        assert_eq!(out.status.code(), Some(2), "{from}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{}",
            text(&out)
        );
    }
    let asked = std::time::Instant::now();
    let out = p.run(&["backfill", "every5", "--from", &day(-1), "--to", &day(-1)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the request took {:?}",
        asked.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("17280 slots queued"),
        "{}",
        text(&out)
    );
    // Live slots keep firing on time while the backfill works.
    let after = chrono::Utc::now();
    assert!(wait_until(Duration::from_secs(20), || {
        p.try_history()
            .unwrap_or_default()
            .iter()
            .filter(|r| r["trigger"] == "schedule" && ts(&r["scheduled_at"]) > after)
            .count()
            >= 2
    }));
    for r in p
        .history()
        .iter()
        .filter(|r| r["trigger"] == "schedule" && ts(&r["scheduled_at"]) > after)
    {
        let late = ts(&r["started_at"]) - ts(&r["scheduled_at"]);
        assert!(late < chrono::Duration::milliseconds(500), "{r:#}");
    }
    assert!(p.history().iter().any(|r| r["trigger"] == "backfill"));
    // What is kept across a restart is the range, not 17,280 instants.
    let kept = std::fs::metadata(p.path().join("logs/control.json"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(kept > 0 && kept < 4096, "control.json is {kept} bytes");
    let pending = job_status(&p, "every5")["backfill_pending"]
        .as_u64()
        .unwrap_or(0);
    assert!(pending > 10_000, "{pending}");

    // The control socket removed from under the daemon is made again.
    std::fs::remove_file(p.path().join("logs/control.sock")).expect("rm socket");
    let out = p.run(&["pause", "every5"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("control socket"),
        "{}",
        text(&out)
    );
    assert!(wait_until(Duration::from_secs(20), || p
        .run(&["pause", "every5"])
        .status
        .code()
        == Some(0)));
    // `logs --run` of a run that never was: a clear error.
    let out = p.run(&["logs", "every5", "--run", "99999999"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    stop_clean(&p, daemon);
}

#[test]
fn an_unreadable_control_file_is_kept_aside_and_said() {
    let p = Project::new();
    let (ran, verdict) = verdict_files(&p, "ok");
    p.config(
        "",
        &recorded("feed", "* * * * * *", false, &ran, &verdict, 0.0),
    );
    std::fs::create_dir_all(p.log_dir()).expect("logs");
    std::fs::write(p.log_dir().join("control.json"), "{ \"paused\": [garbage").expect("write");
    let daemon = p.spawn_daemon();
    assert!(ready(&p), "{}", p.daemon_output());
    assert!(
        p.daemon_output().contains("cannot be read"),
        "{}",
        p.daemon_output()
    );
    let aside: Vec<String> = std::fs::read_dir(p.log_dir())
        .expect("logs")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("control.json.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read_to_string(p.log_dir().join(&aside[0])).expect("aside"),
        "{ \"paused\": [garbage"
    );
    // The daemon goes on: the job runs, and a new pause is kept in a new file.
    assert!(wait_until(Duration::from_secs(10), || !executions(&ran).is_empty()));
    assert_eq!(p.run(&["pause", "feed"]).status.code(), Some(0));
    assert_eq!(job_status(&p, "feed")["paused"], true);
    stop_clean(&p, daemon);
}

#[test]
fn status_and_stop_reach_a_running_daemon_when_the_config_on_disk_is_broken() {
    let p = Project::new();
    p.config(
        "",
        &job(
            "idle",
            "entry = \"fixture_jobs:noop\"\nschedule = \"0 0 0 1 1 *\"",
        ),
    )
    .set("scheduler.log_dir", "the-logs");
    let mut daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || p
            .path()
            .join("the-logs/control.sock")
            .exists()),
        "{}",
        p.daemon_output()
    );
    // Broken while the daemon runs on what it read before.
    let good = std::fs::read_to_string(p.config_path()).unwrap();
    std::fs::write(p.config_path(), good.replace("[python]", "[python")).unwrap();
    let out = p.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::util::text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains(&format!("running (PID {}", daemon.id())),
        "{stdout}"
    );
    assert!(
        stderr.contains("config.toml:") && stderr.contains("the-logs"),
        "{stderr}"
    );
    let out = p.run(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["daemon"]["running"], true, "{v}");
    assert_eq!(v["daemon"]["pid"], daemon.id(), "{v}");
    let out = p.run(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", crate::util::text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped"));
    assert!(wait_until(Duration::from_secs(10), || daemon
        .try_wait()
        .ok()
        .flatten()
        .is_some()));
    // And with nothing running: exit 3, still naming the folder.
    let out = p.run(&["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", crate::util::text(&out));
}
