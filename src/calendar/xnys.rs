//! NYSE (XNYS) holidays and early closes, computed by rule for any year.
//!
//! Sources: the exchange's published holiday and early-close schedules. Full holidays follow the
//! observance rules below; special closures (national days of mourning, weather, 9/11) are listed.

use chrono::{Datelike, NaiveDate, Weekday};

/// Days the exchange closed outside its holiday rules, since 1990.
const SPECIAL_CLOSURES: &[(i32, u32, u32)] = &[
    (1994, 4, 27), // President Nixon's funeral
    (2001, 9, 11), // September 11
    (2001, 9, 12),
    (2001, 9, 13),
    (2001, 9, 14),
    (2004, 6, 11),  // President Reagan's funeral
    (2007, 1, 2),   // President Ford's funeral
    (2012, 10, 29), // Hurricane Sandy
    (2012, 10, 30),
    (2018, 12, 5), // President G. H. W. Bush's funeral
    (2025, 1, 9),  // President Carter's funeral
];

/// One-off early closes at 13:00 outside the rules.
const SPECIAL_EARLY_CLOSES: &[(i32, u32, u32)] = &[(1997, 12, 26), (2003, 12, 26)];

fn ymd(y: i32, m: u32, d: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(y, m, d)
}

fn listed(list: &[(i32, u32, u32)], date: NaiveDate) -> bool {
    list.iter()
        .any(|&(y, m, d)| (y, m, d) == (date.year(), date.month(), date.day()))
}

/// The `n`th `weekday` of a month (1-based).
fn nth_weekday(year: i32, month: u32, weekday: Weekday, n: u8) -> Option<NaiveDate> {
    NaiveDate::from_weekday_of_month_opt(year, month, weekday, n)
}

/// The last `weekday` of a month.
fn last_weekday(year: i32, month: u32, weekday: Weekday) -> Option<NaiveDate> {
    let first_next = if month == 12 {
        ymd(year + 1, 1, 1)?
    } else {
        ymd(year, month + 1, 1)?
    };
    let mut d = first_next.pred_opt()?;
    while d.weekday() != weekday {
        d = d.pred_opt()?;
    }
    Some(d)
}

/// Easter Sunday (Gregorian), by the anonymous Gregorian algorithm.
pub fn easter(year: i32) -> Option<NaiveDate> {
    let a = year % 19;
    let b = year / 100;
    let c = year % 100;
    let d = b / 4;
    let e = b % 4;
    let f = (b + 8) / 25;
    let g = (b - f + 1) / 3;
    let h = (19 * a + b - d - g + 15) % 30;
    let i = c / 4;
    let k = c % 4;
    let l = (32 + 2 * e + 2 * i - h - k) % 7;
    let m = (a + 11 * h + 22 * l) / 451;
    let month = (h + l - 7 * m + 114) / 31;
    let day = (h + l - 7 * m + 114) % 31 + 1;
    ymd(year, u32::try_from(month).ok()?, u32::try_from(day).ok()?)
}

/// A fixed-date holiday observed on Friday when it falls on Saturday, Monday when on Sunday.
fn observed(date: NaiveDate) -> NaiveDate {
    match date.weekday() {
        Weekday::Sat => date.pred_opt().unwrap_or(date),
        Weekday::Sun => date.succ_opt().unwrap_or(date),
        _ => date,
    }
}

