//! Cluster mode: real daemons (separate processes, each with its own config, log folder and
//! journal) sharing a real PostgreSQL database. The job under test (`fixture_jobs:oracle`)
//! appends what it really did to one file shared by every node, so the assertions count
//! executions, not only history rows. Each test is named for its case in the cluster design's
//! failure list.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::pg::{self, Db};
use crate::util::*;

/// One execution the oracle saw.
#[derive(Debug, Clone)]
pub(crate) struct Exec {
    #[allow(dead_code)] // read in failure messages
    pub(crate) job: String,
    pub(crate) slot: String,
    pub(crate) node: String,
    pub(crate) fence: String,
    pub(crate) trigger: String,
    pub(crate) pid: i32,
    pub(crate) ended: bool,
}

/// What the jobs really did, from the shared oracle file.
pub(crate) fn oracle(file: &Path) -> Vec<Exec> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut runs: Vec<Exec> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 {
            continue;
        }
        match f[0] {
            "start" => runs.push(Exec {
                job: f[1].into(),
                slot: f[2].into(),
                node: f[3].into(),
                fence: f[4].into(),
                trigger: f[6].into(),
                pid: f[7].parse().unwrap_or(0),
                ended: false,
            }),
            "end" => {
                if let Some(r) = runs
                    .iter_mut()
                    .find(|r| r.pid.to_string() == f[7] && r.slot == f[2] && !r.ended)
                {
                    r.ended = true;
                }
            }
            _ => {}
        }
    }
    runs
}

/// Executions per slot.
pub(crate) fn per_slot(runs: &[Exec]) -> BTreeMap<String, Vec<Exec>> {
    let mut m: BTreeMap<String, Vec<Exec>> = BTreeMap::new();
    for r in runs {
        m.entry(r.slot.clone()).or_default().push(r.clone());
    }
    m
}

/// Timings small enough for tests of a few seconds.
pub(crate) struct Timing {
    pub(crate) heartbeat: &'static str,
    pub(crate) lease: &'static str,
    pub(crate) standby_delay: &'static str,
}

/// Trust deadline (lease − 2 × heartbeat): 1.4 s.
pub(crate) const FAST: Timing = Timing {
    heartbeat: "300ms",
    lease: "2s",
    standby_delay: "200ms",
};

/// For tests about something else than timing: room for a loaded machine.
pub(crate) const CALM: Timing = Timing {
    heartbeat: "500ms",
    lease: "3s",
    standby_delay: "200ms",
};

/// One node: a project of its own whose config joins the test's database.
pub(crate) struct Node {
    pub(crate) p: Project,
    pub(crate) name: String,
    pub(crate) child: Option<Child>,
}

impl Node {
    pub(crate) fn new(db: &Db, name: &str, priority: u32, timing: &Timing, jobs: &str) -> Node {
        let p = Project::new();
        let cluster = format!(
            r#"
[cluster]
database = "{}"
node = "{name}"
priority = {priority}
heartbeat = "{}"
lease = "{}"
standby_delay = "{}"
max_clock_skew = "300ms"
"#,
            db.conninfo(),
            timing.heartbeat,
            timing.lease,
            timing.standby_delay
        );
        p.config("", &format!("{jobs}\n{cluster}"));
        Node {
            p,
            name: name.to_string(),
            child: None,
        }
    }

    pub(crate) fn start(&mut self) -> &mut Self {
        self.child = Some(self.p.spawn_daemon());
        self
    }

    /// Waits until the daemon says it joined.
    pub(crate) fn joined(&self) -> bool {
        wait_until(Duration::from_secs(15), || {
            self.p.daemon_output().contains("joined the cluster")
        })
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.as_ref().expect("started").id() as i32
    }

    pub(crate) fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = signal_and_wait(c, Signal::SIGKILL, Duration::from_secs(5));
        }
    }

    pub(crate) fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        signal_and_wait(c, Signal::SIGTERM, Duration::from_secs(20))
    }
}

/// A primary `a` and a standby `b` running `job`, started and joined.
pub(crate) fn pair(db: &Db, timing: &Timing, job: &str) -> (Node, Node) {
    let mut a = Node::new(db, "a", 0, timing, job);
    let mut b = Node::new(db, "b", 1, timing, job);
    a.start();
    b.start();
    assert!(
        a.joined() && b.joined(),
        "{}\n{}",
        a.p.daemon_output(),
        b.p.daemon_output()
    );
    (a, b)
}

/// `pair`, then waits (30 s at most) until a run of a's has ended (in the oracle's `file`).
pub(crate) fn pair_after_a_run(db: &Db, timing: &Timing, job: &str, file: &Path) -> (Node, Node) {
    let (a, b) = pair(db, timing, job);
    assert!(
        wait_until(Duration::from_secs(30), || oracle(file)
            .iter()
            .any(|r| r.node == "a" && r.ended)),
        "no run of a's ended: {}",
        a.p.daemon_output()
    );
    (a, b)
}

/// A job of the oracle: `schedule`, sleeping `seconds`, with `extra` keys.
pub(crate) fn oracle_job(
    id: &str,
    file: &Path,
    schedule: &str,
    seconds: f64,
    extra: &str,
) -> String {
    format!(
        r#"[jobs.{id}]
entry = "fixture_jobs:oracle"
schedule = "{schedule}"
market_hours = false
catch_up = "none"
timeout = "60s"
args = {{ file = {file:?}, seconds = {seconds} }}
{extra}
"#
    )
}

pub(crate) fn shared_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hedge-cluster-")
        .tempdir()
        .expect("temp dir")
}

/// The test's PostgreSQL server and its hold on it (`exclusive` for a test that stops it).
macro_rules! need_pg {
    () => {
        match pg::shared() {
            Some(s) => s,
            None => return,
        }
    };
    (exclusive) => {
        match pg::exclusive() {
            Some(s) => s,
            None => return,
        }
    };
}

/// Case 1: three nodes race for every one-second slot; each slot has one claim, one decisive
/// run and one execution, and the race itself skips nothing.
#[test]
fn cluster_three_nodes_run_each_slot_exactly_once() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("tick", &file, "* * * * * *", 0.0, "");
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::new(&db, n, 0, &FAST, &job))
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    for n in &nodes {
        assert!(
            n.joined(),
            "{} did not join: {}",
            n.name,
            n.p.daemon_output()
        );
    }
    // Every node is in; from now on, count.
    let from = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert!(
        wait_until(Duration::from_secs(30), || {
            oracle(&file)
                .iter()
                .filter(|r| ts(&serde_json::Value::String(r.slot.clone())) >= from)
                .count()
                >= 8
        }),
        "slots did not run: {:?}",
        oracle(&file)
    );
    for n in nodes.iter_mut() {
        n.stop();
    }
    let runs = oracle(&file);
    let slots = per_slot(&runs);
    for (slot, execs) in &slots {
        assert_eq!(
            execs.len(),
            1,
            "slot {slot} ran {} times: {execs:?}",
            execs.len()
        );
    }
    // No slot between the first and the last was left out.
    let times: Vec<_> = slots
        .keys()
        .map(|s| ts(&serde_json::Value::String(s.clone())))
        .filter(|t| *t >= from)
        .collect();
    for w in times.windows(2) {
        assert_eq!(
            (w[1] - w[0]).num_seconds(),
            1,
            "a slot is missing between {w:?}"
        );
    }
    // The database agrees: one claim per slot, done; one decisive run per slot; no skipped.
    let claims = db.count("SELECT count(*) FROM hedge_scheduler.slots WHERE job = 'tick'");
    let done = db
        .count("SELECT count(*) FROM hedge_scheduler.slots WHERE job = 'tick' AND state = 'done'");
    assert_eq!(claims, slots.len() as i64, "claims vs executions");
    assert_eq!(done, claims, "every claim ended done");
    let doubled = db.count(
        "SELECT count(*) FROM (SELECT scheduled_at FROM hedge_scheduler.runs
          WHERE job = 'tick' AND outcome <> 'skipped' GROUP BY scheduled_at HAVING count(*) > 1) d",
    );
    assert_eq!(doubled, 0, "a slot has two runs");
    let skipped = db.count(
        "SELECT count(*) FROM hedge_scheduler.runs WHERE job = 'tick' AND outcome = 'skipped'",
    );
    assert_eq!(skipped, 0, "the race skipped slots");
    let uploaded = db.count(
        "SELECT count(*) FROM hedge_scheduler.runs WHERE job = 'tick' AND outcome = 'success'",
    );
    assert_eq!(
        uploaded,
        slots.len() as i64,
        "every run reached the cluster history"
    );
    let nodes_used: HashSet<_> = runs.iter().map(|r| r.node.clone()).collect();
    assert!(
        !nodes_used.contains("None"),
        "runs without a node: {runs:?}"
    );
}

/// Case 2: the priority-0 node wins every slot while it lives; after SIGKILL, new slots run on
/// the standby at once, without waiting for the dead node's lease.
#[test]
fn cluster_priority_zero_wins_and_a_standby_takes_new_slots_without_the_lease() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("tick", &file, "*/2 * * * * *", 0.0, "");
    // A long lease: had the standby waited for it, slots would be missing.
    let slow_lease = Timing {
        heartbeat: "500ms",
        lease: "6s",
        standby_delay: "200ms",
    };
    let (mut a, mut b) = pair(&db, &slow_lease, &job);
    let from = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert!(wait_until(Duration::from_secs(20), || {
        oracle(&file)
            .iter()
            .filter(|r| ts(&serde_json::Value::String(r.slot.clone())) >= from)
            .count()
            >= 4
    }));
    let before: Vec<_> = oracle(&file)
        .into_iter()
        .filter(|r| ts(&serde_json::Value::String(r.slot.clone())) >= from)
        .collect();
    assert!(
        before.iter().all(|r| r.node == "a"),
        "a standby won while the primary lived: {before:?}"
    );
    // Killed between slots (no claim of its live): its next slot is not its any more.
    assert!(wait_until(Duration::from_secs(10), || {
        let runs = oracle(&file);
        runs.last().is_some_and(|r| r.ended)
            && db.count("SELECT count(*) FROM hedge_scheduler.slots WHERE state = 'claimed'") == 0
    }));
    a.kill();
    let killed = chrono::Utc::now();
    assert!(wait_until(Duration::from_secs(20), || {
        oracle(&file).iter().filter(|r| r.node == "b").count() >= 4
    }));
    b.stop();
    let after: Vec<_> = oracle(&file)
        .into_iter()
        .filter(|r| ts(&serde_json::Value::String(r.slot.clone())) > killed)
        .collect();
    let slots = per_slot(&after);
    let first = slots
        .keys()
        .next()
        .map(|s| ts(&serde_json::Value::String(s.clone())))
        .expect("slots after the kill");
    // The first slot after the kill ran, on b: no lease wait.
    assert!(
        (first - killed).num_milliseconds() <= 2000,
        "the standby's first slot {first} is long after the kill at {killed}"
    );
    for (slot, execs) in &slots {
        assert_eq!(execs.len(), 1, "slot {slot}: {execs:?}");
        assert_eq!(execs[0].node, "b", "slot {slot}: {execs:?}");
    }
}

