//! The checker's interface to the protocol: the initial state, the enabled actions, the step,
//! and the invariants (kept apart from the protocol, which never looks at them).

use super::check;
use super::invariants;
use super::protocol::{Log, Protocol};
use super::state::{
    Action, Db, Exec, Ghost, LOST_NOT, MAX_EXECS, MAX_NODES, MAX_SLOTS, NEVER, Node, NodeRow, Pend,
    Phase, Proc, Run, SlotRow, SlotState, State, Status,
};

impl check::Model for Protocol {
    type State = State;
    type Action = Action;

    fn init(&self) -> State {
        let node = Node {
            proc: Proc::Up,
            connected: true,
            offset: 0,
            measured: 0,
            epoch: 1,
            alone_from: 0,
            isolated: false,
            trust_until: self.cfg.trust(),
            lapse_said: false,
            alarm: false,
            lost: LOST_NOT,
            next: 0,
            run: Run {
                phase: Phase::Idle,
                slot: 0,
                fence: 0,
                exec: 0,
                for_lease: false,
            },
            pending: [Pend::None; MAX_SLOTS],
            done: 0,
        };
        let mut db = Db {
            up: true,
            age: 0,
            fence: 0,
            rows: [NodeRow {
                epoch: 0,
                alive: false,
                lease_until: 0,
            }; MAX_NODES],
            locks: [0; MAX_NODES],
            slots: [SlotRow {
                state: SlotState::Empty,
                owner: 0,
                epoch: 0,
                fence: 0,
            }; MAX_SLOTS],
        };
        // Every node has joined at tick 0 (epoch 1); the server has been up long before.
        for n in self.nodes() {
            db.rows[n] = NodeRow {
                epoch: 1,
                alive: true,
                lease_until: self.cfg.lease,
            };
            db.locks[n] = 1;
        }
        db.age = self.cfg.lease + 2;
        let exec = Exec {
            slot: 0,
            node: 0,
            fence: 0,
            row: 0,
            start: 0,
            end: NEVER,
            status: Status::Killed,
            left: 0,
            lost_lease: false,
            unseen: false,
            signalled: false,
        };
        let ghost = Ghost {
            kill_at: NEVER,
            ..Ghost::default()
        };
        let mut nodes = [node; MAX_NODES];
        for (n, node) in nodes.iter_mut().enumerate() {
            if n >= self.cfg.nodes as usize {
                node.proc = Proc::Dead;
                node.epoch = 0;
                node.trust_until = 0;
                node.next = self.cfg.slots;
            }
        }
        State {
            now: 0,
            db,
            nodes,
            execs: [exec; MAX_EXECS],
            n_execs: 0,
            faults_used: 0,
            node_fault: false,
            calm: self.cfg.lease + 2,
            ghost: [ghost; MAX_SLOTS],
        }
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        // A partial-order reduction: a start, and a reap, touch only the node's own state (and
        // append to the oracle), so they commute with every other node's steps; the first one
        // due is taken alone, in node order. (Not the reap when A3 lets a slot be evaluated
        // before it: that race is the bug.)
        if let Some(a) = self.eager(s) {
            self.faults(s, out);
            out.push(a);
            return;
        }
        for n in self.nodes() {
            self.duties(s, n, out);
        }
        let duties = !out.is_empty();
        self.faults(s, out);
        if !duties && s.now < self.cfg.horizon() {
            out.push(Action::Tick);
        }
    }

    fn next(&self, s: &State, a: Action, log: Option<&mut Vec<String>>) -> State {
        let mut log = Log(log);
        let mut t = *s;
        match a {
            Action::Tick => self.tick(&mut t, &mut log),
            Action::Reap(n) => self.reap(&mut t, n as usize, &mut log),
            Action::Release(n) => self.release(&mut t, n as usize, &mut log),
            Action::Beat(n) => self.beat(&mut t, n as usize, &mut log),
            Action::Slot(n) => self.slot(&mut t, n as usize, &mut log),
            Action::Start(n) => self.start(&mut t, n as usize, &mut log),
            Action::Watch(n) => self.watch(&mut t, n as usize, &mut log),
            Action::Alarm(n) => self.alarm(&mut t, n as usize, &mut log),
            _ => self.fault(&mut t, a, &mut log),
        }
        self.mark_lost_leases(&mut t);
        t
    }

    fn check(&self, s: &State) -> Result<(), String> {
        invariants::always(self, s)
    }

    fn check_end(&self, s: &State) -> Result<(), String> {
        invariants::at_end(self, s)
    }

    fn describe(&self, s: &State) -> Vec<String> {
        invariants::describe(self, s)
    }
}
