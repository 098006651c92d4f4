//! The fork servers of `executor = "fork"`: one warm interpreter per Python environment
//! (`python -m hedge_bridge.forkserver`), which imports the bridge and `[python] preload` once and
//! forks a child per run.
//!
//! The daemon talks to a server over a `SOCK_SEQPACKET` socket pair handed to it as descriptor 3:
//! one JSON object per message, the run's stdout and stderr attached to a fork request as
//! descriptors. One thread per server reads its messages and routes them to the runs by uid; when
//! the socket closes (the server exited, was killed, or was retired) it reaps the server and tells
//! every run still waiting. A child's exit is reported while it is still a zombie: its PID and
//! process group stay ours until the run lets it go (`release`), so a signal never reaches a
//! process that merely reused the number.
//!
//! A server is replaced (the old one finishes its runs, then goes) after `fork_max_runs` runs, when
//! its memory passes `fork_max_memory`, when a project module it imported changed on disk, or
//! when the config's Python settings change. Nothing here runs on the scheduling loop: starting
//! and checking a server are blocking calls made on blocking threads.

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, SystemTime};

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, recv, sendmsg, socketpair,
};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::Config;

/// The longest message a server sends (its ready message lists the project's files it imported,
/// at most 2,000).
const MAX_MESSAGE: usize = 256 * 1024;

/// What the server says about one run.
#[derive(Debug)]
pub(crate) enum Msg {
    /// The child is forked.
    Forked(u32),
    /// The child ended (its status), and is a zombie until released.
    Exited(Option<ExitStatus>),
    /// The server would not fork.
    Refused(String),
    /// The server is gone (why).
    Gone(String),
}

/// Why a server could not be had.
#[derive(Debug, Clone)]
pub(crate) enum StartError {
    /// The preloads are not fit for forking (a module started a thread) or failed to import:
    /// the config's fault.
    Preload(String),
    /// Anything else (the interpreter would not start, no answer in time).
    Other(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Preload(m) | StartError::Other(m) => f.write_str(m),
        }
    }
}

/// What makes two servers interchangeable.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    python: PathBuf,
    venv: Option<PathBuf>,
    path: Vec<PathBuf>,
    cwd: PathBuf,
    preload: Vec<String>,
    inherited_path: Option<std::ffi::OsString>,
}

impl Key {
    fn of(config: &Config, python: &Path) -> Key {
        Key {
            python: python.to_path_buf(),
            venv: config.python.venv.clone(),
            path: config.python.path.clone(),
            cwd: config.python.cwd.clone(),
            preload: config.python.preload.clone(),
            inherited_path: std::env::var_os("PYTHONPATH"),
        }
    }
}

#[derive(Default)]
struct Life {
    /// Children forked.
    forks: u32,
    /// Children not yet released.
    inflight: u32,
    /// Why it takes no more runs.
    retiring: Option<String>,
    /// Why it is gone.
    dead: Option<String>,
}

/// One running fork server.
pub(crate) struct Server {
    pub(crate) pid: u32,
    sock: OwnedFd,
    key: Key,
    started: SystemTime,
    /// The project's source files it imported, to notice a change on disk.
    modules: Vec<PathBuf>,
    pub(crate) python_version: String,
    routes: Mutex<HashMap<String, mpsc::UnboundedSender<Msg>>>,
    life: Mutex<Life>,
    pongs: Mutex<Option<std_mpsc::Sender<()>>>,
    /// The child forked ahead of the next run, already in its cgroup (`None` inside: no cgroups
    /// here); `None` while there is none.
    spare: Mutex<Option<Option<crate::contain::Cage>>>,
}

