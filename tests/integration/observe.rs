//! What operators see and hear: notifications and pings against a local HTTP receiver on
//! 127.0.0.1 (started by the test), `/metrics` parsed by a Prometheus text parser, `/healthz`,
//! `/api/status`, and `logs` (following a running job live).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub body: String,
}

/// A local HTTP receiver: records every request, answers 200 (or hangs on `hang` paths).
pub struct Receiver {
    pub port: u16,
    reqs: Arc<Mutex<Vec<Req>>>,
}

impl Receiver {
    pub fn start(hang: Option<&'static str>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let port = listener.local_addr().expect("addr").port();
        let reqs: Arc<Mutex<Vec<Req>>> = Arc::default();
        let sink = Arc::clone(&reqs);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || serve(conn, &sink, hang));
            }
        });
        Receiver { port, reqs }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> Vec<Req> {
        self.reqs.lock().expect("lock").clone()
    }

    /// The JSON bodies of requests to `path`.
    pub fn events(&self, path: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .map(|r| serde_json::from_str(&r.body).expect("a JSON body"))
            .collect()
    }
}

fn serve(conn: TcpStream, sink: &Mutex<Vec<Req>>, hang: Option<&str>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut writer = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut length = 0;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let hangs = hang.is_some_and(|h| path.starts_with(h));
        sink.lock().expect("lock").push(Req {
            method,
            path,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        if hangs {
            std::thread::sleep(Duration::from_secs(60));
            return;
        }
        let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
    }
}

/// A port nobody listens on now (bound, then let go).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A plain GET on loopback: (status, body).
pub fn get(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    // Chunked bodies: good enough for the tests' small documents.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Some((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A job every second that runs `fixture_jobs:verdict`, recording what ran in `ran`.
fn verdict_job(id: &str, ran: &Path, verdict: &Path, extra: &str) -> String {
    job(
        id,
        &format!(
            "entry = \"fixture_jobs:verdict\"\nschedule = \"* * * * * *\"\nmarket_hours = false\nexecutor = \"pyo3\"\nargs = {{ file = {ran:?}, verdict = {verdict:?} }}\n{extra}"
        ),
    )
}

/// A verdict file that always says `fail`.
fn always_fails(p: &Project) -> std::path::PathBuf {
    let path = p.path().join("always-fail.txt");
    std::fs::write(&path, "fail").expect("verdict");
    path
}

fn lines(path: &Path) -> Vec<String> {
    file_lines(path)
}

const EVENT_KEYS: [&str; 11] = [
    "event",
    "job",
    "name",
    "outcome",
    "run_id",
    "trigger",
    "scheduled_at",
    "attempt",
    "error",
    "node",
    "at",
];

#[test]
fn a_failing_job_gives_one_failure_webhook_and_its_recovery_one_recovered() {
    let hooks = Receiver::start(None);
    let p = Project::new();
    let (ran, verdict) = verdict_files(&p, "fail");
    p.config(
        &format!(
            "[notify]\nwebhook = {:?}\nwebhook_format = \"json\"",
            hooks.url("/hook")
        ),
        &(verdict_job(
            "feed",
            &ran,
            &verdict,
            "name = \"Feed\"\nretry = { attempts = 2, backoff = \"300ms\" }",
        ) + &verdict_job(
            "quiet",
            &p.path().join("quiet.txt"),
            &always_fails(&p),
            "notify = false",
        )),
    );
    let daemon = p.spawn_daemon();
    // Two slots fail all their attempts.
    let failed_for_good = |p: &Project| {
        p.try_history()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["outcome"] == "failed" && r["attempt"] == 2)
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(40), || failed_for_good(&p) >= 2),
        "{}",
        p.daemon_output()
    );
    let failures = hooks.events("/hook");
    assert_eq!(
        failures.len(),
        1,
        "one failure alert, not one per failed slot: {failures:#?}"
    );
    let alert = &failures[0];
    for key in EVENT_KEYS {
        assert!(alert.get(key).is_some(), "`{key}` missing from {alert:#}");
    }
    assert_eq!(alert["event"], "failure");
    assert_eq!(alert["job"], "feed");
    assert_eq!(alert["name"], "Feed");
    assert_eq!(alert["outcome"], "failed");
    assert_eq!(
        alert["attempt"], 2,
        "failure is final: after the last retry"
    );
    assert!(
        alert["error"]
            .as_str()
            .is_some_and(|e| e.contains("verdict file says fail"))
    );
    // It names a real run: the final attempt of the first slot, failed in the history.
    let history = p.history();
    let row = history
        .iter()
        .find(|r| r["id"] == alert["run_id"])
        .expect("the alert's run is in the history");
    assert_eq!(row["outcome"], "failed");
    assert_eq!(row["attempt"], 2);
    assert_eq!(
        ts(&row["scheduled_at"]),
        ts(&alert["scheduled_at"]),
        "{alert:#}"
    );
    // The job really ran each attempt the history shows.
    let runs = history
        .iter()
        .filter(|r| r["job"] == "feed" && r["outcome"] != "skipped" && r["outcome"] != "running")
        .count();
    assert!(lines(&ran).len() >= runs, "{:?}", lines(&ran));

    std::fs::write(&verdict, "ok").expect("verdict");
    assert!(
        wait_until(Duration::from_secs(20), || hooks.events("/hook").len() >= 2),
        "no recovery alert: {}",
        p.daemon_output()
    );
    // A few more successes: still exactly two alerts.
    assert!(wait_until(Duration::from_secs(20), || {
        p.runs_with("success").len() >= 3
    }));
    stop_clean(&p, daemon);
    let all = hooks.events("/hook");
    let kinds: Vec<&str> = all.iter().filter_map(|e| e["event"].as_str()).collect();
    // `quiet` failed every slot, with `notify = false`: nothing about it.
    assert_eq!(kinds, ["failure", "recovered"], "{all:#?}");
    assert!(lines(&p.path().join("quiet.txt")).len() >= 3);
    assert_eq!(all[1]["outcome"], "success");
    assert_eq!(all[1]["job"], "feed");
    let row = p
        .history()
        .into_iter()
        .find(|r| r["id"] == all[1]["run_id"])
        .expect("the recovery's run is in the history");
    assert_eq!(row["outcome"], "success");
}

