//! Honest skips. A test whose tool is missing is never a silent pass: it says `SKIPPED` with the
//! reason and what to install, and the run ends with one line naming every skipped test. Under
//! `CI=true` a missing tool is a failure (CI installs them all: `.ci/run`).

use std::sync::Mutex;

/// The skipped tests, and what each needs.
static SKIPPED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
/// The test process (a forked child that exits runs the exit handlers too: it says nothing).
static OWNER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Whether this run is CI's (`CI=true`), where nothing may be skipped.
pub fn on_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The current test is skipped because `why`; `install` says what provides it. Fails under CI.
pub fn skip(why: &str, install: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    assert!(!on_ci(), "{test}: {why}, and CI must have it ({install})");
    eprintln!("SKIPPED {test}: {why} ({install})");
    let mut skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    if skipped.is_empty() {
        let _ = OWNER.set(std::process::id());
        unsafe extern "C" {
            fn atexit(f: extern "C" fn()) -> i32;
        }
        // SAFETY: registers a plain function to run at exit.
        unsafe {
            atexit(summary);
        }
    }
    skipped.push((test, install.to_string()));
}

/// At exit: one line naming the skipped tests and what to install (on stderr, which the test
/// harness does not capture).
extern "C" fn summary() {
    let skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    if skipped.is_empty() || OWNER.get() != Some(&std::process::id()) {
        return;
    }
    let mut tests: Vec<&str> = skipped.iter().map(|(t, _)| t.as_str()).collect();
    tests.sort_unstable();
    let mut needs: Vec<&str> = skipped.iter().map(|(_, i)| i.as_str()).collect();
    needs.sort_unstable();
    needs.dedup();
    eprintln!(
        "\nSKIPPED {} (they did not pass: they did not run): {}; to run them: {}",
        if tests.len() == 1 {
            "1 test".to_string()
        } else {
            format!("{} tests", tests.len())
        },
        tests.join(", "),
        needs.join("; ")
    );
}
