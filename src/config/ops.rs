//! `[notify]` and `[http]`: who hears about runs, and the read-only HTTP endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::ConfigError;

use super::raw::*;
use super::validate::{Policy, Validator};

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// A run failed for good (after its last retry).
    Failure,
    /// A slot that did not run (overlap, downtime, clock step, calendar coverage).
    Missed,
    /// The first success after a failure.
    Recovered,
    /// An in-process run that timed out and whose thread has not returned.
    Stuck,
    /// The daemon started, stopped, or settled the runs of a dead one.
    Daemon,
    /// The calendar's data is running out.
    Coverage,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Failure => "failure",
            Event::Missed => "missed",
            Event::Recovered => "recovered",
            Event::Stuck => "stuck",
            Event::Daemon => "daemon",
            Event::Coverage => "coverage",
        }
    }
}

impl Policy for Event {
    const WHAT: &'static str = "event";
    const WORDS: &'static [&'static str] = &[
        "failure",
        "missed",
        "recovered",
        "stuck",
        "daemon",
        "coverage",
    ];
}

/// The body a web hook gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The event's JSON document (also the command's stdin).
    Json,
    /// `{"text": "…"}`, for a Slack (or Mattermost, Rocket.Chat) incoming web hook.
    Slack,
}

impl Policy for WebhookFormat {
    const WHAT: &'static str = "format";
    const WORDS: &'static [&'static str] = &["json", "slack"];
}

/// When the heartbeat ping is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeartbeatWhen {
    /// Only while the exchange is in session: an outside monitor's schedule can follow the
    /// market's without paging at night.
    Session,
    /// At every health interval.
    Always,
}

impl Policy for HeartbeatWhen {
    const WHAT: &'static str = "value";
    const WORDS: &'static [&'static str] = &["session", "always"];
}

/// The validated `[notify]` table.
#[derive(Debug, Clone)]
pub struct Notify {
    pub command: Option<Vec<String>>,
    pub webhook: Option<String>,
    pub webhook_format: WebhookFormat,
    pub events: Vec<Event>,
    /// A job whose failures go on is alerted again this often (`None`: once, until it recovers).
    pub repeat: Option<Duration>,
    /// How long a notifier (command or web hook) or a ping may take.
    pub timeout: Duration,
    pub heartbeat_ping: Option<String>,
    pub heartbeat_when: HeartbeatWhen,
}

impl Default for Notify {
    fn default() -> Self {
        Notify {
            command: None,
            webhook: None,
            webhook_format: WebhookFormat::Json,
            events: DEFAULT_EVENTS.to_vec(),
            repeat: None,
            timeout: DEFAULT_TIMEOUT,
            heartbeat_ping: None,
            heartbeat_when: HeartbeatWhen::Session,
        }
    }
}

impl Notify {
    pub fn wants(&self, event: Event) -> bool {
        (self.command.is_some() || self.webhook.is_some()) && self.events.contains(&event)
    }
}

const DEFAULT_EVENTS: &[Event] = &[Event::Failure, Event::Missed, Event::Recovered];
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The validated `[http]` table.
#[derive(Debug, Clone)]
pub struct Http {
    pub listen: SocketAddr,
    /// The bearer token every request must carry (required off loopback). Never printed.
    pub token: Option<String>,
}

/// An `http://` or `https://` address with a host, or why not.
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("it must start with https:// or http://")?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains white space or control characters".to_string());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6
                .split_once(']')
                .ok_or("its IPv6 address has no closing `]`")?;
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("`{addr}` is not an IPv6 address"));
            }
            match after {
                "" => (addr, None),
                p => (
                    addr,
                    Some(p.strip_prefix(':').ok_or("junk after its IPv6 address")?),
                ),
            }
        }
        None => match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err("it has no host".to_string());
    }
    if let Some(p) = port
        && p.parse::<u16>().ok().filter(|p| *p > 0).is_none()
    {
        return Err(format!("`{p}` is not a port (1 to 65535)"));
    }
    Ok(())
}