#[test]
fn a_missed_slot_gives_missed() {
    let hooks = Receiver::start(None);
    let p = Project::new();
    let (ran, verdict) = verdict_files(&p, "ok");
    // Each run takes 2.5 s of a 1-second schedule: the slots between are skipped (overlap).
    p.config(
        &format!(
            "[notify]\nwebhook = {:?}\nevents = [\"missed\"]",
            hooks.url("/hook")
        ),
        &verdict_job("slowpoke", &ran, &verdict, "overlap = \"skip\"")
            .replace("verdict = ", "seconds = 2.5, verdict = "),
    );
    let daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(30), || hooks.events("/hook").len() >= 2),
        "{}",
        p.daemon_output()
    );
    stop_clean(&p, daemon);
    let skipped: Vec<Value> = p.runs_with("skipped");
    assert!(!skipped.is_empty());
    let missed = hooks.events("/hook");
    // One `missed` event per skipped row, naming its slot.
    assert_eq!(missed.len(), skipped.len(), "{missed:#?}\n{skipped:#?}");
    for event in &missed {
        assert_eq!(event["event"], "missed");
        assert_eq!(event["job"], "slowpoke");
        assert!(
            skipped
                .iter()
                .any(|r| ts(&r["scheduled_at"]) == ts(&event["scheduled_at"])),
            "{event:#}"
        );
    }
    // Runs counted by what the job recorded: every successful row ran once.
    assert_eq!(lines(&ran).len(), p.runs_with("success").len());
}

