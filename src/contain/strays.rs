//! Subreaper mode: descendants that escaped their run, reparented to the daemon, are ended once
//! no run in flight can own them; and the children someone waits for, which never are strays.

use std::collections::HashSet;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

/// How this process contains its runs.
use super::*;

/// Our direct children that someone waits for (run leaders, probes): never strays.
pub(super) static SPAWNED: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

/// Runs in flight: (uid, start in clock ticks since boot).
pub(super) static INFLIGHT: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

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

pub(super) fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(100)
}

/// Now, in clock ticks since boot (the unit of a process's start time).
pub(super) fn now_ticks() -> Option<u64> {
    let up = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = up.split_whitespace().next()?.parse().ok()?;
    Some((secs * clock_ticks() as f64) as u64)
}

/// When a process started, in clock ticks since boot; `None` when there is no such process.
pub fn start_ticks(pid: i32) -> Option<u64> {
    parent_and_start(pid).map(|(_, start)| start)
}

/// (ppid, start ticks) of a process.
pub(super) fn parent_and_start(pid: i32) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(1)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

/// In subreaper mode: children of ours that nobody waits for and that no run in flight can own
/// (born before the oldest of them started): escaped from runs that have ended.
pub(super) fn strays() -> Vec<i32> {
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
