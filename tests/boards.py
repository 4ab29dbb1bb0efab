"""Workers as an operator starts them on real boards (``python -m harness.worker --control tcp:...``), here on
loopback: shared by the remote-worker, clock, control-channel and fault tests; and free ports for any server a test
starts."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from harness.worker.sealed import SealedSocket
from harness.network.zygote import ForkedProcess
from tests.conftest import ROOT, start_python

TOKEN = "test-secret-5c0e9a41d27b8f36"  # 32 bytes: a board refuses secrets under 16


def sealed_pair() -> tuple[SealedSocket, SealedSocket]:
    """A controller's and a worker's ends of one control connection, as after authentication (random keys)."""
    controller, worker = socket.socketpair()
    to_worker, to_controller = os.urandom(32), os.urandom(32)
    return SealedSocket(controller, to_worker, to_controller), SealedSocket(worker, to_controller, to_worker)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(span: int = 4) -> int:
    """A free port with the ``span - 1`` after it free too (a run's data ports are its base port and the next), below
    the kernel's ephemeral range and in a stretch of this xdist worker's own. A port the kernel handed out (bind to
    port 0) lies in the ephemeral range, where any process's next outgoing connection can take it before the board or
    the run binds it: seen as a board's 'Address already in use' with three tests at a time."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])  # 32768 by default
    stretch = (ephemeral - 10_000) // 8
    low = 10_000 + (worker % 8) * stretch
    for _ in range(200):
        base = random.randrange(low, low + stretch - span)
        if all(_bindable(port) for port in range(base, base + span)):
            return base
    raise RuntimeError(f"no {span} free consecutive ports in {low}-{low + stretch}")


def wait_listening(port: int, proc: subprocess.Popen | ForkedProcess, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"the worker on port {port} exited with code {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"the worker on port {port} did not start listening"
            time.sleep(0.1)


def start_board(port: int, log: Path, prefix: list[str] | None = None, args: list[str] | None = None,
                token: str = TOKEN) -> subprocess.Popen | ForkedProcess:
    """One board worker, in its own process group (its run's child included) so that it can be killed whole; one
    started under a ``prefix`` command (a time namespace) is a process of its own, others are forked."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPLITBENCH_TOKEN": token}
    argv = ["--control", f"tcp:127.0.0.1:{port}", *(args or [])]
    with log.open("w") as out:
        if prefix:
            proc = subprocess.Popen([*prefix, sys.executable, "-m", "harness.worker", *argv], env=env, cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        else:
            proc = start_python("harness.worker", argv, ROOT, env, out.fileno(), out.fileno(), module=True)
    wait_listening(port, proc)
    return proc


def stop_board(proc: subprocess.Popen | ForkedProcess) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@contextmanager
def boards(tmp_path: Path, prefixes: dict[str, list[str]] | None = None,
           args: dict[str, list[str]] | None = None, tokens: dict[str, str] | None = None) -> Iterator[dict[str, int]]:
    """A device and a server board worker on loopback (each with ``tokens``' secret, else ``TOKEN``); yields their
    ports."""
    ports = {"device": free_port(), "server": free_port()}
    procs = []
    try:
        for name, port in ports.items():
            procs.append(start_board(port, tmp_path / f"{name}.log", (prefixes or {}).get(name),
                                     (args or {}).get(name), (tokens or {}).get(name, TOKEN)))
        yield ports
    finally:
        for proc in procs:
            stop_board(proc)


def remote_override(ports: dict[str, int]) -> str:
    return f"runtime.remote={{device: 'tcp:127.0.0.1:{ports['device']}', server: 'tcp:127.0.0.1:{ports['server']}'}}"


def challenge_when_free(port: int, timeout_s: float = 60) -> tuple[socket.socket, str]:
    """A connection to a board worker and its challenge's nonce, once the worker is free (a run it served ends
    when its child process notices the closed connection)."""
    from harness.worker import auth, wire

    deadline = time.monotonic() + timeout_s
    while True:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        hello = auth.recv_hello(sock)
        if hello.kind is wire.Kind.JSON:
            return sock, auth.parse_challenge(hello)
        sock.close()
        assert "busy" in hello.obj["reason"] and time.monotonic() < deadline, hello.obj
        time.sleep(0.2)
