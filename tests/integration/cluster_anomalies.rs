//! Cluster mode: one regression test per anomaly the randomized nemesis found (A1–A10 in the
//! chaos report behind the cluster issue), each its reproduction with real daemons, a real
//! PostgreSQL and the oracle job's own record of what ran.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::cluster::*;
use crate::pg;
use crate::util::*;

/// Every slot in `[from, to)` (whole seconds apart by `period`) of the oracle file, with how
/// many executions it had and how many completed.
fn executions(file: &Path, from: f64, to: f64, period: i64) -> Vec<(i64, usize, usize)> {
    let runs = oracle(file);
    let mut out = Vec::new();
    let mut s = (from / period as f64).ceil() as i64 * period;
    while (s as f64) < to {
        let here: Vec<&Exec> = runs
            .iter()
            .filter(|r| (slot_secs(r) - s as f64).abs() < 0.001)
            .collect();
        out.push((s, here.len(), here.iter().filter(|r| r.ended).count()));
        s += period;
    }
    out
}

/// Each execution's start and end (when it ended), from the oracle file's lines.
fn spans(file: &Path) -> Vec<(f64, Option<f64>)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    lines
        .iter()
        .filter(|f| f.len() >= 9 && f[0] == "start")
        .map(|f| {
            let end = lines
                .iter()
                .find(|e| e.len() >= 9 && e[0] == "end" && e[7] == f[7] && e[2] == f[2])
                .and_then(|e| e[8].parse().ok());
            (f[8].parse().unwrap_or(0.0), end)
        })
        .collect()
}

fn now_secs() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// Waits until the wall clock is `offset` seconds into a slot of `period` seconds.
fn sleep_to_phase(period: f64, offset: f64) {
    let now = now_secs();
    let next = (now / period).floor() * period + offset;
    let at = if next > now + 0.05 {
        next
    } else {
        next + period
    };
    std::thread::sleep(Duration::from_secs_f64(at - now));
}

/// The jobs' environment is not the daemon's: under libfaketime the daemon's clock steps, the
/// jobs' (which the oracle reads) stays true.
const NO_INHERIT: &str = "inherit_env = false\n";

/// A1: node a's wall clock steps 3 s forward under a running cluster. It must write no
/// `skipped` row for a slot the database's clock has not reached, and every slot still runs
/// once, never early.
#[test]
fn cluster_a1_a_clock_stepped_forward_skips_no_slot_that_has_not_come() {
    if !crate::util::have_faketime() {
        return;
    }
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = format!(
        "{NO_INHERIT}{}",
        oracle_job("tick", &file, "* * * * * *", 0.0, "")
    );
    let mut a = Node::new(&db, "a", 0, &CALM, &job);
    let mut b = Node::new(&db, "b", 1, &CALM, &job);
    let fake = shared.path().join("faketime_a");
    crate::util::set_fake(&fake, "+0");
    let lib = crate::util::libfaketime();
    let fake_env = fake.clone();
    a.child = Some(a.p.spawn_daemon_with(&[], move |cmd| {
        cmd.env("LD_PRELOAD", &lib)
            .env("FAKETIME_TIMESTAMP_FILE", &fake_env)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("FAKETIME_DONT_RESET", "1");
    }));
    b.start();
    assert!(a.joined() && b.joined(), "{}", a.p.daemon_output());
    assert!(wait_until(Duration::from_secs(20), || oracle(&file).len() >= 3));
    let from = now_secs();
    crate::util::set_fake(&fake, "+3");
    std::thread::sleep(Duration::from_secs(8));
    crate::util::set_fake(&fake, "+0");
    std::thread::sleep(Duration::from_secs(5));
    let to = now_secs() - 1.0;
    a.stop();
    b.stop();
    let slots = executions(&file, from, to, 1);
    let lost: Vec<_> = slots.iter().filter(|s| s.2 == 0).collect();
    let doubled: Vec<_> = slots.iter().filter(|s| s.2 > 1).collect();
    assert!(
        lost.is_empty() && doubled.is_empty(),
        "lost {lost:?}, doubled {doubled:?}\nslots: {:?}\n{}",
        db.query(
            "SELECT scheduled_at, state, owner_node, claimed_at FROM hedge_scheduler.slots
              WHERE state <> 'done' ORDER BY scheduled_at"
        ),
        a.p.daemon_output()
    );
    // No decisive row was written before its slot came, by the database's clock.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM hedge_scheduler.slots WHERE state = 'skipped'
              AND claimed_at < scheduled_at"
        ),
        0
    );
    // Nothing ran early by the true clock (the jobs' own).
    for r in oracle(&file) {
        let started = started_at(&file, r.pid).expect("start");
        assert!(
            started >= slot_secs(&r) - 0.005,
            "{} ran early, at {started}",
            r.slot
        );
    }
}

