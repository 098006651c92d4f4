//! `run-once` in cluster mode: a manual slot (`kind = 'manual'`, the instant of the request)
//! claimed through the same table, so a job never runs on two hosts at once whoever starts it.
//! The claim has a lease of its own, renewed while the run lasts: a `run-once` that dies frees
//! its job within a lease (the sweep abandons its claim).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::sql;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::history::{History, RunTag};

/// A manual slot this process owns.
pub struct Manual {
    /// Turns `Some(reason)` when another node asks this run to end (its overlap `replace`).
    pub cancel: tokio::sync::watch::Receiver<Option<String>>,
    client: Arc<Client>,
    job: String,
    /// The manual slot: the run's `scheduled_at`.
    pub slot: DateTime<Utc>,
    fence: i64,
    renew: tokio::task::JoinHandle<()>,
    pub tag: RunTag,
}

/// Renews the manual claim (`job`'s slot at `slot`, `fence`) every `every` for a `lease`, and
/// passes on a request that the run end (overlap `replace` on another node).
async fn renew(
    client: Arc<tokio_postgres::Client>,
    (job, slot, fence): (String, DateTime<Utc>, i64),
    (every, lease): (Duration, f64),
    cancel_tx: tokio::sync::watch::Sender<Option<String>>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Ok(Some(row)) = super::connection::call(
            "renew",
            client.query_opt(sql::RENEW_MANUAL, &[&job, &slot, &fence, &lease]),
        )
        .await
            && let Some(why) = row.get::<_, Option<String>>(0)
        {
            let _ = cancel_tx.send(Some(why));
        }
    }
}

/// Where the job's live run is, as the refusal says it.
async fn holder(
    client: &tokio_postgres::Client,
    job: &str,
    cfg: &crate::config::Cluster,
) -> String {
    match super::connection::call(
        "claim",
        client.query_opt(
            sql::LIVE_CLAIM,
            &[
                &job,
                &cfg.lease.as_secs_f64(),
                &(cfg.heartbeat * 2).as_secs_f64(),
            ],
        ),
    )
    .await
    {
        Ok(Some(r)) => format!(
            "is running on node {}{} (since {})",
            r.get::<_, String>(0),
            r.get::<_, Option<i32>>(2)
                .map(|p| format!(", PID {p}"))
                .unwrap_or_default(),
            crate::fmt::instant(r.get(5))
        ),
        _ => "is running on another node".to_string(),
    }
}

/// Claims a manual slot of `job` now. Refused (exit 4, naming the node) while the job runs
/// anywhere in the cluster, unless `wait`, which waits for it.
pub async fn claim(config: &Config, job: &str, wait: bool) -> Result<Manual> {
    let cfg = config
        .cluster
        .as_ref()
        .ok_or_else(|| Error::Internal("no [cluster] table".to_string()))?;
    let pg = super::read::pg_config(cfg, "run-once").map_err(Error::Cluster)?;
    let unreachable = |e: String| {
        Error::Cluster(format!(
            "cluster database {} unreachable ({e}): a manual run needs it, to be sure the job runs nowhere else",
            cfg.database_shown
        ))
    };
    let (client, conn) = tokio::time::timeout(
        super::CONNECT_TIMEOUT,
        pg.connect(super::tls::connector(cfg).map_err(unreachable)?),
    )
    .await
    .map_err(|_| unreachable("no connection in time".to_string()))?
    .map_err(|e| unreachable(super::connection::pg_error(&e)))?;
    tokio::spawn(conn);
    let client = Arc::new(client);
    let lease = cfg.lease.as_secs_f64();
    let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let mut told = false;
    loop {
        let slot = Utc::now();
        let res = super::connection::call(
            "claim",
            client.query_one(sql::CLAIM_MANUAL, &[&job, &slot, &cfg.node, &lease, &pid]),
        )
        .await;
        match res {
            Ok(row) => {
                let fence: i64 = row.get(0);
                let (cancel_tx, cancel) = tokio::sync::watch::channel(None);
                let renew = tokio::spawn(renew(
                    Arc::clone(&client),
                    (job.to_string(), slot, fence),
                    (cfg.heartbeat, lease),
                    cancel_tx,
                ));
                return Ok(Manual {
                    cancel,
                    client,
                    job: job.to_string(),
                    slot,
                    fence,
                    renew,
                    tag: RunTag {
                        node: cfg.node.clone(),
                        epoch: 0,
                        fence: Some(fence),
                        degraded: false,
                    },
                });
            }
            Err(e) if e.message.contains("slots_one_live") => {
                let holder = holder(&client, job, cfg).await;
                if !wait {
                    return Err(Error::Busy(format!(
                        "`{job}` {holder} (use --wait to wait for it)"
                    )));
                }
                if !told {
                    eprintln!("⏳ `{job}` {holder}: waiting for it");
                    told = true;
                }
                tokio::time::sleep(cfg.heartbeat.min(Duration::from_millis(500))).await;
            }
            Err(e) => return Err(unreachable(e.message)),
        }
    }
}

impl Manual {
    /// The run ended: its row goes to the cluster's history and the job is free again.
    pub async fn finish(self, history: &std::path::Path, uid: Option<&str>) {
        self.renew.abort();
        if let Some(uid) = uid {
            let path = history.to_path_buf();
            let uid = uid.to_string();
            let row = tokio::task::spawn_blocking(move || {
                History::open_read_only(&path)
                    .ok()
                    .flatten()
                    .and_then(|h| h.run_by_uid(&uid).ok().flatten())
            })
            .await
            .ok()
            .flatten();
            if let Some(row) = row {
                // The journal's uploader would send it too (same uid): whichever comes first.
                if let Err(e) =
                    super::upload::upload_row(&self.client, sql::UPLOAD, &row, i64::MAX / 2).await
                {
                    eprintln!("warning: the run could not be written to the cluster history: {e}");
                }
            }
        }
        let _ = super::connection::call(
            "release",
            self.client
                .execute(sql::RELEASE, &[&self.job, &self.slot, &self.fence, &"done"]),
        )
        .await;
    }
}