/// What the server says (one JSON object per message; see `forkserver.py`). Untagged: each
/// kind is told by the key only it has, tried in this order.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Reply {
    /// `{"forked": uid, "pid"}`: the run's child is forked.
    Forked { forked: String, pid: u32 },
    /// `{"exit": uid, "pid", "code" | "signal", "core"}`: a child ended.
    Exited {
        exit: String,
        code: Option<i32>,
        signal: Option<i32>,
        #[serde(default)]
        core: bool,
    },
    /// `{"refused": uid, "error"}`: no child for that run.
    Refused {
        refused: String,
        #[serde(default)]
        error: String,
    },
    /// `{"ready": true, "pid", "python", "modules"}`, once: the preloads are in.
    Ready {
        ready: bool,
        python: Option<String>,
        #[serde(default)]
        modules: Vec<PathBuf>,
    },
    /// `{"error", "kind"}`, once instead of ready: the preloads failed or started a thread.
    StartFailed { error: String, kind: Option<String> },
    /// `{"pong": true, "children"}`.
    Pong {
        #[allow(dead_code)] // its presence is the message
        pong: bool,
    },
    /// `{"spare_gone": true}`: the spare child died before it got a run.
    SpareGone {
        #[allow(dead_code)] // its presence is the message
        spare_gone: bool,
    },
}

/// A child's exit status from the server's `code` / `signal` / `core`.
fn exit_status(code: Option<i32>, signal: Option<i32>, core: bool) -> Option<ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    match (code, signal) {
        (Some(code), _) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
        (None, Some(sig)) => Some(ExitStatus::from_raw(
            (sig & 0x7f) | if core { 0x80 } else { 0 },
        )),
        (None, None) => None,
    }
}

impl Server {
    /// The console line that says a server is ready.
    pub(crate) fn announce(&self) {
        tracing::info!(
            "🍴 fork server {} ready (Python {}, {})",
            self.pid,
            self.python_version,
            crate::fmt::n(self.key.preload.len(), "preload")
        );
    }

