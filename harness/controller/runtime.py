"""The controller side of split inference: start workers in their namespaces, drive a scenario, collect spans.

It starts, feeds and stops the workers and hands their reports to the load generator (``harness.loadgen``), which
owns the clock, the schedule, the dilation and the verdict: workers only compute, send and report spans on their
monotonic clocks. Workers on other machines count from their own boot: at set-up each remote worker's clock offset is
estimated (``loadgen.clock``) and every stamp it reports converted into the controller's clock.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import signal
import socket
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Protocol, Union

from torch import nn

from harness.worker import auth, wire
from harness.worker.sealed import SealedSocket
from harness.loadgen.clock import ClockEstimate, estimate_clock, to_controller_clock
from harness.loadgen.dilation import AutoTdf, Dilation, Repeats, calibrated_tdf
from harness.loadgen.errors import RunFailed
from harness.loadgen.result import RunResult
from harness.loadgen.schedule import absorb, drive, wait_all
from harness.controller.experiment import Runtime, Scenario
from harness.controller.phases import count, note, phase
from harness.controller.probe import probe_link
from harness.network.link import LinkSpec
from harness.network.base import Network
from harness.network.remote import RemoteNetwork
from harness.network.topology import Topology
from harness.network.zygote import Zygote, shared_zygote
from harness.model.models import ModelSpec
from harness.model.weights import WEIGHTS_FD_ENV, spec_key, write_shared

from harness import PROJECT_ROOT

HANDSHAKE_TIMEOUT_S = 30.0
WORKER_IMPORTS = ("harness.worker.serve",)  # what the worker zygote imports once (torch, torchvision, the worker)


# How long a worker's error report waits for a peer's death to become visible (see Controller._blame).
PEER_DEATH_GRACE_S = 1.0


@dataclass
class WorkerSpec:
    """One endpoint to start: its name and its setup message (without the transport details)."""

    endpoint: str
    setup: dict[str, Any]


Secrets = Union[str, Mapping[str, str], None]  # one for every worker, one per endpoint, or None: this run's own


@dataclass(frozen=True)
class Deployment:
    """What a job's strategy puts on the network: its endpoints and their links, one worker per endpoint, the
    endpoint every inference enters at, and how many inferences it keeps in flight (a spatial plan's batch may ask
    for more than the scenario does)."""

    endpoints: list[str]
    links: list[tuple[str, str, LinkSpec]]
    workers: list[WorkerSpec]
    first: str
    in_flight: int = 1
    compensate_headers: bool = True  # the link config's: raise the kernel rate so TCP payload gets the bandwidth


# What a run calls once its workers are up, for the hook it calls before issuing each inference (a dynamic run's
# re-decision, a test's fault).
MakeHook = Callable[[Topology, "Controller", RunResult], Callable[[int], None]]


def worker_environment(token: str = "") -> dict[str, str]:
    """The environment of a worker this machine starts: one thread until the worker sets its own, allocations
    returned to the OS (so its peak RSS is honest), the run's secret (in the environment: ps shows command lines)."""
    env = {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SPLITBENCH_WORKER": "1",
           "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed weights go back to the OS, so peak RSS is honest
    env.pop(WEIGHTS_FD_ENV, None)  # only a descriptor this controller passes
    if token:
        env["SPLITBENCH_TOKEN"] = token
    else:
        env.pop("SPLITBENCH_TOKEN", None)
    return env


WEIGHTS_FD = 3  # where a local worker finds the weights its controller wrote (harness.model.weights)
_shared_weights: list[tuple[str, int]] = []  # the last model shared: (spec key, memory file)


def share_weights(spec: ModelSpec, module: nn.Module) -> None:
    """Let the local workers started from now on map ``module``'s weights for ``spec`` instead of drawing them
    again from the seed (``harness.model.weights``); the memory file of the model shared before is closed."""
    key = spec_key(spec)
    if _shared_weights and _shared_weights[0][0] == key:
        return
    for _, fd in _shared_weights:
        os.close(fd)
    _shared_weights[:] = [(key, write_shared(spec, module))]


def worker_zygote() -> Zygote:
    """This process's worker zygote: torch, torchvision and the worker imported once, each worker forked from it
    (started now where there is none; a job that will start workers calls this early, to import beside its own work)."""
    return shared_zygote(WORKER_IMPORTS, worker_environment(), str(PROJECT_ROOT))


class WorkerHandle:
    """One endpoint's worker as the controller holds it: its process (None for a board's), its control
    connection (None until connected) and its log."""

    def __init__(self, name: str, process: Any, sock: socket.socket | None, log_path: Path) -> None:
        self.name, self.process, self.sock, self.log_path = name, process, sock, log_path
        self.link: SealedSocket | None = None  # the control connection once authenticated: every frame sealed
        self.clock = ClockEstimate()  # a local worker reads this machine's clock

    def hang_up(self) -> None:
        """Close the control connection: a worker kept alive for more jobs exits when it sees it closed."""
        if self.sock is not None:
            self.sock.close()

    def crash_reason(self) -> str | None:
        """Why the worker's process ended (its exit code and last log lines), or None while it runs."""
        if self.process is None:  # a remote worker: a lost connection is how it fails
            return None
        code = self.process.poll()
        if code is None:
            return None
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-8:] if self.log_path.exists() else []
        return f"worker {self.name!r} exited with code {code}: " + " | ".join(tail)


