"""``python -m hedge_bridge``: one run of one job in a short-lived process.

The scheduler passes the run context as JSON in ``HEDGE_CONTEXT`` (with the entry point under
``entry``) and a path in ``HEDGE_RESULT_FILE`` where the outcome is written as JSON: a name of
the run's own in the scheduler's private runtime folder, created exclusively and never through a
symbolic link. The process exits 0 on success, the job's code for ``sys.exit(n)``, and 1 when
the job raised.
"""

from __future__ import annotations

import json
import os
import sys
import time

from hedge_bridge import call, context_from_json


def _write_result(path: str, outcome: dict) -> None:
    """Writes the outcome beside ``path`` in a new file (``O_EXCL``, ``O_NOFOLLOW``, 0600), then
    renames it into place: the reader sees all of it or nothing."""
    folder, name = os.path.split(path)
    # The folder is opened once, never through a link, and everything happens inside it.
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        tmp = name + ".tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(outcome, f)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def main() -> int:
    raw = os.environ.get("HEDGE_CONTEXT")
    if not raw:
        print("hedge_bridge: HEDGE_CONTEXT is not set; run jobs through hedge-scheduler", file=sys.stderr)
        return 2
    return run(raw, os.environ.get("HEDGE_RESULT_FILE"))


def run(raw: str, result_file: str | None) -> int:
    """One run from its context (JSON): calls the job, writes the outcome to ``result_file`` and
    returns the process's exit code. The fork server's children come here too."""
    context = json.loads(raw)
    entry = context["entry"]
    ctx = context_from_json(raw)
    outcome = call(entry, ctx)
    outcome["finished_at"] = time.time()
    try:
        # The process's own account (a fork child's starts at the fork): peak memory and CPU,
        # its waited-for children's included, exact however short the run.
        import resource

        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        outcome["rusage"] = {
            "maxrss_kib": max(me.ru_maxrss, kids.ru_maxrss),
            "cpu_ms": round((me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime) * 1000),
        }
    except (ImportError, OSError):
        pass
    # Enough to record the run from this file alone, should the scheduler lose its row.
    outcome["run"] = {
        k: context.get(k) for k in ("job", "run_uid", "scheduled_at", "trigger", "attempt", "owner")
    }
    if outcome["status"] == "error":
        sys.stderr.write(outcome["traceback"])
    if result_file:
        try:
            _write_result(result_file, outcome)
        except OSError as exc:
            # A full disk, say: the exit code still tells the scheduler how the job went.
            print(f"hedge_bridge: cannot write the result ({exc}); reporting by exit code", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    if outcome["status"] == "ok":
        return 0
    if outcome["status"] == "exit":
        return int(outcome["exit_code"])
    return 1


if __name__ == "__main__":
    sys.exit(main())
