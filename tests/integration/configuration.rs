//! The config: where it is found, its errors as one line naming file and key, `check-config`,
//! and reload.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

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
fn check_config_refuses_a_missing_function_and_warns_of_a_cron_that_never_fires() {
    let p = Project::new();
    p.config("", &fixture("typo", "no_such_function", "* * * * * *", ""));
    let out = p.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "`entry` of [jobs.typo]: module `fixture_jobs` has no function `no_such_function`"
        ),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    p.config("", &fixture("feb30", "noop", "0 0 0 30 2 *", ""));
    let out = p.run(&["check-config"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("[jobs.feb30] never fires"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_reload_names_a_disabled_job_as_disabled_not_removed() {
    let p = Project::new();
    let jobs = |b_enabled: bool| {
        fixture("a", "noop", "0 0 0 1 1 *", "")
            + &fixture(
                "b",
                "noop",
                "0 0 0 1 1 *",
                &format!("enabled = {b_enabled}"),
            )
    };
    p.config("", &jobs(true));
    let mut daemon = p.spawn_daemon();
    // SIGHUP is handled once the daemon is ready (before, it would end the process).
    assert!(wait_until(Duration::from_secs(20), || p
        .daemon_output()
        .contains("All services initialized")));
    p.config("", &jobs(false));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        Signal::SIGHUP,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || p
            .daemon_output()
            .contains("config reloaded")),
        "{}",
        p.daemon_output()
    );
    let out = p.daemon_output();
    assert!(out.contains("; disabled: b"), "{out}");
    assert!(!out.contains("removed: b"), "{out}");
    let status = signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()));
}

#[test]
fn sighup_applies_a_valid_config_and_keeps_the_old_one_otherwise() {
    let p = Project::new();
    p.config("", &job("tick", TICK_JOB));
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
    sig_pid(daemon.id(), Signal::SIGHUP);
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
    sig_pid(daemon.id(), Signal::SIGHUP);
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
