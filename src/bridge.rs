//! The Python half of hedge-scheduler (`hedge_bridge`) travels inside the binary. On first use it
//! is written to a folder named for this build (`bridge-<version>-<digest>`) in the user's cache,
//! and that folder goes first on every job's Python path, so the bridge a job imports is always the
//! one this binary speaks to, wherever the binary was installed and whatever `python.path` says.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The bridge's files, as built into this binary.
const FILES: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../python_bridge/hedge_bridge/__init__.py"),
    ),
    (
        "__main__.py",
        include_str!("../python_bridge/hedge_bridge/__main__.py"),
    ),
    (
        "embedded.py",
        include_str!("../python_bridge/hedge_bridge/embedded.py"),
    ),
    (
        "forkserver.py",
        include_str!("../python_bridge/hedge_bridge/forkserver.py"),
    ),
    (
        "testing.py",
        include_str!("../python_bridge/hedge_bridge/testing.py"),
    ),
    (
        "py.typed",
        include_str!("../python_bridge/hedge_bridge/py.typed"),
    ),
];

static READY: OnceLock<PathBuf> = OnceLock::new();

/// The folder that holds `hedge_bridge/`, once [`ensure`] has written it; written again if it
/// went missing since (a cache cleaned under a running daemon).
pub fn dir() -> Option<&'static Path> {
    let dir = READY.get()?;
    if !dir.join("hedge_bridge/__init__.py").is_file()
        && let Some(base) = dir.parent()
        && let Err(e) = materialise(base)
    {
        tracing::warn!(
            "cannot write the Python bridge again to `{}`: {e}",
            dir.display()
        );
    }
    Some(dir)
}

/// Where the bridge may be written, in order: systemd's `CACHE_DIRECTORY`,
/// `$XDG_CACHE_HOME/hedge-scheduler`, `~/.cache/hedge-scheduler`, then the log folder.
pub fn bases(log_dir: &Path) -> Vec<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let mut out = Vec::new();
    if let Some(dir) = var("CACHE_DIRECTORY") {
        // systemd may hand several, colon-separated: the first is ours.
        let first = dir.to_string_lossy().split(':').next().map(PathBuf::from);
        out.push(first.unwrap_or(dir));
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        out.push(dir.join("hedge-scheduler"));
    }
    if let Some(home) = var("HOME") {
        out.push(home.join(".cache/hedge-scheduler"));
    }
    out.push(log_dir.to_path_buf());
    out
}

/// The name of this build's bridge folder: the crate's version and a digest of the files.
fn folder_name() -> String {
    // FNV-1a, 64 bits: a name, not a defence (the files are compared byte for byte on use).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, text) in FILES {
        for b in name.bytes().chain([0]).chain(text.bytes()).chain([0]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("bridge-{}-{hash:016x}", env!("CARGO_PKG_VERSION"))
}

/// Writes the bridge if its folder is missing or differs from this binary's, and returns the
/// folder to put on the Python path. Called once per process, before any Python starts.
pub fn ensure(log_dir: &Path) -> crate::error::Result<&'static Path> {
    if let Some(dir) = READY.get() {
        return Ok(dir);
    }
    // The first place that works: a home that cannot be written (ProtectHome=, a read-only
    // home) or a folder others could swap files in is passed over.
    let mut why = Vec::new();
    for base in bases(log_dir) {
        let placed = crate::private::create_dir(&base).and_then(|()| {
            match crate::log_dir::unsafe_log_dir(&base) {
                Some(unsafe_) => Err(io::Error::other(unsafe_)),
                None => materialise(&base),
            }
        });
        match placed {
            Ok(dir) => return Ok(READY.get_or_init(|| dir)),
            Err(e) => why.push(format!("`{}`: {e}", base.display())),
        }
    }
    Err(crate::error::Error::Unwritable(format!(
        "cannot write the Python bridge (hedge_bridge) anywhere: {}; set XDG_CACHE_HOME to a folder of this user's",
        why.join("; ")
    )))
}

