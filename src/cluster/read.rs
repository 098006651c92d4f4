//! What `status` and `history` read from the cluster's database: every node's runs and states,
//! the same from any host. Short-lived connections of their own (the commands are one-shot).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;

use crate::config::Config;
use crate::history::{RunRow, fmt_time};

/// How long `status` and `history` wait for the cluster's database before falling back to the
/// local journal.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// The cluster as `status --json` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// Where the database is (no user, no password).
    pub database: String,
    pub reachable: bool,
    /// Nodes whose lease holds.
    pub alive: usize,
    /// `[cluster] expect_nodes`.
    pub expected: Option<u32>,
    /// This host's node.
    pub node: String,
    pub nodes: Vec<NodeStatus>,
    /// Jobs that live nodes define differently (`job: node, node`): they compute different
    /// slots.
    pub config_drift: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: String,
    /// `alive`, `stopped` or `dead`.
    pub state: String,
    pub host: String,
    pub pid: Option<i64>,
    pub epoch: i64,
    pub priority: i64,
    pub started_at: String,
    pub heartbeat_age_seconds: f64,
    /// Its clock minus the database's, at its last heartbeat.
    pub clock_offset_ms: Option<i64>,
    /// Set when it ran slots without the database (uploaded since).
    pub degraded_since: Option<String>,
}

/// One job, cluster-wide.
#[derive(Debug, Clone, Default)]
pub struct JobCluster {
    /// The node running it now, else the node of its last run.
    pub node: Option<String>,
    pub running: Option<RunRow>,
    pub last: Option<RunRow>,
    pub done_today: u64,
    pub failed_today: u64,
    /// Today's slots run more than once (by several nodes, or a stale run beside its owner's),
    /// counted once per extra execution.
    pub duplicates_today: u64,
}

/// The connection settings of a node's `[cluster]`, password included (never shown).
pub(crate) fn pg_config(
    cfg: &crate::config::Cluster,
    purpose: &str,
) -> Result<tokio_postgres::Config, String> {
    let mut pg: tokio_postgres::Config = cfg
        .database
        .parse()
        .map_err(|e| format!("invalid database: {e}"))?;
    pg.connect_timeout(super::CONNECT_TIMEOUT);
    pg.application_name(format!("hedge-scheduler/{}/{purpose}", cfg.node));
    pg.options(format!(
        "-c statement_timeout=2000 -c lock_timeout=1000 -c idle_in_transaction_session_timeout=5000 -c search_path={}",
        cfg.schema
    ));
    if pg.get_password().is_none() {
        if let Some(file) = &cfg.password_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
            pg.password(text.lines().next().unwrap_or(""));
        } else if let Ok(p) = std::env::var("PGPASSWORD") {
            pg.password(p);
        }
    }
    Ok(pg)
}

/// Runs `f` against the cluster's database on a runtime of its own, bounded in time.
fn with_client<T>(
    config: &Config,
    f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
) -> Result<T, String> {
    let cfg = config
        .cluster
        .as_ref()
        .ok_or_else(|| "no [cluster] table".to_string())?;
    let pg = pg_config(cfg, "read")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let work = async {
            let (client, conn) = pg
                .connect(super::tls::connector(cfg)?)
                .await
                .map_err(|e| super::connection::pg_error(&e))?;
            tokio::spawn(conn);
            f(&client)
                .await
                .map_err(|e| super::connection::pg_error(&e))
        };
        match tokio::time::timeout(READ_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(READ_TIMEOUT)
            )),
        }
    })
}

const RUN_COLUMNS: &str = "id, job, trigger, scheduled_at, started_at, entered_at, finished_at, \
    attempt, outcome, exit_code, signal, pid, owner_pid, error, result, executor, stuck, \
    peak_rss_bytes, cpu_ms, missed_count, missed_from, missed_to, uid, node, node_epoch, fence, \
    stale, degraded";