/// A2: a one-node cluster, a job every 2 s whose run ends about 1.88 s after its slot, overlap
/// `skip`. The claim is made 200 ms ahead of the slot, but the overlap is decided at the slot:
/// every slot runs (on a single host they all did; in a cluster only every other one did).
#[test]
fn cluster_a2_overlap_is_decided_at_the_slot_not_at_the_claim_lead() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = format!(
        r#"[jobs.near]
entry = "fixture_jobs:oracle"
schedule = "*/2 * * * * *"
market_hours = false
catch_up = "none"
overlap = "skip"
timeout = "60s"
args = {{ file = {file:?}, until = 1.88 }}
"#
    );
    let mut a = Node::new(&db, "a", 0, &CALM, &job);
    a.start();
    assert!(a.joined(), "{}", a.p.daemon_output());
    assert!(wait_until(Duration::from_secs(20), || !oracle(&file).is_empty()));
    let from = now_secs() + 1.0;
    std::thread::sleep(Duration::from_secs(16));
    let to = now_secs() - 2.5;
    a.stop();
    let slots = executions(&file, from, to, 2);
    assert!(slots.len() >= 6, "{slots:?}");
    let lost: Vec<_> = slots.iter().filter(|s| s.1 == 0).collect();
    assert!(
        lost.is_empty(),
        "slots skipped over runs that ended before them: {lost:?}\n{:?}",
        db.query(
            "SELECT scheduled_at, outcome, error FROM hedge_scheduler.runs WHERE outcome = 'skipped'"
        )
    );
}

/// A3: the owner's daemon (only) is stopped 1.2 s into a 1.5 s run of a 2 s job, for 2 s. Its
/// run ends during the pause; resumed, the node must not skip the next slot over that run.
#[test]
fn cluster_a3_after_sigcont_no_slot_is_skipped_over_a_run_that_ended() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("pair", &file, "*/2 * * * * *", 1.5, "overlap = \"skip\"");
    let (mut a, mut b) = pair(&db, &CALM, &job);
    assert!(wait_until(Duration::from_secs(20), || !oracle(&file).is_empty()));
    let from = now_secs();
    for _ in 0..3 {
        sleep_to_phase(2.0, 1.2);
        signal(a.pid(), Signal::SIGSTOP);
        std::thread::sleep(Duration::from_secs(2));
        signal(a.pid(), Signal::SIGCONT);
        std::thread::sleep(Duration::from_secs(3));
    }
    std::thread::sleep(Duration::from_secs(2));
    let to = now_secs() - 2.0;
    a.stop();
    b.stop();
    let slots = executions(&file, from, to, 2);
    // A slot may be skipped only over a run really going on at its instant (the slot that came
    // during the pause runs late, and that run may overlap the next slot, as on a single host).
    let ran = spans(&file);
    let lost: Vec<_> = slots
        .iter()
        .filter(|s| s.1 == 0)
        .filter(|s| {
            let at = s.0 as f64;
            !ran.iter()
                .any(|(start, end)| *start < at && end.is_none_or(|e| e > at))
        })
        .collect();
    let doubled: Vec<_> = slots.iter().filter(|s| s.2 > 1).collect();
    assert!(
        lost.is_empty() && doubled.is_empty(),
        "skipped over runs that had ended {lost:?}, doubled {doubled:?}\n{:?}\n{}",
        db.query(
            "SELECT scheduled_at, node, outcome, error FROM hedge_scheduler.runs
              WHERE outcome <> 'success' ORDER BY scheduled_at"
        ),
        a.p.daemon_output()
    );
}

