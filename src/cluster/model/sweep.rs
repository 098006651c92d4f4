//! The sweep, as any live node runs it at a heartbeat: expired leases are dead; a dead
//! owner's slot is taken over, given-back slots rerun, the rest abandoned; gaps recorded.

use super::protocol::{Log, Protocol};
use super::state::{Phase, Run, SlotState, State, name};

impl Protocol {
    /// The sweep: expired leases are dead; a dead owner's live or orphaned slot is taken over
    /// (if the owner is also gone and the slot still valid), or abandoned once no longer valid;
    /// slots past their validity with no row get a gap row.
    pub(super) fn sweep(&self, s: &mut State, n: usize, log: &mut Log) {
        for o in self.nodes() {
            let row = s.db.rows[o];
            if row.alive && row.lease_until <= s.now {
                s.db.rows[o].alive = false;
                log.say(s.now, || {
                    format!(
                        "{}: sweep declares {} (epoch {}) dead",
                        name(n),
                        name(o),
                        row.epoch
                    )
                });
            }
        }
        for j in self.slots() {
            let row = s.db.slots[j];
            let returned = row.state == SlotState::Returned;
            if !matches!(row.state, SlotState::Live | SlotState::Orphan) && !returned {
                continue;
            }
            let o = row.owner as usize;
            let dead = s.db.rows[o].epoch != row.epoch || !s.db.rows[o].alive;
            if !dead && !returned {
                continue;
            }
            let gone = returned || s.db.locks[o] != row.epoch;
            let valid = s.now < self.cfg.validity(j);
            let index_free = self.live_slot(s).is_none_or(|live| live == j);
            if valid
                && (gone || self.cfg.bugs.a5_takeover_while_locked)
                && s.nodes[n].run.phase == Phase::Idle
                && index_free
            {
                let fence = self.write_row(s, j, n, SlotState::Live);
                s.nodes[n].run = Run {
                    phase: Phase::Claimed,
                    slot: j as u8,
                    fence,
                    exec: 0,
                    for_lease: false,
                };
                log.say(s.now, || {
                    format!(
                        "{}: sweep takes over slot {j} {} {} (fence {fence}){}",
                        name(n),
                        if returned { "given back by" } else { "of dead" },
                        name(o),
                        if gone {
                            ""
                        } else {
                            " although its lock is held (A5)"
                        }
                    )
                });
            } else if !valid {
                s.db.slots[j].state = SlotState::Abandoned;
                log.say(s.now, || {
                    format!("{}: sweep abandons slot {j} of {}", name(n), name(o))
                });
            }
        }
        for j in self.slots() {
            if s.db.slots[j].state == SlotState::Empty && s.now >= self.cfg.validity(j) {
                self.write_row(s, j, n, SlotState::Skipped);
                log.say(s.now, || {
                    format!(
                        "{}: gap audit records slot {j} skipped (nobody ran it)",
                        name(n)
                    )
                });
            }
        }
    }
}
