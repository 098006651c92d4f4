//! `[cluster]`: N daemons sharing one PostgreSQL database, each slot run once cluster-wide.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::ConfigError;

use super::raw::*;
use super::validate::{Policy, Validator};

/// The environment variable that names the cluster's database (it wins over the file's, so the
/// password can stay out of the config).
pub const DATABASE_ENV: &str = "HEDGE_SCHEDULER_DATABASE";

/// The validated `[cluster]` table.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The connection string, as written (it may hold a password: never print it; see
    /// `database_shown`).
    pub database: String,
    /// Where the database is, without user or password: `host:port/dbname`.
    pub database_shown: String,
    /// A file holding the password (first line), read at each connection.
    pub password_file: Option<std::path::PathBuf>,
    /// This daemon's name in the cluster, unique among live nodes.
    pub node: String,
    /// 0 claims first; priority n tries n × `standby_delay` later.
    pub priority: u32,
    pub standby_delay: Duration,
    /// Lease renewal, and the sweep of dead nodes.
    pub heartbeat: Duration,
    /// A node not renewed for this long (database clock) is dead.
    pub lease: Duration,
    /// Claims earlier than this before a slot (database clock) are refused; a node whose clock
    /// is off by more stops claiming.
    pub max_clock_skew: Duration,
    /// The default of every job's `on_database_loss`.
    pub on_database_loss: DatabaseLoss,
    /// `status` warns when fewer nodes are alive.
    pub expect_nodes: Option<u32>,
    /// The PostgreSQL schema holding every table.
    pub schema: String,
    /// TLS to the database: the connection string's `sslmode` (libpq's meanings).
    pub tls: Tls,
    /// The certificates (PEM) the server's must chain to (`[cluster] ca_file`).
    pub ca_file: Option<std::path::PathBuf>,
}

/// `sslmode` in the connection string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The connection string with `sslmode=verify-ca` and `verify-full` read as `require` (what the
/// PostgreSQL client understands; the verification is ours), and which mode it asked for.
pub fn split_sslmode(database: &str) -> (String, Option<Tls>) {
    for (word, tls) in [
        ("verify-full", Tls::VerifyFull),
        ("verify-ca", Tls::VerifyCa),
    ] {
        let key = format!("sslmode={word}");
        if database.contains(&key) {
            return (database.replace(&key, "sslmode=require"), Some(tls));
        }
    }
    (database.to_string(), None)
}

impl Cluster {
    /// How much before a slot this node tries to claim it (negative: after it).
    pub fn claim_lead(&self) -> chrono::Duration {
        let standby = self.standby_delay.saturating_mul(self.priority);
        chrono::Duration::from_std(CLAIM_AHEAD).unwrap_or_default()
            - chrono::Duration::from_std(standby).unwrap_or_default()
    }

    /// How long the node trusts its lease after a renewal was sent: it acts as if it had lost it
    /// before the database can declare it dead.
    pub fn trust(&self) -> Duration {
        self.lease.saturating_sub(self.heartbeat * 2)
    }
}

/// How far ahead of a slot the first node claims it: time for the round trip, so the run still
/// starts at the slot's instant.
pub const CLAIM_AHEAD: Duration = Duration::from_millis(200);

/// What a job does while its node cannot reach the cluster's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseLoss {
    /// Every disconnected node fires locally (at least once).
    Run,
    /// Only the priority-0 node fires.
    Primary,
    /// Nothing fires; the slots are recorded `skipped` on reconnect (at most once).
    Skip,
}

impl DatabaseLoss {
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseLoss::Run => "run",
            DatabaseLoss::Primary => "primary",
            DatabaseLoss::Skip => "skip",
        }
    }
}

/// What happens to a slot whose node died mid-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Takeover {
    /// A survivor runs the slot again, while it is still before the next slot.
    Rerun,
    /// The slot is recorded `abandoned`.
    Abandon,
}

impl Policy for DatabaseLoss {
    const WHAT: &'static str = "policy";
    const WORDS: &'static [&'static str] = &["run", "primary", "skip"];
}

impl Policy for Takeover {
    const WHAT: &'static str = "takeover policy";
    const WORDS: &'static [&'static str] = &["rerun", "abandon"];
}

