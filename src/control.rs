//! Run-time control of the running daemon: `pause`, `resume`, `trigger`, `backfill`. The CLI
//! talks to the daemon over a Unix socket in the private log folder, and the daemon answers only
//! its own user (checked by the peer's credentials). What must survive a restart (pauses,
//! backfill queues, triggers not yet started) is kept in `<log_dir>/control.json`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const SOCKET: &str = "control.sock";
pub const STATE: &str = "control.json";

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Pause {
        job: String,
        until: Option<DateTime<Utc>>,
    },
    Resume {
        job: String,
    },
    Trigger {
        job: String,
    },
    Backfill {
        job: String,
        /// The range asked for, `[from, to)`: what is kept across restarts.
        range: Span,
        /// Its past slots without a successful run, as the CLI found them.
        slots: Vec<DateTime<Utc>>,
    },
    /// Read the config again (as SIGHUP does); answered once it is applied or refused.
    Reload,
}

/// An interval of instants, `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// The most slots one `backfill` may queue.
pub const MAX_BACKFILL: usize = 20_000;

/// The past slots of `job` in `span` that have no successful run in `history`, oldest first.
pub fn missing_slots(
    job: &crate::config::Job,
    calendar: &crate::calendar::Calendar,
    history: Option<&crate::history::History>,
    span: Span,
    now: DateTime<Utc>,
) -> crate::error::Result<Vec<DateTime<Utc>>> {
    let to = span.to.min(now);
    if to <= span.from {
        return Ok(Vec::new());
    }
    let done: std::collections::HashSet<DateTime<Utc>> = match history {
        Some(h) => h
            .runs_between(span.from, to)?
            .into_iter()
            .filter(|r| r.job == job.id && r.outcome == crate::history::Outcome::Success)
            .filter_map(|r| crate::history::parse_time(&r.scheduled_at))
            .collect(),
        None => Default::default(),
    };
    Ok(job
        .trigger
        .fires_between(calendar, span.from, to)
        .into_iter()
        .filter(|t| !done.contains(t))
        .collect())
}

impl Request {
    pub fn job(&self) -> &str {
        match self {
            Request::Pause { job, .. }
            | Request::Resume { job }
            | Request::Trigger { job }
            | Request::Backfill { job, .. } => job,
            Request::Reload => "",
        }
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
}

/// A job's pause, as kept across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    pub since: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
}

/// What survives a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    #[serde(default)]
    pub paused: BTreeMap<String, Paused>,
    /// Per job, the backfill ranges not yet done: at a start their slots without a successful
    /// run are queued again.
    #[serde(default)]
    pub backfill: BTreeMap<String, Vec<Span>>,
    /// Jobs with a manual run asked for and not started yet.
    #[serde(default)]
    pub triggers: Vec<String>,
}

pub fn state_path(log_dir: &Path) -> PathBuf {
    log_dir.join(STATE)
}

/// The kept state as it is on disk: `None` when there is none, `Err` when it cannot be read.
pub fn read(log_dir: &Path) -> Option<Result<Persisted, String>> {
    use std::io::Read;
    let mut text = String::new();
    let mut f = crate::private::open(&state_path(log_dir), crate::private::Open::Read).ok()?;
    if let Err(e) = f.read_to_string(&mut text) {
        return Some(Err(e.to_string()));
    }
    Some(serde_json::from_str(&text).map_err(|e| e.to_string()))
}

/// The kept state, for the daemon: one that cannot be read is moved aside (and said so), so the
/// next save does not overwrite it.
pub fn load(log_dir: &Path) -> Persisted {
    match read(log_dir) {
        None => Persisted::default(),
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            let path = state_path(log_dir);
            let aside = log_dir.join(format!(
                "{STATE}.unreadable-{}",
                Utc::now().format("%Y%m%dT%H%M%S")
            ));
            let kept = std::fs::rename(&path, &aside).is_ok();
            tracing::error!(
                "❗ `{}` cannot be read ({e}): no pause, backfill or trigger is carried over{}",
                path.display(),
                if kept {
                    format!("; the file is kept as `{}`", aside.display())
                } else {
                    String::new()
                }
            );
            Persisted::default()
        }
    }
}

/// Writes the kept state on a thread of its own, newest first (a later snapshot replaces one not
/// written yet).
pub struct Saver(std::sync::mpsc::Sender<Save>);

/// A snapshot to write, or a request to say when what came before is written.
enum Save {
    State(Persisted),
    Told(tokio::sync::oneshot::Sender<()>),
}

impl Saver {
    pub fn start(log_dir: PathBuf) -> Saver {
        let (tx, rx) = std::sync::mpsc::channel::<Save>();
        let _ = std::thread::Builder::new()
            .name("hedge-control".into())
            .spawn(move || {
                let mut told = Vec::new();
                while let Ok(first) = rx.recv() {
                    let mut state = None;
                    for save in std::iter::once(first).chain(rx.try_iter()) {
                        match save {
                            Save::State(s) => state = Some(s),
                            Save::Told(t) => told.push(t),
                        }
                    }
                    let Some(state) = state else {
                        told.drain(..).for_each(|t| {
                            let _ = t.send(());
                        });
                        continue;
                    };
                    let text = serde_json::to_vec_pretty(&state).unwrap_or_default();
                    if let Err(e) = crate::private::write_atomic(&state_path(&log_dir), &text) {
                        tracing::error!(
                            "❗ cannot keep the pauses and backfills in {}: {e}",
                            state_path(&log_dir).display()
                        );
                    }
                    told.drain(..).for_each(|t| {
                        let _ = t.send(());
                    });
                }
            });
        Saver(tx)
    }

