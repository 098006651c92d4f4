//! The keeper: a process forked from the scheduler before it starts a thread, waiting on a pipe
//! whose only writer is the scheduler; told (`KeeperNote`) what to end should the scheduler die,
//! it ends it when the pipe closes, or (cluster mode) when the scheduler is silent too long.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::process::{kill_cgroup, remove_cgroup_tree};

/// How this process contains its runs.
use super::*;

/// The keeper: its PID and the write end of its pipe.
pub(super) static KEEPER: Mutex<Option<(i32, File)>> = Mutex::new(None);

/// What the keeper has been told and not told to forget, to tell a new keeper.
pub(super) static NOTES: Mutex<Vec<KeeperNote>> = Mutex::new(Vec::new());

/// The argument that makes the binary a keeper reading its notes on stdin.
pub const KEEPER_ARG: &str = "__hedge-keeper";

/// Starts the keeper: a process forked from us that ends our runs when we die. Call it before
/// any thread starts and before any lock is taken (a forked copy would hold it).
pub fn start_keeper() -> io::Result<()> {
    use nix::unistd::{ForkResult, fork, pipe2};
    let (read, write) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    // SAFETY: no other thread exists yet (see above), so the child may do anything.
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Child => {
            drop(write);
            keeper_main(read)
        }
        ForkResult::Parent { child } => {
            drop(read);
            if let Ok(mut set) = SPAWNED.lock() {
                set.get_or_insert_with(HashSet::new)
                    .insert(u32::try_from(child.as_raw()).unwrap_or(0));
            }
            if let Ok(mut k) = KEEPER.lock() {
                let file = File::from(write);
                nonblocking(&file);
                *k = Some((child.as_raw(), file));
            }
            Ok(())
        }
    }
}

/// Checks that the keeper lives; if it died (anyone of our user can kill it), reaps it and
/// starts a new one (this binary again, as a keeper reading stdin) and tells it everything it
/// must know. Returns a line to log when it did.
pub fn check_keeper() -> Option<String> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let mut k = KEEPER.lock().ok()?;
    let (pid, _) = k.as_ref()?;
    let pid = *pid;
    if let Ok(WaitStatus::StillAlive) =
        waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG))
    {
        return None;
    }
    let mut fresh = std::process::Command::new("/proc/self/exe");
    fresh
        .arg(KEEPER_ARG)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let spawned = {
        let mut set = SPAWNED.lock().unwrap_or_else(|e| e.into_inner());
        let child = fresh.spawn();
        if let Ok(c) = &child {
            let set = set.get_or_insert_with(HashSet::new);
            set.remove(&u32::try_from(pid).unwrap_or(0));
            set.insert(c.id());
        }
        child
    };
    match spawned {
        Ok(mut child) => {
            let Some(stdin) = child.stdin.take() else {
                return Some("the keeper died and a new one has no pipe".into());
            };
            let new_pid = i32::try_from(child.id()).unwrap_or(0);
            // Waited for by `check_keeper` itself, through its PID.
            drop(child);
            let mut file = File::from(OwnedFd::from(stdin));
            let notes = NOTES.lock().map(|n| n.clone()).unwrap_or_default();
            for note in notes {
                use std::io::Write;
                let _ = writeln!(file, "{}", note.line());
            }
            nonblocking(&file);
            *k = Some((new_pid, file));
            Some(format!(
                "the keeper (PID {pid}) was gone: started a new one (PID {new_pid})"
            ))
        }
        Err(e) => {
            *k = None;
            Some(format!(
                "the keeper (PID {pid}) was gone and a new one cannot start ({e}): runs will not die with the scheduler"
            ))
        }
    }
}

/// `hedge-scheduler __hedge-keeper`: a keeper reading its notes on stdin.
pub fn keeper_from_stdin() -> ! {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .unwrap_or_else(|_| std::process::exit(1));
    keeper_main(stdin)
}

/// What the scheduler tells its keeper, one line each on the keeper's pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeeperNote {
    /// A run's process group, to end should we die (`+G <pgid>`).
    Group(i32),
    /// That group ended (`-G <pgid>`).
    GroupEnded(i32),
    /// Our runs' cgroup, to kill and remove should we die (`+C <dir>`).
    Cgroup(PathBuf),
    /// Cluster mode: our runs end when we are silent this long (`D <ms>`).
    Deadman(Duration),
    /// A sign of life (`P`).
    Ping,
}

impl KeeperNote {
    /// The note's line (without its newline).
    fn line(&self) -> String {
        match self {
            KeeperNote::Group(g) => format!("+G {g}"),
            KeeperNote::GroupEnded(g) => format!("-G {g}"),
            KeeperNote::Cgroup(dir) => format!("+C {}", dir.display()),
            KeeperNote::Deadman(d) => format!("D {}", d.as_millis()),
            KeeperNote::Ping => "P".to_string(),
        }
    }

    /// A line read back; `None` for one this keeper does not know.
    fn parse(line: &str) -> Option<KeeperNote> {
        match line.split_once(' ') {
            Some(("+G", g)) => g.parse().ok().filter(|g| *g > 1).map(KeeperNote::Group),
            Some(("-G", g)) => g.parse().ok().map(KeeperNote::GroupEnded),
            Some(("+C", dir)) => Some(KeeperNote::Cgroup(PathBuf::from(dir))),
            Some(("D", ms)) => ms
                .parse()
                .ok()
                .map(|ms| KeeperNote::Deadman(Duration::from_millis(ms))),
            None if line == "P" => Some(KeeperNote::Ping),
            _ => None,
        }
    }
}

