"""Processes started inside a topology's namespaces: spawned in their own session, watched, and killed with it.

A *critical* process that exits non-zero (a crash, a signal) is reported through ``on_crash`` from a watcher
thread, so that its topology can take everything down at once instead of waiting on a dead peer.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from harness.network.namespaces import enter_namespace, namespace_path
from harness.network.zygote import ForkedProcess, Zygote

log = logging.getLogger("harness.network")


@dataclass
class Spawned:
    endpoint: str
    argv: list[str]
    proc: subprocess.Popen | ForkedProcess
    group: bool
    critical: bool


class Processes:
    """The processes of one topology. ``watch`` starts the crash watcher; ``kill_all`` ends them all."""

    def __init__(self, name: str, on_crash: Callable[[str], None]) -> None:
        self.name, self.on_crash = name, on_crash
        self.spawned: list[Spawned] = []
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._lock = threading.Lock()

    def spawn(self, endpoint: str, namespace: str | None, argv: Sequence[str], critical: bool = True,
              **popen_kwargs: Any) -> subprocess.Popen:
        caller_hook = popen_kwargs.pop("preexec_fn", None)

        def in_namespace() -> None:
            if namespace is not None:
                enter_namespace(namespace)
            if caller_hook is not None:
                caller_hook()

        group = popen_kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(list(argv), preexec_fn=in_namespace, **popen_kwargs)
        with self._lock:
            self.spawned.append(Spawned(endpoint, list(argv), proc, bool(group), critical))
        return proc

    def fork(self, endpoint: str, namespace: str | None, zygote: Zygote, module: str, args: Sequence[str],
             env: dict[str, str], cwd: str, log: Any, critical: bool = True,
             fds: Mapping[int, int] | None = None) -> ForkedProcess:
        """``python -m module args`` forked by ``zygote`` in its own session (and ``namespace``), writing to ``log``,
        inheriting ``fds`` (its descriptor -> ours); watched and killed like a spawned process."""
        proc = zygote.spawn(module, args, env, cwd, log.fileno(), log.fileno(),
                            None if namespace is None else namespace_path(namespace), fds)
        with self._lock:
            self.spawned.append(Spawned(endpoint, ["python", "-m", module, *args], proc, True, critical))
        return proc

    def watch(self) -> None:
        self._watcher = threading.Thread(target=self._watch, name=f"{self.name}-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        """Notice a crashed critical process and report it once."""
        while not self._stop.wait(0.05):
            with self._lock:
                crashed = [s for s in self.spawned if s.critical and s.proc.poll() not in (None, 0)]
            if crashed:
                s = crashed[0]
                rc = s.proc.returncode
                how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
                self.on_crash(f"process {s.proc.pid} {s.argv[:3]} on {s.endpoint} died with {how}")
                return

    def stop_watching(self) -> None:
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)

    def kill_all(self) -> None:
        """SIGTERM, a grace, then SIGKILL, to each process group; children left in a group go too."""
        self._stop.set()
        with self._lock:
            spawned = list(self.spawned)
        alive = [s for s in spawned if s.proc.poll() is None]
        for sig, grace in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0)):
            for s in alive:
                try:
                    os.killpg(s.proc.pid, sig) if s.group else s.proc.send_signal(sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            for s in alive:
                try:
                    s.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            alive = [s for s in alive if s.proc.poll() is None]
            if not alive:
                break
        for s in spawned:  # a process that exited by itself may have left children in its group
            if s.group:
                try:
                    os.killpg(s.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