/// Case 3: nodes starting together on an empty database apply the migrations once.
#[test]
fn cluster_simultaneous_start_on_an_empty_database_migrates_once() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("tick", &file, "0 0 0 1 1 *", 0.0, "");
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .map(|n| Node::new(&db, n, 0, &FAST, &job))
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    for n in &nodes {
        assert!(n.joined(), "{}: {}", n.name, n.p.daemon_output());
        let out = n.p.daemon_output();
        assert!(!out.contains("ERROR"), "{}: {out}", n.name);
    }
    assert_eq!(db.count("SELECT count(*) FROM hedge_scheduler.meta"), 1);
    // Every migration applied, once (2: the presence lock and `orphan` claims).
    assert_eq!(db.count("SELECT version FROM hedge_scheduler.meta"), 2);
    assert_eq!(
        db.count("SELECT count(*) FROM hedge_scheduler.nodes WHERE state = 'alive'"),
        3
    );
    for n in nodes.iter_mut() {
        let status = n.stop().expect("stops");
        assert!(status.success(), "{}: {}", n.name, n.p.daemon_output());
    }
    assert_eq!(
        db.count("SELECT count(*) FROM hedge_scheduler.nodes WHERE state = 'stopped'"),
        3,
        "a graceful stop leaves the cluster"
    );
}

/// Case 4: a second live daemon with the same node name is refused (exit 1, named); once the
/// first is gone the name is free again, with a new epoch.
#[test]
fn cluster_duplicate_node_name_is_refused_while_the_first_lives() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("tick", &file, "0 0 0 1 1 *", 0.0, "");
    let mut first = Node::new(&db, "a", 0, &FAST, &job);
    first.start();
    assert!(first.joined());
    let twin = Node::new(&db, "a", 0, &FAST, &job);
    let out = twin.p.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node `a` is live on host") && err.contains("[cluster] node"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    first.stop();
    let mut again = twin;
    again.start();
    assert!(again.joined(), "{}", again.p.daemon_output());
    assert_eq!(
        db.count("SELECT epoch FROM hedge_scheduler.nodes WHERE node = 'a'"),
        2
    );
    again.stop();
}

/// The oracle's execution of `slot` on `node`, if any.
pub(crate) fn exec_on<'a>(runs: &'a [Exec], slot: &str, node: &str) -> Option<&'a Exec> {
    runs.iter().find(|r| r.slot == slot && r.node == node)
}

/// Starts a primary `a` and a standby `b` with a slow job every 20 s and waits until `a` runs a
/// slot; returns the nodes, the oracle file and that execution.
fn slow_slot_on_a(
    db: &Db,
    shared: &Path,
    takeover: &str,
    seconds: f64,
) -> (Node, Node, PathBuf, Exec) {
    let file = shared.join("oracle.log");
    let job = oracle_job(
        "slow",
        &file,
        "*/20 * * * * *",
        seconds,
        &format!("takeover = \"{takeover}\""),
    );
    let (a, b) = pair(db, &FAST, &job);
    assert!(
        wait_until(Duration::from_secs(30), || oracle(&file)
            .iter()
            .any(|r| r.node == "a")),
        "a never ran: {}",
        a.p.daemon_output()
    );
    let exec = oracle(&file)
        .into_iter()
        .find(|r| r.node == "a")
        .expect("a's run");
    (a, b, file, exec)
}

/// Case 5: the owner is SIGKILLed mid-run: its job dies with it; a survivor records the run
/// `abandoned` and runs the slot again (trigger `takeover`) within lease + heartbeat.
#[test]
fn cluster_owner_sigkilled_mid_run_its_slot_is_rerun_by_a_survivor() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let (mut a, mut b, file, exec) = slow_slot_on_a(&db, shared.path(), "rerun", 4.0);
    a.kill();
    let killed = std::time::Instant::now();
    // Its job process dies with it (the keeper ends it), well before the lease runs out.
    assert!(
        wait_until(Duration::from_secs(3), || !pid_alive(exec.pid)),
        "a's job outlived its daemon"
    );
    assert!(
        wait_until(Duration::from_secs(10), || exec_on(
            &oracle(&file),
            &exec.slot,
            "b"
        )
        .is_some()),
        "b did not rerun the slot: {}",
        b.p.daemon_output()
    );
    let rerun_after = killed.elapsed();
    assert!(
        wait_until(Duration::from_secs(10), || exec_on(
            &oracle(&file),
            &exec.slot,
            "b"
        )
        .is_some_and(|r| r.ended)),
        "the rerun did not finish"
    );
    let runs = oracle(&file);
    let rerun = exec_on(&runs, &exec.slot, "b").expect("rerun");
    assert_eq!(rerun.trigger, "takeover");
    assert!(rerun.fence.parse::<i64>().unwrap() > exec.fence.parse::<i64>().unwrap());
    let completed: Vec<_> = runs
        .iter()
        .filter(|r| r.slot == exec.slot && r.ended)
        .collect();
    assert_eq!(completed.len(), 1, "one completed execution: {runs:?}");
    // lease (2 s) + heartbeat (300 ms), and the job's start; generous for a loaded machine.
    assert!(
        rerun_after < Duration::from_secs(6),
        "rerun after {rerun_after:?}"
    );
    assert!(wait_until(Duration::from_secs(10), || {
        db.count(&format!(
            "SELECT count(*) FROM hedge_scheduler.runs WHERE job = 'slow' AND node = 'b'
              AND trigger = 'takeover' AND attempt = 2 AND outcome = 'success'
              AND scheduled_at = '{}'",
            exec.slot
        )) == 1
    }));
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM hedge_scheduler.runs WHERE job = 'slow' AND node = 'a'
              AND outcome = 'abandoned' AND error LIKE 'node a lost its lease%'
              AND scheduled_at = '{}'",
            exec.slot
        )),
        1,
        "{:?}",
        db.query("SELECT node, outcome, error FROM hedge_scheduler.runs")
    );
    b.stop();
}

/// Case 6: the same with `takeover = "abandon"`: no rerun; the slot is `abandoned`, and the
/// next slot runs on the survivor.
#[test]
fn cluster_owner_sigkilled_with_takeover_abandon_is_not_rerun() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let (mut a, mut b, file, exec) = slow_slot_on_a(&db, shared.path(), "abandon", 4.0);
    a.kill();
    assert!(
        wait_until(Duration::from_secs(10), || db.count(&format!(
            "SELECT count(*) FROM hedge_scheduler.slots WHERE job = 'slow'
              AND scheduled_at = '{}' AND state = 'abandoned'",
            exec.slot
        )) == 1),
        "the slot was not abandoned: {:?}",
        db.query("SELECT job, scheduled_at, state, owner_node FROM hedge_scheduler.slots")
    );
    // The next slot (20 s later) runs on b.
    assert!(
        wait_until(Duration::from_secs(30), || oracle(&file)
            .iter()
            .any(|r| r.node == "b" && r.slot != exec.slot)),
        "{}",
        b.p.daemon_output()
    );
    assert!(
        exec_on(&oracle(&file), &exec.slot, "b").is_none(),
        "rerun under abandon"
    );
    b.stop();
}

/// Case 10: the node's own restart within the lease: a new epoch, the old epoch's run
/// abandoned at once and its slot rerun without waiting for the lease.
#[test]
fn cluster_restart_of_the_same_node_settles_its_old_epoch_at_once() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("slow", &file, "*/20 * * * * *", 3.0, "");
    // A lease far longer than the restart.
    let long = Timing {
        heartbeat: "1s",
        lease: "30s",
        standby_delay: "200ms",
    };
    let mut a = Node::new(&db, "a", 0, &long, &job);
    a.start();
    assert!(a.joined());
    assert!(wait_until(Duration::from_secs(30), || !oracle(&file).is_empty()));
    let exec = oracle(&file)[0].clone();
    a.kill();
    let killed = std::time::Instant::now();
    a.start();
    assert!(
        wait_until(Duration::from_secs(15), || oracle(&file).iter().any(|r| r
            .slot
            == exec.slot
            && r.node == "a"
            && r.trigger == "takeover")),
        "the old epoch's slot was not rerun: {}",
        a.p.daemon_output()
    );
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "waited for the lease"
    );
    assert_eq!(
        db.count("SELECT epoch FROM hedge_scheduler.nodes WHERE node = 'a'"),
        2
    );
    assert!(!pid_alive(exec.pid), "the old epoch's job still runs");
    a.stop();
}

/// Case 18: the database restarts while a slot runs: the run completes, its end reaches the
/// cluster history after the reconnect, and nothing is abandoned or run twice.
#[test]
fn cluster_database_restart_mid_run_completes_the_run_once() {
    let (server, _hold) = need_pg!(exclusive);
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("slow", &file, "*/20 * * * * *", 4.0, "");
    let (mut a, mut b) = pair(&db, &FAST, &job);
    assert!(wait_until(Duration::from_secs(30), || !oracle(&file).is_empty()));
    let exec = oracle(&file)[0].clone();
    server.stop();
    std::thread::sleep(Duration::from_millis(500));
    server.start_again();
    assert!(
        wait_until(Duration::from_secs(15), || db.count(&format!(
            "SELECT count(*) FROM hedge_scheduler.runs WHERE job = 'slow' AND outcome = 'success'
              AND scheduled_at = '{}'",
            exec.slot
        )) == 1),
        "the finish never reached the database: {}\n{:?}",
        a.p.daemon_output(),
        db.query("SELECT node, outcome, error FROM hedge_scheduler.runs")
    );
    a.stop();
    b.stop();
    let runs = oracle(&file);
    let of_slot: Vec<_> = runs.iter().filter(|r| r.slot == exec.slot).collect();
    assert_eq!(of_slot.len(), 1, "{runs:?}");
    assert!(of_slot[0].ended);
    assert_eq!(
        db.count("SELECT count(*) FROM hedge_scheduler.runs WHERE outcome = 'abandoned'"),
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM hedge_scheduler.nodes WHERE epoch <> 1"),
        0,
        "a node lost its lease over a short restart"
    );
}

/// Sends `sig` to a process of ours (a daemon or its job).
pub(crate) fn signal(pid: i32, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("signal");
}