/// Tells the keeper what to end should we die (and, in cluster mode, that we live).
pub fn keeper_note(note: KeeperNote) {
    use std::io::Write;
    if let Ok(mut notes) = NOTES.lock() {
        match &note {
            KeeperNote::GroupEnded(g) => notes.retain(|n| *n != KeeperNote::Group(*g)),
            // A ping is news only once.
            KeeperNote::Ping => {}
            other => notes.push(other.clone()),
        }
    }
    if let Ok(mut k) = KEEPER.lock()
        && let Some((pid, f)) = k.as_mut()
    {
        // Never blocks (the pipe is non-blocking): a keeper that stopped reading (stopped, hung)
        // is ended, and the next health check starts one that is told everything again.
        if f.write_all(format!("{}\n", note.line()).as_bytes())
            .is_err()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Makes the write end of the keeper's pipe non-blocking.
pub(super) fn nonblocking(f: &File) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    if let Ok(flags) = fcntl(f, FcntlArg::F_GETFL) {
        let _ = fcntl(
            f,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        );
    }
}

/// Tells the keeper, when dropped, that a run's group is ended.
pub struct KeeperGroup(pub u32);

impl Drop for KeeperGroup {
    fn drop(&mut self) {
        keeper_note(KeeperNote::GroupEnded(self.0 as i32));
    }
}

/// The keeper's life: read notes until the scheduler is gone, then end what it left.
pub(super) fn keeper_main(read: OwnedFd) -> ! {
    detach(read.as_raw_fd());
    let mut watched = Watched::default();
    // Cluster mode: the runs end if the scheduler is silent for this long (stopped or hung: its
    // lease would run out and another node would run the slot again).
    let mut deadman: Option<Duration> = None;
    let mut last_ping = std::time::Instant::now();
    let mut fired = false;
    let mut file = File::from(read);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let wait = match deadman {
            Some(d) if !fired => d.saturating_sub(last_ping.elapsed()),
            _ => Duration::from_secs(3600),
        };
        let mut fds = [nix::poll::PollFd::new(
            file.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let timeout = nix::poll::PollTimeout::try_from(wait.as_millis().min(3_600_000) as i32)
            .unwrap_or(nix::poll::PollTimeout::MAX);
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) => {
                if deadman.is_some_and(|d| last_ping.elapsed() >= d) && !fired {
                    // The scheduler is alive but silent: end its runs now; it is told by their
                    // ends when it wakes.
                    fired = true;
                    watched.kill();
                }
                continue;
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        use std::io::Read;
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            last_ping = std::time::Instant::now();
            fired = false;
            match KeeperNote::parse(&line) {
                Some(KeeperNote::Deadman(d)) => deadman = Some(d),
                Some(note) => watched.note(note),
                None => {}
            }
        }
    }
    // The scheduler is gone (it closed the pipe by exiting, or was killed).
    watched.kill();
    for dir in &watched.cgroups {
        remove_cgroup_tree(dir);
    }
    std::process::exit(0)
}

/// The process groups and cgroups of the scheduler's runs, which the keeper ends when the
/// scheduler goes or falls silent.
#[derive(Default)]
struct Watched {
    groups: HashSet<i32>,
    cgroups: HashSet<PathBuf>,
}

impl Watched {
    /// A run's group or cgroup began or ended.
    fn note(&mut self, note: KeeperNote) {
        match note {
            KeeperNote::Group(g) => {
                self.groups.insert(g);
            }
            KeeperNote::GroupEnded(g) => {
                self.groups.remove(&g);
            }
            KeeperNote::Cgroup(dir) => {
                self.cgroups.insert(dir);
            }
            KeeperNote::Deadman(_) | KeeperNote::Ping => {}
        }
    }

    /// SIGKILL to every cgroup and group watched.
    fn kill(&self) {
        for dir in &self.cgroups {
            kill_cgroup(dir);
        }
        for g in &self.groups {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(*g),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The keeper's own process: its name, a group of its own (a signal to the scheduler's
/// process group does not reach it), the scheduler's stop signals ignored (the keeper stays
/// until the scheduler is gone), and nothing of the scheduler's held but the pipe `keep`.
fn detach(keep: RawFd) {
    use nix::sys::signal::{SigHandler, Signal, signal};
    let _ = nix::sys::prctl::set_name(c"hedge-keeper");
    // A group of its own: a signal to the scheduler's process group does not reach it.
    let _ = nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0));
    // Ctrl+C, a hangup or a SIGTERM to the whole group is for the scheduler: the keeper stays
    // until the scheduler is gone.
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
        // SAFETY: ignoring a signal installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    // Hold nothing of the scheduler's but the pipe (no lock, no log, no socket).
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let fds: Vec<RawFd> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .filter(|fd: &RawFd| *fd > 2 && *fd != keep)
            .collect();
        for fd in fds {
            let _ = nix::unistd::close(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keeper's protocol: every note reads back as itself; what it does not know is ignored.
    #[test]
    fn keeper_notes_read_back_as_written() {
        for note in [
            KeeperNote::Group(4242),
            KeeperNote::GroupEnded(4242),
            KeeperNote::Cgroup(PathBuf::from("/sys/fs/cgroup/hedge scheduler/runs")),
            KeeperNote::Deadman(Duration::from_millis(1400)),
            KeeperNote::Ping,
        ] {
            assert_eq!(
                KeeperNote::parse(&note.line()),
                Some(note.clone()),
                "{note:?}"
            );
        }
        // Group 1 (init) and 0 are never a run's: never ended by the keeper.
        for line in ["+G 1", "+G 0", "+G x", "D soon", "Q 1", ""] {
            assert_eq!(KeeperNote::parse(line), None, "{line:?}");
        }
    }
}
