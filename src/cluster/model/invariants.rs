//! The invariants the protocol must keep, over the ghost record of the job's executions.
//!
//! Definitions:
//! - An *execution* of slot `s` is one start of the job for it (the oracle's `start` line). It is
//!   *fenced* if it ran under a claim's fence, *degraded* if it ran without the database. It
//!   *completed* if the job function returned, whether or not its daemon saw it.
//! - Executions overlap when their intervals `[start, end)` intersect; a running execution's
//!   end is open. A frozen job's interval includes the freeze.
//! - The *window* of slot `s` runs from its earliest try (`s − lead`, less a clock step when the
//!   configuration steps clocks) to its validity (the next slot).
//! - A node *holds* slot `s` while it has a local run of it (claimed or running), owes the
//!   database a write for it, or owns its live (or orphaned) row.
//! - A *lost* slot has no completed execution once the search ends.
//!
//! In every state:
//! - I1, fencing: no two fenced executions of one slot overlap in time. Under `run` and
//!   `primary` only, an execution whose node's lease ran out while it ran is exempt: those
//!   policies keep a run going when its node loses the database, and a node cut off cannot
//!   tell that from the database's loss, so a takeover may overlap it (its fence is stale and
//!   the job's fenced writes are refused). `limit_run_outlives_its_lease` shows it.
//! - No `skipped` row for a slot before the database's clock has reached it.
//! - No fenced execution starts more than `max_skew` before its slot.
//! - A `done` row stands for an execution under that row's fence that completed.
//! - At most one live claim of the job (the unique index: a check of the model itself).
//!
//! At the end of the search:
//! - I2, exactly once: a slot completed twice needs a node that executed it without a live
//!   session at some moment (cut off, and not in a session since, during the window or while
//!   it held the slot), or SIGKILLed while it held the slot; or the database down during its
//!   window (or while one of its executions ran) and, under `primary` and `skip`, one of its
//!   runs completed while its daemon was stopped. A daemon killed after its job completed but
//!   before its release was written cannot be told from one killed mid-run, so the takeover
//!   reruns the slot (`limit_kill_after_completion`); nor can a stopped daemon whose session
//!   lock went with a restart of the database (`limit_stopped_through_a_restart`). Only the
//!   job's own fenced writes make those reruns harmless. Under `run` the database's loss
//!   excuses any double (every node that lost it runs the slot).
//! - I3, no loss without cause: a lost slot needs one of the causes in `explain`.
//! - I4, `primary`: when only the database failed (no node fault in the trace), every slot has
//!   exactly one execution, and it completed; or none because the previous run was still
//!   running at its instant (the job's `overlap = "skip"`: a degraded run starts up to the
//!   trust window late, so a run longer than `period − trust` reaches the next slot).
//! - I5, `run`: every slot has at least one execution, unless a node fault explains its
//!   absence (under `run` the database's loss and partitions never do).
//! - Once the system has been quiet for longer than a lease, every slot's row is decisive:
//!   `done`, `skipped` or `abandoned`.

use super::config::Policy;
use super::protocol::Protocol;
use super::state::{
    Exec, HIT_FREEZE, HIT_KILL, HIT_NET, HIT_PAUSE, NEVER, Phase, Proc, SlotState, State, Status,
    name,
};

/// The invariants of every state.
pub(super) fn always(p: &Protocol, s: &State) -> Result<(), String> {
    let cfg = &p.cfg;
    let execs = &s.execs[..s.n_execs as usize];
    let live =
        s.db.slots
            .iter()
            .filter(|r| r.state == SlotState::Live)
            .count();
    if live > 1 {
        return Err("model error: two live claims of the job (the unique index)".to_string());
    }
    // I1, fencing: no two fenced executions of one slot overlap in time. Under `run` and
    // `primary` a run goes on when its node loses the database (by policy), and a node cut off
    // cannot tell that from the database's loss; so there, and only there, an execution whose
    // node's lease ran out while it ran may overlap the takeover's (its fence is stale: the
    // job's fenced writes are refused). Under `skip` no exception.
    for (x, a) in execs.iter().enumerate() {
        for (y, b) in execs.iter().enumerate().skip(x + 1) {
            let stale =
                cfg.policy != Policy::Skip && !cfg.strict_fencing && (a.lost_lease || b.lost_lease);
            if a.slot == b.slot && a.fence != 0 && b.fence != 0 && overlap(a, b) && !stale {
                return Err(format!(
                    "I1 fencing: executions #{x} ({} fence {}) and #{y} ({} fence {}) of slot {} overlap in time",
                    name(a.node as usize),
                    a.fence,
                    name(b.node as usize),
                    b.fence,
                    a.slot
                ));
            }
        }
    }
    for i in 0..cfg.slots as usize {
        let row = s.db.slots[i];
        // No `skipped` row for a slot before the database's clock has reached it.
        if row.state == SlotState::Skipped && s.now < cfg.slot_time(i) {
            return Err(format!(
                "early skip: slot {i} (at t={}) has a skipped row at t={}, written by {}",
                cfg.slot_time(i),
                s.now,
                name(row.owner as usize)
            ));
        }
        // A `done` row stands for an execution that completed.
        if row.state == SlotState::Done
            && !execs.iter().any(|e| {
                e.slot as usize == i && e.row == row.fence && e.status == Status::Completed
            })
        {
            return Err(format!(
                "history: slot {i} is done (fence {}) but no execution under that row completed",
                row.fence
            ));
        }
    }
    // No fenced execution starts before its slot by more than `max_skew` (the claim's guard).
    for (k, e) in execs.iter().enumerate() {
        if e.fence != 0 && e.start + cfg.max_skew < cfg.slot_time(e.slot as usize) {
            return Err(format!(
                "early start: execution #{k} of slot {} started at t={}",
                e.slot, e.start
            ));
        }
    }
    Ok(())
}

