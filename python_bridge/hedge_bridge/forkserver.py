"""``python -m hedge_bridge.forkserver``: a warm interpreter that forks one child per run.

hedge-scheduler starts one server per Python environment for its ``executor = "fork"`` jobs. The
server imports the bridge and the modules named in ``[python] preload`` once, checks that no thread
was started meanwhile (a fork copies only the forking thread: a lock another thread held stays
locked forever in the child), then waits, single-threaded, on a Unix socket it was handed as a
file descriptor (``HEDGE_FORK_FD``). It never runs a job itself.

The protocol is one JSON object per message (``SOCK_SEQPACKET``):

- server → scheduler, once: ``{"ready": true, "pid", "python", "modules": [files]}`` or
  ``{"error": "...", "kind": "preload" | "threads"}`` (and the server exits 2);
- scheduler → server: ``{"op": "spare", "cgroup"}``: fork a child ahead of its run, which makes
  itself a process group of its own, joins that cgroup (the slow part of starting a run) and waits;
- scheduler → server: ``{"op": "fork", "uid", "context", "result_file", "cgroup", "env", "spare"}``
  with three descriptors attached (the run's stdout and stderr, and the read end of its
  go-ahead). The spare takes the run when there is one for that cgroup, else the server forks a
  new child; it answers ``{"forked": uid, "pid": pid}`` (or ``{"refused": uid, "error"}``). The
  child takes the descriptors as its stdout and stderr, waits for the scheduler's go-ahead (one
  byte; the end of the pipe instead means "give up": it exits without running anything) and runs
  the job as ``python -m hedge_bridge`` would, ending with the same exit code;
- server → scheduler: ``{"spare_gone": true}`` when the spare died before it got a run;
- server → scheduler, when a child ends: ``{"exit": uid, "pid", "code"}`` or ``{..., "signal"}``.
  The child is kept as a zombie (``WNOWAIT``) until the scheduler says ``{"op": "release",
  "pid"}``, so its PID and process group cannot be reused while the scheduler may still signal
  them;
- ``{"op": "ping"}`` → ``{"pong": true, "children": n}``.

The server exits when the socket closes (the scheduler retired it, or died).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import threading
import time

MAX_MESSAGE = 1 << 20


def _send(sock: socket.socket, message: dict) -> None:
    sock.send(json.dumps(message).encode())


def _preload(names: list[str]):
    """Imports each module; the first failure, or the first module after whose import a thread
    runs, is an error: ``(kind, message)``. ``None`` when all went well."""
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - any failure is the config's to report
            return "preload", f"preload of {name!r} failed: {type(exc).__name__}: {exc}"
        if threading.active_count() > 1:
            others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
            return "threads", (
                f"preloaded module {name!r} started {len(others)} thread(s) at import "
                f"({', '.join(others)}); a fork server must stay single-threaded "
                f"(a fork copies only one thread, and locks the others hold stay locked): "
                f"remove it from [python] preload and import it inside the job"
            )
    return None


def _project_files(roots: list[str]) -> list[str]:
    """The source files of the imported modules under the project's folders (not the
    interpreter's, not installed packages): a change to one of them means the server is out of
    date. At most 2,000, so the list fits one message."""
    import site

    installed = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    try:
        installed.update(site.getsitepackages())
        installed.add(site.getusersitepackages())
    except AttributeError:  # a virtualenv's old site.py
        pass
    installed = [os.path.realpath(p) + os.sep for p in installed if p]
    roots = [os.path.realpath(r) + os.sep for r in roots if r]
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path:
            continue
        real = os.path.realpath(path)
        if any(real.startswith(r) for r in roots) and not any(real.startswith(p) for p in installed):
            files.add(real)
    return sorted(files)[:2000]


def _reset_signals() -> None:
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _join_cgroup(cgroup) -> None:
    if cgroup:
        fd = os.open(os.path.join(cgroup, "cgroup.procs"), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)


def _exit(code) -> None:
    """Ends the child as ``python -m hedge_bridge`` ends: the job's non-daemon threads waited
    for, its ``atexit`` handlers run (the server's were dropped at the fork), output flushed."""
    if code is None:
        code = 0
    elif not isinstance(code, int):
        code = 1
    try:
        threading._shutdown()
    except BaseException:  # noqa: BLE001
        pass
    try:
        import atexit

        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass
    os._exit(code & 0xFF)


def _run(message: dict, fds: list) -> None:
    """In a child: takes the run's descriptors (stdout, stderr, the go-ahead), waits for the
    scheduler's go-ahead and runs the job. Never returns."""
    code = 1
    try:
        out, err, gate = fds
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        _join_cgroup(message.get("cgroup"))
        # Nothing of the job runs before the scheduler knows this process is the run's: a run it
        # gave up on (no answer in time) closes the go-ahead instead.
        go = os.read(gate, 1)
        os.close(gate)
        if go != b"g":
            os._exit(0)
        keep = message.get("keep")
        if keep is not None:
            # inherit_env = false: only these of the server's environment (and every LC_*).
            kept = {k: v for k, v in os.environ.items() if k in keep or k.startswith("LC_")}
            os.environ.clear()
            os.environ.update(kept)
        os.environ.update(message.get("env") or {})
        # A TZ of the job's own applies from here, as it would in a process of its own.
        time.tzset()
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            # A fork copies numpy's global generator too: each run draws its own numbers.
            try:
                numpy.random.seed()
            except BaseException:  # noqa: BLE001
                pass
        from hedge_bridge.__main__ import run

        code = run(message["context"], message.get("result_file"))
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # noqa: BLE001 - the child must end here, whatever happened
        import traceback

        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
        code = 1
    _exit(code)


def _forked_child(sock, wake_r, wake_w) -> None:
    """The first steps of any child: a process group of its own, default signals, none of the
    server's descriptors, none of the server's exit handlers."""
    os.setpgid(0, 0)
    _reset_signals()
    sock.close()
    os.close(wake_r)
    os.close(wake_w)
    import atexit

    atexit._clear()


def _spare(sock, wake_r, wake_w, private, cgroup) -> None:
    """A child forked ahead of its run, already in the cgroup the run will use (joining one is the
    slow part of starting a run): waits for its run on ``private``. Never returns."""
    try:
        _forked_child(sock, wake_r, wake_w)
        _join_cgroup(cgroup)
        data, fds, _flags, _addr = socket.recv_fds(private, MAX_MESSAGE, 3)
        private.close()
        if not data or len(fds) != 3:
            os._exit(0)
        message = json.loads(data)
        message["cgroup"] = None  # joined already
    except BaseException:  # noqa: BLE001
        os._exit(1)
    _run(message, fds)


def _ended(pid: int):
    """How child ``pid`` ended, if it has, leaving it a zombie; ``None`` while it runs."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return {"code": None}
    if info is None or info.si_pid == 0:
        return None
    if info.si_code == os.CLD_EXITED:
        return {"code": info.si_status}
    return {"signal": info.si_status, "core": info.si_code == os.CLD_DUMPED}


def _reap(pid: int) -> bool:
    """Reaps ``pid`` if it has ended; true when it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done != 0


def _close_all(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def serve(sock: socket.socket) -> int:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    # A handler (not SIG_IGN, which would reap the children at once) so SIGCHLD wakes the poll.
    signal.signal(signal.SIGCHLD, lambda *_: None)
    running = {}  # pid -> uid: children whose exit is still to be told
    released = set()  # children the scheduler is done with, reaped as soon as they end
    spare = None  # (pid, the socket its run comes on, its cgroup)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)

    def fork_fresh(message, fds):
        pid = os.fork()
        if pid == 0:
            try:
                _forked_child(sock, wake_r, wake_w)
                if spare is not None:
                    spare[1].close()
            except BaseException:  # noqa: BLE001
                os._exit(1)
            _run(message, fds)
        return pid

    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            events = []
        for fd, _ in events:
            if fd == wake_r:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                continue
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 3)
            except OSError:
                return 0
            if not data:
                return 0
            message = json.loads(data)
            op = message.get("op")
            if op == "fork":
                uid = message.get("uid")
                if len(fds) != 3:
                    _close_all(fds)
                    _send(sock, {"refused": uid, "error": "three descriptors expected"})
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = None
                if spare is not None and message.get("spare") and spare[2] == message.get("cgroup"):
                    spare_pid, private, _cgroup = spare
                    spare = None
                    try:
                        socket.send_fds(private, [json.dumps(message).encode()], fds)
                        pid = spare_pid
                    except OSError:
                        pass
                    private.close()
                if pid is None:
                    try:
                        pid = fork_fresh(message, fds)
                    except OSError as exc:
                        _close_all(fds)
                        _send(sock, {"refused": uid, "error": f"fork failed: {exc}"})
                        continue
                _close_all(fds)
                try:
                    os.setpgid(pid, pid)
                except OSError:
                    pass
                running[pid] = uid
                _send(sock, {"forked": uid, "pid": pid})
            elif op == "spare":
                _close_all(fds)
                if spare is not None:
                    continue
                private, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    pid = os.fork()
                except OSError:
                    private.close()
                    theirs.close()
                    _send(sock, {"spare_gone": True})
                    continue
                if pid == 0:
                    private.close()
                    _spare(sock, wake_r, wake_w, theirs, message.get("cgroup"))
                theirs.close()
                try:
                    os.setpgid(pid, pid)
                except OSError:
                    pass
                spare = (pid, private, message.get("cgroup"))
            elif op == "release":
                pid = int(message["pid"])
                if pid not in running and not _reap(pid):
                    released.add(pid)
                elif pid in running:
                    released.add(pid)
            elif op == "ping":
                _send(sock, {"pong": True, "children": len(running)})
            else:
                _close_all(fds)
        for pid in list(running):
            how = _ended(pid)
            if how is not None:
                uid = running.pop(pid)
                _send(sock, {"exit": uid, "pid": pid, **how})
        for pid in list(released):
            if pid not in running and _reap(pid):
                released.discard(pid)
        if spare is not None and _reap(spare[0]):
            spare[1].close()
            spare = None
            _send(sock, {"spare_gone": True})


def main() -> int:
    try:
        fd = int(os.environ.pop("HEDGE_FORK_FD"))
    except (KeyError, ValueError):
        print("hedge_bridge.forkserver: HEDGE_FORK_FD is not set; hedge-scheduler starts this server", file=sys.stderr)
        return 2
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    preload = json.loads(os.environ.pop("HEDGE_PRELOAD", "[]") or "[]")
    roots = json.loads(os.environ.pop("HEDGE_PROJECT_PATHS", "[]") or "[]")
    # The bridge's own run path, imported before the first fork.
    import hedge_bridge.__main__  # noqa: F401

    failed = _preload(preload)
    if failed is not None:
        kind, error = failed
        _send(sock, {"error": error, "kind": kind})
        return 2
    _send(
        sock,
        {
            "ready": True,
            "pid": os.getpid(),
            "python": ".".join(map(str, sys.version_info[:3])),
            "modules": _project_files(roots),
            "native_threads": len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None,
        },
    )
    return serve(sock)


if __name__ == "__main__":
    sys.exit(main())
