//! Nothing outlives a run, and every run dies with its daemon.
//!
//! - **cgroup** (the better one): each subprocess run starts inside a cgroup v2 of its own,
//!   `<our cgroup>/hedge-scheduler.<pid>/run-<uid>`, whatever it does later (a double fork, a new
//!   session, a cleared environment) it stays there, and the run ends with `cgroup.kill`. Needs a
//!   cgroup v2 we may write: root, or systemd's `Delegate=yes`.
//! - **subreaper** (elsewhere): the daemon is `PR_SET_CHILD_SUBREAPER`, so a descendant that
//!   escapes its run's process group is reparented to the daemon instead of init; once no run that
//!   could own it is in flight, it is ended and reaped.
//!
//! In both, every run dies with its daemon: a keeper process, forked from the scheduler before
//! it starts a thread, waits on a pipe whose only writer is the scheduler. When the scheduler is
//! gone, however it died, the read ends and the keeper kills what is left: the runs' cgroups, or
//! the process groups of the runs in flight. At start, what a dead daemon left is ended too.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::config::Containment;
use crate::process::{cgroup_pids, cgroup_populated, kill_cgroup, remove_cgroup_tree};

/// How this process contains its runs.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Runs go into cgroups under this one (ours, made at start).
    Cgroup(PathBuf),
    /// Why there is no cgroup per run.
    Subreaper(String),
}

impl Mode {
    pub fn describe(&self) -> String {
        match self {
            Mode::Cgroup(base) => format!("cgroup per run under {}", base.display()),
            Mode::Subreaper(why) => format!("subreaper ({why})"),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Mode::Cgroup(_) => "cgroup",
            Mode::Subreaper(_) => "subreaper",
        }
    }
}

static MODE: OnceLock<Mode> = OnceLock::new();
/// The keeper: its PID and the write end of its pipe.
static KEEPER: Mutex<Option<(i32, File)>> = Mutex::new(None);
/// What the keeper has been told and not told to forget, to tell a new keeper.
static NOTES: Mutex<Vec<KeeperNote>> = Mutex::new(Vec::new());

/// The argument that makes the binary a keeper reading its notes on stdin.
pub const KEEPER_ARG: &str = "__hedge-keeper";
/// Our direct children that someone waits for (run leaders, probes): never strays.
static SPAWNED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);
/// Runs in flight: (uid, start in clock ticks since boot).
static INFLIGHT: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

/// Chooses and prepares the containment (once per process); `Err` says why the chosen one is
/// not possible here.
pub fn init(choice: Containment) -> std::result::Result<&'static Mode, String> {
    if let Some(m) = MODE.get() {
        return Ok(m);
    }
    // Whatever the mode now, what dead daemons left in cgroups (a run in cgroup mode before a
    // restart in subreaper mode) is ended.
    if let Ok(own) = own_cgroup() {
        end_dead_daemons_cgroups(&own);
    }
    let mode = match choice {
        Containment::Subreaper => subreaper("chosen in the config".into())?,
        Containment::Cgroup => Mode::Cgroup(cgroup_base()?),
        Containment::Auto => match cgroup_base() {
            Ok(base) => Mode::Cgroup(base),
            Err(why) => subreaper(format!("no cgroup per run: {why}"))?,
        },
    };
    if let Mode::Cgroup(base) = &mode {
        keeper_note(KeeperNote::Cgroup(base.clone()));
    }
    Ok(MODE.get_or_init(|| mode))
}

/// The containment in use, if `init` ran.
pub fn mode() -> Option<&'static Mode> {
    MODE.get()
}

fn subreaper(why: String) -> std::result::Result<Mode, String> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("cannot become the runs' subreaper: {e}"))?;
    Ok(Mode::Subreaper(why))
}

