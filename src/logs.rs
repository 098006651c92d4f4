//! A job's output: the lines of `logs/jobs/<job>.log` and its rotated files
//! (`<job>.log.YYYY-MM-DD`), each `<time> [run <id> <stream>] <text>`; read for `logs`, followed
//! live for `logs -f`, and shown on a run's page.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// One line of a job's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// When the scheduler read it (UTC, RFC 3339).
    pub at: String,
    pub run_id: i64,
    /// `stdout`, `stderr` or `hedge` (the scheduler's own note about the run).
    pub stream: String,
    pub text: String,
}

impl Line {
    /// Parses `<time> [run <id> <stream>] <text>`; `None` for anything else.
    pub fn parse(line: &str) -> Option<Line> {
        let (at, rest) = line.split_once(" [run ")?;
        let (head, text) = rest.split_once("] ")?;
        let (id, stream) = head.split_once(' ')?;
        Some(Line {
            at: at.to_string(),
            run_id: id.parse().ok()?,
            stream: stream.to_string(),
            text: text.to_string(),
        })
    }

    pub fn render(&self) -> String {
        format!(
            "{} [run {} {}] {}",
            self.at, self.run_id, self.stream, self.text
        )
    }
}

/// The job's current log file.
pub fn current(dir: &Path, job: &str) -> PathBuf {
    dir.join(format!("{job}.log"))
}

/// The job's log files, oldest first (rotated ones, then the current one if it exists).
pub fn files(dir: &Path, job: &str) -> Vec<PathBuf> {
    let prefix = format!("{job}.log.");
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name().to_str().is_some_and(|n| {
                        n.strip_prefix(&prefix).is_some_and(|day| {
                            chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok()
                        })
                    })
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    rotated.sort();
    let now = current(dir, job);
    if now.exists() {
        rotated.push(now);
    }
    rotated
}

/// Reads a log file without following a link where the file should be.
fn read(path: &Path) -> String {
    let mut text = Vec::new();
    if let Ok(mut f) = crate::private::open(path, crate::private::Open::Read) {
        let _ = f.read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The lines of `job` (of run `run` only, when given), oldest first, across rotated files; the
/// last `limit` of them when given.
pub fn lines(dir: &Path, job: &str, run: Option<i64>, limit: Option<usize>) -> Vec<Line> {
    snapshot(dir, job, run, limit).0
}

/// [`lines`], and how far the current file was read (complete lines only): where following
/// it starts, so no line is shown twice or lost in between.
pub fn snapshot(dir: &Path, job: &str, run: Option<i64>, limit: Option<usize>) -> (Vec<Line>, u64) {
    let mut out: Vec<Line> = Vec::new();
    let now = current(dir, job);
    let mut end = 0;
    for file in files(dir, job) {
        let mut text = read(&file);
        if file == now {
            // A line being written is left for the follower.
            let complete = text.rfind('\n').map_or(0, |i| i + 1);
            text.truncate(complete);
            end = complete as u64;
        }
        out.extend(
            text.lines()
                .filter_map(Line::parse)
                .filter(|l| run.is_none_or(|r| l.run_id == r)),
        );
    }
    if let Some(n) = limit {
        let skip = out.len().saturating_sub(n);
        out.drain(..skip);
    }
    (out, end)
}

/// Follows the job's current log from byte `from`: each complete new line is handed to `each`
/// (which returns `false` to stop); a rotation (the file replaced, or shortened) is followed into
/// the new file. `keep_going` is asked between polls.
pub fn follow(
    dir: &Path,
    job: &str,
    from: u64,
    mut each: impl FnMut(Line) -> bool,
    mut keep_going: impl FnMut() -> bool,
) {
    use std::os::unix::fs::MetadataExt;
    let path = current(dir, job);
    let identity = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let mut pos = from;
    let mut file_id = identity(&path);
    let mut partial = String::new();
    loop {
        let id = identity(&path);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if id != file_id || len < pos {
            // Rotated: what the old file got after our last read is lost to a rename race only
            // if written in the same instant; the new file is read from its start.
            file_id = id;
            pos = 0;
            partial.clear();
        }
        if len > pos
            && let Ok(mut f) = crate::private::open(&path, crate::private::Open::Read)
            && f.seek(SeekFrom::Start(pos)).is_ok()
        {
            let mut buf = Vec::new();
            if let Ok(n) = f.read_to_end(&mut buf) {
                pos += n as u64;
                partial.push_str(&String::from_utf8_lossy(&buf));
                while let Some(i) = partial.find('\n') {
                    let line: String = partial.drain(..=i).collect();
                    if let Some(l) = Line::parse(line.trim_end_matches('\n'))
                        && !each(l)
                    {
                        return;
                    }
                }
            }
        }
        if !keep_going() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_parses_and_renders_back() {
        let text = "2026-11-30T03:45:00.123Z [run 42 stdout] hello [world] 1";
        let line = Line::parse(text).expect("parses");
        assert_eq!(line.run_id, 42);
        assert_eq!(line.stream, "stdout");
        assert_eq!(line.text, "hello [world] 1");
        assert_eq!(line.render(), text);
        assert_eq!(Line::parse("no run here"), None);
    }

    #[test]
    fn lines_come_from_rotated_files_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w =
            |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
        w("j.log.2026-11-26", "t1 [run 1 stdout] a\n");
        w(
            "j.log.2026-11-27",
            "t2 [run 2 stdout] b\nt3 [run 2 stderr] c\n",
        );
        w("j.log", "t4 [run 3 stdout] d\n");
        w("j.log.bak", "t0 [run 9 stdout] not ours\n");
        let all: Vec<String> = lines(dir.path(), "j", None, None)
            .into_iter()
            .map(|l| l.text)
            .collect();
        assert_eq!(all, ["a", "b", "c", "d"]);
        let run2: Vec<String> = lines(dir.path(), "j", Some(2), None)
            .into_iter()
            .map(|l| l.text)
            .collect();
        assert_eq!(run2, ["b", "c"]);
        assert_eq!(lines(dir.path(), "j", None, Some(2)).len(), 2);
    }
}