    /// Starts a server for `config`'s Python and waits (up to `python.probe_timeout`) until it
    /// has imported its preloads. Blocking.
    fn start(config: &Config, python: &Path) -> Result<Arc<Server>, StartError> {
        let other = |what: &str, e: &dyn std::fmt::Display| {
            StartError::Other(format!("cannot start the fork server: {what}: {e}"))
        };
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| other("socket pair", &e))?;
        let (log_r, log_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| other("pipe", &e))?;
        let log_w2 = log_w.try_clone().map_err(|e| other("pipe", &e))?;
        let key = Key::of(config, python);
        let mut cmd = server_command(config, python, (log_w, log_w2));
        let setup = crate::contain::ChildSetup::new(None);
        let fd = theirs.as_raw_fd();
        // SAFETY: only async-signal-safe calls (umask, close_range, dup2, fcntl) between fork and
        // exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                setup.in_child()?;
                if fd == 3 {
                    if nix::libc::fcntl(3, nix::libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if nix::libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (mut child, spawned) = crate::contain::Spawned::spawn(|| cmd.spawn(), |c| Some(c.id()))
            .map_err(|e| other(&format!("`{}`", python.display()), &e))?;
        drop(cmd);
        drop(theirs);
        let pid = child.id();
        crate::contain::keeper_note(crate::contain::KeeperNote::Group(pid as i32));
        forward_output(log_r, pid);

        // The first message: ready, or why not.
        let (hello_tx, hello_rx) = std_mpsc::channel::<Reply>();
        let sock_copy = match ours.try_clone() {
            Ok(s) => s,
            Err(e) => {
                kill_server(&mut child, pid);
                return Err(other("socket", &e));
            }
        };
        let reader_slot: Arc<Mutex<Option<std::sync::Weak<Server>>>> = Arc::default();
        let slot = Arc::clone(&reader_slot);
        let reader = std::thread::Builder::new()
            .name(format!("fork-server-{pid}"))
            .stack_size(128 * 1024)
            .spawn(move || read_loop(sock_copy, (child, spawned), pid, hello_tx, slot));
        if let Err(e) = reader {
            return Err(other("thread", &e));
        }
        let (python_version, modules) = hello(&hello_rx, config, pid)?;
        let server = Arc::new(Server {
            pid,
            sock: ours,
            key,
            started: SystemTime::now(),
            modules,
            python_version,
            routes: Mutex::default(),
            life: Mutex::default(),
            pongs: Mutex::default(),
            spare: Mutex::default(),
        });
        if let Ok(mut slot) = reader_slot.lock() {
            *slot = Some(Arc::downgrade(&server));
        }
        // It may have died between its hello and now: the reader could not tell it.
        if !crate::process::pid_alive(i64::from(pid)) || crate::process::is_zombie(pid as i32) {
            server.gone("exited right after start".to_string());
        }
        Ok(server)
    }

    fn send(&self, message: &serde_json::Value, fds: &[i32]) -> std::io::Result<()> {
        let bytes = message.to_string();
        let iov = [IoSlice::new(bytes.as_bytes())];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        loop {
            match sendmsg::<()>(
                self.sock.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(std::io::Error::from(e)),
            }
        }
    }

    /// Asks for a child for run `uid`; its messages come on the returned channel. `out` and
    /// `err` become its stdout and stderr.
    pub(crate) fn fork(
        &self,
        uid: &str,
        request: serde_json::Value,
        [out, err, gate]: [&OwnedFd; 3],
    ) -> Result<mpsc::UnboundedReceiver<Msg>, String> {
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut life = self.life.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(why) = &life.dead {
                return Err(format!("the fork server is gone ({why})"));
            }
            life.forks += 1;
            life.inflight += 1;
        }
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_string(), tx);
        let fds = [
            out.as_fd().as_raw_fd(),
            err.as_fd().as_raw_fd(),
            gate.as_fd().as_raw_fd(),
        ];
        if let Err(e) = self.send(&request, &fds) {
            self.routes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(uid);
            self.let_go();
            return Err(format!("cannot reach the fork server: {e}"));
        }
        Ok(rx)
    }

    /// Has a child forked ahead of the next run, in a cgroup of its own, unless there is one (or
    /// containment is not set up yet). Blocking (makes a cgroup).
    pub(crate) fn prepare_spare(&self) {
        if crate::contain::mode().is_none() || !self.usable() {
            return;
        }
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.is_some() {
            return;
        }
        let cage =
            match crate::contain::Cage::named(&format!("spare-{}", crate::history::new_uid())) {
                Ok(cage) => cage,
                Err(e) => {
                    tracing::warn!("🍴 no cgroup for a spare fork child: {e}");
                    return;
                }
            };
        let cgroup = cage.as_ref().map(|c| c.dir().display().to_string());
        if self
            .send(&serde_json::json!({"op": "spare", "cgroup": cgroup}), &[])
            .is_ok()
        {
            *spare = Some(cage);
        }
    }

    /// The spare's cgroup, taken for a run (`Some(None)`: a spare without cgroups).
    pub(crate) fn take_spare(&self) -> Option<Option<crate::contain::Cage>> {
        self.spare.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The spare is gone (died, or its server did): its cgroup goes. Blocking.
    fn drop_spare(&self) {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(spare);
    }

    /// Lets the server reap child `pid` of run `uid`, and forget the run.
    pub(crate) fn release(&self, uid: &str, pid: Option<u32>) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
        if let Some(pid) = pid {
            let _ = self.send(&serde_json::json!({"op": "release", "pid": pid}), &[]);
        }
        self.let_go();
    }

    fn let_go(&self) {
        let close = {
            let mut life = self.life.lock().unwrap_or_else(|e| e.into_inner());
            life.inflight = life.inflight.saturating_sub(1);
            life.inflight == 0 && life.retiring.is_some() && life.dead.is_none()
        };
        if close {
            self.close();
        }
    }

    /// Takes no more runs; goes once its last run is released.
    pub(crate) fn retire(&self, why: String) {
        let close = {
            let mut life = self.life.lock().unwrap_or_else(|e| e.into_inner());
            if life.retiring.is_some() || life.dead.is_some() {
                return;
            }
            tracing::info!("🍴 fork server {} retires: {why}", self.pid);
            life.retiring = Some(why);
            life.inflight == 0
        };
        if close {
            self.close();
        }
    }

    /// Closes our end: the server reads the end of its socket and exits.
    fn close(&self) {
        let _ = nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }

    /// Kills a server that does not answer.
    pub(crate) fn kill(&self, why: &str) {
        tracing::warn!("🍴 fork server {} {why}: killing it", self.pid);
        self.mark_dead(why.to_string());
        crate::process::signal_group(self.pid, nix::sys::signal::Signal::SIGKILL);
        self.close();
    }

    fn mark_dead(&self, why: String) {
        let mut life = self.life.lock().unwrap_or_else(|e| e.into_inner());
        life.dead.get_or_insert(why);
    }

    /// The server is gone: every run waiting on it is told.
    fn gone(&self, why: String) {
        self.mark_dead(why.clone());
        let routes: Vec<_> = self
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, tx) in routes {
            let _ = tx.send(Msg::Gone(why.clone()));
        }
    }

    fn dead(&self) -> Option<String> {
        self.life
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dead
            .clone()
    }

    fn retiring(&self) -> Option<String> {
        self.life
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retiring
            .clone()
    }

    fn usable(&self) -> bool {
        let life = self.life.lock().unwrap_or_else(|e| e.into_inner());
        life.dead.is_none() && life.retiring.is_none()
    }

    /// Why this server should make way for a new one, if it should.
    fn stale(&self, config: &Config, python: &Path) -> Option<String> {
        let forks = self.life.lock().unwrap_or_else(|e| e.into_inner()).forks;
        if forks >= config.python.fork_max_runs {
            return Some(format!(
                "it has served {forks} runs (`python.fork_max_runs`)"
            ));
        }
        // A change of the Python settings comes with a reload, which renews the server: a
        // run still holding the old config must not retire the new one.
        let _ = python;
        let rss = rss_bytes(self.pid);
        if rss > config.python.fork_max_memory {
            return Some(format!(
                "it uses {} (over `python.fork_max_memory`, {})",
                crate::fmt::bytes(rss),
                crate::fmt::bytes(config.python.fork_max_memory)
            ));
        }
        for file in &self.modules {
            let changed = std::fs::metadata(file)
                .and_then(|m| m.modified())
                .map_or(true, |m| m > self.started);
            if changed {
                return Some(format!("{} changed on disk", file.display()));
            }
        }
        None
    }

    /// Whether the server answers within `within`. Blocking.
    pub(crate) fn ping(&self, within: Duration) -> bool {
        let (tx, rx) = std_mpsc::channel();
        *self.pongs.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        if self.send(&serde_json::json!({"op": "ping"}), &[]).is_err() {
            return false;
        }
        rx.recv_timeout(within).is_ok()
    }
}

