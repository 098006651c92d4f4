//! Config tests: good configs resolve, bad ones are refused at their key.

use super::*;

const GOOD: &str = r#"
[scheduler]
exchange = "XNSE"
log_dir = "../logs"
history = "../logs/history.sqlite3"

[python]
executable = "python3"
path = ["../python_bridge"]

[jobs.options_chain]
name = "Options Chain Collection"
entry = "hedge_jobs.options_chain:run"
schedule = "0 */3 * * * *"
market_hours = true
executor = "subprocess"
timeout = "150s"
args = { indices = ["NIFTY", "BANKNIFTY"] }
"#;

fn parse(src: &str) -> Result<Config, String> {
    Config::parse(Path::new("/p/config/c.toml"), src).map_err(|e| e.to_string())
}

#[test]
fn good_config_resolves_paths_against_its_folder() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.scheduler.log_dir, Path::new("/p/logs"));
    assert_eq!(c.scheduler.history, Path::new("/p/logs/history.sqlite3"));
    assert_eq!(c.python.path, vec![PathBuf::from("/p/python_bridge")]);
    let j = &c.jobs[0];
    assert_eq!(j.id, "options_chain");
    assert_eq!(j.entry.to_string(), "hedge_jobs.options_chain:run");
    assert_eq!(j.timeout, Duration::from_secs(150));
    assert_eq!(j.args["indices"][1], "BANKNIFTY");
}

#[test]
fn unknown_key_names_file_line_and_table() {
    let src = GOOD.replace("market_hours = true", "schedual = 1");
    let e = parse(&src).unwrap_err();
    assert!(
        e.starts_with("/p/config/c.toml:15:1: unknown field `schedual`"),
        "{e}"
    );
    assert!(e.contains("[jobs.options_chain]"), "{e}");
}

