//! Firing: each slot on time and once, whatever the overlap, a clock step, a reload, a slow
//! history or a hanging interpreter probe.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::util::*;

/// Every slot ran once at most.
fn assert_no_slot_twice(runs: &[Ran]) {
    let mut seen = BTreeMap::new();
    for r in runs {
        *seen.entry(r.slot).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "slots run twice: {twice:?}");
}

fn epoch(t: DateTime<Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

fn sig_child(child: &std::process::Child, s: Signal) {
    kill(Pid::from_raw(child.id() as i32), s).expect("signal");
}

fn history_by_id(p: &Project) -> BTreeMap<i64, Value> {
    p.history()
        .into_iter()
        .map(|r| (r["id"].as_i64().unwrap_or_default(), r))
        .collect()
}

/// A `python` that hangs when the file `hang` is beside it, like an interpreter stuck on a
/// network mount.
fn hanging_python(p: &Project) -> PathBuf {
    let real = String::from_utf8(
        std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3")
            .stdout,
    )
    .expect("path");
    let path = p.path().join("python-maybe-hangs");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nif [ -e \"$(dirname \"$0\")/hang\" ]; then sleep 600; fi\nexec {} \"$@\"\n",
            real.trim()
        ),
    )
    .expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the state.
    n(11) + n(12)
}

/// Kills the daemon if the test fails before stopping it.
struct Guard(u32);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}

fn scopeguard(pid: u32) -> Guard {
    Guard(pid)
}

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
fn a_locked_history_delays_rows_never_a_fire() {
    let p = Project::new();
    let jobs = journaled(&p, "sub", "subprocess") + &journaled(&p, "py", "pyo3");
    p.config("health_interval = \"1s\"", &jobs);
    let daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || journal(&p, "sub").len() >= 2
            && journal(&p, "py").len() >= 2),
        "{}",
        p.daemon_output()
    );
    // Another process holds the history under BEGIN EXCLUSIVE for 10 s.
    let db = p.log_dir().join("history.sqlite3");
    let mut locker = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys,time\nc=sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep(10)\nc.execute('COMMIT')",
        ])
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("locker");
    let mut line = String::new();
    std::io::BufReader::new(locker.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("locker says it holds the lock");
    assert_eq!(line.trim(), "locked");
    let locked_at = Utc::now();
    // `status` tells the truth meanwhile: the history refuses, and how many rows wait.
    let told = wait_until(Duration::from_secs(8), || {
        let out = p.run(&["status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| {
            v["warnings"].as_array().is_some_and(|w| {
                w.iter().any(|w| {
                    w.as_str().is_some_and(|w| {
                        w.starts_with("history database:") && w.contains(" waiting)")
                    })
                })
            })
        })
    });
    let _ = locker.wait();
    let unlocked_at = Utc::now();
    assert!(told, "status did not say the history refuses writes");
    assert!(unlocked_at - locked_at >= chrono::Duration::seconds(9));

    // While the lock was held every slot of both jobs ran, on time.
    let inside = |r: &Ran| {
        r.slot > locked_at + chrono::Duration::seconds(1)
            && r.slot < unlocked_at - chrono::Duration::seconds(1)
    };
    for id in ["sub", "py"] {
        let runs: Vec<Ran> = journal(&p, id).into_iter().filter(inside).collect();
        assert_no_slot_twice(&runs);
        assert!(
            runs.len() >= 7,
            "{id}: only {} runs under the lock: {runs:?}",
            runs.len()
        );
        // Each ran while the lock was still held: none waited for the database (how late a
        // run starts is measured by the benchmarks, not here).
        for r in &runs {
            assert!(
                r.entered < epoch(unlocked_at),
                "{id}: slot {} ran only after the lock was gone",
                r.slot
            );
        }
        // Consecutive seconds: none was skipped.
        for w in runs.windows(2) {
            assert_eq!(
                w[1].slot - w[0].slot,
                chrono::Duration::seconds(1),
                "{id}: {runs:?}"
            );
        }
    }
    // Once the lock is gone every run has its row, under the id the job saw.
    let all_rows = wait_until(Duration::from_secs(20), || {
        let rows = history_by_id(&p);
        ["sub", "py"].iter().all(|id| {
            journal(&p, id).iter().filter(|r| inside(r)).all(|r| {
                rows.get(&r.run_id).is_some_and(|row| {
                    row["job"] == *id
                        && row["outcome"] == "success"
                        && ts(&row["scheduled_at"]) == r.slot
                })
            })
        })
    });
    stop_within(daemon, Duration::from_secs(10));
    assert!(all_rows, "rows missing after the lock: {:#?}", p.history());
    assert!(
        !p.history().iter().any(|r| r["outcome"] == "skipped"),
        "nothing was skipped"
    );
}

