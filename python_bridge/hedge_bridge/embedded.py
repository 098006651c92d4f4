"""In-process runs, for hedge-scheduler's pyo3 executor.

The daemon embeds one interpreter for its whole life and calls :func:`run_json` on a worker thread
per run, so a job's module is imported once and reused. While a run is in progress, what its thread
prints (``print``, ``sys.stderr``, ``ctx.log``, ``logging``) goes to that job's log file, line by
line, in the same format as a subprocess run's output; other threads print to the daemon's console.

A run is ended early (timeout, cancellation) by raising :class:`JobTimeout` or
:class:`JobCancelled` inside its thread (``PyThreadState_SetAsyncExc``, from the daemon, only
while the run is still in Python: the race with its return is settled under the GIL). Both derive from
``BaseException``, so a job's ``except Exception`` does not swallow them. A thread blocked inside C
code only sees the exception when it returns to Python.

The output surface matches a subprocess run's: ``sys.stdout.buffer`` takes bytes (decoded as
UTF-8), ``fileno()`` raises ``io.UnsupportedOperation`` saying why (an in-process run has no file
descriptor of its own), a raise reports exit code 1. Python code here may not signal its own
process (the scheduler) with ``os.kill``, ``os.killpg`` or ``signal.pthread_kill``: the call
raises ``PermissionError`` and the run fails, where under ``subprocess`` the signal would have
ended the job's own process. ``signal.raise_signal`` and C code (``ctypes``) are not caught: a
pyo3 job is not isolated from the scheduler (see the README's executor table).
"""

from __future__ import annotations

import codecs
import datetime as _dt
import io
import json
import os
import sys
import threading

from hedge_bridge import call, context_from_json

__all__ = ["JobTimeout", "JobCancelled", "run_json"]


class JobTimeout(BaseException):
    """Raised inside a job's thread when its run passes its timeout."""


class JobCancelled(BaseException):
    """Raised inside a job's thread when its run is cancelled (shutdown, `overlap = "replace"`)."""


class _RunSink:
    """One run's output: complete lines, stamped, appended to the job's log file (opened only
    when the run first prints)."""

    def __init__(self, path: str, run_id: int) -> None:
        self._path = path
        self._file = None
        self._run_id = run_id
        self._partial = {"stdout": "", "stderr": ""}
        self._decoders = {}
        self._lock = threading.Lock()

    def write_bytes(self, stream: str, data: bytes) -> None:
        decoder = self._decoders.get(stream)
        if decoder is None:
            decoder = self._decoders[stream] = codecs.getincrementaldecoder("utf-8")("replace")
        self.write(stream, decoder.decode(bytes(data)))

    def write(self, stream: str, text: str) -> None:
        with self._lock:
            pending = self._partial[stream] + text
            *lines, rest = pending.split("\n")
            self._partial[stream] = rest
            if lines:
                self._emit(stream, lines)

    def _emit(self, stream: str, lines) -> None:
        now = _dt.datetime.now(_dt.timezone.utc)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
        prefix = f"{stamp} [run {self._run_id} {stream}] "
        if self._file is None:
            # Private, and never through a link planted in the log folder.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(self._path, flags, 0o600)
            self._file = os.fdopen(fd, "a", encoding="utf-8", errors="replace")
        self._file.write("".join(prefix + line.rstrip("\r") + "\n" for line in lines))
        self._file.flush()

    def close(self) -> None:
        with self._lock:
            for stream, rest in self._partial.items():
                if rest:
                    self._emit(stream, [rest])
                    self._partial[stream] = ""
            if self._file is not None:
                self._file.close()


_sinks: dict[int, _RunSink] = {}


_NO_FD = (
    "an in-process (pyo3) run has no file descriptor of its own for {name}; "
    'write to sys.{name} (or sys.{name}.buffer), or use executor = "subprocess"'
)


class _BinaryRouter(io.RawIOBase):
    """``sys.stdout.buffer``: bytes, decoded as UTF-8, go where the text would."""

    def __init__(self, text: "_Router") -> None:
        self._text = text

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        sink = _sinks.get(threading.get_ident())
        if sink is not None:
            sink.write_bytes(self._text._name, bytes(data))
        elif self._text._fallback is not None:
            buffer = getattr(self._text._fallback, "buffer", None)
            if buffer is not None:
                buffer.write(data)
            else:
                self._text._fallback.write(bytes(data).decode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        self._text.flush()

    def fileno(self) -> int:
        raise io.UnsupportedOperation(_NO_FD.format(name=self._text._name))


class _Router(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: each thread's writes go to its run's sink."""

    def __init__(self, fallback, name: str) -> None:
        self._fallback = fallback
        self._name = name
        self._buffer = _BinaryRouter(self)

    @property
    def buffer(self) -> _BinaryRouter:
        return self._buffer

    @property
    def errors(self) -> str:
        return "replace"

    def fileno(self) -> int:
        if threading.get_ident() not in _sinks and self._fallback is not None:
            return self._fallback.fileno()
        raise io.UnsupportedOperation(_NO_FD.format(name=self._name))

    def write(self, text: str) -> int:
        sink = _sinks.get(threading.get_ident())
        if sink is not None:
            sink.write(self._name, text)
        elif self._fallback is not None:
            self._fallback.write(text)
        return len(text)

    def flush(self) -> None:
        if threading.get_ident() not in _sinks and self._fallback is not None:
            self._fallback.flush()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return "utf-8"


def _guard_signals(event: str, args) -> None:
    """An audit hook: Python code in the scheduler (a job, or a thread a job started) may not
    signal the scheduler's own process, its group, or every process (-1)."""
    if event == "os.kill":
        target, sig = args[0], args[1]
        hits = target in (os.getpid(), 0, -1, -os.getpgrp())
    elif event == "os.killpg":
        target, sig = args[0], args[1]
        hits = target in (os.getpgrp(), 0)
    elif event == "signal.pthread_kill":
        target, sig = args[0], args[1]
        hits = True  # every thread of ours is the scheduler's
    else:
        return
    if sig != 0 and hits:
        raise PermissionError(
            f"{event}({target}, {sig}): a pyo3 job runs inside the scheduler and may not signal "
            'its own process; use executor = "subprocess" for a job that does'
        )


_hooked = False


def _install() -> None:
    global _hooked
    if not _hooked:
        sys.addaudithook(_guard_signals)
        _hooked = True
    if not isinstance(sys.stdout, _Router):
        sys.stdout = _Router(sys.stdout, "stdout")
    if not isinstance(sys.stderr, _Router):
        sys.stderr = _Router(sys.stderr, "stderr")


def run_json(entry: str, ctx_json: str, log_path: str, run_id: int) -> str:
    """Runs one job on the calling thread; returns the outcome as JSON (see hedge_bridge.call)."""
    _install()
    ident = threading.get_ident()
    sink = _RunSink(log_path, run_id)
    _sinks[ident] = sink
    try:
        outcome = call(entry, context_from_json(ctx_json))
        if outcome["status"] == "error":
            sink.write("stderr", outcome["traceback"])
        return json.dumps(outcome, default=str, allow_nan=False)
    finally:
        _sinks.pop(ident, None)
        sink.close()
