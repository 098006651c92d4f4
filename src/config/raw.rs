//! What the TOML says, before validation: unknown keys are refused, spans kept for errors.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::calendar::file::RawSession;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) scheduler: RawScheduler,
    #[serde(default)]
    pub(super) python: RawPython,
    #[serde(default)]
    pub(super) calendar: RawCalendar,
    #[serde(default)]
    pub(super) jobs: BTreeMap<String, Spanned<RawJob>>,
    pub(super) cluster: Option<Spanned<RawCluster>>,
    pub(super) notify: Option<Spanned<RawNotify>>,
    pub(super) http: Option<Spanned<RawHttp>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCalendar {
    pub(super) file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) closures: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) sessions: Vec<Spanned<RawSession>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScheduler {
    pub(super) exchange: Option<Spanned<String>>,
    pub(super) log_dir: Option<String>,
    pub(super) history: Option<String>,
    pub(super) shutdown_grace: Option<Spanned<String>>,
    pub(super) kill_grace: Option<Spanned<String>>,
    pub(super) strict_calendar: Option<bool>,
    pub(super) health_interval: Option<Spanned<String>>,
    pub(super) report_interval: Option<Spanned<String>>,
    pub(super) history_retention: Option<Spanned<String>>,
    pub(super) log_files_kept: Option<Spanned<i64>>,
    pub(super) legacy: Option<Spanned<String>>,
    pub(super) legacy_scripts: Option<Vec<String>>,
    pub(super) containment: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPython {
    pub(super) executable: Option<Spanned<String>>,
    pub(super) venv: Option<Spanned<String>>,
    pub(super) path: Option<Vec<String>>,
    pub(super) cwd: Option<Spanned<String>>,
    pub(super) probe_timeout: Option<Spanned<String>>,
    pub(super) preload: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) fork_max_runs: Option<Spanned<i64>>,
    pub(super) fork_max_memory: Option<Spanned<String>>,
    pub(super) env_file: Option<Spanned<String>>,
    pub(super) inherit_env: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJob {
    pub(super) name: Option<String>,
    pub(super) entry: Option<Spanned<String>>,
    pub(super) command: Option<Spanned<Vec<String>>>,
    pub(super) schedule: Spanned<String>,
    pub(super) market_hours: Option<bool>,
    pub(super) window_start: Option<Spanned<String>>,
    pub(super) window_end: Option<Spanned<String>>,
    pub(super) executor: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) retry: Option<Spanned<RawRetry>>,
    pub(super) overlap: Option<Spanned<String>>,
    pub(super) catch_up: Option<Spanned<String>>,
    pub(super) misfire_grace: Option<Spanned<String>>,
    pub(super) max_memory: Option<Spanned<String>>,
    pub(super) args: Option<toml::Table>,
    pub(super) enabled: Option<bool>,
    pub(super) takeover: Option<Spanned<String>>,
    pub(super) on_database_loss: Option<Spanned<String>>,
    pub(super) notify: Option<bool>,
    pub(super) ping: Option<Spanned<String>>,
    /// Read as any value, checked by us: serde's own type error would quote the value.
    pub(super) env: Option<Spanned<toml::Value>>,
    pub(super) env_file: Option<Spanned<String>>,
    pub(super) inherit_env: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub(super) attempts: Option<Spanned<i64>>,
    pub(super) backoff: Option<Spanned<String>>,
    pub(super) factor: Option<Spanned<f64>>,
    pub(super) max_backoff: Option<Spanned<String>>,
    pub(super) on: Option<Vec<Spanned<String>>>,
}

/// `[cluster]`, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) database: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) node: Option<Spanned<String>>,
    pub(super) priority: Option<Spanned<i64>>,
    pub(super) standby_delay: Option<Spanned<String>>,
    pub(super) heartbeat: Option<Spanned<String>>,
    pub(super) lease: Option<Spanned<String>>,
    pub(super) max_clock_skew: Option<Spanned<String>>,
    pub(super) on_database_loss: Option<Spanned<String>>,
    pub(super) expect_nodes: Option<Spanned<i64>>,
    pub(super) schema: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
}

/// `[notify]`, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) command: Option<Spanned<Vec<String>>>,
    pub(super) webhook: Option<Spanned<String>>,
    pub(super) webhook_format: Option<Spanned<String>>,
    pub(super) events: Option<Vec<Spanned<String>>>,
    pub(super) repeat: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) heartbeat_ping: Option<Spanned<String>>,
    pub(super) heartbeat_when: Option<Spanned<String>>,
}

/// `[http]`, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) token: Option<Spanned<String>>,
}