fn materialise(base: &Path) -> io::Result<PathBuf> {
    crate::private::create_dir(base)?;
    let dir = base.join(folder_name());
    if intact(&dir) {
        return Ok(dir);
    }
    // A fresh private folder of our own (never a shared name), filled, then renamed into place.
    let tmp = base.join(format!(
        ".{}.{}.{}",
        folder_name(),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    std::fs::DirBuilder::new()
        .mode(crate::private::DIR_MODE)
        .create(&tmp)?;
    let filled = (|| {
        let package = tmp.join("hedge_bridge");
        std::fs::DirBuilder::new()
            .mode(crate::private::DIR_MODE)
            .create(&package)?;
        for (name, text) in FILES {
            use std::io::Write;
            crate::private::open(&package.join(name), crate::private::Open::CreateNew)?
                .write_all(text.as_bytes())?;
        }
        Ok::<(), io::Error>(())
    })();
    let placed = filled.and_then(|()| {
        if std::fs::rename(&tmp, &dir).is_ok() {
            return Ok(());
        }
        // Another start placed it meanwhile (then it is intact), or a damaged or planted one is
        // there: that one goes (a link is removed, never followed), ours takes its place.
        if intact(&dir) {
            return Ok(());
        }
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&dir)?,
            Ok(_) => std::fs::remove_file(&dir)?,
            Err(_) => {}
        }
        std::fs::rename(&tmp, &dir)
    });
    let _ = std::fs::remove_dir_all(&tmp);
    placed?;
    if intact(&dir) {
        Ok(dir)
    } else {
        Err(io::Error::other(format!(
            "`{}` does not hold this build's bridge after writing it",
            dir.display()
        )))
    }
}

/// Whether `dir` is a real folder of ours holding exactly this build's files.
fn intact(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ours = |p: &Path| {
        std::fs::symlink_metadata(p).is_ok_and(|m| {
            !m.file_type().is_symlink()
                && m.uid() == crate::private::euid()
                && m.mode() & 0o022 == 0
        })
    };
    let package = dir.join("hedge_bridge");
    ours(dir)
        && ours(&package)
        && FILES.iter().all(|(name, text)| {
            let file = package.join(name);
            ours(&file)
                && crate::private::open(&file, crate::private::Open::Read)
                    .and_then(|mut f| {
                        let mut got = Vec::new();
                        std::io::Read::read_to_end(&mut f, &mut got).map(|_| got)
                    })
                    .is_ok_and(|got| got == text.as_bytes())
        })
}

use std::os::unix::fs::DirBuilderExt;

/// Every job's Python path: the bridge this binary carries (written on first use), then
/// `[python] path`.
pub fn search_path(python: &crate::config::Python) -> Vec<std::path::PathBuf> {
    dir()
        .map(std::path::Path::to_path_buf)
        .into_iter()
        .chain(python.path.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_is_written_once_and_a_damaged_or_planted_copy_is_replaced() {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().join("cache");
        let dir = materialise(&base).expect("written");
        assert!(intact(&dir));
        let init = dir.join("hedge_bridge/__init__.py");
        let before = std::fs::metadata(&init).expect("init").modified().ok();
        // Again: left as it is.
        assert_eq!(materialise(&base).expect("again"), dir);
        assert_eq!(
            std::fs::metadata(&init).expect("init").modified().ok(),
            before
        );
        // Damaged: rewritten.
        std::fs::write(&init, "raise SystemExit('damaged')").expect("damage");
        materialise(&base).expect("repaired");
        assert!(intact(&dir));
        // A link planted in its place: replaced by a folder, the link's target untouched.
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("elsewhere");
        std::fs::remove_dir_all(&dir).expect("rm");
        std::os::unix::fs::symlink(&elsewhere, &dir).expect("link");
        materialise(&base).expect("replaced");
        assert!(
            !std::fs::symlink_metadata(&dir)
                .expect("dir")
                .file_type()
                .is_symlink()
        );
        assert!(intact(&dir));
        assert_eq!(std::fs::read_dir(&elsewhere).expect("ls").count(), 0);
        // No temporary folder left behind.
        let names: Vec<String> = std::fs::read_dir(&base)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![folder_name()]);
    }
}
