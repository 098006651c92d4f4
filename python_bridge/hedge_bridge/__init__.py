"""hedge_bridge: how hedge-scheduler calls a Python job.

A job is a function ``module:function`` that takes one positional argument, the run context
(:class:`RunContext`), and returns a JSON-serialisable value or ``None``. The bridge resolves the
entry point, builds the context, calls the function and reports what happened as a small dict:

    {"status": "ok", "result": ..., "entered_at": 1764230400.123}
    {"status": "error", "error": "ValueError: boom", "traceback": "...", "entered_at": ...}
    {"status": "exit", "exit_code": 3, "error": "SystemExit: 3", "entered_at": ...}

Standard library only: it must work in any interpreter a user points the scheduler at.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
import time

# Kept out of the import path on purpose: `logging`, `traceback` and `typing` cost milliseconds at
# every subprocess start, so they are imported only when a run needs them.

__all__ = ["RunContext", "resolve", "call", "context_from_json"]


class RunContext:
    """What a job knows about the run it is part of."""

    def __init__(
        self,
        job: str,
        run_id: int,
        scheduled_at: _dt.datetime,
        attempt: int = 1,
        args: dict | None = None,
        trigger: str = "manual",
        name: str | None = None,
        exchange: str | None = None,
        timezone: str | None = None,
        run_uid: str | None = None,
        node: str | None = None,
        fence: int | None = None,
        degraded: bool = False,
    ) -> None:
        self.job = job
        self.name = name or job
        self.run_id = run_id
        # Unique across restarts, history files and hosts (a UUIDv7): a key for idempotent writes.
        self.run_uid = run_uid
        self.scheduled_at = scheduled_at
        self.attempt = attempt
        self.args = dict(args or {})
        self.trigger = trigger
        self.exchange = exchange
        self.timezone = timezone
        # Cluster mode: the node running the slot and the slot's fencing token (it grows with
        # every claim of the slot, so a store that keeps the highest fence per slot ignores a
        # stale writer); `degraded` when run without the cluster's database.
        self.node = node
        self.fence = fence
        self.degraded = degraded
        self._log = None

    @property
    def log(self):
        """A ``logging.Logger`` for the job; what it logs goes to the job's log file."""
        if self._log is None:
            self._log = _job_logger(self.job)
        return self._log

    def __repr__(self) -> str:
        return (
            f"RunContext(job={self.job!r}, run_id={self.run_id}, "
            f"scheduled_at={self.scheduled_at.isoformat()}, attempt={self.attempt})"
        )


def _job_logger(job: str):
    """A logger whose records go to stderr, which the scheduler writes to the job's log file."""
    import logging

    logger = logging.getLogger(f"hedge.{job}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def context_from_json(text: str) -> RunContext:
    """Builds the context from the JSON the scheduler hands over."""
    raw = json.loads(text)
    return RunContext(
        job=raw["job"],
        run_id=int(raw["run_id"]),
        scheduled_at=_dt.datetime.fromisoformat(raw["scheduled_at"]),
        attempt=int(raw.get("attempt", 1)),
        args=raw.get("args") or {},
        trigger=raw.get("trigger", "manual"),
        name=raw.get("name"),
        exchange=raw.get("exchange"),
        timezone=raw.get("timezone"),
        run_uid=raw.get("run_uid"),
        node=raw.get("node"),
        fence=raw.get("fence"),
        degraded=bool(raw.get("degraded", False)),
    )


def _script(path: str):
    """A legacy script run as ``__main__``, with ``ctx.args["argv"]`` as its arguments."""

    def run_script(ctx: RunContext) -> None:
        import runpy

        saved = sys.argv
        sys.argv = [path, *[str(a) for a in ctx.args.get("argv", [])]]
        try:
            runpy.run_path(path, run_name="__main__")
        finally:
            sys.argv = saved

    return run_script


def resolve(entry: str):
    """Imports ``module`` and returns its ``function`` for an entry ``module:function``; an entry
    that is a ``.py`` path is run as a script."""
    if entry.endswith(".py") and ":" not in entry:
        return _script(entry)
    import importlib

    module_name, sep, func_name = entry.partition(":")
    if not sep or not module_name or not func_name:
        raise ValueError(f"entry {entry!r} is not 'module:function'")
    module = importlib.import_module(module_name)
    try:
        func = getattr(module, func_name)
    except AttributeError:
        raise AttributeError(f"module {module_name!r} has no function {func_name!r}") from None
    if not callable(func):
        raise TypeError(f"{entry} is not callable")
    return func


def _summary(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _finite(value):
    """NaN and infinities (which JSON cannot hold) become None, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _jsonable(value):
    """The job's return value as strict JSON: values JSON cannot hold become their str(), NaN and
    infinities become None."""
    if value is None or isinstance(value, (str, int, bool)):
        return value
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return _finite(json.loads(json.dumps(value, default=str)))


def call(entry: str, ctx: RunContext) -> dict:
    """Runs one job and reports the outcome as a dict; never raises for the job's own errors."""
    entered_at = None
    try:
        func = resolve(entry)
        entered_at = time.time()
        value = func(ctx)
        return {"status": "ok", "result": _jsonable(value), "entered_at": entered_at}
    except SystemExit as exc:
        code = exc.code
        if code is None:
            code = 0
        if not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        return {
            "status": "exit",
            "exit_code": code,
            "error": f"SystemExit: {code}",
            "entered_at": entered_at,
        }
    except BaseException as exc:  # noqa: BLE001 - a job's failure of any kind is its outcome
        import traceback

        # From the job's own code on: the bridge's frame (this function) is noise to its author.
        frames = exc.__traceback__
        if frames is not None and frames.tb_frame.f_code is call.__code__ and frames.tb_next:
            frames = frames.tb_next
        tb = "".join(traceback.format_exception(type(exc), exc, frames))
        return {
            "status": "error",
            "error": _summary(exc),
            "traceback": tb,
            "entered_at": entered_at,
        }
