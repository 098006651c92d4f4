//! Time and faults: a tick (the jobs progress, the keeper acts), the ghost's observations,
//! and the faults and heals.

use super::config::Policy;
use super::protocol::{Log, Protocol};
use super::state::{
    Action, HIT_FREEZE, HIT_KILL, HIT_NET, HIT_PAUSE, LOST_NOT, MAX_NODES, MAX_SLOTS, Pend, Phase,
    Proc, SlotState, State, Status, name,
};

impl Protocol {
    /// Time moves on: jobs progress (not on a frozen host) and complete, the keeper ends a
    /// `skip` run past its trust deadline, and the ghost records what is running at a slot's
    /// instant and which faults are active.
    pub(super) fn tick(&self, s: &mut State, log: &mut Log) {
        s.now += 1;
        let cap = self.cfg.lease + 2;
        s.calm = (s.calm + 1).min(cap);
        if s.db.up {
            s.db.age = (s.db.age + 1).min(cap);
        }
        for node in s.nodes.iter_mut() {
            node.done = 0;
        }
        // A heartbeat that cannot reach the database tells the daemon it is gone.
        if s.now.is_multiple_of(self.cfg.heartbeat) {
            for n in self.nodes() {
                if s.nodes[n].proc == Proc::Up && !self.reachable(s, n) {
                    self.found_unreachable(s, n);
                }
            }
        }
        for k in 0..s.n_execs as usize {
            let e = s.execs[k];
            if e.status != Status::Running {
                continue;
            }
            let proc = s.nodes[e.node as usize].proc;
            if proc == Proc::Frozen {
                continue;
            }
            s.execs[k].left -= 1;
            if s.execs[k].left == 0 {
                s.execs[k].status = Status::Completed;
                s.execs[k].end = s.now;
                s.execs[k].unseen = proc == Proc::Paused;
                log.say(s.now, || {
                    format!(
                        "exec #{k} (slot {}, {}) completes",
                        e.slot,
                        name(e.node as usize)
                    )
                });
            }
        }
        // The keeper ends a `skip` run at its node's trust deadline, even while the daemon is
        // stopped (not while the whole host is frozen: nothing local runs then). A job that
        // returned this very tick is killed on its way out (a host thawed past the deadline:
        // the job and the keeper wake together).
        if self.cfg.policy == Policy::Skip && self.cfg.rules.skip_needs_trust {
            for k in 0..s.n_execs as usize {
                let e = s.execs[k];
                let node = &s.nodes[e.node as usize];
                let just_returned = e.status == Status::Completed && e.end == s.now;
                if (e.status == Status::Running || just_returned)
                    && matches!(node.proc, Proc::Up | Proc::Paused)
                    && s.now >= node.trust_until
                {
                    self.kill_exec(s, k);
                    log.say(s.now, || {
                        format!(
                            "{}'s keeper: trust deadline passed: kills exec #{k}",
                            name(e.node as usize)
                        )
                    });
                }
            }
        }
        for i in self.slots() {
            if self.cfg.slot_time(i) == s.now {
                let live = s.execs[..s.n_execs as usize]
                    .iter()
                    .any(|e| e.status == Status::Running);
                s.ghost[i].live_at_slot = live;
            }
        }
        self.observe(s);
    }

    /// Records in the ghost which faults are active now, and what they hit.
    pub(super) fn observe(&self, s: &mut State) {
        for n in self.nodes() {
            let node = s.nodes[n];
            let mut kinds = match node.proc {
                Proc::Up => 0,
                Proc::Paused => HIT_PAUSE,
                Proc::Frozen => HIT_FREEZE,
                Proc::Dead => HIT_KILL,
            };
            if !node.connected || node.isolated {
                kinds |= HIT_NET;
            }
            if kinds == 0 {
                continue;
            }
            let bit = 1u8 << n;
            for j in self.slots() {
                let held = self.holds(s, n, j);
                let in_window = self.in_window(s, j);
                let g = &mut s.ghost[j];
                if held {
                    g.hit |= kinds;
                    if kinds & HIT_NET != 0 {
                        g.cut |= bit;
                    }
                }
                if in_window {
                    if kinds & (HIT_KILL | HIT_PAUSE | HIT_FREEZE) != 0 {
                        g.touched |= bit;
                    }
                    if kinds & (HIT_PAUSE | HIT_FREEZE) != 0 {
                        g.stalled |= bit;
                    }
                    if kinds & HIT_NET != 0 {
                        g.cut |= bit;
                    }
                }
            }
        }
        self.mark_lost_leases(s);
        if !s.db.up {
            for j in self.slots() {
                let running = s.execs[..s.n_execs as usize]
                    .iter()
                    .any(|e| e.slot as usize == j && e.status == Status::Running);
                if running || self.in_window(s, j) {
                    s.ghost[j].db = true;
                }
            }
        }
    }

