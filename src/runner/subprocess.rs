//! The process-group executor: spawn, output pumps, sampling, timeout, cancel, memory limit.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use crate::config::{Entry, Job};
use crate::process;

use super::*;

/// A line longer than this is written out in pieces.
pub(super) const MAX_LINE: usize = 64 * 1024;
/// How many trailing stderr lines are kept to explain a failure without a result.
pub(super) const STDERR_TAIL: usize = 8;

/// How long the output is read after the run has ended, whoever else holds the pipe.
const OUTPUT_DRAIN: Duration = Duration::from_millis(300);

/// How often a subprocess run's process tree is sampled (memory, CPU).
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// A run as a short-lived process in a new process group: `python -m hedge_bridge` for a
/// function or a script, the program itself for a command.
pub(super) async fn run_subprocess(
    env: &RunEnv,
    job: &Job,
    (run_id, uid): (i64, &str),
    context: &str,
    log: &Arc<JobLog>,
    cancel: &mut watch::Receiver<Option<String>>,
    events: &Option<mpsc::UnboundedSender<RunEvent>>,
) -> Execution {
    let mut exec = Execution::new(Ended::Exited(None));
    // The result comes back through the private runtime folder, under the run's own identity.
    let result_file = match run_result_file(env, uid) {
        Ok(file) => file,
        Err(msg) => {
            log.note(&msg);
            exec.failure = Some(msg);
            return exec;
        }
    };
    let tag = uid;
    let cmd = run_command(env, job, (uid, context), &result_file);
    let (mut child, _spawned, cage) = match spawn_contained(env, job, cmd, uid, log) {
        Ok(started) => started,
        Err(msg) => {
            log.note(&msg);
            exec.failure = Some(msg);
            return exec;
        }
    };
    let pid = child.id().unwrap_or(0);
    log.note(&format!("process group {pid}"));
    let _forget = started(env, job, (run_id, uid), pid, events);

    let pumps = Pumps::start(child.stdout.take(), child.stderr.take(), log);

    let usage = Arc::new(Mutex::new(process::TreeUsage::default()));
    let (over_tx, mut over_rx) = watch::channel::<Option<u64>>(None);
    let sampler = tokio::spawn(sample(pid, Arc::clone(&usage), job.max_memory, over_tx));
    let grace = env.config.scheduler.kill_grace;
    let deadline = tokio::time::Instant::now() + job.timeout;
    exec.ended = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => Ended::Exited(Some(s)),
            Err(e) => {
                tracing::error!(job = %job.id, run_id, "waiting for the job failed: {e}");
                Ended::Cancelled(process::terminate_group(&mut child, pid, grace).await.ok(), format!("waiting failed: {e}"))
            }
        },
        _ = tokio::time::sleep_until(deadline) => {
            log.note(&format!("timeout after {}: ending process group {pid}", humantime::format_duration(job.timeout)));
            Ended::TimedOut(process::terminate_group(&mut child, pid, grace).await.ok())
        },
        reason = cancelled(cancel) => {
            log.note(&format!("cancelled ({reason}): ending process group {pid}"));
            Ended::Cancelled(process::terminate_group(&mut child, pid, grace).await.ok(), reason)
        },
        Ok(()) = over_rx.changed() => {
            let rss = over_rx.borrow().unwrap_or_default();
            log.note(&format!("memory {} is over max_memory: ending process group {pid}", crate::fmt::bytes(rss)));
            Ended::OverMemory(process::terminate_group(&mut child, pid, grace).await.ok(), rss)
        },
    };
    sampler.abort();
    exec.usage = usage.lock().ok().map(|u| u.clone());
    end_leftovers(Some(pid), tag, cage.as_ref(), grace, log).await;
    drop(cage);
    exec.stderr_tail = pumps.drain(log).await;
    exec.bridge = take_result(&result_file);
    exec
}

/// Starts the run's process, contained from its first instruction: its own cgroup (where one
/// can be made) and the user's umask. `Err`: why it could not start.
fn spawn_contained(
    env: &RunEnv,
    job: &Job,
    mut cmd: Command,
    uid: &str,
    log: &JobLog,
) -> Result<
    (
        tokio::process::Child,
        crate::contain::Spawned,
        Option<crate::contain::Cage>,
    ),
    String,
