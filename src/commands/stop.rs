//! `stop`: SIGTERM to this log folder's daemon (proven ours), then wait until it has exited.

use crate::error::{EXIT_NOT_RUNNING, Error, Result};
use crate::{fmt, instance, logging};

use super::*;

/// `stop`.
pub(crate) fn command(inv: &Invocation) -> Result<i32> {
    logging::init_cli("warn");
    match inv.load() {
        Ok(config) => stop_daemon(
            &config.scheduler.log_dir,
            config.scheduler.shutdown_grace + config.scheduler.kill_grace,
        ),
        Err(e) => {
            // The running daemon read the config before it broke: reach it by the log
            // folder alone, waiting as long as the longest graces would need.
            let log_dir = fallback_log_dir(inv.found.as_ref(), e)?;
            stop_daemon(&log_dir, std::time::Duration::from_secs(600))
        }
    }
}

fn stop_daemon(log_dir: &std::path::Path, graces: std::time::Duration) -> Result<i32> {
    let Some(daemon) = instance::probe(log_dir) else {
        println!("hedge-scheduler is not running");
        return Ok(EXIT_NOT_RUNNING);
    };
    // Never a signal to a process we cannot prove is this folder's daemon.
    instance::verify(log_dir, &daemon).map_err(|why| {
        Error::Daemon(format!(
            "refusing to stop: {why} (PID file `{}`)",
            log_dir.join(instance::PID_FILE).display()
        ))
    })?;
    let pid = nix::unistd::Pid::from_raw(
        i32::try_from(daemon.pid).map_err(|_| Error::Daemon("bad PID in the PID file".into()))?,
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| Error::Daemon(format!("cannot signal PID {pid}: {e}")))?;
    // A daemon someone stopped (SIGSTOP, Ctrl+Z) cannot act on SIGTERM until it continues.
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    println!("🛑 stopping hedge-scheduler (PID {pid})…");
    let limit = graces + std::time::Duration::from_secs(15);
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if instance::probe(log_dir).is_none() {
            println!("✅ hedge-scheduler stopped");
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(Error::Daemon(format!(
        "hedge-scheduler (PID {pid}) has not exited after {}",
        fmt::duration(limit)
    )))
}
