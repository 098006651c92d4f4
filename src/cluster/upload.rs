//! Upload: the node's journal (its SQLite history) to the cluster's `runs`, idempotently.

use std::sync::Arc;

use tokio_postgres::Client;

use super::connection::*;
use super::*;
use crate::history::History;

/// Uploads one journal row (revision `rev`) to the cluster's `runs`, idempotently.
pub(super) async fn upload_row<S: tokio_postgres::ToStatement + ?Sized>(
    client: &Client,
    statement: &S,
    r: &crate::history::RunRow,
    rev: i64,
) -> std::result::Result<(), CallError> {
    let t = |s: &Option<String>| s.as_deref().and_then(crate::history::parse_time);
    let Some(scheduled_at) = crate::history::parse_time(&r.scheduled_at) else {
        return Ok(());
    };
    let started_at = crate::history::parse_time(&r.started_at).unwrap_or(scheduled_at);
    let attempt = i32::try_from(r.attempt).unwrap_or(i32::MAX);
    let pid = r.pid.and_then(|p| i32::try_from(p).ok());
    let owner = r.owner_pid.and_then(|p| i32::try_from(p).ok());
    let result = r.result.as_ref().map(|v| v.get().to_string());
    let node = r.node.clone().unwrap_or_default();
    let node_epoch = r.node_epoch.unwrap_or(0);
    call(
        "upload",
        client.execute(
            statement,
            &[
                r.run_uid.as_ref().unwrap_or(&String::new()),
                &r.job,
                &r.trigger.as_str(),
                &scheduled_at,
                &started_at,
                &t(&r.entered_at),
                &t(&r.finished_at),
                &attempt,
                &r.outcome.as_str(),
                &r.exit_code,
                &r.signal,
                &pid,
                &owner,
                &r.error,
                &result,
                &r.executor,
                &r.stuck,
                &r.peak_rss_bytes,
                &r.cpu_ms,
                &r.missed_count,
                &t(&r.missed_from),
                &t(&r.missed_to),
                &node,
                &node_epoch,
                &r.fence,
                &r.degraded,
                &r.id,
                &rev,
            ],
        ),
    )
    .await
    .map(|_| ())
}

impl Coordinator {
    /// Uploads the journal's new rows and revisions.
    pub(super) async fn upload(&mut self) {
        if self.client.is_none() || self.epoch.is_none() {
            return;
        }
        let journal = Arc::clone(&self.journal);
        let path = self.history.clone();
        let rows = tokio::task::spawn_blocking(move || {
            let mut guard = journal
                .lock()
                .map_err(|_| "journal lock poisoned".to_string())?;
            if guard.is_none() {
                *guard = History::open_read_only(&path).map_err(|e| e.to_string())?;
            }
            match guard.as_ref() {
                Some(h) => h.unsynced(UPLOAD_BATCH).map_err(|e| e.to_string()),
                None => Ok(Vec::new()),
            }
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!("cluster upload: cannot read the journal: {e}");
                if let Ok(mut j) = self.journal.lock() {
                    *j = None;
                }
                return;
            }
        };
        let Some(client) = &self.client else { return };
        let mut failed = None;
        for u in rows {
            let Some(prepared) = &self.prepared else {
                return;
            };
            match upload_row(client, &prepared.upload, &u.row, u.rev).await {
                Ok(()) => {
                    if let Some(uid) = &u.row.run_uid {
                        self.recorder.synced(uid, u.rev);
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            self.fail(&e);
        }
    }
}
