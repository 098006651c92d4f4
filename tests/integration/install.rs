//! At home on a user's machine: an installed binary runs jobs from any folder, finds its config
//! in the documented order and carries its Python bridge with it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

/// A project of the user's own outside the checkout: a config and one job that records each run.
fn users_project(root: &Path) -> PathBuf {
    let proj = root.join("research");
    std::fs::create_dir_all(proj.join("jobs")).unwrap();
    std::fs::write(
        proj.join("jobs/collector.py"),
        "import os, sys\n\
         def run(ctx):\n\
         \x20   with open(ctx.args['record'], 'a') as f:\n\
         \x20       f.write(f'{os.getpid()} {ctx.job} {sys.modules[\"hedge_bridge\"].__file__}\\n')\n\
         \x20   return {'rows': 1}\n",
    )
    .unwrap();
    let record = proj.join("runs.txt");
    std::fs::write(
        proj.join("hedge-scheduler.toml"),
        format!(
            "[scheduler]\nexchange = \"XNSE\"\nlog_dir = \"logs\"\nhistory = \"logs/history.sqlite3\"\nlegacy_scripts = []\n\n\
             [python]\nexecutable = \"python3\"\npath = [\"jobs\"]\n\n\
             [jobs.collector]\nentry = \"collector:run\"\nschedule = \"0 */15 * * * *\"\nexecutor = \"fork\"\n\
             args = {{ record = {record:?} }}\n\n\
             [jobs.collector_sub]\nentry = \"collector:run\"\nschedule = \"0 */15 * * * *\"\nexecutor = \"subprocess\"\n\
             args = {{ record = {record:?} }}\n"
        ),
    )
    .unwrap();
    proj
}

/// `cmd` with nothing of this checkout or of the user's environment in reach.
fn clean(bin: &Path, cwd: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(cwd)
        .env_remove("HEDGE_SCHEDULER_CONFIG")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("PYTHONPATH")
        .env("HOME", home);
    cmd
}

#[test]
fn cargo_install_gives_a_binary_that_runs_a_job_from_another_folder_with_the_config_there() {
    // `cargo install` into a folder of the test's own, from the build `.ci/run` has made already
    // (the same target folder: nothing is compiled again).
    let target = repo().join("target/no-embedded");
    if !target.join("debug/hedge-scheduler").exists() {
        eprintln!(
            "SKIPPED: build it with `cargo build --no-default-features --target-dir target/no-embedded`"
        );
        assert!(std::env::var_os("CI").is_none(), "CI builds it (.ci/run)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("prefix");
    let out = Command::new(env!("CARGO"))
        .args([
            "install",
            "--debug",
            "--locked",
            "--offline",
            "--no-default-features",
        ])
        .arg("--path")
        .arg(repo())
        .arg("--root")
        .arg(&root)
        .arg("--target-dir")
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo install: {}", text(&out));
    let bin = root.join("bin/hedge-scheduler");
    assert!(bin.is_file());

    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let proj = users_project(tmp.path());
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let config = proj.join("hedge-scheduler.toml");

    // From another folder, the config named by --config, then by HEDGE_SCHEDULER_CONFIG.
    for (how, job) in [("flag", "collector"), ("env", "collector_sub")] {
        let mut cmd = clean(&bin, &elsewhere, &home);
        if how == "flag" {
            cmd.arg("--config").arg(&config);
        } else {
            cmd.env("HEDGE_SCHEDULER_CONFIG", &config);
        }
        let out = cmd.args(["run-once", job]).output().unwrap();
        assert!(out.status.success(), "{how}: {}", text(&out));
    }
    let record = std::fs::read_to_string(proj.join("runs.txt")).unwrap();
    let runs: Vec<&str> = record.lines().collect();
    assert_eq!(runs.len(), 2, "{record}");
    // The bridge came from the binary, written to the user's cache, not from the checkout.
    let cache = home.join(".cache/hedge-scheduler");
    for run in &runs {
        assert!(run.contains(&cache.display().to_string()), "{run}");
        assert!(!run.contains(&repo().display().to_string()), "{run}");
    }
    let bridges: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(bridges.len(), 1, "one folder for this build: {bridges:?}");

    // The user's config folder, found with no flag from any folder.
    let user_config = home.join(".config/hedge-scheduler");
    std::fs::create_dir_all(&user_config).unwrap();
    std::fs::copy(&config, user_config.join("hedge-scheduler.toml")).unwrap();
    // Its relative paths resolve against its own folder: give it the jobs there too.
    std::fs::create_dir_all(user_config.join("jobs")).unwrap();
    std::fs::copy(
        proj.join("jobs/collector.py"),
        user_config.join("jobs/collector.py"),
    )
    .unwrap();
    let out = clean(&bin, &elsewhere, &home)
        .args(["run-once", "collector"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(proj.join("runs.txt"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    assert!(user_config.join("logs/history.sqlite3").is_file());

    // ./config/hedge-scheduler.toml comes before the user's.
    let local = elsewhere.join("config");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("hedge-scheduler.toml"), "[scheduler\n").unwrap();
    let out = clean(&bin, &elsewhere, &home)
        .args(["plan"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("config/hedge-scheduler.toml:1:"),
        "{}",
        text(&out)
    );
}

#[test]
fn no_config_found_names_every_place_looked_at_and_a_missing_one_names_how_it_was_given() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = clean(Path::new(BIN), tmp.path(), &home)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    for place in [
        "--config",
        "HEDGE_SCHEDULER_CONFIG",
        "./config/hedge-scheduler.toml",
        &format!(
            "{}/.config/hedge-scheduler/hedge-scheduler.toml",
            home.display()
        ),
        "/etc/hedge-scheduler/hedge-scheduler.toml",
    ] {
        assert!(err.contains(place), "{place}: {err}");
    }
    let out = clean(Path::new(BIN), tmp.path(), &home)
        .env("XDG_CONFIG_HOME", tmp.path().join("xdg"))
        .arg("status")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "{}/xdg/hedge-scheduler/hedge-scheduler.toml",
            tmp.path().display()
        )),
        "{}",
        text(&out)
    );
    for (args, env, says) in [
        (
            vec!["--config", "missing.toml", "status"],
            None,
            "given by --config",
        ),
        (
            vec!["status"],
            Some("missing.toml"),
            "named by HEDGE_SCHEDULER_CONFIG",
        ),
    ] {
        let mut cmd = clean(Path::new(BIN), tmp.path(), &home);
        if let Some(e) = env {
            cmd.env("HEDGE_SCHEDULER_CONFIG", e);
        }
        let out = cmd.args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("missing.toml") && err.contains(says), "{err}");
    }
}
