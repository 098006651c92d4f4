//! Which run ends are worth telling someone about: a pure function of each job's alert state and
//! the run's outcome, tested in a table.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Event;
use crate::history::Outcome;

/// Per job: is it failing, and when was it last alerted for it.
#[derive(Debug, Default, Clone)]
pub struct Alerts {
    jobs: HashMap<String, JobAlert>,
}

#[derive(Debug, Default, Clone, Copy)]
struct JobAlert {
    failing: bool,
    last_alert: Option<DateTime<Utc>>,
}

/// Whether an outcome is a failure worth an alert.
pub fn is_failure(outcome: Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Failed | Outcome::Timeout | Outcome::Crashed | Outcome::Abandoned
    )
}

impl Alerts {
    /// The job's last run (from the history, at start) failed: a new failure is not news until it
    /// recovers, and its recovery is.
    pub fn seed_failing(&mut self, job: &str, since: DateTime<Utc>) {
        self.jobs.insert(
            job.to_string(),
            JobAlert {
                failing: true,
                last_alert: Some(since),
            },
        );
    }

    /// A run of `job` ended for good (no retry follows) with `outcome` at `now`: the event to
    /// send, if any. After a `failure` the job stays quiet until it recovers, or until `repeat`
    /// has passed since its last alert.
    pub fn ended(
        &mut self,
        job: &str,
        outcome: Outcome,
        now: DateTime<Utc>,
        repeat: Option<Duration>,
    ) -> Option<Event> {
        let state = self.jobs.entry(job.to_string()).or_default();
        if outcome == Outcome::Success {
            let was = state.failing;
            *state = JobAlert::default();
            return was.then_some(Event::Recovered);
        }
        if !is_failure(outcome) {
            return None;
        }
        let due = match (state.failing, state.last_alert, repeat) {
            (false, _, _) => true,
            (true, Some(last), Some(every)) => {
                now - last >= chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX)
            }
            (true, None, _) => true,
            (true, Some(_), None) => false,
        };
        state.failing = true;
        if due {
            state.last_alert = Some(now);
            Some(Event::Failure)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    fn at(min: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + min * 60, 0).unwrap_or_default()
    }

    #[test]
    fn alert_table() {
        let hour = Some(Duration::from_secs(3600));
        // (outcomes in order, minutes, repeat, events expected)
        type Case<'a> = (&'a [Outcome], Option<Duration>, &'a [Option<Event>]);
        let cases: &[Case] = &[
            (&[Success, Success], None, &[None, None]),
            (
                &[Failed, Failed, Success, Success],
                None,
                &[Some(Event::Failure), None, Some(Event::Recovered), None],
            ),
            (
                &[Timeout, Crashed, Abandoned, Success],
                None,
                &[Some(Event::Failure), None, None, Some(Event::Recovered)],
            ),
            // Cancelled and skipped runs neither fail nor recover a job.
            (
                &[Cancelled, Skipped, Failed, Cancelled, Success],
                None,
                &[
                    None,
                    None,
                    Some(Event::Failure),
                    None,
                    Some(Event::Recovered),
                ],
            ),
            // With `repeat = 1h` and a run every 15 minutes, the fifth failure alerts again.
            (
                &[Failed, Failed, Failed, Failed, Failed, Failed],
                hour,
                &[
                    Some(Event::Failure),
                    None,
                    None,
                    None,
                    Some(Event::Failure),
                    None,
                ],
            ),
            // After a recovery, the next failure is news at once.
            (
                &[Failed, Success, Failed],
                hour,
                &[
                    Some(Event::Failure),
                    Some(Event::Recovered),
                    Some(Event::Failure),
                ],
            ),
        ];
        for (outcomes, repeat, expected) in cases {
            let mut alerts = Alerts::default();
            let got: Vec<Option<Event>> = outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| alerts.ended("j", *o, at(15 * i as i64), *repeat))
                .collect();
            assert_eq!(&got, expected, "{outcomes:?} repeat {repeat:?}");
        }
    }

    #[test]
    fn a_job_failing_at_start_is_quiet_until_it_recovers() {
        let mut alerts = Alerts::default();
        alerts.seed_failing("j", at(0));
        assert_eq!(alerts.ended("j", Failed, at(15), None), None);
        assert_eq!(
            alerts.ended("j", Success, at(30), None),
            Some(Event::Recovered)
        );
        // Another job is not affected.
        assert_eq!(
            alerts.ended("k", Failed, at(30), None),
            Some(Event::Failure)
        );
    }
}