class Controller:
    """Starts one worker per endpoint inside ``topology`` (or dials the boards) and talks to each over its control
    connection: a Unix socket to a worker it spawned, TCP to a board."""

    worker_args: tuple[str, ...] = ("--once",)  # a worker serves this one run and exits after ``stop``

    def __init__(self, topology: Network, workers: list[WorkerSpec], runtime: Runtime, token: Secrets = None,
                 tmp: Path | None = None) -> None:
        self.topology = topology
        self.workers = workers
        self.timeout_s = runtime.timeout_s
        self.max_payload = runtime.max_payload
        # The control channel's secret: this run's own for the workers it spawns, or the boards' (one per board).
        self.token = token if isinstance(token, str) and token else secrets.token_hex(16)
        self.board_secrets = dict(token) if isinstance(token, Mapping) else {}
        self.link_token = secrets.token_hex(16)  # the workers' data links: this run's only, never the boards' secret
        self.compute_device = runtime.compute_device
        self.link_timeout_s = runtime.link_timeout_s
        self.devices: dict[str, str] = {}  # endpoint -> the processor it computed on (from its "built" report)
        self.tmp = tmp or Path(tempfile.mkdtemp(prefix="splitbench-"))  # control sockets and worker logs
        self.endpoints: dict[str, WorkerHandle] = {}
        self.on_retime: list[Callable[[float], None]] = []
        self.selector = selectors.DefaultSelector()
        self.stopped: set[str] = set()  # endpoints that said 'stopped': their exit is no crash
        # compute key -> each endpoint's calibration samples, for workers that live on (a sweep's pool); None: none
        self.calibrations: dict[str, dict[str, list[dict[str, Any]]]] | None = None
        self.deadline = time.monotonic() + runtime.timeout_s

    def start(self) -> None:
        if not self.topology.local:
            self._start_remote()
            return
        for w in self.workers:
            self.endpoints[w.endpoint] = self.worker_for(w.endpoint)
        for ep in self.endpoints.values():
            if ep.sock is None:  # a new worker: connect and answer its challenge (the secret reached it by env)
                ep.sock = self._connect(self.tmp / f"{ep.name}.sock", ep)
                self._login(ep)
        self._set_up()

    def worker_for(self, endpoint: str) -> WorkerHandle:
        """The worker that serves ``endpoint`` in this run: a new one (a sweep's pool hands out its live ones)."""
        return self.spawn(endpoint)

    def spawn(self, endpoint: str) -> WorkerHandle:
        """Start ``endpoint``'s worker in its namespace, forked by this process's worker zygote (its imports done
        once); it listens on a Unix control socket in ``self.tmp``."""
        count("workers_started")
        env = worker_environment(self.token)
        path = self.tmp / f"{endpoint}.sock"
        log_path = self.tmp / f"{endpoint}.log"
        # The harness's own workers build whatever model this run names: the user chose it here.
        args = [*self.worker_args, "--control", f"unix:{path}", "--allow-models", "*"]
        fds = {}
        if _shared_weights:
            fds[WEIGHTS_FD] = _shared_weights[0][1]
            env[WEIGHTS_FD_ENV] = str(WEIGHTS_FD)
        with log_path.open("w") as log:
            proc = self.topology.fork(  # type: ignore[attr-defined]  (local: a Topology)
                endpoint, worker_zygote(), "harness.worker", args, env, str(PROJECT_ROOT), log, fds=fds)
        return WorkerHandle(endpoint, proc, None, log_path)

    def _start_remote(self) -> None:
        for w in self.workers:
            try:
                address = self.topology.control(w.endpoint)
            except KeyError as exc:
                raise RunFailed(exc.args[0]) from exc
            try:
                sock = socket.create_connection(address, timeout=30)
            except OSError as exc:
                raise RunFailed(f"cannot reach the worker of {w.endpoint!r} at {address}: {exc}") from exc
            ep = self.endpoints[w.endpoint] = WorkerHandle(w.endpoint, None, sock, self.tmp / f"{w.endpoint}.log")
            self._login(ep)
            assert ep.link is not None
            try:
                sock.settimeout(HANDSHAKE_TIMEOUT_S)
                ep.clock = estimate_clock(ep.link)
                sock.settimeout(None)
            except (wire.FrameError, wire.ConnectionClosed, OSError) as exc:
                raise RunFailed(f"worker {w.endpoint!r} at {address}: clock estimation failed: {exc}") from exc
        self._set_up()

    def _login(self, ep: WorkerHandle) -> None:
        """Mutual challenge-response (the secret never crosses the wire); from then on the connection is sealed."""
        try:
            ep.sock.settimeout(HANDSHAKE_TIMEOUT_S)
            ep.link = auth.login(ep.sock, self.board_secrets.get(ep.name, self.token))
            ep.sock.settimeout(None)
        except (auth.AuthError, wire.FrameError, wire.ConnectionClosed, OSError) as exc:
            raise RunFailed(ep.crash_reason() or f"worker {ep.name!r}: {exc}") from exc

    def clocks(self) -> dict[str, dict[str, float]]:
        """The clock estimate of every remote worker (local workers share this machine's clock)."""
        return {name: ep.clock.record() for name, ep in self.endpoints.items() if ep.process is None}

    def _set_up(self) -> None:
        """Send every worker its setup (with this run's data-link token) and wait until all are ready."""
        for w in self.workers:
            ep = self.endpoints[w.endpoint]
            self.link(ep).send_json(self.setup_message(ep, {**w.setup, "token": self.link_token,
                                                            "compute_device": self.compute_device,
                                                            "link_timeout_s": self.link_timeout_s}))
            self.selector.register(ep.sock, selectors.EVENT_READ, ep)
        pending = set(self.endpoints)
        while pending:
            ep, frame = self.next_message()
            if frame.kind == wire.Kind.JSON and frame.obj.get("event") == "built":
                self.devices[ep.name] = str(frame.obj.get("device", ""))
            if frame.kind == wire.Kind.JSON and frame.obj.get("event") == "ready":
                pending.discard(ep.name)

    def setup_message(self, ep: WorkerHandle, setup: dict[str, Any]) -> dict[str, Any]:
        """The message that gives an authenticated worker its setup."""
        return {"setup": setup}

    def _connect(self, path: Path, ep: WorkerHandle) -> socket.socket:
        while True:
            if (reason := ep.crash_reason()) is not None:
                raise RunFailed(reason)
            if time.monotonic() > self.deadline:
                raise RunFailed(f"worker {ep.name!r} did not open its control socket in time")
            if path.exists():
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(str(path))
                    return sock
                except OSError:
                    sock.close()
            time.sleep(0.02)

    @staticmethod
    def link(ep: WorkerHandle) -> SealedSocket:
        if ep.link is None:
            raise RunFailed(f"worker {ep.name!r} was never authenticated")
        return ep.link

    def send(self, endpoint: str, obj: dict[str, Any]) -> None:
        self.link(self.endpoints[endpoint]).send_json(obj)

    def next_message(self) -> tuple[WorkerHandle, wire.Frame]:
        """The next frame from any worker; raises :class:`RunFailed` on a crash, an error report or the timeout."""
        while True:
            crashed = [(ep.process.returncode == -signal.SIGTERM, reason) for ep in self.endpoints.values()
                       if ep.name not in self.stopped and (reason := ep.crash_reason()) is not None]
            if crashed:
                # The teardown that follows a crash SIGTERMs the others: the first cause is the one not so ended.
                raise RunFailed("; then ".join(reason for _, reason in sorted(crashed, key=lambda c: c[0])))
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise RunFailed(f"timeout: the run exceeded runtime.timeout_s={self.timeout_s:g} s")
            for key, _ in self.selector.select(timeout=min(remaining, 0.5)):
                ep = key.data
                try:
                    frame = self.link(ep).recv_frame(self.max_payload)
                except wire.ConnectionClosed:
                    time.sleep(0.2)  # let the process finish exiting so the crash check sees its code
                    raise RunFailed(self._blame(ep, ep.crash_reason() or
                                                f"worker {ep.name!r} closed its control connection"))
                if frame.kind == wire.Kind.JSON and frame.obj.get("event") == "error":
                    raise RunFailed(self._blame(ep, f"worker {ep.name!r}: {frame.obj.get('reason')}"))
                if ep.process is None:
                    frame = to_controller_clock(frame, ep.clock, time.monotonic_ns())
                return ep, frame

    def _blame(self, reporter: WorkerHandle, report: str) -> str:
        """A worker's error is often the echo of a peer's death (a reset connection): a dead peer is named first.

        A killed peer's sockets close before its exit is reaped, so the echo can arrive first: peers get a
        short grace to be seen dead before the report is taken as the cause.
        """
        peers = [ep for ep in self.endpoints.values()
                 if ep is not reporter and ep.process is not None and ep.name not in self.stopped]
        grace_end = time.monotonic() + PEER_DEATH_GRACE_S
        while True:
            dead = [reason for ep in peers if (reason := ep.crash_reason())]
            if dead or not peers or time.monotonic() > grace_end:
                return "; ".join([*dead, f"then {report}"]) if dead else report
            time.sleep(0.02)

    def stop(self, result: RunResult) -> None:
        for name in self.endpoints:
            self.send(name, {"cmd": "stop"})
        pending = set(self.endpoints)
        while pending:
            ep, frame = self.next_message()
            if frame.kind == wire.Kind.JSON and frame.obj.get("event") == "stopped":
                result.peak_rss_mb[ep.name] = float(frame.obj["peak_rss_mb"])
                result.model_rss_mb[ep.name] = float(frame.obj["peak_rss_mb"]) - float(frame.obj["baseline_rss_mb"])
                pending.discard(ep.name)
                self.stopped.add(ep.name)
                self.selector.unregister(ep.sock)  # it exits now: its end-of-stream is not a failure
            else:
                absorb(frame, result)
        self.after_stop()

    def after_stop(self) -> None:
        """Workers that served their one run exit now (a sweep's pool keeps them waiting for the next job)."""
        for ep in self.endpoints.values():
            if ep.process is not None:
                ep.process.wait(timeout=30)

    def worker_logs(self) -> dict[str, str]:
        """The last lines each worker wrote: kept with a failed run, so its reason can be read later."""
        return {name: "\n".join(ep.log_path.read_text(errors="replace").splitlines()[-200:])
                for name, ep in self.endpoints.items() if ep.log_path.exists()}

    def close(self) -> None:
        self.selector.close()
        self.end_workers()

    def end_workers(self) -> None:
        """Hang up on the workers, end any still running, remove their control sockets and logs (a sweep's pool
        keeps them for the next job)."""
        for ep in self.endpoints.values():
            ep.hang_up()
            if ep.process is not None and ep.process.poll() is None:
                ep.process.kill()
                ep.process.wait(timeout=10)
        for path in self.tmp.iterdir():
            path.unlink(missing_ok=True)
        self.tmp.rmdir()


