//! The fork executor's run: a child of the warm fork server, in a process group (and cgroup) of
//! its own, treated from then on as a subprocess run is: its output pumped into the job's log,
//! its tree sampled, a timeout ending its group (SIGTERM, grace, SIGKILL), nothing left after it.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::Job;
use crate::process;

use super::forkserver::{Msg, Server};
use super::subprocess::{Pumps, end_leftovers, sample, started};
use super::*;

/// How long the server may take to say it forked.
const FORK_REPLY: Duration = Duration::from_secs(5);
/// How often a child whose server died is looked at (its exit cannot be told any more).
const ORPHAN_POLL: Duration = Duration::from_millis(100);

/// Why a fork run could not be made: the caller falls back to a plain subprocess.
pub(super) struct NotForked(pub(super) String);

/// A run as a child of `server`. `Err` when no child was made (the server is gone or does not
/// answer): nothing ran, and the run may go another way.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_forked(
    env: &RunEnv,
    server: &Arc<Server>,
    job: &Job,
    (run_id, uid): (i64, &str),
    context: &str,
    log: &Arc<JobLog>,
    cancel: &mut watch::Receiver<Option<String>>,
    events: &Option<mpsc::UnboundedSender<RunEvent>>,
) -> Result<Execution, NotForked> {
    let mut exec = Execution::new(Ended::Exited(None));
    let result_file = match run_result_file(env, uid) {
        Ok(file) => file,
        Err(msg) => {
            log.note(&msg);
            exec.failure = Some(msg);
            return Ok(exec);
        }
    };
    let (spare, cage) = spare_or_cage(server, uid, log);
    let ((out_r, out_w), (err_r, err_w), (gate_r, gate_w)) = match pipes() {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("cannot make the run's output pipes: {e}");
            log.note(&msg);
            exec.failure = Some(msg);
            return Ok(exec);
        }
    };
    let request = fork_request(env, job, (uid, context), &result_file, cage.as_ref(), spare);
    let mut rx = server
        .fork(uid, request, [&out_w, &err_w, &gate_r])
        .map_err(NotForked)?;
    // Only the child holds the write ends now: the pipes end when it (and what it started) ends.
    drop(out_w);
    drop(err_w);
    drop(gate_r);
    let pid = fork_reply(env, server, uid, &mut rx, cage.as_ref()).await?;
    let (mut release, leader) = go_ahead(server, uid, pid, gate_w);
    log.note(&format!(
        "process group {pid} (forked by fork server {})",
        server.pid
    ));
    let _forget = started(env, job, (run_id, uid), pid, events);

    let pumps = Pumps::start(receiver(out_r), receiver(err_r), log);

    let usage = Arc::new(Mutex::new(process::TreeUsage::default()));
    let (over_tx, mut over_rx) = watch::channel::<Option<u64>>(None);
    let sampler = tokio::spawn(sample(pid, Arc::clone(&usage), job.max_memory, over_tx));
    let grace = env.config.scheduler.kill_grace;
    let deadline = tokio::time::Instant::now() + job.timeout;
    exec.ended = tokio::select! {
        status = exited(&mut rx, &leader) => Ended::Exited(status),
        _ = tokio::time::sleep_until(deadline) => {
            log.note(&format!("timeout after {}: ending process group {pid}", humantime::format_duration(job.timeout)));
            Ended::TimedOut(end_group(&mut rx, &leader, grace).await)
        },
        reason = cancelled(cancel) => {
            log.note(&format!("cancelled ({reason}): ending process group {pid}"));
            Ended::Cancelled(end_group(&mut rx, &leader, grace).await, reason)
        },
        Ok(()) = over_rx.changed() => {
            let rss = over_rx.borrow().unwrap_or_default();
            log.note(&format!("memory {} is over max_memory: ending process group {pid}", crate::fmt::bytes(rss)));
            Ended::OverMemory(end_group(&mut rx, &leader, grace).await, rss)
        },
    };
    sampler.abort();
    exec.usage = usage.lock().ok().map(|u| u.clone());
    // Nothing outlives a run; then the group is empty, and the server may reap the child.
    end_leftovers(leader.ours().then_some(pid), uid, cage.as_ref(), grace, log).await;
    release.now();
    drop(cage);
    exec.stderr_tail = pumps.drain(log).await;
    exec.bridge = take_result(&result_file);
    Ok(exec)
}

