//! The old system's scripts: found by the script argument of a Python process (not a substring of
//! any argument, so an editor holding the file open is not one), then refused, warned about or
//! stopped, per `scheduler.legacy`. Only processes of the scheduler's own user count: another
//! user's process is reported, never refused nor stopped (anyone can name a process anything).

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

/// A running process of the old system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyProcess {
    pub pid: u32,
    pub script: String,
    /// Its owner (real user id).
    pub uid: u32,
}

impl LegacyProcess {
    /// Whether it runs as our own user: only then is it the old system we replace.
    pub fn ours(&self) -> bool {
        self.uid == crate::private::euid()
    }
}

impl std::fmt::Display for LegacyProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PID {} ({}", self.pid, self.script)?;
        if !self.ours() {
            write!(f, ", user {}", self.uid)?;
        }
        write!(f, ")")
    }
}

/// Splits what `find` found into ours (the old system) and other users' (reported only).
pub fn split(found: Vec<LegacyProcess>) -> (Vec<LegacyProcess>, Vec<LegacyProcess>) {
    found.into_iter().partition(LegacyProcess::ours)
}

/// `PID 1 (a.py), PID 2 (b.py)`.
pub fn list(procs: &[LegacyProcess]) -> String {
    procs
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Python processes whose script's file name is one of `scripts`.
pub fn find(scripts: &[String]) -> Vec<LegacyProcess> {
    let Ok(mut sys) = System::new() else {
        return Vec::new();
    };
    sys.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing()
            .without_tasks()
            .with_cmd(UpdateKind::Always),
    );
    let me = std::process::id();
    let mut found: Vec<LegacyProcess> = sys
        .processes()
        .iter()
        .filter(|(pid, _)| pid.as_u32() != me)
        .filter_map(|(pid, p)| {
            let script = python_script(p.cmd())?;
            let name = Path::new(script).file_name()?.to_str()?;
            let uid = std::fs::metadata(format!("/proc/{}", pid.as_u32()))
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
                .ok()?;
            scripts.iter().any(|s| s == name).then(|| LegacyProcess {
                pid: pid.as_u32(),
                script: script.to_string_lossy().into_owned(),
                uid,
            })
        })
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

/// The script a Python command line runs, if it runs one (not `-c`, `-m` or stdin).
pub fn python_script<S: AsRef<OsStr>>(cmd: &[S]) -> Option<&OsStr> {
    let program = Path::new(cmd.first()?.as_ref()).file_name()?.to_str()?;
    let is_python = program.starts_with("python")
        && program["python".len()..]
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == 'w');
    if !is_python {
        return None;
    }
    let mut args = cmd[1..].iter().map(|a| a.as_ref());
    while let Some(arg) = args.next() {
        let text = arg.to_str().unwrap_or("");
        match text {
            "-c" | "-m" | "-" => return None,
            // Options that take the next argument.
            "-W" | "-X" | "--check-hash-based-pycs" => {
                args.next();
            }
            t if t.starts_with('-') => {
                // Combined short flags may end in c or m: `-uc "code"`.
                if !t.starts_with("--")
                    && (t.ends_with('c') || t.ends_with('m'))
                    && !t.starts_with("-W")
                    && !t.starts_with("-X")
                {
                    return None;
                }
            }
            _ => return Some(arg),
        }
    }
    None
}

/// Ends the processes: SIGTERM, up to `grace`, then SIGKILL.
pub async fn stop(procs: &[LegacyProcess], grace: Duration) {
    let pids: Vec<i32> = procs
        .iter()
        .filter(|p| p.ours())
        .filter_map(|p| i32::try_from(p.pid).ok())
        .collect();
    crate::process::terminate(crate::process::Target::Pids(&pids), grace).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(cmd: &[&str]) -> Option<String> {
        python_script(cmd).map(|s| s.to_string_lossy().into_owned())
    }

    #[test]
    fn finds_the_script_argument_only() {
        assert_eq!(
            script(&["/usr/bin/python3", "start_options_collector_background.py"]).as_deref(),
            Some("start_options_collector_background.py")
        );
        assert_eq!(
            script(&[
                "python3.11",
                "-u",
                "-W",
                "ignore",
                "/srv/old/start_all_background_services.py",
                "--x"
            ])
            .as_deref(),
            Some("/srv/old/start_all_background_services.py")
        );
        assert_eq!(
            script(&["python", "-c", "print('start_all_background_services.py')"]),
            None
        );
        assert_eq!(
            script(&["python3", "-m", "start_all_background_services"]),
            None
        );
        assert_eq!(
            script(&["vim", "start_options_collector_background.py"]),
            None
        );
        assert_eq!(
            script(&["tail", "-f", "start_options_collector_background.py"]),
            None
        );
        assert_eq!(
            script(&["pythonista", "start_all_background_services.py"]),
            None
        );
    }
}