def retime(controller: Controller, topology: Topology, links: list[tuple[str, str, LinkSpec]], result: RunResult,
           tdf: float) -> None:
    """Run on at a new TDF, with nothing in flight: links at their current rates re-dilated, new budgets, delays."""
    if tdf == result.tdf:
        return
    topology.tdf = tdf
    for a, b, _ in links:
        topology.set_rate(a, b, topology.bandwidth_mbps(a, b))  # the rate now: a trace may have moved it
    for name in controller.endpoints:
        peers = {p: topology.pacer_config(name, p) for a, b, _ in links for p in (a, b)
                 if name in (a, b) and p != name}
        controller.send(name, {"cmd": "retime", "tdf": tdf, "pacers": peers})
    wait_all(controller, "retimed", result)
    for listener in controller.on_retime:
        listener(tdf)
    result.tdf = tdf


# Setup keys that do not change what a calibration times: the TDF, pacing, peers' addresses, an injected stall (it
# stalls inferences, never a calibration's replays).
NOT_COMPUTE = frozenset({"tdf", "pad", "pacer", "pacers", "listen", "connect", "peers", "stall"})


def compute_key(controller: Controller, group: list[str], auto: AutoTdf) -> str:
    """What a calibration of ``group`` measured: the parts its workers compute at once, on which processor, how
    often. Two jobs with the same key time the same code in the same processes."""
    setups = {w.endpoint: {k: v for k, v in w.setup.items() if k not in NOT_COMPUTE}
              for w in controller.workers if w.endpoint in group}
    return json.dumps([setups, controller.compute_device, auto.repeats, auto.together], sort_keys=True, default=str)


