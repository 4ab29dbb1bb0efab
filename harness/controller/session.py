"""What a sweep's jobs reuse (``python run.py -m``: Hydra's basic launcher runs them one after another in this
process): the traced graph, local node times and reference outputs per model spec, and -- while the model, the
endpoints and their links' layout stay the same -- the live topology and workers, reset with each job's plan,
TDF and link rates.

A job's record does not depend on what was reused; what a job reuses is only what the same spec and seed would
rebuild identically. A job that fails leaves nothing in doubt for the next: the pool drops its topology and
workers, and the next job builds them afresh. On exit or a signal the topology removes everything it made.
"""

from __future__ import annotations

import atexit
import json
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from hardware.profiles import LocalProfile
from harness.controller.predict import graph_of
from harness.controller.experiment import Runtime
from harness.controller.runtime import Controller, Deployment, WorkerHandle, WorkerSpec
from harness.model.graph import ModelGraph, build_graph
from harness.model.models import ModelSpec, make_input
from harness.network.topology import Topology


def spec_key(spec: ModelSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


class ModelCache:
    """Per model spec (one at a time: a VGG-16 holds half a gigabyte): the traced graph with its random weights,
    the local node times per thread count, and the whole model's output on each input (the correctness
    reference). With ``keep=False`` nothing is kept: every job builds its own, as a single run does."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.key: str | None = None
        self._graph: ModelGraph | None = None
        self._local_ms: dict[int, dict[str, float]] = {}
        self._references: dict[int, torch.Tensor] = {}

    def graph(self, spec: ModelSpec) -> ModelGraph:
        key = spec_key(spec)
        if self.key != key or self._graph is None or not self.keep:
            self.key, self._graph, self._local_ms, self._references = None, None, {}, {}
            # a sweep shares the graph its jobs' predictions traced (runtime.max_real_minutes): one copy per spec
            self._graph, self.key = graph_of(spec) if self.keep else build_graph(spec), key
        return self._graph

    def local_ms(self, graph: ModelGraph, threads: int) -> dict[str, float]:
        """This machine's node times (``LocalProfile``, itself cached on disk between processes)."""
        if threads not in self._local_ms or graph is not self._graph:
            self._local_ms[threads] = LocalProfile(threads=threads).node_ms(graph)
        return self._local_ms[threads]

    def reference(self, graph: ModelGraph, seq: int) -> torch.Tensor:
        """The whole model's output on input ``seq``, run here."""
        if seq not in self._references or graph is not self._graph:
            with torch.no_grad():
                self._references[seq] = graph.module(make_input(graph.spec, seq))
        return self._references[seq]


class PooledController(Controller):
    """A job's controller over the pool's workers: a live worker gets a ``reset`` with the job's setup, a missing or
    exited one is spawned; after ``stop`` they wait for the next job instead of exiting."""

    worker_args = ("--once", "--keep-alive")

    def __init__(self, pool: "WorkerPool", topology: Topology, workers: list[WorkerSpec], runtime: Runtime) -> None:
        super().__init__(topology, workers, runtime, pool.token, pool.tmp)
        self.pool = pool
        self.calibrations = pool.calibrations

    def worker_for(self, endpoint: str) -> WorkerHandle:
        return self.pool.worker(endpoint, self.spawn)

    def setup_message(self, ep: WorkerHandle, setup: dict[str, Any]) -> dict[str, Any]:
        if ep.name in self.pool.served:
            return {"cmd": "reset", "setup": setup}  # on the connection it authenticated when it first connected
        return super().setup_message(ep, setup)

    def after_stop(self) -> None:
        self.pool.served.update(self.endpoints)  # they now wait for the next job's setup

    def end_workers(self) -> None:
        pass  # the workers, their control sockets and logs stay with the pool


class WorkerPool:
    """The live topology and workers of a sweep, kept while what they were built for stays the same."""

    def __init__(self) -> None:
        self.models = ModelCache()
        self.key: tuple[Any, ...] | None = None
        self.topology: Topology | None = None
        self.workers: dict[str, WorkerHandle] = {}
        self.served: set[str] = set()  # workers that finished a job and wait for a reset
        self.token = ""
        self.tmp: Path | None = None
        self.builds = 0  # topologies built: a test reads how often the pool started afresh
        self.calibrations: dict[str, dict[str, list[dict[str, Any]]]] = {}  # what live workers timed (runtime.calibrate)

    @contextmanager
    def job(self, deployment: Deployment, tdf: float, backend: str | None) -> Iterator[Topology]:
        """The topology for one job, reshaped to its TDF and link facts; any failure inside drops everything."""
        setup = deployment.workers[0].setup
        key = (tuple(deployment.endpoints), tuple((a, b) for a, b, _ in deployment.links), backend,
               deployment.compensate_headers,
               json.dumps({k: setup.get(k) for k in ("kind", "model", "threads", "max_payload")}, sort_keys=True))
        if key != self.key or self.topology is None or not self.topology.up:
            self.close()
            self._open(key, deployment, tdf, backend)
        else:
            assert self.topology is not None
            self.topology.tdf = tdf
            for a, b, spec in deployment.links:
                self.topology.set_link(a, b, spec)
        try:
            assert self.topology is not None
            yield self.topology
        except BaseException:
            self.close()  # a worker or link in doubt: the next job starts clean
            raise

    def _open(self, key: tuple[Any, ...], deployment: Deployment, tdf: float, backend: str | None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="splitbench-pool-"))
        self.token = secrets.token_hex(16)
        topology = Topology(deployment.endpoints, deployment.links, tdf=tdf, backend=backend,
                            compensate_headers=deployment.compensate_headers)
        topology.start()
        self.topology, self.key = topology, key
        self.builds += 1

    def controller(self, topology: Topology, workers: list[WorkerSpec], runtime: Runtime) -> Controller:
        return PooledController(self, topology, workers, runtime)

    def worker(self, endpoint: str, spawn: Callable[[str], WorkerHandle]) -> WorkerHandle:
        """``endpoint``'s live worker, or one ``spawn`` starts where there is none or it exited."""
        live = self.workers.get(endpoint)
        if live is not None and live.process.poll() is None:
            return live
        return self.replace_worker(endpoint, spawn)

    def replace_worker(self, endpoint: str, spawn: Callable[[str], WorkerHandle]) -> WorkerHandle:
        """Spawn ``endpoint``'s worker, in place of one that exited."""
        old = self.workers.pop(endpoint, None)
        if old is not None:
            old.hang_up()
        self.served.discard(endpoint)
        self.calibrations.clear()  # a new process: its parts are timed afresh
        assert self.tmp is not None
        (self.tmp / f"{endpoint}.sock").unlink(missing_ok=True)
        self.workers[endpoint] = spawn(endpoint)
        return self.workers[endpoint]

    def close(self) -> None:
        """Hang up on the workers (they exit), then remove the topology, its processes and the sockets' folder."""
        for ep in self.workers.values():
            ep.hang_up()
        self.workers.clear()
        self.served.clear()
        self.calibrations.clear()
        if self.topology is not None:
            self.topology.stop()
            self.topology = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        self.key = None


_pool: WorkerPool | None = None


def worker_pool() -> WorkerPool:
    """This process's pool, made on first use and closed at exit."""
    global _pool
    if _pool is None:
        _pool = WorkerPool()
        atexit.register(release_pool)
    return _pool


def release_pool() -> None:
    """Close this process's pool, if any (a job that does not reuse frees what the last one kept)."""
    global _pool
    if _pool is not None:
        _pool.close()
        _pool = None
