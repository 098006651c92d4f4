//! `run-once <job>`: one manual run, here and now, recorded like any other.

use std::sync::Arc;

use chrono::Utc;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::history::{History, Outcome, TriggerKind};
use crate::{bridge, cluster, contain, fmt, history, interpreter, logging, runner};

use super::daemon::{check_log_dir, contain_runs};
use super::*;
use crate::runner::prepare::*;

/// `run-once`.
pub(crate) fn command(inv: &Invocation, job: String, json: bool, wait: bool) -> Result<i32> {
    contain::start_keeper().map_err(|e| Error::io("cannot start the keeper", e))?;
    logging::init_cli("warn");
    let config = inv.load()?;
    bridge::ensure(&config.scheduler.log_dir)?;
    let outcome = run_once(config, &job, json, wait);
    contain::cleanup();
    outcome
}

fn run_once(config: Config, job_id: &str, json: bool, wait: bool) -> Result<i32> {
    let Some(job) = config.job(job_id).cloned() else {
        return Err(Error::UnknownJob {
            job: job_id.to_string(),
            known: config.job_list(),
        });
    };
    let interpreter = interpreter::resolve(&config, Some(&[job_id]))?;
    contain_runs(&config)?;
    check_log_dir(&config)?;
    let forks = Arc::new(runner::ForkPool::default());
    {
        // Only this job's needs.
        let mut only = config.clone();
        only.jobs.retain(|j| j.id == job_id);
        ready_python(&only, &interpreter, &forks, false)?;
    }
    // A single run reserves no ids ahead: the next process goes on right after it.
    let recorder = history::Recorder::open(&config.scheduler.history, 0)?;
    let env = runner::RunEnv::new(
        Arc::new(config),
        interpreter.path,
        recorder.clone(),
        Arc::clone(&forks),
    );
    let rt = runtime()?;
    // Cluster mode: the job must run nowhere else in the cluster meanwhile.
    let manual = match &env.config.cluster {
        Some(_) => Some(rt.block_on(cluster::manual::claim(&env.config, job_id, wait))?),
        None => None,
    };
    let report = rt.block_on(run_here(&env, job, manual.as_ref(), wait));
    if let Some(manual) = manual {
        recorder.flush(std::time::Duration::from_secs(2));
        rt.block_on(manual.finish(&env.config.scheduler.history, report.run_uid.as_deref()));
    }
    // A stuck embedded thread must not keep the process alive.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    let unwritten = close_history(&recorder, &env.config.scheduler.history);
    if let Some(holder) = &report.busy {
        return Err(Error::Busy(format!(
            "`{job_id}` is already running: {holder} (use --wait to wait for it)"
        )));
    }
    print_report(&env.config, job_id, &report, json)?;
    // A run the history could not take is not a clean success: say so by the exit code.
    Ok(if report.outcome == Outcome::Success && unwritten == 0 {
        0
    } else {
        1
    })
}

/// The manual run itself. Whatever stops us, the job's process group goes first and the row
/// says why: a stop signal, or (cluster mode) another node's slot that replaces this run (its
/// overlap `replace`).
async fn run_here(
    env: &runner::RunEnv,
    job: crate::config::Job,
    manual: Option<&cluster::manual::Manual>,
    wait: bool,
) -> runner::RunReport {
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(None);
    let req = runner::RunRequest {
        job: Arc::new(job),
        trigger: TriggerKind::Manual,
        scheduled_at: manual.map_or_else(Utc::now, |m| m.slot),
        attempt: 1,
        not_before: None,
        tag: manual.map(|m| m.tag.clone()),
    };
    let on_busy = if wait {
        runner::OnBusy::Wait
    } else {
        runner::OnBusy::Refuse
    };
    let run = runner::run(env, req, cancel_rx, None, on_busy);
    tokio::pin!(run);
    let stop_signal = stop_signal();
    let replaced = replaced(manual.map(|m| m.cancel.clone()));
    tokio::select! {
        report = &mut run => report,
        name = stop_signal => {
            let _ = cancel_tx.send(Some(format!("run-once interrupted ({name})")));
            run.await
        }
        why = replaced => {
            let _ = cancel_tx.send(Some(why));
            run.await
        }
    }
}

/// Why another node's slot replaced this manual run, once it does (never outside a cluster).
async fn replaced(cancel: Option<tokio::sync::watch::Receiver<Option<String>>>) -> String {
    let Some(mut rx) = cancel else {
        return std::future::pending().await;
    };
    loop {
        if let Some(why) = rx.borrow_and_update().clone() {
            return why;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The first of several futures to finish (all of the same output).
async fn futures_select_first<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> F::Output {
    std::future::poll_fn(move |cx| {
        for f in futures.iter_mut() {
            if let std::task::Poll::Ready(out) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(out);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The first of SIGINT, SIGTERM and SIGHUP to come, by name.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::hangup(), "SIGHUP"),
    ];
    let mut streams = Vec::new();
    for (kind, name) in kinds {
        if let Ok(s) = signal(kind) {
            streams.push((s, name));
        }
    }
    let waits = streams.iter_mut().map(|(s, name)| {
        Box::pin(async move {
            s.recv().await;
            *name
        })
    });
    futures_select_first(waits.collect()).await
}

/// Closes the history (its writes waited for, up to 10 s); how many it refused, said on stderr.
fn close_history(recorder: &history::Recorder, history: &std::path::Path) -> usize {
    let unwritten = recorder.close(std::time::Duration::from_secs(10));
    if unwritten > 0 {
        eprintln!(
            "warning: the history `{}` refused {} ({}); {}",
            history.display(),
            crate::fmt::n(unwritten, "write"),
            recorder.health().problem.map(|p| p.1).unwrap_or_default(),
            match recorder.spill_path() {
                Some(p) => format!(
                    "they are kept in `{}` and written by the next process to open the history",
                    p.display()
                ),
                None => "this run is not recorded".to_string(),
            }
        );
    }
    unwritten
}

/// What `run-once` prints: the run's row (`--json`), or a line with its outcome.
fn print_report(
    config: &Config,
    job_id: &str,
    report: &runner::RunReport,
    json: bool,
) -> Result<()> {
    if json {
        // Found by the run's own identity: its id may have changed if another process took it.
        let row = match &report.run_uid {
            Some(uid) => History::open_read_only(&config.scheduler.history)
                .ok()
                .flatten()
                .and_then(|h| h.run_by_uid(uid).ok().flatten()),
            None => None,
        };
        match row {
            Some(row) => println!("{}", to_json(&row)?),
            None => println!(
                "{}",
                serde_json::json!({"job": job_id, "outcome": report.outcome.as_str(), "error": report.error})
            ),
        }
    } else {
        let took = fmt::duration(report.duration());
        let run = report
            .run_id
            .map_or_else(String::new, |id| format!(" (run {id})"));
        match report.outcome {
            Outcome::Success => {
                println!("✅ {job_id} succeeded in {took}{run}");
                if let Some(result) = report.result.as_deref().filter(|r| *r != "null") {
                    println!("   result: {result}");
                }
            }
            other => {
                println!(
                    "❌ {job_id} {} after {took}{run}: {}",
                    other.as_str(),
                    report.error.as_deref().unwrap_or("no detail")
                );
                if let Some(id) = report.run_id {
                    println!(
                        "   its output and traceback: `{} logs {job_id} --run {id}` (in {})",
                        crate::cli::invocation(),
                        config.job_log_dir().join(format!("{job_id}.log")).display()
                    );
                }
            }
        }
    }
    Ok(())
}