/// Our own cgroup v2 folder: `/proc/self/cgroup`'s `0::` line under the cgroup2 mount.
fn own_cgroup() -> std::result::Result<PathBuf, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 hierarchy")?
        .trim();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    for line in mounts.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !right.starts_with("cgroup2 ") {
            continue;
        }
        let f: Vec<&str> = left.split(' ').collect();
        let (Some(root), Some(mnt)) = (f.get(3), f.get(4)) else {
            continue;
        };
        let Some(sub) = rel.strip_prefix(root.trim_end_matches('/')) else {
            continue;
        };
        return Ok(Path::new(mnt).join(sub.trim_start_matches('/')));
    }
    Err("cgroup2 is not mounted".into())
}

/// Makes `<our cgroup>/hedge-scheduler.<pid>` for our runs, after ending what dead daemons left.
fn cgroup_base() -> std::result::Result<PathBuf, String> {
    let own = own_cgroup()?;
    let writable = |p: &Path| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
    if !writable(&own.join("cgroup.procs")) {
        return Err(format!(
            "cgroup `{}` is not ours to write (run as root, or under systemd with Delegate=yes)",
            own.display()
        ));
    }
    end_dead_daemons_cgroups(&own);
    let base = own.join(format!("hedge-scheduler.{}", std::process::id()));
    match std::fs::create_dir(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create cgroup `{}`: {e}", base.display())),
    }
    if !base.join("cgroup.kill").exists() {
        let _ = std::fs::remove_dir(&base);
        return Err("this kernel has no cgroup.kill (Linux 5.14 or later needed)".into());
    }
    Ok(base)
}

/// Ends and removes the run cgroups of daemons that are gone (killed, crashed).
fn end_dead_daemons_cgroups(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hedge-scheduler."))
            .and_then(|p| p.parse::<i64>().ok())
        else {
            continue;
        };
        if crate::process::scheduler_alive(pid) && pid != i64::from(std::process::id()) {
            continue;
        }
        let dir = entry.path();
        let left = cgroup_pids(&dir);
        if !left.is_empty() {
            tracing::warn!(
                "🧹 ending {} process(es) left in the run cgroups of a dead daemon (PID {pid})",
                left.len()
            );
        }
        kill_cgroup(&dir);
        remove_cgroup_tree(&dir);
    }
}

/// Removes our own runs' cgroup folder (at exit).
pub fn cleanup() {
    if let Some(Mode::Cgroup(base)) = MODE.get() {
        kill_cgroup(base);
        remove_cgroup_tree(base);
    }
    // A clean end: the keeper reads the end of its pipe, finds nothing left to end and exits;
    // waited for (briefly), so nothing of ours outlives us (under systemd, it would be SIGKILLed).
    let keeper = KEEPER.lock().ok().and_then(|mut k| k.take());
    if let Some((pid, pipe)) = keeper {
        drop(pipe);
        let pid = nix::unistd::Pid::from_raw(pid);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                _ => break,
            }
        }
    }
}

/// A run's cgroup, removed (its processes killed first) when dropped.
pub struct Cage {
    dir: PathBuf,
    procs: File,
}

impl Cage {
    /// A cgroup for run `uid`, in cgroup mode; `Ok(None)` otherwise.
    pub fn new(uid: &str) -> io::Result<Option<Cage>> {
        Cage::named(&format!("run-{uid}"))
    }

