//! The command line's manners: what a new user reads is true, short and in the exchange's time.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::util::*;

const NOOP: &str = "\n[jobs.q]\nentry = \"fixture_jobs:noop\"\nschedule = \"0 */15 * * * *\"\nmarket_hours = true\nexecutor = \"subprocess\"\n";

#[test]
fn check_config_json_names_the_jobs_and_a_typo_in_an_entry_is_refused_with_a_suggestion() {
    let p = Project::new();
    p.config("", NOOP);
    let out = p.run(&["check-config", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["exchange"], "XNSE");
    assert_eq!(v["timezone"], "Asia/Kolkata");
    assert_eq!(v["jobs"][0]["job"], "q");
    assert_eq!(v["jobs"][0]["entry"], "fixture_jobs:noop");
    assert!(
        v["jobs"][0]["next_fire"]
            .as_str()
            .unwrap()
            .ends_with("+05:30"),
        "{v}"
    );
    assert!(
        v["python"]["version"].as_str().unwrap().starts_with("3."),
        "{v}"
    );

    // `noop` misspelt: refused at its line, with the near name.
    let text_ = std::fs::read_to_string(p.config_path()).unwrap();
    std::fs::write(
        p.config_path(),
        text_.replace("fixture_jobs:noop", "fixture_jobs:nop"),
    )
    .unwrap();
    let out = p.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.toml:")
            && err.contains("[jobs.q]")
            && err.contains("no function `nop` (did you mean `noop`?)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = p.run(&["check-config", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("did you mean `noop`"),
        "{v}"
    );
    assert!(v["line"].as_u64().is_some(), "{v}");
}

#[test]
fn check_config_refuses_a_pyo3_job_whose_venv_is_another_python_than_the_embedded_one() {
    let Some((python, version)) = other_python_or_skip() else {
        return;
    };
    let p = Project::new();
    p.config("", &NOOP.replace("subprocess", "pyo3"));
    use_venv_of(&p, &python);
    let out = p.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("is Python {version}")) && err.contains("embedded Python"),
        "{err}"
    );
}

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
    if !crate::reliability::have_faketime() {
        return;
    }
    // Saturday 2026-11-28 16:00 IST (libfaketime): closed, next session Monday 09:15 IST.
    let lib = crate::reliability::libfaketime();
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
fn the_daemon_log_keeps_its_name_and_tail_f_follows_it_across_the_days_rotation() {
    if !crate::reliability::have_faketime() {
        return;
    }
    use crate::reliability::{libfaketime, set_fake};
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
