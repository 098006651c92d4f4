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

__all__ = ["RunContext", "Session", "resolve", "call", "context_from_json"]


class Session:
    """One trading session of the exchange: ``open`` and ``close`` as aware datetimes in the
    exchange's zone, ``kind`` one of ``"regular"``, ``"early_close"``, ``"special"`` (Muhurat
    trading, a late open). Immutable."""

    __slots__ = ("date", "open", "close", "kind")

    date: _dt.date
    open: _dt.datetime
    close: _dt.datetime
    kind: str

    def __init__(self, date: _dt.date, open: _dt.datetime, close: _dt.datetime, kind: str) -> None:  # noqa: A002
        for name, value in (("date", date), ("open", open), ("close", close), ("kind", kind)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Session is read-only: cannot set {name!r}")

    def __contains__(self, t: object) -> bool:
        """Whether ``t`` falls in the session, open and close included: an aware datetime, or a
        date (the session's own)."""
        if isinstance(t, _dt.datetime):
            if t.tzinfo is None or t.utcoffset() is None:
                raise TypeError("`t in session` needs an aware datetime (one with a timezone)")
            return self.open <= t <= self.close
        if isinstance(t, _dt.date):
            return t == self.date
        return False

    def __reduce__(self):
        # Copies and pickles (a process pool) are rebuilt through __init__.
        return (Session, (self.date, self.open, self.close, self.kind))

    def minutes(self, step: int = 1) -> list:
        """Every ``step``-th minute of the session, from the open up to the close (inclusive)."""
        out, t = [], self.open
        while t <= self.close:
            out.append(t)
            t += _dt.timedelta(minutes=step)
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Session) and (self.date, self.open, self.close, self.kind) == (
            other.date,
            other.open,
            other.close,
            other.kind,
        )

    def __hash__(self) -> int:
        return hash((self.date, self.open, self.close, self.kind))

    def __repr__(self) -> str:
        return f"Session({self.date.isoformat()} {self.open:%H:%M}-{self.close:%H:%M} {self.kind})"

    @classmethod
    def from_json(cls, raw: dict | None) -> Session | None:
        if not raw:
            return None
        return cls(
            date=_dt.date.fromisoformat(raw["date"]),
            open=_dt.datetime.fromisoformat(raw["open"]),
            close=_dt.datetime.fromisoformat(raw["close"]),
            kind=raw["kind"],
        )


