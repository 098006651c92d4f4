//! A job's environment: `env = { KEY = "…" }`, `env_file = "…"` (per job, or `[python]` for every
//! job) and `inherit_env`. Values are secrets: they reach the job's process and nothing else (no
//! `Debug`, no summary, no log line carries them).

use std::ffi::OsString;
use std::path::Path;

/// A value from `env` or an env file. Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value itself: for the job's environment only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

/// What a job's process starts with besides what hedge-scheduler sets itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnv {
    /// The daemon's environment is passed on (`inherit_env = true`, the default); otherwise only
    /// [`KEPT`] is.
    pub inherit: bool,
    /// In order of precedence, the last of a name winning: `[python] env_file`, the job's
    /// `env_file`, the job's `env`.
    pub vars: Vec<(String, Secret)>,
}

impl Default for JobEnv {
    fn default() -> JobEnv {
        JobEnv {
            inherit: true,
            vars: Vec::new(),
        }
    }
}

impl JobEnv {
    /// The names set, each once, in order (for summaries: never the values).
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::new();
        for (k, _) in &self.vars {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
        keys
    }

    /// Whether the job's process gets just the daemon's environment.
    pub fn is_plain(&self) -> bool {
        self.inherit && self.vars.is_empty()
    }

    /// `self` with `more` after it (its values win).
    pub fn then(&self, more: Vec<(String, Secret)>) -> Vec<(String, Secret)> {
        let mut vars = self.vars.clone();
        vars.extend(more);
        vars
    }
}

/// What a job with `inherit_env = false` still gets of the daemon's environment (and every
/// `LC_*`): enough for a program to find its tools, its home, its language and time zone.
pub const KEPT: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
];

/// The part of the daemon's environment an `inherit_env = false` job keeps.
pub fn kept_environment() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| {
            k.to_str()
                .is_some_and(|k| KEPT.contains(&k) || k.starts_with("LC_"))
        })
        .collect()
}

/// Whether `key` is a portable variable name.
fn portable(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `key` may be set: a portable name, not one hedge-scheduler sets itself (quoted in
/// the error: a config's key is no secret).
pub fn check_key(key: &str) -> Result<(), String> {
    if !portable(key) {
        return Err(format!(
            "`{key}` is not a variable name (letters, digits and `_`, not starting with a digit)"
        ));
    }
    reserved(key)
}

/// Names hedge-scheduler sets itself for every run.
fn reserved(key: &str) -> Result<(), String> {
    if key.starts_with("HEDGE_") || matches!(key, "PYTHONPATH" | "PYTHONUNBUFFERED" | "VIRTUAL_ENV")
    {
        return Err(format!(
            "`{key}` is set by hedge-scheduler itself for every run (a venv: `python.venv`); use another name"
        ));
    }
    Ok(())
}

/// Reads an env file: `KEY=value` lines, `#` comments and blank lines, an optional `export `,
/// values optionally in single or double quotes. A file other users may read or write is
/// refused. Errors name the line, never its value.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, Secret)>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read env file `{}`: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("env file `{}` is not a file", path.display()));
    }
    // Others may not read it; nobody but its owner (us, or root) may change it.
    if meta.mode() & 0o027 != 0 {
        return Err(format!(
            "env file `{}` may be read by other users or written by its group (mode {:o}): it holds secrets; `chmod 600 {}` (or 640)",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        ));
    }
    if meta.uid() != 0 && meta.uid() != crate::private::euid() {
        return Err(format!(
            "env file `{}` belongs to user {}, who could change what the jobs run with; it must be ours or root's",
            path.display(),
            meta.uid()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read env file `{}`: {e}", path.display()))?;
    parse_env(&text)
        .map_err(|(line, why)| format!("env file `{}` line {line}: {why}", path.display()))
}

/// The `KEY=value` pairs of an env file's text; an error is (line, why), never quoting the value.
pub fn parse_env(text: &str) -> Result<Vec<(String, Secret)>, (usize, String)> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map_or(line, str::trim_start);
        let Some((key, value)) = line.split_once('=') else {
            return Err((i + 1, "expected KEY=value".to_string()));
        };
        let key = key.trim();
        // Never quoted: a stray line (a value's continuation, a pasted token) would be printed.
        if !portable(key) {
            return Err((
                i + 1,
                "the text before `=` is not a variable name (letters, digits and `_`, not starting with a digit)".to_string(),
            ));
        }
        reserved(key).map_err(|why| (i + 1, why))?;
        let value = value.trim();
        let value = match value.chars().next() {
            Some(q @ ('"' | '\'')) => {
                if value.len() < 2 || !value.ends_with(q) {
                    return Err((
                        i + 1,
                        format!("the value of `{key}` opens a quote it does not close"),
                    ));
                }
                &value[1..value.len() - 1]
            }
            _ => value,
        };
        vars.push((key.to_string(), Secret::new(value.to_string())));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_parse_like_systemds_and_errors_never_quote_a_value() {
        let ok = "# secrets\n\nTOKEN=abc=def\nexport QUOTED=\"a b\"\n  SINGLE = 'x y'  \nEMPTY=\n";
        let vars = parse_env(ok).expect("parses");
        let got: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        assert_eq!(
            got,
            vec![
                ("TOKEN", "abc=def"),
                ("QUOTED", "a b"),
                ("SINGLE", "x y"),
                ("EMPTY", "")
            ]
        );
        let table: &[(&str, usize, &str)] = &[
            ("TOKEN sekrit-value", 1, "expected KEY=value"),
            ("\n1BAD=sekrit-value", 2, "not a variable name"),
            ("sekrit+PART/x=y", 1, "not a variable name"),
            ("HEDGE_CONTEXT=sekrit-value", 1, "set by hedge-scheduler"),
            ("PYTHONPATH=sekrit-value", 1, "set by hedge-scheduler"),
            ("K=\"sekrit-value", 1, "does not close"),
        ];
        for (text, line, says) in table {
            let (at, why) = parse_env(text).expect_err(text);
            assert_eq!(at, *line, "{text}");
            assert!(why.contains(says), "{text}: {why}");
            assert!(!why.contains("sekrit"), "{why}");
        }
        assert_eq!(format!("{:?}", vars[0].1), "<hidden>");
    }
}