#[test]
fn a_notifier_that_hangs_does_not_delay_the_next_fire() {
    let p = Project::new();
    let (ran, verdict) = verdict_files(&p, "fail");
    let hung = p.path().join("notifier.txt");
    // The notifier records that it started, then hangs far past its timeout.
    let script = p.path().join("notifier.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$HEDGE_EVENT $HEDGE_JOB $(date +%s.%N)\" >> {hung:?}\ncat > /dev/null\nexec sleep 60\n"
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    p.config(
        &format!(
            "health_interval = \"1s\"\n\n[notify]\ncommand = [{:?}]\nevents = [\"failure\", \"daemon\"]\ntimeout = \"3s\"",
            script.display().to_string()
        ),
        &verdict_job("feed", &ran, &verdict, ""),
    );
    let daemon = p.spawn_daemon();
    // The notifier hangs (the daemon's start, then the first failure); slots go on firing.
    assert!(wait_until(Duration::from_secs(20), || !lines(&hung).is_empty()));
    let hung_at = chrono::Utc::now();
    assert!(
        wait_until(Duration::from_secs(20), || {
            p.try_history()
                .unwrap_or_default()
                .iter()
                .filter(|r| r["outcome"] == "failed" && ts(&r["scheduled_at"]) > hung_at)
                .count()
                >= 5
        }),
        "{}",
        p.daemon_output()
    );
    for row in p
        .history()
        .iter()
        .filter(|r| ts(&r["scheduled_at"]) > hung_at)
    {
        let late = ts(&row["started_at"]) - ts(&row["scheduled_at"]);
        assert!(
            late < chrono::Duration::milliseconds(500),
            "a slot started {late} late while the notifier hung: {row:#}"
        );
    }
    // The hung notifier was ended at its timeout, and `status` says so.
    let failed = wait_until(Duration::from_secs(20), || {
        let out = p.run(&["status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .is_some_and(|s| {
                s["daemon"]["notify_failures"].as_u64().unwrap_or(0) >= 1
                    && s["daemon"]["notify_last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("timed out"))
            })
    });
    assert!(failed, "{}", p.daemon_output());
    let table = String::from_utf8_lossy(&p.run(&["status"]).stdout).into_owned();
    assert!(
        table.contains("or ping") && table.contains("failed; the last"),
        "{table}"
    );
    stop_clean(&p, daemon);
    // No notifier process outlives its timeout.
    let left = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(&script.display().to_string()))
        .count();
    assert_eq!(left, 0, "a notifier was left running");
}

#[test]
fn pings_hit_start_the_url_and_fail_in_order_with_the_run_id() {
    let pings = Receiver::start(None);
    let p = Project::new();
    let (ran, verdict) = verdict_files(&p, "ok");
    p.config(
        "",
        &verdict_job(
            "feed",
            &ran,
            &verdict,
            &format!("ping = {:?}", pings.url("/ping/abc")),
        ),
    );
    let daemon = p.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || {
        pings
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/ping/abc?"))
            .count()
            >= 2
    }));
    std::fs::write(&verdict, "fail").expect("verdict");
    assert!(wait_until(Duration::from_secs(20), || {
        pings
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/ping/abc/fail"))
            .count()
            >= 2
    }));
    stop_clean(&p, daemon);
    let history = p.history();
    let uid_of = |rid: &str| {
        history
            .iter()
            .find(|r| r["run_uid"] == rid)
            .unwrap_or_else(|| panic!("rid {rid} is no run of the history"))
            .clone()
    };
    // Per run: /start, then the URL (success) or /fail, in that order.
    let mut per_run: HashMap<String, Vec<String>> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for r in pings.requests() {
        let (path, rid) = r.path.split_once("?rid=").expect("a run id");
        assert_eq!(r.method, "POST");
        if !per_run.contains_key(rid) {
            order.push(rid.to_string());
        }
        per_run
            .entry(rid.to_string())
            .or_default()
            .push(path.to_string());
        let row = uid_of(rid);
        match path {
            "/ping/abc" => {
                assert_eq!(row["outcome"], "success");
                assert!(r.body.contains("verdict run"), "the log tail: {:?}", r.body);
            }
            "/ping/abc/fail" => {
                assert_eq!(row["outcome"], "failed");
                assert!(r.body.contains("verdict file says fail"), "{:?}", r.body);
            }
            "/ping/abc/start" => {}
            other => panic!("unexpected ping {other}"),
        }
    }
    for rid in &order {
        let paths = &per_run[rid];
        // The last run may have been cut by the stop: a start alone.
        assert!(
            paths.as_slice() == ["/ping/abc/start", "/ping/abc"]
                || paths.as_slice() == ["/ping/abc/start", "/ping/abc/fail"]
                || (rid == order.last().expect("one") && paths.as_slice() == ["/ping/abc/start"]),
            "{rid}: {paths:?}"
        );
    }
}