/// The oracle's start instant of an execution, from its line.
pub(crate) fn started_at(file: &Path, pid: i32) -> Option<f64> {
    std::fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 9 && f[0] == "start" && f[7] == pid.to_string()).then(|| f[8].parse().ok())?
    })
}

/// Case 11, as the nemesis taught it (A5): the owner's daemon is SIGSTOPped past its lease while
/// its job runs. The job ends at the trust deadline (the keeper ends it); no peer runs the slot
/// while the stopped daemon's session still lives (its job might have completed, and a rerun
/// would double it). Resumed, the node finds it was declared dead, rejoins with a new epoch and
/// gives the unfinished slot back (`orphan`): it is run again, once, before the next slot.
#[test]
fn cluster_paused_owner_daemon_job_ends_at_the_trust_deadline_and_its_slot_is_rerun_after() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let (mut a, mut b, file, exec) = slow_slot_on_a(&db, shared.path(), "rerun", 6.0);
    signal(a.pid(), Signal::SIGSTOP);
    let stopped = std::time::Instant::now();
    // The keeper ends a's job at the trust deadline (1.4 s); nobody reruns the slot meanwhile.
    assert!(
        wait_until(Duration::from_secs(5), || !pid_alive(exec.pid)),
        "a's job outlived the trust deadline"
    );
    while stopped.elapsed() < Duration::from_secs(4) {
        assert!(
            exec_on(&oracle(&file), &exec.slot, "b").is_none(),
            "b ran the slot while a's daemon, stopped, still held its session"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(a.pid(), Signal::SIGCONT);
    assert!(
        wait_until(Duration::from_secs(15), || db.count(
            "SELECT count(*) FROM hedge_scheduler.nodes WHERE node = 'a' AND state = 'alive'
              AND epoch = 2"
        ) == 1),
        "{}",
        a.p.daemon_output()
    );
    // The slot runs again (a takeover, on either node), to completion, once.
    assert!(
        wait_until(Duration::from_secs(10), || oracle(&file)
            .iter()
            .any(|r| r.slot == exec.slot && r.trigger == "takeover" && r.ended)),
        "the slot was not run again: {:?}\n{}\n{}",
        db.query("SELECT job, scheduled_at, state, owner_node, owner_epoch, fence FROM hedge_scheduler.slots"),
        a.p.daemon_output(),
        b.p.daemon_output()
    );
    a.stop();
    b.stop();
    let runs = oracle(&file);
    let done: Vec<_> = runs
        .iter()
        .filter(|r| r.slot == exec.slot && r.ended)
        .collect();
    assert_eq!(done.len(), 1, "{runs:?}");
    assert!(
        db.count(&format!(
            "SELECT count(*) FROM hedge_scheduler.slots WHERE job = 'slow'
              AND scheduled_at = '{}' AND state = 'done'",
            exec.slot
        )) == 1,
        "{:?}",
        db.query("SELECT job, scheduled_at, state, owner_node, fence FROM hedge_scheduler.slots")
    );
}

/// Case 12: the daemon and its job are stopped together past the lease (a frozen host): nobody
/// reruns the slot while the frozen daemon's session lives; the keeper, still running, ends the
/// job; resumed, the node gives the slot back and it runs once. Never two completed executions.
#[test]
fn cluster_paused_daemon_and_job_together_cannot_double_the_slot() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let (a, mut b, file, exec) = slow_slot_on_a(&db, shared.path(), "rerun", 6.0);
    signal(a.pid(), Signal::SIGSTOP);
    signal(exec.pid, Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        exec_on(&oracle(&file), &exec.slot, "b").is_none(),
        "b ran the slot while a was frozen"
    );
    if pid_alive(exec.pid) {
        signal(exec.pid, Signal::SIGCONT);
    }
    signal(a.pid(), Signal::SIGCONT);
    assert!(
        wait_until(Duration::from_secs(15), || oracle(&file).iter().any(|r| r
            .slot
            == exec.slot
            && r.trigger == "takeover"
            && r.ended)),
        "{}\n{}",
        a.p.daemon_output(),
        b.p.daemon_output()
    );
    // One completed execution of the slot: the rerun. a's never finished its work.
    let runs = oracle(&file);
    let done: Vec<_> = runs
        .iter()
        .filter(|r| r.slot == exec.slot && r.ended)
        .collect();
    assert_eq!(done.len(), 1, "{runs:?}");
    assert!(wait_until(Duration::from_secs(10), || db.count(&format!(
        "SELECT count(*) FROM hedge_scheduler.runs WHERE trigger = 'takeover'
          AND outcome = 'success' AND scheduled_at = '{}'",
        exec.slot
    )) == 1));
    let status: serde_json::Value =
        serde_json::from_slice(&b.p.run(&["status", "--json"]).stdout).expect("JSON");
    // Two executions of the slot were started (a's, ended by its keeper, and the rerun):
    // `duplicates_today` counts executions, so 1.
    assert_eq!(
        status["jobs"][0]["duplicates_today"],
        1,
        "{:?}",
        db.query("SELECT node, node_epoch, fence, outcome, stale, trigger, scheduled_at FROM hedge_scheduler.runs")
    );
    let mut a = a;
    a.stop();
    b.stop();
}

/// Case 13: a pause shorter than the lease: no takeover, no duplicate, the run completes.
#[test]
fn cluster_short_pause_is_not_a_death() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let (mut a, mut b, file, exec) = slow_slot_on_a(&db, shared.path(), "rerun", 2.0);
    signal(a.pid(), Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(400));
    signal(a.pid(), Signal::SIGCONT);
    assert!(wait_until(Duration::from_secs(10), || exec_on(
        &oracle(&file),
        &exec.slot,
        "a"
    )
    .is_some_and(|r| r.ended)));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        exec_on(&oracle(&file), &exec.slot, "b").is_none(),
        "taken over"
    );
    assert_eq!(db.count("SELECT max(epoch) FROM hedge_scheduler.nodes"), 1);
    a.stop();
    b.stop();
}