impl Validator<'_> {
    pub(super) fn url(&self, raw: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        check_url(raw.get_ref()).map_err(|why| {
            self.at(
                raw,
                format!(
                    "invalid URL `{}` for `{key}`: {why} (expected e.g. \"https://hc-ping.com/<uuid>\")",
                    raw.get_ref()
                ),
            )
        })?;
        Ok(raw.get_ref().clone())
    }

    pub(super) fn notify(&self, raw: &Spanned<RawNotify>) -> Result<Notify, ConfigError> {
        let r = raw.get_ref();
        let command = match &r.command {
            None => None,
            Some(c) if c.get_ref().is_empty() || c.get_ref()[0].is_empty() => {
                return Err(self.at(
                    c,
                    "`notify.command` is empty: it is a program and its arguments, such as [\"/usr/local/bin/page-me\", \"--team\", \"quant\"]".to_string(),
                ));
            }
            Some(c) => Some(c.get_ref().clone()),
        };
        let webhook = match &r.webhook {
            None => None,
            Some(w) => Some(self.url(w, "notify.webhook")?),
        };
        let events = match &r.events {
            None => DEFAULT_EVENTS.to_vec(),
            Some(list) if list.is_empty() && (r.command.is_some() || r.webhook.is_some()) => {
                return Err(self.at(
                    raw,
                    "`events` in [notify] is empty: no notification would ever be sent (list some of failure, missed, recovered, stuck, daemon, coverage, or remove `command` and `webhook`)".to_string(),
                ));
            }
            Some(list) => {
                let mut out = Vec::new();
                for e in list {
                    let event: Event =
                        self.policy(Some(e), "events", Some("notify"), Event::Failure)?;
                    if !out.contains(&event) {
                        out.push(event);
                    }
                }
                out
            }
        };
        let repeat = match &r.repeat {
            None => None,
            Some(d) => Some(self.at_least(
                Some(d),
                "notify.repeat",
                Duration::ZERO,
                Duration::from_secs(60),
            )?),
        };
        Ok(Notify {
            command,
            webhook,
            webhook_format: self.policy(
                r.webhook_format.as_ref(),
                "webhook_format",
                Some("notify"),
                WebhookFormat::Json,
            )?,
            events,
            repeat,
            timeout: self.at_least(
                r.timeout.as_ref(),
                "notify.timeout",
                DEFAULT_TIMEOUT,
                Duration::from_millis(100),
            )?,
            heartbeat_ping: match &r.heartbeat_ping {
                None => None,
                Some(u) => Some(self.url(u, "notify.heartbeat_ping")?),
            },
            heartbeat_when: self.policy(
                r.heartbeat_when.as_ref(),
                "heartbeat_when",
                Some("notify"),
                HeartbeatWhen::Session,
            )?,
        })
    }

    pub(super) fn http(&self, raw: &Spanned<RawHttp>) -> Result<Option<Http>, ConfigError> {
        let r = raw.get_ref();
        let Some(listen) = &r.listen else {
            return match &r.token {
                Some(t) => Err(self.at(
                    t,
                    "`token` in [http] without `listen`: the endpoint is off unless `listen` is set, such as \"127.0.0.1:8321\"".to_string(),
                )),
                None => Ok(None),
            };
        };
        let addr: SocketAddr = listen.get_ref().parse().map_err(|_| {
            self.at(
                listen,
                format!(
                    "invalid `listen` `{}` in [http] (expected an address and a port, such as \"127.0.0.1:8321\" or \"[::1]:8321\")",
                    listen.get_ref()
                ),
            )
        })?;
        let token = match &r.token {
            None => None,
            Some(t) if t.get_ref().trim().chars().any(|c| !c.is_ascii_graphic()) => {
                return Err(self.at(
                    t,
                    "`token` in [http] may hold only visible ASCII characters (no spaces or line breaks): it is sent in an HTTP header".to_string(),
                ));
            }
            Some(t) if t.get_ref().trim().len() < 16 => {
                return Err(self.at(
                    t,
                    "`token` in [http] is too short: at least 16 characters (e.g. the output of `openssl rand -hex 24`)".to_string(),
                ));
            }
            Some(t) => Some(t.get_ref().trim().to_string()),
        };
        if !addr.ip().is_loopback() && token.is_none() {
            return Err(self.at(
                listen,
                format!(
                    "`listen` `{addr}` in [http] is not a loopback address: set `token` too (every request must then carry `Authorization: Bearer <token>`), or listen on 127.0.0.1"
                ),
            ));
        }
        Ok(Some(Http {
            listen: addr,
            token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn urls_are_checked() {
        for ok in [
            "https://hc-ping.com/5e0c",
            "http://127.0.0.1:8080/hook",
            "http://user:pw@host/x",
            "http://[::1]:9/x",
            "https://example.com",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "ftp://x/y",
            "http:///x",
            "http://127.0.0.1:99999/x",
            "http://host:0/x",
            "http://[::1/x",
            "http://[zz]/x",
            "http://host/a b",
            "http://host/\n",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
