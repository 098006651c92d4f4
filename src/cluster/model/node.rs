//! A daemon's own duties: its session, lease and rejoin; reaping, releasing and starting its
//! run; and the trust deadline (the sweep is in `sweep`).

use super::config::Policy;
use super::protocol::{Log, Protocol};
use super::state::{
    DUTY_ALARM, DUTY_BEAT, DUTY_REAP, DUTY_RELEASE, DUTY_START, DUTY_WATCH, Exec, HIT_FREEZE,
    HIT_PAUSE, LOST_IN_LEASE, LOST_LATE, LOST_NOT, MAX_EXECS, NEVER, NodeRow, Pend, Phase, Proc,
    SlotRow, SlotState, State, Status, name,
};

impl Protocol {
    // ---- helpers that change the state ----------------------------------------------------------

    /// Starts an execution of the job (the oracle records it) and returns its index.
    pub(super) fn new_exec(&self, s: &mut State, n: usize, slot: u8, fence: u8) -> u8 {
        let k = s.n_execs as usize;
        assert!(
            k < MAX_EXECS,
            "the model recorded more than {MAX_EXECS} executions"
        );
        s.execs[k] = Exec {
            slot,
            node: n as u8,
            fence,
            row: fence,
            start: s.now,
            end: NEVER,
            status: Status::Running,
            left: self.cfg.duration,
            lost_lease: false,
            unseen: false,
            signalled: false,
        };
        s.n_execs += 1;
        k as u8
    }

    /// Kills a running execution now. One whose job has returned but whose daemon has not
    /// reaped it yet is only signalled on its way out: it completed.
    pub(super) fn kill_exec(&self, s: &mut State, k: usize) {
        match s.execs[k].status {
            Status::Running => {
                s.execs[k].status = Status::Killed;
                s.execs[k].end = s.now;
            }
            Status::Completed => s.execs[k].signalled = true,
            Status::Killed => {}
        }
    }

    /// Whether the daemon judges the execution completed: its job returned (the bridge said
    /// so), however its process ended after; with A14, only if it was not signalled.
    pub(super) fn judged_completed(&self, s: &State, k: usize) -> bool {
        let e = s.execs[k];
        e.status == Status::Completed
            && !(self.cfg.bugs.a14_kill_after_return_is_a_crash && e.signalled)
    }

    /// Renews the lease (a heartbeat). No row (declared dead): the node kills its run, whose
    /// result is stale, and rejoins as a new incarnation.
    pub(super) fn renew(&self, s: &mut State, n: usize, log: &mut Log) {
        let epoch = s.nodes[n].epoch;
        let row = s.db.rows[n];
        if row.epoch == epoch && row.alive {
            s.db.rows[n].lease_until = s.now + self.cfg.lease;
            self.trusted(s, n);
        } else {
            log.say(s.now, || {
                format!("{}: renewal finds epoch {epoch} declared dead", name(n))
            });
            self.rejoin_dead(s, n, log);
        }
    }