fn run_row(r: &Row) -> RunRow {
    let t = |i: usize| r.get::<_, Option<DateTime<Utc>>>(i).map(fmt_time);
    let started: DateTime<Utc> = r.get(4);
    let finished: Option<DateTime<Utc>> = r.get(6);
    let result: Option<String> = r.get(14);
    RunRow {
        id: r.get(0),
        job: r.get(1),
        trigger: crate::history::TriggerKind::parse(r.get::<_, &str>(2))
            .unwrap_or(crate::history::TriggerKind::Schedule),
        scheduled_at: fmt_time(r.get(3)),
        started_at: fmt_time(started),
        entered_at: t(5),
        finished_at: finished.map(fmt_time),
        duration_ms: finished.map(|f| (f - started).num_milliseconds()),
        attempt: u32::try_from(r.get::<_, i32>(7)).unwrap_or(1),
        outcome: crate::history::Outcome::parse(r.get::<_, &str>(8))
            .unwrap_or(crate::history::Outcome::Failed),
        exit_code: r.get(9),
        signal: r.get(10),
        pid: r.get::<_, Option<i32>>(11).map(i64::from),
        owner_pid: r.get::<_, Option<i32>>(12).map(i64::from),
        error: r.get(13),
        result: result.and_then(|s| serde_json::value::RawValue::from_string(s).ok()),
        executor: r.get(15),
        stuck: r.get(16),
        peak_rss_bytes: r.get(17),
        cpu_ms: r.get(18),
        missed_count: r.get(19),
        missed_from: t(20),
        missed_to: t(21),
        run_uid: r.get(22),
        node: r.get(23),
        node_epoch: r.get(24),
        fence: r.get(25),
        stale: r.get(26),
        degraded: r.get(27),
    }
}

/// The cluster's runs, newest first: of one job and/or one node, or all.
pub fn history(
    config: &Config,
    job: Option<&str>,
    node: Option<&str>,
    limit: usize,
) -> Result<Vec<RunRow>, String> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    with_client(config, async |c| {
        let rows = c
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs
                      WHERE ($1::text IS NULL OR job = $1) AND ($2::text IS NULL OR node = $2)
                      ORDER BY started_at DESC, id DESC LIMIT $3"
                ),
                &[&job, &node, &limit],
            )
            .await?;
        Ok(rows.iter().map(run_row).collect())
    })
}