    pub fn save(&self, state: Persisted) {
        let _ = self.0.send(Save::State(state));
    }

    /// Resolves once what was handed to `save` before is written.
    pub fn written(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.0.send(Save::Told(tx));
        rx
    }
}

/// What the daemon's listener hands the loop: a request and where its answer goes.
pub type Asked = (Request, tokio::sync::oneshot::Sender<Reply>);

/// Whether the control socket is down (a file in its place, or it cannot be bound): the health
/// check says so in `status`.
pub static OFF: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Rung by each health check: the listener looks whether its socket is still there (a removed
/// one is made again). No timer of its own: an idle daemon wakes no more often for it.
pub static RECHECK: tokio::sync::Notify = tokio::sync::Notify::const_new();

fn set_off(why: Option<String>) {
    if let Ok(mut off) = OFF.lock() {
        *off = why;
    }
}

/// Control is off for `why`: said once (`said`: already), shown by `status`, and looked at again
/// at the next health check. Returns that it was said.
async fn off(why: String, said: bool) -> bool {
    if !said {
        tracing::error!("❗ {why}");
    }
    set_off(Some(why));
    RECHECK.notified().await;
    true
}

/// Listens on `<log_dir>/control.sock` for the same user's requests and hands them to the loop.
/// A socket removed from under it is made again; a file put in its place is left alone (and
/// said so) until it is removed.
pub async fn listen(log_dir: PathBuf, tx: tokio::sync::mpsc::UnboundedSender<Asked>) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let path = log_dir.join(SOCKET);
    let mut said = false;
    loop {
        // A socket left by a dead daemon goes (we hold the instance lock: it is nobody's now);
        // a file or link put in its place is not ours to remove.
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(&path);
            } else {
                said = off(
                    format!(
                        "`{}` is not a socket: pause, resume, trigger and backfill cannot reach the daemon until it is removed",
                        path.display()
                    ),
                    said,
                )
                .await;
                continue;
            }
        }
        let listener = match tokio::net::UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                said = off(
                    format!(
                        "cannot listen on `{}` ({e}): pause, resume, trigger and backfill cannot reach the daemon",
                        path.display()
                    ),
                    said,
                )
                .await;
                continue;
            }
        };
        if said {
            tracing::info!(
                "✅ listening for control requests again on `{}`",
                path.display()
            );
            said = false;
        }
        set_off(None);
        let ours = std::fs::symlink_metadata(&path).map(|m| m.ino()).ok();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::spawn(answer(stream, tx.clone()));
                    }
                }
                _ = RECHECK.notified() => {
                    let now = std::fs::symlink_metadata(&path).map(|m| m.ino()).ok();
                    if now != ours {
                        tracing::warn!("⚠️  the control socket `{}` was removed or replaced: listening again", path.display());
                        break;
                    }
                }
            }
        }
    }
}

/// Answers one connection: the same user only, one request, one reply.
async fn answer(stream: tokio::net::UnixStream, tx: tokio::sync::mpsc::UnboundedSender<Asked>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let me = crate::private::euid();
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (read, mut write) = stream.into_split();
    let refuse = |message: &str| Reply {
        ok: false,
        message: message.to_string(),
    };
    let reply = if uid != Some(me) {
        refuse("only the daemon's own user may control it")
    } else {
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, 1 << 20));
        let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
        match (read, serde_json::from_str::<Request>(line.trim())) {
            (Ok(Ok(_)), Ok(req)) => {
                let (answer, rx) = tokio::sync::oneshot::channel();
                if tx.send((req, answer)).is_err() {
                    refuse("the daemon is stopping")
                } else {
                    rx.await
                        .unwrap_or_else(|_| refuse("the daemon is stopping"))
                }
            }
            (Ok(Ok(_)), Err(e)) => refuse(&format!("bad request: {e}")),
            _ => refuse("no request"),
        }
    };
    let mut text = serde_json::to_string(&reply).unwrap_or_default();
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

/// Why a request did not reach the daemon.
#[derive(Debug)]
pub enum SendError {
    /// No daemon listens.
    NotRunning,
    Other(String),
}

/// Sends `req` to the daemon of `log_dir` and waits for its answer.
pub fn send(log_dir: &Path, req: &Request) -> Result<Reply, SendError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let path = log_dir.join(SOCKET);
    let meta = std::fs::symlink_metadata(&path).map_err(|_| SendError::NotRunning)?;
    if !meta.file_type().is_socket() || meta.uid() != crate::private::euid() {
        return Err(SendError::Other(format!(
            "`{}` is not our daemon's socket (not a socket, or another user's)",
            path.display()
        )));
    }
    let mut stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
                SendError::NotRunning
            }
            _ => SendError::Other(format!("cannot reach the daemon: {e}")),
        })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut text = serde_json::to_string(req).map_err(|e| SendError::Other(e.to_string()))?;
    text.push('\n');
    stream
        .write_all(text.as_bytes())
        .map_err(|e| SendError::Other(format!("cannot reach the daemon: {e}")))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| SendError::Other(format!("no answer from the daemon: {e}")))?;
    serde_json::from_str(line.trim())
        .map_err(|e| SendError::Other(format!("a bad answer from the daemon: {e}")))
}
