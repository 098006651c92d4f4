//! A fork server's process and its socket: the command that starts it, its output forwarded
//! into the daemon's log, its first message, and the reader thread that routes its messages.

use super::*;

/// The server's own output (a preload's warnings, a traceback) goes to the daemon's log.
pub(super) fn forward_output(read: OwnedFd, pid: u32) {
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
pub(super) fn server_command(
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
            crate::runner::subprocess::python_path(&crate::bridge::search_path(&config.python)),
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
pub(super) fn hello(
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
pub(super) fn read_loop(
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
        if let Some(server) = upgrade(&server) {
            route(&server, msg);
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
    if let Some(server) = upgrade(&server) {
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

/// The server the reader serves, while it lives.
fn upgrade(server: &Mutex<Option<std::sync::Weak<Server>>>) -> Option<Arc<Server>> {
    server
        .lock()
        .ok()
        .and_then(|s| s.as_ref().and_then(std::sync::Weak::upgrade))
}

/// A message of the server's: to the run it is about (by its uid), or the server's own (its
/// spare gone, a pong).
fn route(server: &Server, msg: Reply) {
    let (uid, what) = match msg {
        Reply::SpareGone { .. } => {
            server.drop_spare();
            return;
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
            return;
        }
        Reply::Forked { forked, pid } => (forked, Msg::Forked(pid)),
        Reply::Exited {
            exit,
            code,
            signal,
            core,
        } => (exit, Msg::Exited(exit_status(code, signal, core))),
        Reply::Refused { refused, error } => (refused, Msg::Refused(error)),
        Reply::Ready { .. } | Reply::StartFailed { .. } => return,
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

pub(super) fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("was killed by {}", crate::process::signal_name(sig)),
        _ => "ended".to_string(),
    }
}
