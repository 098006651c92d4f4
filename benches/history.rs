//! The history's hot paths (`cargo bench --bench history`): recording a run (start and end), and
//! the queries behind `status` and `history` on a 100,000-run database.

use std::hint::black_box;

use chrono::{Duration, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use hedge_scheduler::history::{History, Key, NewRun, Outcome, RunEnd, TriggerKind, new_uid};

fn new_run<'a>(job: &'a str, uid: &'a str, at: chrono::DateTime<Utc>) -> NewRun<'a> {
    NewRun {
        uid,
        job,
        trigger: TriggerKind::Schedule,
        scheduled_at: at,
        started_at: at,
        attempt: 1,
        executor: "pyo3",
        tag: None,
    }
}

fn history(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let h = History::open(&dir.path().join("history.sqlite3")).expect("history");
    let jobs = ["options_analysis", "intraday", "options_chain"];
    let t0 = Utc::now() - Duration::days(200);
    for i in 0..100_000i64 {
        let at = t0 + Duration::minutes(3 * i);
        let uid = new_uid();
        h.start_run(&new_run(jobs[(i % 3) as usize], &uid, at))
            .expect("insert");
        h.finish_run(
            Key::Uid(&uid),
            Outcome::Success,
            &RunEnd {
                finished_at: Some(at + Duration::seconds(2)),
                ..RunEnd::default()
            },
        )
        .expect("finish");
    }

    let mut g = c.benchmark_group("history");
    g.bench_function("record a run (start + end)", |b| {
        b.iter(|| {
            let now = Utc::now();
            let uid = new_uid();
            h.start_run(&new_run("options_chain", &uid, now))
                .expect("insert");
            h.finish_run(Key::Uid(&uid), Outcome::Success, &RunEnd::default())
                .expect("finish");
        })
    });
    g.bench_function("last run of a job", |b| {
        b.iter(|| h.last_run(black_box("intraday")).expect("query"))
    });
    g.bench_function("history --limit 20 (one job)", |b| {
        b.iter(|| h.runs(Some(black_box("intraday")), 20).expect("query"))
    });
    let day = t0 + Duration::days(100);
    g.bench_function("a day's slots done and failures", |b| {
        b.iter(|| {
            h.day_counts(black_box("options_chain"), day, day + Duration::days(1))
                .expect("query")
        })
    });
    g.bench_function("rows still running", |b| {
        b.iter(|| h.running().expect("query"))
    });
    g.finish();
}

criterion_group!(benches, history);
criterion_main!(benches);
