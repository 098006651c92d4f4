//! The model's configuration: the cluster, the job, the timings, the faults to inject, and
//! the switches that bring old behaviours back or take the model's added rules away.

/// The job's `on_database_loss` policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Policy {
    /// Every disconnected node runs the slot without a claim (at least once).
    Run,
    /// Only the priority-0 node runs it without a claim (once, if only the database failed).
    Primary,
    /// Nobody runs it without the database (at most once).
    Skip,
}

/// The old behaviours, one switch per anomaly of the chaos report (A8 is history only and is
/// not expressed). All off is v2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Bugs {
    /// A1: `skipped` rows (a node's own overlap, a slot its clock says it missed) are plain
    /// inserts, without the claim's database-clock and liveness guards.
    pub(super) a1_unguarded_skip_rows: bool,
    /// A2: the overlap decision is taken at the claim lead, not once the slot has come.
    pub(super) a2_overlap_at_claim_lead: bool,
    /// A3: a node evaluates the next slot before it reaps its finished run.
    pub(super) a3_evaluate_before_reap: bool,
    /// A4: a live claim whose owner is dead or gone blocks the job until the sweep clears it
    /// (the claimer waits, never past the slot's validity).
    pub(super) a4_wait_for_dead_owner: bool,
    /// A5: the sweep takes a dead owner's slot over even while its session lock is held.
    pub(super) a5_takeover_while_locked: bool,
    /// A6: a standby claims a `primary` slot even while the primary may be running it degraded.
    pub(super) a6_standby_claims_primary_slot: bool,
    /// A7: a claim that cannot reach the database waits while the lease is trusted and gives the
    /// slot up at its validity instead of applying `on_database_loss`.
    pub(super) a7_expire_while_trusted: bool,
    /// A9: a release that cannot be written (database down, partition) is lost.
    pub(super) a9_release_dropped: bool,
    /// A10: a late "trust lost" event is acted on even if the lease was renewed since.
    pub(super) a10_late_trust_event: bool,
    /// A11 and A12 (the long nemesis runs): under `primary`, the primary runs a slot alone
    /// whenever it cannot reach the database, even if its lease ran out before it found the
    /// database gone (it was stopped past it, and may have been declared dead meanwhile).
    pub(super) a11_primary_alone_after_lease_ran_out: bool,
    /// A14 (the long nemesis runs): a run is judged by how its process ended, so a job that
    /// returned just as the keeper killed it on its way out (its host thawed past the trust
    /// deadline) is taken for a crash, and its slot is given back and run again.
    pub(super) a14_kill_after_return_is_a_crash: bool,
}

/// Rules the model needed beyond the protocol as first specified (v2). Each is on by default;
/// switching one off shows the counterexample that made it necessary (see the tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Rules {
    /// Only the holder of the live claim decides that a slot overlaps its run (it alone knows
    /// whether its job still runs at the slot's instant); a claimer that finds a live, present
    /// holder waits for its release, its skip row, its death or absence, or the slot's
    /// validity.
    pub(super) holder_decides_overlap: bool,
    /// A node declared dead settles its own claims before its new epoch takes the session lock
    /// (which makes the old incarnation "gone" to the sweep): it reaps a run that completed
    /// and writes what it owes, in the rejoin's transaction; a run still going is killed and
    /// left to the sweep.
    pub(super) settle_before_rejoin: bool,
    /// A node whose trust has lapsed renews before it claims or skips a slot, so that a
    /// queued "trust lost" never ends a run claimed after the lapse.
    pub(super) renew_before_claim: bool,
    /// A `skip` run never runs without a trusted lease: it is not started past the trust
    /// deadline (the node renews first if it can), and the keeper ends it at the deadline even
    /// while the daemon is stopped.
    pub(super) skip_needs_trust: bool,
    /// An expired lease counts as death only once the server has been up for a lease (as in
    /// the sweep, and as v2 already says of a missing session lock): while the server was down
    /// nobody could renew.
    pub(super) settled_liveness: bool,
    /// Under `primary`, a standby claims a slot only once the primary is dead or gone (A6
    /// asked this only while the primary is absent just after the server's start): while the
    /// primary lives it alone runs the slot, with or without the database.
    pub(super) primary_first: bool,
    /// A node declared dead kills its run only if the slot was taken over (its fence moved);
    /// otherwise its new epoch adopts the slot's row in the rejoin's transaction and the run
    /// goes on (nobody else will run the slot). A degraded run has no claim and always goes
    /// on.
    pub(super) rejoin_keeps_untaken_run: bool,
    /// A missing session lock counts as absence once the server has been up for a
    /// reconnection interval (a heartbeat: a live node reconnects and takes its lock within
    /// one), not a whole lease; only death (an expired lease) needs the whole lease.
    pub(super) prompt_absence: bool,
    /// A node judges a slot over (too late to claim, start or wait for) by the database's
    /// clock: exactly while connected, else by its wall clock less the offset measured at its
    /// last statement (every statement returns `now()`, not only a renewal); never by its raw
    /// wall clock, which may have jumped.
    pub(super) validity_by_db_clock: bool,
    /// Under `primary`, the primary runs a slot alone only if its current incarnation joined
    /// before the slot's first try: one that started, or rejoined after it was declared dead,
    /// since then (and then lost the database) cannot know whether a standby claimed the slot
    /// while it was away. It waits for the database as for A12, and then runs nothing alone.
    pub(super) alone_only_in_own_epoch: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            holder_decides_overlap: true,
            settle_before_rejoin: true,
            renew_before_claim: true,
            skip_needs_trust: true,
            settled_liveness: true,
            primary_first: true,
            rejoin_keeps_untaken_run: true,
            prompt_absence: true,
            validity_by_db_clock: true,
            alone_only_in_own_epoch: true,
        }
    }
}