/// A4: three nodes, a 1 s job; the primary is SIGKILLed 0.1 s into a run. Its live claim must
/// not hold the job: the next slots run on a standby at once, not after the lease.
#[test]
fn cluster_a4_a_sigkilled_owners_claim_does_not_hold_the_next_slots() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job("tick", &file, "* * * * * *", 0.5, "");
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, n)| Node::new(&db, n, i as u32, &CALM, &job))
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    for n in &nodes {
        assert!(n.joined(), "{}", n.p.daemon_output());
    }
    assert!(wait_until(Duration::from_secs(20), || oracle(&file)
        .iter()
        .filter(|r| r.node == "a")
        .count()
        >= 2));
    // 0.1 s into a run of a's (its job starts some 50–100 ms after the slot).
    sleep_to_phase(1.0, 0.2);
    let killed = now_secs();
    nodes[0].kill();
    std::thread::sleep(Duration::from_secs(5));
    for n in nodes.iter_mut().skip(1) {
        n.stop();
    }
    // The slots after the kill, up to the lease (3 s) and past it: each ran once.
    let slots = executions(&file, killed.ceil(), killed + 4.0, 1);
    let lost: Vec<_> = slots.iter().filter(|s| s.2 == 0).collect();
    assert!(
        lost.is_empty(),
        "slots lost after the kill: {lost:?}\n{:?}\n{}",
        db.query("SELECT scheduled_at, state, owner_node FROM hedge_scheduler.slots ORDER BY scheduled_at"),
        nodes[1].p.daemon_output()
    );
    // Each started on a standby within standby_delay (+ a Python start) of its slot.
    for r in oracle(&file)
        .iter()
        .filter(|r| slot_secs(r) > killed + 0.5 && r.trigger == "schedule")
    {
        let started = started_at(&file, r.pid).expect("start");
        assert!(
            started - slot_secs(r) < 0.9,
            "{} started {:.3} s late on {}",
            r.slot,
            started - slot_secs(r),
            r.node
        );
    }
}

/// A5: a job every 10 s running 3 s; the owner's daemon (only) is stopped 2 s into the run,
/// for 8 s. The job completes during the pause; the slot must not be run again by the peer
/// (two completed executions, with the database up), and the history keeps one true row.
#[test]
fn cluster_a5_a_job_that_completes_while_its_daemon_is_stopped_is_not_run_again() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job(
        "slow",
        &file,
        "*/10 * * * * *",
        3.0,
        "on_database_loss = \"skip\"",
    );
    let (mut a, mut b) = pair(&db, &CALM, &job);
    assert!(
        wait_until(Duration::from_secs(30), || oracle(&file)
            .iter()
            .any(|r| r.node == "a")),
        "{}",
        a.p.daemon_output()
    );
    sleep_to_phase(10.0, 2.0);
    let slot = (now_secs() / 10.0).floor() * 10.0;
    signal(a.pid(), Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(8));
    signal(a.pid(), Signal::SIGCONT);
    // a comes back, learns it was declared dead, and rejoins.
    assert!(
        wait_until(Duration::from_secs(15), || db.count(
            "SELECT count(*) FROM hedge_scheduler.nodes WHERE node = 'a' AND state = 'alive'
              AND epoch = 2"
        ) == 1),
        "{}",
        a.p.daemon_output()
    );
    std::thread::sleep(Duration::from_secs(3));
    let slots = executions(&file, slot, slot + 1.0, 10);
    assert_eq!(
        slots,
        vec![(slot as i64, 1, 1)],
        "{:?}\n{}",
        oracle(&file),
        b.p.daemon_output()
    );
    // The history: one row for the slot, a success; the slot done.
    let at = chrono::DateTime::from_timestamp(slot as i64, 0)
        .expect("slot")
        .to_rfc3339();
    assert!(
        wait_until(Duration::from_secs(10), || db.count(&format!(
            "SELECT count(*) FROM hedge_scheduler.runs WHERE job = 'slow' AND scheduled_at = '{at}'
              AND outcome = 'success'"
        )) == 1),
        "{:?}",
        db.query("SELECT node, outcome, error FROM hedge_scheduler.runs ORDER BY id")
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM hedge_scheduler.runs WHERE job = 'slow' AND scheduled_at = '{at}'"
        )),
        1,
        "{:?}",
        db.query("SELECT node, outcome, error FROM hedge_scheduler.runs ORDER BY id")
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM hedge_scheduler.slots WHERE job = 'slow' AND scheduled_at = '{at}'
              AND state = 'done'"
        )),
        1
    );
    a.stop();
    b.stop();
}