/// The child `pid` is forked: from here on it is ours to end, and the server's zombie keeps
/// its PID ours. The go-ahead (`gate`) lets it run the job; a run given up before this point
/// closed it instead, and its child exited without running anything. The next run's spare is
/// forked while this one runs.
fn go_ahead(server: &Arc<Server>, uid: &str, pid: u32, gate: OwnedFd) -> (Release, Leader) {
    let release = Release {
        server: Arc::clone(server),
        uid: uid.to_string(),
        pid: Some(pid),
    };
    let leader = Leader {
        pid,
        born: i32::try_from(pid)
            .ok()
            .and_then(crate::contain::start_ticks),
    };
    let _ = nix::unistd::write(&gate, b"g");
    drop(gate);
    let next = Arc::clone(server);
    drop(tokio::task::spawn_blocking(move || next.prepare_spare()));
    (release, leader)
}

/// The spare child, forked ahead and already in its cgroup, takes the run if there is one;
/// else a child is forked now, into a cgroup made now. (Whether the spare takes it, and the
/// run's cgroup.)
fn spare_or_cage(server: &Server, uid: &str, log: &JobLog) -> (bool, Option<crate::contain::Cage>) {
    match server.take_spare() {
        Some(cage) => (true, cage),
        None => match crate::contain::Cage::new(uid) {
            Ok(cage) => (false, cage),
            Err(e) => {
                log.note(&format!(
                    "no cgroup for this run ({e}): contained by its process group"
                ));
                (false, None)
            }
        },
    }
}

/// A pipe's read and write ends.
type Pipe = (OwnedFd, OwnedFd);

/// The run's stdout and stderr pipes, and its go-ahead gate.
fn pipes() -> std::io::Result<(Pipe, Pipe, Pipe)> {
    let flags = nix::fcntl::OFlag::O_CLOEXEC;
    Ok((
        nix::unistd::pipe2(flags)?,
        nix::unistd::pipe2(flags)?,
        nix::unistd::pipe2(flags)?,
    ))
}

/// The fork server's request for run `uid`: its context, result file, cgroup and environment.
fn fork_request(
    env: &RunEnv,
    job: &Job,
    (uid, context): (&str, &str),
    result_file: &std::path::Path,
    cage: Option<&crate::contain::Cage>,
    spare: bool,
) -> serde_json::Value {
    let mut child_env = serde_json::Map::new();
    for (k, v) in &job.env.vars {
        child_env.insert(k.clone(), v.expose().into());
    }
    child_env.insert(process::RUN_TAG.into(), uid.into());
    if let Ok(ctx) = serde_json::from_str::<serde_json::Value>(context)
        && env.config.cluster.is_some()
    {
        if let Some(node) = ctx["node"].as_str() {
            child_env.insert("HEDGE_SCHEDULER_NODE".into(), node.into());
        }
        if let Some(fence) = ctx["fence"].as_i64() {
            child_env.insert("HEDGE_SCHEDULER_FENCE".into(), fence.to_string().into());
        }
    }
    serde_json::json!({
        "op": "fork",
        "uid": uid,
        "context": context,
        "result_file": result_file,
        "cgroup": cage.map(|c| c.dir()),
        "env": child_env,
        // `inherit_env = false`: the child keeps only these of the server's environment (and
        // what it is sent).
        "keep": (!job.env.inherit).then(|| {
            let mut keep: Vec<&str> = crate::config::secrets::KEPT.to_vec();
            keep.extend(["PYTHONPATH", "PYTHONUNBUFFERED", "VIRTUAL_ENV"]);
            keep
        }),
        "spare": spare,
    })
}

/// The server's answer to a fork request: the child's PID, or why no child was made (the
/// server is released from the run; one that does not answer in time is killed).
async fn fork_reply(
    env: &RunEnv,
    server: &Arc<Server>,
    uid: &str,
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    cage: Option<&crate::contain::Cage>,
) -> Result<u32, NotForked> {
    match tokio::time::timeout(FORK_REPLY, rx.recv()).await {
        Ok(Some(Msg::Forked(pid))) if pid > 1 => Ok(pid),
        Ok(Some(Msg::Refused(why))) => {
            server.release(uid, None);
            Err(NotForked(format!("the fork server refused: {why}")))
        }
        Ok(Some(Msg::Gone(why))) => {
            server.release(uid, None);
            Err(NotForked(format!("the fork server {why}")))
        }
        Err(_) => {
            server.release(uid, None);
            env.forks
                .kill(server, "did not answer a fork request within 5 s");
            if let Some(cage) = cage {
                crate::process::kill_cgroup(cage.dir());
            }
            Err(NotForked(
                "the fork server did not answer within 5 s (killed)".to_string(),
            ))
        }
        Ok(other) => {
            server.release(uid, None);
            Err(NotForked(format!(
                "the fork server answered out of turn: {other:?}"
            )))
        }
    }
}

