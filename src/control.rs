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
        slots: Vec<DateTime<Utc>>,
    },
}

impl Request {
    pub fn job(&self) -> &str {
        match self {
            Request::Pause { job, .. }
            | Request::Resume { job }
            | Request::Trigger { job }
            | Request::Backfill { job, .. } => job,
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
    /// Per job, the backfill slots not yet run (the one running included).
    #[serde(default)]
    pub backfill: BTreeMap<String, Vec<DateTime<Utc>>>,
    /// Jobs with a manual run asked for and not started yet.
    #[serde(default)]
    pub triggers: Vec<String>,
}

pub fn state_path(log_dir: &Path) -> PathBuf {
    log_dir.join(STATE)
}

/// The kept state; empty when there is none (or it cannot be read, which is logged).
pub fn load(log_dir: &Path) -> Persisted {
    let path = state_path(log_dir);
    let mut text = String::new();
    match crate::private::open(&path, crate::private::Open::Read) {
        Ok(f) => {
            use std::io::Read;
            let _ = BufReader::new(f).read_to_string(&mut text);
        }
        Err(_) => return Persisted::default(),
    }
    match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                "⚠️  `{}` cannot be read ({e}): no pause or backfill is carried over",
                path.display()
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

/// Listens on `<log_dir>/control.sock` for the same user's requests and hands them to the loop.
pub async fn listen(log_dir: PathBuf, tx: tokio::sync::mpsc::UnboundedSender<Asked>) {
    let path = log_dir.join(SOCKET);
    // A socket left by a dead daemon goes (we hold the instance lock: it is nobody's now); a
    // file or link put in its place is not ours to remove.
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(&path);
        } else {
            tracing::error!(
                "❗ `{}` is not a socket: pause, resume, trigger and backfill are off until it is removed",
                path.display()
            );
            return;
        }
    }
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(
                "❗ cannot listen on `{}` ({e}): pause, resume, trigger and backfill are off",
                path.display()
            );
            return;
        }
    };
    let me = crate::private::euid();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let uid = stream.peer_cred().map(|c| c.uid()).ok();
            let (read, mut write) = stream.into_split();
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
            let reply = if uid != Some(me) {
                Reply {
                    ok: false,
                    message: "only the daemon's own user may control it".to_string(),
                }
            } else {
                let mut line = String::new();
                let mut reader = tokio::io::BufReader::new(read);
                let read =
                    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
                match (read, serde_json::from_str::<Request>(line.trim())) {
                    (Ok(Ok(_)), Ok(req)) => {
                        let (answer, rx) = tokio::sync::oneshot::channel();
                        if tx.send((req, answer)).is_err() {
                            Reply {
                                ok: false,
                                message: "the daemon is stopping".to_string(),
                            }
                        } else {
                            rx.await.unwrap_or(Reply {
                                ok: false,
                                message: "the daemon is stopping".to_string(),
                            })
                        }
                    }
                    (_, Err(e)) => Reply {
                        ok: false,
                        message: format!("bad request: {e}"),
                    },
                    _ => Reply {
                        ok: false,
                        message: "no request".to_string(),
                    },
                }
            };
            let mut text = serde_json::to_string(&reply).unwrap_or_default();
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        });
    }
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