#[test]
fn the_heartbeat_ping_stops_outside_the_session() {
    if !crate::util::have_faketime() {
        return;
    }
    // The daemon's clock starts 4 s before the NSE close (15:30 IST on Monday 2026-11-30).
    let beats = Receiver::start(None);
    let always = Receiver::start(None);
    let run = |r: &Receiver, when: &str| {
        let p = Project::new();
        p.config(
            &format!(
                "health_interval = \"1s\"\n\n[notify]\nheartbeat_ping = {:?}\nheartbeat_when = \"{when}\"",
                r.url("/beat")
            ),
            &job(
                "noop",
                "entry = \"fixture_jobs:noop\"\nschedule = \"0 */15 * * * *\"\nmarket_hours = true",
            ),
        );
        let lib = crate::util::libfaketime();
        let daemon = p.spawn_daemon_with(&[], move |cmd| {
            cmd.env("LD_PRELOAD", &lib)
                .env("FAKETIME", "@2026-11-30 09:59:56")
                .env("TZ", "UTC")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_NO_CACHE", "1");
        });
        (p, daemon)
    };
    let (p1, d1) = run(&beats, "session");
    let (p2, d2) = run(&always, "always");
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || beats.requests().len() >= 2),
        "{}",
        p1.daemon_output()
    );
    // Past the close (4 s after the start, with a second to spare): the session ping stops,
    // the `always` ping goes on.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(started.elapsed()));
    let after_close = beats.requests().len();
    let always_then = always.requests().len();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        beats.requests().len(),
        after_close,
        "heartbeat pinged outside the session"
    );
    assert!(
        always.requests().len() >= always_then + 2,
        "heartbeat_when = \"always\" stopped"
    );
    for r in beats.requests() {
        assert_eq!(r.path, "/beat");
    }
    stop_clean(&p1, d1);
    stop_clean(&p2, d2);
}

/// `(job, outcome) → count` from a Prometheus scrape's `hedge_scheduler_runs_total`.
fn scraped_runs(text: &str) -> HashMap<(String, String), f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("the exposition parses");
    let mut out: HashMap<(String, String), f64> = HashMap::new();
    for s in &scrape.samples {
        if s.metric == "hedge_scheduler_runs_total"
            && let prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) =
                s.value
        {
            *out.entry((
                s.labels.get("job").unwrap_or("").to_string(),
                s.labels.get("outcome").unwrap_or("").to_string(),
            ))
            .or_default() += v;
        }
    }
    out
}