/// Lets the server reap the child when the run is done with it, however the run ends.
struct Release {
    server: Arc<Server>,
    uid: String,
    pid: Option<u32>,
}

impl Release {
    fn now(&mut self) {
        if let Some(pid) = self.pid.take() {
            self.server.release(&self.uid, Some(pid));
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        self.now();
    }
}

fn receiver(fd: OwnedFd) -> Option<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok()
}

/// A run's child: its PID (its process group's number) and when it started.
struct Leader {
    pid: u32,
    born: Option<u64>,
}

impl Leader {
    /// Whether the group's number is still the run's. While the server holds the child (alive or
    /// a zombie) it is; after the server died, the child may have been reaped by another and its
    /// number given to a new process: a process by that number born at another time is not ours.
    /// (A group's number is not given out again while the group has a member.)
    fn ours(&self) -> bool {
        let now = i32::try_from(self.pid)
            .ok()
            .and_then(crate::contain::start_ticks);
        now.is_none() || now == self.born
    }
}

/// The child's exit status, as its server reports it. If the server dies first, the child is
/// no longer its (nor anyone's to report): its exit is seen when its group has no live process,
/// and its status is unknown.
async fn exited(
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    leader: &Leader,
) -> Option<std::process::ExitStatus> {
    loop {
        match rx.recv().await {
            Some(Msg::Exited(status)) => return status,
            Some(Msg::Gone(_)) | None => break,
            Some(_) => continue,
        }
    }
    while leader.ours() && process::group_alive(leader.pid) {
        tokio::time::sleep(ORPHAN_POLL).await;
    }
    None
}

/// Ends the child's group: SIGTERM, up to `grace` for the child to exit, then SIGKILL.
async fn end_group(
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    leader: &Leader,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    use nix::sys::signal::Signal;
    if leader.ours() {
        process::signal_group(leader.pid, Signal::SIGTERM);
    }
    if let Ok(status) = tokio::time::timeout(grace, exited(rx, leader)).await {
        return status;
    }
    if leader.ours() {
        process::signal_group(leader.pid, Signal::SIGKILL);
    }
    tokio::time::timeout(Duration::from_secs(5), exited(rx, leader))
        .await
        .ok()
        .flatten()
}

/// A fork run, however it can be made: from the server given, else from a new one, else as a
/// plain subprocess; the log and the run's row say which.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_fork(
    env: &RunEnv,
    first: Result<(Arc<Server>, Option<super::forkserver::Note>), super::StartError>,
    job: &Job,
    (run_id, uid): (i64, &str),
    context: &str,
    log: &Arc<JobLog>,
    cancel: &mut watch::Receiver<Option<String>>,
    events: &Option<mpsc::UnboundedSender<RunEvent>>,
) -> Execution {
    // The server given, else (once) a new one.
    let mut why = String::new();
    // Why the run is on a new server, when the one before was lost: its row says so.
    let mut lost: Option<String> = None;
    let mut next = Some(first);
    for attempt in 0..2 {
        let got = match next.take() {
            Some(got) => got,
            None => {
                let env2 = env.clone();
                tokio::task::spawn_blocking(move || env2.forks.server(&env2.config, &env2.python))
                    .await
                    .unwrap_or_else(|e| {
                        Err(super::StartError::Other(format!("internal error: {e}")))
                    })
            }
        };
        let (server, note) = match got {
            Ok(got) => got,
            Err(e) => {
                why = e.to_string();
                break;
            }
        };
        if let Some(note) = note {
            log.note(&note.text);
            if note.lost {
                lost.get_or_insert(note.text);
            }
        }
        if let Some(lost) = &lost {
            env.recorder
                .set_executor(uid, format!("fork (on a new fork server: {lost})"));
        }
        match run_forked(
            env,
            &server,
            job,
            (run_id, uid),
            context,
            log,
            cancel,
            events,
        )
        .await
        {
            Ok(exec) => return exec,
            Err(NotForked(not)) => {
                if attempt == 0 {
                    log.note(&format!("{not}: starting a new fork server"));
                }
                lost = Some(not.clone());
                why = not;
            }
        }
    }
    log.note(&format!(
        "no fork server ({why}): running as a plain subprocess"
    ));
    env.recorder
        .set_executor(uid, format!("subprocess (no fork server: {why})"));
    super::subprocess::run_subprocess(env, job, (run_id, uid), context, log, cancel, events).await
}
