"""Run a job the way hedge-scheduler runs it, without the daemon: in a test, a notebook, a REPL.

    from hedge_bridge.testing import run_job

    out = run_job("hedge_jobs.intraday:run", at="2026-11-30T09:15:00+05:30",
                  args={"db": "/tmp/market.sqlite3"})
    assert out.ok, out.traceback
    print(out.result, out.context.session)

The run context comes from the ``hedge-scheduler`` binary itself (``hedge-scheduler context``:
the exchange calendar, the job's previous slot, its deadline, as the daemon computes them), from
the config it finds (``config=``, ``HEDGE_SCHEDULER_CONFIG``, ``./config/hedge-scheduler.toml``,
…). The job then runs in this process through the bridge's own run path (the one every fork and
subprocess run takes), so what it returns is stored as the history would store it. Its output
goes to this process's stdout and stderr.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile

from hedge_bridge import RunContext, context_from_json

__all__ = ["run_job", "JobOutcome"]


class JobOutcome:
    """How one run went: ``status`` ``"ok"``, ``"error"`` or ``"exit"``; ``result`` as the history
    stores it (JSON); ``error`` and ``traceback`` for a raise; ``exit_code`` as the process's would
    be; ``context`` the run context the job was given."""

    __slots__ = ("status", "result", "error", "traceback", "exit_code", "context")

    def __init__(self, outcome: dict, exit_code: int, context: RunContext) -> None:
        self.status: str = outcome["status"]
        self.result = outcome.get("result")
        self.error: str | None = outcome.get("error")
        self.traceback: str | None = outcome.get("traceback")
        self.exit_code: int = exit_code
        self.context: RunContext = context

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def __repr__(self) -> str:
        detail = "" if self.ok else f", error={self.error!r}"
        return f"JobOutcome(status={self.status!r}, exit_code={self.exit_code}{detail})"


def _binary(binary: str | None) -> str:
    found = binary or os.environ.get("HEDGE_SCHEDULER_BIN") or shutil.which("hedge-scheduler")
    if not found:
        raise RuntimeError(
            "hedge_bridge.testing asks the hedge-scheduler binary for the run context: put it on "
            "PATH, or set HEDGE_SCHEDULER_BIN, or pass binary="
        )
    return found


def context_for(
    entry: str | None = None,
    *,
    job: str | None = None,
    args: dict | None = None,
    at: str | _dt.datetime | None = None,
    config: str | os.PathLike | None = None,
    exchange: str | None = None,
    binary: str | None = None,
) -> str:
    """The run context (JSON) hedge-scheduler would give a run of ``job`` (or of ``entry``)
    scheduled at ``at``."""
    cmd = [_binary(binary)]
    if config is not None:
        cmd += ["--config", os.fspath(config)]
    cmd.append("context")
    if job is not None:
        cmd.append(job)
    if entry is not None:
        cmd += ["--entry", entry]
    if at is not None:
        cmd += ["--at", at.isoformat() if isinstance(at, _dt.datetime) else str(at)]
    if args:
        cmd += ["--args", json.dumps(args, default=str)]
    if exchange is not None:
        cmd += ["--exchange", exchange]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ValueError(done.stderr.strip() or f"{cmd[0]} context exited {done.returncode}")
    return done.stdout


def run_job(
    entry: str | None = None,
    *,
    job: str | None = None,
    args: dict | None = None,
    at: str | _dt.datetime | None = None,
    config: str | os.PathLike | None = None,
    exchange: str | None = None,
    binary: str | None = None,
) -> JobOutcome:
    """Runs ``entry`` (``"module:function"``), or the config's ``job``, once, as a run scheduled
    at ``at`` (RFC 3339, or a time in the exchange's zone; default now) would run, with ``args``
    over the job's own. Returns its :class:`JobOutcome`; never raises for the job's own errors."""
    from hedge_bridge.__main__ import run

    raw = context_for(
        entry, job=job, args=args, at=at, config=config, exchange=exchange, binary=binary
    )
    with tempfile.TemporaryDirectory(prefix="hedge-test-") as folder:
        result_file = os.path.join(folder, "result.json")
        code = run(raw, result_file)
        sys.stdout.flush()
        with open(result_file, encoding="utf-8") as f:
            outcome = json.load(f)
    return JobOutcome(outcome, code, context_from_json(raw))