> {
    let cage = match crate::contain::Cage::new(uid) {
        Ok(cage) => cage,
        Err(e) => {
            log.note(&format!(
                "no cgroup for this run ({e}): contained by its process group and tag"
            ));
            None
        }
    };
    let setup = crate::contain::ChildSetup::new(cage.as_ref());
    // SAFETY: `in_child` makes only async-signal-safe calls (write, umask).
    unsafe {
        cmd.pre_exec(move || setup.in_child());
    }
    match crate::contain::Spawned::spawn(|| cmd.spawn(), |c| c.id()) {
        Ok((child, spawned)) => Ok((child, spawned, cage)),
        Err(e) => {
            let program = match &job.entry {
                Entry::Command(argv) => argv[0].clone(),
                _ => env.python.display().to_string(),
            };
            Err(format!("cannot start `{program}`: {e}"))
        }
    }
}

/// The run's command: `python -m hedge_bridge` (a function or a script) or the program itself,
/// in a process group of its own, with the job's environment, its context and result file, and
/// the run's tag.
fn run_command(
    env: &RunEnv,
    job: &Job,
    (uid, context): (&str, &str),
    result_file: &std::path::Path,
) -> Command {
    let mut cmd = match &job.entry {
        Entry::Command(argv) => {
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            cmd
        }
        Entry::Function { .. } | Entry::Script(_) => {
            let mut cmd = Command::new(&env.python);
            cmd.arg("-m").arg("hedge_bridge");
            cmd
        }
    };
    if !job.env.inherit {
        cmd.env_clear()
            .envs(crate::config::secrets::kept_environment());
    }
    cmd.envs(job.env.vars.iter().map(|(k, v)| (k, v.expose())));
    // systemd's messages are the daemon's to send, not its jobs'.
    for var in crate::health::SYSTEMD_VARS {
        cmd.env_remove(var);
    }
    cmd.current_dir(&env.config.python.cwd)
        .env(
            "PYTHONPATH",
            python_path(&crate::bridge::search_path(&env.config.python)),
        )
        .env("PYTHONUNBUFFERED", "1")
        .env("HEDGE_CONTEXT", context)
        .env("HEDGE_RESULT_FILE", result_file)
        .env(process::RUN_TAG, uid)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    // Cluster mode: a command job has no context object; the node and fence come this way.
    if env.config.cluster.is_some()
        && let Ok(ctx) = serde_json::from_str::<serde_json::Value>(context)
    {
        if let Some(node) = ctx["node"].as_str() {
            cmd.env("HEDGE_SCHEDULER_NODE", node);
        }
        if let Some(fence) = ctx["fence"].as_i64() {
            cmd.env("HEDGE_SCHEDULER_FENCE", fence.to_string());
        }
    }
    if let Some(venv) = &env.config.python.venv {
        cmd.env("VIRTUAL_ENV", venv);
    }
    cmd
}

/// A run's process group is known: the keeper is told (should the scheduler die now, it ends
/// the group; the guard returned tells it the group is gone), the history and the daemon too.
pub(super) fn started(
    env: &RunEnv,
    job: &Job,
    (run_id, uid): (i64, &str),
    pid: u32,
    events: &Option<mpsc::UnboundedSender<RunEvent>>,
) -> crate::contain::KeeperGroup {
    crate::contain::keeper_note(crate::contain::KeeperNote::Group(pid as i32));
    let forget = crate::contain::KeeperGroup(pid);
    env.recorder.set_pid(uid, pid);
    if let Some(tx) = events {
        let _ = tx.send(RunEvent::Started {
            job: job.id.clone(),
            run_id,
            uid: uid.to_string(),
            pid: Some(pid),
        });
    }
    forget
}

/// Nothing outlives a run: what the job left in its process group (`group`: `None` when the
/// number may no longer be the run's), anything that carries the run's tag after leaving the
/// group (a new session, a double fork), and whatever is in its cgroup.
pub(super) async fn end_leftovers(
    group: Option<u32>,
    tag: &str,
    cage: Option<&crate::contain::Cage>,
    grace: Duration,
    log: &JobLog,
) {
    if let Some(pid) = group
        && process::terminate(process::Target::Group(pid), grace).await
    {
        log.note("ended processes the job left running in its group");
    }
    let escaped = process::tagged_processes(tag).len();
    if process::terminate(process::Target::Tagged(tag), grace).await {
        log.note(&format!(
            "ended {escaped} process(es) that left the job's group"
        ));
    }
    if let Some(cage) = cage {
        let left = crate::process::cgroup_pids(cage.dir()).len();
        if process::terminate(process::Target::Cgroup(cage.dir()), grace).await {
            log.note(&format!(
                "ended {left} process(es) left in the run's cgroup (a new session, a double fork)"
            ));
        }
    }
}

