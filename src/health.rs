//! What the daemon checks every `health_interval` besides firing: it writes a heartbeat (into
//! the history and into `<log_dir>/hedge-scheduler.state.json`, which `status` reads even when the
//! history is unusable), lists problems worth a look, and talks to systemd when run under it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How late the loop wakes for a slot, since it started: p50 and max, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopLag {
    pub p50: f64,
    pub max: f64,
    pub samples: u64,
}

pub use crate::log_dir::STATE_FILE;

/// Free space in `log_dir` below which the daemon warns.
pub const LOW_DISK_BYTES: u64 = 512 * 1024 * 1024;

/// The daemon's last word about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonState {
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Plain-language problems: history unwritable, disk nearly full, legacy processes, …
    pub problems: Vec<String>,
    /// How late the scheduling loop woke for its slots since it started.
    #[serde(default)]
    pub loop_lag_ms: Option<LoopLag>,
    /// How runs are contained: "cgroup" or "subreaper".
    #[serde(default)]
    pub containment: Option<String>,
    /// Notifications, web hooks and pings that failed since the daemon started.
    #[serde(default)]
    pub notify_failures: u64,
    /// The last one's why, with its time.
    #[serde(default)]
    pub notify_last_error: Option<String>,
    /// The fork server's PID, while one serves `executor = "fork"` jobs.
    #[serde(default)]
    pub fork_server: Option<u32>,
}

pub fn state_path(log_dir: &Path) -> PathBuf {
    log_dir.join(STATE_FILE)
}

/// Writes the state atomically (write a temporary file, then rename).
pub fn write_state(log_dir: &Path, state: &DaemonState) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    crate::private::write_atomic(&state_path(log_dir), &text)
}

pub fn read_state(log_dir: &Path) -> Option<DaemonState> {
    let text = std::fs::read(state_path(log_dir)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Free bytes on the file system holding `dir`.
pub fn free_space(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(stat.blocks_available() * stat.fragment_size())
}

/// What systemd hands the daemon for its notifications: never passed on to a job.
pub const SYSTEMD_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// How often systemd wants a `WATCHDOG=1` (`WatchdogSec=`), from `WATCHDOG_USEC` and
/// `WATCHDOG_PID` as it sets them: half the period it allows, so one late ping is not a kill.
/// `None` when no watchdog is asked of this process.
pub fn watchdog_ping_every(
    usec: Option<&str>,
    for_pid: Option<&str>,
    pid: u32,
) -> Option<Duration> {
    if let Some(for_pid) = for_pid
        && for_pid.trim().parse::<u32>().ok() != Some(pid)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(10)))
}

/// [`watchdog_ping_every`] for this process, from its environment.
pub fn watchdog() -> Option<Duration> {
    let var = |n: &str| std::env::var(n).ok();
    watchdog_ping_every(
        var("WATCHDOG_USEC").as_deref(),
        var("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )
}

/// A message to systemd (`READY=1`, `WATCHDOG=1`, `STOPPING=1`) when it started us with
/// `Type=notify`; nothing otherwise.
pub fn notify_systemd(message: &str) {
    use std::os::unix::net::UnixDatagram;
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    // Never waits: a full queue on systemd's side loses one ping, not the loop's time.
    let _ = sock.set_nonblocking(true);
    let bytes = socket.as_encoded_bytes();
    let _ = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(message.as_bytes(), &addr))
    } else {
        sock.send_to(message.as_bytes(), Path::new(&socket))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = DaemonState {
            pid: 42,
            started_at: Utc::now(),
            heartbeat_at: Utc::now(),
            problems: vec!["disk nearly full".into()],
            loop_lag_ms: None,
            containment: Some("cgroup".into()),
            notify_failures: 0,
            notify_last_error: None,
            fork_server: Some(43),
        };
        write_state(dir.path(), &state).unwrap();
        let back = read_state(dir.path()).unwrap();
        assert_eq!(back.pid, 42);
        assert_eq!(back.problems, state.problems);
        assert!(free_space(dir.path()).unwrap() > 0);
    }

    #[test]
    fn the_watchdog_is_pinged_at_half_its_period_and_only_when_meant_for_us() {
        let table: &[(Option<&str>, Option<&str>, Option<u64>)] = &[
            (Some("90000000"), None, Some(45_000)),
            (Some("90000000"), Some("42"), Some(45_000)),
            (Some("90000000"), Some("43"), None),
            (Some("2000000"), Some(" 42 "), Some(1_000)),
            (Some("0"), None, None),
            (Some("soon"), None, None),
            (None, Some("42"), None),
            (Some("1"), None, Some(10)),
        ];
        for (usec, for_pid, want) in table {
            assert_eq!(
                watchdog_ping_every(*usec, *for_pid, 42).map(|d| d.as_millis() as u64),
                *want,
                "WATCHDOG_USEC={usec:?} WATCHDOG_PID={for_pid:?}"
            );
        }
    }

    #[test]
    fn notify_reaches_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // SAFETY: this test sets the variable before any thread of its own reads it; other
        // tests do not read NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        notify_systemd("READY=1");
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
