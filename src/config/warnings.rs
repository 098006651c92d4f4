//! What the config means today that the user should hear: holiday data running out, a job
//! that never fires, a local data file under cluster mode.

use chrono::Utc;

use super::Config;

impl Config {
    /// Today's warnings about the config: calendar coverage.
    pub fn warnings(&self, now: chrono::DateTime<Utc>) -> Vec<String> {
        let calendar = self.calendar();
        let today = now.with_timezone(&calendar.tz()).date_naive();
        // The holiday data's end matters only to jobs that fire by the calendar.
        let mut warnings: Vec<String> = calendar
            .coverage_warning(today)
            .filter(|_| self.uses_calendar())
            .into_iter()
            .collect();
        for job in self.jobs.iter().filter(|j| j.enabled) {
            if job.trigger.next_fire_after(&calendar, now).is_none() {
                warnings.push(format!(
                    "[jobs.{}] never fires: its schedule has no instant ahead{}",
                    job.id,
                    if job.trigger.market_hours {
                        " inside market hours"
                    } else {
                        ""
                    }
                ));
            }
        }
        warnings
    }

    /// Cluster mode: jobs whose `args` name a local SQLite file. After a failover, one session's
    /// data would be split across the hosts' files: a shared store, written idempotently by slot,
    /// keeps it whole (see the README's "Cluster" section).
    pub fn cluster_data_warnings(&self) -> Vec<String> {
        let Some(cluster) = &self.cluster else {
            return Vec::new();
        };
        fn local_files(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::String(s)
                    if [".sqlite", ".sqlite3", ".db", ".duckdb"]
                        .iter()
                        .any(|ext| s.ends_with(ext)) =>
                {
                    out.push(s.clone())
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| local_files(v, out)),
                serde_json::Value::Object(o) => o.values().for_each(|v| local_files(v, out)),
                _ => {}
            }
        }
        let mut warnings = Vec::new();
        for job in &self.jobs {
            let mut files = Vec::new();
            local_files(&job.args, &mut files);
            for f in files {
                warnings.push(format!(
                    "[jobs.{}] writes `{f}`, a file on the host that runs the slot (node {} here): after a failover one session's data is split across hosts; prefer a shared store written idempotently by (symbol, ctx.scheduled_at) with ctx.fence",
                    job.id, cluster.node
                ));
            }
        }
        warnings
    }
}
