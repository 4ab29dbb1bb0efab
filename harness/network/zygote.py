"""Start ``python -m MODULE ARGS`` processes in a fraction of their import time: fork them from a *zygote*.

A worker spends ~3 s of CPU importing torch and torchvision before it can listen, every run, on each endpoint.
The zygote is one process, started once per controller process (``python -m harness.network.zygote MODULE...``),
that imports those modules and then only forks: each child enters its own session and, where asked, a network
namespace, takes its standard streams, working directory and environment from the request, and runs the module as
``__main__``, as ``python -m`` would. It never runs a tensor operation, so the children start with no thread pool
to inherit. Settings a process reads once at start (``MALLOC_MMAP_THRESHOLD_``, ``OMP_NUM_THREADS``) are the
zygote's own: a zygote serves one such environment (:func:`shared_zygote` starts one per environment).

The zygote reaps its children and reports each exit status, so a child's handle answers like a ``Popen``'s
(``poll``, ``wait``, ``returncode``, ``send_signal``). It exits when its controller's end of the socket closes (the
controller exited, or was killed); the children it started live on and are ended by whoever started them.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Mapping, Sequence

MAX_MESSAGE = 1 << 20
MAX_FDS = 8  # standard output and error, and what a child inherits besides


class ZygoteError(RuntimeError):
    """The zygote could not start a process (it exited, or refused the request)."""


class ForkedProcess:
    """A process forked by a zygote, with the part of ``subprocess.Popen``'s interface the topology uses."""

    def __init__(self, zygote: "Zygote", pid: int) -> None:
        self.zygote, self.pid = zygote, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.zygote.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The controller's handle on one zygote process: ``spawn`` forks a child, ``close`` ends the zygote."""

    def __init__(self, preload: Sequence[str], env: dict[str, str], cwd: str | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # In a session of its own: a Ctrl-C at the terminal is the controller's to handle (mid-import it would print
        # the zygote's traceback); the zygote ends when the controller's end of the socket closes.
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.network.zygote", str(theirs.fileno()), *preload],
                                     pass_fds=[theirs.fileno()], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        theirs.close()
        self.sock = ours
        self._codes: dict[int, int] = {}
        self._replies: list[dict[str, Any]] = []
        self._reply = threading.Condition()
        self._lock = threading.Lock()  # one request at a time
        self._reader = threading.Thread(target=self._read, name="zygote-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                with self._reply:
                    self._replies.append({"error": "the zygote exited"})
                    self._reply.notify_all()
                return
            msg = json.loads(data)
            if "exited" in msg:
                self._codes[int(msg["exited"])] = int(msg["code"])
            else:
                with self._reply:
                    self._replies.append(msg)
                    self._reply.notify_all()

    def alive(self) -> bool:
        return self.proc.poll() is None and self._reader.is_alive()

    def exit_code(self, pid: int) -> int | None:
        """The child's exit code (negative: the signal that ended it); None while it runs. A child whose zygote is
        gone cannot be reaped by it: then it counts as exited once no process has its pid."""
        if pid in self._codes:
            return self._codes[pid]
        if not self._reader.is_alive():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return self._codes.setdefault(pid, -signal.SIGKILL)
        return None

    def spawn(self, module: str, args: Sequence[str], env: dict[str, str], cwd: str, stdout: int, stderr: int,
              namespace: str | None = None, fds: Mapping[int, int] | None = None, timeout_s: float = 60.0,
              script: bool = False) -> ForkedProcess:
        """Fork ``python -m module args`` (``python module args`` with ``script``: ``module`` is then a file's path)
        with ``env``, ``cwd`` and the file descriptors ``stdout``/``stderr``, inside the network namespace bound at
        path ``namespace`` when one is given; ``fds`` maps a descriptor number in the child to one of this
        process's descriptors it inherits there."""
        fds = dict(fds or {})
        request = json.dumps({"module": module, "script": script, "args": list(args), "env": env, "cwd": cwd,
                              "namespace": namespace, "fds": list(fds)}).encode()
        with self._lock:
            with self._reply:
                self._replies.clear()
            try:
                socket.send_fds(self.sock, [request], [stdout, stderr, *fds.values()])
            except OSError as exc:
                raise ZygoteError(f"the zygote cannot take requests: {exc}") from exc
            with self._reply:
                if not self._reply.wait_for(lambda: self._replies, timeout_s):
                    raise ZygoteError(f"the zygote did not fork {module} within {timeout_s:.0f} s")
                reply = self._replies.pop(0)
        if "pid" not in reply:
            raise ZygoteError(f"the zygote could not fork {module}: {reply.get('error')}")
        return ForkedProcess(self, int(reply["pid"]))

    def close(self) -> None:
        """End the zygote (its children live on)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# What a process reads from its environment once, at start (the allocator, thread pools, the interpreter, the
# loader): children of one zygote share these; every other variable is each child's own.
READ_AT_START = ("MALLOC_", "OMP_", "MKL_", "KMP_", "GOMP_", "PYTHON", "LD_", "TORCH_", "CUDA_")

class Zygotes:
    """Zygotes kept for reuse, one per preload, folder and start-time environment."""

    def __init__(self) -> None:
        self._zygotes: dict[tuple[Any, ...], Zygote] = {}
        self._lock = threading.Lock()

    def get(self, preload: Sequence[str], env: dict[str, str], cwd: str) -> Zygote:
        """The zygote for ``preload`` whose start-time environment is ``env``'s, started in ``cwd`` (the first entry
        of its children's import path); started now if there is none, or it died."""
        key = (tuple(preload), cwd, tuple(sorted((k, v) for k, v in env.items() if k.startswith(READ_AT_START))))
        with self._lock:
            zygote = self._zygotes.get(key)
            if zygote is None or not zygote.alive():
                zygote = self._zygotes[key] = Zygote(preload, env, cwd)
            return zygote

    def close(self) -> None:
        """End every zygote kept; the next :meth:`get` starts afresh (with the environment then)."""
        with self._lock:
            zygotes = list(self._zygotes.values())
            self._zygotes.clear()
        for zygote in zygotes:
            zygote.close()


_shared = Zygotes()


def shared_zygote(preload: Sequence[str], env: dict[str, str], cwd: str) -> Zygote:
    """This process's zygote for ``preload``, ``env``'s start-time settings and ``cwd`` (:meth:`Zygotes.get`)."""
    return _shared.get(preload, env, cwd)


# -- the zygote process ----------------------------------------------------------------------------------------------

def _child(sock: socket.socket, request: dict[str, Any], fds: list[int], own_fds: Sequence[int]) -> None:
    """In the forked child: become the requested ``python -m`` (or ``python PATH``) process (``own_fds``: the
    zygote's, closed); never returns."""
    code = 1
    try:
        os.setsid()
        _name_process(os.path.basename(request["module"]))
        sock.close()
        signal.set_wakeup_fd(-1)
        for fd in own_fds:
            os.close(fd)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # out of every target's way first
        for fd in fds:
            os.close(fd)
        for target, fd in zip((1, 2, *request.get("fds", ())), high):
            os.dup2(fd, target)
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as Python starts: Ctrl-C raises KeyboardInterrupt
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if request.get("namespace"):
            from harness.network.namespaces import enter_namespace
            enter_namespace(request["namespace"])
        import runpy
        sys.argv = [request["module"], *request["args"]]
        if request.get("script"):  # as ``python PATH`` would: the script's folder first on the import path
            sys.path[0] = os.path.dirname(os.path.abspath(request["module"]))
            runpy.run_path(request["module"], run_name="__main__")
        else:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException as exc:  # noqa: BLE001  (the child must never return into the zygote's loop)
        import traceback
        traceback.print_exc()
        if isinstance(exc, KeyboardInterrupt):
            code = -signal.SIGINT
    finally:
        try:
            _exit_as_python_does(code)
        finally:
            os._exit(code if code >= 0 else 128 - code)


def _exit_as_python_does(code: int) -> None:
    """What an interpreter's exit does that a program can see: wait for its non-daemon threads, run its ``atexit``
    handlers (a topology's teardown is one), flush its streams; and after an uncaught ``KeyboardInterrupt``, end by
    SIGINT. Finalising the modules it imported is left out: only seconds of tearing torch down."""
    import atexit
    import threading
    try:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    if code == -signal.SIGINT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


def _name_process(module: str) -> None:
    """Show the module as this process's name (``ps -o comm``, ``top``): its command line stays the zygote's."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(15, module.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def close_shared() -> None:
    """End this process's shared zygotes; the next :func:`shared_zygote` starts afresh (with the environment then)."""
    _shared.close()


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(json.dumps({"exited": pid, "code": os.waitstatus_to_exitcode(status)}).encode())


def serve(sock: socket.socket) -> None:
    """Fork a child per request; report every child's exit; return when the controller's end closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the controller's to handle; EOF ends the zygote
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
        readable, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
        _reap(sock)
        if sock not in readable:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
        except OSError:
            return
        if not data:
            return
        try:
            request = json.loads(data)
            pid = os.fork()
        except (ValueError, OSError) as exc:
            for fd in fds:
                os.close(fd)
            sock.send(json.dumps({"error": str(exc)}).encode())
            continue
        if pid == 0:
            _child(sock, request, fds, (wake_r, wake_w))
        for fd in fds:
            os.close(fd)
        sock.send(json.dumps({"pid": pid}).encode())


def main(argv: Sequence[str]) -> None:
    sock = socket.socket(fileno=int(argv[0]))
    for module in argv[1:]:
        __import__(module)
    serve(sock)
    os._exit(0)  # nothing to flush or finalise: tearing down torch's modules would only take seconds


if __name__ == "__main__":
    main(sys.argv[1:])
