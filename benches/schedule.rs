//! The pure scheduling path: next fire instant and session lookup (`cargo bench`).

use std::hint::black_box;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use hedge_scheduler::calendar::{Calendar, Exchange};
use hedge_scheduler::trigger::{CronSchedule, Schedule, SessionPoint, Trigger};

fn local(cal: &Calendar, s: &str) -> DateTime<Utc> {
    let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap();
    cal.tz()
        .from_local_datetime(&naive)
        .earliest()
        .unwrap()
        .with_timezone(&Utc)
}

fn cron(p: &str, market_hours: bool) -> Trigger {
    Trigger::cron(CronSchedule::parse(p).unwrap(), market_hours)
}

fn next_fire(c: &mut Criterion) {
    let xnse = Calendar::builtin(Exchange::Xnse);
    let xnys = Calendar::builtin(Exchange::Xnys);
    let chain = cron("0 */3 * * * *", true);
    let quarter = cron("0 */15 * * * *", true);
    let every_second = cron("* * * * * *", false);
    let close = Trigger {
        schedule: Schedule::Session(SessionPoint::parse("@close-10m").unwrap()),
        ..cron("* * * * * *", true)
    };

    let mut g = c.benchmark_group("next_fire_after");
    let t = local(&xnse, "2026-11-27 10:01:30");
    g.bench_function("xnse 3-min, in session", |b| {
        b.iter(|| chain.next_fire_after(&xnse, black_box(t)))
    });
    let t = local(&xnse, "2026-11-27 15:30:00");
    g.bench_function("xnse 3-min, friday close to monday open", |b| {
        b.iter(|| chain.next_fire_after(&xnse, black_box(t)))
    });
    let t = local(&xnse, "2026-11-23 15:30:00");
    g.bench_function("xnse 3-min, over a holiday", |b| {
        b.iter(|| chain.next_fire_after(&xnse, black_box(t)))
    });
    let t = local(&xnys, "2026-03-06 16:00:00");
    g.bench_function("xnys 15-min, over the DST weekend", |b| {
        b.iter(|| quarter.next_fire_after(&xnys, black_box(t)))
    });
    let t = local(&xnys, "2026-11-25 16:00:00");
    g.bench_function("xnys @close-10m, over thanksgiving", |b| {
        b.iter(|| close.next_fire_after(&xnys, black_box(t)))
    });
    let t = local(&xnse, "2026-11-27 10:01:30");
    g.bench_function("every second, ungated", |b| {
        b.iter(|| every_second.next_fire_after(&xnse, black_box(t)))
    });
    g.finish();

    // `ctx.interval_start`, computed as each run starts.
    let mut g = c.benchmark_group("previous_fire_before");
    let t = local(&xnse, "2026-11-27 10:03:00");
    g.bench_function("xnse 3-min, in session", |b| {
        b.iter(|| chain.previous_fire_before(&xnse, black_box(t)))
    });
    let t = local(&xnse, "2026-11-30 09:15:00");
    g.bench_function("xnse 15-min, monday open to friday close", |b| {
        b.iter(|| quarter.previous_fire_before(&xnse, black_box(t)))
    });
    let t = local(&xnse, "2026-11-30 09:15:00");
    g.bench_function("xnse 3-min, monday open to friday close", |b| {
        b.iter(|| chain.previous_fire_before(&xnse, black_box(t)))
    });
    g.finish();
}

fn session(c: &mut Criterion) {
    let xnse = Calendar::builtin(Exchange::Xnse);
    let xnys = Calendar::builtin(Exchange::Xnys);
    let mut g = c.benchmark_group("session");
    let friday = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    let good_friday = NaiveDate::from_ymd_opt(2026, 4, 3).unwrap();
    g.bench_function("xnys early close", |b| {
        b.iter(|| xnys.session(black_box(friday)))
    });
    g.bench_function("xnys good friday", |b| {
        b.iter(|| xnys.session(black_box(good_friday)))
    });
    g.bench_function("xnse regular", |b| {
        b.iter(|| xnse.session(black_box(friday)))
    });
    g.bench_function("xnys a year of sessions", |b| {
        let from = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let to = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
        b.iter(|| xnys.sessions(black_box(from), black_box(to)).len())
    });
    g.finish();
}

criterion_group!(benches, next_fire, session);
criterion_main!(benches);
