//! What the daemon tells the outside: notifications, pings and metrics. The loop calls these as
//! runs start and end; nothing here waits (deliveries go to worker threads, metrics are atomics).

pub mod alerts;
pub mod deliver;
pub mod metrics;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::{Config, Event, HeartbeatWhen, Job};
use crate::history::{History, Outcome, TriggerKind};
use crate::runner::RunReport;

pub use deliver::{EventDoc, Outbox, Ping, PingKind};
pub use metrics::Metrics;

/// The daemon's voice.
pub struct Observer {
    pub metrics: Arc<Metrics>,
    pub outbox: Arc<Outbox>,
    alerts: alerts::Alerts,
}

/// What says that slots did not run, handed to a task (in a cluster, only the node that records
/// the skipped row says it).
#[derive(Clone)]
pub struct MissedNotice {
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
}

impl MissedNotice {
    /// `count` slots of `job` from `first` did not run: one `skipped` row, counted and told.
    pub fn send(
        &self,
        config: &Arc<Config>,
        job: &Job,
        trigger: TriggerKind,
        first: DateTime<Utc>,
        count: u64,
        reason: &str,
    ) {
        self.metrics.missed(&job.id, count);
        self.metrics.skipped_row(&job.id, trigger);
        let tz = config.calendar().tz();
        let mut doc = doc(config, Event::Missed, Some(job), None);
        doc.outcome = Some("skipped".to_string());
        doc.trigger = Some(trigger.as_str().to_string());
        doc.scheduled_at = Some(crate::fmt::rfc3339_in(first, tz));
        doc.count = Some(count);
        doc.error = Some(reason.to_string());
        doc.message = format!(
            "⏭️ {}: {} from {} did not run: {reason}",
            job.name,
            crate::fmt::n(count, "slot"),
            first.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z")
        );
        deliver(&self.outbox, config, Event::Missed, Some(job), doc);
    }
}

impl Observer {
    /// Starts the delivery workers; each job's alert state and last success come from the
    /// history.
    pub fn start(config: &Config, history: Option<&History>) -> Observer {
        let metrics = Arc::new(Metrics::new());
        let mut alerts = alerts::Alerts::default();
        for job in &config.jobs {
            let last = history.and_then(|h| h.last_run(&job.id).ok().flatten());
            let last_success = history
                .and_then(|h| h.last_success(&job.id).ok().flatten())
                .and_then(|t| crate::history::parse_time(&t));
            metrics.seed(&job.id, last_success);
            if let Some(row) = last
                && alerts::is_failure(row.outcome)
            {
                let at = row
                    .finished_at
                    .as_deref()
                    .and_then(crate::history::parse_time)
                    .unwrap_or_else(Utc::now);
                alerts.seed_failing(&job.id, at);
            }
        }
        Observer {
            outbox: Arc::new(Outbox::start(Arc::clone(&metrics))),
            metrics,
            alerts,
        }
    }

    pub fn missed_notice(&self) -> MissedNotice {
        MissedNotice {
            outbox: Arc::clone(&self.outbox),
            metrics: Arc::clone(&self.metrics),
        }
    }

    /// A run entered its process (or thread).
    pub fn run_started(&self, config: &Config, job: &Job, run_id: i64, uid: &str) {
        self.metrics.started(&job.id);
        if let Some(url) = &job.ping {
            self.outbox.ping(Ping {
                url: url.clone(),
                kind: PingKind::Start,
                rid: Some(uid.to_string()),
                log: None,
                timeout: config.notify.timeout,
            });
        }
        let _ = run_id;
    }

    /// A run ended; `last` when no retry follows.
    /// A slot not run because another run of the job held it: its row was written by the run;
    /// the metrics count it as a missed slot, and `missed` is told.
    fn skipped(&mut self, config: &Arc<Config>, job: &crate::config::Job, report: &RunReport) {
        let reason = report
            .error
            .clone()
            .or_else(|| report.busy.clone().map(|b| format!("previous {b}")))
            .unwrap_or_else(|| "skipped".to_string());
        self.metrics.missed(&job.id, 1);
        let mut doc = doc(config, Event::Missed, Some(job), Some(report));
        doc.count = Some(1);
        doc.error = Some(reason.clone());
        doc.message = format!("⏭️ {}: a slot did not run: {reason}", job.name);
        deliver(&self.outbox, config, Event::Missed, Some(job), doc);
    }

    /// The job's ping at a run's end: success, or failure on its last attempt (a cancelled run
    /// pings nothing).
    fn ping_end(
        &mut self,
        config: &Arc<Config>,
        job: &crate::config::Job,
        report: &RunReport,
        last: bool,
    ) {
        if let (Some(url), Some(run_id)) = (&job.ping, report.run_id)
            && (report.outcome == Outcome::Success || last)
            && report.outcome != Outcome::Cancelled
        {
            self.outbox.ping(Ping {
                url: url.clone(),
                kind: if report.outcome == Outcome::Success {
                    PingKind::Success
                } else {
                    PingKind::Fail
                },
                rid: report.run_uid.clone(),
                log: Some((config.job_log_dir().join(format!("{}.log", job.id)), run_id)),
                timeout: config.notify.timeout,
            });
        }
    }