/// Case 25: `run-once` on b while a runs the job: exit 4 naming node a; with `--wait` it waits,
/// then runs once.
#[test]
fn cluster_run_once_on_another_host_refuses_while_the_job_runs_and_waits_with_wait() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let (mut a, mut b, file, exec) = slow_slot_on_a(&db, shared.path(), "rerun", 3.0);
    let out = b.p.run(&["run-once", "slow"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`slow` is running on node a"), "{err}");
    assert!(err.contains("--wait"), "{err}");
    let out = b.p.run(&["run-once", "slow", "--wait", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(row["outcome"], "success");
    assert_eq!(row["node"], "b");
    let runs = oracle(&file);
    let manual: Vec<_> = runs.iter().filter(|r| r.trigger == "manual").collect();
    assert_eq!(manual.len(), 1, "{runs:?}");
    assert!(manual[0].ended);
    // It started only after a's run of the job had ended: never two at once.
    let a_end = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("end ") && l.contains(&exec.slot))
        .and_then(|l| {
            l.split_whitespace()
                .nth(8)
                .and_then(|t| t.parse::<f64>().ok())
        })
        .expect("a's end");
    let m_start = started_at(&file, manual[0].pid).expect("manual start");
    assert!(m_start >= a_end, "the manual run started before a's ended");
    assert!(wait_until(Duration::from_secs(10), || db.count(
        "SELECT count(*) FROM hedge_scheduler.runs WHERE trigger = 'manual' AND node = 'b'
          AND outcome = 'success'"
    ) == 1));
    assert_eq!(
        db.count(
            "SELECT count(*) FROM hedge_scheduler.slots WHERE kind = 'manual' AND state = 'done'"
        ),
        1
    );
    a.stop();
    b.stop();
}

/// Case 29: `status` and `history` on any node show every node's runs and states, a dead node
/// with its abandoned run among them; with the database down both fall back to the local
/// journal and say so.
#[test]
fn cluster_status_and_history_show_the_whole_cluster_from_any_node() {
    let (server, _hold) = need_pg!(exclusive);
    let db = server.database();
    let shared = shared_dir();
    let (mut a, mut b, file, exec) = slow_slot_on_a(&db, shared.path(), "abandon", 3.0);
    a.kill();
    assert!(wait_until(Duration::from_secs(10), || db.count(&format!(
        "SELECT count(*) FROM hedge_scheduler.runs WHERE node = 'a' AND outcome = 'abandoned'
          AND scheduled_at = '{}'",
        exec.slot
    )) == 1));
    // b's history shows a's abandoned run; b's status shows a dead.
    let out = b.p.run(&["history", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let abandoned = rows
        .iter()
        .find(|r| r["node"] == "a" && r["outcome"] == "abandoned")
        .unwrap_or_else(|| panic!("{rows:?}"));
    for key in [
        "node",
        "node_epoch",
        "fence",
        "stale",
        "degraded",
        "run_uid",
    ] {
        assert!(abandoned.get(key).is_some(), "{key} missing: {abandoned}");
    }
    let only_b = b.p.run(&["history", "--json", "--node", "b"]);
    let only_b: Vec<serde_json::Value> = serde_json::from_slice(&only_b.stdout).expect("JSON");
    assert!(only_b.iter().all(|r| r["node"] == "b"), "{only_b:?}");
    let out = b.p.run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let cluster = &status["cluster"];
    assert_eq!(cluster["reachable"], true, "{status}");
    assert_eq!(cluster["alive"], 1, "{status}");
    let nodes = cluster["nodes"].as_array().expect("nodes");
    let node_a = nodes.iter().find(|n| n["node"] == "a").expect("a");
    assert_eq!(node_a["state"], "dead", "{status}");
    for key in [
        "node",
        "state",
        "host",
        "pid",
        "heartbeat_age_seconds",
        "clock_offset_ms",
    ] {
        assert!(node_a.get(key).is_some(), "{key} missing: {node_a}");
    }
    let job = &status["jobs"][0];
    assert!(
        job.get("duplicates_today").is_some() && job.get("node").is_some(),
        "{job}"
    );
    let human = b.p.run(&["status"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("CLUSTER") && human.contains("dead"),
        "{human}"
    );
    // The database goes down: both commands fall back to this host's journal, and say so.
    server.stop();
    let out = b.p.run(&["history"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    server.start_again();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout
            .lines()
            .next()
            .unwrap_or("")
            .contains("cluster database unreachable: showing node b only"),
        "{stdout}"
    );
    server.stop();
    let out = b.p.run(&["status", "--json"]);
    server.start_again();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status["cluster"]["reachable"], false, "{status}");
    assert!(
        status["warnings"][0]
            .as_str()
            .unwrap_or("")
            .starts_with("cluster database unreachable: showing node b only"),
        "{status}"
    );
    // Plain `status` says so on its first line too, not after the tables (nemesis A8).
    server.stop();
    let out = b.p.run(&["status"]);
    server.start_again();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .next()
            .unwrap_or("")
            .contains("cluster database unreachable: showing node b only"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("cluster database unreachable").count(),
        1,
        "{stdout}"
    );
    let _ = file;
    b.stop();
}

/// Case 30: a graceful stop of a releases its lease at once: b takes the next slot without a
/// lease wait, and a's cancelled run is not run again.
#[test]
fn cluster_graceful_stop_hands_over_at_once_and_a_cancelled_run_is_not_rerun() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("tick", &file, "*/2 * * * * *", 30.0, "");
    // A long lease: had b waited for it, the next slots would be missing.
    let long = Timing {
        heartbeat: "500ms",
        lease: "10s",
        standby_delay: "200ms",
    };
    let mut a = Node::new(&db, "a", 0, &long, &job);
    let mut b = Node::new(&db, "b", 1, &long, &job);
    // a stops its run after 1 s of grace.
    a.p.set("scheduler.shutdown_grace", "1s");
    a.start();
    b.start();
    assert!(a.joined() && b.joined());
    assert!(wait_until(Duration::from_secs(20), || oracle(&file)
        .iter()
        .any(|r| r.node == "a")));
    let exec = oracle(&file).into_iter().find(|r| r.node == "a").unwrap();
    let status = a.stop().expect("a stops");
    assert!(status.success(), "{}", a.p.daemon_output());
    let stopped = chrono::Utc::now();
    assert_eq!(
        db.count(
            "SELECT count(*) FROM hedge_scheduler.nodes WHERE node = 'a' AND state = 'stopped'"
        ),
        1
    );
    assert!(
        wait_until(Duration::from_secs(8), || oracle(&file)
            .iter()
            .any(|r| r.node == "b")),
        "{}",
        b.p.daemon_output()
    );
    let first_b = oracle(&file).into_iter().find(|r| r.node == "b").unwrap();
    let first_b_slot = ts(&serde_json::Value::String(first_b.slot.clone()));
    assert!(
        (first_b_slot - stopped).num_milliseconds() <= 2500,
        "b's first slot {first_b_slot} came long after a stopped at {stopped}"
    );
    assert_ne!(first_b.slot, exec.slot, "a's cancelled run was run again");
    assert!(wait_until(Duration::from_secs(5), || db.count(&format!(
        "SELECT count(*) FROM hedge_scheduler.runs WHERE node = 'a' AND outcome = 'cancelled'
          AND scheduled_at = '{}'",
        exec.slot
    )) == 1));
    b.stop();
}

/// Runs a, b (priority 0, 1) with a one-second job under `policy`, takes the database down for
/// 4 s in the middle, and returns the oracle, with the outage's bounds (UTC seconds).
fn outage(
    server: &'static pg::Server,
    db: &Db,
    shared: &Path,
    policy: &str,
) -> (Node, Node, Vec<Exec>, f64, f64) {
    let file = shared.join("oracle.log");
    let job = oracle_job(
        "tick",
        &file,
        "* * * * * *",
        0.0,
        &format!("on_database_loss = \"{policy}\""),
    );
    let (mut a, mut b) = pair(db, &FAST, &job);
    assert!(wait_until(Duration::from_secs(20), || oracle(&file).len() >= 3));
    let now = || chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    let down = now();
    server.stop();
    std::thread::sleep(Duration::from_secs(4));
    server.start_again();
    let up = now();
    let count = oracle(&file).len();
    assert!(
        wait_until(Duration::from_secs(20), || oracle(&file)
            .iter()
            .filter(|r| slot_secs(r) > up + 2.0)
            .count()
            >= 3),
        "slots stopped after the outage: {}",
        a.p.daemon_output()
    );
    assert!(oracle(&file).len() > count);
    a.stop();
    b.stop();
    (a, b, oracle(&file), down, up)
}

pub(crate) fn slot_secs(r: &Exec) -> f64 {
    ts(&serde_json::Value::String(r.slot.clone())).timestamp_micros() as f64 / 1e6
}

/// Case 15: the database is down during runs with `on_database_loss = "run"`: every node fires
/// locally; after the restart their journals are uploaded once, the duplicates are counted, and
/// the nodes show their degraded period.
#[test]
fn cluster_database_down_with_run_policy_fires_everywhere_and_uploads_once() {
    let (server, _hold) = need_pg!(exclusive);
    let db = server.database();
    let shared = shared_dir();
    let (a, _b, runs, down, up) = outage(server, &db, shared.path(), "run");
    let during: Vec<_> = runs
        .iter()
        .filter(|r| slot_secs(r) > down + 1.0 && slot_secs(r) < up - 0.5)
        .collect();
    assert!(
        !during.is_empty(),
        "nothing ran during the outage: {runs:?}"
    );
    let slots = per_slot(&runs);
    let doubled = slots
        .iter()
        .filter(|(_, e)| e.iter().any(|x| x.node == "a") && e.iter().any(|x| x.node == "b"))
        .count();
    assert!(
        doubled > 0,
        "both nodes should have fired during the outage: {during:?}"
    );
    for (slot, execs) in &slots {
        let s = slot_secs(&execs[0]);
        if s > up + 2.0 {
            assert_eq!(execs.len(), 1, "after the outage {slot}: {execs:?}");
        }
        let per_node: HashSet<_> = execs.iter().map(|e| e.node.clone()).collect();
        assert_eq!(
            per_node.len(),
            execs.len(),
            "a node ran {slot} twice: {execs:?}"
        );
    }
    // Uploaded exactly once: one cluster row per execution, the degraded ones flagged.
    let degraded = runs.iter().filter(|r| r.fence == "None").count() as i64;
    assert!(wait_until(Duration::from_secs(10), || db.count(
        "SELECT count(*) FROM hedge_scheduler.runs WHERE degraded AND outcome = 'success'"
    ) == degraded));
    assert!(
        wait_until(Duration::from_secs(10), || db.count(
            "SELECT count(*) FROM hedge_scheduler.runs WHERE outcome = 'success'"
        ) == runs.len() as i64),
        "{runs:?}\n{:?}\n{}",
        db.query("SELECT node, node_epoch, scheduled_at, outcome, fence, degraded, error FROM hedge_scheduler.runs ORDER BY scheduled_at"),
        a.p.daemon_output()
    );
    let status: serde_json::Value =
        serde_json::from_slice(&a.p.run(&["status", "--json"]).stdout).expect("JSON");
    assert_eq!(
        status["jobs"][0]["duplicates_today"], doubled as u64,
        "{status}"
    );
    assert!(
        status["cluster"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| !n["degraded_since"].is_null()),
        "{status}\n{}",
        a.p.daemon_output()
    );
}

/// Case 16: the same with `on_database_loss = "skip"`: nothing runs during the outage, and its
/// slots are recorded `skipped` (cluster database unreachable).
#[test]
fn cluster_database_down_with_skip_policy_runs_nothing_and_records_the_slots() {
    let (server, _hold) = need_pg!(exclusive);
    let db = server.database();
    let shared = shared_dir();
    let (_a, _b, runs, down, up) = outage(server, &db, shared.path(), "skip");
    let during: Vec<_> = runs
        .iter()
        .filter(|r| slot_secs(r) > down + 0.5 && slot_secs(r) < up - 0.5)
        .collect();
    assert!(during.is_empty(), "ran during the outage: {during:?}");
    for (slot, execs) in per_slot(&runs) {
        assert_eq!(execs.len(), 1, "{slot}: {execs:?}");
    }
    assert!(wait_until(Duration::from_secs(10), || db.count(
        "SELECT count(*) FROM hedge_scheduler.runs WHERE outcome = 'skipped'
          AND error LIKE 'cluster database unreachable%'"
    ) >= 2));
}

/// Case 17: the same with `on_database_loss = "primary"`: exactly one node (priority 0) runs
/// each slot during the outage.
#[test]
fn cluster_database_down_with_primary_policy_runs_on_the_primary_only() {
    let (server, _hold) = need_pg!(exclusive);
    let db = server.database();
    let shared = shared_dir();
    let (_a, _b, runs, down, up) = outage(server, &db, shared.path(), "primary");
    let during: Vec<_> = runs
        .iter()
        .filter(|r| slot_secs(r) > down + 1.0 && slot_secs(r) < up - 0.5)
        .collect();
    assert!(!during.is_empty(), "nothing ran during the outage");
    assert!(during.iter().all(|r| r.node == "a"), "{during:?}");
    for (slot, execs) in per_slot(&runs) {
        assert_eq!(execs.len(), 1, "{slot}: {execs:?}");
    }
}

/// Case 7: the owner dies so late that its slot cannot be run again before the next one: no
/// rerun (the row says the next slot was too close), and the next slot runs on the survivor.
#[test]
fn cluster_owner_dying_near_the_next_slot_is_not_rerun_past_it() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("slow", &file, "*/4 * * * * *", 3.5, "");
    let (mut a, mut b) = pair(&db, &FAST, &job);
    assert!(wait_until(Duration::from_secs(20), || oracle(&file)
        .iter()
        .any(|r| r.node == "a")));
    let exec = oracle(&file).into_iter().find(|r| r.node == "a").unwrap();
    let slot = ts(&serde_json::Value::String(exec.slot.clone()));
    // Kill it 3 s into its 4-s slot: the lease (2 s) runs out after the next slot.
    let at = slot + chrono::Duration::milliseconds(3000);
    while chrono::Utc::now() < at {
        std::thread::sleep(Duration::from_millis(10));
    }
    a.kill();
    let next = slot + chrono::Duration::seconds(4);
    let next_s = next.to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
    assert!(
        wait_until(Duration::from_secs(15), || oracle(&file)
            .iter()
            .any(
                |r| r.node == "b" && ts(&serde_json::Value::String(r.slot.clone())) == next
            )),
        "the next slot ({next_s}) did not run on b: {}",
        b.p.daemon_output()
    );
    assert!(
        exec_on(&oracle(&file), &exec.slot, "b").is_none(),
        "rerun past the next slot"
    );
    assert!(
        wait_until(Duration::from_secs(10), || db.count(&format!(
            "SELECT count(*) FROM hedge_scheduler.runs WHERE node = 'a' AND outcome = 'abandoned'
              AND scheduled_at = '{}' AND error LIKE '%next slot%'",
            exec.slot
        )) == 1),
        "{:?}",
        db.query("SELECT node, scheduled_at, outcome, error FROM hedge_scheduler.runs")
    );
    b.stop();
}

/// Case 8: the owner dies between its claim and its run's start (a claim with no run row):
/// the slot is taken over, never left `claimed`.
#[test]
fn cluster_owner_dying_between_claim_and_start_leaves_no_claimed_slot() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("slow", &file, "*/10 * * * * *", 0.5, "");
    let (mut a, mut b) = pair(&db, &FAST, &job);
    // Not while a run of the job is live (one live claim per job; a run takes half a second).
    assert!(wait_until(Duration::from_secs(15), || {
        db.count(
        "SELECT count(*) FROM hedge_scheduler.slots WHERE job = 'slow' AND state IN ('claimed', 'running')"
    ) == 0
    }));
    // a's claim of the next slot, made for it, as if it died right after claiming.
    let now = chrono::Utc::now();
    let next = (now.timestamp() / 10 + 1) * 10;
    let next = chrono::DateTime::<chrono::Utc>::from_timestamp(next, 0).unwrap();
    let next = if (next - now).num_milliseconds() < 1500 {
        next + chrono::Duration::seconds(10)
    } else {
        next
    };
    let slot = next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    db.execute(&format!(
        "INSERT INTO hedge_scheduler.slots (job, scheduled_at, owner_node, owner_epoch, state,
                                            valid_until, jobs_hash)
         VALUES ('slow', '{slot}', 'a', 1, 'claimed', '{slot}'::timestamptz + interval '10 s', '')"
    ));
    a.kill();
    assert!(
        wait_until(Duration::from_secs(20), || oracle(&file).iter().any(|r| r
            .node
            == "b"
            && ts(&serde_json::Value::String(r.slot.clone())) == next
            && r.trigger == "takeover")),
        "{}",
        b.p.daemon_output()
    );
    assert!(wait_until(Duration::from_secs(10), || db.count(&format!(
        "SELECT count(*) FROM hedge_scheduler.slots WHERE scheduled_at = '{slot}' AND state = 'done'
           AND owner_node = 'b'"
    )) == 1));
    assert_eq!(
        db.count("SELECT count(*) FROM hedge_scheduler.slots WHERE state = 'claimed' AND owner_node = 'a'"),
        0
    );
    assert!(wait_until(Duration::from_secs(5), || db.count(&format!(
        "SELECT count(*) FROM hedge_scheduler.runs WHERE node = 'a' AND outcome = 'abandoned'
          AND scheduled_at = '{slot}'"
    )) == 1));
    b.stop();
}

/// Case 9: the owner dies while its failed run waits for its retry: the retry is taken over
/// (attempt 2 on the survivor), still before the next slot.
#[test]
fn cluster_owner_dying_between_retry_attempts_hands_the_retry_over() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = format!(
        r#"[jobs.flaky]
entry = "fixture_jobs:oracle"
schedule = "*/20 * * * * *"
market_hours = false
catch_up = "none"
timeout = "60s"
retry = {{ attempts = 3, backoff = "5s" }}
args = {{ file = {file:?}, seconds = 0, fail_node = "a" }}
"#
    );
    let (mut a, mut b) = pair(&db, &FAST, &job);
    assert!(
        wait_until(Duration::from_secs(30), || a
            .p
            .daemon_output()
            .contains("will retry at")),
        "{}",
        a.p.daemon_output()
    );
    let failed = oracle(&file).into_iter().find(|r| r.node == "a").unwrap();
    a.kill();
    assert!(
        wait_until(Duration::from_secs(10), || oracle(&file).iter().any(|r| r
            .node
            == "b"
            && r.slot == failed.slot
            && r.ended)),
        "{}",
        b.p.daemon_output()
    );
    assert!(wait_until(Duration::from_secs(10), || db.count(&format!(
        "SELECT count(*) FROM hedge_scheduler.runs WHERE node = 'b' AND trigger = 'takeover'
          AND attempt = 2 AND outcome = 'success' AND scheduled_at = '{}'",
        failed.slot
    )) == 1));
    b.stop();
}