/// A7: `on_database_loss = "run"`, a 1 s job and a trust window (2 s) longer than its period:
/// the database stops. No slot of the outage may be lost, its first included: a node that waits
/// for the database gives up waiting in time to run the slot without it.
#[test]
fn cluster_a7_run_policy_runs_the_first_slot_of_an_outage() {
    let (server, _hold) = need_pg!(exclusive);
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job(
        "tick",
        &file,
        "* * * * * *",
        0.0,
        "on_database_loss = \"run\"",
    );
    let (mut a, mut b) = pair(&db, &CALM, &job);
    assert!(wait_until(Duration::from_secs(20), || oracle(&file).len() >= 3));
    sleep_to_phase(1.0, 0.5);
    let down = now_secs();
    server.stop();
    std::thread::sleep(Duration::from_secs(5));
    server.start_again();
    let up = now_secs();
    std::thread::sleep(Duration::from_secs(4));
    a.stop();
    b.stop();
    let slots = executions(&file, down - 1.0, up + 2.0, 1);
    let lost: Vec<_> = slots.iter().filter(|s| s.2 == 0).collect();
    assert!(
        lost.is_empty(),
        "slots lost at the outage (down at {down:.3}, up at {up:.3}): {lost:?}\n{}",
        a.p.daemon_output()
    );
}

/// A9: a run that ends while the database is stopped must give its claim back once the database
/// is there again, at the next heartbeat, not leave the job held cluster-wide.
#[test]
fn cluster_a9_a_run_ending_during_a_database_stop_releases_its_claim_after() {
    let (server, _hold) = need_pg!(exclusive);
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job(
        "slow",
        &file,
        "*/10 * * * * *",
        2.0,
        "on_database_loss = \"run\"",
    );
    let (mut a, mut b) = pair_after_a_run(&db, &CALM, &job, &file);
    sleep_to_phase(10.0, 1.0);
    let slot = (now_secs() / 10.0).floor() * 10.0;
    server.stop();
    // The run ends at about 2.1 s, while the database is down.
    std::thread::sleep(Duration::from_secs(3));
    server.start_again();
    let at = chrono::DateTime::from_timestamp(slot as i64, 0)
        .expect("slot")
        .to_rfc3339();
    // Given back well before the next slot's claim (at 9.8 s) would have found it.
    let released = wait_until(Duration::from_secs(3), || {
        db.count(&format!(
            "SELECT count(*) FROM hedge_scheduler.slots WHERE job = 'slow' AND scheduled_at = '{at}'
              AND state = 'done'"
        )) == 1
    });
    let when = now_secs() - slot;
    assert!(
        released && when < 8.0,
        "the claim was still live {when:.1} s after its slot: {:?}\n{}",
        db.query("SELECT scheduled_at, state, owner_node, fence FROM hedge_scheduler.slots"),
        a.p.daemon_output()
    );
    a.stop();
    b.stop();
}