    /// Declared dead: the node rejoins as a new incarnation. As v2 specifies it, it kills its
    /// run (the result is stale). With `settle_before_rejoin` it first reaps a run that has
    /// completed and writes what it owes; with `rejoin_keeps_untaken_run` it kills its run
    /// only if the slot was taken over (its fence moved): otherwise the new epoch adopts the
    /// slot's row, in the rejoin's transaction, and the run goes on (a degraded run has no
    /// claim, so nobody can take it over).
    pub(super) fn rejoin_dead(&self, s: &mut State, n: usize, log: &mut Log) {
        let rules = self.cfg.rules;
        let old = s.nodes[n].epoch;
        if rules.settle_before_rejoin {
            let r = s.nodes[n].run;
            if r.phase == Phase::Running && self.judged_completed(s, r.exec as usize) {
                s.nodes[n].pending[r.slot as usize] = if r.fence == 0 {
                    Pend::Upload {
                        exec: r.exec,
                        completed: true,
                    }
                } else {
                    Pend::Release {
                        fence: r.fence,
                        completed: true,
                    }
                };
                s.nodes[n].run.phase = Phase::Idle;
                log.say(s.now, || {
                    format!(
                        "{}: reaps its completed run of slot {} first",
                        name(n),
                        r.slot
                    )
                });
            }
        }
        let r = s.nodes[n].run;
        let untaken = r.fence == 0 || s.db.slots[r.slot as usize].fence == r.fence;
        let keep = r.phase != Phase::Idle && untaken && rules.rejoin_keeps_untaken_run;
        if !keep {
            if s.nodes[n].run.phase == Phase::Running {
                s.nodes[n].run.for_lease = true;
            }
            self.drop_run(s, n);
            if rules.settle_before_rejoin && s.nodes[n].run.phase == Phase::Running {
                // Killed just now: left to the sweep (taken over if still valid).
                s.nodes[n].run.phase = Phase::Idle;
            }
        }
        if rules.settle_before_rejoin {
            self.flush(s, n, log);
        }
        log.say(s.now, || {
            if keep {
                format!(
                    "{}: keeps its run of slot {} (not taken over), rejoins",
                    name(n),
                    r.slot
                )
            } else {
                format!("{}: kills its run, rejoins", name(n))
            }
        });
        self.join(s, n, log);
        let row = s.db.slots[r.slot as usize];
        if keep
            && r.fence != 0
            && row.fence == r.fence
            && row.owner as usize == n
            && row.epoch == old
            && matches!(row.state, SlotState::Live | SlotState::Orphan)
        {
            s.db.slots[r.slot as usize].epoch = s.nodes[n].epoch;
        }
    }

    /// A renewal succeeded: the trust deadline moves, the clock is measured.
    pub(super) fn trusted(&self, s: &mut State, n: usize) {
        let node = &mut s.nodes[n];
        node.trust_until = s.now + self.cfg.trust();
        node.lapse_said = false;
        node.measured = node.offset;
        node.lost = LOST_NOT;
    }

    /// The node finds the database unreachable (a heartbeat or a claim fails): it notes
    /// whether its lease still held then (by its monotonic clock: the lease runs from the
    /// last renewal's send), unless it already has since that renewal.
    pub(super) fn found_unreachable(&self, s: &mut State, n: usize) {
        let node = &mut s.nodes[n];
        if node.lost != LOST_NOT {
            return;
        }
        let renewed = node.trust_until.saturating_sub(self.cfg.trust());
        let ran_out = node.epoch != 0 && s.now >= renewed + self.cfg.lease;
        node.lost = if ran_out { LOST_LATE } else { LOST_IN_LEASE };
    }

    /// The node's run belongs to others now: a running job is killed (it is reaped, and its
    /// release then finds the fence moved or marks the slot abandoned); a claim not yet
    /// started is forgotten (the sweep settles it).
    pub(super) fn drop_run(&self, s: &mut State, n: usize) {
        let r = s.nodes[n].run;
        match r.phase {
            Phase::Running => self.kill_exec(s, r.exec as usize),
            Phase::Claimed => s.nodes[n].run.phase = Phase::Idle,
            Phase::Idle => {}
        }
    }

    /// Joins with a new epoch: row alive, lease from now, the session lock taken.
    pub(super) fn join(&self, s: &mut State, n: usize, log: &mut Log) {
        let epoch = s.db.rows[n].epoch + 1;
        s.db.rows[n] = NodeRow {
            epoch,
            alive: true,
            lease_until: s.now + self.cfg.lease,
        };
        s.db.locks[n] = epoch;
        s.nodes[n].epoch = epoch;
        if self.cfg.policy == Policy::Primary && n == 0 {
            let first = self
                .slots()
                .find(|&i| self.cfg.try_time(0, i) >= i16::from(s.now))
                .unwrap_or(self.cfg.slots as usize);
            s.nodes[n].alone_from = first as u8;
        }
        self.trusted(s, n);
        log.say(s.now, || format!("{}: joins as epoch {epoch}", name(n)));
    }

