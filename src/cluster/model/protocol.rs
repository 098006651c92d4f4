//! The model's core: the protocol under one configuration, which actions are enabled in a
//! state, and the checker's interface.
//!
//! Time is discrete. The database's clock is the global tick `now`; a node's wall clock is
//! `now + offset` (a forward step sets the offset). Within a tick, every live daemon has duties
//! (reap a finished run, write its releases, renew its lease, watch its trust deadline, start a
//! claimed run, evaluate the next slot). Each is one atomic action, and the checker tries every
//! order between nodes, and between the duties of one node where the daemon itself does not
//! fix the order. Time moves on (`Tick`) only once no live daemon has a duty left: a daemon
//! that is up acts within the tick. Faults and heals are actions too, limited by a budget.
//!
//! One job, with `overlap = "skip"`, slots at `first + i × period` for `i < slots`. A slot is
//! valid (may be claimed, started or taken over) until the next slot.

use super::config::{Config, Policy};
use super::state::{
    Action, DUTY_BEAT, DUTY_SLOT, MAX_NODES, MAX_SLOTS, Pend, Phase, Proc, SlotState, State, Status,
};

/// Trace lines, collected only when a trace is printed.
pub(super) struct Log<'a>(pub(super) Option<&'a mut Vec<String>>);

impl Log<'_> {
    /// Adds a line, stamped with the tick, when a trace is being printed.
    pub(super) fn say(&mut self, now: u8, line: impl FnOnce() -> String) {
        if let Some(lines) = self.0.as_mut() {
            lines.push(format!("t={now:<2} {}", line()));
        }
    }
}

/// The protocol under one configuration: the model the checker explores.
pub(super) struct Protocol {
    pub(super) cfg: Config,
}

impl Protocol {
    /// The model of `cfg` (whose parameters must fit the packed state).
    pub(super) fn new(cfg: Config) -> Protocol {
        assert!(cfg.nodes >= 1 && cfg.nodes as usize <= MAX_NODES);
        assert!(cfg.slots >= 1 && cfg.slots as usize <= MAX_SLOTS);
        assert!(cfg.lease >= 3 * cfg.heartbeat, "lease >= 3 x heartbeat");
        assert!(cfg.standby_delay * (cfg.nodes - 1) < cfg.period);
        assert!(cfg.first >= 1, "slot 0 comes after the start");
        // The packed hash (see `Hash for State`) needs these ranges.
        assert!(cfg.horizon() < 120 && cfg.lease < 120);
        assert!(cfg.duration < 32 && cfg.clock_step < 32);
        Protocol { cfg }
    }

    /// The configured nodes.
    pub(super) fn nodes(&self) -> std::ops::Range<usize> {
        0..self.cfg.nodes as usize
    }

    /// The configured slots.
    pub(super) fn slots(&self) -> std::ops::Range<usize> {
        0..self.cfg.slots as usize
    }

    /// The node can reach the database (it may still have to reconnect).
    pub(super) fn reachable(&self, s: &State, n: usize) -> bool {
        s.db.up && s.nodes[n].connected
    }

    /// The node's session works: reachable, joined, holding its lock.
    pub(super) fn in_session(&self, s: &State, n: usize) -> bool {
        self.reachable(s, n) && s.nodes[n].epoch != 0 && s.db.locks[n] == s.nodes[n].epoch
    }

    /// The node's wall clock.
    pub(super) fn local(&self, s: &State, n: usize) -> i16 {
        i16::from(s.now) + i16::from(s.nodes[n].offset)
    }

    /// What the node takes for the database's clock when it judges whether a slot is over:
    /// with `validity_by_db_clock`, the database's own clock while it can reach it, else its
    /// wall clock less the offset measured at its last statement; without, its wall clock.
    pub(super) fn judged_now(&self, s: &State, n: usize, reachable: bool) -> i16 {
        if !self.cfg.rules.validity_by_db_clock {
            self.local(s, n)
        } else if reachable {
            i16::from(s.now)
        } else {
            self.local(s, n) - i16::from(s.nodes[n].measured)
        }
    }

    /// The server has been up for at least a lease: a missing session lock means the node is
    /// gone, and an expired lease means it is dead.
    pub(super) fn db_settled(&self, s: &State) -> bool {
        s.db.age >= self.cfg.lease
    }

    /// A node's missing session lock counts as absence now: the server has been up for a
    /// lease (v2), or for a reconnection interval (`prompt_absence`).
    pub(super) fn absence_counts(&self, s: &State) -> bool {
        if self.cfg.rules.prompt_absence {
            s.db.age >= self.cfg.heartbeat
        } else {
            self.db_settled(s)
        }
    }

    /// Whether an expired lease counts as death now (`settled_liveness`).
    pub(super) fn expiry_counts(&self, s: &State) -> bool {
        !self.cfg.rules.settled_liveness || self.db_settled(s)
    }

    /// The job's live claim, if any (the unique index allows one).
    pub(super) fn live_slot(&self, s: &State) -> Option<usize> {
        self.slots()
            .find(|&j| s.db.slots[j].state == SlotState::Live)
    }

    // ---- duties ---------------------------------------------------------------------------------

    /// The node's job process has ended and the daemon has not seen it yet.
    pub(super) fn reap_due(&self, s: &State, n: usize) -> bool {
        let r = s.nodes[n].run;
        r.phase == Phase::Running && s.execs[r.exec as usize].status != Status::Running
    }