def calibrate(controller: Controller, topology: Topology, links: list[tuple[str, str, LinkSpec]],
              result: RunResult, auto: AutoTdf) -> None:
    """After the warm-up: every worker times its own part on the warm-up's inputs, together when they compute at
    once in this run, else one after another; the run goes on at the TDF their measurements need. Kept-alive
    workers (a sweep) that already timed the same parts at once reuse those times (``calibration.json``:
    ``reused``), unless an inference overran since."""
    samples: dict[str, list[dict[str, Any]]] = {}
    reused: list[str] = []
    cache = controller.calibrations
    for group in [list(controller.endpoints)] if auto.together else [[e] for e in controller.endpoints]:
        key = compute_key(controller, group, auto)
        if cache is not None and key in cache:
            samples.update(cache[key])
            reused += group
            continue
        for name in group:
            controller.send(name, {"cmd": "calibrate", "repeats": auto.repeats})
        measured = {e: r["samples"] for e, r in wait_all(controller, "calibrated", result, group).items()}
        samples.update(measured)
        if cache is not None:
            cache[key] = measured
    result.calibration = {"tdf_before": result.tdf, **calibrated_tdf(samples, auto), "reused": reused}
    if "tdf" in result.calibration:
        retime(controller, topology, links, result, result.calibration["tdf"])