    /// Gets a working session if the database can be reached: joins (after a start), or
    /// reconnects, takes its lock again and renews (which rejoins if it was declared dead).
    pub(super) fn ensure_session(&self, s: &mut State, n: usize, log: &mut Log) -> bool {
        if !self.reachable(s, n) {
            return false;
        }
        s.nodes[n].isolated = false;
        if self.cfg.rules.validity_by_db_clock {
            // Every statement returns the database's `now()`: the offset is measured again.
            s.nodes[n].measured = s.nodes[n].offset;
        }
        if s.nodes[n].epoch == 0 {
            self.join(s, n, log);
        } else if s.db.locks[n] != s.nodes[n].epoch {
            s.db.locks[n] = s.nodes[n].epoch;
            log.say(s.now, || format!("{}: reconnects, takes its lock", name(n)));
            self.renew(s, n, log);
        }
        true
    }

    /// The node's row is alive with its epoch (the liveness guard of every decisive write).
    pub(super) fn alive(&self, s: &State, n: usize) -> bool {
        let row = s.db.rows[n];
        row.alive && row.epoch == s.nodes[n].epoch
    }

    /// Its lease is valid by the database's clock.
    pub(super) fn lease_valid(&self, s: &State, n: usize) -> bool {
        s.db.rows[n].lease_until > s.now
    }

    /// Writes slot `i`'s row for node `n` with a new fence (the sequence's next value).
    pub(super) fn write_row(&self, s: &mut State, i: usize, n: usize, state: SlotState) -> u8 {
        s.db.fence += 1;
        s.db.slots[i] = SlotRow {
            state,
            owner: n as u8,
            epoch: s.nodes[n].epoch,
            fence: s.db.fence,
        };
        s.db.fence
    }

    /// A holder of the live claim is paused or frozen, or was while it held it.
    pub(super) fn holder_faulty(&self, s: &State, o: usize, j: usize) -> bool {
        matches!(s.nodes[o].proc, Proc::Paused | Proc::Frozen)
            || s.ghost[j].hit & (HIT_PAUSE | HIT_FREEZE) != 0
    }

    // ---- the actions ----------------------------------------------------------------------------

    /// The daemon sees its job process has ended: it owes the database the release (`done`
    /// if the job completed, `abandoned` if it was killed), or, for a degraded run, its
    /// journal row. With A9, a release that cannot be written now is lost.
    pub(super) fn reap(&self, s: &mut State, n: usize, log: &mut Log) {
        s.nodes[n].done |= DUTY_REAP;
        let r = s.nodes[n].run;
        let completed = self.judged_completed(s, r.exec as usize);
        let slot = r.slot as usize;
        s.nodes[n].run.phase = Phase::Idle;
        let what = if completed { "completed" } else { "was killed" };
        if r.fence == 0 {
            s.nodes[n].pending[slot] = Pend::Upload {
                exec: r.exec,
                completed,
            };
            log.say(s.now, || {
                format!(
                    "{}: reaps its degraded run of slot {slot} ({what})",
                    name(n)
                )
            });
        } else if self.cfg.bugs.a9_release_dropped && !self.reachable(s, n) {
            log.say(s.now, || {
                format!(
                    "{}: reaps slot {slot} ({what}); the release fails and is dropped (A9)",
                    name(n)
                )
            });
        } else {
            // Ended unfinished for the lease (its trust lapsed, or its incarnation ended, since
            // it started): the slot is given back, and the sweep runs it again while valid.
            s.nodes[n].pending[slot] = if !completed && r.for_lease {
                Pend::Return { fence: r.fence }
            } else {
                Pend::Release {
                    fence: r.fence,
                    completed,
                }
            };
            log.say(s.now, || {
                format!(
                    "{}: reaps slot {slot} (fence {}, {what}{})",
                    name(n),
                    r.fence,
                    if !completed && r.for_lease {
                        ", for the lease: gives it back"
                    } else {
                        ""
                    }
                )
            });
        }
    }