#[test]
fn metrics_parse_and_their_counters_match_the_history() {
    let p = Project::new();
    let port = free_port();
    let (ran, verdict) = verdict_files(&p, "ok");
    let config = |enabled: bool| {
        p.config(
            &format!("\n[http]\nlisten = \"127.0.0.1:{port}\""),
            &(verdict_job("feed", &ran, &verdict, &format!("enabled = {enabled}"))
                + &job(
                    "other",
                    "entry = \"fixture_jobs:noop\"\nschedule = \"0 0 0 1 1 *\"\nmarket_hours = false",
                )),
        );
    };
    config(true);
    let daemon = p.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || get(
        port, "/healthz", None
    )
    .is_some_and(|(c, _)| c == 200)));
    assert!(wait_until(Duration::from_secs(20), || p
        .runs_with("success")
        .len()
        >= 3));
    std::fs::write(&verdict, "fail").expect("verdict");
    assert!(wait_until(Duration::from_secs(20), || p
        .runs_with("failed")
        .len()
        >= 2));
    // Stop firing (a reload that disables the job), then compare.
    config(false);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        Signal::SIGHUP,
    )
    .expect("SIGHUP");
    let mut last = None;
    let settled = wait_until(Duration::from_secs(20), || {
        let rows = p.try_history().unwrap_or_default();
        let now = rows.len();
        let quiet = last == Some(now) && !rows.iter().any(|r| r["outcome"] == "running");
        last = Some(now);
        std::thread::sleep(Duration::from_millis(1200));
        quiet
    });
    assert!(settled);
    let (code, text) = get(port, "/metrics", None).expect("/metrics");
    assert_eq!(code, 200, "{text}");
    let runs = scraped_runs(&text);
    let mut expected: HashMap<(String, String), f64> = HashMap::new();
    for r in p.history() {
        *expected
            .entry((
                r["job"].as_str().unwrap_or("").to_string(),
                r["outcome"].as_str().unwrap_or("").to_string(),
            ))
            .or_default() += 1.0;
    }
    assert_eq!(runs, expected, "{text}");
    // What the job recorded agrees: each success and failure ran once.
    let executed = (expected
        .get(&("feed".into(), "success".into()))
        .copied()
        .unwrap_or(0.0)
        + expected
            .get(&("feed".into(), "failed".into()))
            .copied()
            .unwrap_or(0.0)) as usize;
    assert_eq!(lines(&ran).len(), executed);
    for name in [
        "hedge_scheduler_run_duration_seconds_bucket",
        "hedge_scheduler_fire_delay_seconds_count",
        "hedge_scheduler_running",
        "hedge_scheduler_last_success_timestamp_seconds",
        "hedge_scheduler_last_expected_slot_timestamp_seconds",
        "hedge_scheduler_slots_missed_total",
        "hedge_scheduler_session_open",
        "hedge_scheduler_loop_lag_seconds",
        "hedge_scheduler_notify_failures_total",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    assert!(text.contains("hedge_scheduler_session_open{exchange=\"XNSE\"}"));
    let successes = expected[&("feed".to_string(), "success".to_string())];
    assert!(
        text.contains(&format!(
            "hedge_scheduler_run_duration_seconds_count{{job=\"feed\"}} {}",
            successes + expected[&("feed".to_string(), "failed".to_string())]
        )),
        "{text}"
    );
    // /api/status is the `status --json` document.
    let (code, body) = get(port, "/api/status", None).expect("/api/status");
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["daemon"]["pid"], daemon.id());
    assert_eq!(status["jobs"].as_array().map(Vec::len), Some(2));
    // Read-only: nothing but GET.
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        conn,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    stop_clean(&p, daemon);
}

#[test]
fn http_off_loopback_needs_a_token_and_the_token_is_checked() {
    let p = Project::new();
    let noop = job(
        "noop",
        "entry = \"fixture_jobs:noop\"\nschedule = \"0 0 0 1 1 *\"\nmarket_hours = false",
    );
    p.config("\n[http]\nlisten = \"0.0.0.0:8321\"", &noop);
    let out = p.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.toml:")
            && err.contains("not a loopback address")
            && err.contains("token"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // On loopback with a token: every route but /healthz wants it.
    let port = free_port();
    let token = "0123456789abcdef0123";
    p.config(
        &format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{token}\""),
        &noop,
    );
    let daemon = p.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || get(
        port, "/healthz", None
    )
    .is_some_and(|(c, _)| c == 200)));
    for path in ["/", "/metrics", "/api/status", "/runs/1"] {
        assert_eq!(get(port, path, None).map(|r| r.0), Some(401), "{path}");
        assert_eq!(
            get(port, path, Some("wrong-token-wrong-token")).map(|r| r.0),
            Some(401)
        );
    }
    assert_eq!(get(port, "/metrics", Some(token)).map(|r| r.0), Some(200));
    // The token is never printed.
    let shown = String::from_utf8_lossy(&p.run(&["check-config"]).stdout).into_owned();
    assert!(!shown.contains(token));
    assert!(
        shown.contains(&format!("http://127.0.0.1:{port}/"))
            && shown.contains("bearer token required"),
        "{shown}"
    );
    assert!(!p.daemon_output().contains(token));
    stop_clean(&p, daemon);
}