#[test]
fn sighup_just_before_a_slot_loses_no_slot() {
    let p = Project::new();
    p.config("", &journaled(&p, "tick", "subprocess"));
    let daemon = p.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || !journal(&p, "tick").is_empty()));
    for _ in 0..5 {
        // At x.95 s: the reload (it probes the interpreter) is still being read at the slot.
        let now = Utc::now();
        let ms = now.timestamp_subsec_millis();
        let wait = (950 + 1000 - ms) % 1000;
        std::thread::sleep(Duration::from_millis(u64::from(wait).max(1)));
        sig_child(&daemon, Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(600));
    }
    assert!(wait_until(Duration::from_secs(10), || p
        .daemon_output()
        .matches("config reloaded")
        .count()
        >= 5));
    std::thread::sleep(Duration::from_millis(1500));
    stop_within(daemon, Duration::from_secs(10));
    let runs = journal(&p, "tick");
    assert_no_slot_twice(&runs);
    let rows = p.history();
    let first = runs.first().map(|r| r.slot).expect("runs");
    let last = runs.last().map(|r| r.slot).expect("runs");
    let mut slot = first;
    while slot <= last {
        let ran = runs.iter().any(|r| r.slot == slot);
        let row = rows
            .iter()
            .any(|r| r["job"] == "tick" && ts(&r["scheduled_at"]) == slot);
        assert!(ran && row, "slot {slot}: ran {ran}, row {row}\n{rows:#?}");
        slot += chrono::Duration::seconds(1);
    }
}

#[test]
fn a_hanging_interpreter_probe_is_rejected_and_firing_goes_on() {
    let p = Project::new();
    let python = hanging_python(&p);
    p.config("", &journaled(&p, "tick", "subprocess"));
    p.set("python.executable", python.display().to_string())
        .set("python.probe_timeout", "2s");
    let daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || !journal(&p, "tick").is_empty()),
        "{}",
        p.daemon_output()
    );
    std::fs::write(p.path().join("hang"), "").expect("hang");
    let hup_at = Utc::now();
    sig_child(&daemon, Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || p
            .daemon_output()
            .contains("did not answer within 2s")),
        "{}",
        p.daemon_output()
    );
    assert!(
        p.daemon_output()
            .contains("config rejected, keeping the old one")
    );
    // Firing went on while the probe hung.
    let during: Vec<Ran> = journal(&p, "tick")
        .into_iter()
        .filter(|r| r.slot > hup_at && r.slot < hup_at + chrono::Duration::seconds(2))
        .collect();
    assert!(!during.is_empty(), "{during:?}");
    // A second probe hangs again; SIGTERM still stops the daemon at once.
    sig_child(&daemon, Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    stop_within(daemon, Duration::from_secs(5));
    // check-config gives up too, with the key to look at.
    let started = Instant::now();
    let out = p.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("python.probe_timeout"),
        "{}",
        text(&out)
    );
    // The probes' process groups were ended: no `sleep 600` of ours is left.
    let left = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let c = String::from_utf8_lossy(c);
            c.contains("python-maybe-hangs") && c.contains(&p.path().display().to_string())
        })
        .count();
    assert_eq!(left, 0, "a hung probe was left running");
}