#[test]
fn bad_values_are_placed_and_named() {
    let cases = [
        (
            "\"0 */3 * * * *\"",
            "\"0 */3 * * * * * *\"",
            "14:12: invalid cron",
            "schedule",
        ),
        (
            "\"XNSE\"",
            "\"XLON\"",
            "3:12: unknown exchange `XLON`",
            "scheduler.exchange",
        ),
        (
            "\"subprocess\"",
            "\"thread\"",
            "16:12: unknown executor `thread`",
            "executor",
        ),
        (
            "\"150s\"",
            "\"soon\"",
            "17:11: invalid duration `soon`",
            "jobs.options_chain.timeout",
        ),
        (
            "\"hedge_jobs.options_chain:run\"",
            "\"hedge_jobs\"",
            "13:9: invalid `entry`",
            "jobs.options_chain",
        ),
    ];
    for (from, to, want, key) in cases {
        let e = parse(&GOOD.replace(from, to)).unwrap_err();
        assert!(e.contains(want), "{e}");
        assert!(e.contains(key), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

#[test]
fn missing_entry_names_the_job() {
    let src = GOOD.replace("entry = \"hedge_jobs.options_chain:run\"\n", "");
    let e = parse(&src).unwrap_err();
    assert!(
        e.contains("missing key `entry` in [jobs.options_chain]"),
        "{e}"
    );
}

#[test]
fn review_cases_are_placed_errors() {
    // A job without `schedule`: the error names the job's table, not the one before it.
    let src = "[python]\npath = []\n\n[jobs.a]\nentry = \"m:f\"\n";
    let e = parse(src).unwrap_err();
    assert!(
        e.contains("missing field `schedule`") && e.contains("[jobs.a]"),
        "{e}"
    );
    assert!(!e.contains("[python]"), "{e}");
    // A window that ends before it starts.
    let src = GOOD.replace(
        "market_hours = true",
        "market_hours = true\nwindow_start = \"@close\"\nwindow_end = \"@open\"",
    );
    let e = parse(&src).unwrap_err();
    assert!(e.contains("ends (@open) before it starts (@close)"), "{e}");
    // Absurd durations are refused, not a panic later.
    let e = parse(&GOOD.replace("\"150s\"", "\"500000000000y\"")).unwrap_err();
    assert!(
        e.contains("too long") || e.contains("invalid duration"),
        "{e}"
    );
    // A non-ASCII character after an anchor is an error, not a panic.
    let e = parse(&GOOD.replace("0 */3 * * * *", "@open€")).unwrap_err();
    assert!(e.contains("invalid session point"), "{e}");
}

#[test]
fn toml_dates_in_args_reach_python_as_text() {
    let src = GOOD.replace(
        "args = { indices = [\"NIFTY\", \"BANKNIFTY\"] }",
        "args = { until = 2026-12-31, at = 09:15:00, ratio = 1.5 }",
    );
    let c = parse(&src).unwrap();
    assert_eq!(c.jobs[0].args["until"], "2026-12-31");
    assert_eq!(c.jobs[0].args["at"], "09:15:00");
    assert_eq!(c.jobs[0].args["ratio"], 1.5);
}

#[test]
fn durations() {
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert!(parse_duration("0s").is_err());
    assert!(parse_duration("ten").is_err());
}

#[test]
fn sizes() {
    assert_eq!(parse_size("2GiB").unwrap(), 2 * 1024 * 1024 * 1024);
    assert_eq!(parse_size("512 MiB").unwrap(), 512 * 1024 * 1024);
    assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert!(parse_size("lots").is_err());
    assert!(parse_size("2XB").is_err());
}

#[test]
fn entries() {
    assert!(parse_entry("a.b:run").is_some());
    assert!(parse_entry("a.b").is_none());
    assert!(parse_entry("a.b:").is_none());
    assert!(parse_entry("a..b:run").is_none());
    assert!(parse_entry("a:b.c").is_none());
    assert_eq!(
        parse_entry("src/data/collector.py"),
        Some(Entry::Script(PathBuf::from("src/data/collector.py")))
    );
}

#[test]
fn every_error_names_its_key_wrong_types_duplicates_and_an_empty_file_included() {
    let cases = [
        // (replace, with, wanted in the one-line error)
        (
            "timeout = \"150s\"",
            "timeout = 150",
            "17:11: `jobs.options_chain.timeout`: invalid type",
        ),
        (
            "timeout = \"150s\"",
            "timeout = \"150s\"\ntimeout = \"2m\"",
            "18:1: `jobs.options_chain.timeout`: duplicate key",
        ),
        (
            "exchange = \"XNSE\"",
            "exchange = \"XNSE\"\nhealth_interval = \"1ns\"",
            "`scheduler.health_interval` = \"1ns\" is too short: at least 1s",
        ),
        (
            "exchange = \"XNSE\"",
            "exchange = \"XNSE\"\nreport_interval = \"999ms\"",
            "`scheduler.report_interval` = \"999ms\" is too short",
        ),
        (
            "[jobs.options_chain]",
            "[jobs.a_very_long_job_id_that_nobody_could_read_on_a_status_line_at_all_really]",
            "is 72 characters long; at most 64",
        ),
    ];
    for (from, to, want) in cases {
        let src = GOOD.replace(from, to);
        assert_ne!(src, GOOD, "{from}");
        let e = parse(&src).unwrap_err();
        assert!(e.contains(want), "{want}\n{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    for blank in ["  \n", "# only a comment\n\n   # and another\n"] {
        let e = parse(blank).unwrap_err();
        assert!(e.contains("the config file is empty"), "{e}");
    }
    let big = GOOD.replace(
        "args = { indices = [\"NIFTY\", \"BANKNIFTY\"] }",
        &format!("args = {{ blob = \"{}\" }}", "x".repeat(120 * 1024)),
    );
    let e = parse(&big).unwrap_err();
    assert!(
        e.contains("`args` of [jobs.options_chain] is 121 KiB as JSON; at most 100 KiB"),
        "{e}"
    );
    // A 64-character id is fine.
    assert!(
        parse(&GOOD.replace(
            "[jobs.options_chain]",
            &format!("[jobs.{}]", "x".repeat(64))
        ))
        .is_ok()
    );
}

#[test]
fn a_history_folder_and_a_root_log_dir_are_refused_by_load() {
    let dir = tempfile::tempdir().unwrap();
    let write = |extra: &str| {
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            GOOD.replace(
                "log_dir = \"../logs\"\nhistory = \"../logs/history.sqlite3\"",
                extra,
            ),
        )
        .unwrap();
        Config::load(&p).map(|_| ()).map_err(|e| e.to_string())
    };
    std::fs::create_dir(dir.path().join("afolder")).unwrap();
    let e = write("log_dir = \"logs\"\nhistory = \"afolder\"").unwrap_err();
    assert!(
        e.contains("5:1: `scheduler.history`") && e.contains("is a folder"),
        "{e}"
    );
    let e = write("log_dir = \"/\"\nhistory = \"h.sqlite3\"").unwrap_err();
    assert!(
        e.contains("4:1: `scheduler.log_dir` `/` is a filesystem root"),
        "{e}"
    );
    let e = write("log_dir = \"../../../../../../../../..\"\nhistory = \"h.sqlite3\"").unwrap_err();
    assert!(e.contains("is a filesystem root"), "{e}");
    write("log_dir = \"logs\"\nhistory = \"logs/h.sqlite3\"").unwrap();
}

#[test]
fn a_cluster_table_is_validated_at_its_keys() {
    let base = format!(
        "{GOOD}\n[cluster]\ndatabase = \"host=/run/postgresql dbname=hedge\"\nnode = \"alpha\"\n"
    );
    let c = parse(&base).unwrap();
    let cl = c.cluster.as_ref().unwrap();
    assert_eq!(cl.node, "alpha");
    assert_eq!(cl.database_shown, "/run/postgresql:5432/hedge");
    assert_eq!(cl.lease, Duration::from_secs(10));
    assert_eq!(c.jobs[0].takeover, Takeover::Rerun);
    let cases = [
        ("heartbeat = \"5s\"", "must be more than 3 × `heartbeat`"),
        // Exactly 3 ×: a trust window of one heartbeat, spent before the next renewal is sent.
        (
            "heartbeat = \"2s\"\nlease = \"6s\"",
            "must be more than 3 × `heartbeat`",
        ),
        ("max_clock_skew = \"6s\"", "less than half of `lease`"),
        ("priority = 30", "shorter than `lease`"),
        ("priority = -1", "must be 0 to 100"),
        (
            "on_database_loss = \"maybe\"",
            "expected one of: run, primary, skip",
        ),
        ("schema = \"Bad\"", "invalid `schema`"),
    ];
    for (line, want) in cases {
        let e = parse(&format!("{base}{line}\n")).unwrap_err();
        assert!(e.contains(want), "{line}: {e}");
        assert!(e.starts_with("/p/config/c.toml:"), "{line}: {e}");
    }
    let e =
        parse(&base.replace("database = \"host=/run/postgresql dbname=hedge\"\n", "")).unwrap_err();
    assert!(e.contains("missing key `database` in [cluster]"), "{e}");
    let e = parse(&base.replace("dbname=hedge", "dbname=hedge sslmode=bogus")).unwrap_err();
    assert!(e.contains("invalid `database`"), "{e}");
    // A password never shows.
    let c = parse(&base.replace(
        "host=/run/postgresql dbname=hedge",
        "postgresql://u:s3cret@db:5433/h",
    ))
    .unwrap();
    assert_eq!(c.cluster.unwrap().database_shown, "db:5433/h");
}

#[test]
fn cluster_keys_of_a_job_need_a_cluster_table() {
    let src = GOOD.replace(
        "timeout = \"150s\"",
        "timeout = \"150s\"\ntakeover = \"abandon\"",
    );
    let e = parse(&src).unwrap_err();
    assert!(
        e.contains("`takeover` in [jobs.options_chain] needs a [cluster] table"),
        "{e}"
    );
    let src = format!("{src}\n[cluster]\ndatabase = \"host=/tmp dbname=x\"\n");
    assert_eq!(parse(&src).unwrap().jobs[0].takeover, Takeover::Abandon);
}

#[test]
fn a_jobs_environment_is_checked_at_its_key_and_its_values_never_shown() {
    let with = |extra: &str| {
        GOOD.replace(
            "timeout = \"150s\"",
            &format!("timeout = \"150s\"\n{extra}"),
        )
    };
    let cases = [
        ("env = { \"1X\" = \"sekrit\" }", "not a variable name"),
        (
            "env = { HEDGE_CONTEXT = \"sekrit\" }",
            "set by hedge-scheduler",
        ),
        ("env = { N = 1 }", "must be a string"),
        ("env = \"TOKEN=sekrit\"", "must be a table"),
        ("env = [\"sekrit\"]", "must be a table"),
        ("env = { K = \"sekrit\" }\nexecutor2 = 1", "unknown field"),
    ];
    for (extra, want) in cases {
        let e = parse(&with(extra)).unwrap_err();
        assert!(e.contains(want), "{e}");
        assert!(
            e.contains("jobs.options_chain") || want == "unknown field",
            "{e}"
        );
        assert!(!e.contains("sekrit"), "{e}");
    }
    let c = parse(&with("env = { TOKEN = \"sekrit\" }\ninherit_env = false")).expect("parses");
    let job = c.job("options_chain").expect("job");
    assert_eq!(job.env.keys(), vec!["TOKEN"]);
    assert!(!job.env.inherit);
    assert!(!format!("{c:?}").contains("sekrit"));
    // In-process runs share the daemon's environment: refused.
    let e = parse(
        &with("env = { TOKEN = \"sekrit\" }")
            .replace("executor = \"subprocess\"", "executor = \"pyo3\""),
    )
    .unwrap_err();
    assert!(
        e.contains("executor `pyo3`") && e.contains("[jobs.options_chain]"),
        "{e}"
    );
}

#[test]
fn sslmode_verify_modes_are_read_as_require_with_our_verification() {
    use super::cluster::{Tls, split_sslmode};
    let rows = [
        (
            "host=db sslmode=verify-full",
            "host=db sslmode=require",
            Some(Tls::VerifyFull),
        ),
        (
            "postgresql://h@db/x?sslmode=verify-ca",
            "postgresql://h@db/x?sslmode=require",
            Some(Tls::VerifyCa),
        ),
        ("host=db sslmode=require", "host=db sslmode=require", None),
        ("host=db", "host=db", None),
    ];
    for (given, plain, tls) in rows {
        assert_eq!(split_sslmode(given), (plain.to_string(), tls), "{given}");
    }
    let err = parse(&format!(
        "{GOOD}\n[cluster]\ndatabase = \"host=db dbname=hedge sslmode=verify-full\"\nnode = \"a\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("need `ca_file`"), "{err}");
    let c = parse(&format!(
        "{GOOD}\n[cluster]\ndatabase = \"host=db dbname=hedge sslmode=verify-full\"\nnode = \"a\"\nca_file = \"ca.pem\"\n"
    ))
    .unwrap();
    let cl = c.cluster.as_ref().unwrap();
    assert_eq!(cl.tls, Tls::VerifyFull);
    assert!(cl.ca_file.as_ref().unwrap().ends_with("ca.pem"));
}