    /// Node `n` holds slot `j`: a local run of it, a write owed for it, or its live row.
    pub(super) fn holds(&self, s: &State, n: usize, j: usize) -> bool {
        let node = &s.nodes[n];
        (node.run.phase != Phase::Idle && node.run.slot as usize == j)
            || node.pending[j] != Pend::None
            || (matches!(s.db.slots[j].state, SlotState::Live | SlotState::Orphan)
                && s.db.slots[j].owner as usize == n)
    }

    /// Ghost: a running execution whose node's lease has run out, by the database's clock.
    pub(super) fn mark_lost_leases(&self, s: &mut State) {
        for k in 0..s.n_execs as usize {
            let e = s.execs[k];
            let row = s.db.rows[e.node as usize];
            if e.status == Status::Running && (!row.alive || row.lease_until <= s.now) {
                s.execs[k].lost_lease = true;
            }
        }
    }

    /// Now is within slot `j`'s window (see `invariants`).
    pub(super) fn in_window(&self, s: &State, j: usize) -> bool {
        s.now >= self.cfg.window_start(j) && s.now < self.cfg.validity(j)
    }

    /// A fault or a heal.
    pub(super) fn fault(&self, s: &mut State, a: Action, log: &mut Log) {
        let is_fault = matches!(
            a,
            Action::Kill(_)
                | Action::Pause(_)
                | Action::Freeze(_)
                | Action::Cut(_)
                | Action::DbDown
                | Action::Step(_)
        );
        if is_fault {
            s.faults_used += 1;
        }
        if matches!(
            a,
            Action::Kill(_)
                | Action::Pause(_)
                | Action::Freeze(_)
                | Action::Cut(_)
                | Action::Step(_)
        ) {
            s.node_fault = true;
        }
        s.calm = 0;
        match a {
            Action::Kill(n) => {
                let n = n as usize;
                for j in self.slots() {
                    if self.holds(s, n, j) {
                        s.ghost[j].killed |= 1 << n;
                        s.ghost[j].kill_at = s.now;
                    }
                }
                s.nodes[n].proc = Proc::Dead;
                self.observe(s);
                let r = s.nodes[n].run;
                if r.phase == Phase::Running {
                    self.kill_exec(s, r.exec as usize);
                }
                s.db.locks[n] = 0;
                let node = &mut s.nodes[n];
                node.epoch = 0;
                node.run.phase = Phase::Idle;
                node.pending = [Pend::None; MAX_SLOTS];
                node.trust_until = 0;
                node.lapse_said = false;
                node.alarm = false;
                node.measured = 0;
                node.lost = LOST_NOT;
                node.isolated = false;
                node.done = 0;
                log.say(s.now, || {
                    format!("FAULT: SIGKILL {} (its job dies with it)", name(n))
                });
            }
            Action::Restart(n) => {
                let n = n as usize;
                let next = self
                    .slots()
                    .find(|&i| self.cfg.validity(i) > s.now)
                    .unwrap_or(self.cfg.slots as usize);
                s.nodes[n].proc = Proc::Up;
                s.nodes[n].next = next as u8;
                log.say(s.now, || format!("heal: {} restarts", name(n)));
            }
            Action::Pause(n) => {
                let n = n as usize;
                s.nodes[n].proc = Proc::Paused;
                self.observe(s);
                log.say(s.now, || {
                    format!("FAULT: SIGSTOP {}'s daemon (its job runs on)", name(n))
                });
            }
            Action::Resume(n) => {
                s.nodes[n as usize].proc = Proc::Up;
                log.say(s.now, || format!("heal: SIGCONT {}", name(n as usize)));
            }
            Action::Freeze(n) => {
                s.nodes[n as usize].proc = Proc::Frozen;
                self.observe(s);
                log.say(s.now, || {
                    format!("FAULT: freeze {} (daemon and job)", name(n as usize))
                });
            }
            Action::Thaw(n) => {
                s.nodes[n as usize].proc = Proc::Up;
                log.say(s.now, || format!("heal: thaw {}", name(n as usize)));
            }
            Action::Cut(n) => {
                let n = n as usize;
                s.nodes[n].connected = false;
                s.nodes[n].isolated = true;
                s.db.locks[n] = 0;
                self.observe(s);
                log.say(s.now, || {
                    format!("FAULT: partition {} (session and lock gone)", name(n))
                });
            }
            Action::Mend(n) => {
                s.nodes[n as usize].connected = true;
                log.say(s.now, || {
                    format!("heal: {}'s partition ends", name(n as usize))
                });
            }
            Action::DbDown => {
                s.db.up = false;
                s.db.locks = [0; MAX_NODES];
                self.observe(s);
                log.say(s.now, || {
                    "FAULT: database down (every session and lock gone)".to_string()
                });
            }
            Action::DbUp => {
                s.db.up = true;
                s.db.age = 0;
                log.say(s.now, || "heal: database up".to_string());
            }
            Action::Step(n) => {
                s.nodes[n as usize].offset = self.cfg.clock_step;
                log.say(s.now, || {
                    format!(
                        "FAULT: {}'s clock steps {} ticks ahead",
                        name(n as usize),
                        self.cfg.clock_step
                    )
                });
            }
            _ => unreachable!("not a fault: {a:?}"),
        }
    }
}
