//! A reload (SIGHUP, `reload`): the new config read off the loop, then applied to the jobs.

use std::sync::Arc;

use chrono::Utc;

use crate::config::Config;
use crate::interpreter::Interpreter;
use decide::JobState;

use super::*;

impl Dispatcher {
    /// SIGHUP or `reload` (`asked_by` says which): reads the config in a task; firing goes on
    /// with the old one meanwhile.
    pub(super) fn reload(&mut self, asked_by: &str) {
        let path = self.config.file.clone();
        if let Some(again) = self.reloading.as_mut() {
            *again = true;
            tracing::info!("🔄 {asked_by}: a reload is in progress; reloading again after it");
            return;
        }
        tracing::info!("🔄 {asked_by}: reloading {}", path.display());
        self.reloading = Some(false);
        tokio::spawn(chores::reload(
            path,
            self.chores.clone(),
            Arc::clone(&self.env.forks),
        ));
    }

    /// A valid new config takes effect after the last slot each job has dealt with.
    pub(super) fn apply_reload(
        &mut self,
        jobs: &mut Vec<JobState>,
        new: Config,
        interpreter: Interpreter,
    ) {
        let old = &self.config.scheduler;
        if new.scheduler.log_dir != old.log_dir || new.scheduler.history != old.history {
            tracing::warn!(
                "⚠️  `scheduler.log_dir` and `scheduler.history` change only with a restart; keeping {} and {}",
                old.log_dir.display(),
                old.history.display()
            );
        }
        let mut new = new;
        new.scheduler.log_dir = old.log_dir.clone();
        new.scheduler.history = old.history.clone();
        let new = Arc::new(new);
        let calendar = new.calendar();
        let now = Utc::now();
        let mut next_jobs = Vec::new();
        for job in new.jobs.iter().filter(|j| j.enabled) {
            let job = Arc::new(job.clone());
            let state = match jobs.iter().position(|s| s.job.id == job.id) {
                Some(i) => {
                    let mut state = jobs.remove(i);
                    state.reconfigure(job, &calendar);
                    state
                }
                None => JobState::new(job, &calendar, None, now),
            };
            next_jobs.push(state);
        }
        // Jobs no longer configured (or now disabled) fire no more; one still running is kept
        // until it ends.
        let (disabled, removed): (Vec<String>, Vec<String>) = jobs
            .iter()
            .map(|s| s.job.id.clone())
            .partition(|id| new.job(id).is_some_and(|j| !j.enabled));
        for mut state in jobs.drain(..) {
            if state.running.is_some() {
                state.next = None;
                state.pending.clear();
                state.retry = None;
                state.retired = true;
                next_jobs.push(state);
            }
        }
        *jobs = next_jobs;
        self.env = Arc::new(self.env.with_config(Arc::clone(&new), interpreter.path));
        if let Some(web) = &self.web {
            web.set_config(Arc::clone(&new));
        }
        self.config = new;
        self.calendar = calendar;
        tracing::info!(
            "✅ config reloaded: {}{}",
            crate::fmt::n(self.config.jobs.len(), "job"),
            [("removed", &removed), ("disabled", &disabled)]
                .iter()
                .filter(|(_, ids)| !ids.is_empty())
                .map(|(what, ids)| format!("; {what}: {}", ids.join(", ")))
                .collect::<String>()
        );
    }
}
