//! A daemon's evaluation of its next slot: the claim, the overlap decision, and what it does
//! when the database cannot be reached.

use super::config::Policy;
use super::protocol::{Log, Protocol};
use super::state::{DUTY_SLOT, LOST_LATE, Phase, Run, SlotState, State, name};

impl Protocol {
    /// Evaluates the node's next slot.
    pub(super) fn slot(&self, s: &mut State, n: usize, log: &mut Log) {
        let i = s.nodes[n].next as usize;
        let valid = self.cfg.validity(i);
        let epoch = s.nodes[n].epoch;
        let reachable = self.ensure_session(s, n, log);
        if !reachable {
            self.found_unreachable(s, n);
        }
        if reachable && !self.alive(s, n) {
            // Declared dead while it was not looking: it rejoins first (its run is killed and
            // reaped before the slot is evaluated again, this tick).
            log.say(s.now, || format!("{}: finds itself declared dead", name(n)));
            self.rejoin_dead(s, n, log);
            return;
        }
        if reachable && self.cfg.rules.renew_before_claim && s.now >= s.nodes[n].trust_until {
            log.say(s.now, || {
                format!("{}: trust lapsed: renews before it claims", name(n))
            });
            self.renew(s, n, log);
        }
        if s.nodes[n].epoch != epoch && self.reap_due(s, n) {
            return;
        }
        let bugs = self.cfg.bugs;

        // By its own clock the slot is over (it was stopped, or its clock jumped): it lets it
        // go, and goes on with the next slot at once. A slot nobody ran is recorded by the gap
        // audit, by the database's clock.
        if self.judged_now(s, n, reachable) >= i16::from(valid) {
            if bugs.a1_unguarded_skip_rows && reachable && s.db.slots[i].state == SlotState::Empty {
                self.write_row(s, i, n, SlotState::Skipped);
                log.say(s.now, || {
                    format!(
                        "{}: its clock says slot {i} was missed: writes it skipped, unguarded (A1)",
                        name(n)
                    )
                });
            } else {
                log.say(s.now, || {
                    format!("{}: lets slot {i} go: its clock says it is over", name(n))
                });
            }
            s.nodes[n].next += 1;
            return;
        }
        s.nodes[n].done |= DUTY_SLOT;

        // Its own previous run is still running (or, with A3, not yet reaped).
        if s.nodes[n].run.phase == Phase::Running {
            return self.own_overlap(s, n, i, reachable, log);
        }
        if reachable {
            self.claim(s, n, i, log);
        } else {
            self.unreachable(s, n, i, log);
        }
    }

    /// Slot `i` comes while the node's own previous run is still running (or, with A3, not
    /// yet reaped): the owner records the slot skipped, once the slot has come (A2), with a
    /// claim's guards (A1).
    fn own_overlap(&self, s: &mut State, n: usize, i: usize, reachable: bool, log: &mut Log) {
        let st = self.cfg.slot_time(i);
        let local = self.local(s, n);
        let bugs = self.cfg.bugs;
        if !bugs.a2_overlap_at_claim_lead && local < i16::from(st) {
            return;
        }
        // v2 writes the row once the database's clock has reached the slot; with A2 the
        // decision is the claim's, under the claim's guard.
        let guard = if bugs.a2_overlap_at_claim_lead {
            st.saturating_sub(self.cfg.max_skew)
        } else {
            st
        };
        if reachable {
            if !bugs.a1_unguarded_skip_rows && (!self.lease_valid(s, n) || s.now < guard) {
                log.say(s.now, || {
                    format!(
                        "{}: own run still running at slot {i}: the guard says wait",
                        name(n)
                    )
                });
                return;
            }
            if s.db.slots[i].state == SlotState::Empty {
                self.write_row(s, i, n, SlotState::Skipped);
            }
        }
        log.say(s.now, || {
            format!(
                "{}: own run of slot {} still running: slot {i} skipped{}",
                name(n),
                s.nodes[n].run.slot,
                if reachable {
                    ""
                } else {
                    " (locally: database unreachable)"
                }
            )
        });
        s.nodes[n].next += 1;
    }

