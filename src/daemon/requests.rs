//! The control requests (`pause`, `resume`, `trigger`, `backfill`) and what of them is kept
//! across restarts.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use decide::{Action, JobState};

use super::*;

impl Dispatcher {
    /// Applies what a previous daemon kept: pauses, backfill queues, triggers not started.
    pub(super) fn restore(
        &mut self,
        jobs: &mut [JobState],
        kept: crate::control::Persisted,
        mut backfill: HashMap<String, Vec<DateTime<Utc>>>,
    ) {
        let now = Utc::now();
        for state in jobs.iter_mut() {
            let id = &state.job.id;
            if let Some(p) = kept.paused.get(id)
                && p.until.is_none_or(|u| u > now)
            {
                state.pause = Some(decide::Pause {
                    until: p.until,
                    gap: None,
                });
                tracing::info!(
                    "⏸️  {id} is paused (since {})",
                    p.since
                        .with_timezone(&self.calendar.tz())
                        .format("%Y-%m-%d %H:%M %Z")
                );
            }
            if let Some(slots) = backfill.remove(id)
                && !slots.is_empty()
            {
                tracing::info!("⏪ {id}: {} backfill slot(s) to go", slots.len());
                state.backfill = slots.into();
                if let Some(spans) = kept.backfill.get(id) {
                    self.backfill_spans.insert(id.clone(), spans.clone());
                }
            }
        }
        self.kept = crate::control::Persisted {
            paused: kept.paused,
            ..Default::default()
        };
        for job in kept.triggers {
            let reply = self.control(jobs, crate::control::Request::Trigger { job: job.clone() });
            tracing::info!(
                "▶️  {job}: the manual run asked for before the restart: {}",
                reply.message
            );
        }
        self.keep(jobs);
    }

    /// Saves the pauses, backfills and triggers when they changed.
    pub(super) fn keep(&mut self, jobs: &[JobState]) {
        let mut now = crate::control::Persisted::default();
        for state in jobs {
            let id = state.job.id.clone();
            if let Some(p) = &state.pause {
                let since = self.kept.paused.get(&id).map_or_else(Utc::now, |k| k.since);
                now.paused.insert(
                    id.clone(),
                    crate::control::Paused {
                        since,
                        until: p.until,
                    },
                );
            }
            if state.backfilling.is_some() || !state.backfill.is_empty() {
                if let Some(spans) = self.backfill_spans.get(&id) {
                    now.backfill.insert(id.clone(), spans.clone());
                }
            } else {
                self.backfill_spans.remove(&id);
            }
            if state
                .pending
                .iter()
                .any(|p| p.trigger == crate::history::TriggerKind::Manual)
            {
                now.triggers.push(id);
            }
        }
        if now != self.kept {
            self.saver.save(now.clone());
            self.kept = now;
        }
    }

    /// A control request from the CLI.
    pub(super) fn control(
        &mut self,
        jobs: &mut [JobState],
        req: crate::control::Request,
    ) -> crate::control::Reply {
        use crate::control::{Reply, Request};
        let now = Utc::now();
        let tz = self.calendar.tz();
        let Some(i) = jobs
            .iter()
            .position(|s| s.job.id == req.job() && !s.retired)
        else {
            return Reply {
                ok: false,
                message: match self.config.job(req.job()) {
                    Some(_) => format!("`{}` is disabled (`enabled = false`)", req.job()),
                    None => format!("no job `{}` in the running daemon's config", req.job()),
                },
            };
        };
        let job = jobs[i].job.id.clone();
        let ok = |message: String| Reply { ok: true, message };
        match req {
            // Taken by the loop before it comes here.
            Request::Reload => ok("reloading".to_string()),
            Request::Pause { until, .. } => {
                if until.is_some_and(|u| u <= now) {
                    return Reply {
                        ok: false,
                        message: "the pause would end in the past".to_string(),
                    };
                }
                let state = &mut jobs[i];
                let gap = state.pause.as_ref().and_then(|p| p.gap);
                state.pause = Some(decide::Pause { until, gap });
                let when = until.map_or_else(
                    || "until `resume`".to_string(),
                    |u| {
                        format!(
                            "until {}",
                            u.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z")
                        )
                    },
                );
                tracing::info!("⏸️  {job} paused {when}");
                ok(format!("{job} paused {when}"))
            }
            Request::Resume { .. } => {
                let was = jobs[i].pause.take().is_some();
                self.pause_rows.remove(&job);
                if was {
                    tracing::info!("▶️  {job} resumed");
                    let actions: Vec<Action> = decide::next_backfill(&mut jobs[i], now)
                        .into_iter()
                        .collect();
                    self.dispatch(&jobs[i], actions);
                    ok(format!("{job} resumed: its next slot fires as usual"))
                } else {
                    ok(format!("{job} was not paused"))
                }
            }
            Request::Trigger { .. } => {
                if jobs[i].pause.is_some() {
                    return Reply {
                        ok: false,
                        message: format!("{job} is paused: `resume` it first"),
                    };
                }
                let (actions, message) = decide::trigger(&mut jobs[i], now);
                tracing::info!("▶️  {job}: manual run asked for: {message}");
                self.dispatch(&jobs[i], actions);
                ok(format!("{job}: {message}"))
            }
            Request::Backfill { slots, range, .. } => {
                self.backfill(&mut jobs[i], slots, range, now)
            }
        }
    }

    /// `backfill`: past slots queued, run one at a time when the job is idle.
    fn backfill(
        &mut self,
        state: &mut JobState,
        slots: Vec<DateTime<Utc>>,
        range: crate::control::Span,
        now: DateTime<Utc>,
    ) -> crate::control::Reply {
        use crate::control::Reply;
        let job = state.job.id.clone();
        let ok = |message: String| Reply { ok: true, message };
        if slots.len() > crate::control::MAX_BACKFILL {
            return Reply {
                ok: false,
                message: format!(
                    "{} slots: at most {} at a time",
                    slots.len(),
                    crate::control::MAX_BACKFILL
                ),
            };
        }
        // Merged as sets: a long queue costs n log n here, never n².
        let mut queue: std::collections::BTreeSet<DateTime<Utc>> =
            state.backfill.drain(..).collect();
        let before = queue.len();
        queue.extend(
            slots
                .into_iter()
                .filter(|s| *s <= now && state.backfilling != Some(*s)),
        );
        let added = queue.len() - before;
        state.backfill = queue.into_iter().collect();
        self.backfill_spans
            .entry(job.clone())
            .or_default()
            .push(range);
        tracing::info!(
            "⏪ {job}: {} to backfill ({} in all)",
            crate::fmt::n(added, "slot"),
            state.backfill.len() + usize::from(state.backfilling.is_some())
        );
        let actions: Vec<Action> = decide::next_backfill(state, now).into_iter().collect();
        self.dispatch(state, actions);
        ok(format!(
            "{job}: {} queued for backfill, run one at a time when the job is idle",
            crate::fmt::n(added, "slot")
        ))
    }
}