/// The invariants of a final state (the search's horizon).
pub(super) fn at_end(p: &Protocol, s: &State) -> Result<(), String> {
    let cfg = &p.cfg;
    let execs = &s.execs[..s.n_execs as usize];
    for i in 0..cfg.slots as usize {
        let g = s.ghost[i];
        let of_slot = || execs.iter().filter(move |e| e.slot as usize == i);
        let completed = of_slot().filter(|e| e.status == Status::Completed).count();
        let started = of_slot().count();
        // I2 (see the module's documentation).
        if completed >= 2 {
            let executors = of_slot()
                .filter(|e| e.status == Status::Completed)
                .fold(0u8, |m, e| m | 1 << e.node);
            let killed = if cfg.strict_once { 0 } else { g.killed };
            // Only `run` runs a slot on every node that lost the database. Under `primary` and
            // `skip` the database's loss excuses a double only if one run completed while its
            // daemon was stopped: the restart took the stopped daemon's session lock, so it
            // cannot be told from a dead one (`limit_stopped_through_a_restart`).
            let unseen = of_slot().any(|e| e.status == Status::Completed && e.unseen);
            let db_excuses = g.db && (cfg.policy == Policy::Run || (unseen && !cfg.strict_once));
            if !db_excuses && executors & (g.cut | killed) == 0 {
                return Err(format!(
                    "I2 exactly once: slot {i} completed {completed} times, and neither a cut-off or killed node nor (under run) the database's loss explains it"
                ));
            }
        }
        // I5, `run`: every slot is executed at least once, unless a node fault explains it
        // (the database's loss and partitions never do).
        if cfg.policy == Policy::Run && started == 0 && explain(p, s, i, false).is_none() {
            return Err(format!(
                "I5 run: slot {i} was never executed, and no node fault explains it"
            ));
        }
        // I4, `primary`: exactly one execution, completed, when only the database failed.
        let overlapped = started == 0 && g.live_at_slot;
        if cfg.policy == Policy::Primary
            && !s.node_fault
            && (started != 1 || completed != 1)
            && !overlapped
        {
            return Err(format!(
                "I4 primary: slot {i} has {started} executions ({completed} completed) with only the database failing"
            ));
        }
        // I3, no loss without cause.
        if completed == 0 && explain(p, s, i, cfg.policy != Policy::Run).is_none() {
            return Err(format!(
                "I3 no loss without cause: slot {i} has no completed execution ({started} started) and nothing explains it"
            ));
        }
    }
    // Once the system is quiet, every slot has one decisive row.
    if quiet(p, s) {
        for i in 0..cfg.slots as usize {
            let state = s.db.slots[i].state;
            if !matches!(
                state,
                SlotState::Done | SlotState::Skipped | SlotState::Abandoned
            ) {
                return Err(format!(
                    "decisive row: slot {i} ends {state:?} although the system has been quiet"
                ));
            }
        }
    }
    Ok(())
}

