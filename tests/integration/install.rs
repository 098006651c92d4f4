//! At home on a user's machine: an installed binary runs jobs from any folder, finds its config
//! in the documented order and carries its Python bridge with it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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
        crate::skip::skip(
            "no build without the embedded interpreter",
            "cargo build --no-default-features --target-dir target/no-embedded",
        );
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
    // One any user may change is not read unless named.
    std::fs::set_permissions(
        local.join("hedge-scheduler.toml"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let out = clean(&bin, &elsewhere, &home)
        .args(["plan"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("may be written by any user") && err.contains("--config"),
        "{err}"
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

/// Every file under `dir`, as bytes (the history database too).
fn all_bytes_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => {
                    out.push((path.clone(), std::fs::read(&path).unwrap_or_default()))
                }
                _ => {}
            }
        }
    }
    out
}

#[test]
fn secrets_reach_the_job_by_env_and_env_file_and_never_check_config_status_or_logs() {
    let p = Project::new();
    let record = p.path().join("env.txt");
    // Values no output may carry.
    let (shared, own, inline) = ("shared-7f3a9c1e", "own-b41d02aa", "inline-9e8c77d3");
    let secrets_dir = p.path().join("secrets");
    std::fs::create_dir_all(&secrets_dir).unwrap();
    let write_secret = |name: &str, text: &str| {
        let f = secrets_dir.join(name);
        std::fs::write(&f, text).unwrap();
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        f
    };
    write_secret(
        "all.env",
        &format!("# every job\nSHARED_TOKEN={shared}\nOVERRIDDEN=from-python-file\n"),
    );
    write_secret("feed.env", &format!("export FEED_TOKEN=\"{own}\"\n"));
    let keys =
        r#"["SHARED_TOKEN", "FEED_TOKEN", "INLINE_KEY", "OVERRIDDEN", "DAEMON_ONLY", "PATH"]"#;
    let job = |id: &str, executor: &str, extra: &str| {
        format!(
            "[jobs.{id}]\nentry = \"fixture_jobs:env_probe\"\nschedule = \"0 0 0 1 1 *\"\nexecutor = \"{executor}\"\n{extra}\n\
             args = {{ record = {record:?}, keys = {keys} }}\n\n"
        )
    };
    let jobs = [
        job("fork_job", "fork", &format!("env_file = \"secrets/feed.env\"\nenv = {{ INLINE_KEY = \"{inline}\", OVERRIDDEN = \"by-job\" }}")),
        job("sub_job", "subprocess", "inherit_env = false\nenv_file = \"secrets/feed.env\""),
        job("fork_bare", "fork", "inherit_env = false"),
    ]
    .concat();
    p.config("", &jobs)
        .set("python.env_file", "secrets/all.env");

    let check = p.run(&["check-config"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    let shown = text(&check);
    assert!(
        shown.contains("SHARED_TOKEN, OVERRIDDEN, FEED_TOKEN, INLINE_KEY (values hidden)"),
        "{shown}"
    );
    assert!(shown.contains("not inherited"), "{shown}");

    let daemon = p.spawn_daemon_with(&[], |c| {
        c.env("DAEMON_ONLY", "daemon-env");
    });
    assert!(
        wait_until(Duration::from_secs(20), || p
            .log_dir()
            .join("control.sock")
            .exists()
            && p.run(&["status", "--json"]).status.code() == Some(0)),
        "{}",
        p.daemon_output()
    );
    for id in ["fork_job", "sub_job", "fork_bare"] {
        let out = p.run(&["trigger", id]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    assert!(
        wait_until(Duration::from_secs(20), || file_lines(&record).len() == 3),
        "{}",
        p.daemon_output()
    );
    let seen: std::collections::HashMap<String, String> = file_lines(&record)
        .into_iter()
        .map(|l| {
            let (id, rest) = l.split_once(' ').unwrap();
            (id.to_string(), rest.to_string())
        })
        .collect();
    let fork_job = &seen["fork_job"];
    assert!(
        fork_job.starts_with(&format!(
            "SHARED_TOKEN={shared} FEED_TOKEN={own} INLINE_KEY={inline} OVERRIDDEN=by-job DAEMON_ONLY=daemon-env PATH=/"
        )),
        "{fork_job}"
    );
    let sub_job = &seen["sub_job"];
    assert!(
        sub_job.starts_with(&format!(
            "SHARED_TOKEN={shared} FEED_TOKEN={own} INLINE_KEY=- OVERRIDDEN=from-python-file DAEMON_ONLY=- PATH=/"
        )),
        "{sub_job}"
    );
    let bare = &seen["fork_bare"];
    assert!(
        bare.starts_with(&format!("SHARED_TOKEN={shared} FEED_TOKEN=- INLINE_KEY=- OVERRIDDEN=from-python-file DAEMON_ONLY=- PATH=/")),
        "{bare}"
    );
    assert!(wait_until(Duration::from_secs(10), || p
        .runs_with("success")
        .len()
        == 3));

    // Nothing we print or keep carries a value.
    let mut outputs = vec![text(&check), p.daemon_output()];
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["history", "--json"],
        vec!["logs", "fork_job"],
        vec!["logs", "sub_job"],
    ] {
        outputs.push(text(&p.run(&args)));
    }
    let _ = signal_and_wait(
        &mut { daemon },
        nix::sys::signal::Signal::SIGTERM,
        Duration::from_secs(30),
    );
    for (path, bytes) in all_bytes_under(&p.log_dir()) {
        outputs.push(format!(
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&bytes)
        ));
    }
    for out in &outputs {
        for secret in [shared, own, inline] {
            assert!(!out.contains(secret), "{secret} printed: {out}");
        }
    }

    // An env file others may read is refused, naming the file and the key; no value quoted.
    std::fs::set_permissions(
        secrets_dir.join("feed.env"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let out = p.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("config.toml:")
            && err.contains("jobs.fork_job.env_file")
            && err.contains("feed.env")
            && err.contains("may be read by other users"),
        "{err}"
    );
    assert!(!err.contains(own), "{err}");
    // So is one its group may write.
    std::fs::set_permissions(
        secrets_dir.join("feed.env"),
        std::os::unix::fs::PermissionsExt::from_mode(0o660),
    )
    .unwrap();
    let out = p.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // The daemon refuses to start with it too, starting nothing.
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// Datagrams systemd would get, with when each came.
fn notifications(
    sock: &std::os::unix::net::UnixDatagram,
    until: std::time::Instant,
) -> Vec<(std::time::Instant, String)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while std::time::Instant::now() < until {
        sock.set_read_timeout(Some(
            until
                .saturating_duration_since(std::time::Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            got.push((
                std::time::Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    got
}

#[test]
fn the_systemd_watchdog_is_pinged_at_half_its_period_whatever_health_interval_says() {
    let p = Project::new();
    // A health check far longer than the watchdog allows (2 s): systemd would kill a daemon
    // pinging only from it.
    let record = p.path().join("env.txt");
    let probe = |id: &str, executor: &str| {
        format!(
            "[jobs.{id}]\nentry = \"fixture_jobs:env_probe\"\nschedule = \"0 0 0 1 1 *\"\nexecutor = \"{executor}\"\n\
             args = {{ record = {record:?}, keys = [\"NOTIFY_SOCKET\", \"WATCHDOG_USEC\", \"WATCHDOG_PID\"] }}\n\n"
        )
    };
    p.config(
        "health_interval = \"60s\"",
        &[probe("sub", "subprocess"), probe("forked", "fork")].concat(),
    );
    let path = p.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let mut daemon = p.spawn_daemon_with(&[], |c| {
        c.env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "2000000");
    });
    let got = notifications(&sock, std::time::Instant::now() + Duration::from_secs(8));
    let ready = got.iter().position(|(_, m)| m.contains("READY=1"));
    let Some(ready) = ready else {
        panic!("no READY=1: {got:?}\n{}", p.daemon_output());
    };
    let pings: Vec<std::time::Instant> = got[ready..]
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(at, _)| *at)
        .collect();
    // Every 1 s after READY: over the ~6 s left, at least 4, none more than 2 s (the period)
    // after the one before.
    assert!(pings.len() >= 4, "{got:?}");
    for pair in pings.windows(2) {
        assert!(pair[1] - pair[0] < Duration::from_secs(2), "{got:?}");
    }
    assert!(
        p.daemon_output()
            .contains("systemd watchdog: pinged every 1s"),
        "{}",
        p.daemon_output()
    );
    // systemd's variables are the daemon's: its jobs do not get them.
    for id in ["sub", "forked"] {
        let out = p.run(&["trigger", id]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    assert!(wait_until(Duration::from_secs(20), || file_lines(&record)
        .len()
        == 2));
    for line in file_lines(&record) {
        assert!(
            line.ends_with("NOTIFY_SOCKET=- WATCHDOG_USEC=- WATCHDOG_PID=-"),
            "{line}"
        );
    }
    let _ = signal_and_wait(
        &mut daemon,
        nix::sys::signal::Signal::SIGTERM,
        Duration::from_secs(30),
    );

    // A watchdog meant for another process (WATCHDOG_PID) is not ours to ping.
    let mut daemon = p.spawn_daemon_with(&[], |c| {
        c.env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "2000000")
            .env("WATCHDOG_PID", "1");
    });
    let got = notifications(&sock, std::time::Instant::now() + Duration::from_secs(4));
    // What the first daemon sent as it stopped may still be queued: only what follows READY.
    let ready = got.iter().position(|(_, m)| m.contains("READY=1"));
    let Some(ready) = ready else {
        panic!("no READY=1: {got:?}");
    };
    assert!(
        !got[ready..].iter().any(|(_, m)| m == "WATCHDOG=1"),
        "{got:?}"
    );
    let _ = signal_and_wait(
        &mut daemon,
        nix::sys::signal::Signal::SIGTERM,
        Duration::from_secs(30),
    );
}

/// `args` run as the package's service user, from `/`, with nothing of ours in the environment.
fn as_service_user(args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "hedge", "--", "/usr/bin/hedge-scheduler"])
        .args(args)
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/var/lib/hedge-scheduler")
        .output()
        .unwrap()
}

#[test]
fn the_debian_package_installs_with_dpkg_and_runs_a_shipped_job_from_the_root_folder() {
    // CI builds it (`packaging/deb/build --dev`) and names it; installing a package system-wide
    // is for CI's throwaway machine only.
    let Some(deb) = std::env::var_os("HEDGE_DEB").map(PathBuf::from) else {
        crate::skip::skip(
            "HEDGE_DEB names no package",
            "HEDGE_DEB=<a .deb built by packaging/deb/build>",
        );
        assert!(
            std::env::var_os("CI").is_none(),
            "CI builds and names the package"
        );
        return;
    };
    let dpkg = |args: &[&str]| {
        let out = Command::new("dpkg")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap();
        assert!(out.status.success(), "dpkg {args:?}: {}", text(&out));
        out
    };
    dpkg(&["-i", &deb.display().to_string()]);
    // Removed (and purged) however the test ends.
    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new("dpkg")
                .args(["--purge", "hedge-scheduler"])
                .output();
        }
    }
    let _purge = Purge;

    let version = as_service_user(&["--version"]);
    assert!(
        text(&version).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        text(&version)
    );
    // No libpython: the package's binary runs Debian's python3.
    let ldd = Command::new("ldd")
        .arg("/usr/bin/hedge-scheduler")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&ldd.stdout).contains("libpython"));

    // From /, the config is found in /etc; the shipped jobs come from /usr/share.
    let check = as_service_user(&["check-config"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    assert!(
        text(&check).contains("/etc/hedge-scheduler/hedge-scheduler.toml is valid"),
        "{}",
        text(&check)
    );
    let run = as_service_user(&["run-once", "options_chain"]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    assert!(Path::new("/var/lib/hedge-scheduler/data/market.sqlite3").is_file());
    assert!(Path::new("/var/log/hedge-scheduler/jobs/options_chain.log").is_file());
    let history = as_service_user(&["history", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(rows[0]["job"], "options_chain", "{rows}");
    assert_eq!(rows[0]["outcome"], "success", "{rows}");
    // The bridge went to the service user's cache, not next to the binary.
    assert!(Path::new("/var/lib/hedge-scheduler/.cache/hedge-scheduler").is_dir());

    // The man page, the completions, the unit, the example config (readable by the service's
    // group only).
    for file in [
        "/usr/share/man/man1/hedge-scheduler.1.gz",
        "/usr/share/bash-completion/completions/hedge-scheduler",
        "/usr/share/zsh/vendor-completions/_hedge-scheduler",
        "/usr/share/fish/vendor_completions.d/hedge-scheduler.fish",
        "/usr/lib/systemd/system/hedge-scheduler.service",
    ] {
        assert!(Path::new(file).is_file(), "{file}");
    }
    use std::os::unix::fs::MetadataExt;
    let conf = std::fs::metadata("/etc/hedge-scheduler/hedge-scheduler.toml").unwrap();
    assert_eq!(conf.mode() & 0o777, 0o640);

    dpkg(&["--purge", "hedge-scheduler"]);
    assert!(!Path::new("/usr/bin/hedge-scheduler").exists());
    assert!(!Path::new("/var/log/hedge-scheduler").exists());
}

#[test]
fn the_shipped_unit_scores_ok_with_systemd_analyze_security_and_has_the_watchdog_and_delegation() {
    let unit = repo().join("config/hedge-scheduler.service");
    let text_ = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Delegate=yes",
        "User=hedge",
        "EnvironmentFile=-/etc/hedge-scheduler/environment",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/hedge-scheduler /var/log/hedge-scheduler",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            text_.lines().any(|l| l.starts_with(line)),
            "the unit lacks {line}"
        );
    }
    if !Path::new("/usr/bin/systemd-analyze").exists() {
        crate::skip::skip(
            "systemd-analyze is not installed",
            "Debian package `systemd`",
        );
        assert!(std::env::var_os("CI").is_none(), "CI has systemd-analyze");
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let score: f64 = said
        .lines()
        .find_map(|l| l.split("hedge-scheduler.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score: {}", text(&out)));
    assert!(score <= 2.0, "exposure {score}: {said}");
}

#[test]
fn a_home_that_cannot_be_written_puts_the_bridge_in_the_log_folder() {
    let p = Project::new();
    p.config(
        "",
        "[jobs.q]\nentry = \"fixture_jobs:noop\"\nschedule = \"0 0 0 1 1 *\"\nexecutor = \"fork\"\n",
    );
    // As under ProtectHome= or with a read-only home: no cache there.
    let out = p
        .cmd(&["run-once", "q"])
        .env_remove("XDG_CACHE_HOME")
        .env("HOME", "/proc/self")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let in_logs: Vec<_> = std::fs::read_dir(p.log_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("bridge-"))
        .collect();
    assert_eq!(in_logs.len(), 1, "{}", text(&out));
}

#[test]
fn a_bridge_cache_cleaned_under_a_running_daemon_is_written_again_before_the_next_run() {
    let p = Project::new();
    let record = p.path().join("env.txt");
    p.config(
        "",
        &format!(
            "[jobs.sub]\nentry = \"fixture_jobs:env_probe\"\nschedule = \"0 0 0 1 1 *\"\nexecutor = \"subprocess\"\n\
             args = {{ record = {record:?}, keys = [\"PATH\"] }}\n"
        ),
    );
    let mut daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || p
            .log_dir()
            .join("control.sock")
            .exists()),
        "{}",
        p.daemon_output()
    );
    let cache = p.path().join("cache/hedge-scheduler");
    assert!(cache.is_dir());
    // A cache cleaner (tmpreaper, `rm -rf ~/.cache`) takes it all away.
    std::fs::remove_dir_all(&cache).unwrap();
    let out = p.run(&["trigger", "sub"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        wait_until(Duration::from_secs(20), || file_lines(&record).len() == 1),
        "{}",
        p.daemon_output()
    );
    // The job writes its record before it exits; its row says `success` a moment later.
    assert!(
        wait_until(Duration::from_secs(10), || p.runs_with("success").len()
            == 1),
        "{}",
        p.daemon_output()
    );
    assert!(cache.is_dir());
    let _ = signal_and_wait(
        &mut daemon,
        nix::sys::signal::Signal::SIGTERM,
        Duration::from_secs(30),
    );
}

#[test]
fn a_clean_stop_leaves_no_keeper_or_fork_server_for_systemd_to_sigkill() {
    // Under systemd (KillMode=mixed) whatever of the service outlives its main process is
    // SIGKILLed: the daemon's keeper and fork server end before it does.
    let p = Project::new();
    p.config(
        "",
        "[jobs.q]\nentry = \"fixture_jobs:noop\"\nschedule = \"0 0 0 1 1 *\"\nexecutor = \"fork\"\n",
    );
    let mut daemon = p.spawn_daemon();
    let mut server = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            let out = p.run(&["status", "--json"]);
            server = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|s| s["daemon"]["fork_server"].as_i64());
            server.is_some()
        }),
        "{}",
        p.daemon_output()
    );
    let pid = daemon.id();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let keeper: Vec<i64> = children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm"))
                .is_ok_and(|n| n.trim() == "hedge-keeper")
        })
        .collect();
    assert_eq!(keeper.len(), 1, "{children}");
    let status = signal_and_wait(
        &mut daemon,
        nix::sys::signal::Signal::SIGTERM,
        Duration::from_secs(30),
    );
    assert!(status.is_some_and(|s| s.success()), "{}", p.daemon_output());
    // Right as it exits: neither is running any more (a zombie awaiting its reaper counts as gone).
    for left in keeper.iter().chain(server.iter()) {
        let state = std::fs::read_to_string(format!("/proc/{left}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next().map(str::to_string))
            });
        assert!(
            state.is_none() || state.as_deref() == Some("Z"),
            "{left} still runs: {state:?}"
        );
    }
}