class Pool(Protocol):
    """Live workers and topology kept across a sweep's jobs (``harness.controller.session.WorkerPool``)."""

    def job(self, deployment: Deployment, tdf: float, backend: str | None) -> ContextManager[Topology]: ...

    def controller(self, topology: Topology, workers: list[WorkerSpec], runtime: Runtime) -> Controller: ...


def run_workers(deployment: Deployment, scenario: Scenario, runtime: Runtime, dilation: Dilation,
                make_hook: MakeHook | None = None, progress: bool = True, pool: Pool | None = None) -> RunResult:
    """Build the topology, run the scenario's inferences through the workers, tear everything down.

    The scenario gives the warm-up and the measured inferences; the deployment how many are in flight. The run
    starts at ``dilation.tdf`` (not ``runtime.tdf``: a job on real boards runs undilated whatever it says). With
    ``runtime.remote`` (endpoint -> ``tcp:HOST:PORT``), the workers already run on real machines: nothing is
    spawned, shaped or dilated, and they must have been started with ``runtime.token`` (one secret per endpoint).
    With ``dilation.auto``, the workers calibrate the TDF after the warm-up, and a measured inference that overruns
    is repeated at a higher TDF. With ``pool`` (a sweep), the topology and the workers are the pool's: kept for the
    next job, reset for this one.
    """
    requested = None if runtime.backend == "auto" else runtime.backend
    pooled = pool is not None and not runtime.remote
    with ExitStack() as stack:
        with phase("network"):
            if pooled:
                network: Any = pool.job(deployment, dilation.tdf, requested)
            else:
                network = RemoteNetwork(runtime.remote) if runtime.remote else Topology(
                    deployment.endpoints, deployment.links, tdf=dilation.tdf, backend=requested,
                    compensate_headers=deployment.compensate_headers)
            topology = stack.enter_context(network)
        controller = (pool.controller(topology, deployment.workers, runtime) if pooled else
                      Controller(topology, deployment.workers, runtime, runtime.token))
        return _run_on(topology, controller, deployment, scenario, dilation, make_hook, progress)