/// Resident memory of `pid`, from /proc (0 when unreadable).
fn rss_bytes(pid: u32) -> u64 {
    let Ok(statm) = std::fs::read_to_string(format!("/proc/{pid}/statm")) else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { nix::libc::sysconf(nix::libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

fn kill_server(child: &mut Child, pid: u32) {
    crate::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    crate::contain::keeper_note(crate::contain::KeeperNote::GroupEnded(pid as i32));
}

/// The server's own output (a preload's warnings, a traceback) goes to the daemon's log.
fn forward_output(read: OwnedFd, pid: u32) {
    let _ = std::thread::Builder::new()
        .name(format!("fork-server-{pid}-out"))
        .stack_size(64 * 1024)
        .spawn(move || {
            use std::io::BufRead;
            let reader = std::io::BufReader::new(std::fs::File::from(read));
            for line in reader.split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end();
                if !line.is_empty() {
                    tracing::warn!("🍴 fork server {pid}: {line}");
                }
            }
        });
}

/// The server's command: `python -m hedge_bridge.forkserver` in a process group of its own,
/// its output into the pipe `log`, its environment the jobs' (none of the daemon's when none of
/// its jobs inherits it).
fn server_command(
    config: &Config,
    python: &Path,
    (log_w, log_w2): (OwnedFd, OwnedFd),
) -> std::process::Command {
    let mut roots: Vec<String> = config
        .python
        .path
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    roots.push(config.python.cwd.display().to_string());
    let mut cmd = std::process::Command::new(python);
    // The server is its children's parent, and what the dynamic loader put in it (an
    // `LD_PRELOAD` of the daemon's) is in every child it forks. When none of its jobs
    // inherits the daemon's environment, neither does the server.
    if config
        .jobs
        .iter()
        .filter(|j| j.executor == crate::config::Executor::Fork)
        .all(|j| !j.env.inherit)
    {
        cmd.env_clear()
            .envs(crate::config::secrets::kept_environment());
    }
    cmd.arg("-m")
        .arg("hedge_bridge.forkserver")
        .current_dir(&config.python.cwd)
        .env(
            "PYTHONPATH",
            super::subprocess::python_path(&crate::bridge::search_path(&config.python)),
        )
        .env("PYTHONUNBUFFERED", "1")
        .env("HEDGE_FORK_FD", "3")
        .env(
            "HEDGE_PRELOAD",
            serde_json::to_string(&config.python.preload).unwrap_or_default(),
        )
        .env(
            "HEDGE_PROJECT_PATHS",
            serde_json::to_string(&roots).unwrap_or_default(),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(log_w))
        .stderr(std::process::Stdio::from(log_w2));
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    if let Some(venv) = &config.python.venv {
        cmd.env("VIRTUAL_ENV", venv);
    }
    // systemd's messages are the daemon's to send, not its jobs'.
    for var in crate::health::SYSTEMD_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// The server's first message: ready (its Python's version and the modules it imported), or
/// why not. A server that does not say in time, or says something else, is killed.
fn hello(
    rx: &std_mpsc::Receiver<Reply>,
    config: &Config,
    pid: u32,
) -> Result<(String, Vec<PathBuf>), StartError> {
    let hello = match rx.recv_timeout(config.python.probe_timeout) {
        Ok(hello) => hello,
        Err(std_mpsc::RecvTimeoutError::Timeout) => {
            crate::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            return Err(StartError::Other(format!(
                "the fork server did not finish importing its preloads within {} (`python.probe_timeout`)",
                humantime::format_duration(config.python.probe_timeout)
            )));
        }
        Err(std_mpsc::RecvTimeoutError::Disconnected) => {
            return Err(StartError::Other(
                "the fork server exited before it was ready (its output is in the daemon's log)"
                    .to_string(),
            ));
        }
    };
    match hello {
        Reply::Ready {
            ready: true,
            python,
            modules,
        } => Ok((python.unwrap_or_default(), modules)),
        Reply::StartFailed { error, kind } => Err(match kind.as_deref() {
            Some("threads") | Some("preload") => StartError::Preload(error),
            _ => StartError::Other(error),
        }),
        _ => {
            crate::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            Err(StartError::Other(
                "the fork server answered something else than ready".to_string(),
            ))
        }
    }
}

/// The reader thread's life: routes messages until the socket closes, then reaps the server
/// and tells the runs still waiting.
fn read_loop(
    sock: OwnedFd,
    (mut child, spawned): (Child, crate::contain::Spawned),
    pid: u32,
    hello: std_mpsc::Sender<Reply>,
    server: Arc<Mutex<Option<std::sync::Weak<Server>>>>,
) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut hello = Some(hello);
    loop {
        let n = match recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => break,
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        };
        let Ok(msg) = serde_json::from_slice::<Reply>(&buf[..n]) else {
            tracing::warn!("🍴 fork server {pid} sent something unreadable");
            continue;
        };
        if matches!(msg, Reply::Ready { .. } | Reply::StartFailed { .. }) {
            if let Some(h) = hello.take() {
                let _ = h.send(msg);
            }
            continue;
        }
        let Some(server) = server
            .lock()
            .ok()
            .and_then(|s| s.as_ref().and_then(std::sync::Weak::upgrade))
        else {
            continue;
        };
        let (uid, what) = match msg {
            Reply::SpareGone { .. } => {
                server.drop_spare();
                continue;
            }
            Reply::Pong { .. } => {
                if let Some(tx) = server
                    .pongs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                {
                    let _ = tx.send(());
                }
                continue;
            }
            Reply::Forked { forked, pid } => (forked, Msg::Forked(pid)),
            Reply::Exited {
                exit,
                code,
                signal,
                core,
            } => (exit, Msg::Exited(exit_status(code, signal, core))),
            Reply::Refused { refused, error } => (refused, Msg::Refused(error)),
            Reply::Ready { .. } | Reply::StartFailed { .. } => continue,
        };
        let route = server
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid)
            .cloned();
        if let Some(tx) = route {
            let _ = tx.send(what);
        }
    }
    drop(hello);
    let why = match child.wait() {
        Ok(status) => describe_exit(status),
        Err(e) => format!("could not be waited for: {e}"),
    };
    // Reaped: no longer a child of ours that someone waits for.
    drop(spawned);
    crate::contain::keeper_note(crate::contain::KeeperNote::GroupEnded(pid as i32));
    if let Some(server) = server
        .lock()
        .ok()
        .and_then(|s| s.as_ref().and_then(std::sync::Weak::upgrade))
    {
        let retired = server
            .life
            .lock()
            .map(|l| l.retiring.is_some())
            .unwrap_or(false);
        if retired {
            tracing::info!("🍴 fork server {pid} {why}");
        } else {
            tracing::warn!("🍴 fork server {pid} {why}");
        }
        server.gone(why);
        server.drop_spare();
    }
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("was killed by {}", crate::process::signal_name(sig)),
        _ => "ended".to_string(),
    }
}