/// Case 21: a node's connection is killed: it reconnects within a heartbeat and keeps its
/// lease (no new epoch, no takeover); every slot still runs once.
#[test]
fn cluster_killed_connection_reconnects_and_keeps_the_lease() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("tick", &file, "* * * * * *", 0.0, "");
    let (mut a, mut b) = pair(&db, &CALM, &job);
    assert!(wait_until(Duration::from_secs(20), || oracle(&file).len() >= 2));
    for _ in 0..3 {
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name = 'hedge-scheduler/a/node' AND datname = current_database()",
        );
        std::thread::sleep(Duration::from_millis(700));
    }
    let after = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert!(wait_until(Duration::from_secs(20), || oracle(&file)
        .iter()
        .filter(|r| ts(&serde_json::Value::String(r.slot.clone())) > after)
        .count()
        >= 3));
    a.stop();
    b.stop();
    assert_eq!(
        db.count("SELECT max(epoch) FROM hedge_scheduler.nodes"),
        1,
        "{}",
        a.p.daemon_output()
    );
    let runs = oracle(&file);
    for (slot, execs) in per_slot(&runs) {
        assert_eq!(execs.len(), 1, "{slot}: {execs:?}\n{}", a.p.daemon_output());
    }
    // A slot whose claim met the broken connection may go to the standby: still once.
    assert!(
        runs.iter().all(|r| r.trigger == "schedule"),
        "{runs:?}\n{}\n{}",
        a.p.daemon_output(),
        b.p.daemon_output()
    );
}

/// Starts `node` with its wall clock shifted by `offset` (libfaketime; monotonic time real).
pub(crate) fn start_with_clock(node: &mut Node, offset: &str) {
    let lib = crate::util::libfaketime();
    let offset = offset.to_string();
    node.child = Some(node.p.spawn_daemon_with(&[], move |cmd| {
        cmd.env("LD_PRELOAD", &lib)
            .env("FAKETIME", &offset)
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("FAKETIME_NO_CACHE", "1");
    }));
}

/// Case 22: node b's clock is 5 s fast: it never runs a slot early, `status` shows its offset,
/// it stops claiming (and says so), and the slots run on time on a.
#[test]
fn cluster_node_with_a_fast_clock_never_runs_a_slot_early() {
    if !crate::util::have_faketime() {
        return;
    }
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("tick", &file, "* * * * * *", 0.0, "");
    // b would claim first (priority 0), but its clock is 5 s ahead.
    let mut a = Node::new(&db, "a", 1, &FAST, &job);
    let mut b = Node::new(&db, "b", 0, &FAST, &job);
    a.start();
    start_with_clock(&mut b, "+5s");
    assert!(a.joined() && b.joined(), "{}", b.p.daemon_output());
    let from = chrono::Utc::now();
    assert!(wait_until(Duration::from_secs(20), || oracle(&file).len() >= 5));
    let status: serde_json::Value =
        serde_json::from_slice(&a.p.run(&["status", "--json"]).stdout).expect("JSON");
    let b_row = status["cluster"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "b")
        .cloned()
        .expect("b");
    let off = b_row["clock_offset_ms"].as_i64().expect("b's offset");
    assert!((4500..5500).contains(&off), "{b_row}");
    a.stop();
    b.stop();
    let runs = oracle(&file);
    assert!(
        runs.iter().all(|r| r.node == "a"),
        "b ran slots: {runs:?}\n{}",
        b.p.daemon_output()
    );
    for (slot, execs) in per_slot(&runs) {
        assert_eq!(execs.len(), 1, "{slot}: {execs:?}");
        let started = started_at(&file, execs[0].pid).unwrap();
        let s = slot_secs(&execs[0]);
        assert!(started >= s - 0.005, "{slot} ran early at {started}");
    }
    // No slot lost to b's refused claims: a ran every one, on time.
    let times: Vec<_> = per_slot(&runs).values().map(|e| slot_secs(&e[0])).collect();
    assert!(times.len() >= 5);
    for w in times.windows(2) {
        assert!(
            (w[1] - w[0] - 1.0).abs() < 0.01,
            "a slot is missing: {times:?}"
        );
    }
    assert!(
        b.p.daemon_output().contains("not claiming")
            || b.p.daemon_output().contains("off the cluster database's"),
        "{}",
        b.p.daemon_output()
    );
    let _ = from;
}

/// Case 23: every node agrees and the database's clock is the odd one: the guard is suspended
/// with a warning, and the slots still run.
#[test]
fn cluster_database_clock_off_does_not_silence_the_cluster() {
    if !crate::util::have_faketime() {
        return;
    }
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("tick", &file, "* * * * * *", 0.0, "");
    let mut a = Node::new(&db, "a", 0, &FAST, &job);
    let mut b = Node::new(&db, "b", 1, &FAST, &job);
    start_with_clock(&mut a, "+5s");
    start_with_clock(&mut b, "+5s");
    assert!(a.joined() && b.joined());
    assert!(
        wait_until(Duration::from_secs(25), || oracle(&file).len() >= 4),
        "{}",
        a.p.daemon_output()
    );
    a.stop();
    b.stop();
    assert!(
        a.p.daemon_output()
            .contains("the database's clock is wrong"),
        "{}",
        a.p.daemon_output()
    );
    for (slot, execs) in per_slot(&oracle(&file)) {
        assert_eq!(execs.len(), 1, "{slot}: {execs:?}");
    }
}