def _run_on(topology: Network, controller: Controller, deployment: Deployment, scenario: Scenario,
            dilation: Dilation, make_hook: MakeHook | None, progress: bool) -> RunResult:
    """Probe the links, start (or reset) the workers, drive the scenario, stop the workers."""
    for w in controller.workers:  # transport details depend on the topology: fill them in now
        w.setup = _resolve_addresses(w.setup, topology)
    links, auto_tdf = deployment.links, dilation.auto
    result = RunResult(tdf=dilation.tdf, backend=topology.backend, warmup=scenario.warmup,
                       link_record=topology.record())
    if topology.local:
        with phase("network"):
            result.probe_mbps = {f"{a}-{b}": probe_link(topology, a, b) for a, b, _ in links}
    try:
        with phase("workers"):
            controller.start()
        result.clocks, result.devices = controller.clocks(), dict(controller.devices)
        hook = make_hook(topology, controller, result) if make_hook else None
        after_warmup, repeats = None, None
        if auto_tdf is not None and topology.local:
            after_warmup = lambda: calibrate(controller, topology, list(links), result, auto_tdf)  # noqa: E731
            repeats = Repeats(auto_tdf.tolerance_pct, auto_tdf.max_repeats,
                              lambda tdf: retime(controller, topology, list(links), result, tdf))
        with phase("inference"):
            drive(controller, deployment.first, scenario.total, scenario.warmup, deployment.in_flight, result, hook,
                  progress, after_warmup, repeats)
            controller.stop(result)
        if result.repeats and controller.calibrations is not None:
            controller.calibrations.clear()  # an inference overran its calibrated budget: the next job times again
        note("dilated_s", sum(end - result.starts_ns[s] for s, end in result.ends_ns.items()
                              if s in result.starts_ns) / 1e9)
    except RunFailed as exc:
        exc.worker_logs = controller.worker_logs()
        if getattr(topology, "failure", None):
            exc.args = (f"{exc.args[0]} ({topology.failure})",)
        raise
    finally:
        controller.close()
    return result


def _resolve_addresses(setup: dict[str, Any], topology: Topology) -> dict[str, Any]:
    """Replace ``{"listen": peer}`` / ``{"connect": peer}`` placeholders with the topology's addresses."""
    setup = dict(setup)
    me = setup["endpoint"]
    for key in ("listen", "connect"):
        if key in setup and isinstance(setup[key], dict):
            peer, port = setup[key]["peer"], int(setup[key]["port"])
            host = topology.address(me, peer) if key == "listen" else topology.address(peer, me)
            setup[key] = [host, port]
    if "pacer" in setup and isinstance(setup["pacer"], dict) and "peer" in setup["pacer"]:
        setup["pacer"] = topology.pacer_config(me, setup["pacer"]["peer"])
    if "peers" in setup:  # a spatial host dials every secondary
        setup["peers"] = {e: [topology.address(e, me), int(p["port"])] for e, p in setup["peers"].items()}
    if "pacers" in setup:
        setup["pacers"] = {e: topology.pacer_config(me, p["peer"]) for e, p in setup["pacers"].items()}
    return setup


