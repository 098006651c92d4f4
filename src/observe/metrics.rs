//! The Prometheus metrics of the daemon (`/metrics`): counted as runs end, in memory; what the
//! calendar says (the last slot that should have run, whether the exchange is open) is computed
//! when scraped.

use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::calendar::Calendar;
use crate::config::Config;
use crate::history::{Outcome, TriggerKind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    job: String,
    outcome: String,
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExchangeLabel {
    exchange: String,
}

type Seconds = Gauge<f64, AtomicU64>;
type Histograms = Family<JobLabel, Histogram, fn() -> Histogram>;

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    duration: Histograms,
    fire_delay: Histograms,
    running: Family<JobLabel, Gauge>,
    last_success: Family<JobLabel, Seconds>,
    last_expected: Family<JobLabel, Seconds>,
    missed: Family<JobLabel, Counter>,
    session_open: Family<ExchangeLabel, Gauge>,
    loop_lag: Seconds,
    notify_failures: Counter,
}

fn durations() -> Histogram {
    // A run takes from milliseconds (a no-op) to minutes (a 5-minute timeout).
    Histogram::new([
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

fn delays() -> Histogram {
    // Entered − scheduled: about a millisecond in-process, tens of milliseconds for a fresh
    // interpreter; seconds mean trouble.
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    ])
}

fn job(job: &str) -> JobLabel {
    JobLabel {
        job: job.to_string(),
    }
}

fn epoch(t: DateTime<Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let runs = Family::<RunLabels, Counter>::default();
        let duration: Histograms = Family::new_with_constructor(durations);
        let fire_delay: Histograms = Family::new_with_constructor(delays);
        let running = Family::<JobLabel, Gauge>::default();
        let last_success = Family::<JobLabel, Seconds>::default();
        let last_expected = Family::<JobLabel, Seconds>::default();
        let missed = Family::<JobLabel, Counter>::default();
        let session_open = Family::<ExchangeLabel, Gauge>::default();
        let loop_lag = Seconds::default();
        let notify_failures = Counter::default();
        registry.register(
            "hedge_scheduler_runs",
            "Runs that ended, by job, outcome and trigger (skipped slots included)",
            runs.clone(),
        );
        registry.register(
            "hedge_scheduler_run_duration_seconds",
            "How long runs took, from start to end",
            duration.clone(),
        );
        registry.register(
            "hedge_scheduler_fire_delay_seconds",
            "When the job's function was entered, less the slot's instant",
            fire_delay.clone(),
        );
        registry.register(
            "hedge_scheduler_running",
            "1 while a run of the job is in progress",
            running.clone(),
        );
        registry.register(
            "hedge_scheduler_last_success_timestamp_seconds",
            "When the job's last successful run ended (Unix time)",
            last_success.clone(),
        );
        registry.register(
            "hedge_scheduler_last_expected_slot_timestamp_seconds",
            "The last slot the calendar says should have run by now (Unix time): alert on its difference from the last success, not on age",
            last_expected.clone(),
        );
        registry.register(
            "hedge_scheduler_slots_missed",
            "Slots that did not run (overlap, downtime, clock step, calendar coverage)",
            missed.clone(),
        );
        registry.register(
            "hedge_scheduler_session_open",
            "1 while the exchange is in session",
            session_open.clone(),
        );
        registry.register(
            "hedge_scheduler_loop_lag_seconds",
            "How late the scheduling loop last woke for a slot",
            loop_lag.clone(),
        );
        registry.register(
            "hedge_scheduler_notify_failures",
            "Notifications, web hooks and pings that failed or timed out",
            notify_failures.clone(),
        );
        Metrics {
            registry,
            runs,
            duration,
            fire_delay,
            running,
            last_success,
            last_expected,
            missed,
            session_open,
            loop_lag,
            notify_failures,
        }
    }

    /// Every configured job shows up from the start (running 0), with its last success.
    pub fn seed(&self, job_id: &str, last_success: Option<DateTime<Utc>>) {
        self.running.get_or_create(&job(job_id)).set(0);
        let _ = self.missed.get_or_create(&job(job_id));
        if let Some(t) = last_success {
            self.last_success.get_or_create(&job(job_id)).set(epoch(t));
        }
    }

    pub fn started(&self, job_id: &str) {
        self.running.get_or_create(&job(job_id)).set(1);
    }

    /// A run ended (or a slot was skipped without a run).
    #[allow(clippy::too_many_arguments)]
    pub fn ended(
        &self,
        job_id: &str,
        outcome: Outcome,
        trigger: TriggerKind,
        scheduled_at: DateTime<Utc>,
        started_at: DateTime<Utc>,
        entered_at: Option<DateTime<Utc>>,
        finished_at: DateTime<Utc>,
        still_running: bool,
    ) {
        self.runs
            .get_or_create(&RunLabels {
                job: job_id.to_string(),
                outcome: outcome.as_str().to_string(),
                trigger: trigger.as_str().to_string(),
            })
            .inc();
        if !still_running {
            self.running.get_or_create(&job(job_id)).set(0);
        }
        if outcome == Outcome::Skipped {
            return;
        }
        let secs = |d: chrono::Duration| d.num_microseconds().unwrap_or(0) as f64 / 1e6;
        self.duration
            .get_or_create(&job(job_id))
            .observe(secs(finished_at - started_at).max(0.0));
        // A catch-up, a backfill or a manual run is late (or early) on purpose.
        if let Some(entered) = entered_at
            && trigger == TriggerKind::Schedule
        {
            self.fire_delay
                .get_or_create(&job(job_id))
                .observe(secs(entered - scheduled_at));
        }
        if outcome == Outcome::Success {
            self.last_success
                .get_or_create(&job(job_id))
                .set(epoch(finished_at));
        }
    }

    /// A `skipped` row the loop recorded (not a run's end).
    pub fn skipped_row(&self, job_id: &str, trigger: TriggerKind) {
        self.runs
            .get_or_create(&RunLabels {
                job: job_id.to_string(),
                outcome: Outcome::Skipped.as_str().to_string(),
                trigger: trigger.as_str().to_string(),
            })
            .inc();
    }

    /// `count` slots of the job did not run.
    pub fn missed(&self, job_id: &str, count: u64) {
        self.missed.get_or_create(&job(job_id)).inc_by(count);
    }

    pub fn loop_lag(&self, lag: std::time::Duration) {
        self.loop_lag.set(lag.as_secs_f64());
    }

    pub fn notify_failed(&self) {
        self.notify_failures.inc();
    }

    /// The text exposition, with the calendar's gauges brought up to `now`.
    pub fn encode(&self, config: &Config, now: DateTime<Utc>) -> String {
        let calendar = config.calendar();
        self.session_open
            .get_or_create(&ExchangeLabel {
                exchange: calendar.exchange().code().to_string(),
            })
            .set(i64::from(in_session(&calendar, now)));
        for j in config.jobs.iter().filter(|j| j.enabled) {
            if let Some(t) = last_slot_by(&j.trigger, &calendar, now) {
                self.last_expected.get_or_create(&job(&j.id)).set(epoch(t));
            }
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Whether the exchange is in session at `now`.
pub fn in_session(calendar: &Calendar, now: DateTime<Utc>) -> bool {
    let tz = calendar.tz();
    let local = now.with_timezone(&tz).naive_local();
    calendar
        .session(local.date())
        .is_some_and(|s| s.open <= local.time() && local.time() < s.close)
}

/// The last fire instant of `trigger` at or before `now` (looking back up to 400 days, in
/// growing steps: a frequent job's is found in the first).
pub fn last_slot_by(
    trigger: &crate::trigger::Trigger,
    calendar: &Calendar,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let end = now + chrono::Duration::nanoseconds(1);
    for hours in [1, 24, 4 * 24, 21 * 24, 400 * 24] {
        let from = now - chrono::Duration::hours(hours);
        if let Some(t) = trigger.fires_between(calendar, from, end).last() {
            return Some(*t);
        }
    }
    None
}
