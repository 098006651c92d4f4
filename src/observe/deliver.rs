//! Delivery: notifications (a command, a web hook) and pings, each on a worker thread of its
//! own, so a notifier that hangs delays neither a fire nor a ping. The loop hands them work
//! without waiting (a bounded queue; what overflows is counted as a failure).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Config, WebhookFormat};

/// What a notification says: the documented body of the `json` web hook and the command's stdin.
#[derive(Debug, Clone, Serialize)]
pub struct EventDoc {
    pub event: &'static str,
    pub job: Option<String>,
    pub name: Option<String>,
    pub outcome: Option<String>,
    pub run_id: Option<i64>,
    pub trigger: Option<String>,
    /// The slot, in the exchange's time (RFC 3339 with its offset).
    pub scheduled_at: Option<String>,
    pub attempt: Option<u32>,
    pub error: Option<String>,
    pub node: Option<String>,
    /// When it happened, in the exchange's time.
    pub at: String,
    /// The run's identity (a UUIDv7).
    pub run_uid: Option<String>,
    /// A `missed` event: how many slots.
    pub count: Option<u64>,
    /// One line for a human.
    pub message: String,
}

/// A ping to an outside dead-man's switch.
#[derive(Debug, Clone)]
pub struct Ping {
    pub url: String,
    pub kind: PingKind,
    /// The run's identity: `?rid=`.
    pub rid: Option<String>,
    /// The job's log and the run's id: the body is the run's last lines.
    pub log: Option<(PathBuf, i64)>,
    /// How long it may take (`[notify] timeout`).
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingKind {
    Start,
    Success,
    Fail,
    Heartbeat,
}

/// How deliveries went: shown by `status` (through the state file) and `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub failures: std::sync::atomic::AtomicU64,
    pub last_error: Mutex<Option<(DateTime<Utc>, String)>>,
}

impl Stats {
    /// How many failed, and the last one (time and why).
    pub fn summary(&self) -> (u64, Option<String>) {
        let last = self.last_error.lock().ok().and_then(|l| {
            l.as_ref()
                .map(|(at, what)| format!("{}: {what}", crate::history::fmt_time(*at)))
        });
        (
            self.failures.load(std::sync::atomic::Ordering::Relaxed),
            last,
        )
    }

    fn failed(&self, metrics: &super::Metrics, what: String) {
        tracing::warn!("📣 {what}");
        self.failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics.notify_failed();
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some((Utc::now(), what));
        }
    }
}

enum Work {
    Send {
        doc: Box<EventDoc>,
        config: Arc<Config>,
    },
    /// Everything queued before it went out.
    Marker(SyncSender<()>),
}

/// The queues to the two workers.
pub struct Outbox {
    notify: SyncSender<Work>,
    ping: SyncSender<Ping>,
    pub stats: Arc<Stats>,
    metrics: Arc<super::Metrics>,
}

const QUEUE: usize = 1024;
/// The most of a run's log a ping carries.
const PING_BODY: usize = 10 * 1024;

impl Outbox {
    pub fn start(metrics: Arc<super::Metrics>) -> Outbox {
        let stats = Arc::new(Stats::default());
        let (notify, notify_rx) = sync_channel::<Work>(QUEUE);
        let (ping, ping_rx) = sync_channel::<Ping>(QUEUE);
        {
            let (stats, metrics) = (Arc::clone(&stats), Arc::clone(&metrics));
            let _ = std::thread::Builder::new()
                .name("hedge-notify".into())
                .spawn(move || notify_worker(notify_rx, &stats, &metrics));
        }
        {
            let (stats, metrics) = (Arc::clone(&stats), Arc::clone(&metrics));
            let _ = std::thread::Builder::new()
                .name("hedge-ping".into())
                .spawn(move || ping_worker(ping_rx, &stats, &metrics));
        }
        Outbox {
            notify,
            ping,
            stats,
            metrics,
        }
    }