    /// A run ended: the metrics, the job's ping, and the alerts it raises (stuck, failed,
    /// recovered; `last`: no retry follows).
    pub fn run_ended(&mut self, config: &Arc<Config>, report: &RunReport, last: bool) {
        let now = Utc::now();
        self.metrics.ended(
            &report.job,
            report.outcome,
            report.trigger,
            report.scheduled_at,
            report.started_at,
            report.entered_at,
            report.finished_at,
            report.stuck,
        );
        let job = config.job(&report.job);
        // Another node ran the slot: nothing happened here.
        if report.taken_by.is_some() {
            return;
        }
        if report.outcome == Outcome::Skipped {
            if let Some(job) = job {
                self.skipped(config, job, report);
            }
            return;
        }
        let Some(job) = job else { return };
        self.ping_end(config, job, report, last);
        if report.stuck {
            self.send(
                config,
                Event::Stuck,
                Some(job),
                Some(report),
                None,
                format!(
                    "{}: the run timed out but its thread has not returned; the job is held until it does",
                    job.name
                ),
            );
        }
        if !last {
            return;
        }
        let repeat = config.notify.repeat;
        if let Some(event) = self.alerts.ended(&job.id, report.outcome, now, repeat) {
            let message = match event {
                Event::Recovered => format!("✅ {} recovered: it ran successfully", job.name),
                _ => format!(
                    "❌ {} {}{}",
                    job.name,
                    report.outcome.as_str(),
                    report
                        .error
                        .as_deref()
                        .map(|e| format!(": {}", first_line(e)))
                        .unwrap_or_default()
                ),
            };
            self.send(config, event, Some(job), Some(report), None, message);
        }
    }

    /// The daemon started, stops, or settled what a dead one left.
    pub fn daemon(&self, config: &Arc<Config>, message: String) {
        let mut doc = doc(config, Event::Daemon, None, None);
        doc.message = message;
        deliver(&self.outbox, config, Event::Daemon, None, doc);
    }

    /// The calendar's data is running out.
    pub fn coverage(&self, config: &Arc<Config>, message: String) {
        let mut doc = doc(config, Event::Coverage, None, None);
        doc.message = message;
        deliver(&self.outbox, config, Event::Coverage, None, doc);
    }

    /// The health check's heartbeat: pinged while the exchange is in session (or always).
    pub fn heartbeat(&self, config: &Config, now: DateTime<Utc>) {
        let Some(url) = &config.notify.heartbeat_ping else {
            return;
        };
        let due = match config.notify.heartbeat_when {
            HeartbeatWhen::Always => true,
            HeartbeatWhen::Session => metrics::in_session(&config.calendar(), now),
        };
        if due {
            self.outbox.ping(Ping {
                url: url.clone(),
                kind: PingKind::Heartbeat,
                rid: None,
                log: None,
                timeout: config.notify.timeout,
            });
        }
    }

    fn send(
        &self,
        config: &Arc<Config>,
        event: Event,
        job: Option<&Job>,
        report: Option<&RunReport>,
        count: Option<u64>,
        message: String,
    ) {
        let mut doc = doc(config, event, job, report);
        doc.count = count;
        doc.message = message;
        deliver(&self.outbox, config, event, job, doc);
    }
}

/// Hands `doc` to the notifiers when `[notify]` wants `event` and the job has not opted out.
fn deliver(outbox: &Outbox, config: &Arc<Config>, event: Event, job: Option<&Job>, doc: EventDoc) {
    if !config.notify.wants(event) || job.is_some_and(|j| !j.notify) {
        return;
    }
    tracing::info!("📣 {}: {}", event.as_str(), doc.message);
    outbox.notify(doc, Arc::clone(config));
}

/// The event document, with what is known of the job and the run.
fn doc(config: &Config, event: Event, job: Option<&Job>, report: Option<&RunReport>) -> EventDoc {
    let tz = config.calendar().tz();
    EventDoc {
        event: event.as_str(),
        job: job.map(|j| j.id.clone()),
        name: job.map(|j| j.name.clone()),
        outcome: report.map(|r| r.outcome.as_str().to_string()),
        run_id: report.and_then(|r| r.run_id),
        trigger: report.map(|r| r.trigger.as_str().to_string()),
        scheduled_at: report.map(|r| crate::fmt::rfc3339_in(r.scheduled_at, tz)),
        attempt: report.map(|r| r.attempt),
        error: report.and_then(|r| r.error.clone()),
        node: report
            .and_then(|r| r.tag.as_ref().map(|t| t.node.clone()))
            .or_else(|| config.cluster.as_ref().map(|c| c.node.clone())),
        at: crate::fmt::rfc3339_in(Utc::now(), tz),
        run_uid: report.and_then(|r| r.run_uid.clone()),
        count: None,
        message: String::new(),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}