    /// Writes the releases (by fence, whatever the incarnation) and degraded journal rows.
    pub(super) fn release(&self, s: &mut State, n: usize, log: &mut Log) {
        s.nodes[n].done |= DUTY_RELEASE;
        if self.ensure_session(s, n, log) {
            self.flush(s, n, log);
        }
    }

    /// Writes everything the node owes (its session works).
    pub(super) fn flush(&self, s: &mut State, n: usize, log: &mut Log) {
        for j in self.slots() {
            let row = s.db.slots[j];
            match s.nodes[n].pending[j] {
                Pend::None => continue,
                Pend::Release { fence, completed } => {
                    let to = if completed {
                        SlotState::Done
                    } else {
                        SlotState::Abandoned
                    };
                    let matches = row.fence == fence
                        && match row.state {
                            SlotState::Live | SlotState::Orphan => true,
                            // A run that completed after its slot was abandoned (its owner was
                            // paused past the slot's validity) is recorded as what it was.
                            SlotState::Abandoned => completed,
                            _ => false,
                        };
                    if matches {
                        s.db.slots[j].state = to;
                    }
                    log.say(s.now, || {
                        if matches {
                            format!("{}: releases slot {j} (fence {fence}) as {to:?}", name(n))
                        } else {
                            format!(
                                "{}: release of slot {j} (fence {fence}) is stale: row is {:?} fence {}",
                                name(n),
                                row.state,
                                row.fence
                            )
                        }
                    });
                }
                Pend::Return { fence } => {
                    let matches = row.fence == fence
                        && matches!(row.state, SlotState::Live | SlotState::Orphan);
                    if matches {
                        s.db.slots[j].state = SlotState::Returned;
                    }
                    log.say(s.now, || {
                        if matches {
                            format!("{}: gives slot {j} (fence {fence}) back", name(n))
                        } else {
                            format!(
                                "{}: giving slot {j} (fence {fence}) back is stale: row is {:?} fence {}",
                                name(n),
                                row.state,
                                row.fence
                            )
                        }
                    });
                }
                Pend::Upload { exec, completed } => {
                    if completed && row.state == SlotState::Empty {
                        let fence = self.write_row(s, j, n, SlotState::Done);
                        s.execs[exec as usize].row = fence;
                        log.say(s.now, || {
                            format!(
                                "{}: uploads its degraded run of slot {j}: row done (fence {fence})",
                                name(n)
                            )
                        });
                    } else {
                        log.say(s.now, || {
                            format!(
                                "{}: uploads its degraded run of slot {j} (row already {:?})",
                                name(n),
                                row.state
                            )
                        });
                    }
                }
            }
            s.nodes[n].pending[j] = Pend::None;
        }
    }

    /// A heartbeat: (re)connects if it must, renews the lease, and sweeps once the server has
    /// been up for a lease (nobody could renew while it was down).
    pub(super) fn beat(&self, s: &mut State, n: usize, log: &mut Log) {
        s.nodes[n].done |= DUTY_BEAT;
        let had_session = self.in_session(s, n);
        if !self.ensure_session(s, n, log) {
            return;
        }
        if had_session {
            self.renew(s, n, log);
        }
        if self.db_settled(s) {
            self.sweep(s, n, log);
        }
    }

