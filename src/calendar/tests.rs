//! Calendar tests: published schedules as facts, edge years 2000–2035, and a golden file of every
//! XNYS holiday and early close 2000–2035 (regenerate with `HEDGE_BLESS=1 cargo test`).

use super::*;

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn t(s: &str) -> NaiveTime {
    NaiveTime::parse_from_str(s, "%H:%M").unwrap()
}

fn closed(cal: &Calendar, date: &str) -> bool {
    cal.session(d(date)).is_none()
}

fn hours(cal: &Calendar, date: &str) -> Option<(String, String)> {
    cal.session(d(date)).map(|s| {
        (
            s.open.format("%H:%M").to_string(),
            s.close.format("%H:%M").to_string(),
        )
    })
}

fn regular_nyse(cal: &Calendar, date: &str) -> bool {
    hours(cal, date) == Some(("09:30".into(), "16:00".into()))
}

fn early_nyse(cal: &Calendar, date: &str) -> bool {
    hours(cal, date) == Some(("09:30".into(), "13:00".into()))
}

/// The year's weekday closures and early closes.
fn year_of(cal: &Calendar, year: i32) -> (Vec<NaiveDate>, Vec<NaiveDate>) {
    let mut holidays = Vec::new();
    let mut early = Vec::new();
    let mut date = NaiveDate::from_ymd_opt(year, 1, 1).unwrap();
    while date.year() == year {
        let weekend = matches!(date.weekday(), Weekday::Sat | Weekday::Sun);
        match cal.session(date) {
            None if !weekend => holidays.push(date),
            Some(s) if s.kind == SessionKind::EarlyClose => early.push(date),
            _ => {}
        }
        date = date.succ_opt().unwrap();
    }
    (holidays, early)
}

fn dates(list: &[&str]) -> Vec<NaiveDate> {
    list.iter().map(|s| d(s)).collect()
}

#[test]
fn nyse_published_schedules_2024_to_2027() {
    let cal = Calendar::builtin(Exchange::Xnys);
    let published: [(i32, &[&str], &[&str]); 4] = [
        (
            2024,
            &[
                "2024-01-01",
                "2024-01-15",
                "2024-02-19",
                "2024-03-29",
                "2024-05-27",
                "2024-06-19",
                "2024-07-04",
                "2024-09-02",
                "2024-11-28",
                "2024-12-25",
            ],
            &["2024-07-03", "2024-11-29", "2024-12-24"],
        ),
        (
            2025,
            &[
                "2025-01-01",
                "2025-01-09",
                "2025-01-20",
                "2025-02-17",
                "2025-04-18",
                "2025-05-26",
                "2025-06-19",
                "2025-07-04",
                "2025-09-01",
                "2025-11-27",
                "2025-12-25",
            ],
            &["2025-07-03", "2025-11-28", "2025-12-24"],
        ),
        (
            2026,
            &[
                "2026-01-01",
                "2026-01-19",
                "2026-02-16",
                "2026-04-03",
                "2026-05-25",
                "2026-06-19",
                "2026-07-03",
                "2026-09-07",
                "2026-11-26",
                "2026-12-25",
            ],
            &["2026-11-27", "2026-12-24"],
        ),
        (
            2027,
            &[
                "2027-01-01",
                "2027-01-18",
                "2027-02-15",
                "2027-03-26",
                "2027-05-31",
                "2027-06-18",
                "2027-07-05",
                "2027-09-06",
                "2027-11-25",
                "2027-12-24",
            ],
            &["2027-11-26"],
        ),
    ];
    for (year, holidays, early) in published {
        let (h, e) = year_of(&cal, year);
        assert_eq!(h, dates(holidays), "holidays {year}");
        assert_eq!(e, dates(early), "early closes {year}");
    }
}

