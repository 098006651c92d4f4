//! Logs: the daemon's log and the jobs' logs rotate by day and can be followed.

use std::process::Command;
use std::time::Duration;

use crate::util::*;

#[test]
fn the_daemon_log_keeps_its_name_and_tail_f_follows_it_across_the_days_rotation() {
    if !crate::util::have_faketime() {
        return;
    }
    use crate::util::{libfaketime, set_fake};
    let p = Project::new();
    p.config(
        "",
        "[jobs.idle]\nentry = \"fixture_jobs:noop\"\nschedule = \"0 0 0 1 1 *\"\nmarket_hours = false\nexecutor = \"subprocess\"\n",
    );
    // The daemon's clock (libfaketime) a few seconds before the next UTC midnight.
    let now = chrono::Utc::now();
    let midnight = (now.date_naive() + chrono::Days::new(1))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let before = (midnight - now).num_seconds() - 8;
    let fake = p.path().join("faketime");
    set_fake(&fake, &format!("+{before}"));
    let mut daemon = p.spawn_daemon_with(&[], |c| {
        c.env("LD_PRELOAD", libfaketime())
            .env("FAKETIME_TIMESTAMP_FILE", &fake)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("FAKETIME_DONT_RESET", "1");
    });
    let log = p.log_dir().join("hedge-scheduler.log");
    assert!(
        wait_until(
            std::time::Duration::from_secs(20),
            || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("All services initialized"))
                && p.log_dir().join("control.sock").exists()
        ),
        "{}",
        p.daemon_output()
    );
    // Followed by name, as an operator would.
    let followed = p.path().join("tail.out");
    let mut tail = Command::new("tail")
        .args(["-F", "-n", "+1", "-s", "0.2"])
        .arg(&log)
        .stdout(std::fs::File::create(&followed).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Past midnight: the next line goes to a new file of the same name, the day's to its dated one.
    set_fake(&fake, &format!("+{}", before + 16));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = p.run(&["trigger", "idle"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let seen = wait_until(std::time::Duration::from_secs(20), || {
        std::fs::read_to_string(&followed).is_ok_and(|t| t.contains("idle succeeded"))
    });
    let _ = tail.kill();
    let _ = tail.wait();
    let _ = signal_and_wait(
        &mut daemon,
        nix::sys::signal::Signal::SIGTERM,
        std::time::Duration::from_secs(30),
    );
    assert!(
        seen,
        "tail -F lost the log: {}",
        std::fs::read_to_string(&followed).unwrap_or_default()
    );
    let dated = p
        .log_dir()
        .join(format!("hedge-scheduler.log.{}", now.date_naive()));
    let old =
        std::fs::read_to_string(&dated).unwrap_or_else(|e| panic!("{}: {e}", dated.display()));
    assert!(
        old.contains("All services initialized") && !old.contains("idle succeeded"),
        "{old}"
    );
    let new = std::fs::read_to_string(&log).unwrap();
    assert!(
        new.contains("idle succeeded") && !new.contains("All services initialized"),
        "{new}"
    );
}

#[test]
fn job_logs_rotate_daily_and_keep_their_count() {
    let p = Project::new();
    p.config("log_files_kept = 3", &job("tick", TICK_JOB));
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
