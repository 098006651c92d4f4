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

mod io;
mod pool;
mod protocol;

use io::{forward_output, hello, read_loop, server_command};
pub use pool::ForkPool;
pub(crate) use pool::Note;
pub(crate) use protocol::Msg;
use protocol::{Reply, exit_status};

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
use tokio::sync::mpsc;

use crate::config::Config;

/// The longest message a server sends (its ready message lists the project's files it imported,
/// at most 2,000).
const MAX_MESSAGE: usize = 256 * 1024;

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
        pass_socket(&mut cmd, theirs.as_raw_fd());
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

    /// The server is gone: every run waiting on it is told why (our own reason when we killed
    /// it, a hang, rather than the signal it died of).
    fn gone(&self, why: String) {
        self.mark_dead(why.clone());
        let why = match self.dead() {
            Some(ours) if ours != why => format!("{ours} (killed)"),
            _ => why,
        };
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

/// The server's end of the socket pair, `fd`, is its fd 3 (inherited across exec), in the
/// child set up like a job's.
fn pass_socket(cmd: &mut std::process::Command, fd: i32) {
    let setup = crate::contain::ChildSetup::new(None);
    // SAFETY: only async-signal-safe calls (umask, close_range, dup2, fcntl) between fork and
    // exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
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
}