/// Case 24: overlap across hosts. The job runs on b (a manual run); a's slot meanwhile is
/// `skipped` once, naming b (overlap `skip`), or runs right after b's run ends (`queue`).
#[test]
fn cluster_overlap_across_hosts_skip_records_once_and_queue_runs_after() {
    let (server, _hold) = need_pg!();
    for (policy, want_skip) in [("skip", true), ("queue", false)] {
        let db = server.database();
        let shared = shared_dir();
        let file = shared.path().join("oracle.log");
        let job = oracle_job(
            "slow",
            &file,
            "*/2 * * * * *",
            0.2,
            &format!("overlap = \"{policy}\"\nmisfire_grace = \"10s\""),
        );
        let mut a = Node::new(&db, "a", 0, &FAST, &job);
        let b = Node::new(&db, "b", 1, &FAST, &job);
        // b's run takes 3 s (its own config says so).
        b.p.set("jobs.slow.args.seconds", 3.0);
        a.start();
        assert!(a.joined());
        // b's run starts just after one of a's slots, so a's next slot comes with more of its
        // bound left than b's run has to go: it must be skipped at its instant all the same,
        // not run late once b's run ends (CI found this phase).
        let phase = chrono::Utc::now().timestamp_millis().rem_euclid(2000);
        std::thread::sleep(Duration::from_millis(((2000 + 400 - phase) % 2000) as u64));
        // `--wait`: a's own slot may hold the job for a moment.
        let out = b.p.run(&["run-once", "slow", "--wait"]);
        assert!(out.status.success(), "{policy}: {}", text(&out));
        let manual = oracle(&file)
            .into_iter()
            .find(|r| r.trigger == "manual")
            .expect("manual run");
        let m_start = started_at(&file, manual.pid).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        a.stop();
        let runs = oracle(&file);
        let m_end = m_start + 3.0;
        let overlapping: Vec<_> = runs
            .iter()
            .filter(|r| r.node == "a")
            .filter(|r| {
                let s = started_at(&file, r.pid).unwrap();
                s > m_start && s < m_end
            })
            .collect();
        assert!(
            overlapping.is_empty(),
            "{policy}: a ran during b's run: {overlapping:?}"
        );
        let skipped = db.count(
            "SELECT count(*) FROM hedge_scheduler.runs WHERE outcome = 'skipped'
              AND error LIKE '%on node b%'",
        );
        if want_skip {
            assert!(skipped >= 1, "{policy}: no skipped row naming b");
            let per = db.count(
                "SELECT max(n) FROM (SELECT count(*) AS n FROM hedge_scheduler.runs
                  WHERE outcome = 'skipped' GROUP BY scheduled_at) x",
            );
            assert_eq!(per, 1, "{policy}: a slot was recorded skipped twice");
            // Every slot that came while b's manual run ran is skipped at once, whether or not
            // its bound outlives b's run (a manual run has no loop to decide the overlap: a's
            // slot waited, then ran late, when it did not).
            let first = (m_start + 0.1).ceil() as i64;
            for t in (first..(m_end - 0.5).floor() as i64 + 1).filter(|t| t % 2 == 0) {
                let n = db.count(&format!(
                    "SELECT count(*) FROM hedge_scheduler.runs WHERE outcome = 'skipped'
                      AND scheduled_at = to_timestamp({t}) AND error LIKE '%on node b%'"
                ));
                assert_eq!(n, 1, "{policy}: the slot at {t} came during b's run");
            }
        } else {
            // The slot that waited for b's run starts right after it (one that waited past its
            // own next slot is recorded `skipped`, naming b).
            let after = runs
                .iter()
                .filter(|r| r.node == "a")
                .filter_map(|r| started_at(&file, r.pid))
                .filter(|s| *s >= m_end - 0.1)
                .fold(f64::MAX, f64::min);
            assert!(
                after - m_end < 1.5,
                "{policy}: the queued slot did not run right after b's run"
            );
        }
    }
}

/// Case 26 and 27: the whole cluster was down across several slots, then two nodes start
/// together: `catch_up = "latest"` runs exactly one catch-up cluster-wide and records the rest
/// `skipped` once ("no node of the cluster was alive"); `all` runs each missed slot once.
#[test]
fn cluster_whole_cluster_down_then_two_nodes_catch_up_once() {
    let (server, _hold) = need_pg!();
    for policy in ["latest", "all"] {
        let db = server.database();
        let shared = shared_dir();
        let file = shared.path().join("oracle.log");
        let job = oracle_job("tick", &file, "*/2 * * * * *", 0.0, "");
        let mut a = Node::new(&db, "a", 0, &FAST, &job);
        let mut b = Node::new(&db, "b", 1, &FAST, &job);
        a.p.set("jobs.tick.catch_up", policy);
        b.p.set("jobs.tick.catch_up", policy);
        a.start();
        b.start();
        assert!(a.joined() && b.joined());
        assert!(wait_until(Duration::from_secs(20), || !oracle(&file).is_empty()));
        a.stop();
        b.stop();
        let last_before = per_slot(&oracle(&file))
            .keys()
            .map(|s| ts(&serde_json::Value::String(s.clone())))
            .max()
            .unwrap();
        std::thread::sleep(Duration::from_secs(7));
        let restarted = chrono::Utc::now();
        a.start();
        b.start();
        assert!(a.joined() && b.joined());
        // The missed slots: after the last one run, before the restart.
        let missed: Vec<_> = (1..)
            .map(|k| last_before + chrono::Duration::seconds(2 * k))
            .take_while(|t| *t < restarted - chrono::Duration::milliseconds(100))
            .collect();
        assert!(missed.len() >= 3, "{missed:?}");
        let want = if policy == "all" { missed.len() } else { 1 };
        assert!(
            wait_until(Duration::from_secs(30), || oracle(&file)
                .iter()
                .filter(|r| r.trigger == "catch-up" && r.ended)
                .count()
                >= want),
            "{policy}: {:?}\n{}",
            oracle(&file),
            a.p.daemon_output()
        );
        std::thread::sleep(Duration::from_secs(3));
        a.stop();
        b.stop();
        let runs = oracle(&file);
        let catch_ups: Vec<_> = runs.iter().filter(|r| r.trigger == "catch-up").collect();
        assert_eq!(catch_ups.len(), want, "{policy}: {runs:?}");
        for (slot, execs) in per_slot(&runs) {
            assert_eq!(execs.len(), 1, "{policy}: {slot}: {execs:?}");
        }
        // Gap rows (a slot that overlapped a catch-up may be skipped besides, naming its run).
        let gaps = db.query(
            "SELECT scheduled_at, missed_count, error FROM hedge_scheduler.runs
              WHERE outcome = 'skipped' AND missed_count IS NOT NULL",
        );
        if policy == "latest" {
            assert_eq!(gaps.len(), 1, "one gap row cluster-wide: {gaps:?}");
            assert!(
                gaps[0][2]
                    .as_deref()
                    .unwrap_or("")
                    .contains("no node of the cluster was alive"),
                "{gaps:?}"
            );
            // Every missed slot is accounted for: one run, the rest in the gap row.
            let counted: i64 = gaps[0][1].as_deref().unwrap_or("0").parse().unwrap();
            assert_eq!(counted as usize + 1, missed.len(), "{gaps:?}");
        } else {
            assert!(gaps.is_empty(), "all: {gaps:?}");
        }
    }
}

/// Any node prunes the cluster history older than `history_retention`.
#[test]
fn cluster_history_is_pruned_by_any_node() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("tick", &file, "0 0 0 1 1 *", 0.0, "");
    let mut a = Node::new(&db, "a", 0, &FAST, &job);
    a.p.set("scheduler.history_retention", "1d");
    a.start();
    assert!(a.joined());
    a.stop();
    db.execute(
        "INSERT INTO hedge_scheduler.runs (uid, job, trigger, scheduled_at, started_at, outcome, node, node_epoch)
         VALUES ('old', 'tick', 'schedule', now() - interval '3 days', now() - interval '3 days', 'success', 'a', 1),
                ('new', 'tick', 'schedule', now() - interval '3 hours', now() - interval '3 hours', 'success', 'a', 1);
         INSERT INTO hedge_scheduler.slots (job, scheduled_at, owner_node, owner_epoch, state, valid_until, jobs_hash)
         VALUES ('tick', now() - interval '3 days', 'a', 1, 'done', now(), '')",
    );
    a.start();
    assert!(
        wait_until(Duration::from_secs(10), || db.count(
            "SELECT count(*) FROM hedge_scheduler.runs WHERE uid = 'old'"
        ) == 0),
        "{}",
        a.p.daemon_output()
    );
    assert_eq!(
        db.count("SELECT count(*) FROM hedge_scheduler.runs WHERE uid = 'new'"),
        1
    );
    assert_eq!(db.count("SELECT count(*) FROM hedge_scheduler.slots"), 0);
    a.stop();
}

/// Case 28: b defines a shared job with another schedule: refused while a lives (exit 1,
/// naming the job and node); with `--allow-config-drift` it joins, and `status` warns.
#[test]
fn cluster_config_drift_is_refused_unless_allowed() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let mut a = Node::new(
        &db,
        "a",
        0,
        &FAST,
        &oracle_job("tick", &file, "*/5 * * * * *", 0.0, ""),
    );
    let mut b = Node::new(
        &db,
        "b",
        1,
        &FAST,
        &oracle_job("tick", &file, "*/3 * * * * *", 0.0, ""),
    );
    a.start();
    assert!(a.joined());
    let out = b.p.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`tick` on node a") && err.contains("--allow-config-drift"),
        "{err}"
    );
    b.child = Some(b.p.spawn_daemon_with(&["--allow-config-drift"], |_| {}));
    assert!(b.joined(), "{}", b.p.daemon_output());
    let status: serde_json::Value =
        serde_json::from_slice(&a.p.run(&["status", "--json"]).stdout).expect("JSON");
    assert!(
        status["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap_or("").contains("config drift")),
        "{status}"
    );
    a.stop();
    b.stop();
}

