//! A small explicit-state model checker: a breadth-first search over hashed states.
//!
//! Every state reached is remembered by a 128-bit fingerprint of its hash (hash compaction, as
//! TLC does with 64 bits): a collision would hide a state, with a probability of about
//! n² / 2¹²⁹ for n states, negligible here. Each new state gets the index of the state it was
//! first reached from and the action that led to it. Breadth-first order makes the first
//! violation found one of the shortest: its trace is rebuilt by following the parents back to
//! the initial state and replaying the actions forward, so that each step can say what it did.

use std::collections::{HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{Duration, Instant};

/// A system to check: its states, its actions and its invariants.
pub(super) trait Model {
    /// One state of the whole system. Two states that hash the same must behave the same from
    /// then on: the hash must cover everything.
    type State: Clone + Hash;
    /// One atomic step. Transitions must be deterministic: the action says everything.
    type Action: Copy + Debug;

    /// The single initial state.
    fn init(&self) -> Self::State;

    /// Pushes onto `out` the actions enabled in `state`.
    fn actions(&self, state: &Self::State, out: &mut Vec<Self::Action>);

    /// The state after `action`. When `log` is given, the step pushes lines saying what it did
    /// (used only to print a trace, so it may be slow).
    fn next(
        &self,
        state: &Self::State,
        action: Self::Action,
        log: Option<&mut Vec<String>>,
    ) -> Self::State;

    /// The invariants that hold in every state.
    fn check(&self, state: &Self::State) -> Result<(), String>;

    /// The invariants of a final state (one with no enabled action).
    fn check_end(&self, state: &Self::State) -> Result<(), String>;

    /// A few lines describing a state, printed after a trace.
    fn describe(&self, state: &Self::State) -> Vec<String>;
}

/// What a search found.
#[derive(Debug)]
pub(super) struct Report {
    /// Distinct states reached.
    pub(super) states: usize,
    /// Transitions taken (edges, including those to states already seen).
    pub(super) transitions: usize,
    /// The length of the longest shortest path found (the search's depth).
    pub(super) depth: usize,
    /// Final states checked with the end-of-run invariants.
    pub(super) finals: usize,
    /// Wall time of the search.
    pub(super) elapsed: Duration,
    /// The search stopped at the state limit before it was exhaustive.
    pub(super) truncated: bool,
    /// The first violation found, if any.
    pub(super) violation: Option<Violation>,
}

/// An invariant that failed, with the shortest trace that leads to it.
#[derive(Debug, Clone)]
pub(super) struct Violation {
    /// Which invariant failed and why.
    pub(super) message: String,
    /// One line per action from the initial state, then the final state's description.
    pub(super) trace: Vec<String>,
    /// The number of actions in the trace.
    pub(super) steps: usize,
}

impl Report {
    /// A one-line summary, for the test output.
    pub(super) fn summary(&self) -> String {
        format!(
            "{} states, {} transitions, {} final states, depth {}, {:.2} s{}{}",
            self.states,
            self.transitions,
            self.finals,
            self.depth,
            self.elapsed.as_secs_f64(),
            if self.truncated { ", TRUNCATED" } else { "" },
            match &self.violation {
                Some(v) => format!(", violation after {} steps", v.steps),
                None => String::new(),
            }
        )
    }
}

impl Violation {
    /// The message and the trace, one line each.
    pub(super) fn render(&self) -> String {
        let mut out = format!("VIOLATION: {}\n", self.message);
        for line in &self.trace {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// Explores every state reachable from the initial one (at most `limit` of them) and checks
/// the invariants in each; stops at the first violation.
pub(super) fn explore<M: Model>(model: &M, limit: usize) -> Report {
    let started = Instant::now();
    let init = model.init();
    // Per state index: its parent's index and the action from it (none for the initial state).
    let mut parents: Vec<(u32, Option<M::Action>)> = vec![(0, None)];
    let mut seen: HashSet<u128, BuildHasherDefault<Prehashed>> = HashSet::default();
    seen.insert(fingerprint(&init));
    let mut queue: VecDeque<(M::State, u32, usize)> = VecDeque::new();
    let mut report = Report {
        states: 1,
        transitions: 0,
        depth: 0,
        finals: 0,
        elapsed: Duration::ZERO,
        truncated: false,
        violation: None,
    };
    if let Err(message) = model.check(&init) {
        report.violation = Some(trace(model, &parents, 0, message));
        report.elapsed = started.elapsed();
        return report;
    }
    queue.push_back((init, 0, 0));
    let mut actions = Vec::new();
    while let Some((state, index, depth)) = queue.pop_front() {
        report.depth = report.depth.max(depth);
        actions.clear();
        model.actions(&state, &mut actions);
        if actions.is_empty() {
            report.finals += 1;
            if let Err(message) = model.check_end(&state) {
                report.violation = Some(trace(model, &parents, index, message));
                break;
            }
            continue;
        }
        for &action in &actions {
            report.transitions += 1;
            let next = model.next(&state, action, None);
            if !seen.insert(fingerprint(&next)) {
                continue;
            }
            let Ok(new_index) = u32::try_from(parents.len()) else {
                report.truncated = true;
                break;
            };
            parents.push((index, Some(action)));
            report.states += 1;
            if let Err(message) = model.check(&next) {
                report.violation = Some(trace(model, &parents, new_index, message));
                break;
            }
            if report.states >= limit {
                report.truncated = true;
                break;
            }
            queue.push_back((next, new_index, depth + 1));
        }
        if report.violation.is_some() || report.truncated {
            break;
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// Rebuilds the trace to the state `index` by replaying its actions from the initial state.
fn trace<M: Model>(
    model: &M,
    parents: &[(u32, Option<M::Action>)],
    index: u32,
    message: String,
) -> Violation {
    let mut path = Vec::new();
    let mut at = index as usize;
    while let Some(&(parent, Some(action))) = parents.get(at) {
        path.push(action);
        at = parent as usize;
    }
    path.reverse();
    let mut lines = Vec::new();
    let mut state = model.init();
    for &action in &path {
        // Steps with nothing to say (a tick, a plain renewal) leave no line.
        let mut log = Vec::new();
        state = model.next(&state, action, Some(&mut log));
        lines.extend(log);
    }
    lines.push("-- final state:".to_string());
    lines.extend(model.describe(&state));
    Violation {
        message,
        trace: lines,
        steps: path.len(),
    }
}

/// A state's 128-bit fingerprint.
fn fingerprint<S: Hash>(state: &S) -> u128 {
    let mut h = Fingerprint {
        a: 0x243f_6a88_85a3_08d3,
        b: 0x1319_8a2e_0370_7344,
    };
    state.hash(&mut h);
    u128::from(mix(h.a)) << 64 | u128::from(mix(h.b))
}

/// Two multiply-rotate lanes with different constants (fast in a debug build, where hashing
/// dominates the search); `mix` spreads their bits at the end.
struct Fingerprint {
    a: u64,
    b: u64,
}

impl Fingerprint {
    fn add(&mut self, word: u64) {
        self.a = (self.a.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        self.b = (self.b.rotate_left(29) ^ word).wrapping_mul(0x9e_37_79_b9_7f_4a_7c_15);
    }
}

impl Hasher for Fingerprint {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        // The length goes in too, so that trailing zeros count.
        word[7] = rest.len() as u8;
        self.add(u64::from_le_bytes(word));
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        mix(self.a)
    }
}

/// SplitMix64's finaliser: every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The set's hasher: its keys are fingerprints already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, i: u128) {
        self.0 = i as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