    /// A cgroup of our runs called `name`, in cgroup mode; `Ok(None)` otherwise.
    pub fn named(name: &str) -> io::Result<Option<Cage>> {
        let Some(Mode::Cgroup(base)) = MODE.get() else {
            return Ok(None);
        };
        let dir = base.join(name);
        std::fs::create_dir(&dir)?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        Ok(Some(Cage { dir, procs }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }
}

impl Drop for Cage {
    fn drop(&mut self) {
        if cgroup_populated(&self.dir) {
            kill_cgroup(&self.dir);
        }
        remove_cgroup_tree(&self.dir);
    }
}

/// What a run's leader does between fork and exec: join its cgroup, take the user's umask.
/// Only async-signal-safe calls.
pub struct ChildSetup {
    procs: Option<RawFd>,
    umask: Option<nix::sys::stat::Mode>,
}

impl ChildSetup {
    pub fn new(cage: Option<&Cage>) -> ChildSetup {
        ChildSetup {
            procs: cage.map(Cage::procs_fd),
            umask: crate::private::user_umask(),
        }
    }

    /// Runs in the child after fork, before exec.
    pub fn in_child(&self) -> io::Result<()> {
        if let Some(fd) = self.procs {
            // SAFETY: the descriptor is open in the parent, and so in the child.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            nix::unistd::write(fd, b"0").map_err(io::Error::from)?;
        }
        if let Some(mask) = self.umask {
            nix::sys::stat::umask(mask);
        }
        // Nothing the scheduler was handed by whoever started it (descriptors above stderr)
        // reaches the job: closed at exec. (An old kernel without close_range keeps them.)
        // SAFETY: a plain system call on the child's own descriptor table.
        unsafe {
            nix::libc::syscall(
                nix::libc::SYS_close_range,
                3u32,
                u32::MAX,
                nix::libc::CLOSE_RANGE_CLOEXEC,
            );
        }
        Ok(())
    }
}

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
fn nonblocking(f: &File) {
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
fn keeper_main(read: OwnedFd) -> ! {
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
    let keep = read.as_raw_fd();
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
    let mut groups: HashSet<i32> = HashSet::new();
    let mut cgroups: HashSet<PathBuf> = HashSet::new();
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
                    for dir in &cgroups {
                        kill_cgroup(dir);
                    }
                    for g in &groups {
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(*g),
                            Signal::SIGKILL,
                        );
                    }
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
                Some(KeeperNote::Group(g)) => {
                    groups.insert(g);
                }
                Some(KeeperNote::GroupEnded(g)) => {
                    groups.remove(&g);
                }
                Some(KeeperNote::Cgroup(dir)) => {
                    cgroups.insert(dir);
                }
                Some(KeeperNote::Deadman(d)) => deadman = Some(d),
                Some(KeeperNote::Ping) | None => {}
            }
        }
    }
    // The scheduler is gone (it closed the pipe by exiting, or was killed).
    for dir in &cgroups {
        kill_cgroup(dir);
    }
    for g in groups {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(g), Signal::SIGKILL);
    }
    for dir in &cgroups {
        remove_cgroup_tree(dir);
    }
    std::process::exit(0)
}

/// Keeps a direct child of ours out of the strays while someone waits for it.
pub struct Spawned(u32);

impl Spawned {
    /// Spawns with `spawn` and registers the child in one step (a sweep never sees it between).
    pub fn spawn<T>(
        spawn: impl FnOnce() -> io::Result<T>,
        pid_of: impl Fn(&T) -> Option<u32>,
    ) -> io::Result<(T, Spawned)> {
        let mut set = SPAWNED.lock().unwrap_or_else(|e| e.into_inner());
        let child = spawn()?;
        let pid = pid_of(&child).unwrap_or(0);
        set.get_or_insert_with(HashSet::new).insert(pid);
        Ok((child, Spawned(pid)))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(mut set) = SPAWNED.lock()
            && let Some(set) = set.as_mut()
        {
            set.remove(&self.0);
        }
    }
}

/// A run in flight: descendants born since it started may be its own.
pub struct InFlight(String);

impl InFlight {
    pub fn begin(uid: &str) -> InFlight {
        let ticks = now_ticks().unwrap_or(0);
        if let Ok(mut v) = INFLIGHT.lock() {
            v.push((uid.to_string(), ticks));
        }
        InFlight(uid.to_string())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut v) = INFLIGHT.lock() {
            v.retain(|(u, _)| *u != self.0);
        }
    }
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(100)
}

