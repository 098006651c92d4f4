//! The trading-day page in a real headless browser (Debian's `chromium`, installed by `.ci/run`):
//! the shipped config and jobs, a day of real runs made by `backfill`, the DOM dumped by the
//! browser and a screenshot it took.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::observe::{free_port, get};
use crate::util::*;

/// The browser, or `None` (then the test is skipped, except under CI, where it fails).
fn chromium() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        crate::skip::skip("chromium is not installed", "Debian package `chromium`");
    }
    found
}

/// Runs headless Chromium on `url` with `args` (loopback only: no background traffic).
fn browse(browser: &Path, profile: &Path, args: &[&str], url: &str) -> std::process::Output {
    Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium")
}

/// A fresh copy of the repository's config and bridge, listening on `port`.
fn shipped_project(port: u16) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    crate::util::copy_tree(&repo().join("config"), &root.join("config"));
    crate::util::copy_tree(&repo().join("python_bridge"), &root.join("python_bridge"));
    let config = root.join("config/hedge-scheduler.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(
        text.contains("listen = \"127.0.0.1:8321\""),
        "the shipped config listens"
    );
    std::fs::write(
        &config,
        text.replace(
            "listen = \"127.0.0.1:8321\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        ),
    )
    .expect("config");
    dir
}

fn hs(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(root)
        .env_remove("HEDGE_SCHEDULER_CONFIG")
        .output()
        .expect("hedge-scheduler")
}

/// The marks of each job row in the page's DOM: job id → classes of its slot marks.
fn rows(dom: &str) -> Vec<(String, Vec<String>)> {
    dom.split("<g class=\"job-row\" data-job=\"")
        .skip(1)
        .map(|part| {
            let job = part.split('"').next().unwrap_or("").to_string();
            let row = part.split("</g>").next().unwrap_or("");
            let marks = row
                .split("class=\"mark slot ")
                .skip(1)
                .map(|m| m.split('"').next().unwrap_or("").to_string())
                .collect();
            (job, marks)
        })
        .collect()
}

/// A PNG's size and how many distinct colours it has.
fn png_facts(path: &Path) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).expect("screenshot"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let bytes = &buf[..info.buffer_size()];
    let step = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = bytes.chunks(step).collect();
    (info.width, info.height, colours.len())
}

#[test]
fn the_trading_day_page_in_a_real_browser_shows_a_day_of_real_runs() {
    let Some(browser) = chromium() else { return };
    let port = free_port();
    let dir = shipped_project(port);
    let root = dir.path();
    let mut daemon = Command::new(BIN)
        .arg("run")
        .current_dir(root)
        .env_remove("HEDGE_SCHEDULER_CONFIG")
        .stdout(std::fs::File::create(root.join("daemon.out")).expect("out"))
        .stderr(std::fs::File::create(root.join("daemon.err")).expect("err"))
        .spawn()
        .expect("daemon");
    let output = || {
        std::fs::read_to_string(root.join("daemon.out")).unwrap_or_default()
            + &std::fs::read_to_string(root.join("daemon.err")).unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(30), || get(port, "/healthz", None)
            .is_some_and(|(c, _)| c == 200)),
        "{}",
        output()
    );
    // A known day, run for real: every slot of the three shipped jobs, with its own time.
    let day = "2026-11-27";
    let mut expected = std::collections::BTreeMap::new();
    for job in ["options_analysis", "intraday", "options_chain"] {
        let plan: Vec<Value> = serde_json::from_slice(
            &hs(
                root,
                &["plan", "--job", job, "--from", day, "--to", day, "--json"],
            )
            .stdout,
        )
        .expect("plan JSON");
        expected.insert(job.to_string(), plan.len());
        let out = hs(root, &["backfill", job, "--from", day, "--to", day]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let total: usize = expected.values().sum();
    let history = || -> Vec<Value> {
        serde_json::from_slice(&hs(root, &["history", "--json", "--limit", "10000"]).stdout)
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(240), || history()
            .iter()
            .filter(|r| r["trigger"] == "backfill" && r["outcome"] != "running")
            .count()
            >= total),
        "{}",
        output()
    );
    let rows_of_day = history();
    // Two jobs store the same slot's chain at the same instant: neither fails for it.
    let failed: Vec<&Value> = rows_of_day
        .iter()
        .filter(|r| r["outcome"] != "success")
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");

    // The DOM, as the browser built it.
    let profile = tempfile::tempdir().expect("profile");
    let url = format!("http://127.0.0.1:{port}/?date={day}");
    let out = browse(&browser, profile.path(), &["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dom.contains("<svg"), "no page: {}", text(&out));
    let found = rows(&dom);
    assert_eq!(found.len(), 3, "one row per job: {found:?}");
    for (job, marks) in &found {
        assert_eq!(marks.len(), expected[job], "{job}: one mark per slot");
        let successes = rows_of_day
            .iter()
            .filter(|r| r["job"] == job.as_str() && r["outcome"] == "success")
            .count();
        assert_eq!(
            marks.iter().filter(|m| *m == "success").count(),
            successes,
            "{job}"
        );
    }
    assert!(dom.contains("Session 09:15–15:30"), "the session is shown");
    assert!(dom.contains(&format!("{total} of {total} slots done")));
    // A mark links to its run's page: the row and its log lines.
    let link = dom
        .split("href=\"/runs/")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a run link")
        .to_string();
    let run = browse(
        &browser,
        profile.path(),
        &["--dump-dom"],
        &format!("http://127.0.0.1:{port}/runs/{link}"),
    );
    let run_dom = String::from_utf8_lossy(&run.stdout);
    assert!(run_dom.contains("data-outcome=\"success\""), "{run_dom}");
    assert!(
        run_dom.contains("[run ") || run_dom.contains(" hedge "),
        "log lines: {run_dom}"
    );

    // Today's page: the now-line, and a non-blank screenshot of the asked size.
    let today = browse(
        &browser,
        profile.path(),
        &["--dump-dom"],
        &format!("http://127.0.0.1:{port}/"),
    );
    assert!(String::from_utf8_lossy(&today.stdout).contains("http-equiv=\"refresh\""));
    let shot = root.join("page.png");
    let out = browse(
        &browser,
        profile.path(),
        &[
            "--window-size=1280,900",
            &format!("--screenshot={}", shot.display()),
        ],
        &url,
    );
    assert!(shot.exists(), "{}", text(&out));
    let (w, h, colours) = png_facts(&shot);
    assert_eq!((w, h), (1280, 900));
    assert!(colours > 20, "a blank screenshot ({colours} colours)");
    // A narrow phone screen renders too.
    let phone = root.join("phone.png");
    browse(
        &browser,
        profile.path(),
        &[
            "--window-size=390,844",
            &format!("--screenshot={}", phone.display()),
        ],
        &url,
    );
    assert_eq!(png_facts(&phone).0, 390);
    // `HEDGE_SCREENSHOT=docs/trading-day.png` keeps the screenshots (the README's, and a
    // phone's beside it).
    if let Ok(keep) = std::env::var("HEDGE_SCREENSHOT") {
        let _ = std::fs::copy(&shot, &keep);
        let _ = std::fs::copy(&phone, keep.replace(".png", "-phone.png"));
    }
    let status = signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(40));
    assert!(status.is_some_and(|s| s.success()), "{}", output());
}
