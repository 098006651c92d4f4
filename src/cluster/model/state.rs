//! The state of the whole system: the database, the daemons, the oracle of executions and the
//! ghost facts the invariants read; and the actions between states.

use std::hash::{Hash, Hasher};

/// The most nodes a configuration may have.
pub(super) const MAX_NODES: usize = 3;
/// The most slots a configuration may have.
pub(super) const MAX_SLOTS: usize = 4;
/// The most executions a trace may record.
pub(super) const MAX_EXECS: usize = 10;
/// A time that never comes (a running execution's end, no kill yet).
pub(super) const NEVER: u8 = u8::MAX;

/// A daemon's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Proc {
    Up,
    /// SIGSTOP of the daemon only.
    Paused,
    /// SIGSTOP of the daemon and its job.
    Frozen,
    /// SIGKILL (its job died with it).
    Dead,
}

/// A node's own run of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Phase {
    Idle,
    /// Claimed (or decided degraded), waiting for the slot's instant.
    Claimed,
    /// The job process was started (see the execution for whether it is still running).
    Running,
}

/// A node's run: which slot, under which fence (0: degraded, no claim), which execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Run {
    pub(super) phase: Phase,
    pub(super) slot: u8,
    pub(super) fence: u8,
    pub(super) exec: u8,
    /// Its trust lapsed, or its incarnation ended, since the run started: a run that ends
    /// unfinished was ended for the lease, and its slot is given back.
    pub(super) for_lease: bool,
}

/// A write a node still owes the database for one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Pend {
    None,
    /// Release the claim with this fence: `done` if the run completed, `abandoned` if not.
    Release {
        fence: u8,
        completed: bool,
    },
    /// Give the claim with this fence back: its run ended unfinished for the lease.
    Return {
        fence: u8,
    },
    /// A degraded run's journal row: the slot is recorded `done` if nobody recorded it.
    Upload {
        exec: u8,
        completed: bool,
    },
}

/// One daemon, as it sees itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Node {
    pub(super) proc: Proc,
    /// Not partitioned from the database.
    pub(super) connected: bool,
    /// How far its wall clock is ahead of the database's.
    pub(super) offset: u8,
    /// Its clock's lead over the database's, as measured at its last renewal (at its last
    /// statement with `validity_by_db_clock`); a start waits for it.
    pub(super) measured: u8,
    /// This incarnation's epoch; 0 before it has joined (after a start).
    pub(super) epoch: u8,
    /// Under `primary`, on the primary: the first slot its incarnation joined before the first
    /// try of (`alone_only_in_own_epoch`); 0 elsewhere.
    pub(super) alone_from: u8,
    /// Ghost: cut off, and not in a session since (it cannot tell a healed partition from the
    /// database's loss until it reconnects).
    pub(super) isolated: bool,
    /// Its lease is trusted while `now < trust_until` (the renewal's send time + trust).
    pub(super) trust_until: u8,
    /// The trust watcher has fired for the current lapse.
    pub(super) lapse_said: bool,
    /// A "trust lost" event is queued for the daemon's loop.
    pub(super) alarm: bool,
    /// Whether it found the database unreachable since its last renewal (`LOST_*`).
    pub(super) lost: u8,
    /// The next slot it has to deal with.
    pub(super) next: u8,
    pub(super) run: Run,
    /// Writes it owes, per slot.
    pub(super) pending: [Pend; MAX_SLOTS],
    /// Duties done this tick (bits `DUTY_*`).
    pub(super) done: u8,
}

/// The node has not found the database unreachable since its last renewal.
pub(super) const LOST_NOT: u8 = 0;
/// It found the database unreachable while its lease held.
pub(super) const LOST_IN_LEASE: u8 = 1;
/// It found the database unreachable only after its lease ran out, or before it ever renewed.
pub(super) const LOST_LATE: u8 = 2;

/// A row of the `nodes` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct NodeRow {
    pub(super) epoch: u8,
    pub(super) alive: bool,
    pub(super) lease_until: u8,
}

/// A slot row's state. `Live` is `claimed` or `running` (the unique index covers it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum SlotState {
    Empty,
    Live,
    /// A live claim whose owner was found dead or gone: out of the unique index.
    Orphan,
    /// A claim its owner gave back, its run ended unfinished for the lease: out of the unique
    /// index; the sweep runs it again while it is valid.
    Returned,
    Done,
    Skipped,
    Abandoned,
}

