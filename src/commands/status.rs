//! `status` and `history`: what runs, what ran, what fires next.

use chrono::Utc;

use crate::error::{EXIT_NOT_RUNNING, Error, Result};
use crate::history::History;
use crate::{cluster, config, history, instance, logging, status};

use super::*;

/// `status`.
pub(crate) fn status(inv: &Invocation, json: bool) -> Result<i32> {
    logging::init_cli("warn");
    let config = match inv.load() {
        Ok(config) => config,
        Err(e) => return status_without_config(inv.found.as_ref(), e, json),
    };
    let now = Utc::now();
    let status = status::gather(&config, now)?;
    if json {
        println!("{}", to_json(&status)?);
    } else {
        print!("{}", crate::render::render_status(&status, &config, now));
    }
    Ok(if status.daemon.running {
        0
    } else {
        EXIT_NOT_RUNNING
    })
}

/// `history`.
pub(crate) fn history(
    inv: &Invocation,
    job: Option<String>,
    limit: usize,
    node: Option<String>,
    json: bool,
) -> Result<i32> {
    logging::init_cli("warn");
    let config = inv.load()?;
    let local = |job: Option<&str>| -> Result<Vec<history::RunRow>> {
        Ok(match History::open_read_only(&config.scheduler.history)? {
            Some(h) => h.runs(job, limit)?,
            None => Vec::new(),
        })
    };
    let rows = match &config.cluster {
        // Every node's runs, from the cluster's database; this host's journal when it
        // cannot be reached (and a first line saying so).
        Some(cluster) => {
            match cluster::read::history(&config, job.as_deref(), node.as_deref(), limit) {
                Ok(rows) => rows,
                Err(e) => {
                    let warning = format!(
                        "⚠️  cluster database unreachable: showing node {} only ({e})",
                        cluster.node
                    );
                    if json {
                        eprintln!("{warning}");
                    } else {
                        println!("{warning}");
                    }
                    let mut rows = local(job.as_deref())?;
                    rows.retain(|r| node.as_deref().is_none_or(|n| r.node.as_deref() == Some(n)));
                    rows
                }
            }
        }
        None => {
            if node.is_some() {
                return Err(Error::Usage(
                    "`history --node` needs a [cluster] table in the config".to_string(),
                ));
            }
            local(job.as_deref())?
        }
    };
    // A job no longer configured still has its past: unknown only when it has none.
    if let Some(id) = &job
        && config.job(id).is_none()
        && rows.is_empty()
    {
        return Err(Error::UnknownJob {
            job: id.clone(),
            known: config.job_list(),
        });
    }
    if json {
        println!("{}", to_json(&rows)?);
    } else {
        print!("{}", crate::render::render_history(&rows, &config));
    }
    Ok(0)
}

/// `status` when the config does not load: whether the daemon of the log folder it names runs.
fn status_without_config(
    found: Option<&config::locate::Located>,
    e: Error,
    json: bool,
) -> Result<i32> {
    let log_dir = fallback_log_dir(found, e)?;
    let daemon = instance::probe(&log_dir);
    if json {
        let doc = serde_json::json!({
            "daemon": {
                "running": daemon.is_some(),
                "pid": daemon.as_ref().map(|d| d.pid),
                "started_at": daemon.as_ref().and_then(|d| d.started_at).map(|t| t.to_rfc3339()),
            },
            "log_dir": log_dir,
            "config_error": true,
        });
        println!("{}", to_json(&doc)?);
    } else {
        match &daemon {
            Some(d) => println!(
                "🟢 hedge-scheduler is running (PID {}{}), on the config it read before this one broke",
                d.pid,
                d.started_at
                    .map(|t| format!(", since {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                    .unwrap_or_default()
            ),
            None => println!("🔴 hedge-scheduler is not running"),
        }
        println!(
            "   log folder {}  ·  fix the config, then `{} reload`",
            log_dir.display(),
            crate::cli::invocation()
        );
    }
    Ok(if daemon.is_some() {
        0
    } else {
        EXIT_NOT_RUNNING
    })
}