/// The host's name, the default node name.
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `host:port/dbname` of a connection string, with no user or password.
pub fn describe_database(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

impl Validator<'_> {
    pub(super) fn cluster(&self, raw: &Spanned<RawCluster>) -> Result<Cluster, ConfigError> {
        let r = raw.get_ref();
        let (plain, verify, parsed) = self.cluster_database(raw)?;
        let (node, priority) = self.cluster_node(r)?;
        let (standby_delay, heartbeat, lease, max_clock_skew) =
            self.cluster_timing(raw, priority)?;
        let schema = match &r.schema {
            None => "hedge_scheduler".to_string(),
            Some(s) => self.cluster_schema(s)?,
        };
        let expect_nodes = match &r.expect_nodes {
            None => None,
            Some(n) => Some(
                u32::try_from(*n.get_ref())
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        self.at(
                            n,
                            "`expect_nodes` in [cluster] must be 1 to 1000".to_string(),
                        )
                    })?,
            ),
        };
        let (tls, ca_file) = self.cluster_tls(raw, verify, &parsed)?;
        Ok(Cluster {
            database_shown: describe_database(&parsed),
            database: plain,
            tls,
            ca_file,
            password_file: r.password_file.as_ref().map(|p| {
                self.file
                    .parent()
                    .unwrap_or(std::path::Path::new("/"))
                    .join(p.get_ref())
            }),
            node,
            priority,
            standby_delay,
            heartbeat,
            lease,
            max_clock_skew,
            on_database_loss: self.policy(
                r.on_database_loss.as_ref(),
                "on_database_loss",
                Some("cluster"),
                DatabaseLoss::Run,
            )?,
            expect_nodes,
            schema,
        })
    }
}

