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

mod keeper;
mod strays;

use keeper::KEEPER;
pub use keeper::{
    KEEPER_ARG, KeeperGroup, KeeperNote, check_keeper, keeper_from_stdin, keeper_note, start_keeper,
};
use strays::SPAWNED;
pub use strays::{InFlight, Spawned, end_strays, start_ticks};

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