    /// Starts the claimed (or degraded) run at the slot's instant by the node's clock, less its
    /// measured lead over the database's; gives it up past the slot's validity.
    pub(super) fn start(&self, s: &mut State, n: usize, log: &mut Log) {
        s.nodes[n].done |= DUTY_START;
        let r = s.nodes[n].run;
        let slot = r.slot as usize;
        if self.judged_now(s, n, false) >= i16::from(self.cfg.validity(slot)) {
            s.nodes[n].run.phase = Phase::Idle;
            if r.fence != 0 {
                s.nodes[n].pending[slot] = Pend::Release {
                    fence: r.fence,
                    completed: false,
                };
            }
            log.say(s.now, || {
                format!("{}: too late to start slot {slot}: gives it up", name(n))
            });
            return;
        }
        if self.cfg.policy == Policy::Skip
            && self.cfg.rules.skip_needs_trust
            && r.fence != 0
            && s.now >= s.nodes[n].trust_until
        {
            if self.in_session(s, n) {
                log.say(s.now, || {
                    format!("{}: trust lapsed: renews before it starts", name(n))
                });
                self.renew(s, n, log);
            }
            if s.nodes[n].run.phase != Phase::Claimed {
                return;
            }
            if s.now >= s.nodes[n].trust_until {
                s.nodes[n].run.phase = Phase::Idle;
                s.nodes[n].pending[slot] = Pend::Release {
                    fence: r.fence,
                    completed: false,
                };
                log.say(s.now, || {
                    format!(
                        "{}: trust lapsed: does not start slot {slot} (skip)",
                        name(n)
                    )
                });
                return;
            }
        }
        let k = self.new_exec(s, n, r.slot, r.fence);
        s.nodes[n].run.phase = Phase::Running;
        s.nodes[n].run.exec = k;
        log.say(s.now, || {
            if r.fence == 0 {
                format!("{}: starts slot {slot} DEGRADED (exec #{k})", name(n))
            } else {
                format!(
                    "{}: starts slot {slot} with fence {} (exec #{k})",
                    name(n),
                    r.fence
                )
            }
        });
    }

    /// The trust watcher (a task of its own in the daemon) sees the deadline pass and queues
    /// "trust lost" for the daemon's loop.
    pub(super) fn watch(&self, s: &mut State, n: usize, log: &mut Log) {
        s.nodes[n].done |= DUTY_WATCH;
        s.nodes[n].lapse_said = true;
        s.nodes[n].alarm = true;
        if s.nodes[n].run.phase == Phase::Running {
            s.nodes[n].run.for_lease = true;
        }
        log.say(s.now, || {
            format!("{}: trust deadline passed: queues 'trust lost'", name(n))
        });
    }

    /// "Trust lost": a `skip` job's run ends (it must not run without the lease); `run` and
    /// `primary` runs go on. v2 ignores the event if the lease was renewed since (A10).
    pub(super) fn alarm(&self, s: &mut State, n: usize, log: &mut Log) {
        s.nodes[n].done |= DUTY_ALARM;
        s.nodes[n].alarm = false;
        if !self.cfg.bugs.a10_late_trust_event && s.now < s.nodes[n].trust_until {
            log.say(s.now, || {
                format!(
                    "{}: 'trust lost' is stale (renewed since): ignored",
                    name(n)
                )
            });
            return;
        }
        if self.cfg.policy != Policy::Skip {
            log.say(s.now, || {
                format!(
                    "{}: 'trust lost': its run goes on ({:?})",
                    name(n),
                    self.cfg.policy
                )
            });
            return;
        }
        let r = s.nodes[n].run;
        match r.phase {
            Phase::Running => {
                self.kill_exec(s, r.exec as usize);
                log.say(s.now, || {
                    format!(
                        "{}: 'trust lost': kills its run of slot {}",
                        name(n),
                        r.slot
                    )
                });
            }
            Phase::Claimed => {
                s.nodes[n].run.phase = Phase::Idle;
                if r.fence != 0 {
                    s.nodes[n].pending[r.slot as usize] = Pend::Release {
                        fence: r.fence,
                        completed: false,
                    };
                }
                log.say(s.now, || {
                    format!(
                        "{}: 'trust lost': cancels its claim of slot {}",
                        name(n),
                        r.slot
                    )
                });
            }
            Phase::Idle => {
                log.say(s.now, || {
                    format!("{}: 'trust lost': nothing running", name(n))
                });
            }
        }
    }
}