impl Validator<'_> {
    /// `schema`: a plain PostgreSQL identifier.
    fn cluster_schema(&self, s: &Spanned<String>) -> Result<String, ConfigError> {
        let ok = s
            .get_ref()
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && s.get_ref().len() <= 63
            && s.get_ref()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(self.at(
                s,
                format!(
                    "invalid `schema` `{}` in [cluster] (lowercase letters, digits and `_`, not starting with a digit)",
                    s.get_ref()
                ),
            ));
        }
        Ok(s.get_ref().clone())
    }

    /// The TLS the database string (or our `sslmode` words, `verify`) asks for, and `ca_file`,
    /// which verifying needs.
    fn cluster_tls(
        &self,
        raw: &Spanned<RawCluster>,
        verify: Option<Tls>,
        parsed: &tokio_postgres::Config,
    ) -> Result<(Tls, Option<std::path::PathBuf>), ConfigError> {
        let r = raw.get_ref();
        let tls = verify.unwrap_or(match parsed.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => Tls::Disable,
            tokio_postgres::config::SslMode::Require => Tls::Require,
            _ => Tls::Prefer,
        });
        let ca_file = r.ca_file.as_ref().map(|p| {
            self.file
                .parent()
                .unwrap_or(std::path::Path::new("/"))
                .join(p.get_ref())
        });
        if matches!(tls, Tls::VerifyCa | Tls::VerifyFull) && ca_file.is_none() {
            let message = "sslmode=verify-ca and verify-full need `ca_file` in [cluster] (the certificates, PEM, the server's must chain to)".to_string();
            return Err(match &r.database {
                Some(d)
                    if std::env::var(DATABASE_ENV)
                        .ok()
                        .filter(|s| !s.is_empty())
                        .is_none() =>
                {
                    self.at(d, message)
                }
                _ => self.at(raw, message),
            });
        }
        Ok((tls, ca_file))
    }

    /// `database` (or the environment's): the string without our `sslmode` words, the TLS they
    /// ask for, and what it says.
    fn cluster_database(
        &self,
        raw: &Spanned<RawCluster>,
    ) -> Result<(String, Option<Tls>, tokio_postgres::Config), ConfigError> {
        let r = raw.get_ref();
        let from_env = std::env::var(DATABASE_ENV).ok().filter(|s| !s.is_empty());
        let database = match (&from_env, &r.database) {
            (Some(env), _) => env.clone(),
            (None, Some(d)) => d.get_ref().clone(),
            (None, None) => {
                return Err(self.at(
                    raw,
                    format!(
                        "missing key `database` in [cluster] (a PostgreSQL connection string, such as \"postgresql://hedge@db.internal/hedge\", or set {DATABASE_ENV})"
                    ),
                ));
            }
        };
        let (plain, verify) = split_sslmode(&database);
        let parsed: tokio_postgres::Config = plain.parse().map_err(|e| {
            let message = format!(
                "invalid `database` in [cluster]: {e} (expected \"postgresql://user@host/db\" or \"host=/run/postgresql dbname=hedge\")"
            );
            match (&from_env, &r.database) {
                (None, Some(d)) => self.at(d, message),
                _ => ConfigError::new(
                    self.file,
                    format!("{message}; it comes from {DATABASE_ENV}"),
                ),
            }
        })?;
        Ok((plain, verify, parsed))
    }

    /// `node` (the host's name by default) and `priority`.
    fn cluster_node(&self, r: &RawCluster) -> Result<(String, u32), ConfigError> {
        let node = match &r.node {
            None => hostname(),
            Some(n) => {
                let ok = !n.get_ref().is_empty()
                    && n.get_ref().len() <= 64
                    && n.get_ref()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !ok {
                    return Err(self.at(
                        n,
                        format!(
                            "invalid `node` `{}` in [cluster] (1 to 64 letters, digits, `-`, `_` and `.`)",
                            n.get_ref()
                        ),
                    ));
                }
                n.get_ref().clone()
            }
        };
        let priority = match &r.priority {
            None => 0,
            Some(p) => u32::try_from(*p.get_ref())
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| {
                    self.at(
                        p,
                        "`priority` in [cluster] must be 0 to 100 (0 claims first)".to_string(),
                    )
                })?,
        };
        Ok((node, priority))
    }

    /// `standby_delay`, `heartbeat`, `lease` and `max_clock_skew`, which must fit together.
    fn cluster_timing(
        &self,
        raw: &Spanned<RawCluster>,
        priority: u32,
    ) -> Result<(Duration, Duration, Duration, Duration), ConfigError> {
        let r = raw.get_ref();
        let ms = Duration::from_millis;
        let standby_delay = self.at_least(
            r.standby_delay.as_ref(),
            "cluster.standby_delay",
            ms(500),
            ms(10),
        )?;
        let heartbeat =
            self.at_least(r.heartbeat.as_ref(), "cluster.heartbeat", ms(2000), ms(50))?;
        let lease = self.duration(r.lease.as_ref(), "cluster.lease", ms(10_000))?;
        let max_clock_skew = self.duration(
            r.max_clock_skew.as_ref(),
            "cluster.max_clock_skew",
            ms(2000),
        )?;
        let place = |key: &Option<Spanned<String>>, message: String| match key {
            Some(k) => self.at(k, message),
            None => self.at(raw, message),
        };
        if lease <= heartbeat * 3 {
            return Err(place(
                &r.lease,
                format!(
                    "`lease` in [cluster] ({}) must be more than 3 × `heartbeat` ({}): a node must be able to miss a renewal without being declared dead, and trust its lease (lease − 2 × heartbeat) for longer than a heartbeat",
                    humantime::format_duration(lease),
                    humantime::format_duration(heartbeat)
                ),
            ));
        }
        if standby_delay.saturating_mul(priority) >= lease {
            return Err(place(
                &r.standby_delay,
                format!(
                    "`priority` × `standby_delay` in [cluster] ({}) must be shorter than `lease` ({}): a standby would wait longer than a takeover",
                    humantime::format_duration(standby_delay.saturating_mul(priority)),
                    humantime::format_duration(lease)
                ),
            ));
        }
        if max_clock_skew * 2 >= lease {
            return Err(place(
                &r.max_clock_skew,
                format!(
                    "`max_clock_skew` in [cluster] ({}) must be less than half of `lease` ({})",
                    humantime::format_duration(max_clock_skew),
                    humantime::format_duration(lease)
                ),
            ));
        }
        Ok((standby_delay, heartbeat, lease, max_clock_skew))
    }
}
