//! What people read on the console: times in the exchange's zone, completions and the man page,
//! the market line, the status report.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

#[test]
fn completions_and_the_man_page_are_generated_for_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        for command in ["run-once", "check-config", "backfill", "completions"] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    // bash parses it.
    let script = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap()
        .stdout;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.bash"), &script).unwrap();
    let ok = Command::new("bash")
        .arg("-n")
        .arg(dir.path().join("c.bash"))
        .status()
        .unwrap();
    assert!(ok.success());
    let out = Command::new(BIN).arg("man").output().unwrap();
    assert!(out.status.success());
    // roff writes a hyphen as `\-`.
    let page = String::from_utf8_lossy(&out.stdout).replace("\\-", "-");
    assert!(
        page.starts_with(".ie") || page.contains(".TH hedge-scheduler"),
        "{}",
        &page[..200.min(page.len())]
    );
    for part in [
        "run-once",
        "HEDGE_SCHEDULER_CONFIG",
        "EXIT STATUS",
        "/etc/hedge-scheduler/hedge-scheduler.toml",
    ] {
        assert!(page.contains(part), "the man page lacks {part}");
    }
    // man renders it, when man is here.
    if Path::new("/usr/bin/man").exists() {
        std::fs::write(dir.path().join("hs.1"), page.as_bytes()).unwrap();
        let out = Command::new("man")
            .arg("-l")
            .arg(dir.path().join("hs.1"))
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("run-once"));
    }
}

#[test]
fn console_times_are_the_exchanges_with_its_zone_and_no_color_means_no_escape_codes() {
    let p = Project::new();
    p.config("", NOOP);
    // A terminal would get colour; `--color always` stands in for one, NO_COLOR does not win
    // over it, and without the flag NO_COLOR (or no terminal) means none.
    let console = |args: &[&str], no_color: bool| {
        let mut daemon = p.spawn_daemon_with(args, |c| {
            if no_color {
                c.env("NO_COLOR", "1");
            }
        });
        assert!(
            wait_until(std::time::Duration::from_secs(20), || p
                .daemon_output()
                .contains("All services initialized")),
            "{}",
            p.daemon_output()
        );
        let _ = signal_and_wait(
            &mut daemon,
            nix::sys::signal::Signal::SIGTERM,
            std::time::Duration::from_secs(30),
        );
        p.daemon_output()
    };
    let coloured = console(&["--color", "always"], true);
    assert!(coloured.contains('\u{1b}'), "{coloured}");
    let plain = console(&[], true);

    assert!(!plain.contains('\u{1b}'), "{plain}");
    // Every line starts with the time in IST, as the fire times are written; one job reads
    // "1 job".
    let first = plain.lines().next().unwrap();
    assert!(first.get(23..28) == Some(" IST "), "{first}");
    assert!(
        plain.contains("All services initialized (1 job)"),
        "{plain}"
    );
    assert!(
        plain.contains("next fire 20") && plain.contains(" IST"),
        "{plain}"
    );
    // The log file too.
    let log = std::fs::read_to_string(p.log_dir().join("hedge-scheduler.log")).unwrap();
    assert!(log.lines().all(|l| l.get(23..28) == Some(" IST ")), "{log}");
}

#[test]
fn status_says_when_the_market_is_closed_and_when_the_next_session_opens() {
    if !crate::util::have_faketime() {
        return;
    }
    // Saturday 2026-11-28 16:00 IST (libfaketime): closed, next session Monday 09:15 IST.
    let lib = crate::util::libfaketime();
    let p = Project::new();
    p.config("", NOOP);
    let run = |args: &[&str]| {
        p.cmd(args)
            .env("LD_PRELOAD", &lib)
            .env("FAKETIME", "@2026-11-28 10:30:00")
            .env("TZ", "UTC")
            .output()
            .unwrap()
    };
    let out = run(&["status"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(
            "market closed today (weekend); next session Monday 2026-11-30 09:15 IST (in 1 d 17 h)"
        ),
        "{shown}"
    );
    let v: Value = serde_json::from_slice(&run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(v["market"]["open"], false, "{v}");
    assert_eq!(v["market"]["next_open"], "2026-11-30T09:15:00+05:30", "{v}");
    assert_eq!(v["market"]["closed_because"], "weekend", "{v}");
    // Monday 09:59:30 IST: open, closing at 15:30 (the faked clock runs on from there).
    let out = p
        .cmd(&["status"])
        .env("LD_PRELOAD", &lib)
        .env("FAKETIME", "@2026-11-30 04:29:30")
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("market open: closes at 15:30 IST (in 5 h 30 min)"),
        "{}",
        text(&out)
    );
}

#[test]
fn status_reports_at_the_configured_interval() {
    let p = Project::new();
    p.config("report_interval = \"1s\"", &job("tick", TICK_JOB));
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