/// Why a run got a new server: a note for its log.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    pub(crate) text: String,
    /// The previous server was lost (it died, or did not answer), where a planned replacement
    /// (recycled, reloaded) is not: the run's row says it ran on a new one.
    pub(crate) lost: bool,
}

/// The fork servers of a daemon (or of `run-once`): one at a time, replaced when stale.
///
/// `current` is only ever held for a moment (the loop's thread may look at it); a start, which
/// takes as long as the preloads' imports, holds `starting` instead, on a blocking thread.
#[derive(Default)]
pub struct ForkPool {
    current: Mutex<Option<Arc<Server>>>,
    starting: Mutex<()>,
}

impl ForkPool {
    fn current(&self) -> Option<Arc<Server>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current server if it can take a run; else why a new one is needed (a note for the
    /// run's log), `None` when there was none.
    fn check_current(&self, config: &Config, python: &Path) -> Result<Arc<Server>, Option<Note>> {
        let Some(server) = self.current() else {
            return Err(None);
        };
        if let Some(why) = server.retiring() {
            return Err(Some(Note {
                text: format!("fork server {} replaced: {why}", server.pid),
                lost: false,
            }));
        }
        if let Some(why) = server.dead() {
            return Err(Some(Note {
                text: format!("the fork server {} {why}: started a new one", server.pid),
                lost: true,
            }));
        }
        if let Some(why) = server.stale(config, python) {
            server.retire(why.clone());
            return Err(Some(Note {
                text: format!("fork server {} replaced: {why}", server.pid),
                lost: false,
            }));
        }
        Ok(server)
    }

    /// A server ready to fork for `config`, started if there is none or the one there is stale
    /// or gone; with a note for the run's log when a new one had to be started. Blocking.
    pub(crate) fn server(
        &self,
        config: &Config,
        python: &Path,
    ) -> Result<(Arc<Server>, Option<Note>), StartError> {
        self.get(config, python, true)
    }

    fn get(
        &self,
        config: &Config,
        python: &Path,
        announce: bool,
    ) -> Result<(Arc<Server>, Option<Note>), StartError> {
        let first = match self.check_current(config, python) {
            Ok(server) => {
                server.prepare_spare();
                return Ok((server, None));
            }
            Err(note) => note,
        };
        let _one_start = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        // Another thread may have started one meanwhile.
        let note = match self.check_current(config, python) {
            Ok(server) => return Ok((server, None)),
            Err(note) => first.or(note),
        };
        let server = Server::start(config, python)?;
        if announce {
            server.announce();
        }
        server.prepare_spare();
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&server));
        Ok((server, note))
    }

    /// Starts (or refreshes) the server ahead of the first run. Blocking.
    pub(crate) fn warm(&self, config: &Config, python: &Path) -> Result<(), StartError> {
        self.server(config, python).map(|_| ())
    }

    /// `warm`, saying nothing (before the daemon's log is set up); `announce` says it later.
    pub(crate) fn warm_quietly(&self, config: &Config, python: &Path) -> Result<(), StartError> {
        self.get(config, python, false).map(|_| ())
    }

    /// Says that the current server is ready.
    pub(crate) fn announce(&self) {
        if let Some(server) = self.current() {
            server.announce();
        }
    }

    /// Replaces the server now (reload, SIGHUP): the next run forks from a fresh import of
    /// everything. Blocking.
    pub(crate) fn renew(
        &self,
        config: &Config,
        python: &Path,
        why: &str,
    ) -> Result<(), StartError> {
        let _one_start = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        let new = Server::start(config, python)?;
        new.announce();
        let old = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(new);
        if let Some(old) = old {
            old.retire(why.to_string());
        }
        Ok(())
    }

    /// Kills a server that did not answer, so the next run starts a new one.
    pub(crate) fn kill(&self, server: &Server, why: &str) {
        server.kill(why);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|s| s.pid == server.pid) {
            *current = None;
        }
    }

    /// Checks the server answers (the health check); a hung one is killed. Blocking.
    pub(crate) fn check(&self) -> Option<String> {
        let server = self.current()?;
        if server.dead().is_some() || !server.usable() {
            return None;
        }
        if server.ping(Duration::from_secs(2)) {
            return None;
        }
        let why = "did not answer a ping within 2 s";
        self.kill(&server, why);
        Some(format!(
            "fork server {} {why}: killed; the next run starts a new one",
            server.pid
        ))
    }

    /// The current server's PID, if one runs.
    pub fn pid(&self) -> Option<u32> {
        let current = self.current.lock().ok()?;
        current
            .as_ref()
            .filter(|s| s.dead().is_none())
            .map(|s| s.pid)
    }

    /// Has the current server fork a child ahead of the next run. Blocking.
    pub(crate) fn spare(&self) {
        if let Some(server) = self.current() {
            server.prepare_spare();
        }
    }

    /// Retires every server (the daemon stops).
    pub(crate) fn shutdown(&self) {
        if let Some(server) = self.current.lock().ok().and_then(|mut c| c.take()) {
            server.retire("the scheduler stops".to_string());
            // Gone before we are (reaped by its reader): under systemd, what is left of a
            // service once its main process exits is SIGKILLed.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while server.life.lock().is_ok_and(|l| l.dead.is_none())
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each message `forkserver.py` sends is read as its own kind (the untagged order matters:
    /// a refusal carries `error` too, and an exit's `pid` must not make it a fork).
    #[test]
    fn every_server_message_reads_as_its_kind() {
        let read = |json: &str| serde_json::from_str::<Reply>(json).unwrap();
        assert!(matches!(
            read(r#"{"forked": "u1", "pid": 42}"#),
            Reply::Forked { forked, pid: 42 } if forked == "u1"
        ));
        let exited = read(r#"{"exit": "u1", "pid": 42, "signal": 9, "core": false}"#);
        let Reply::Exited {
            exit,
            code,
            signal,
            core,
        } = exited
        else {
            panic!("{exited:?}")
        };
        assert_eq!(
            (exit.as_str(), code, signal, core),
            ("u1", None, Some(9), false)
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            exit_status(None, Some(9), false).and_then(|s| s.signal()),
            Some(9)
        );
        assert_eq!(
            exit_status(Some(3), None, false).and_then(|s| s.code()),
            Some(3)
        );
        assert!(matches!(
            read(r#"{"refused": "u1", "error": "fork failed: EAGAIN"}"#),
            Reply::Refused { refused, error } if refused == "u1" && error.contains("EAGAIN")
        ));
        assert!(matches!(
            read(r#"{"ready": true, "pid": 7, "python": "3.11.9", "modules": ["/a.py"], "native_threads": 1}"#),
            Reply::Ready { ready: true, python: Some(v), modules } if v == "3.11.9" && modules.len() == 1
        ));
        assert!(matches!(
            read(r#"{"error": "pandas started a thread", "kind": "threads"}"#),
            Reply::StartFailed { kind: Some(k), .. } if k == "threads"
        ));
        assert!(matches!(
            read(r#"{"pong": true, "children": 2}"#),
            Reply::Pong { .. }
        ));
        assert!(matches!(
            read(r#"{"spare_gone": true}"#),
            Reply::SpareGone { .. }
        ));
        assert!(serde_json::from_str::<Reply>(r#"{"hello": 1}"#).is_err());
    }
}