/// Why slot `i` may have been lost, if anything explains it (I3, I5):
/// - a run of the job was still running at the slot's instant (the overlap policy skips it);
/// - a node was stopped or frozen while it held the slot;
/// - it was given up while the holder of the job's live claim (or, under `primary`, the
///   primary) was stopped or frozen, or had been while it held the claim;
/// - its holder was SIGKILLed too late for a takeover before the slot's validity (lease plus a
///   heartbeat), or another fault was active in the window;
/// - when `lossy` (policies `skip` and `primary`): the database was down in the window, or its
///   holder was cut off;
/// - every node was down (killed, stopped, frozen, or cut off when `lossy`) in the window.
pub(super) fn explain(p: &Protocol, s: &State, i: usize, lossy: bool) -> Option<&'static str> {
    let cfg = &p.cfg;
    let g = s.ghost[i];
    if g.live_at_slot {
        return Some("a run of the job was still running at the slot's instant (overlap skip)");
    }
    if g.hit & (HIT_PAUSE | HIT_FREEZE) != 0 {
        return Some("its holder was stopped or frozen while holding it");
    }
    if g.blocked {
        return Some("it was given up while the job's holder (or the primary) was stopped");
    }
    if g.hit & HIT_KILL != 0 {
        // A takeover needs the lease to run out and a sweep: too late if that comes after the
        // slot's validity, or if another fault may have kept the sweepers away.
        let too_late = u16::from(g.kill_at) + u16::from(cfg.lease) + u16::from(cfg.heartbeat)
            > u16::from(cfg.validity(i));
        let others = g.touched & !g.killed != 0 || g.cut != 0 || g.db;
        if too_late || others {
            return Some("its holder was killed, too late for a takeover");
        }
    }
    if lossy && (g.db || g.hit & HIT_NET != 0) {
        return Some("the database was lost, or its holder cut off, under a lossy policy");
    }
    let all = (1u8 << cfg.nodes) - 1;
    let down = g.touched | if lossy { g.cut } else { 0 };
    if down & all == all {
        return Some("every node was down during the slot's window");
    }
    None
}

/// The system is quiet: the database has been up, and no fault has started or healed, for
/// longer than a lease; every node is up and connected, or dead; one at least is up.
pub(super) fn quiet(p: &Protocol, s: &State) -> bool {
    let cfg = &p.cfg;
    let settled = cfg.lease + 2;
    let nodes = &s.nodes[..cfg.nodes as usize];
    s.db.up
        && s.db.age >= settled
        && s.calm >= settled
        && nodes
            .iter()
            .all(|n| n.proc == Proc::Dead || (n.proc == Proc::Up && n.connected))
        && nodes.iter().any(|n| n.proc == Proc::Up)
}

/// The two executions' intervals intersect (an open end while running).
fn overlap(a: &Exec, b: &Exec) -> bool {
    a.start < b.end && b.start < a.end
}

/// A final state, for a trace.
pub(super) fn describe(p: &Protocol, s: &State) -> Vec<String> {
    let cfg = &p.cfg;
    let cap = cfg.lease + 2;
    let db = match (s.db.up, s.db.age) {
        (false, _) => "DOWN".to_string(),
        (true, age) if age >= cap => format!("up (for {cap} ticks or more)"),
        (true, age) => format!("up (for {age} ticks)"),
    };
    let mut lines = vec![format!("t={} database {db}, fence {}", s.now, s.db.fence)];
    for n in 0..cfg.nodes as usize {
        let node = &s.nodes[n];
        let row = s.db.rows[n];
        lines.push(format!(
            "node {}: {:?}{}{} epoch {} (row epoch {} {} lease<{}, lock {}) trust<{} next slot {} run {}",
            name(n),
            node.proc,
            if node.connected { "" } else { " CUT" },
            if node.offset > 0 {
                format!(" clock+{}", node.offset)
            } else {
                String::new()
            },
            node.epoch,
            row.epoch,
            if row.alive { "alive" } else { "dead" },
            row.lease_until,
            s.db.locks[n],
            node.trust_until,
            node.next,
            match node.run.phase {
                Phase::Idle => "-".to_string(),
                phase => format!("{phase:?} slot {} fence {}", node.run.slot, node.run.fence),
            }
        ));
    }
    for i in 0..cfg.slots as usize {
        let row = s.db.slots[i];
        let runs: Vec<String> = s.execs[..s.n_execs as usize]
            .iter()
            .filter(|e| e.slot as usize == i)
            .map(|e| {
                format!(
                    "{} {} [{}..{}) {:?}",
                    name(e.node as usize),
                    if e.fence == 0 {
                        "degraded".to_string()
                    } else {
                        format!("fence {}", e.fence)
                    },
                    e.start,
                    if e.end == NEVER {
                        "-".to_string()
                    } else {
                        e.end.to_string()
                    },
                    e.status
                )
            })
            .collect();
        lines.push(format!(
            "slot {i} (t={}, valid to {}): row {:?}{} ; executions: {}",
            cfg.slot_time(i),
            cfg.validity(i),
            row.state,
            if row.state == SlotState::Empty {
                String::new()
            } else {
                format!(" by {} fence {}", name(row.owner as usize), row.fence)
            },
            if runs.is_empty() {
                "none".to_string()
            } else {
                runs.join(", ")
            }
        ));
    }
    lines
}