/// Case 19: node b is cut off by refusal (its role `NOLOGIN`, its connections terminated): a
/// stays exactly-once; b behaves per `on_database_loss`; healed, b rejoins with a new epoch,
/// uploads what it ran, and the history flags exactly the partition's duplicates (`run`) or
/// none (`skip`).
#[test]
fn cluster_node_partitioned_by_refusal_rejoins_and_its_duplicates_are_flagged() {
    let (server, _hold) = need_pg!();
    for policy in ["run", "skip"] {
        let db = server.database();
        db.execute(&format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'node_a') THEN
                 CREATE ROLE node_a LOGIN SUPERUSER; END IF;
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'node_b_{policy}') THEN
                 CREATE ROLE node_b_{policy} LOGIN SUPERUSER; END IF;
             END $$;"
        ));
        let shared = shared_dir();
        let file = shared.path().join("oracle.log");
        let job = oracle_job(
            "tick",
            &file,
            "* * * * * *",
            0.0,
            &format!("on_database_loss = \"{policy}\""),
        );
        let as_role = |role: &str| {
            let mut n = Node::new(&db, role, 0, &FAST, &job);
            n.p.set(
                "cluster.database",
                db.conninfo()
                    .replace("user=postgres", &format!("user={role}")),
            );
            n.name = role.to_string();
            n
        };
        let mut a = as_role("node_a");
        let b_role = format!("node_b_{policy}");
        let mut b = as_role(&b_role);
        // b is the standby.
        b.p.set("cluster.priority", 1);
        a.start();
        b.start();
        assert!(a.joined() && b.joined());
        assert!(wait_until(Duration::from_secs(20), || oracle(&file).len() >= 2));
        db.execute(&format!(
            "ALTER ROLE {b_role} NOLOGIN;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{b_role}';"
        ));
        let cut = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        std::thread::sleep(Duration::from_secs(5));
        db.execute(&format!("ALTER ROLE {b_role} LOGIN"));
        let healed = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        assert!(
            wait_until(Duration::from_secs(15), || db.count(&format!(
                "SELECT count(*) FROM hedge_scheduler.nodes WHERE node = '{b_role}'
                  AND state = 'alive' AND epoch = 2"
            )) == 1),
            "{policy}: b did not rejoin: {}",
            b.p.daemon_output()
        );
        std::thread::sleep(Duration::from_secs(2));
        a.stop();
        b.stop();
        let runs = oracle(&file);
        // a ran every slot once, through the partition.
        let a_slots: Vec<f64> = runs
            .iter()
            .filter(|r| r.node == "node_a")
            .map(slot_secs)
            .collect();
        let unique: HashSet<String> = runs
            .iter()
            .filter(|r| r.node == "node_a")
            .map(|r| r.slot.clone())
            .collect();
        assert_eq!(unique.len(), a_slots.len(), "{policy}: a ran a slot twice");
        let in_cut = |t: f64| t > cut + 0.5 && t < healed - 0.5;
        assert!(
            a_slots.iter().filter(|t| in_cut(**t)).count() >= 3,
            "{policy}: a stopped during the partition: {runs:?}"
        );
        let b_during: Vec<_> = runs
            .iter()
            .filter(|r| r.node == b_role && in_cut(slot_secs(r)))
            .collect();
        if policy == "run" {
            assert!(!b_during.is_empty(), "run: b ran nothing while cut off");
            assert!(b_during.iter().all(|r| r.fence == "None"), "{b_during:?}");
            // Uploaded on healing, and counted as duplicates of a's runs.
            let degraded = runs.iter().filter(|r| r.fence == "None").count() as i64;
            assert!(
                wait_until(Duration::from_secs(10), || {
                    db.count(
                    "SELECT count(*) FROM hedge_scheduler.runs WHERE degraded AND outcome = 'success'"
                ) == degraded
                }),
                "run: the partition's runs were not uploaded"
            );
            let status: serde_json::Value =
                serde_json::from_slice(&a.p.run(&["status", "--json"]).stdout).expect("JSON");
            assert_eq!(
                status["jobs"][0]["duplicates_today"].as_i64(),
                Some(degraded),
                "{status}"
            );
        } else {
            assert!(
                b_during.is_empty(),
                "skip: b ran while cut off: {b_during:?}"
            );
        }
    }
}

/// A Unix-socket proxy in front of the test server, for one node: `pause` black-holes it (open
/// connections stop moving, new ones hang), `resume` lets everything through again.
pub(crate) struct Proxy {
    pub(crate) dir: tempfile::TempDir,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub(crate) fn new(server: &pg::Server) -> Proxy {
        use std::os::unix::net::{UnixListener, UnixStream};
        use std::sync::atomic::Ordering;
        let dir = tempfile::Builder::new()
            .prefix("hedge-proxy-")
            .tempdir()
            .expect("proxy dir");
        let listener = UnixListener::bind(dir.path().join(".s.PGSQL.5432")).expect("bind");
        let upstream = server.socket.join(".s.PGSQL.5432");
        let paused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let p = std::sync::Arc::clone(&paused);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let (p, upstream) = (std::sync::Arc::clone(&p), upstream.clone());
                std::thread::spawn(move || {
                    while p.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let Ok(server) = UnixStream::connect(&upstream) else {
                        return;
                    };
                    let pipe =
                        |from: UnixStream,
                         to: UnixStream,
                         p: std::sync::Arc<std::sync::atomic::AtomicBool>| {
                            use std::io::{Read, Write};
                            let (mut from, mut to) = (from, to);
                            let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
                            let mut buf = [0u8; 16384];
                            loop {
                                if p.load(Ordering::SeqCst) {
                                    std::thread::sleep(Duration::from_millis(20));
                                    continue;
                                }
                                match from.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        if to.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock
                                                | std::io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => break,
                                }
                            }
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        };
                    let (c2, s2) = (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    );
                    let p2 = std::sync::Arc::clone(&p);
                    std::thread::spawn(move || pipe(s2, c2, p2));
                    pipe(client, server, p);
                });
            }
        });
        Proxy { dir, paused }
    }

    pub(crate) fn pause(&self) {
        self.paused.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn resume(&self) {
        self.paused
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Case 20: node b is cut off by a black hole (its proxy stops moving bytes): its statements
/// time out, nothing in it hangs (its own heartbeat and `status --json` stay responsive), a
/// stays exactly-once, and b comes back when the proxy does.
#[test]
fn cluster_node_behind_a_black_hole_times_out_and_does_not_hang() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job(
        "tick",
        &file,
        "* * * * * *",
        0.0,
        "on_database_loss = \"skip\"",
    );
    let proxy = Proxy::new(server);
    let mut a = Node::new(&db, "a", 0, &FAST, &job);
    let mut b = Node::new(&db, "b", 1, &FAST, &job);
    b.p.set(
        "cluster.database",
        db.conninfo().replace(
            &format!("host={}", server.socket.display()),
            &format!("host={}", proxy.dir.path().display()),
        ),
    );
    a.start();
    b.start();
    assert!(a.joined() && b.joined());
    assert!(wait_until(Duration::from_secs(20), || oracle(&file).len() >= 2));
    proxy.pause();
    let cut = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    // While it lasts, b's daemon answers: its status is quick and says it responds.
    std::thread::sleep(Duration::from_secs(4));
    let started = std::time::Instant::now();
    let out = b.p.run(&["status", "--json"]);
    assert!(started.elapsed() < Duration::from_secs(6), "status hung");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status["daemon"]["responding"], true, "{status}");
    assert!(
        b.p.daemon_output().contains("no answer within")
            || b.p.daemon_output().contains("no connection within"),
        "{}",
        b.p.daemon_output()
    );
    std::thread::sleep(Duration::from_secs(2));
    proxy.resume();
    let healed = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    assert!(
        wait_until(Duration::from_secs(20), || b
            .p
            .daemon_output()
            .contains("reachable again")),
        "{}",
        b.p.daemon_output()
    );
    std::thread::sleep(Duration::from_secs(2));
    a.stop();
    b.stop();
    let runs = oracle(&file);
    for (slot, execs) in per_slot(&runs) {
        assert_eq!(execs.len(), 1, "{slot}: {execs:?}");
    }
    let a_during = runs
        .iter()
        .filter(|r| r.node == "a" && slot_secs(r) > cut + 0.5 && slot_secs(r) < healed - 0.5)
        .count();
    assert!(a_during >= 4, "a stopped while b was cut off: {runs:?}");
}

/// Case 24, `replace`: the job runs on b (a manual run); a's slot asks b to end it, b's run is
/// `cancelled` ("replaced by the slot at … on a"), then a runs the slot.
#[test]
fn cluster_overlap_replace_across_hosts_cancels_the_other_nodes_run() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("slow", &file, "*/3 * * * * *", 0.2, "overlap = \"replace\"");
    let mut a = Node::new(&db, "a", 0, &FAST, &job);
    let b = Node::new(&db, "b", 1, &FAST, &job);
    b.p.set("jobs.slow.args.seconds", 20.0);
    a.start();
    assert!(a.joined());
    let out = b.p.run(&["run-once", "slow", "--wait", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(row["outcome"], "cancelled", "{row}");
    assert!(
        row["error"]
            .as_str()
            .unwrap_or("")
            .contains("replaced by the slot at")
            && row["error"].as_str().unwrap_or("").contains("on a"),
        "{row}"
    );
    // It was ended before its 20 s of work (it may not even have reached Python under load).
    if let Some(manual) = oracle(&file).into_iter().find(|r| r.trigger == "manual") {
        assert!(!manual.ended, "the replaced run finished anyway");
    }
    // a's slot runs once b's run is gone.
    let cancelled_at = ts(&row["finished_at"]).timestamp_micros() as f64 / 1e6;
    assert!(wait_until(Duration::from_secs(10), || {
        oracle(&file).iter().any(|r| {
            r.node == "a" && started_at(&file, r.pid).is_some_and(|s| s > cancelled_at) && r.ended
        })
    }));
    a.stop();
}

/// Case 14: a node stopped in the middle of a transaction (here: a session with the nodes'
/// settings that inserted the next slot's claim and went silent) blocks the others' claims for at
/// most `lock_timeout` a statement, never the node; the session is ended by
/// `idle_in_transaction_session_timeout`, and the slot then runs once.
#[test]
fn cluster_node_stopped_mid_transaction_does_not_block_the_others() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("slow", &file, "*/15 * * * * *", 0.0, "");
    let mut a = Node::new(&db, "a", 0, &FAST, &job);
    a.start();
    assert!(a.joined());
    // The next slot at least 4 s ahead.
    let now = chrono::Utc::now();
    let mut next =
        chrono::DateTime::<chrono::Utc>::from_timestamp((now.timestamp() / 15 + 1) * 15, 0)
            .unwrap();
    if (next - now).num_milliseconds() < 4000 {
        next += chrono::Duration::seconds(15);
    }
    let slot = next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // The frozen node: its transaction holds the slot's key, uncommitted, then nothing.
    let conninfo = format!(
        "{} options='-c idle_in_transaction_session_timeout=5000'",
        db.conninfo()
    );
    let frozen = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .unwrap();
            let conn = tokio::spawn(conn);
            client
                .batch_execute(&format!(
                    "BEGIN; INSERT INTO hedge_scheduler.slots (job, scheduled_at, owner_node,
                       owner_epoch, state, valid_until, jobs_hash)
                     VALUES ('slow', '{slot}', 'z', 1, 'claimed', '{slot}', '')"
                ))
                .await
                .unwrap();
            // Silent until the server ends the session.
            let _ = conn.await;
        });
    });
    assert!(
        wait_until(Duration::from_secs(25), || oracle(&file).iter().any(
            |r| ts(&serde_json::Value::String(r.slot.clone())) == next && r.ended
        )),
        "the slot never ran: {}",
        a.p.daemon_output()
    );
    frozen.join().unwrap();
    // Late by the frozen session's life (5 s), not more; once; and the node kept its lease.
    let exec = oracle(&file)
        .into_iter()
        .find(|r| ts(&serde_json::Value::String(r.slot.clone())) == next)
        .unwrap();
    let late = started_at(&file, exec.pid).unwrap() - slot_secs(&exec);
    assert!(late < 8.0, "ran {late:.1} s late");
    assert_eq!(per_slot(&oracle(&file))[&exec.slot].len(), 1);
    assert_eq!(db.count("SELECT max(epoch) FROM hedge_scheduler.nodes"), 1);
    a.stop();
}