/// A row of the `slots` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct SlotRow {
    pub(super) state: SlotState,
    pub(super) owner: u8,
    pub(super) epoch: u8,
    pub(super) fence: u8,
}

/// The database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Db {
    pub(super) up: bool,
    /// Ticks since the server last started, counted up to `lease + 2` (all the protocol and the
    /// invariants need to know).
    pub(super) age: u8,
    /// The fence sequence's last value.
    pub(super) fence: u8,
    pub(super) rows: [NodeRow; MAX_NODES],
    /// Each node's session advisory lock: the epoch of the session holding it, 0 if none.
    pub(super) locks: [u8; MAX_NODES],
    pub(super) slots: [SlotRow; MAX_SLOTS],
}

/// An execution's job process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Status {
    Running,
    /// The job function returned (whether or not its daemon has seen it).
    Completed,
    Killed,
}

/// One execution of the job (the oracle's record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Exec {
    pub(super) slot: u8,
    pub(super) node: u8,
    /// The fence the job ran under; 0: degraded.
    pub(super) fence: u8,
    /// The fence of the slot row that accounts for it (a degraded run's upload sets it).
    pub(super) row: u8,
    pub(super) start: u8,
    /// When it completed or was killed (`NEVER` while running).
    pub(super) end: u8,
    pub(super) status: Status,
    /// Ticks of work left.
    pub(super) left: u8,
    /// Ghost: its node's lease ran out (by the database's clock) while it ran.
    pub(super) lost_lease: bool,
    /// Ghost: it completed while its daemon was stopped (nobody could know it had).
    pub(super) unseen: bool,
    /// Its process was signalled after the job returned (killed on its way out).
    pub(super) signalled: bool,
}

/// Ghost facts about one slot, gathered for the invariants (never read by the protocol).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Ghost {
    /// Faults (bits `HIT_*`) active on a node while it held the slot (its claim or run).
    pub(super) hit: u8,
    /// The nodes killed while holding it, and the first such kill.
    pub(super) killed: u8,
    pub(super) kill_at: u8,
    /// Nodes killed, paused or frozen at some tick of the slot's window.
    pub(super) touched: u8,
    /// Nodes paused or frozen at some tick of the slot's window.
    pub(super) stalled: u8,
    /// Nodes partitioned at some tick of the slot's window, or while holding it.
    pub(super) cut: u8,
    /// The database was down during the slot's window, or while one of its runs ran.
    pub(super) db: bool,
    /// Some execution of the job was still running at the slot's instant.
    pub(super) live_at_slot: bool,
    /// It was skipped over a claim whose holder was paused or frozen while holding it.
    pub(super) blocked: bool,
}

/// Ghost bits: the kind of fault that hit a holder.
pub(super) const HIT_KILL: u8 = 1;
pub(super) const HIT_PAUSE: u8 = 2;
pub(super) const HIT_FREEZE: u8 = 4;
pub(super) const HIT_NET: u8 = 8;

/// The whole system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct State {
    pub(super) now: u8,
    pub(super) db: Db,
    pub(super) nodes: [Node; MAX_NODES],
    pub(super) execs: [Exec; MAX_EXECS],
    pub(super) n_execs: u8,
    pub(super) faults_used: u8,
    /// A node fault (kill, pause, freeze, partition, clock step) happened in this trace.
    pub(super) node_fault: bool,
    /// Ticks since the last fault or heal, counted up to `lease + 2`.
    pub(super) calm: u8,
    pub(super) ghost: [Ghost; MAX_SLOTS],
}