class RunContext:
    """What a job knows about the run it is part of. Immutable: set by the scheduler.

    Times are aware datetimes in the exchange's zone:

    - ``scheduled_at``: the slot this run is for;
    - ``interval_start``: the job's slot before it, so the data interval this run covers is
      ``[interval_start, scheduled_at)``; ``None`` for a job with no schedule to look back on;
    - ``deadline``: when the run's timeout ends it;
    - ``session``: the exchange's session on the slot's date, ``None`` when it is closed that day;
    - ``last_session``: the last session opened at or before the slot (today's, or the one
      before a closed day), for pricing at the last close.
    """

    __slots__ = (
        "job",
        "name",
        "run_id",
        "run_uid",
        "scheduled_at",
        "attempt",
        "args",
        "trigger",
        "exchange",
        "timezone",
        "node",
        "fence",
        "degraded",
        "session",
        "last_session",
        "interval_start",
        "deadline",
        "_log",
    )

    job: str
    name: str
    run_id: int
    run_uid: str | None
    scheduled_at: _dt.datetime
    attempt: int
    args: dict
    trigger: str
    exchange: str | None
    timezone: str | None
    node: str | None
    fence: int | None
    degraded: bool
    session: Session | None
    last_session: Session | None
    interval_start: _dt.datetime | None
    deadline: _dt.datetime | None

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
        session: Session | None = None,
        last_session: Session | None = None,
        interval_start: _dt.datetime | None = None,
        deadline: _dt.datetime | None = None,
    ) -> None:
        values = {
            "job": job,
            "name": name or job,
            "run_id": run_id,
            # Unique across restarts, history files and hosts (a UUIDv7): a key for idempotent
            # writes.
            "run_uid": run_uid,
            "scheduled_at": scheduled_at,
            "attempt": attempt,
            # The job's own copy: changing it changes nothing of the scheduler's.
            "args": dict(args or {}),
            "trigger": trigger,
            "exchange": exchange,
            "timezone": timezone,
            # Cluster mode: the node running the slot and the slot's fencing token (it grows with
            # every claim of the slot, so a store that keeps the highest fence per slot ignores a
            # stale writer); `degraded` when run without the cluster's database.
            "node": node,
            "fence": fence,
            "degraded": degraded,
            "session": session,
            "last_session": last_session,
            "interval_start": interval_start,
            "deadline": deadline,
            "_log": None,
        }
        for name_, value in values.items():
            object.__setattr__(self, name_, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"RunContext is read-only: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"RunContext is read-only: cannot delete {name!r}")

    def __reduce__(self):
        # Copies and pickles (a process pool) are rebuilt through __init__; the logger is made
        # again on first use.
        fields = [n for n in self.__slots__ if n != "_log"]
        return (_rebuild_context, (tuple((n, getattr(self, n)) for n in fields),))

    @property
    def log(self):
        """A ``logging.Logger`` for the job; what it logs goes to the job's log file."""
        if self._log is None:
            object.__setattr__(self, "_log", _job_logger(self.job))
        return self._log

    def time_left(self) -> float | None:
        """Seconds until ``deadline`` (negative once past), or ``None`` without one."""
        if self.deadline is None:
            return None
        return (self.deadline - _dt.datetime.now(_dt.timezone.utc)).total_seconds()

    def __repr__(self) -> str:
        return (
            f"RunContext(job={self.job!r}, run_id={self.run_id}, "
            f"scheduled_at={self.scheduled_at.isoformat()}, attempt={self.attempt}, "
            f"session={self.session!r})"
        )


def _rebuild_context(fields: tuple) -> RunContext:
    return RunContext(**dict(fields))


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
        session=Session.from_json(raw.get("session")),
        last_session=Session.from_json(raw.get("last_session")),
        interval_start=_time(raw.get("interval_start")),
        deadline=_time(raw.get("deadline")),
    )


def _time(text: str | None) -> _dt.datetime | None:
    return _dt.datetime.fromisoformat(text) if text else None


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


#: Rows of a table kept in a stored summary.
SUMMARY_ROWS = 5


def _table_summary(value):
    """A pandas DataFrame or Series, or a numpy array, as a compact summary (its shape, columns
    and first rows), not a text dump: `None` for anything else. Duck-typed: pandas and numpy are
    never imported here."""
    try:
        return _table_summary_of(value)
    except Exception:  # noqa: BLE001 - an odd table (duplicate column names...) is summarised less
        try:
            return {"type": type(value).__name__, "shape": [int(n) for n in value.shape]}
        except Exception:  # noqa: BLE001
            return None


def _table_summary_of(value):
    kind = type(value).__name__
    module = type(value).__module__.split(".")[0]
    if module == "pandas" and kind == "DataFrame":
        head = value.head(SUMMARY_ROWS)
        return {
            "type": "DataFrame",
            "shape": list(value.shape),
            "columns": [str(c) for c in value.columns],
            "dtypes": {str(c): str(t) for c, t in value.dtypes.items()},
            "head": json.loads(head.to_json(orient="records", date_format="iso", default_handler=str)),
        }
    if module == "pandas" and kind == "Series":
        head = value.head(SUMMARY_ROWS)
        return {
            "type": "Series",
            "name": None if value.name is None else str(value.name),
            "length": int(len(value)),
            "dtype": str(value.dtype),
            "head": json.loads(head.to_json(orient="values", date_format="iso", default_handler=str)),
        }
    if module == "numpy" and kind == "ndarray":
        flat = value.reshape(-1)[:SUMMARY_ROWS]
        return {
            "type": "ndarray",
            "shape": list(value.shape),
            "dtype": str(value.dtype),
            "head": _finite(json.loads(json.dumps(flat.tolist(), default=str))),
        }
    return None


def _jsonable(value):
    """The job's return value as strict JSON: a table (pandas, numpy) as its summary; values JSON
    cannot hold become their str(), NaN and infinities become None."""
    if value is None or isinstance(value, (str, int, bool)):
        return value
    table = _table_summary(value)
    if table is not None:
        return table
    if isinstance(value, dict):
        value = {k: (_table_summary(v) or v) for k, v in value.items()}
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