/// A run's output, read into its log as it comes: stdout, and stderr (whose last lines are kept
/// to explain a failure).
pub(super) struct Pumps {
    handles: [Option<tokio::task::JoinHandle<()>>; 2],
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Pumps {
    pub(super) fn start(
        out: Option<impl AsyncRead + Unpin + Send + 'static>,
        err: Option<impl AsyncRead + Unpin + Send + 'static>,
        log: &Arc<JobLog>,
    ) -> Pumps {
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let handles = [
            out.map(|out| tokio::spawn(pump(out, Arc::clone(log), "stdout", None))),
            err.map(|err| {
                tokio::spawn(pump(
                    err,
                    Arc::clone(log),
                    "stderr",
                    Some(Arc::clone(&tail)),
                ))
            }),
        ];
        Pumps { handles, tail }
    }

    /// Reads what is left, for a bounded time: a process we could not end may hold a pipe open,
    /// and the run does not wait on it. Returns stderr's last lines.
    pub(super) async fn drain(self, log: &JobLog) -> Vec<String> {
        for pump in self.handles.into_iter().flatten() {
            let abort = pump.abort_handle();
            if tokio::time::timeout(OUTPUT_DRAIN, pump).await.is_err() {
                abort.abort();
                log.note(
                    "output still held open by another process after the run ended: stopped reading it",
                );
            }
        }
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Samples the run's process tree until aborted; reports the first sample over `limit`.
pub(super) async fn sample(
    pid: u32,
    usage: Arc<Mutex<process::TreeUsage>>,
    limit: Option<u64>,
    over: watch::Sender<Option<u64>>,
) {
    let Ok(mut sys) = sysinfo::System::new() else {
        return;
    };
    let mut delay = Duration::from_millis(100);
    loop {
        tokio::time::sleep(delay).await;
        delay = SAMPLE_EVERY;
        let usage_in = Arc::clone(&usage);
        let Ok((back, rss)) = tokio::task::spawn_blocking(move || {
            let rss = usage_in
                .lock()
                .map(|mut u| u.sample(&mut sys, pid))
                .unwrap_or(0);
            (sys, rss)
        })
        .await
        else {
            return;
        };
        sys = back;
        if limit.is_some_and(|l| rss > l) {
            let _ = over.send(Some(rss));
            return;
        }
    }
}

/// The configured paths ahead of any `PYTHONPATH` the scheduler itself was given.
pub(super) fn python_path(paths: &[PathBuf]) -> std::ffi::OsString {
    let mut all: Vec<PathBuf> = paths.to_vec();
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        all.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(all).unwrap_or_default()
}

/// Copies one output stream into the job log, line by line, until the stream closes.
pub(super) async fn pump(
    mut stream: impl AsyncRead + Unpin,
    log: Arc<JobLog>,
    name: &'static str,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut lines: Vec<&[u8]> = Vec::new();
        let mut start = 0;
        for (i, &b) in pending.iter().enumerate() {
            if b == b'\n' || i + 1 - start >= MAX_LINE {
                let end = if b == b'\n' { i } else { i + 1 };
                lines.push(trim_cr(&pending[start..end]));
                start = i + 1;
            }
        }
        if !lines.is_empty() {
            log.write_lines(name, lines.iter().copied());
            if tracing::enabled!(tracing::Level::DEBUG) {
                for line in &lines {
                    tracing::debug!(
                        run_id = log.run_id,
                        stream = name,
                        "{}",
                        String::from_utf8_lossy(line)
                    );
                }
            }
            if let Some(tail) = &tail {
                remember(tail, &lines);
            }
        }
        pending.drain(..start);
    }
    if !pending.is_empty() {
        let line = trim_cr(&pending);
        log.write_lines(name, std::iter::once(line));
        if let Some(tail) = &tail {
            remember(tail, &[line]);
        }
    }
}

pub(super) fn remember(tail: &Mutex<VecDeque<String>>, lines: &[&[u8]]) {
    let Ok(mut t) = tail.lock() else { return };
    for line in lines.iter().rev().take(STDERR_TAIL).rev() {
        let text = String::from_utf8_lossy(line).trim().to_string();
        if text.is_empty() {
            continue;
        }
        if t.len() == STDERR_TAIL {
            t.pop_front();
        }
        t.push_back(text);
    }
}

pub(super) fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}