#[test]
fn logs_follow_a_running_jobs_output_live() {
    let p = Project::new();
    p.config(
        "",
        &job(
            "ticker",
            "entry = \"fixture_jobs:ticker\"\nschedule = \"0 0 0 1 1 *\"\nmarket_hours = false\nargs = { ticks = 20, every = 0.3 }",
        ),
    );
    // A manual run (6 s of ticks) while `logs -f` follows the job.
    let mut follow = p
        .cmd(&["logs", "ticker", "-f"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("logs -f");
    let mut runner = p.cmd(&["run-once", "ticker"]).spawn().expect("run-once");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<(String, bool)>();
    let history = p.config_path();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // Is the run still going as the line arrives?
            let still = !std::process::Command::new(BIN)
                .arg("--config")
                .arg(&history)
                .args(["history", "--json", "--limit", "1"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("\"success\""))
                .unwrap_or(true);
            let _ = tx.send((line, still));
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && !seen
            .iter()
            .any(|(l, _): &(String, bool)| l.contains("tick 19"))
    {
        if let Ok(x) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(x);
        }
    }
    let _ = runner.wait();
    let _ = follow.kill();
    let _ = follow.wait();
    let ticks: Vec<&(String, bool)> = seen
        .iter()
        .filter(|(l, _)| l.contains("stdout] tick "))
        .collect();
    assert_eq!(ticks.len(), 20, "{seen:#?}");
    // Live: the first ticks came while the run was still going.
    assert!(ticks[0].1 && ticks[5].1, "{seen:#?}");

    // A finished run, all of it, as JSON; then `--last -n 3`.
    let out = p.run(&["logs", "ticker", "--last", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(rows.iter().filter(|r| r["stream"] == "stdout").count(), 20);
    assert!(rows.iter().all(|r| r["run_id"] == rows[0]["run_id"]));
    let out = p.run(&["logs", "ticker", "--last", "-n", "3"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    // `--run` of a run that is not the job's, and an unknown job: clear errors.
    let out = p.run(&["logs", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    // Following a finished run ends by itself.
    let id = rows[0]["run_id"].to_string();
    let started = Instant::now();
    let out = p.run(&["logs", "ticker", "--run", &id, "-f"]);
    assert!(out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("] tick ")
            .count(),
        20
    );
}

#[test]
fn the_shipped_alert_rules_stay_silent_outside_sessions() {
    // promtool, from Debian's `prometheus` package (`.ci/run` installs it).
    let Some(promtool) = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        crate::skip::skip("promtool is not installed", "Debian package `prometheus`");
        return;
    };
    let dir = repo().join("config/prometheus");
    let check = std::process::Command::new(promtool)
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    assert!(check.status.success(), "{}", text(&check));
    // The unit tests: each rule silent while the exchange is closed, firing in session.
    let test = std::process::Command::new(promtool)
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir)
        .output()
        .expect("promtool");
    assert!(test.status.success(), "{}", text(&test));
    // Every metric the rules use is one the daemon exports.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).expect("rules");
    let exported = [
        "hedge_scheduler_last_expected_slot_timestamp_seconds",
        "hedge_scheduler_last_success_timestamp_seconds",
        "hedge_scheduler_session_open",
        "hedge_scheduler_slots_missed_total",
        "hedge_scheduler_runs_total",
        "hedge_scheduler_loop_lag_seconds",
        "hedge_scheduler_notify_failures_total",
    ];
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("hedge_scheduler_") {
            assert!(
                exported.contains(&word),
                "the rules use `{word}`, which is not exported"
            );
        }
    }
}

#[test]
fn daemon_start_stop_and_calendar_coverage_events_reach_the_hook() {
    let hooks = Receiver::start(None);
    let p = Project::new();
    // A calendar whose data ends in ten days: the daemon says so once a day (to a config with a
    // job that fires by the calendar: the only kind the data's end matters to).
    let ends = chrono::Utc::now().date_naive() + chrono::Days::new(10);
    std::fs::write(
        p.path().join("cal.toml"),
        format!("exchange = \"XNSE\"\nknown_until = \"{ends}\"\nclosures = []\n"),
    )
    .expect("calendar");
    p.config(
        &format!(
            "\n[calendar]\nfile = \"cal.toml\"\n\n[notify]\nwebhook = {:?}\nwebhook_format = \"slack\"\nevents = [\"daemon\", \"coverage\"]",
            hooks.url("/slack")
        ),
        &job(
            "noop",
            "entry = \"fixture_jobs:noop\"\nschedule = \"0 0 0 1 1 *\"\nmarket_hours = true",
        ),
    );
    let daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || hooks.requests().len() >= 2),
        "{}",
        p.daemon_output()
    );
    stop_clean(&p, daemon);
    // The stop's notification went out before the daemon exited.
    let texts: Vec<String> = hooks
        .events("/slack")
        .iter()
        .map(|e| {
            e["text"]
                .as_str()
                .expect("a slack body: {\"text\"}")
                .to_string()
        })
        .collect();
    assert_eq!(texts.len(), 3, "{texts:#?}");
    assert!(texts[0].contains("started"), "{texts:#?}");
    assert!(
        texts[1].contains(&format!("known up to {ends}")),
        "{texts:#?}"
    );
    assert!(texts[2].contains("stopped (SIGTERM)"), "{texts:#?}");
}

#[test]
fn the_notify_command_gets_the_event_in_its_environment_and_on_stdin() {
    let p = Project::new();
    let (ran, verdict) = verdict_files(&p, "fail");
    let (env_out, stdin_out) = (p.path().join("event.env"), p.path().join("event.json"));
    let script = p.path().join("notify.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv | grep '^HEDGE_' | sort > {env_out:?}.tmp && mv {env_out:?}.tmp {env_out:?}\ncat > {stdin_out:?}.tmp && mv {stdin_out:?}.tmp {stdin_out:?}\n"
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    p.config(
        &format!("[notify]\ncommand = [{:?}]", script.display().to_string()),
        &verdict_job("feed", &ran, &verdict, ""),
    );
    let daemon = p.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || stdin_out.exists()
            && env_out.exists()),
        "{}",
        p.daemon_output()
    );
    stop_clean(&p, daemon);
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&stdin_out).expect("stdin")).expect("JSON");
    for key in EVENT_KEYS {
        assert!(doc.get(key).is_some(), "`{key}` missing from {doc:#}");
    }
    let env: HashMap<String, String> = std::fs::read_to_string(&env_out)
        .expect("env")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(env["HEDGE_EVENT"], "failure");
    assert_eq!(env["HEDGE_JOB"], "feed");
    assert_eq!(env["HEDGE_OUTCOME"], "failed");
    assert_eq!(env["HEDGE_RUN_ID"], doc["run_id"].to_string());
    assert_eq!(
        env["HEDGE_SCHEDULED_AT"],
        doc["scheduled_at"].as_str().unwrap_or("")
    );
    assert!(
        env["HEDGE_ERROR"].contains("verdict file says fail"),
        "{env:?}"
    );
    assert_eq!(doc["event"], "failure");
    // The run it names failed in the history.
    let row = p
        .history()
        .into_iter()
        .find(|r| r["id"] == doc["run_id"])
        .expect("the run");
    assert_eq!(row["outcome"], "failed");
}

