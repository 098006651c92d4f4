//! Process groups: every job runs in a group of its own, and ending a run means ending the whole
//! group — SIGTERM, a grace period, then SIGKILL — and reaping the leader.
//!
//! A group counts as gone when no live (non-zombie) process is left in it: an orphaned zombie is
//! its new parent's to reap, and it cannot be signalled anyway.

use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::time::{Instant, sleep, timeout_at};

/// How often a group is polled while we wait for it to empty.
const POLL: Duration = Duration::from_millis(20);

/// Sends `sig` to every process of group `pgid`; false when the group no longer exists.
pub fn signal_group(pgid: u32, sig: Signal) -> bool {
    let Ok(raw) = i32::try_from(pgid) else {
        return false;
    };
    // Never signal group 0 or 1: that would be our own group or init's.
    if raw <= 1 {
        return false;
    }
    !matches!(killpg(Pid::from_raw(raw), sig), Err(Errno::ESRCH))
}

/// Whether group `pgid` still has a live (non-zombie) member.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(raw) = i32::try_from(pgid) else {
        return false;
    };
    if raw <= 1 {
        return false;
    }
    // Cheap check first: no member at all, not even a zombie.
    if matches!(killpg(Pid::from_raw(raw), None), Err(Errno::ESRCH)) {
        return false;
    }
    live_members(pgid).is_none_or(|n| n > 0)
}

/// Counts the non-zombie processes of group `pgid` from /proc; `None` where /proc is unreadable.
fn live_members(pgid: u32) -> Option<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: fields resume after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let _ppid = fields.next();
        let pgrp = fields.next().and_then(|p| p.parse::<u32>().ok());
        if pgrp == Some(pgid) && state != Some("Z") && state != Some("X") {
            n += 1;
        }
    }
    Some(n)
}

/// What `terminate` ends.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Every process of a process group we made.
    Group(u32),
    /// Every process carrying a run's tag (descendants that left its group).
    Tagged(&'a str),
    /// These processes (found by the caller, e.g. the old system's scripts).
    Pids(&'a [i32]),
    /// Every process in a run's cgroup, wherever it went.
    Cgroup(&'a std::path::Path),
}

impl Target<'_> {
    fn signal(&self, sig: Signal) {
        match self {
            Target::Group(pgid) => {
                signal_group(*pgid, sig);
            }
            Target::Tagged(tag) => signal_pids(&tagged_processes(tag), sig),
            Target::Pids(pids) => signal_pids(pids, sig),
            Target::Cgroup(dir) if sig == Signal::SIGKILL => kill_cgroup(dir),
            Target::Cgroup(dir) => signal_pids(&cgroup_pids(dir), sig),
        }
    }

    fn alive(&self) -> bool {
        match self {
            Target::Group(pgid) => group_alive(*pgid),
            Target::Tagged(tag) => !tagged_processes(tag).is_empty(),
            Target::Pids(pids) => pids
                .iter()
                .any(|p| pid_alive(i64::from(*p)) && !is_zombie(*p)),
            Target::Cgroup(dir) => cgroup_populated(dir),
        }
    }
}

fn signal_pids(pids: &[i32], sig: Signal) {
    for &pid in pids.iter().filter(|p| **p > 1) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
    }
}

/// Waits until `target` has no live process, or `deadline`; true when it is gone.
async fn wait_gone(target: &Target<'_>, deadline: Instant) -> bool {
    loop {
        if !target.alive() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// The one way processes are ended: SIGTERM, up to `grace` for them to exit, then SIGKILL (and a
/// short wait for the kernel to take them). Returns false when nothing was there to end.
pub async fn terminate(target: Target<'_>, grace: Duration) -> bool {
    if !target.alive() {
        return false;
    }
    target.signal(Signal::SIGTERM);
    if !wait_gone(&target, Instant::now() + grace).await {
        target.signal(Signal::SIGKILL);
        wait_gone(&target, Instant::now() + Duration::from_secs(2)).await;
    }
    true
}

/// Ends a run's process group as `terminate` does, reaping the leader meanwhile; returns the
/// leader's exit status.
pub async fn terminate_group(
    child: &mut Child,
    pgid: u32,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    let group = Target::Group(pgid);
    group.signal(Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let status = match timeout_at(deadline, child.wait()).await {
        Ok(status) => Some(status?),
        Err(_) => None,
    };
    // The leader may be gone while others of its group linger: they get the rest of the grace.
    if !wait_gone(&group, deadline).await {
        group.signal(Signal::SIGKILL);
    }
    let status = match status {
        Some(s) => s,
        None => child.wait().await?,
    };
    wait_gone(&group, Instant::now() + Duration::from_secs(2)).await;
    Ok(status)
}

/// The environment variable that tags every process of a run, so that descendants which left the
/// run's process group (a new session, a double fork) can still be found.
pub const RUN_TAG: &str = "HEDGE_SCHEDULER_RUN";

/// PIDs of live processes whose environment carries `RUN_TAG=tag`.
pub fn tagged_processes(tag: &str) -> Vec<i32> {
    let needle = format!("{RUN_TAG}={tag}");
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if u32::try_from(pid) == Ok(me) {
            continue;
        }
        // Only processes of our own user: another user's process carrying the tag is not ours.
        if std::fs::metadata(entry.path())
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) != crate::private::euid())
            .unwrap_or(true)
        {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|&b| b == 0)
            .any(|var| var == needle.as_bytes())
            && pid_alive(i64::from(pid))
            && !is_zombie(pid)
        {
            out.push(pid);
        }
    }
    out
}

pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|s| s == "Z" || s == "X")
        })
        .unwrap_or(true)
}

/// Memory and CPU of a process tree, as sampled.
#[derive(Debug, Default, Clone)]
pub struct TreeUsage {
    /// The largest total RSS seen, in bytes.
    pub peak_rss: u64,
    /// The latest CPU time seen per process, in milliseconds.
    cpu_ms: std::collections::HashMap<u32, u64>,
}

impl TreeUsage {
    pub fn cpu_ms(&self) -> u64 {
        self.cpu_ms.values().sum()
    }

    /// Samples `root` and its descendants (by parent links); returns their total RSS now.
    pub fn sample(&mut self, sys: &mut sysinfo::System, root: u32) -> u64 {
        use sysinfo::{ProcessRefreshKind, ProcessesToUpdate};
        sys.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing()
                .without_tasks()
                .with_memory()
                .with_cpu(),
        );
        let procs = sys.processes();
        let mut tree = vec![root];
        let mut i = 0;
        while i < tree.len() {
            let parent = tree[i];
            tree.extend(
                procs
                    .iter()
                    .filter(|(_, p)| p.parent().map(|pp| pp.as_u32()) == Some(parent))
                    .map(|(pid, _)| pid.as_u32()),
            );
            i += 1;
        }
        let mut rss = 0;
        for pid in tree {
            if let Some(p) = procs.get(&sysinfo::Pid::from_u32(pid)) {
                rss += p.memory();
                let cpu = self.cpu_ms.entry(pid).or_default();
                *cpu = (*cpu).max(p.accumulated_cpu_time());
            }
        }
        self.peak_rss = self.peak_rss.max(rss);
        rss
    }
}

/// Whether a process with this PID exists.
pub fn pid_alive(pid: i64) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    !matches!(
        nix::sys::signal::kill(Pid::from_raw(raw), None),
        Err(Errno::ESRCH)
    )
}

/// Whether `pid` is a live hedge-scheduler process: a PID reused by something else (after a
/// reboot, say) does not count.
pub fn scheduler_alive(pid: i64) -> bool {
    // A zombie (killed, not yet reaped by its parent) is dead: its rows and runs are not its.
    if !pid_alive(pid) || i32::try_from(pid).is_ok_and(is_zombie) {
        return false;
    }
    if i64::from(std::process::id()) == pid {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        // The kernel keeps 15 characters of the name: "hedge-scheduler" exactly.
        Ok(comm) => comm.trim_end().starts_with("hedge-schedule"),
        Err(_) => true,
    }
}

/// `SIGSEGV` for 11, or `signal 99` for a number nix does not know.
pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

// cgroup v2 primitives: a run's cgroup, read and ended.

/// Every process in `dir` and below.
pub fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(cgroup_pids(&e.path()));
            }
        }
    }
    out
}

/// Whether a process is still in `dir` (or below).
pub fn cgroup_populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|t| t.lines().any(|l| l.trim() == "populated 1"))
        .unwrap_or(false)
}

/// SIGKILLs everything in `dir` and below, at once, however it was started.
pub fn kill_cgroup(dir: &Path) {
    let _ = std::fs::write(dir.join("cgroup.kill"), b"1");
}

/// Removes `dir` and its child cgroups once they are empty (waits up to 2 s for the kernel).
pub fn remove_cgroup_tree(dir: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while cgroup_populated(dir) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Whether `program` (a path from `cwd`, or a name on PATH) is a file we may execute.
pub fn executable(program: &str, cwd: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return runnable(&cwd.join(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| runnable(&dir.join(program))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(99), "signal 99");
    }

    #[test]
    fn refuses_to_signal_special_groups() {
        assert!(!signal_group(0, Signal::SIGTERM));
        assert!(!signal_group(1, Signal::SIGTERM));
        assert!(!group_alive(0));
    }

    #[tokio::test]
    async fn terminate_escalates_to_sigkill_for_a_process_that_ignores_sigterm() {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 30"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap() as i32;
        // Give the shell the moment it needs to install its trap.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        assert!(
            terminate(Target::Pids(&[pid]), Duration::from_millis(300)).await
                || child.try_wait().unwrap().is_some()
        );
        let status = child.wait().await.unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn tagged_processes_are_found_outside_their_group() {
        let tag = format!("test-{}", std::process::id());
        let mut child = tokio::process::Command::new("setsid")
            .arg("sleep")
            .arg("30")
            .env(RUN_TAG, &tag)
            .spawn()
            .unwrap();
        // Found once `setsid` has become `sleep` (while it execs, its environment can read empty).
        let exec_done = |pid: &i32| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"))
        };
        let found =
            crate::process::tests::wait_for(|| tagged_processes(&tag).iter().any(exec_done)).await;
        assert!(found);
        assert_eq!(tagged_processes(&tag).len(), 1);
        assert!(terminate(Target::Tagged(&tag), Duration::from_secs(2)).await);
        let _ = child.wait().await;
        assert!(tagged_processes(&tag).is_empty());
        assert!(!terminate(Target::Tagged(&tag), Duration::from_secs(2)).await);
    }

    async fn wait_for(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..100 {
            if f() {
                return true;
            }
            sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn terminate_group_ends_leader_and_grandchild() {
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 30 & sleep 30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id().unwrap();
        assert!(group_alive(pgid));
        let status = terminate_group(&mut child, pgid, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!status.success());
        assert!(!group_alive(pgid));
    }
}