/// A10: the daemon is stopped past its trust window (2 s) but within its lease (3 s). Slots
/// claimed right after SIGCONT must run, not be ended by the late "lease in doubt" event
/// (`on_database_loss = "skip"`, whose runs end when the lease is in doubt).
#[test]
fn cluster_a10_a_slot_claimed_after_sigcont_is_not_ended_by_a_late_lease_event() {
    let (server, _hold) = need_pg!();
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job(
        "tick",
        &file,
        "* * * * * *",
        0.2,
        "on_database_loss = \"skip\"",
    );
    let mut a = Node::new(&db, "a", 0, &CALM, &job);
    a.start();
    assert!(a.joined(), "{}", a.p.daemon_output());
    assert!(wait_until(Duration::from_secs(20), || oracle(&file).len() >= 3));
    let mut resumed = Vec::new();
    for _ in 0..3 {
        sleep_to_phase(1.0, 0.5);
        signal(a.pid(), Signal::SIGSTOP);
        std::thread::sleep(Duration::from_millis(2600));
        signal(a.pid(), Signal::SIGCONT);
        resumed.push(now_secs());
        std::thread::sleep(Duration::from_secs(3));
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    a.stop();
    // Every run that started after a resume completed.
    for r in oracle(&file) {
        let started = started_at(&file, r.pid).expect("start");
        if resumed.iter().any(|t| started > *t && started < t + 2.5) {
            assert!(
                r.ended,
                "{} started at {started} after a resume and was ended: {:?}",
                r.slot,
                db.query("SELECT scheduled_at, outcome, error FROM hedge_scheduler.runs WHERE outcome = 'cancelled'")
            );
        }
    }
    assert_eq!(
        db.count(
            "SELECT count(*) FROM hedge_scheduler.runs WHERE outcome = 'cancelled'
              AND error LIKE '%lost the cluster lease%'"
        ),
        0,
        "{:?}",
        db.query("SELECT scheduled_at, outcome, error FROM hedge_scheduler.runs WHERE outcome = 'cancelled'")
    );
}

/// Whether a slot of the oracle's `file` starts after `t` (seconds), within `timeout`.
fn a_slot_started_after(file: &Path, t: f64, timeout: Duration) -> bool {
    wait_until(timeout, || {
        oracle(file)
            .iter()
            .any(|r| started_at(file, r.pid).is_some_and(|s| s > t))
    })
}

/// Node a's executions without a fence (alone, without the database) started between `from`
/// and `to` (seconds).
fn ran_alone_on_a<'a>(file: &Path, runs: &'a [Exec], (from, to): (f64, f64)) -> Vec<&'a Exec> {
    runs.iter()
        .filter(|r| r.node == "a" && r.fence == "None")
        .filter(|r| started_at(file, r.pid).is_some_and(|t| t > from && t < to))
        .collect()
}

/// The job of the `primary` anomalies: every 2 s, 0.3 s runs, `on_database_loss = "primary"`.
fn primary_job(file: &Path) -> String {
    oracle_job(
        "p",
        file,
        "*/2 * * * * *",
        0.3,
        "on_database_loss = \"primary\"",
    )
}

