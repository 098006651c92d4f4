//! Calendars and market-hours triggers through the binary: `plan`, `calendar`, coverage warnings,
//! and the daemon honouring a calendar override.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{Datelike, NaiveDate};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

fn quarter_hourly(exchange: &str) -> Project {
    let p = Project::new();
    p.config(
        "",
        r#"
[jobs.q]
entry = "fixture_jobs:noop"
schedule = "0 */15 * * * *"
market_hours = true
"#,
    );
    p.set("scheduler.exchange", exchange);
    p
}

fn json(p: &Project, args: &[&str]) -> Value {
    let out = p.run(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// `plan --json` grouped by local date: date → local HH:MM of each fire.
fn plan_by_day(p: &Project, from: &str, to: &str) -> BTreeMap<String, Vec<String>> {
    let plan = json(p, &["plan", "--from", from, "--to", to, "--json"]);
    let mut days: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for fire in plan.as_array().unwrap() {
        assert_eq!(fire["job"], "q");
        let at = chrono::DateTime::parse_from_rfc3339(fire["at"].as_str().unwrap()).unwrap();
        days.entry(at.format("%Y-%m-%d").to_string())
            .or_default()
            .push(at.format("%H:%M%:z").to_string());
    }
    days
}

fn quarter_hours(open: &str, close: &str, offset: &str) -> Vec<String> {
    let mut t = chrono::NaiveTime::parse_from_str(open, "%H:%M").unwrap();
    let end = chrono::NaiveTime::parse_from_str(close, "%H:%M").unwrap();
    let mut out = Vec::new();
    while t <= end {
        out.push(format!("{}{offset}", t.format("%H:%M")));
        t += chrono::Duration::minutes(15);
    }
    out
}

#[test]
fn nyse_plan_across_both_dst_changes_and_thanksgiving() {
    let p = quarter_hourly("XNYS");
    // The week after DST starts: 09:30 … 16:00 EDT every day.
    let days = plan_by_day(&p, "2026-03-09", "2026-03-15");
    assert_eq!(days.len(), 5, "{days:?}");
    for times in days.values() {
        assert_eq!(times, &quarter_hours("09:30", "16:00", "-04:00"));
    }
    // The week after DST ends (2026-11-01): 09:30 … 16:00 EST.
    let days = plan_by_day(&p, "2026-11-02", "2026-11-08");
    assert_eq!(days.len(), 5, "{days:?}");
    for times in days.values() {
        assert_eq!(times, &quarter_hours("09:30", "16:00", "-05:00"));
    }
    // Thanksgiving week: nothing on the 26th, an early close on the 27th.
    let days = plan_by_day(&p, "2026-11-23", "2026-11-29");
    assert!(!days.contains_key("2026-11-26"), "{days:?}");
    assert_eq!(
        days["2026-11-27"],
        quarter_hours("09:30", "13:00", "-05:00")
    );
    assert_eq!(days.len(), 4);
    // The human listing groups by day with counts.
    let out = p.run(&["plan", "--from", "2026-11-27", "--to", "2026-11-27"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("2026-11-27 Fri — 15 fires"), "{listing}");
}

#[test]
fn nse_plan_skips_every_listed_holiday_of_2026() {
    let p = quarter_hourly("XNSE");
    let days = plan_by_day(&p, "2026-01-01", "2026-12-31");
    let holidays = [
        "2026-01-15",
        "2026-01-26",
        "2026-03-03",
        "2026-03-26",
        "2026-03-31",
        "2026-04-03",
        "2026-04-14",
        "2026-05-01",
        "2026-05-28",
        "2026-06-26",
        "2026-09-14",
        "2026-10-02",
        "2026-10-20",
        "2026-11-10",
        "2026-11-24",
        "2026-12-25",
    ];
    let mut date = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    let mut sessions = 0;
    while date.year() == 2026 {
        let key = date.format("%Y-%m-%d").to_string();
        let weekend = date.weekday().number_from_monday() >= 6;
        if weekend || holidays.contains(&key.as_str()) {
            assert!(!days.contains_key(&key), "{key} should have no fire");
        } else {
            assert_eq!(
                days[&key],
                quarter_hours("09:15", "15:30", "+05:30"),
                "{key}"
            );
            sessions += 1;
        }
        date = date.succ_opt().unwrap();
    }
    assert_eq!(days.len(), sessions);
}

#[test]
fn calendar_command_json_and_table() {
    let p = quarter_hourly("XNSE");
    let cal = json(
        &p,
        &[
            "calendar",
            "--exchange",
            "XNYS",
            "--from",
            "2026-01-01",
            "--to",
            "2026-12-31",
            "--json",
        ],
    );
    let cal = cal.as_array().unwrap();
    assert_eq!(cal.len(), 251, "NYSE has 251 sessions in 2026");
    let day = |d: &str| cal.iter().find(|s| s["date"] == d).cloned();
    assert!(day("2026-11-26").is_none());
    let friday = day("2026-11-27").unwrap();
    assert_eq!(
        (friday["open"].as_str(), friday["close"].as_str()),
        (Some("09:30"), Some("13:00"))
    );
    let monday = day("2026-11-30").unwrap();
    assert_eq!(
        (monday["open"].as_str(), monday["close"].as_str()),
        (Some("09:30"), Some("16:00"))
    );

    let muhurat = json(
        &p,
        &[
            "calendar",
            "--from",
            "2025-10-21",
            "--to",
            "2025-10-22",
            "--json",
        ],
    );
    assert_eq!(
        muhurat,
        serde_json::json!([{"date": "2025-10-21", "open": "13:45", "close": "14:45",
                            "kind": "special session", "note": "Muhurat trading"}])
    );
    let out = p.run(&[
        "calendar",
        "--exchange",
        "xnys",
        "--from",
        "2026-11-23",
        "--to",
        "2026-11-27",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("2026-11-27   Fri  09:30  13:00  early close"),
        "{table}"
    );
    assert!(!table.contains("2026-11-26"), "{table}");
}

#[test]
fn bad_ranges_and_names_exit_2_with_one_line() {
    let p = quarter_hourly("XNSE");
    let cases: [(&[&str], &str); 6] = [
        (
            &["plan", "--from", "2026-13-01", "--to", "2026-12-31"],
            "invalid date `2026-13-01` for `--from`",
        ),
        (
            &["plan", "--from", "2026-12-01", "--to", "2026-11-30"],
            "`--to` 2026-11-30 is before `--from` 2026-12-01",
        ),
        (
            &[
                "plan",
                "--job",
                "nope",
                "--from",
                "2026-12-01",
                "--to",
                "2026-12-02",
            ],
            "unknown job `nope`",
        ),
        (
            &[
                "calendar",
                "--exchange",
                "XLON",
                "--from",
                "2026-12-01",
                "--to",
                "2026-12-02",
            ],
            "unknown exchange `XLON`",
        ),
        (
            &["calendar", "--from", "yesterday", "--to", "2026-12-02"],
            "invalid date `yesterday`",
        ),
        (
            &["calendar", "--from", "2026-12-03", "--to", "2026-12-02"],
            "is before",
        ),
    ];
    for (args, want) in cases {
        let out = p.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

/// Sessions (or closures) on yesterday, today and tomorrow in India, so the test holds at any hour.
fn around_today(kind: &str) -> String {
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Kolkata)
        .date_naive();
    let days = [today.pred_opt().unwrap(), today, today.succ_opt().unwrap()];
    match kind {
        "sessions" => days
            .iter()
            .map(|d| format!("[[calendar.sessions]]\ndate = \"{d}\"\nopen = \"00:00\"\nclose = \"23:59:59\"\n"))
            .collect(),
        _ => format!(
            "[calendar]\nclosures = [{}]\n",
            days.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(", ")
        ),
    }
}

const GATED_AND_FREE: &str = r#"
[jobs.gated]
entry = "fixture_jobs:noop"
schedule = "* * * * * *"
market_hours = true

[jobs.free]
entry = "fixture_jobs:noop"
schedule = "* * * * * *"
market_hours = false
"#;

fn runs_of(p: &Project, job: &str) -> usize {
    p.history().iter().filter(|r| r["job"] == job).count()
}

#[test]
fn the_daemon_fires_inside_an_added_session_and_never_on_an_added_closure() {
    // An added all-day session: the gated job fires.
    let open = Project::new();
    open.config(
        "",
        &format!("{GATED_AND_FREE}\n{}", around_today("sessions")),
    );
    let mut daemon = open.spawn_daemon();
    let fired = wait_until(Duration::from_secs(20), || {
        open.log_dir().join("history.sqlite3").exists() && runs_of(&open, "gated") >= 2
    });
    signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(10));
    assert!(
        fired,
        "the gated job never fired in an added session: {:?}",
        open.history()
    );

    // The same days closed: the free job fires, the gated one never does.
    let closed = Project::new();
    closed.config(
        "",
        &format!("{GATED_AND_FREE}\n{}", around_today("closures")),
    );
    let mut daemon = closed.spawn_daemon();
    let fired = wait_until(Duration::from_secs(20), || {
        closed.log_dir().join("history.sqlite3").exists() && runs_of(&closed, "free") >= 3
    });
    let status = closed.run(&["status", "--json"]);
    signal_and_wait(&mut daemon, Signal::SIGTERM, Duration::from_secs(10));
    assert!(fired, "{:?}", closed.history());
    assert_eq!(runs_of(&closed, "gated"), 0, "{:?}", closed.history());
    // `status` agrees: the gated job's next fire is after the closed days.
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let gated = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == "gated")
        .unwrap();
    let next =
        chrono::DateTime::parse_from_rfc3339(gated["next_fire_at"].as_str().unwrap()).unwrap();
    let tomorrow = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Kolkata)
        .date_naive()
        .succ_opt()
        .unwrap();
    assert!(
        next.date_naive() > tomorrow,
        "next fire {next} falls on a closed day"
    );
}

#[test]
fn coverage_warning_in_check_config_and_status() {
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Kolkata)
        .date_naive();
    // The data's end matters only to a job that fires by the calendar.
    for (days_left, market_hours, warns) in
        [(10u64, true, true), (200, true, false), (10, false, false)]
    {
        let p = quarter_hourly("XNSE");
        if !market_hours {
            p.set("jobs.q.market_hours", false);
        }
        let known = today
            .checked_add_days(chrono::Days::new(days_left))
            .unwrap();
        std::fs::create_dir_all(p.path().join("calendars")).unwrap();
        std::fs::write(
            p.path().join("calendars/xnse.toml"),
            format!("exchange = \"XNSE\"\nknown_until = \"{known}\"\nclosures = []\n"),
        )
        .unwrap();
        let want = format!(
            "XNSE holidays are known up to {known}; add {} to",
            known.year() + 1
        );
        let check = p.run(&["check-config"]);
        assert_eq!(check.status.code(), Some(0), "{}", text(&check));
        assert_eq!(
            String::from_utf8_lossy(&check.stdout).contains(&want),
            warns,
            "{}",
            text(&check)
        );
        let status = p.run(&["status", "--json"]);
        let status: Value = serde_json::from_slice(&status.stdout).unwrap();
        let listed = status["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap_or_default().contains(&want));
        assert_eq!(listed, warns, "{status}");
    }
}

#[test]
fn shipped_xnse_data_warns_while_it_nears_its_end() {
    // The shipped calendar covers up to 2026-12-31: from mid-November 2026 on, it must say so.
    let out = std::process::Command::new(BIN)
        .arg("check-config")
        .current_dir(repo())
        .env_remove("HEDGE_SCHEDULER_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let known = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Kolkata)
        .date_naive();
    let shipped = std::fs::read_to_string(repo().join("config/calendars/xnse.toml")).unwrap();
    if shipped.contains("known_until = \"2026-12-31\"") && today + chrono::Days::new(45) >= known {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(
                "XNSE holidays are known up to 2026-12-31; add 2027 to config/calendars/xnse.toml"
            ),
            "{stdout}"
        );
    }
}

#[test]
fn strict_calendar_refuses_to_start_past_its_data() {
    let p = quarter_hourly("XNSE");
    std::fs::create_dir_all(p.path().join("calendars")).unwrap();
    std::fs::write(
        p.path().join("calendars/xnse.toml"),
        "known_until = \"2020-12-31\"\nclosures = [\"2020-12-25\"]\n",
    )
    .unwrap();
    p.set("scheduler.strict_calendar", true);
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("strict_calendar"), "{stderr}");
    assert!(stderr.contains("2020-12-31"), "{stderr}");
    // The plan past the data is empty under strict.
    let plan = json(
        &p,
        &[
            "plan",
            "--from",
            "2021-01-04",
            "--to",
            "2021-01-08",
            "--json",
        ],
    );
    assert_eq!(plan, serde_json::json!([]));
}

#[test]
fn bad_calendar_overrides_are_config_errors() {
    let p = quarter_hourly("XNSE");
    let text_ = std::fs::read_to_string(p.config_path()).unwrap();
    std::fs::write(
        p.config_path(),
        format!("{text_}\n[[calendar.sessions]]\ndate = \"2026-12-01\"\nopen = \"16:00\"\nclose = \"10:00\"\n"),
    )
    .unwrap();
    let out = p.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config.toml:"), "{stderr}");
    assert!(stderr.contains("calendar.sessions"), "{stderr}");
}
