//! Which config file a command reads: `--config`, `HEDGE_SCHEDULER_CONFIG`, then the first that
//! exists of `./config/hedge-scheduler.toml`, `$XDG_CONFIG_HOME/hedge-scheduler/hedge-scheduler.toml`
//! (`~/.config/…`) and `/etc/hedge-scheduler/hedge-scheduler.toml`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The environment variable that names the config file when `--config` does not.
pub const ENV: &str = "HEDGE_SCHEDULER_CONFIG";

/// How the config file was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    Searched,
}

/// The config file a command reads, and how it was chosen.
#[derive(Debug, Clone)]
pub struct Located {
    pub path: PathBuf,
    pub source: Source,
}

impl Located {
    /// Words for an error about reading it: how it was chosen.
    pub fn origin(&self) -> &'static str {
        match self.source {
            Source::Flag => "given by --config",
            Source::Env => "named by HEDGE_SCHEDULER_CONFIG",
            Source::Searched => "found in the search order",
        }
    }
}

/// The places looked at when neither `--config` nor `HEDGE_SCHEDULER_CONFIG` names a file.
pub fn search_order(xdg_config_home: Option<&Path>, home: Option<&Path>) -> Vec<PathBuf> {
    let mut places = vec![Path::new(".").join(super::DEFAULT_CONFIG)];
    match (xdg_config_home, home) {
        (Some(x), _) if x.is_absolute() => {
            places.push(x.join("hedge-scheduler/hedge-scheduler.toml"))
        }
        (_, Some(h)) if h.is_absolute() => {
            places.push(h.join(".config/hedge-scheduler/hedge-scheduler.toml"))
        }
        _ => {}
    }
    places.push(PathBuf::from("/etc/hedge-scheduler/hedge-scheduler.toml"));
    places
}

/// The config file to read; `None` when nothing names one and none of the places holds one.
pub fn find(flag: Option<&Path>) -> Option<Located> {
    if let Some(path) = flag {
        return Some(Located {
            path: path.to_path_buf(),
            source: Source::Flag,
        });
    }
    if let Some(path) = std::env::var_os(ENV).filter(|v| !v.is_empty()) {
        return Some(Located {
            path: PathBuf::from(path),
            source: Source::Env,
        });
    }
    let var = |n: &str| {
        std::env::var_os(n)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    search_order(var("XDG_CONFIG_HOME").as_deref(), var("HOME").as_deref())
        .into_iter()
        .find(|p| p.is_file())
        .map(|path| Located {
            path,
            source: Source::Searched,
        })
}

/// Why a config found by searching (not named by the user) must not be read: it, or its folder,
/// may be changed by someone other than us or root (a `./config` in a shared folder, say).
fn unsafe_found(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    for (what, p) in [("it", path), ("its folder", folder)] {
        let Ok(m) = std::fs::metadata(p) else {
            continue;
        };
        // Group-writable is common (user-private groups, umask 002): only "others" counts.
        if m.mode() & 0o002 != 0 {
            return Some(format!(
                "{what} may be written by any user (mode {:o})",
                m.mode() & 0o7777
            ));
        }
        if m.uid() != 0 && m.uid() != crate::private::euid() {
            return Some(format!("{what} belongs to user {}", m.uid()));
        }
    }
    None
}

/// [`find`], or the error that names every place looked at.
pub fn locate(flag: Option<&Path>) -> Result<Located> {
    let found = find(flag);
    if let Some(at) = found.as_ref().filter(|at| at.source == Source::Searched)
        && let Some(why) = unsafe_found(&at.path)
    {
        return Err(Error::Usage(format!(
            "not reading `{}`, found in the search order: {why}, and a config says what runs; name it with --config if it is meant",
            at.path.display()
        )));
    }
    found.ok_or_else(|| {
        let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty()).map(PathBuf::from);
        let places = search_order(var("XDG_CONFIG_HOME").as_deref(), var("HOME").as_deref())
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Error::Usage(format!(
            "no config file: neither --config nor {ENV} names one, and none of these exists: {places}"
        ))
    })
}

/// The log folder a config names, read leniently (for `status` and `stop` when the config no
/// longer loads): `scheduler.log_dir` if the file parses as TOML, else the first `log_dir = "…"`
/// line, else the default; relative to the config's folder. `None` when the file cannot be read.
pub fn log_dir_only(path: &Path) -> Option<PathBuf> {
    let source = std::fs::read_to_string(path).ok()?;
    let written = match source.parse::<toml::Table>() {
        Ok(t) => t
            .get("scheduler")
            .and_then(|s| s.get("log_dir"))
            .and_then(|d| d.as_str())
            .map(str::to_string),
        Err(_) => source.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == "log_dir").then(|| {
                let value = value.split('#').next().unwrap_or("").trim();
                value.trim_matches(|c| c == '"' || c == '\'').to_string()
            })
        }),
    };
    let base = super::absolute(path);
    let base = base.parent().unwrap_or(Path::new("/"));
    Some(super::normalize(
        &base.join(written.as_deref().unwrap_or(super::DEFAULT_LOG_DIR)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_order_is_the_project_then_the_user_then_the_system() {
        let table: &[(Option<&str>, Option<&str>, &[&str])] = &[
            (
                Some("/x"),
                Some("/home/q"),
                &[
                    "./config/hedge-scheduler.toml",
                    "/x/hedge-scheduler/hedge-scheduler.toml",
                    "/etc/hedge-scheduler/hedge-scheduler.toml",
                ],
            ),
            (
                None,
                Some("/home/q"),
                &[
                    "./config/hedge-scheduler.toml",
                    "/home/q/.config/hedge-scheduler/hedge-scheduler.toml",
                    "/etc/hedge-scheduler/hedge-scheduler.toml",
                ],
            ),
            // A relative XDG_CONFIG_HOME is to be ignored (the XDG spec): HOME's default instead.
            (
                Some("rel"),
                Some("/home/q"),
                &[
                    "./config/hedge-scheduler.toml",
                    "/home/q/.config/hedge-scheduler/hedge-scheduler.toml",
                    "/etc/hedge-scheduler/hedge-scheduler.toml",
                ],
            ),
            (
                None,
                None,
                &[
                    "./config/hedge-scheduler.toml",
                    "/etc/hedge-scheduler/hedge-scheduler.toml",
                ],
            ),
        ];
        for (xdg, home, want) in table {
            let got = search_order(xdg.map(Path::new), home.map(Path::new));
            let want: Vec<PathBuf> = want.iter().map(PathBuf::from).collect();
            assert_eq!(got, want, "XDG_CONFIG_HOME={xdg:?} HOME={home:?}");
        }
    }

    #[test]
    fn a_broken_config_still_names_its_log_folder() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = dir.path().join("conf/hs.toml");
        std::fs::create_dir_all(cfg.parent().expect("parent")).expect("mkdir");
        let table: &[(&str, &str)] = &[
            (
                "[scheduler]\nlog_dir = \"mylogs\"\n[jobs.x]\nschedule = 5\n",
                "conf/mylogs",
            ),
            (
                "[scheduler\nlog_dir = \"../elsewhere\"  # comment\n",
                "elsewhere",
            ),
            ("[scheduler]\nexchange = \"XNSE\"\n", "logs"),
        ];
        for (text, want) in table {
            std::fs::write(&cfg, text).expect("write");
            assert_eq!(log_dir_only(&cfg), Some(dir.path().join(want)), "{text}");
        }
        assert_eq!(log_dir_only(&dir.path().join("missing.toml")), None);
    }
}
