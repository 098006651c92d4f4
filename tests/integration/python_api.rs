//! The Python side as quants use it: the typed run context, `hedge_bridge.testing.run_job`, an
//! editable install, DataFrame results, and shipped jobs that tell the truth about the market.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::util::*;

/// Runs `script` with the real interpreter and the checkout's bridge and jobs on its path; its
/// last stdout line is JSON.
fn python_json(dir: &Path, script: &str) -> Value {
    let file = dir.join("script.py");
    std::fs::write(&file, script).unwrap();
    let out = Command::new("python3")
        .arg(&file)
        .current_dir(dir)
        .env("PYTHONPATH", repo().join("python_bridge"))
        .env("HEDGE_SCHEDULER_BIN", BIN)
        .env_remove("HEDGE_SCHEDULER_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn the_shipped_market_has_no_arbitrage_over_1000_snapshots_and_open_interest_moves_under_10_percent()
 {
    let out = Command::new("python3")
        .arg(repo().join("tests/python/check_market.py"))
        .arg(repo().join("python_bridge"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["snapshots"], 1000, "{v}");
    assert!(v["oi_moves"].as_u64().unwrap() > 30_000, "{v}");
    assert!(v["largest_oi_move"].as_f64().unwrap() < 0.10, "{v}");
}

#[test]
fn run_job_runs_the_shipped_jobs_and_intraday_writes_no_bars_on_a_holiday_and_the_muhurat_minutes()
{
    let dir = tempfile::tempdir().unwrap();
    let config = repo().join("config/hedge-scheduler.toml");
    let script = format!(
        r#"
import json, sqlite3
from hedge_bridge.testing import run_job
CONFIG = {config:?}
DB = "market.sqlite3"
out = {{}}
def go(entry, at):
    o = run_job(entry, at=at, config=CONFIG, args={{"db": DB}})
    assert o.ok, o.traceback
    return o
# A holiday (2025-10-22, the day after Diwali's Muhurat session): no bars; a chain priced at the
# last close, labelled closed.
o = go("hedge_jobs.intraday:run", "2025-10-22T09:30:00+05:30")
out["holiday_bars"] = o.result["bars_written"]
out["holiday_session"] = o.result["session"]
o = go("hedge_jobs.options_chain:run", "2025-10-22T09:30:00+05:30")
out["holiday_chain"] = [o.result["market"], o.result["priced_at"]]
# The Muhurat session, 13:45-14:45: its minutes, in 15-minute bars.
o = go("hedge_jobs.intraday:run", "2025-10-21T14:45:00+05:30")
out["muhurat_session"] = [o.context.session.open.isoformat(), o.context.session.close.isoformat(), o.context.session.kind]
db = sqlite3.connect(DB)
out["muhurat_bars"] = [r[0] for r in db.execute(
    "SELECT bar_start FROM intraday_bars WHERE index_name = 'NIFTY' AND bar_start LIKE '2025-10-21%' ORDER BY bar_start")]
# A regular Monday: all three jobs, and what their context says.
for job in ("options_chain", "intraday", "options_analysis"):
    o = go("hedge_jobs.%s:run" % job, "2026-11-30T09:30:00+05:30")
    c = o.context
    out[job] = {{
        "session": [c.session.open.isoformat(), c.session.close.isoformat(), c.session.kind],
        "interval_start": c.interval_start.isoformat(),
        "deadline": c.deadline.isoformat(),
        "result": o.result,
    }}
try:
    c.job = "other"
    out["frozen"] = False
except AttributeError:
    out["frozen"] = True
print(json.dumps(out))
"#
    );
    let v = python_json(dir.path(), &script);
    assert_eq!(
        v["holiday_bars"],
        serde_json::json!({"NIFTY": 0, "BANKNIFTY": 0}),
        "{v}"
    );
    assert!(v["holiday_session"].is_null(), "{v}");
    assert_eq!(
        v["holiday_chain"],
        serde_json::json!(["closed", "2025-10-21T14:45:00+05:30"]),
        "{v}"
    );
    assert_eq!(
        v["muhurat_session"],
        serde_json::json!([
            "2025-10-21T13:45:00+05:30",
            "2025-10-21T14:45:00+05:30",
            "special"
        ]),
        "{v}"
    );
    assert_eq!(
        v["muhurat_bars"],
        serde_json::json!([
            "2025-10-21T13:45:00+05:30",
            "2025-10-21T14:00:00+05:30",
            "2025-10-21T14:15:00+05:30",
            "2025-10-21T14:30:00+05:30"
        ]),
        "{v}"
    );
    let intraday = &v["intraday"];
    assert_eq!(
        intraday["session"],
        serde_json::json!([
            "2026-11-30T09:15:00+05:30",
            "2026-11-30T15:30:00+05:30",
            "regular"
        ]),
        "{v}"
    );
    assert_eq!(
        intraday["interval_start"], "2026-11-30T09:15:00+05:30",
        "{v}"
    );
    assert_eq!(intraday["deadline"], "2026-11-30T09:35:00+05:30", "{v}");
    assert_eq!(intraday["result"]["bars_written"]["NIFTY"], 1, "{v}");
    // The chain job fires every 3 minutes: its interval is the 3 minutes before.
    assert_eq!(
        v["options_chain"]["interval_start"], "2026-11-30T09:27:00+05:30",
        "{v}"
    );
    assert_eq!(v["options_chain"]["result"]["market"], "open", "{v}");
    assert_eq!(v["options_analysis"]["result"]["market"], "open", "{v}");
    assert_eq!(v["frozen"], true, "{v}");
}

#[test]
fn pip_install_e_gives_the_typed_api_and_a_dataframe_result_is_stored_as_its_summary() {
    // The wheels `.ci/run` downloads (setuptools to build, pandas for the frame): the test
    // itself reaches no network.
    let wheels = repo().join("target/pywheels");
    if !wheels.join(".complete").exists() {
        crate::skip::skip(
            "the wheels it installs are not in target/pywheels",
            "python3 -m pip download --dest target/pywheels 'setuptools>=70.1' pandas && touch target/pywheels/.complete",
        );
        return;
    }
    let p = Project::new();
    // A copy of the checkout's python_bridge: an editable install writes its metadata beside it.
    let source = p.path().join("python_bridge");
    crate::util::copy_tree(&repo().join("python_bridge"), &source);
    let venv = p.path().join("venv");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(made.success());
    let pip = Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--no-index", "--find-links"])
        .arg(&wheels)
        .arg("-e")
        .arg(&source)
        .arg("pandas")
        .output()
        .unwrap();
    assert!(pip.status.success(), "{}", text(&pip));
    // From anywhere: the editable install, typed (py.typed ships), with the test runner.
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import importlib.resources as r, hedge_bridge, hedge_bridge.testing, json; \
             print(json.dumps({'typed': r.files('hedge_bridge').joinpath('py.typed').is_file(), \
             'file': hedge_bridge.__file__}))",
        ])
        .current_dir(p.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["typed"], true, "{v}");
    assert!(
        v["file"]
            .as_str()
            .unwrap()
            .starts_with(&source.display().to_string()),
        "{v}"
    );

    // A job returning a 1000-row DataFrame, run by the daemon's fork executor in that venv.
    p.config(
        "",
        "[jobs.frame]\nentry = \"fixture_jobs:frame\"\nschedule = \"0 0 0 1 1 *\"\nexecutor = \"fork\"\nargs = { rows = 1000 }\n",
    );
    p.unset("python.executable").set("python.venv", "venv");
    let out = p.run(&["run-once", "frame", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let row: Value = serde_json::from_slice(&out.stdout).unwrap();
    let result = &row["result"];
    assert_eq!(result["type"], "DataFrame", "{row}");
    assert_eq!(result["shape"], serde_json::json!([1000, 3]), "{row}");
    assert_eq!(
        result["columns"],
        serde_json::json!(["strike", "oi", "side"]),
        "{row}"
    );
    assert_eq!(result["head"].as_array().unwrap().len(), 5, "{row}");
    assert_eq!(
        result["head"][1],
        serde_json::json!({"strike": 1, "oi": 10, "side": "PE"}),
        "{row}"
    );
    assert!(
        result.to_string().len() < 1024,
        "a summary, not a dump: {result}"
    );
}