    pub fn notify(&self, doc: EventDoc, config: Arc<Config>) {
        let what = doc.event;
        match self.notify.try_send(Work::Send {
            doc: Box::new(doc),
            config,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.stats.failed(
                &self.metrics,
                format!("notification `{what}` dropped: {QUEUE} are waiting for a slow notifier"),
            ),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    pub fn ping(&self, ping: Ping) {
        match self.ping.try_send(ping) {
            Ok(()) => {}
            Err(TrySendError::Full(p)) => self.stats.failed(
                &self.metrics,
                format!("ping {} dropped: {QUEUE} are waiting", shown(&p.url)),
            ),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// What waits for the notifications queued so far to go out (the daemon's last words at a
    /// stop), on a blocking thread.
    pub fn drain(&self) -> Drain {
        Drain(self.notify.clone())
    }
}

/// See [`Outbox::drain`].
pub struct Drain(SyncSender<Work>);

impl Drain {
    pub fn wait(self, within: Duration) {
        let (tx, rx) = sync_channel::<()>(1);
        if self.0.try_send(Work::Marker(tx)).is_ok() {
            let _ = rx.recv_timeout(within);
        }
    }
}

/// A URL without its path and without a user or password (either may be a secret: a ping's
/// UUID, a hook's token, `user:password@`).
pub fn shown(url: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let host_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..host_end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{}{host}/…", &url[..scheme_end])
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .user_agent(concat!("hedge-scheduler/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn notify_worker(rx: Receiver<Work>, stats: &Stats, metrics: &super::Metrics) {
    while let Ok(work) = rx.recv() {
        let (doc, config) = match work {
            Work::Send { doc, config } => (doc, config),
            Work::Marker(done) => {
                let _ = done.try_send(());
                continue;
            }
        };
        let (notify, cwd) = (&config.notify, &config.python.cwd);
        let json = serde_json::to_string(&doc).unwrap_or_default();
        if let Some(argv) = &notify.command
            && let Err(e) = run_command(argv, &doc, &json, cwd, notify.timeout)
        {
            stats.failed(
                metrics,
                format!("notify command `{}` ({}): {e}", argv[0], doc.event),
            );
        }
        if let Some(url) = &notify.webhook {
            let body = match notify.webhook_format {
                WebhookFormat::Json => json.clone(),
                WebhookFormat::Slack => serde_json::json!({ "text": doc.message }).to_string(),
            };
            let sent = agent(notify.timeout)
                .post(url)
                .header("Content-Type", "application/json")
                .send(body.as_bytes());
            if let Err(e) = sent {
                stats.failed(
                    metrics,
                    format!("web hook {} ({}): {e}", shown(url), doc.event),
                );
            }
        }
    }
}

/// Runs the notify command: the event in its environment and on its stdin, in a process group
/// (and cgroup) of its own, ended after `timeout` like a job.
fn run_command(
    argv: &[String],
    doc: &EventDoc,
    json: &str,
    cwd: &Path,
    timeout: Duration,
) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let uid = crate::history::new_uid();
    let cage = crate::contain::Cage::new(&format!("notify-{uid}"))
        .ok()
        .flatten();
    let setup = crate::contain::ChildSetup::new(cage.as_ref());
    let mut cmd = Command::new(&argv[0]);
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    cmd.args(&argv[1..])
        .current_dir(cwd)
        .env("HEDGE_EVENT", doc.event)
        .env("HEDGE_JOB", opt(&doc.job))
        .env("HEDGE_OUTCOME", opt(&doc.outcome))
        .env(
            "HEDGE_RUN_ID",
            doc.run_id.map(|i| i.to_string()).unwrap_or_default(),
        )
        .env("HEDGE_SCHEDULED_AT", opt(&doc.scheduled_at))
        .env("HEDGE_ERROR", opt(&doc.error))
        .env(crate::process::RUN_TAG, format!("notify-{uid}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: `in_child` makes only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || setup.in_child());
    }
    let (mut child, _spawned) = crate::contain::Spawned::spawn(|| cmd.spawn(), |c| Some(c.id()))
        .map_err(|e| e.to_string())?;
    let pid = child.id();
    crate::contain::keeper_note(crate::contain::KeeperNote::Group(pid as i32));
    let _forget = crate::contain::KeeperGroup(pid);
    if let Some(mut stdin) = child.stdin.take() {
        let json = json.to_string();
        // A command that does not read its stdin must not block us: written by a thread.
        std::thread::spawn(move || {
            let _ = stdin.write_all(json.as_bytes());
        });
    }
    let last_line = last_stderr_line(&mut child);
    let result = wait_within(&mut child, timeout, || {
        // A moment for the reader to take the last line the command wrote.
        std::thread::sleep(Duration::from_millis(20));
        last_line.lock().map(|l| l.clone()).unwrap_or_default()
    });
    drop(cage);
    result
}

/// The child's stderr, read as it comes on a thread (a chatty command never blocks on a full
/// pipe): its last non-empty line, which says why it failed.
fn last_stderr_line(child: &mut std::process::Child) -> Arc<Mutex<String>> {
    let last_line: Arc<Mutex<String>> = Arc::default();
    if let Some(stderr) = child.stderr.take() {
        let last = Arc::clone(&last_line);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if !line.trim().is_empty()
                    && let Ok(mut l) = last.lock()
                {
                    *l = line.chars().take(300).collect();
                }
            }
        });
    }
    last_line
}

/// Waits for the command (its process group `child.id()`) to exit within `timeout`: an exit
/// that is not a success says its status and `last_line()`; past the timeout the group gets
/// SIGTERM, a second's grace, then SIGKILL.
fn wait_within(
    child: &mut std::process::Child,
    timeout: Duration,
    last_line: impl Fn() -> String,
) -> Result<(), String> {
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let last = last_line();
                return Err(format!(
                    "{status}{}",
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(": {last}")
                    }
                ));
            }
            Ok(None) if Instant::now() >= deadline => {
                use nix::sys::signal::Signal;
                crate::process::signal_group(pid, Signal::SIGTERM);
                let grace = Instant::now() + Duration::from_secs(1);
                while Instant::now() < grace && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                crate::process::signal_group(pid, Signal::SIGKILL);
                let _ = child.wait();
                return Err(format!(
                    "timed out after {}: ended",
                    crate::fmt::duration(timeout)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Hands each ping to a worker of its URL's own (created at its first ping): pings to one URL go
/// out in order (`/start` before the end), and a URL that hangs delays only its own.
fn ping_worker(rx: Receiver<Ping>, stats: &Arc<Stats>, metrics: &Arc<super::Metrics>) {
    let mut workers: std::collections::HashMap<String, SyncSender<Ping>> = Default::default();
    while let Ok(p) = rx.recv() {
        let url = p.url.clone();
        let worker = workers.entry(url.clone()).or_insert_with(|| {
            let (tx, rx) = sync_channel::<Ping>(PER_URL);
            let (stats, metrics) = (Arc::clone(stats), Arc::clone(metrics));
            let _ = std::thread::Builder::new()
                .name("hedge-ping-url".into())
                .spawn(move || ping_url_worker(rx, &stats, &metrics));
            tx
        });
        if let Err(TrySendError::Full(_)) = worker.try_send(p) {
            stats.failed(
                metrics,
                format!("ping {} dropped: {PER_URL} are waiting for it", shown(&url)),
            );
        }
    }
}

/// Pings waiting for one URL, at most.
const PER_URL: usize = 64;

fn ping_url_worker(rx: Receiver<Ping>, stats: &Stats, metrics: &super::Metrics) {
    while let Ok(p) = rx.recv() {
        let url = ping_url(&p.url, p.kind, p.rid.as_deref());
        let body = p
            .log
            .as_ref()
            .map(|(path, run_id)| run_tail(path, *run_id, PING_BODY))
            .unwrap_or_default();
        let sent = agent(p.timeout)
            .post(&url)
            .header("Content-Type", "text/plain; charset=utf-8")
            .send(body.as_bytes());
        if let Err(e) = sent {
            stats.failed(metrics, format!("ping {}: {e}", shown(&p.url)));
        }
    }
}

/// The healthchecks.io convention: `<url>/start`, `<url>`, `<url>/fail`, with `?rid=`.
pub fn ping_url(url: &str, kind: PingKind, rid: Option<&str>) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b.trim_end_matches('/'), Some(q)),
        None => (url.trim_end_matches('/'), None),
    };
    let suffix = match kind {
        PingKind::Start => "/start",
        PingKind::Fail => "/fail",
        PingKind::Success | PingKind::Heartbeat => "",
    };
    let mut params: Vec<String> = query.map(|q| vec![q.to_string()]).unwrap_or_default();
    if let Some(rid) = rid {
        params.push(format!("rid={rid}"));
    }
    if params.is_empty() {
        format!("{base}{suffix}")
    } else {
        format!("{base}{suffix}?{}", params.join("&"))
    }
}

/// The last lines (at most `max` bytes) of run `run_id` in a job's log.
pub fn run_tail(path: &Path, run_id: i64, max: usize) -> String {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = crate::private::open(path, crate::private::Open::Read) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let window = (max as u64 * 8).max(64 * 1024);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(window)));
    let mut text = Vec::new();
    let _ = f.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text);
    let mark = format!("[run {run_id} ");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(&mark)).collect();
    let mut out: Vec<&str> = Vec::new();
    let mut size = 0;
    for line in lines.iter().rev() {
        size += line.len() + 1;
        if size > max {
            break;
        }
        out.push(line);
    }
    out.reverse();
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_urls_follow_the_healthchecks_convention() {
        let u = "https://hc-ping.com/5e0c";
        assert_eq!(
            ping_url(u, PingKind::Start, Some("r1")),
            "https://hc-ping.com/5e0c/start?rid=r1"
        );
        assert_eq!(
            ping_url(u, PingKind::Success, Some("r1")),
            "https://hc-ping.com/5e0c?rid=r1"
        );
        assert_eq!(
            ping_url("https://h/p/?x=1", PingKind::Fail, Some("r")),
            "https://h/p/fail?x=1&rid=r"
        );
        assert_eq!(ping_url(u, PingKind::Heartbeat, None), u);
    }

    #[test]
    fn shown_urls_keep_no_path() {
        assert_eq!(
            shown("https://hc-ping.com/secret-uuid"),
            "https://hc-ping.com/…"
        );
        assert_eq!(shown("http://127.0.0.1:9/x?y"), "http://127.0.0.1:9/…");
        assert_eq!(
            shown("http://hookuser:S3cretPass@127.0.0.1:1/hook/x"),
            "http://127.0.0.1:1/…"
        );
    }
}
