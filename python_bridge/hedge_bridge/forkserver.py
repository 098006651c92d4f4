"""``python -m hedge_bridge.forkserver``: a warm interpreter that forks one child per run.

hedge-scheduler starts one server per Python environment for its ``executor = "fork"`` jobs. The
server imports the bridge and the modules named in ``[python] preload`` once, checks that no thread
was started meanwhile (a fork copies only the forking thread: a lock another thread held stays
locked forever in the child), then waits, single-threaded, on a Unix socket it was handed as a
file descriptor (``HEDGE_FORK_FD``). It never runs a job itself.

The protocol is one JSON object per message (``SOCK_SEQPACKET``):

- server → scheduler, once: ``{"ready": true, "pid", "python", "modules": [files]}`` or
  ``{"error": "...", "kind": "preload" | "threads"}`` (and the server exits 2);
- scheduler → server: ``{"op": "fork", "uid", "context", "result_file", "cgroup", "env"}`` with
  two descriptors attached (the run's stdout and stderr). The server forks and answers
  ``{"forked": uid, "pid": pid}``. The child makes itself a process group of its own, joins the
  run's cgroup when it has one, takes the descriptors as its stdout and stderr and runs the job as
  ``python -m hedge_bridge`` would, then exits with the same code;
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
    """The source files of the imported modules under the project's folders: a change to one of
    them means the server is out of date."""
    roots = [os.path.realpath(r) + os.sep for r in roots if r]
    files = []
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path:
            continue
        real = os.path.realpath(path)
        if any(real.startswith(r) for r in roots):
            files.append(real)
    return sorted(set(files))


def _child(sock, wake_r, wake_w, message: dict, out: int, err: int) -> None:
    """In the forked child: never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        cgroup = message.get("cgroup")
        if cgroup:
            fd = os.open(os.path.join(cgroup, "cgroup.procs"), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        sock.close()
        os.close(wake_r)
        os.close(wake_w)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        os.environ.update(message.get("env") or {})
        from hedge_bridge.__main__ import run

        code = run(message["context"], message.get("result_file"))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child must end here, whatever happened
        import traceback

        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001
                pass
        os._exit(code & 0xFF if isinstance(code, int) else 1)


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


def serve(sock: socket.socket) -> int:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    # A handler (not SIG_IGN, which would reap the children at once) so SIGCHLD wakes the poll.
    signal.signal(signal.SIGCHLD, lambda *_: None)
    running: dict[int, str] = {}
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
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
                data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 2)
            except (ConnectionResetError, OSError):
                return 0
            if not data:
                return 0
            message = json.loads(data)
            op = message.get("op")
            if op == "fork":
                if len(fds) != 2:
                    for fd_ in fds:
                        os.close(fd_)
                    _send(sock, {"refused": message.get("uid"), "error": "two descriptors expected"})
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(sock, wake_r, wake_w, message, fds[0], fds[1])
                for fd_ in fds:
                    os.close(fd_)
                running[pid] = message["uid"]
                _send(sock, {"forked": message["uid"], "pid": pid})
            elif op == "release":
                pid = int(message["pid"])
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
            elif op == "ping":
                _send(sock, {"pong": True, "children": len(running)})
            else:
                for fd_ in fds:
                    os.close(fd_)
        for pid in list(running):
            how = _ended(pid)
            if how is not None:
                uid = running.pop(pid)
                _send(sock, {"exit": uid, "pid": pid, **how})


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