#[test]
fn nyse_edge_years() {
    let cal = Calendar::builtin(Exchange::Xnys);
    // A Saturday New Year's Day is not observed: the Friday before stays open.
    for friday in [
        "1999-12-31",
        "2004-12-31",
        "2010-12-31",
        "2021-12-31",
        "2027-12-31",
        "2032-12-31",
    ] {
        assert!(regular_nyse(&cal, friday), "{friday}");
    }
    // A Sunday New Year's Day is observed on Monday.
    for monday in [
        "2006-01-02",
        "2012-01-02",
        "2017-01-02",
        "2023-01-02",
        "2034-01-02",
    ] {
        assert!(closed(&cal, monday), "{monday}");
    }
    // Juneteenth only from 2022.
    assert!(regular_nyse(&cal, "2020-06-19"));
    assert!(regular_nyse(&cal, "2021-06-18"));
    assert!(closed(&cal, "2022-06-20")); // Sunday → Monday
    assert!(closed(&cal, "2032-06-18")); // Saturday → Friday
    // Thursday July 4 before 2013: the early close is Friday July 5.
    assert!(regular_nyse(&cal, "2002-07-03"));
    assert!(early_nyse(&cal, "2002-07-05"));
    assert!(early_nyse(&cal, "1996-07-05"));
    // … and from 2013 it is Wednesday July 3.
    assert!(early_nyse(&cal, "2013-07-03"));
    assert!(regular_nyse(&cal, "2013-07-05"));
    assert!(early_nyse(&cal, "2019-07-03"));
    assert!(early_nyse(&cal, "2030-07-03"));
    assert!(regular_nyse(&cal, "2030-07-05"));
    // July 3 on a Monday, Tuesday or Thursday.
    assert!(early_nyse(&cal, "2000-07-03")); // Monday
    assert!(early_nyse(&cal, "2007-07-03")); // Tuesday
    assert!(early_nyse(&cal, "2008-07-03")); // Thursday
    // July 4 on a weekend: the observed Friday or Monday is closed, with no early close.
    assert!(closed(&cal, "2020-07-03"));
    assert!(regular_nyse(&cal, "2020-07-02"));
    assert!(closed(&cal, "2021-07-05"));
    // Christmas on a weekend, and Christmas Eve.
    assert!(closed(&cal, "2021-12-24"));
    assert!(closed(&cal, "2022-12-26"));
    assert!(regular_nyse(&cal, "2022-12-23"));
    assert!(early_nyse(&cal, "2029-12-24"));
    assert!(early_nyse(&cal, "2026-12-24"));
    // Good Friday.
    for gf in [
        "2000-04-21",
        "2008-03-21",
        "2011-04-22",
        "2024-03-29",
        "2035-03-23",
    ] {
        assert!(closed(&cal, gf), "{gf}");
    }
    // MLK Day from 1998.
    assert!(regular_nyse(&cal, "1997-01-20"));
    assert!(closed(&cal, "1998-01-19"));
    // Special closures and one-off early closes.
    for c in [
        "1994-04-27",
        "2001-09-11",
        "2001-09-12",
        "2001-09-13",
        "2001-09-14",
        "2004-06-11",
        "2007-01-02",
        "2012-10-29",
        "2012-10-30",
        "2018-12-05",
        "2025-01-09",
    ] {
        assert!(closed(&cal, c), "{c}");
    }
    assert!(regular_nyse(&cal, "2001-09-17"));
    assert!(early_nyse(&cal, "1997-12-26"));
    assert!(early_nyse(&cal, "2003-12-26"));
    assert!(regular_nyse(&cal, "2008-12-26"));
}