/// Now, in clock ticks since boot (the unit of a process's start time).
fn now_ticks() -> Option<u64> {
    let up = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = up.split_whitespace().next()?.parse().ok()?;
    Some((secs * clock_ticks() as f64) as u64)
}

/// When a process started, in clock ticks since boot; `None` when there is no such process.
pub fn start_ticks(pid: i32) -> Option<u64> {
    parent_and_start(pid).map(|(_, start)| start)
}

/// (ppid, start ticks) of a process.
fn parent_and_start(pid: i32) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

/// In subreaper mode: children of ours that nobody waits for and that no run in flight can own
/// (born before the oldest of them started): escaped from runs that have ended.
fn strays() -> Vec<i32> {
    if !matches!(MODE.get(), Some(Mode::Subreaper(_))) {
        return Vec::new();
    }
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let horizon = INFLIGHT
        .lock()
        .ok()
        .and_then(|v| v.iter().map(|(_, t)| *t).min())
        .unwrap_or(u64::MAX);
    let spawned = SPAWNED.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Some((ppid, start)) = parent_and_start(pid) else {
            continue;
        };
        let ours = spawned
            .as_ref()
            .is_some_and(|s| u32::try_from(pid).is_ok_and(|p| s.contains(&p)));
        if ppid == me && !ours && start < horizon {
            out.push(pid);
        }
    }
    out
}

/// Ends and reaps what escaped runs that have ended; returns how many live processes it ended.
/// They have no run left to finish for, and one that forks and exits to stay ahead of a signal
/// must not get away: each found is frozen (SIGSTOP) at once, the search is repeated until it
/// finds nothing new, then all are killed (SIGKILL) and reaped.
pub async fn end_strays(_grace: Duration) -> usize {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut frozen: Vec<i32> = Vec::new();
    let mut live = 0;
    for _ in 0..100 {
        let fresh: Vec<i32> = strays()
            .into_iter()
            .filter(|p| !frozen.contains(p))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for pid in &fresh {
            if !crate::process::is_zombie(*pid) {
                live += 1;
            }
            let _ = kill(Pid::from_raw(*pid), Signal::SIGSTOP);
        }
        frozen.extend(fresh);
        // A fork in flight when it was stopped shows up at the next look.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for pid in &frozen {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    // Our children now: reap each, by its PID only (never another's child).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut left = frozen;
    while !left.is_empty() && tokio::time::Instant::now() < deadline {
        left.retain(|pid| {
            matches!(
                nix::sys::wait::waitpid(
                    Pid::from_raw(*pid),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG)
                ),
                Ok(nix::sys::wait::WaitStatus::StillAlive)
            )
        });
        if !left.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

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

    #[test]
    fn strays_are_children_nobody_waits_for_that_no_run_in_flight_can_own() {
        init(Containment::Subreaper).unwrap();
        let pid = |c: &std::process::Child| i32::try_from(c.id()).unwrap();
        let sleep = || Command::new("sleep").arg("30").spawn().unwrap();
        // A child someone waits for (a run's leader, a probe) is never a stray.
        let (mut waited, guard) =
            Spawned::spawn(|| Command::new("sleep").arg("30").spawn(), |c| Some(c.id())).unwrap();
        // An unregistered child stands in for one adopted from an ended run.
        let mut adopted = sleep();
        std::thread::sleep(Duration::from_millis(30));
        let flight = InFlight::begin("run-in-flight");
        std::thread::sleep(Duration::from_millis(30));
        // Born while a run is in flight: it may be that run's, so it is left alone.
        let mut young = sleep();
        let found = strays();
        assert!(found.contains(&pid(&adopted)), "{found:?}");
        assert!(!found.contains(&pid(&waited)), "{found:?}");
        assert!(!found.contains(&pid(&young)), "{found:?}");
        drop(flight);
        assert!(strays().contains(&pid(&young)));
        drop(guard);
        assert!(strays().contains(&pid(&waited)));
        for c in [&mut waited, &mut adopted, &mut young] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}