#[test]
fn clock_steps_back_and_forward_fire_nothing_twice_and_account_for_the_gap() {
    if !crate::util::have_faketime() {
        return;
    }
    let p = Project::new();
    p.config(
        "shutdown_grace = \"3s\"",
        &(journaled(&p, "tick", "pyo3") + "catch_up = \"latest\"\n"),
    );
    let fake = p.path().join("faketime");
    set_fake(&fake, "+0");
    let out = std::fs::File::create(p.path().join("daemon.out")).expect("daemon.out");
    let mut daemon = p
        .cmd(&["run"])
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME_TIMESTAMP_FILE", &fake)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("FAKETIME_DONT_RESET", "1")
        .stdout(out.try_clone().expect("out"))
        .stderr(out)
        .spawn()
        .expect("daemon");
    let pid = daemon.id();
    let guard = scopeguard(pid);
    assert!(
        wait_until(Duration::from_secs(20), || journal(&p, "tick").len() >= 3),
        "{}",
        p.daemon_output()
    );
    // Forward an hour: one compact row for the slots jumped over, the newest slot runs.
    set_fake(&fake, "+3600");
    let gap = wait_until(Duration::from_secs(15), || {
        p.try_history().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["outcome"] == "skipped" && r["missed_count"].as_i64().is_some_and(|n| n >= 3000)
            })
        })
    });
    assert!(gap, "{}\n{:#?}", p.daemon_output(), p.history());
    let ahead = Utc::now() + chrono::Duration::seconds(3600);
    assert!(wait_until(Duration::from_secs(10), || journal(&p, "tick")
        .iter()
        .any(|r| r.slot > ahead)));
    // Back an hour: the slots of that hour were dealt with; nothing fires twice or spins.
    let before_back = journal(&p, "tick").last().map(|r| r.slot).expect("runs");
    set_fake(&fake, "+0");
    std::thread::sleep(Duration::from_millis(500));
    let cpu0 = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let cpu = cpu_ticks(pid) - cpu0;
    // Clock ticks are 1/100 s: a busy wait would burn ~300 in 3 s.
    assert!(
        cpu < 60,
        "the daemon burned {cpu} ticks in 3 s after the step back"
    );
    let after_back: Vec<Ran> = journal(&p, "tick")
        .into_iter()
        .filter(|r| r.slot > before_back)
        .collect();
    assert!(
        after_back.len() <= 1,
        "slots fired after stepping back: {after_back:?}"
    );
    assert!(
        p.daemon_output().contains("stepped back by"),
        "{}",
        p.daemon_output()
    );
    // `stop` (not under faketime) stops it within the grace.
    let started = Instant::now();
    let out = p.run(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    let _ = daemon.wait();
    drop(guard);

    let runs = journal(&p, "tick");
    assert_no_slot_twice(&runs);
    let rows = p.history();
    let gaps: Vec<&Value> = rows.iter().filter(|r| r["outcome"] == "skipped").collect();
    assert_eq!(gaps.len(), 1, "one compact row for the gap: {gaps:#?}");
    let gap = gaps[0];
    let reason = gap["error"].as_str().unwrap_or_default();
    assert!(reason.contains("stepped forward by"), "{reason}");
    let n = gap["missed_count"].as_i64().expect("count");
    let (from, to) = (ts(&gap["missed_from"]), ts(&gap["missed_to"]));
    assert_eq!((to - from).num_seconds() + 1, n, "a contiguous gap");
    // After the gap, the newest slot ran (not an old one).
    let first_after = runs
        .iter()
        .find(|r| r.slot > to)
        .expect("a run after the gap");
    assert!(
        first_after.slot - to <= chrono::Duration::seconds(2),
        "{first_after:?}"
    );
    assert_ne!(
        first_after.trigger, "catch-up",
        "the current slot superseded the gap"
    );
}