    /// The claim of slot `i` (step 3 and 4 of the protocol).
    pub(super) fn claim(&self, s: &mut State, n: usize, i: usize, log: &mut Log) {
        let st = self.cfg.slot_time(i);
        let bugs = self.cfg.bugs;
        let cfg = &self.cfg;
        if !self.lease_valid(s, n) {
            log.say(s.now, || {
                format!("{}: claim of slot {i} refused: lease expired", name(n))
            });
            return;
        }
        if s.now + cfg.max_skew < st {
            log.say(s.now, || {
                format!(
                    "{}: claim of slot {i} refused: too early by the database's clock",
                    name(n)
                )
            });
            return;
        }
        let row = s.db.slots[i];
        if row.state != SlotState::Empty {
            s.nodes[n].next += 1;
            log.say(s.now, || {
                format!(
                    "{}: slot {i} already has a row ({:?} by {})",
                    name(n),
                    row.state,
                    name(row.owner as usize)
                )
            });
            return;
        }
        // A standby never claims a `primary` slot while the primary may be running it degraded:
        // not dead, not present, and the server up for less than a lease (A6); with
        // `primary_first`, while the primary is neither dead nor gone.
        if cfg.policy == Policy::Primary
            && n != 0
            && !bugs.a6_standby_claims_primary_slot
            && self.primary_holds(s, n, i, log)
        {
            return;
        }
        if let Some(j) = self.live_slot(s) {
            match self.live_claim(s, n, i, j, log) {
                Live::Decided => return,
                Live::Orphaned => return self.claim(s, n, i, log),
                Live::Free => {}
            }
        }
        let fence = self.write_row(s, i, n, SlotState::Live);
        s.nodes[n].run = Run {
            phase: Phase::Claimed,
            slot: i as u8,
            fence,
            exec: 0,
            for_lease: false,
        };
        s.nodes[n].next += 1;
        log.say(s.now, || {
            format!("{}: claims slot {i}: fence {fence}", name(n))
        });
    }

    /// A standby's claim of a `primary` slot waits while the primary may be running it
    /// degraded: not dead, not present, and the server up for less than a lease (A6); with
    /// `primary_first`, while the primary is neither dead nor gone. True when it waits or gives
    /// the slot up.
    fn primary_holds(&self, s: &mut State, n: usize, i: usize, log: &mut Log) -> bool {
        let cfg = &self.cfg;
        let p = s.db.rows[0];
        let dead = !p.alive || (p.lease_until <= s.now && self.expiry_counts(s));
        let present = s.db.locks[0] != 0;
        let gone = !present && self.absence_counts(s);
        let wait = if self.cfg.rules.primary_first {
            !dead && !gone
        } else {
            !dead && !present && !self.db_settled(s)
        };
        if wait {
            if s.now + 1 < cfg.validity(i) {
                log.say(s.now, || {
                    format!(
                        "{}: slot {i}: the primary lives and may run it: waits",
                        name(n)
                    )
                });
                return true;
            }
            // Given up at the slot's validity (ghost: blocked if the primary, which alone
            // runs it while it lives, was stopped during the slot's window).
            s.ghost[i].blocked |= s.ghost[i].stalled & 1 != 0;
            s.nodes[n].next += 1;
            log.say(s.now, || {
                format!(
                    "{}: slot {i}: the primary still lives: gives the slot up",
                    name(n)
                )
            });
            return true;
        }
        false
    }

    /// Slot `i`'s claim meets slot `j`'s live claim (step 4): set aside if its owner is dead
    /// or gone (then the claim is tried again), else the overlap is decided or waited for.
    fn live_claim(&self, s: &mut State, n: usize, i: usize, j: usize, log: &mut Log) -> Live {
        let bugs = self.cfg.bugs;
        let cfg = &self.cfg;
        let live = s.db.slots[j];
        let o = live.owner as usize;
        if o == n && live.epoch == s.nodes[n].epoch {
            // Our own claim, never released (only with A9: v2 writes releases first).
            s.db.slots[j].state = SlotState::Done;
            log.say(s.now, || {
                format!(
                    "{}: finds its own unreleased claim of slot {j}: releases it",
                    name(n)
                )
            });
        } else {
            let orow = s.db.rows[o];
            let dead = orow.epoch != live.epoch
                || !orow.alive
                || (orow.lease_until <= s.now && self.expiry_counts(s));
            let gone = s.db.locks[o] != live.epoch && self.absence_counts(s);
            if bugs.a4_wait_for_dead_owner {
                // v1: a dead or silent owner is waited for (the sweep clears its claim),
                // never past the slot's validity.
                let declared = orow.epoch != live.epoch || !orow.alive;
                let silent = orow.lease_until < s.now + cfg.lease - 2 * cfg.heartbeat;
                if declared || silent {
                    log.say(s.now, || {
                        format!("{}: slot {i}: waits for {}'s claim of slot {j} (owner dead or silent) (A4)", name(n), name(o))
                    });
                    if s.now + 1 >= cfg.validity(i) {
                        s.nodes[n].next += 1;
                        log.say(s.now, || {
                            format!("{}: slot {i}: waited until too late", name(n))
                        });
                    }
                    return Live::Decided;
                }
            } else if dead || gone {
                s.db.slots[j].state = SlotState::Orphan;
                log.say(s.now, || {
                    format!(
                        "{}: {}'s claim of slot {j} is {}: orphaned",
                        name(n),
                        name(o),
                        if dead {
                            "dead"
                        } else {
                            "gone (no session lock)"
                        }
                    )
                });
                return Live::Orphaned;
            }
            return self.holder_lives(s, n, i, j, log);
        }
        Live::Free
    }