/// States are hashed as a stream of small fields packed into 64-bit words: a derived `Hash`
/// makes one hasher call per field, which dominated the search's time in a debug build.
impl Hash for State {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let mut w = Words { h, acc: 0, n: 0 };
        w.put(self.now);
        w.put(self.n_execs);
        w.put(self.faults_used);
        w.put(self.calm);
        w.put(u8::from(self.node_fault) | u8::from(self.db.up) << 1);
        w.put(self.db.age);
        w.put(self.db.fence);
        for r in &self.db.rows {
            w.put(r.epoch);
            w.put(r.lease_until | u8::from(r.alive) << 7);
        }
        for &l in &self.db.locks {
            w.put(l);
        }
        for r in &self.db.slots {
            w.put(r.state as u8 | r.owner << 4);
            w.put(r.epoch);
            w.put(r.fence);
        }
        for n in &self.nodes {
            w.put(
                n.proc as u8
                    | u8::from(n.connected) << 2
                    | u8::from(n.lapse_said) << 3
                    | n.lost << 4
                    | u8::from(n.isolated) << 6,
            );
            w.put(u8::from(n.alarm) | (n.run.phase as u8) << 1 | n.offset << 3);
            w.put(n.measured);
            w.put(n.epoch);
            w.put(n.alone_from);
            w.put(n.trust_until);
            w.put(n.next);
            w.put(n.run.slot | u8::from(n.run.for_lease) << 4);
            w.put(n.run.fence);
            w.put(n.run.exec);
            w.put(n.done);
            for pend in &n.pending {
                let (kind, value, completed) = match *pend {
                    Pend::None => (0, 0, false),
                    Pend::Release { fence, completed } => (1, fence, completed),
                    Pend::Return { fence } => (3, fence, false),
                    Pend::Upload { exec, completed } => (2, exec, completed),
                };
                w.put(kind | u8::from(completed) << 2);
                w.put(value);
            }
        }
        for e in &self.execs[..self.n_execs as usize] {
            w.put(e.slot | e.node << 4 | u8::from(e.signalled) << 6 | u8::from(e.unseen) << 7);
            w.put(e.fence);
            w.put(e.row);
            w.put(e.start);
            w.put(e.end);
            w.put(e.status as u8 | u8::from(e.lost_lease) << 2 | e.left << 3);
        }
        for g in &self.ghost {
            w.put(g.hit | g.killed << 4);
            w.put(g.kill_at);
            w.put(g.touched | g.cut << 4);
            w.put(u8::from(g.db) | u8::from(g.live_at_slot) << 1 | u8::from(g.blocked) << 2);
            w.put(g.stalled);
        }
        w.end();
    }
}

/// Packs bytes into 64-bit words for a hasher.
struct Words<'a, H: Hasher> {
    h: &'a mut H,
    acc: u64,
    n: u32,
}

impl<H: Hasher> Words<'_, H> {
    /// Adds one byte, writing a word to the hasher every eight.
    fn put(&mut self, byte: u8) {
        self.acc = self.acc << 8 | u64::from(byte);
        self.n += 1;
        if self.n == 8 {
            self.h.write_u64(self.acc);
            self.acc = 0;
            self.n = 0;
        }
    }

    /// Writes the last, partial word with its length.
    fn end(self) {
        self.h.write_u64(self.acc ^ u64::from(self.n) << 60);
    }
}

/// One atomic step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Time moves on one tick (only once no live daemon has a duty left).
    Tick,
    /// A daemon sees its job process has ended.
    Reap(u8),
    /// A daemon writes what it owes (releases, degraded journal rows).
    Release(u8),
    /// A daemon renews its lease and sweeps.
    Beat(u8),
    /// A daemon evaluates its next slot (claim, skip, wait, or `on_database_loss`).
    Slot(u8),
    /// A daemon starts its claimed run (or gives it up, too late).
    Start(u8),
    /// The trust watcher sees the deadline pass and queues "trust lost".
    Watch(u8),
    /// The daemon's loop handles the queued "trust lost".
    Alarm(u8),
    Kill(u8),
    Restart(u8),
    Pause(u8),
    Resume(u8),
    Freeze(u8),
    Thaw(u8),
    Cut(u8),
    Mend(u8),
    DbDown,
    DbUp,
    Step(u8),
}

pub(super) const DUTY_REAP: u8 = 1;
pub(super) const DUTY_RELEASE: u8 = 2;
pub(super) const DUTY_BEAT: u8 = 4;
pub(super) const DUTY_SLOT: u8 = 8;
pub(super) const DUTY_START: u8 = 16;
pub(super) const DUTY_WATCH: u8 = 32;
pub(super) const DUTY_ALARM: u8 = 64;

/// A node's name in traces.
pub(super) fn name(n: usize) -> char {
    (b'a' + n as u8) as char
}