/// The nodes and, per configured job, its cluster-wide state today (`[from, to)`).
pub fn status(
    config: &Config,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(ClusterStatus, HashMap<String, JobCluster>), String> {
    let cfg = config
        .cluster
        .as_ref()
        .ok_or_else(|| "no [cluster] table".to_string())?;
    let ids: Vec<String> = config.jobs.iter().map(|j| j.id.clone()).collect();
    let (nodes, jobs, config_drift) = with_client(config, async |c| {
        let nodes = c
            .query(
                "SELECT node, CASE WHEN state = 'alive' AND lease_until < now() THEN 'dead'
                                   ELSE state END,
                        host, pid, epoch, priority, started_at,
                        extract(epoch FROM now() - heartbeat_at)::float8, clock_offset_ms,
                        degraded_since
                   FROM nodes ORDER BY priority, node",
                &[],
            )
            .await?;
        let drift = c
            .query(
                "SELECT nj.job, string_agg(nj.node || '=' || nj.hash, ', ' ORDER BY nj.node)
                   FROM node_jobs nj JOIN nodes n ON n.node = nj.node
                  WHERE n.state = 'alive' AND n.lease_until > now()
                  GROUP BY nj.job HAVING count(DISTINCT nj.hash) > 1 ORDER BY nj.job",
                &[],
            )
            .await?;
        let drift: Vec<String> = drift
            .iter()
            .map(|r| format!("{}: {}", r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        let mut jobs = HashMap::new();
        for id in &ids {
            jobs.insert(id.clone(), job_cluster(c, id, (from, to)).await?);
        }
        Ok((nodes, jobs, drift))
    })?;
    let nodes: Vec<NodeStatus> = nodes.iter().map(node_status).collect();
    Ok((
        ClusterStatus {
            database: cfg.database_shown.clone(),
            reachable: true,
            alive: nodes.iter().filter(|n| n.state == "alive").count(),
            expected: cfg.expect_nodes,
            node: cfg.node.clone(),
            nodes,
            config_drift,
        },
        jobs,
    ))
}

/// One job's cluster-wide state: its run going on, its last run that ended, and today's
/// (`[from, to)`) slots done, failures and duplicates.
async fn job_cluster(
    c: &tokio_postgres::Client,
    id: &str,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
) -> Result<JobCluster, tokio_postgres::Error> {
    let running = c
        .query_opt(
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE job = $1 AND outcome = 'running'
                  ORDER BY started_at DESC LIMIT 1"
            ),
            &[&id],
        )
        .await?
        .map(|r| run_row(&r));
    let last = c
        .query_opt(
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs
                  WHERE job = $1 AND outcome NOT IN ('running', 'skipped') AND NOT stale
                  ORDER BY started_at DESC, id DESC LIMIT 1"
            ),
            &[&id],
        )
        .await?
        .map(|r| run_row(&r));
    let counts = c
        .query_one(
            "SELECT
               (SELECT count(DISTINCT scheduled_at) FROM runs
                 WHERE job = $1 AND scheduled_at >= $2 AND scheduled_at < $3
                   AND outcome = 'success' AND trigger <> 'manual'),
               (SELECT count(*) FROM runs
                 WHERE job = $1 AND scheduled_at >= $2 AND scheduled_at < $3
                   AND outcome IN ('failed', 'timeout', 'crashed', 'abandoned')
                   AND NOT stale),
               (SELECT coalesce(sum(n - 1), 0)::bigint FROM (
                  SELECT count(DISTINCT (node, node_epoch, coalesce(fence::text, 'degraded'))) AS n
                    FROM runs
                   WHERE job = $1 AND scheduled_at >= $2 AND scheduled_at < $3
                     AND trigger <> 'manual'
                     AND outcome IN ('running', 'success', 'failed', 'timeout', 'crashed', 'cancelled')
                   GROUP BY scheduled_at) d)",
            &[&id, &from, &to],
        )
        .await?;
    let n = |i: usize| u64::try_from(counts.get::<_, i64>(i)).unwrap_or(0);
    Ok(JobCluster {
        node: running
            .as_ref()
            .or(last.as_ref())
            .and_then(|r| r.node.clone()),
        running,
        last,
        done_today: n(0),
        failed_today: n(1),
        duplicates_today: n(2),
    })
}

/// A row of `nodes` as `status` shows it.
fn node_status(r: &tokio_postgres::Row) -> NodeStatus {
    NodeStatus {
        node: r.get(0),
        state: r.get(1),
        host: r.get(2),
        pid: r.get::<_, Option<i32>>(3).map(i64::from),
        epoch: r.get(4),
        priority: i64::from(r.get::<_, i32>(5)),
        started_at: fmt_time(r.get(6)),
        heartbeat_age_seconds: (r.get::<_, f64>(7) * 10.0).round() / 10.0,
        clock_offset_ms: r.get::<_, Option<i32>>(8).map(i64::from),
        degraded_since: r.get::<_, Option<DateTime<Utc>>>(9).map(fmt_time),
    }
}

/// The cluster as shown when its database cannot be reached.
pub fn unreachable(config: &Config) -> Option<ClusterStatus> {
    let cfg = config.cluster.as_ref()?;
    Some(ClusterStatus {
        database: cfg.database_shown.clone(),
        reachable: false,
        alive: 0,
        expected: cfg.expect_nodes,
        node: cfg.node.clone(),
        nodes: Vec::new(),
        config_drift: Vec::new(),
    })
}