#[test]
fn notify_and_http_config_mistakes_are_one_line_errors() {
    let p = Project::new();
    let noop = job(
        "noop",
        "entry = \"fixture_jobs:noop\"\nschedule = \"0 0 0 1 1 *\"\nmarket_hours = false\ncommand = [\"/bin/true\"]",
    )
    .replace("entry = \"fixture_jobs:noop\"\n", "");
    let cases = [
        (
            "[notify]\ncommand = [\"/etc/passwd\"]",
            "not an executable file",
            "command",
        ),
        (
            "[notify]\ncommand = [\"no-such-notifier-here\"]",
            "not an executable file",
            "command",
        ),
        (
            "[notify]\nwebhook = \"http://127.0.0.1:99999/x\"",
            "is not a port",
            "webhook",
        ),
        ("[notify]\nwebhook = \"http://[::1/x\"", "IPv6", "webhook"),
        (
            "[notify]\nwebhook = \"http://h/x\"\nevents = []",
            "is empty",
            "[notify]",
        ),
        (
            "[notify]\nevents = [\"failure\", \"lunch\"]",
            "unknown event `lunch`",
            "events",
        ),
        (
            "[http]\nlisten = \"127.0.0.1:1\"\ntoken = \"aaaaaaaaaaaa aaaaaaaaa\"",
            "visible ASCII",
            "token",
        ),
    ];
    for (table, says, key) in cases {
        p.config(&format!("\n{table}"), &noop);
        let out = p.run(&["check-config"]);
        assert_eq!(out.status.code(), Some(2), "{table}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.trim().lines().count(), 1, "{table}: {err}");
        assert!(err.contains(says), "{table}: {err}");
        // Placed at its line: `config.toml:<line>:<col>`, the line holding the key.
        let line: usize = err
            .split("config.toml:")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no line in {err}"));
        let config = std::fs::read_to_string(p.config_path()).expect("config");
        let at = config.lines().nth(line - 1).unwrap_or("");
        assert!(at.contains(key), "{table}: line {line} is `{at}`: {err}");
    }
}

#[test]
fn a_ping_url_that_hangs_delays_only_its_own_pings() {
    let stuck = Receiver::start(Some("/stuck"));
    let good = Receiver::start(None);
    let p = Project::new();
    let noop = |id: &str, url: &str| {
        job(
            id,
            &format!(
                "entry = \"fixture_jobs:noop\"\nschedule = \"* * * * * *\"\nmarket_hours = false\nexecutor = \"pyo3\"\nping = {url:?}"
            ),
        )
    };
    p.config(
        "\n[notify]\ntimeout = \"30s\"",
        &(noop("slow_ping", &stuck.url("/stuck/a")) + &noop("fast_ping", &good.url("/ok/b"))),
    );
    let daemon = p.spawn_daemon();
    let started = std::time::Instant::now();
    // `fast_ping`'s pings keep arriving, every second, while `/stuck` holds its first.
    assert!(
        wait_until(Duration::from_secs(20), || good.requests().len() >= 12),
        "{} pings in {:?}\n{}",
        good.requests().len(),
        started.elapsed(),
        p.daemon_output()
    );
    assert_eq!(stuck.requests().len(), 1, "the stuck URL holds its worker");
    let successes = p
        .runs_with("success")
        .iter()
        .filter(|r| r["job"] == "fast_ping")
        .count();
    // Each run's two pings came about as it ran (a few may still be in flight).
    assert!(
        good.requests().len() + 4 >= 2 * successes,
        "{} pings, {successes} runs",
        good.requests().len()
    );
    stop_clean(&p, daemon);
}

#[test]
fn a_run_stuck_in_native_code_gives_stuck() {
    let hooks = Receiver::start(None);
    let p = Project::new();
    p.config(
        &format!(
            "\n[notify]\nwebhook = {:?}\nevents = [\"stuck\"]",
            hooks.url("/hook")
        ),
        &job(
            "sleeper",
            "entry = \"fixture_jobs:stuck\"\nschedule = \"0 0 0 1 1 *\"\nmarket_hours = false\nexecutor = \"pyo3\"\ntimeout = \"1s\"\nargs = { seconds = 5 }",
        ),
    );
    let daemon = p.spawn_daemon();
    assert!(wait_until(Duration::from_secs(20), || {
        p.path().join("logs/control.sock").exists()
    }));
    let out = p.run(&["trigger", "sleeper"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        wait_until(Duration::from_secs(15), || !hooks
            .events("/hook")
            .is_empty()),
        "{}",
        p.daemon_output()
    );
    let events = hooks.events("/hook");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["event"], "stuck");
    assert_eq!(events[0]["job"], "sleeper");
    assert_eq!(events[0]["trigger"], "manual");
    let row = p
        .history()
        .into_iter()
        .find(|r| r["id"] == events[0]["run_id"])
        .expect("the stuck run");
    assert_eq!(row["stuck"], true, "{row:#}");
    stop_clean(&p, daemon);
}
