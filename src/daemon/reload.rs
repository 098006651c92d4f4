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
        let diff = JobsDiff::between(&self.config.jobs, &new.jobs);
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
            diff.summary()
        );
    }
}

/// What a reload changes in the jobs, by id: pure, from the old and the new job lists.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct JobsDiff {
    /// Enabled now, and not before (new, or enabled again).
    pub(super) added: Vec<String>,
    /// Enabled before and now, defined otherwise.
    pub(super) changed: Vec<String>,
    /// Enabled before, gone now.
    pub(super) removed: Vec<String>,
    /// Enabled before, there but disabled now.
    pub(super) disabled: Vec<String>,
}

impl JobsDiff {
    pub(super) fn between(old: &[crate::config::Job], new: &[crate::config::Job]) -> JobsDiff {
        let enabled = |jobs: &[crate::config::Job], id: &str| {
            jobs.iter().find(|j| j.id == id && j.enabled).cloned()
        };
        let mut diff = JobsDiff::default();
        for job in new.iter().filter(|j| j.enabled) {
            match enabled(old, &job.id) {
                None => diff.added.push(job.id.clone()),
                // Every key of the definition (its debug form holds them all).
                Some(before) if format!("{before:?}") != format!("{job:?}") => {
                    diff.changed.push(job.id.clone())
                }
                Some(_) => {}
            }
        }
        for job in old.iter().filter(|j| j.enabled) {
            match new.iter().find(|j| j.id == job.id) {
                None => diff.removed.push(job.id.clone()),
                Some(now) if !now.enabled => diff.disabled.push(job.id.clone()),
                Some(_) => {}
            }
        }
        diff
    }

    /// `; added: a; changed: b; …` for the reload's log line (empty when nothing changed).
    pub(super) fn summary(&self) -> String {
        [
            ("added", &self.added),
            ("changed", &self.changed),
            ("removed", &self.removed),
            ("disabled", &self.disabled),
        ]
        .iter()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(what, ids)| format!("; {what}: {}", ids.join(", ")))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(src: &str) -> Vec<crate::config::Job> {
        Config::parse(std::path::Path::new("/p/config/c.toml"), src)
            .expect("config")
            .jobs
    }

    fn job(id: &str, schedule: &str, enabled: bool) -> String {
        format!(
            "[jobs.{id}]\nentry = \"m:f\"\nschedule = \"{schedule}\"\nmarket_hours = false\nenabled = {enabled}\n"
        )
    }

    /// Each kind of change, alone and together.
    #[test]
    fn a_reload_says_what_it_adds_changes_removes_and_disables() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = job("a", "0 * * * * *", true);
        let a2 = job("a", "30 * * * * *", true);
        let b = job("b", "0 * * * * *", true);
        let b_off = job("b", "0 * * * * *", false);
        let c = job("c", "0 * * * * *", true);
        // (old, new, added, changed, removed, disabled)
        type Row<'a> = (
            String,
            String,
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
        );
        let table: Vec<Row> = vec![
            (a.clone(), a.clone(), &[], &[], &[], &[]),
            (a.clone(), a.clone() + &c, &["c"], &[], &[], &[]),
            (a.clone(), a2.clone(), &[], &["a"], &[], &[]),
            (a.clone() + &c, a.clone(), &[], &[], &["c"], &[]),
            (a.clone() + &b, a.clone() + &b_off, &[], &[], &[], &["b"]),
            (a.clone() + &b_off, a.clone() + &b, &["b"], &[], &[], &[]),
            (
                a.clone() + &b,
                a2.clone() + &b_off + &c,
                &["c"],
                &["a"],
                &[],
                &["b"],
            ),
        ];
        for (old, new, added, changed, removed, disabled) in table {
            let diff = JobsDiff::between(&jobs(&old), &jobs(&new));
            let want = JobsDiff {
                added: ids(added),
                changed: ids(changed),
                removed: ids(removed),
                disabled: ids(disabled),
            };
            assert_eq!(diff, want, "{old}\n→\n{new}");
        }
        let diff = JobsDiff::between(&jobs(&(a.clone() + &b)), &jobs(&(a2 + &b_off + &c)));
        assert_eq!(diff.summary(), "; added: c; changed: a; disabled: b");
    }
}
