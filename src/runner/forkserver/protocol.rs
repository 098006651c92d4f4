//! The fork server's messages: what it says (`Reply`, read from its JSON), and what a run hears
//! of it (`Msg`).

use std::path::PathBuf;
use std::process::ExitStatus;

use serde::Deserialize;

/// What the server says about one run.
#[derive(Debug)]
pub(crate) enum Msg {
    /// The child is forked.
    Forked(u32),
    /// The child ended (its status), and is a zombie until released.
    Exited(Option<ExitStatus>),
    /// The server would not fork.
    Refused(String),
    /// The server is gone (why).
    Gone(String),
}

/// What the server says (one JSON object per message; see `forkserver.py`). Untagged: each
/// kind is told by the key only it has, tried in this order.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Reply {
    /// `{"forked": uid, "pid"}`: the run's child is forked.
    Forked { forked: String, pid: u32 },
    /// `{"exit": uid, "pid", "code" | "signal", "core"}`: a child ended.
    Exited {
        exit: String,
        code: Option<i32>,
        signal: Option<i32>,
        #[serde(default)]
        core: bool,
    },
    /// `{"refused": uid, "error"}`: no child for that run.
    Refused {
        refused: String,
        #[serde(default)]
        error: String,
    },
    /// `{"ready": true, "pid", "python", "modules"}`, once: the preloads are in.
    Ready {
        ready: bool,
        python: Option<String>,
        #[serde(default)]
        modules: Vec<PathBuf>,
    },
    /// `{"error", "kind"}`, once instead of ready: the preloads failed or started a thread.
    StartFailed { error: String, kind: Option<String> },
    /// `{"pong": true, "children"}`.
    Pong {
        #[allow(dead_code)] // its presence is the message
        pong: bool,
    },
    /// `{"spare_gone": true}`: the spare child died before it got a run.
    SpareGone {
        #[allow(dead_code)] // its presence is the message
        spare_gone: bool,
    },
}

/// A child's exit status from the server's `code` / `signal` / `core`.
pub(super) fn exit_status(
    code: Option<i32>,
    signal: Option<i32>,
    core: bool,
) -> Option<ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    match (code, signal) {
        (Some(code), _) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
        (None, Some(sig)) => Some(ExitStatus::from_raw(
            (sig & 0x7f) | if core { 0x80 } else { 0 },
        )),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each message `forkserver.py` sends is read as its own kind (the untagged order matters:
    /// a refusal carries `error` too, and an exit's `pid` must not make it a fork).
    #[test]
    fn every_server_message_reads_as_its_kind() {
        let read = |json: &str| serde_json::from_str::<Reply>(json).unwrap();
        assert!(matches!(
            read(r#"{"forked": "u1", "pid": 42}"#),
            Reply::Forked { forked, pid: 42 } if forked == "u1"
        ));
        let exited = read(r#"{"exit": "u1", "pid": 42, "signal": 9, "core": false}"#);
        let Reply::Exited {
            exit,
            code,
            signal,
            core,
        } = exited
        else {
            panic!("{exited:?}")
        };
        assert_eq!(
            (exit.as_str(), code, signal, core),
            ("u1", None, Some(9), false)
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            exit_status(None, Some(9), false).and_then(|s| s.signal()),
            Some(9)
        );
        assert_eq!(
            exit_status(Some(3), None, false).and_then(|s| s.code()),
            Some(3)
        );
        assert!(matches!(
            read(r#"{"refused": "u1", "error": "fork failed: EAGAIN"}"#),
            Reply::Refused { refused, error } if refused == "u1" && error.contains("EAGAIN")
        ));
        assert!(matches!(
            read(r#"{"ready": true, "pid": 7, "python": "3.11.9", "modules": ["/a.py"], "native_threads": 1}"#),
            Reply::Ready { ready: true, python: Some(v), modules } if v == "3.11.9" && modules.len() == 1
        ));
        assert!(matches!(
            read(r#"{"error": "pandas started a thread", "kind": "threads"}"#),
            Reply::StartFailed { kind: Some(k), .. } if k == "threads"
        ));
        assert!(matches!(
            read(r#"{"pong": true, "children": 2}"#),
            Reply::Pong { .. }
        ));
        assert!(matches!(
            read(r#"{"spare_gone": true}"#),
            Reply::SpareGone { .. }
        ));
        assert!(serde_json::from_str::<Reply>(r#"{"hello": 1}"#).is_err());
    }
}