/// The full holidays of `year`, in date order.
pub fn holidays(year: i32) -> Vec<NaiveDate> {
    let mut out: Vec<NaiveDate> = Vec::with_capacity(12);
    // New Year's Day: Sunday → Monday; a Saturday New Year's is not observed (Dec 31 stays open).
    if let Some(ny) = ymd(year, 1, 1) {
        match ny.weekday() {
            Weekday::Sat => {}
            Weekday::Sun => out.extend(ymd(year, 1, 2)),
            _ => out.push(ny),
        }
    }
    if year >= 1998 {
        out.extend(nth_weekday(year, 1, Weekday::Mon, 3)); // Martin Luther King Jr. Day
    }
    out.extend(nth_weekday(year, 2, Weekday::Mon, 3)); // Presidents Day
    out.extend(easter(year).and_then(|e| e.checked_sub_days(chrono::Days::new(2)))); // Good Friday
    out.extend(last_weekday(year, 5, Weekday::Mon)); // Memorial Day
    if year >= 2022 {
        out.extend(ymd(year, 6, 19).map(observed)); // Juneteenth
    }
    out.extend(ymd(year, 7, 4).map(observed)); // Independence Day
    out.extend(nth_weekday(year, 9, Weekday::Mon, 1)); // Labor Day
    out.extend(nth_weekday(year, 11, Weekday::Thu, 4)); // Thanksgiving
    out.extend(ymd(year, 12, 25).map(observed)); // Christmas
    out.extend(
        SPECIAL_CLOSURES
            .iter()
            .filter(|(y, _, _)| *y == year)
            .filter_map(|&(y, m, d)| ymd(y, m, d)),
    );
    out.sort();
    out
}

/// Whether the exchange is closed all day on `date` (weekends aside).
pub fn is_holiday(date: NaiveDate) -> bool {
    if listed(SPECIAL_CLOSURES, date) {
        return true;
    }
    let y = date.year();
    let same = |d: Option<NaiveDate>| d == Some(date);
    match date.month() {
        1 => {
            (date.day() == 1 && !matches!(date.weekday(), Weekday::Sat | Weekday::Sun))
                || (date.day() == 2 && date.weekday() == Weekday::Mon)
                || (y >= 1998 && same(nth_weekday(y, 1, Weekday::Mon, 3)))
        }
        2 => same(nth_weekday(y, 2, Weekday::Mon, 3)),
        3 | 4 => same(easter(y).and_then(|e| e.checked_sub_days(chrono::Days::new(2)))),
        5 => same(last_weekday(y, 5, Weekday::Mon)),
        6 => y >= 2022 && same(ymd(y, 6, 19).map(observed)),
        7 => same(ymd(y, 7, 4).map(observed)),
        9 => same(nth_weekday(y, 9, Weekday::Mon, 1)),
        11 => same(nth_weekday(y, 11, Weekday::Thu, 4)),
        12 => same(ymd(y, 12, 25).map(observed)),
        _ => false,
    }
}

/// Whether `date` closes early (13:00), assuming it is otherwise a session.
pub fn is_early_close(date: NaiveDate) -> bool {
    if listed(SPECIAL_EARLY_CLOSES, date) {
        return true;
    }
    let y = date.year();
    let wd = date.weekday();
    match (date.month(), date.day()) {
        // July 3: Monday, Tuesday or Thursday from 1995; Wednesday from 2013.
        (7, 3) => {
            (y >= 1995 && matches!(wd, Weekday::Mon | Weekday::Tue | Weekday::Thu))
                || (y >= 2013 && wd == Weekday::Wed)
        }
        // Before 2013, a Thursday July 4 gave the early close on Friday July 5.
        (7, 5) => (1995..2013).contains(&y) && wd == Weekday::Fri,
        // Christmas Eve, Monday to Thursday.
        (12, 24) => matches!(
            wd,
            Weekday::Mon | Weekday::Tue | Weekday::Wed | Weekday::Thu
        ),
        // The day after Thanksgiving.
        (11, _) => {
            wd == Weekday::Fri
                && nth_weekday(y, 11, Weekday::Thu, 4).and_then(|t| t.succ_opt()) == Some(date)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn easter_dates() {
        for (y, e) in [
            (2000, "2000-04-23"),
            (2008, "2008-03-23"),
            (2011, "2011-04-24"),
            (2019, "2019-04-21"),
            (2024, "2024-03-31"),
            (2025, "2025-04-20"),
            (2026, "2026-04-05"),
            (2035, "2035-03-25"),
        ] {
            assert_eq!(easter(y), Some(d(e)), "{y}");
        }
    }

    #[test]
    fn is_holiday_agrees_with_holidays_every_day_1990_to_2040() {
        let mut date = d("1990-01-01");
        while date < d("2041-01-01") {
            let listed = holidays(date.year()).contains(&date);
            assert_eq!(is_holiday(date), listed, "{date}");
            date = date.succ_opt().unwrap();
        }
    }
}
