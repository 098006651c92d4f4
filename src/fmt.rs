//! Leaf formatters shared by the daemon, the commands and the status tables.

use std::time::Duration;

/// `850ms`, `12.5s`, `3m05s`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        let s = d.as_secs();
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// `2.3 GiB`, `512.0 MiB`.
pub fn bytes(n: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    let n = n as f64;
    if n >= GIB {
        format!("{:.1} GiB", n / GIB)
    } else {
        format!("{:.1} MiB", n / (1024.0 * 1024.0))
    }
}

/// An instant as `09:30:00 UTC` (the cluster's messages: nodes may sit in different zones).
pub fn instant(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%H:%M:%S%.3f UTC").to_string()
}

/// An instant in the exchange's timezone, RFC 3339 with its offset.
pub fn rfc3339_in(t: chrono::DateTime<chrono::Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// `1 slot`, `2 slots`, `0 slots`: a count and its noun, plural when it is not one.
pub fn n<T: TryInto<u64>>(count: T, noun: &str) -> String {
    let count: u64 = count.try_into().unwrap_or(0);
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}