/// Which faults a search may inject, and how many per trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Faults {
    /// SIGKILL of a daemon (its job dies with it); restarted later, or never.
    pub(super) kill: bool,
    /// SIGSTOP of a daemon alone: its job keeps running.
    pub(super) pause: bool,
    /// SIGSTOP of a daemon and its job (a frozen host).
    pub(super) freeze: bool,
    /// A node's connection is cut: its session (and lock) is gone, its statements fail.
    pub(super) partition: bool,
    /// The database server stops (every session and lock is gone) and starts again later.
    pub(super) database: bool,
    /// A node's wall clock steps forward by `Config::clock_step`.
    pub(super) clock: bool,
    /// The most faults (heals are free) in one trace.
    pub(super) budget: u8,
    /// Faults may also strike between two duties of a tick (not only at its start).
    pub(super) mid_tick: bool,
}

/// One configuration of the model: the cluster, the job, the timings and the faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Config {
    /// How many daemons; node `n` has priority `n` (node 0 is the primary).
    pub(super) nodes: u8,
    /// How many slots of the job.
    pub(super) slots: u8,
    /// The tick of slot 0.
    pub(super) first: u8,
    /// Ticks between slots.
    pub(super) period: u8,
    /// Ticks a run takes.
    pub(super) duration: u8,
    /// Ticks between heartbeats (renewal and sweep).
    pub(super) heartbeat: u8,
    /// The lease; the trust window is `lease − 2 × heartbeat`.
    pub(super) lease: u8,
    /// A node of priority `n` first tries a slot `n × standby_delay` after the primary.
    pub(super) standby_delay: u8,
    /// The primary tries a slot this many ticks before it (by its own clock).
    pub(super) lead: u8,
    /// A claim is refused while the database's clock is more than this before the slot.
    pub(super) max_skew: u8,
    /// A clock fault steps a node's clock forward by this much.
    pub(super) clock_step: u8,
    /// The job's `on_database_loss`.
    pub(super) policy: Policy,
    /// Ticks after the last slot's validity before the search stops.
    pub(super) settle: u8,
    /// The faults to inject.
    pub(super) faults: Faults,
    /// Faults start only before this tick (heals may come later).
    pub(super) faults_until: u8,
    /// Old behaviours to re-introduce.
    pub(super) bugs: Bugs,
    /// Rules added by this model (all on in v2).
    pub(super) rules: Rules,
    /// Check I1 without its `run`/`primary` exception (to show why it is there).
    pub(super) strict_fencing: bool,
    /// Check I2 without its exception for a node killed while holding the slot (to show why
    /// it is there).
    pub(super) strict_once: bool,
}

impl Config {
    /// Two nodes, three slots six ticks apart, a two-tick run; heartbeat 1, lease 4 (trust 2),
    /// a claim lead of 1 and a standby delay of 1; no faults.
    pub(super) fn base(policy: Policy) -> Config {
        Config {
            nodes: 2,
            slots: 3,
            first: 2,
            period: 6,
            duration: 2,
            heartbeat: 1,
            lease: 4,
            standby_delay: 1,
            lead: 1,
            max_skew: 1,
            clock_step: 2,
            policy,
            settle: 0,
            faults: Faults::default(),
            faults_until: 0,
            bugs: Bugs::default(),
            rules: Rules::default(),
            strict_fencing: false,
            strict_once: false,
        }
    }

    /// The trust window: a node trusts its lease this long after a renewal's send.
    pub(super) fn trust(&self) -> u8 {
        self.lease - 2 * self.heartbeat
    }

    /// The tick of slot `i`.
    pub(super) fn slot_time(&self, i: usize) -> u8 {
        self.first + self.period * i as u8
    }

    /// The first tick slot `i` is no longer valid: the next slot.
    pub(super) fn validity(&self, i: usize) -> u8 {
        self.slot_time(i + 1)
    }

    /// When node `n` first tries slot `i`, by its own clock.
    pub(super) fn try_time(&self, n: usize, i: usize) -> i16 {
        i16::from(self.slot_time(i)) - i16::from(self.lead)
            + i16::from(self.standby_delay) * n as i16
    }

    /// The first tick at which anything can happen to slot `i` (its earliest try, on a node
    /// whose clock has stepped).
    pub(super) fn window_start(&self, i: usize) -> u8 {
        let step = if self.faults.clock {
            self.clock_step
        } else {
            0
        };
        self.slot_time(i).saturating_sub(self.lead + step)
    }

    /// The last tick of the search.
    pub(super) fn horizon(&self) -> u8 {
        let settle = if self.settle == 0 {
            self.duration + self.lease + 2
        } else {
            self.settle
        };
        self.validity(self.slots as usize - 1) + settle
    }

    /// Faults start before this tick.
    pub(super) fn fault_deadline(&self) -> u8 {
        if self.faults_until == 0 {
            self.validity(self.slots as usize - 1)
        } else {
            self.faults_until
        }
    }
}
