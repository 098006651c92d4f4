//! Durations, sizes, paths, entries and TOML errors, as the config writes them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::ConfigError;

use super::*;

/// A TOML value as JSON for Python; dates and times become their TOML text ("2026-12-31").
pub(super) fn toml_to_json(v: toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            J::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// Turns a TOML/serde error into one line, with the table it happened in.
pub(super) fn toml_error(file: &Path, source: &str, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let table = enclosing_table(source, span.start);
            // Name the key the error is about (a wrong type, a duplicate), from its line.
            let key = key_at(source, span.start);
            let message = match (&key, &table) {
                (Some(k), Some(t)) if !message.contains(&format!("`{k}`")) => {
                    format!("`{t}.{k}`: {message}")
                }
                (Some(k), None) if !message.contains(&format!("`{k}`")) => {
                    format!("`{k}`: {message}")
                }
                _ => message,
            };
            let message = match table {
                Some(t)
                    if !message.contains(&format!("[{t}]"))
                        && !message.contains(&format!("`{t}.")) =>
                {
                    format!("{message} in [{t}]")
                }
                _ => message,
            };
            ConfigError::at(file, source, span.start, message)
        }
        None => ConfigError::new(file, message),
    }
}

/// The key of the `key = value` line holding byte `offset`, if it is one.
pub(super) fn key_at(source: &str, offset: usize) -> Option<String> {
    let start = source.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = source.get(start..)?.lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    plain.then(|| key.to_string())
}

/// The `[table]` header in force at byte `offset` (the header itself when the offset is on it).
pub(super) fn enclosing_table(source: &str, offset: usize) -> Option<String> {
    let line_end = source
        .get(offset..)
        .and_then(|rest| rest.find('\n'))
        .map_or(source.len(), |i| offset + i);
    let before = source.get(..line_end)?;
    before.lines().rev().find_map(|line| {
        let line = line.trim();
        let inner = line.strip_prefix('[')?.split(']').next()?;
        let inner = inner.trim_start_matches('[').trim();
        (!inner.is_empty()).then(|| inner.to_string())
    })
}

pub(super) fn parse_entry(s: &str) -> Option<Entry> {
    if s.ends_with(".py") && !s.contains(':') {
        return Some(Entry::Script(PathBuf::from(s)));
    }
    let (module, function) = s.split_once(':')?;
    let ident = |p: &str| {
        !p.is_empty()
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| c.is_alphanumeric() || c == '_')
                    && !part.starts_with(|c: char| c.is_ascii_digit())
            })
    };
    (ident(module) && ident(function) && !function.contains('.')).then(|| Entry::Function {
        module: module.to_string(),
        function: function.to_string(),
    })
}

/// Parses "512MiB", "2GiB", "1.5GB", "800000000" (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().map_err(|_| "no number".to_string())?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown unit `{other}`")),
    };
    let bytes = number * factor;
    if !(1.0..1e15).contains(&bytes) {
        return Err("out of range".to_string());
    }
    Ok(bytes as u64)
}

/// Parses "150s", "2m", "1h30m", "500ms".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero".to_string());
    }
    if d > Duration::from_secs(10 * 366 * 86_400) {
        return Err("too long (at most 10 years)".to_string());
    }
    Ok(d)
}

pub(super) fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        normalize(path)
    } else {
        std::env::current_dir()
            .map(|cwd| normalize(&cwd.join(path)))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Removes `.` and `..` components lexically, so paths print the way users expect.
pub(super) fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}
