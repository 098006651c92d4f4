//! Least privilege: files private, no symlink followed, a log folder others may write refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::util::*;

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn files_the_scheduler_creates_are_private_and_jobs_keep_the_users_umask() {
    let p = Project::new();
    let witness = p.path().join("made-by-the-job.txt");
    p.config(
        "health_interval = \"1s\"",
        &fixture(
            "w",
            "witness",
            "* * * * * *",
            &format!("args = {{ file = {:?} }}", witness.display().to_string()),
        ),
    );
    let mut daemon = p.spawn_daemon();
    let logs = p.log_dir();
    assert!(
        wait_until(Duration::from_secs(20), || logs
            .join("hedge-scheduler.state.json")
            .exists()
            && !p.runs_with("success").is_empty()),
        "{}",
        p.daemon_output()
    );
    for dir in ["", "jobs", "locks", "runtime"] {
        assert_eq!(mode_of(&logs.join(dir)), 0o700, "folder `{dir}`");
    }
    for file in [
        "history.sqlite3",
        "history.sqlite3-wal",
        "hedge-scheduler.pid",
        "hedge-scheduler.state.json",
        "jobs/w.log",
        "locks/w.lock",
    ] {
        assert_eq!(mode_of(&logs.join(file)), 0o600, "file `{file}`");
    }
    for entry in std::fs::read_dir(&logs).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            assert_eq!(mode_of(&entry.path()), 0o600, "{}", entry.path().display());
        }
    }
    // The job's own files follow the umask the scheduler was started with (this test's).
    let umask = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
        .unwrap();
    assert_eq!(mode_of(&witness), 0o666 & !umask);
    let status = signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()));
    // Files an older version left readable are made private at the next start.
    std::fs::set_permissions(
        logs.join("jobs/w.log"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // Nothing else in the folder is touched: a file of someone else's keeps its mode, and an
    // existing log folder its own.
    let foreign = logs.join("notes.txt");
    std::fs::write(&foreign, b"mine").unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = p.run(&["run-once", "w"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode_of(&logs.join("jobs/w.log")), 0o600);
    assert_eq!(mode_of(&foreign), 0o644);
    assert_eq!(mode_of(&logs), 0o755);
    // A log folder others may write in (a shared folder, /tmp) is refused, and left as it is.
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = p.run(&["run-once", "w"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("`scheduler.log_dir`")
            && text(&out).contains("other users may write in it"),
        "{}",
        text(&out)
    );
    assert_eq!(mode_of(&logs) & 0o7777, 0o1777);
    assert_eq!(mode_of(&foreign), 0o644);
}

#[test]
fn symlinks_planted_in_log_dir_are_never_followed() {
    let p = Project::new();
    p.config("", &fixture("w", "noop", "0 0 0 1 1 *", ""));
    // No shared temporary folder is used: nothing appears in TMPDIR.
    let tmp = tempfile::tempdir().unwrap();
    let out = p
        .cmd(&["run-once", "w"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    let victim = p.path().join("victim.txt");
    let plant = |name: &str| {
        std::fs::write(&victim, b"precious").unwrap();
        let link = p.log_dir().join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        link
    };
    // A job log: the run fails, saying why, and is recorded; the target is untouched.
    let link = plant("jobs/w.log");
    let out = p.run(&["run-once", "w"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("symbolic link"), "{}", text(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let row = &p.history()[0];
    assert_eq!(row["outcome"], "failed", "{row}");
    assert!(
        row["error"].as_str().unwrap().contains("could not start"),
        "{row}"
    );
    std::fs::remove_file(link).unwrap();
    // The runtime folder (where results come back): a link in its place is refused.
    std::fs::remove_dir_all(p.log_dir().join("runtime")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), p.log_dir().join("runtime")).unwrap();
    let out = p.run(&["run-once", "w"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("runtime"), "{}", text(&out));
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    std::fs::remove_file(p.log_dir().join("runtime")).unwrap();
    // The job's lock.
    let link = plant("locks/w.lock");
    let out = p.run(&["run-once", "w"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("symbolic link"), "{}", text(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    std::fs::remove_file(link).unwrap();
    // The daemon's log: the daemon refuses to start.
    let link = plant("hedge-scheduler.log");
    let out = p.run(&["run"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("symbolic link"), "{}", text(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    std::fs::remove_file(link).unwrap();
    // The PID file: the daemon refuses to start.
    let link = plant("hedge-scheduler.pid");
    let out = p.run(&["run"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("symbolic link"), "{}", text(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    std::fs::remove_file(link).unwrap();
    // The history.
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!(
            "{}{ext}",
            p.log_dir().join("history.sqlite3").display()
        ));
    }
    let _link = plant("history.sqlite3");
    let out = p.run(&["run-once", "w"]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    // The state file is replaced by a rename, never written through.
    std::fs::remove_file(p.log_dir().join("history.sqlite3")).unwrap();
    let _state = plant("hedge-scheduler.state.json");
    p.config(
        "health_interval = \"1s\"",
        &fixture("w", "noop", "0 0 0 1 1 *", ""),
    );
    let mut daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::symlink_metadata(
            p.log_dir().join("hedge-scheduler.state.json")
        )
        .is_ok_and(|m| m.file_type().is_file())),
        "{}",
        p.daemon_output()
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let status = signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()));
}

#[test]
fn a_link_swapped_in_for_a_pyo3_jobs_log_is_not_written_through() {
    let p = Project::new();
    p.config(
        "",
        &fixture("talk", "noop", "* * * * * *", "executor = \"pyo3\""),
    );
    let log = p.log_dir().join("jobs/talk.log");
    let mut daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("noop talk"))),
        "{}",
        p.daemon_output()
    );
    let victim = p.path().join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::rename(&log, p.path().join("talk.log.moved")).unwrap();
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let seen = p.history().len();
    assert!(wait_until(Duration::from_secs(20), || p.history().len() >= seen + 3));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let status = signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()));
}

#[test]
fn a_log_dir_whose_parent_others_may_write_is_refused() {
    let p = Project::new();
    let open = p.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    p.config("", &fixture("w", "noop", "0 0 0 1 1 *", ""));
    p.set("scheduler.log_dir", "open/logs");
    let out = p.run(&["run-once", "w"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("may be written by other users"),
        "{}",
        text(&out)
    );
    // Sticky, as /tmp is, with the folder below ours: fine.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = p.run(&["run-once", "w"]);
    assert!(out.status.success(), "{}", text(&out));
}
