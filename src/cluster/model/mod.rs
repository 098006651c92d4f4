//! An exhaustive model of the cluster protocol, checked in `cargo test`.
//!
//! A small explicit-state checker (`check`) explores every interleaving of a model of the
//! protocol (`protocol` and the files it is split into) for 1 to 3 nodes, one job and a few
//! slots, on discrete time, with a budget of faults per trace. A violated invariant is printed
//! with the shortest trace that leads to it. `cargo test model -- --nocapture` prints each
//! search's size and time, and each counterexample.
//!
//! The protocol modelled (v2), in the terms of `docs/cluster.md`:
//! 1. Join: a node (re)joins with epoch + 1, takes its session advisory lock (released by the
//!    server the moment the session dies), `lease_until = now + lease`.
//! 2. Heartbeat: renews the lease only for a live row with its epoch; none (declared dead):
//!    the node kills its run and rejoins. A renewal moves the trust deadline to its send time
//!    plus `lease − 2 × heartbeat`. Past it, a `skip` run ends; `run` and `primary` runs go
//!    on. A late "trust lost" is ignored if a renewal came since (A10).
//! 3. Claim: one guarded insert (database clock ≥ slot − `max_clock_skew`, the claimer alive
//!    with its epoch and a valid lease). The priority-`n` node tries `n × standby_delay` after
//!    the primary, which tries at slot − lead by its own clock.
//! 4. A live claim of the job held by a dead or gone owner (no session lock, server up for a
//!    lease) is orphaned and the claim retried at once (A4). Overlap `skip` is decided once the
//!    slot has come (A2), never before reaping (A3); every `skipped` row has a claim's guards
//!    (A1).
//! 5. The winner starts at the slot; its release (`done` where the fence matches) is retried
//!    until written, by a new epoch too (A9).
//! 6. Sweep (server up for a lease): expired leases are dead; a dead owner's slot is taken over
//!    if the owner is also gone and the slot still valid, never while its lock is held (A5),
//!    and abandoned once no longer valid; a slot nobody recorded gets a gap row.
//! 7. Database loss: wait while trusted, never past the slot's validity (A7); then `run` runs
//!    degraded, `primary` only on the primary, `skip` records it skipped. A standby never
//!    claims a `primary` slot while the primary may be running it degraded (A6).
//! 8. A clock that jumps ahead writes nothing for a slot the database's clock has not reached.
//!
//! The rules the model had to add to v2, each needed by a counterexample (`config::Rules`, and
//! the `rule_*` tests):
//! - `holder_decides_overlap`: only the holder of the live claim records an overlap; others
//!   wait for it (a claimer's skip races the holder's release).
//! - `settle_before_rejoin`: a node declared dead writes what it owes, and reaps a completed
//!   run, before its new epoch takes the lock (else its own sweep reruns a completed slot).
//! - `renew_before_claim`: a node whose trust lapsed renews before it claims (else the queued
//!   "trust lost" cancels the fresh claim).
//! - `skip_needs_trust`: a `skip` run is not started past the trust deadline, and the keeper
//!   ends it at the deadline even while the daemon is stopped.
//! - `settled_liveness`: an expired lease is death only once the server has been up for a
//!   lease, in the claim's checks as in the sweep.
//! - `primary_first`: under `primary`, a standby claims only once the primary is dead or gone.
//! - `rejoin_keeps_untaken_run`: a rejoin kills a run only if its slot was taken over; the
//!   new epoch adopts the slot's row otherwise (else a slot too late to take over is lost).
//! - `prompt_absence`: a missing session lock means absence once the server has been up for a
//!   heartbeat, not a lease (else a dead owner's claim blocks new slots after a restart).
//! - `validity_by_db_clock`: a node judges a slot over by the database's clock (or its own
//!   less the measured offset), never by a wall clock that may have jumped (else it gives up
//!   a slot still valid).
//! - `alone_only_in_own_epoch`: under `primary`, the primary runs alone only slots first tried
//!   after its incarnation joined (else a primary restarted, or rejoined after it was
//!   declared dead, into a database stop runs the slot a standby ran while it was away).
//!
//! The long nemesis runs found A11 to A14 after the model was first written. A11 and A12 are
//! modelled (`Bugs::a11_primary_alone_after_lease_ran_out`: a primary that found the database
//! gone only after its lease ran out runs nothing alone, and waits for the database first); so
//! is a completed run killed on its way out (A14, `Bugs::a14_kill_after_return_is_a_crash`).
//! A13 (a primary standing by for its clock) is not: the model has no clock standby.
//!
//! Files: `config` (parameters and switches), `state` (the state and actions), `protocol`
//! (the model's core: which actions are enabled, the checker's interface), `node` (a daemon's
//! session, lease and runs), `sweep` (takeover, abandon, gaps), `claim` (evaluating a slot),
//! `world` (time and faults), `invariants`, `check` (the generic checker), `checked` (the
//! protocol as the checker sees it) and `tests`.

mod check;
mod checked;
mod claim;
mod config;
mod invariants;
mod node;
mod protocol;
mod state;
mod sweep;
mod tests;
mod world;