#[test]
fn nyse_golden_2000_to_2035() {
    let cal = Calendar::builtin(Exchange::Xnys);
    let mut text =
        String::from("# XNYS weekday closures (H) and 13:00 early closes (E), 2000-2035\n");
    for year in 2000..=2035 {
        let (h, e) = year_of(&cal, year);
        let mut all: Vec<(NaiveDate, char)> = h.into_iter().map(|d| (d, 'H')).collect();
        all.extend(e.into_iter().map(|d| (d, 'E')));
        all.sort();
        for (date, kind) in all {
            text.push_str(&format!("{date} {} {kind}\n", date.format("%a")));
        }
    }
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/calendar/testdata/xnys_2000_2035.txt");
    if std::env::var_os("HEDGE_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, golden, "XNYS calendar changed: review and re-bless");
}

#[test]
fn nse_published_holidays_and_special_sessions() {
    let cal = Calendar::builtin(Exchange::Xnse);
    assert_eq!(cal.known_until(), Some(d("2026-12-31")));
    let published: [(i32, &[&str]); 3] = [
        (
            2024,
            &[
                "2024-01-22",
                "2024-01-26",
                "2024-03-08",
                "2024-03-25",
                "2024-03-29",
                "2024-04-11",
                "2024-04-17",
                "2024-05-01",
                "2024-05-20",
                "2024-06-17",
                "2024-07-17",
                "2024-08-15",
                "2024-10-02",
                "2024-11-15",
                "2024-11-20",
                "2024-12-25",
            ],
        ),
        (
            2025,
            &[
                "2025-02-26",
                "2025-03-14",
                "2025-03-31",
                "2025-04-10",
                "2025-04-14",
                "2025-04-18",
                "2025-05-01",
                "2025-08-15",
                "2025-08-27",
                "2025-10-02",
                "2025-10-22",
                "2025-11-05",
                "2025-12-25",
            ],
        ),
        (
            2026,
            &[
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
            ],
        ),
    ];
    for (year, holidays) in published {
        let (h, e) = year_of(&cal, year);
        // 2024-11-01 and 2025-10-21 are holidays with a special session instead.
        assert_eq!(h, dates(holidays), "XNSE holidays {year}");
        assert!(e.is_empty());
    }
    let muhurat = cal.session(d("2024-11-01")).unwrap();
    assert_eq!((muhurat.open, muhurat.close), (t("18:00"), t("19:00")));
    assert_eq!(muhurat.kind, SessionKind::Special);
    assert_eq!(cal.note(d("2024-11-01")), Some("Muhurat trading"));
    let muhurat = cal.session(d("2025-10-21")).unwrap();
    assert_eq!((muhurat.open, muhurat.close), (t("13:45"), t("14:45")));
    assert_eq!(
        hours(&cal, "2026-11-27"),
        Some(("09:15".into(), "15:30".into()))
    );
    assert!(closed(&cal, "2026-11-28")); // Saturday
}

#[test]
fn nse_past_its_data_counts_weekdays_unless_strict() {
    let cal = Calendar::builtin(Exchange::Xnse);
    assert!(
        hours(&cal, "2027-01-26").is_some(),
        "lenient: a weekday past the data is a session"
    );
    let strict = Calendar::builtin(Exchange::Xnse).with_overrides(Overrides::default(), true);
    assert!(closed(&strict, "2027-01-26"));
    assert!(hours(&strict, "2026-12-31").is_some());
}

#[test]
fn coverage_warning_starts_before_the_data_ends() {
    let cal = Calendar::builtin(Exchange::Xnse);
    assert!(cal.coverage_warning(d("2026-10-01")).is_none());
    let w = cal.coverage_warning(d("2026-11-27")).expect("warns today");
    assert!(
        w.contains("XNSE holidays are known up to 2026-12-31; add 2027 to"),
        "{w}"
    );
    assert!(w.contains("xnse.toml"), "{w}");
    assert!(cal.coverage_warning(d("2027-03-01")).is_some());
    assert!(
        Calendar::builtin(Exchange::Xnys)
            .coverage_warning(d("2026-11-27"))
            .is_none()
    );
}

#[test]
fn overrides_win_over_file_and_rules() {
    let mut o = Overrides::default();
    o.closures.insert(d("2026-11-30"), None); // a Monday
    o.sessions.insert(
        d("2026-11-26"), // Thanksgiving
        ListedSession {
            open: t("10:00"),
            close: t("12:00"),
            note: Some("test".into()),
        },
    );
    o.sessions.insert(
        d("2026-12-01"),
        ListedSession {
            open: t("09:30"),
            close: t("14:00"),
            note: None,
        },
    );
    let cal = Calendar::builtin(Exchange::Xnys).with_overrides(o, false);
    assert!(closed(&cal, "2026-11-30"));
    assert_eq!(
        hours(&cal, "2026-11-26"),
        Some(("10:00".into(), "12:00".into()))
    );
    assert_eq!(
        cal.session(d("2026-12-01")).unwrap().kind,
        SessionKind::EarlyClose
    );
}

#[test]
fn calendar_file_errors_are_placed() {
    let p = Path::new("x.toml");
    let bad = [
        (
            "closures = [\"2026-13-01\"]",
            "1:13: invalid date `2026-13-01` in `closures`",
        ),
        (
            "[[sessions]]\ndate = \"2026-12-01\"\nopen = \"25:00\"",
            "3:8: invalid time `25:00` in `sessions.open`",
        ),
        (
            "[[sessions]]\ndate = \"2026-12-01\"\nopen = \"15:00\"\nclose = \"14:00\"",
            "closes at 14:00 (the close must be later)",
        ),
        ("holidayz = []", "1:1: unknown field `holidayz`"),
        ("exchange = \"XNYS\"", "this is the calendar file of XNSE"),
    ];
    for (src, want) in bad {
        let e = file::parse(p, src, Exchange::Xnse).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn sessions_in_a_range() {
    let cal = Calendar::builtin(Exchange::Xnys);
    let week = cal.sessions(d("2026-11-23"), d("2026-11-29"));
    let days: Vec<_> = week
        .iter()
        .map(|s| s.date.format("%a").to_string())
        .collect();
    assert_eq!(days, ["Mon", "Tue", "Wed", "Fri"]);
    assert_eq!(week[3].kind, SessionKind::EarlyClose);
}