/// A11 (the long nemesis run, seed 21): under `primary`, the primary's daemon is stopped past
/// its lease, so a standby takes its slots; the database stops right after the standby claimed
/// one, and the primary wakes to find it gone. It must not run that slot alone: its lease ran
/// out before it lost the database, and a standby may have run it (it did: two completed
/// executions). It runs nothing alone until it has renewed.
#[test]
fn cluster_a11_a_primary_stopped_past_its_lease_does_not_run_alone_a_slot_a_standby_ran() {
    let (server, _hold) = need_pg!(exclusive);
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = primary_job(&file);
    let (mut a, mut b) = pair_after_a_run(&db, &FAST, &job, &file);
    sleep_to_phase(2.0, 0.5);
    let stopped_at = now_secs();
    signal(a.pid(), Signal::SIGSTOP);
    // Past a's lease (2 s), b takes a slot.
    let standby_ran = wait_until(Duration::from_secs(12), || {
        oracle(&file)
            .iter()
            .any(|r| r.node == "b" && started_at(&file, r.pid).is_some_and(|t| t > stopped_at))
    });
    server.stop();
    signal(a.pid(), Signal::SIGCONT);
    assert!(
        standby_ran,
        "b never took a's slots: {}",
        b.p.daemon_output()
    );
    let taken = oracle(&file)
        .into_iter()
        .find(|r| r.node == "b" && started_at(&file, r.pid).is_some_and(|t| t > stopped_at))
        .expect("b's run");
    // The database stays down for 5 s: a, whose lease ran out before it found it gone, runs
    // nothing alone (a standby may reach the database first); then slots go on, once each.
    std::thread::sleep(Duration::from_secs(5));
    let back = now_secs();
    server.start_again();
    assert!(
        a_slot_started_after(&file, back + 0.5, Duration::from_secs(15)),
        "no slot ran after the database came back: {}",
        a.p.daemon_output()
    );
    a.stop();
    b.stop();
    let runs = oracle(&file);
    let of_taken: Vec<_> = runs.iter().filter(|r| r.slot == taken.slot).collect();
    assert_eq!(
        of_taken.len(),
        1,
        "the slot b ran was run again: {of_taken:?}\n{}",
        a.p.daemon_output()
    );
    for (slot, execs) in per_slot(&runs) {
        assert_eq!(execs.len(), 1, "{slot}: {execs:?}");
    }
    let alone = ran_alone_on_a(&file, &runs, (stopped_at, back));
    assert!(alone.is_empty(), "a ran alone during the outage: {alone:?}");
}

/// The model (`alone_only_in_own_epoch`): under `primary`, the primary is SIGKILLed, a standby
/// takes its slots, the database stops and the primary is started again into the outage. A
/// process that has not joined cannot know which slots a standby ran while it was away: it runs
/// nothing alone until it joins (the model's trace: it ran the slot the standby had just run).
#[test]
fn cluster_a_primary_started_into_a_database_stop_runs_nothing_alone_until_it_joins() {
    let (server, _hold) = need_pg!(exclusive);
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = primary_job(&file);
    let (mut a, mut b) = pair_after_a_run(&db, &FAST, &job, &file);
    let killed = now_secs();
    a.kill();
    assert!(
        wait_until(Duration::from_secs(12), || oracle(&file)
            .iter()
            .any(
                |r| r.node == "b" && started_at(&file, r.pid).is_some_and(|t| t > killed)
            )),
        "b never took a's slots: {}",
        b.p.daemon_output()
    );
    server.stop();
    let restarted = now_secs();
    a.start();
    // Three slots with the database down: nobody may run them (b is a standby, and a cannot
    // know what b ran while it was away).
    std::thread::sleep(Duration::from_secs(6));
    let back = now_secs();
    server.start_again();
    assert!(
        a_slot_started_after(&file, back + 0.5, Duration::from_secs(20)),
        "no slot ran after the database came back: {}",
        a.p.daemon_output()
    );
    a.stop();
    b.stop();
    let runs = oracle(&file);
    let alone = ran_alone_on_a(&file, &runs, (restarted, back));
    assert!(
        alone.is_empty(),
        "a ran alone before it joined: {alone:?}\n{}",
        a.p.daemon_output()
    );
    for (slot, execs) in per_slot(&runs) {
        assert_eq!(execs.len(), 1, "{slot}: {execs:?}");
    }
}