/// Slots missed while no node was alive are told once, by the node that records them, not once
/// per node (every node finds the same gap when they start again).
#[test]
fn cluster_a_missed_slot_is_told_once_not_once_per_node() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let hooks = crate::observe::Receiver::start(None);
    let job = oracle_job("tick", &file, "* * * * * *", 0.0, "")
        + &format!(
            "\n[notify]\nwebhook = {:?}\nevents = [\"missed\"]\n",
            hooks.url("/hook")
        );
    let (mut a, mut b) = pair(&db, &FAST, &job);
    assert!(wait_until(Duration::from_secs(20), || oracle(&file).len() >= 4));
    // The whole cluster is down for 3 s, then both nodes start again.
    a.stop();
    b.stop();
    std::thread::sleep(Duration::from_secs(3));
    a.start();
    b.start();
    assert!(a.joined() && b.joined());
    assert!(wait_until(Duration::from_secs(20), || !hooks
        .events("/hook")
        .is_empty()));
    assert!(wait_until(Duration::from_secs(10), || oracle(&file).len() >= 8));
    a.stop();
    b.stop();
    let events = hooks.events("/hook");
    let skipped = db.count(
        "SELECT count(*) FROM hedge_scheduler.runs WHERE job = 'tick' AND outcome = 'skipped'",
    );
    assert!(skipped >= 1);
    assert_eq!(events.len() as i64, skipped, "{events:#?}");
    assert!(
        events
            .iter()
            .all(|e| e["count"].as_u64().is_some_and(|n| n >= 2)),
        "{events:#?}"
    );
}

/// The gap audit: a slot no node claimed (here every insert of it is dropped by a trigger, so
/// each node's claim and its `skipped` row come to nothing) is found within a minute of its
/// bound, recorded `skipped` ("no node of the cluster claimed it") once cluster-wide, and said.
#[test]
fn cluster_gap_audit_records_a_slot_no_node_claimed() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("tick", &file, "*/2 * * * * *", 0.0, "");
    let with_health = |n: &Node| {
        let text = std::fs::read_to_string(n.p.config_path())
            .unwrap()
            .replacen(
                "[scheduler]\n",
                "[scheduler]\nhealth_interval = \"1s\"\n",
                1,
            );
        std::fs::write(n.p.config_path(), text).unwrap();
    };
    let mut a = Node::new(&db, "a", 0, &FAST, &job);
    let mut b = Node::new(&db, "b", 1, &FAST, &job);
    with_health(&a);
    with_health(&b);
    a.start();
    b.start();
    assert!(a.joined() && b.joined());
    assert!(wait_until(Duration::from_secs(20), || oracle(&file).len() >= 2));
    // The slot 6 s ahead (an even second) is dropped whoever writes it.
    let now = chrono::Utc::now().timestamp();
    let slot = now + 6 + (now % 2);
    let at = chrono::DateTime::from_timestamp(slot, 0)
        .unwrap()
        .to_rfc3339();
    db.execute(&format!(
        "CREATE FUNCTION hedge_scheduler.drop_slot() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.scheduled_at = '{at}' THEN RETURN NULL; END IF; RETURN NEW; END $$;
         CREATE TRIGGER drop_slot BEFORE INSERT ON hedge_scheduler.slots
           FOR EACH ROW EXECUTE FUNCTION hedge_scheduler.drop_slot();"
    ));
    // Past the slot's bound (the next slot), the inserts go through again.
    while chrono::Utc::now().timestamp() < slot + 3 {
        std::thread::sleep(Duration::from_millis(100));
    }
    db.execute("DROP TRIGGER drop_slot ON hedge_scheduler.slots");
    assert!(
        per_slot(&oracle(&file))
            .keys()
            .all(|s| ts(&serde_json::Value::String(s.clone())).timestamp() != slot),
        "the slot ran"
    );
    // Found within a minute (here: bound 2 s + two leases + a health check).
    let found = wait_until(Duration::from_secs(60), || {
        db.count(&format!(
            "SELECT count(*) FROM hedge_scheduler.runs WHERE job = 'tick' AND scheduled_at = '{at}'
              AND outcome = 'skipped' AND error LIKE '%no node of the cluster claimed it%'"
        )) == 1
    });
    assert!(
        found,
        "{:?}\n{}",
        db.query("SELECT scheduled_at, state, owner_node FROM hedge_scheduler.slots ORDER BY scheduled_at"),
        a.p.daemon_output()
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM hedge_scheduler.slots WHERE job = 'tick' AND scheduled_at = '{at}'
              AND state = 'skipped'"
        )),
        1
    );
    let said = format!("{}{}", a.p.daemon_output(), b.p.daemon_output());
    assert!(said.contains("no node claimed"), "{said}");
    a.stop();
    b.stop();
    // Once cluster-wide, whichever node found it.
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM hedge_scheduler.runs WHERE job = 'tick' AND scheduled_at = '{at}'"
        )),
        1
    );
}

/// TLS to a server that takes nothing else: `sslmode=verify-full` with `[cluster] ca_file` joins
/// and runs the slots; without TLS (`sslmode=disable`) the server refuses; with a CA that did not
/// sign the server's certificate, the node refuses the server. `verify-full` without `ca_file` is
/// a config error.
#[test]
fn cluster_tls_to_a_server_that_requires_it() {
    let (server, _hold) = need_pg!();
    let tls = pg::TlsServer::start(server);
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("tick", &file, "* * * * * *", 0.0, "");
    let node = |name: &str, sslmode: &str, ca: Option<&Path>| {
        let p = Project::new();
        p.config(
            "",
            &format!(
                "{job}\n[cluster]\ndatabase = \"host=localhost port={} user=postgres dbname=t sslmode={sslmode}\"\nnode = \"{name}\"\n{}",
                tls.port,
                ca.map(|c| format!("ca_file = {:?}\n", c.display().to_string()))
                    .unwrap_or_default()
            ),
        );
        p
    };
    let good = node("a", "verify-full", Some(&tls.ca));
    let mut daemon = good.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(30), || oracle(&file).len() >= 2),
        "{}",
        good.daemon_output()
    );
    assert!(good.daemon_output().contains("joined the cluster"));
    // No TLS: the server refuses the connection (its pg_hba takes only TLS from TCP).
    let plain = node("b", "disable", None);
    let mut b = plain.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || plain
            .daemon_output()
            .contains("unreachable")),
        "{}",
        plain.daemon_output()
    );
    assert!(
        plain.daemon_output().contains("no encryption"),
        "{}",
        plain.daemon_output()
    );
    // Another CA: the node refuses the server's certificate.
    let other = shared.path().join("other-ca.pem");
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
        .arg(shared.path().join("other.key"))
        .arg("-out")
        .arg(&other)
        .args(["-days", "1", "-subj", "/CN=another CA"])
        .output()
        .expect("openssl");
    assert!(out.status.success());
    let wrong = node("c", "verify-full", Some(&other));
    let mut c = wrong.spawn_daemon();
    assert!(
        wait_until(Duration::from_secs(20), || wrong
            .daemon_output()
            .contains("unreachable")),
        "{}",
        wrong.daemon_output()
    );
    assert!(
        wrong.daemon_output().to_lowercase().contains("certificate"),
        "{}",
        wrong.daemon_output()
    );
    for d in [&mut daemon, &mut b, &mut c] {
        let _ = signal_and_wait(d, Signal::SIGTERM, Duration::from_secs(20));
    }
    // verify-full without ca_file: a config error naming the key.
    let bad = node("d", "verify-full", None);
    let out = bad.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("ca_file"), "{}", text(&out));
}

/// Issue 22, item 4: a slot queued behind a run (`overlap = "queue"`) survives the death of
/// either node. The job runs 5 s every 4 s on a; its next slot comes while the run goes on: a
/// queues it, b waits for a's claim. SIGKILL b: a runs the queued slot once its run ends.
/// SIGKILL a instead: b sets a's claim aside (its session is gone) and runs the slot at once.
#[test]
fn cluster_a_slot_queued_behind_a_run_survives_either_nodes_death() {
    let (server, _hold) = need_pg!();
    for dies in ["b", "a"] {
        let db = server.database();
        let shared = shared_dir();
        let file = shared.path().join("oracle.log");
        let job = oracle_job("q", &file, "*/4 * * * * *", 5.0, "overlap = \"queue\"");
        let (mut a, mut b) = pair(&db, &FAST, &job);
        assert!(
            wait_until(Duration::from_secs(20), || oracle(&file)
                .iter()
                .any(|r| r.node == "a")),
            "{dies}: a never ran: {}",
            a.p.daemon_output()
        );
        let first = oracle(&file)
            .into_iter()
            .find(|r| r.node == "a")
            .expect("a's run");
        let slot = ts(&serde_json::Value::String(first.slot.clone()));
        let queued = slot + chrono::Duration::seconds(4);
        // The queued slot has come, and both nodes have seen it, while a's run still goes on.
        while chrono::Utc::now() < queued + chrono::Duration::milliseconds(500) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !oracle(&file)
                .iter()
                .find(|r| r.pid == first.pid)
                .is_some_and(|r| r.ended),
            "{dies}: the first run ended before the next slot"
        );
        let (survivor, killed_at) = if dies == "a" {
            a.kill();
            ("b", chrono::Utc::now())
        } else {
            b.kill();
            ("a", chrono::Utc::now())
        };
        let of_queued = |runs: &[Exec]| -> Vec<Exec> {
            runs.iter()
                .filter(|r| ts(&serde_json::Value::String(r.slot.clone())) == queued)
                .cloned()
                .collect()
        };
        assert!(
            wait_until(Duration::from_secs(10), || !of_queued(&oracle(&file))
                .is_empty()),
            "{dies} died: the queued slot never ran\n{}\n{}",
            a.p.daemon_output(),
            b.p.daemon_output()
        );
        // Long enough for a second execution to show, were there one.
        std::thread::sleep(Duration::from_secs(2));
        let runs = of_queued(&oracle(&file));
        assert_eq!(runs.len(), 1, "{dies} died: {runs:?}");
        assert_eq!(runs[0].node, survivor, "{dies} died: {runs:?}");
        let started = started_at(&file, runs[0].pid).expect("start time");
        let started = chrono::DateTime::from_timestamp_millis((started * 1000.0) as i64).unwrap();
        if dies == "a" {
            // The run died with its node: the queued slot does not wait for the lease.
            assert!(
                started - killed_at < chrono::Duration::milliseconds(1500),
                "b ran the queued slot {} ms after a died",
                (started - killed_at).num_milliseconds()
            );
        } else {
            // After a's run, not beside it.
            let first_end =
                ts(&serde_json::Value::String(first.slot.clone())) + chrono::Duration::seconds(5);
            assert!(started >= first_end, "{runs:?} overlapped the first run");
        }
        if dies == "a" {
            b.stop();
        } else {
            a.stop();
        }
    }
}