    /// The node owes the database a write, and can reach it.
    pub(super) fn release_due(&self, s: &State, n: usize) -> bool {
        let node = &s.nodes[n];
        self.reachable(s, n) && node.pending.iter().any(|p| *p != Pend::None)
    }

    /// A heartbeat is due this tick (one that cannot reach the database does nothing).
    pub(super) fn beat_due(&self, s: &State, n: usize) -> bool {
        s.nodes[n].done & DUTY_BEAT == 0
            && s.now.is_multiple_of(self.cfg.heartbeat)
            && self.reachable(s, n)
    }

    /// The node's claimed run is due to start, or too late to.
    pub(super) fn start_due(&self, s: &State, n: usize) -> bool {
        let node = &s.nodes[n];
        let r = node.run;
        r.phase == Phase::Claimed
            && (self.judged_now(s, n, false) >= i16::from(self.cfg.validity(r.slot as usize))
                || self.local(s, n) - i16::from(node.measured)
                    >= i16::from(self.cfg.slot_time(r.slot as usize)))
    }

    /// The trust deadline has passed and the watcher has not said so yet.
    pub(super) fn watch_due(&self, s: &State, n: usize) -> bool {
        let node = &s.nodes[n];
        // Only a `skip` job acts on a lapse (the others' runs go on): for them the watcher is
        // left out, which keeps the interleavings down.
        self.cfg.policy == Policy::Skip
            && node.trust_until != 0
            && s.now >= node.trust_until
            && !node.lapse_said
    }

    /// The node's next slot is due for evaluation (by its own clock).
    pub(super) fn slot_due(&self, s: &State, n: usize) -> bool {
        let node = &s.nodes[n];
        let i = node.next as usize;
        if i >= self.cfg.slots as usize || node.done & DUTY_SLOT != 0 {
            return false;
        }
        if self.local(s, n) < self.cfg.try_time(n, i) {
            return false;
        }
        // A node first starts (or gives up) what it claimed, reaps its finished run and writes
        // its releases, and only then evaluates a new slot (A3).
        if self.start_due(s, n) || self.release_due(s, n) {
            return false;
        }
        self.cfg.bugs.a3_evaluate_before_reap || !self.reap_due(s, n)
    }

    /// Duties of node `n` enabled now, in the order they are listed as actions.
    pub(super) fn duties(&self, s: &State, n: usize, out: &mut Vec<Action>) {
        if s.nodes[n].proc != Proc::Up {
            return;
        }
        let id = n as u8;
        if self.reap_due(s, n) {
            out.push(Action::Reap(id));
        }
        if self.release_due(s, n) {
            out.push(Action::Release(id));
        }
        if self.beat_due(s, n) {
            out.push(Action::Beat(id));
        }
        if self.start_due(s, n) {
            out.push(Action::Start(id));
        }
        if self.watch_due(s, n) {
            out.push(Action::Watch(id));
        }
        if s.nodes[n].alarm {
            out.push(Action::Alarm(id));
        }
        if self.slot_due(s, n) {
            out.push(Action::Slot(id));
        }
    }

    /// The first purely local duty due (see `actions`).
    pub(super) fn eager(&self, s: &State) -> Option<Action> {
        self.nodes().find_map(|n| {
            if s.nodes[n].proc != Proc::Up {
                None
            } else if self.start_due(s, n) {
                Some(Action::Start(n as u8))
            } else if self.reap_due(s, n)
                && !self.cfg.bugs.a3_evaluate_before_reap
                && !self.watch_due(s, n)
            {
                // Not while the trust watcher (a task of its own) is due: which of the two
                // comes first decides whether the run ended for the lease.
                Some(Action::Reap(n as u8))
            } else {
                None
            }
        })
    }

    /// Faults and heals enabled now. Faults need budget and come before the deadline; heals
    /// come only at a tick's start (no duty done yet), which keeps the interleavings down.
    pub(super) fn faults(&self, s: &State, out: &mut Vec<Action>) {
        let f = &self.cfg.faults;
        if s.now >= self.cfg.horizon() {
            return;
        }
        let fresh = s.nodes.iter().all(|n| n.done == 0);
        let can =
            s.faults_used < f.budget && s.now < self.cfg.fault_deadline() && (fresh || f.mid_tick);
        for n in self.nodes() {
            let id = n as u8;
            let node = &s.nodes[n];
            match node.proc {
                Proc::Up => {
                    if can && f.kill {
                        out.push(Action::Kill(id));
                    }
                    if can && f.pause {
                        out.push(Action::Pause(id));
                    }
                    if can && f.freeze {
                        out.push(Action::Freeze(id));
                    }
                }
                Proc::Paused => {
                    if can && f.kill {
                        out.push(Action::Kill(id));
                    }
                    if fresh {
                        out.push(Action::Resume(id));
                    }
                }
                Proc::Frozen => {
                    if can && f.kill {
                        out.push(Action::Kill(id));
                    }
                    if fresh {
                        out.push(Action::Thaw(id));
                    }
                }
                Proc::Dead => {
                    if fresh {
                        out.push(Action::Restart(id));
                    }
                }
            }
            if node.connected && node.proc != Proc::Dead && can && f.partition {
                out.push(Action::Cut(id));
            }
            if !node.connected && fresh {
                out.push(Action::Mend(id));
            }
            if node.offset == 0 && node.proc != Proc::Dead && can && f.clock {
                out.push(Action::Step(id));
            }
        }
        if s.db.up && can && f.database {
            out.push(Action::DbDown);
        }
        if !s.db.up && fresh {
            out.push(Action::DbUp);
        }
    }
}