/// A12 (the long nemesis run, seed 21 again, after A11's fix): under `primary`, the primary's
/// daemon is stopped past its lease (a standby takes its slots) and the database restarts while
/// it is stopped; it resumes just before a slot, finds its connection gone and, before it has
/// reconnected, would run the slot alone, while the standby, connected again, claims it too.
/// A primary that may have been declared dead waits for the database (up to half the slot's
/// bound) before it runs a slot alone: it reconnects, finds itself dead, rejoins and finds the
/// slot taken.
#[test]
fn cluster_a12_a_primary_resumed_as_the_database_returns_does_not_run_alone_a_slot_a_standby_claims()
 {
    let (server, _hold) = need_pg!(exclusive);
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = primary_job(&file);
    let (mut a, mut b) = pair_after_a_run(&db, &FAST, &job, &file);
    let mut resumed = Vec::new();
    for _ in 0..3 {
        sleep_to_phase(2.0, 0.5);
        let stopped_at = now_secs();
        signal(a.pid(), Signal::SIGSTOP);
        // Past a's lease (2 s), b takes a slot.
        let standby_ran = wait_until(Duration::from_secs(12), || {
            oracle(&file)
                .iter()
                .any(|r| r.node == "b" && started_at(&file, r.pid).is_some_and(|t| t > stopped_at))
        });
        assert!(
            standby_ran,
            "b never took a's slots: {}",
            b.p.daemon_output()
        );
        // The database restarts while a is stopped; a resumes just before the next slot.
        sleep_to_phase(2.0, 0.6);
        server.stop();
        server.start_again();
        sleep_to_phase(2.0, 1.9);
        signal(a.pid(), Signal::SIGCONT);
        resumed.push(now_secs());
        std::thread::sleep(Duration::from_secs(4));
    }
    a.stop();
    b.stop();
    for (slot, execs) in per_slot(&oracle(&file)) {
        assert_eq!(
            execs.len(),
            1,
            "{slot} (a resumed at {resumed:?}): {execs:?}\n{}",
            a.p.daemon_output()
        );
    }
}

/// A13 (the long nemesis run, seed 22): under `primary`, the primary's clock is off, so it
/// stands by and a standby runs its slots (its peers read its offset in the database). When the
/// database goes, it must not run the slots alone: the standby reads its last offset, not its
/// clock now, and runs them once the database is back (in the nemesis the primary's clock was
/// fixed during the outage, and both ran the first slot after it).
#[test]
fn cluster_a13_a_primary_standing_by_for_its_clock_runs_nothing_alone_when_the_database_goes() {
    if !crate::util::have_faketime() {
        return;
    }
    let (server, _hold) = need_pg!(exclusive);
    let db = server.database();
    let shared = shared_dir();
    let file = shared.path().join("oracle.log");
    let job = oracle_job(
        "p",
        &file,
        "*/2 * * * * *",
        0.2,
        "on_database_loss = \"primary\"",
    );
    let mut b = Node::new(&db, "b", 1, &FAST, &job);
    let mut a = Node::new(&db, "a", 0, &FAST, &job);
    b.start();
    start_with_clock(&mut a, "+5s");
    assert!(a.joined() && b.joined(), "{}", a.p.daemon_output());
    assert!(
        wait_until(Duration::from_secs(20), || a
            .p
            .daemon_output()
            .contains("not claiming slots until it is fixed")
            && oracle(&file).iter().filter(|r| r.node == "b").count() >= 2),
        "{}",
        a.p.daemon_output()
    );
    server.stop();
    std::thread::sleep(Duration::from_secs(5));
    server.start_again();
    std::thread::sleep(Duration::from_secs(3));
    a.stop();
    b.stop();
    let alone: Vec<_> = oracle(&file)
        .into_iter()
        .filter(|r| r.node == "a" && r.fence == "None")
        .collect();
    assert!(
        alone.is_empty(),
        "a ran alone while standing by for its clock: {alone:?}\n{}",
        a.p.daemon_output()
    );
}