    /// Slot `i`'s claim meets slot `j`'s live claim, whose owner lives and is present: its run
    /// may still be running. With `holder_decides_overlap` the claimer waits for the holder (its
    /// release, its skip row, its death or absence) up to the slot's validity; v2 as first
    /// specified skipped the slot itself once it had come (A2).
    fn holder_lives(&self, s: &mut State, n: usize, i: usize, j: usize, log: &mut Log) -> Live {
        let st = self.cfg.slot_time(i);
        let bugs = self.cfg.bugs;
        let o = s.db.slots[j].owner as usize;
        if self.cfg.rules.holder_decides_overlap && !bugs.a2_overlap_at_claim_lead {
            if s.now + 1 < self.cfg.validity(i) {
                log.say(s.now, || {
                    format!(
                        "{}: slot {i}: {} holds slot {j}; waits for it",
                        name(n),
                        name(o)
                    )
                });
                return Live::Decided;
            }
            s.ghost[i].blocked |= self.holder_faulty(s, o, j);
            s.nodes[n].next += 1;
            log.say(s.now, || {
                format!(
                    "{}: slot {i}: {} still holds slot {j}; gives the slot up",
                    name(n),
                    name(o)
                )
            });
            return Live::Decided;
        }
        // v2 as first specified: overlap `skip` by the claimer, once the slot has come
        // (A2).
        if !bugs.a2_overlap_at_claim_lead && s.now < st {
            log.say(s.now, || {
                format!(
                    "{}: slot {i}: {} still holds slot {j}; waits for the slot's instant",
                    name(n),
                    name(o)
                )
            });
            return Live::Decided;
        }
        let blocked = self.holder_faulty(s, o, j);
        self.write_row(s, i, n, SlotState::Skipped);
        s.ghost[i].blocked |= blocked;
        s.nodes[n].next += 1;
        log.say(s.now, || {
            format!(
                "{}: slot {i} skipped: {}'s run of slot {j} is still live",
                name(n),
                name(o)
            )
        });
        Live::Decided
    }

    /// The database cannot be reached at slot `i` (step 7): wait while the lease is trusted,
    /// never past the slot's validity; then `on_database_loss`.
    pub(super) fn unreachable(&self, s: &mut State, n: usize, i: usize, log: &mut Log) {
        let trusted = s.now < s.nodes[n].trust_until;
        // A primary whose lease ran out before it found the database gone may have been
        // declared dead, and a standby may have run the slot or may reach the database first
        // (A11); so may one whose incarnation joined after the slot's first try
        // (`alone_only_in_own_epoch`). It waits for the database like a trusted node (A12),
        // and then runs nothing alone.
        let node = &s.nodes[n];
        let late = !self.cfg.bugs.a11_primary_alone_after_lease_ran_out && node.lost == LOST_LATE;
        let away = self.cfg.rules.alone_only_in_own_epoch
            && (node.epoch == 0 || i < usize::from(node.alone_from));
        let in_doubt = self.cfg.policy == Policy::Primary && n == 0 && (late || away);
        if (trusted || in_doubt)
            && self.judged_now(s, n, false) + 1 < i16::from(self.cfg.validity(i))
        {
            log.say(s.now, || {
                format!(
                    "{}: slot {i}: database unreachable, {}: waits",
                    name(n),
                    if trusted {
                        "lease trusted"
                    } else {
                        "its lease ran out first"
                    }
                )
            });
            return;
        }
        s.nodes[n].next += 1;
        if trusted && self.cfg.bugs.a7_expire_while_trusted {
            log.say(s.now, || {
                format!(
                    "{}: slot {i}: waited for the database until too late (A7)",
                    name(n)
                )
            });
            return;
        }
        let degraded = match self.cfg.policy {
            Policy::Run => true,
            Policy::Primary => n == 0 && !in_doubt,
            Policy::Skip => false,
        };
        if degraded {
            s.nodes[n].run = Run {
                phase: Phase::Claimed,
                slot: i as u8,
                fence: 0,
                exec: 0,
                for_lease: false,
            };
            log.say(s.now, || {
                format!(
                    "{}: slot {i}: database unreachable: will run it degraded",
                    name(n)
                )
            });
        } else {
            log.say(s.now, || {
                format!(
                    "{}: slot {i}: database unreachable: skipped locally ({:?})",
                    name(n),
                    self.cfg.policy
                )
            });
        }
    }
}

/// What a claim that met a live claim does next.
enum Live {
    /// The slot is decided, or waited for: the claim ends here.
    Decided,
    /// The live claim was set aside: try the claim again.
    Orphaned,
    /// Nothing stands in the way (the node's own stale claim was released).
    Free,
}
