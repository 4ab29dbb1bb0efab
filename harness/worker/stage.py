"""What every worker stage shares: the clock, the timeline, time-dilation budgets, the control connection and
the dialling of data links."""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from harness.model.graph import ModelGraph, graph_from_module
from harness.model.memory import collector_paused, keep_activations_resident
from harness.model.models import ModelSpec, build_model, make_input
from harness.model.weights import WEIGHTS_FD_ENV, load_shared
from harness.worker import wire
from harness.worker.gate import Admitted, Gate
from harness.worker.sealed import SealedSocket

log = logging.getLogger("splitbench.worker")

_kept: dict[str, ModelGraph] = {}  # a kept-alive worker's model, built once per spec (one spec at a time)
_keeping = False


def keep_models() -> None:
    """From now on this worker keeps the last model it built for the runs that follow (a sweep's workers)."""
    global _keeping
    _keeping = True


def model_graph(spec: ModelSpec) -> ModelGraph:
    """The model's fx graph with its random weights, built from the spec (and its seed) -- or, in a kept-alive
    worker, the one already built for the same spec: same spec, same weights."""
    key = json.dumps(spec.to_dict(), sort_keys=True)
    if key in _kept:
        return _kept[key]
    _kept.clear()  # another model: let the last one go before building this one
    shared = _shared_weights(spec)
    graph = graph_from_module(shared if shared is not None else build_model(spec), spec)
    if _keeping:
        _kept[key] = graph
    return graph


def _shared_weights(spec: ModelSpec) -> torch.nn.Module | None:
    """The model its controller built, mapped from the memory file this local worker inherited (once: a later model
    of a kept-alive worker is built from its seed); None on a board, or where the file holds another model."""
    fd = os.environ.pop(WEIGHTS_FD_ENV, "")
    if not fd.isdigit():
        return None
    try:
        return load_shared(spec, int(fd))
    finally:
        try:
            os.close(int(fd))
        except OSError:
            pass


def now_ns() -> int:
    return time.monotonic_ns()


@contextmanager
def quiet_for_measurement() -> Iterator[None]:
    """While a stage serves: keep the activations' memory resident and the garbage collector out of inferences
    (``harness.model.memory``, the policy the profiler measures under).

    Workers start with a small mmap threshold so that freed weights go back to the OS (an honest peak RSS); once
    the model is built, freed activations stay in the heap for the next inference. The collector runs again when
    the stage is done (a board's worker serves run after run).
    """
    keep_activations_resident()
    with collector_paused():
        yield


def time_repeats(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Real milliseconds of ``repeats`` calls of ``fn`` after an untimed one, in this process (a worker calibrating
    its own part)."""
    times = []
    with torch.no_grad():
        fn()
        for _ in range(repeats):
            start = now_ns()
            fn()
            times.append((now_ns() - start) / 1e6)
    return times


def injected_stall(setup: dict[str, Any], seq: int) -> None:
    """A real stall in this worker's compute of inference ``seq`` when the setup asks for one (``stall``:
    ``{"from_seq", "count" (None: every one from then), "ms"}``, ``ms`` emulated, so dilated by the TDF as the
    budget is: a stall overruns by as much at any TDF). How the verdict and the repeats are tested."""
    stall = setup.get("stall")
    if not stall:
        return
    first, count = int(stall["from_seq"]), stall.get("count")
    if seq >= first and (count is None or seq < first + int(count)):
        time.sleep(float(stall["ms"]) * float(setup["tdf"]) / 1e3)


def reset_peak_rss() -> None:
    """Reset VmHWM so that the peak we report covers inference, not model construction."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident memory since the last :func:`reset_peak_rss`."""
    return _status_mb("VmHWM")


def rss_mb() -> float:
    """Resident memory now."""
    return _status_mb("VmRSS")


class Inputs:
    """The run's inputs, each drawn before the inference that takes it is issued: a camera's frame is there when
    an inference starts, so drawing the synthetic one (half a millisecond at 224x224 here) must not count in its
    latency. The first part draws the next input between inferences; an unexpected sequence number is drawn on
    demand."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.lock = threading.Lock()
        self.ready: dict[int, torch.Tensor] = {}
        self.next_seq = 0
        self.prepare_next()

    def take(self, seq: int) -> torch.Tensor:
        with self.lock:
            ready = self.ready.pop(seq, None)
            self.next_seq = max(self.next_seq, seq + 1)
        return ready if ready is not None else make_input(self.spec, seq)

    def prepare_next(self) -> None:
        """Draw the input of the inference after the last one taken, unless it is drawn already."""
        seq = self.next_seq
        if seq in self.ready:
            return
        made = make_input(self.spec, seq)
        with self.lock:
            self.ready = {seq: made}


@dataclass
class Timeline:
    """Spans recorded by this worker for one inference: compute, pad, send, recv."""

    endpoint: str
    spans: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seq: int, kind: str, start: int, end: int, **extra: Any) -> None:
        with self.lock:
            self.spans.append({"seq": seq, "endpoint": self.endpoint, "kind": kind, "start_ns": start,
                               "end_ns": end, **extra})

    def take(self, seq: int) -> list[dict[str, Any]]:
        with self.lock:
            mine = [s for s in self.spans if s["seq"] == seq]
            self.spans = [s for s in self.spans if s["seq"] != seq]
        return mine


class Budget:
    """Time dilation: pad real compute up to the emulated device's time × TDF.

    The stage only reports by how much real compute overran its budget; the controller decides what that means.
    """

    def __init__(self, budget_ms: float, tdf: float, pad: bool) -> None:
        self.budget_ms = budget_ms
        self.budget_ns = int(budget_ms * tdf * 1e6)
        self.pad = pad and self.budget_ns > 0  # a part with no emulated cost (views only) is not padded

    def finish(self, timeline: "Timeline", seq: int, start_ns: int, **extra: Any) -> int:
        """Record the compute span that began at ``start_ns``, sleep out the budget, record the pad; returns the end."""
        real_end = now_ns()
        overrun = 0.0
        if self.pad:
            deadline = start_ns + self.budget_ns
            overrun = max(0.0, (real_end - deadline) / self.budget_ns)
            while (remaining := deadline - now_ns()) > 0:
                time.sleep(remaining / 1e9 if remaining > 2_000_000 else 0)
        # predicted_ms: the profile's time of this part, which an unpadded run (TDF 1) holds its real compute to
        timeline.add(seq, "compute", start_ns, real_end, overrun=overrun,
                     budget_ms=self.budget_ms if self.pad else 0.0, predicted_ms=self.budget_ms, **extra)
        end = now_ns() if self.pad else real_end
        if end > real_end and self.pad:
            timeline.add(seq, "pad", real_end, end, **extra)
        return end


def to_device(values: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Received tensors (CPU) onto the compute device."""
    if device.type == "cpu":
        return values
    return {name: value.to(device, non_blocking=True) for name, value in values.items()}


def to_host(values: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Results back into pinned host buffers for the wire, the device synchronised: a compute span ends when the
    device has really finished, not when its kernels were queued."""
    if device.type == "cpu":
        return values
    host = {name: torch.empty(value.shape, dtype=value.dtype, pin_memory=True).copy_(value, non_blocking=True)
            for name, value in values.items()}
    torch.cuda.synchronize(device)
    return host


def retime_pacer(pacer: Any, config: dict[str, Any]) -> None:
    """Apply a new TDF's pacer settings (delays scale with it; a userspace rate too)."""
    if pacer is None:
        return
    pacer.delay_ms, pacer.jitter_ms = config["delay_ms"], config["jitter_ms"]
    if config.get("rate_mbps"):
        pacer.set_rate(config["rate_mbps"])


class Control:
    """The control connection, sealed: JSON commands in, JSON reports and result tensors out (thread-safe sends)."""

    def __init__(self, sock: SealedSocket, max_payload: int) -> None:
        self.sock = sock
        self.max_payload = max_payload

    def send(self, obj: dict[str, Any]) -> None:
        self.sock.send_json(obj)

    def send_tensor(self, tensor: torch.Tensor, seq: int, tag: int = 0) -> None:
        self.sock.send_tensor(tensor, seq, tag)

    def recv(self) -> wire.Frame:
        return self.sock.recv_frame(self.max_payload)


DATA_HELLO = "data"
MAX_DATA_HELLO_BYTES = 4096
DATA_ACCEPT_TIMEOUT_S = 120.0  # the peer dials once it has its setup: well inside a run's own set-up time


def connect_data(address: tuple[str, int], token: str, timeout_s: float = 60.0, **hello: Any) -> socket.socket:
    """Dial a peer's data port and say who we are: this run's link token (and ``hello``'s fields), one frame."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sock = socket.create_connection(address, timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wire.send_json(sock, {"hello": DATA_HELLO, "token": token, **hello})
    return sock


class DataHandshake:
    """A data port's handshake (``gate``): the dialler's one frame must carry this run's link token; the
    fields ``check`` asks for are returned."""

    def __init__(self, token: str, check: Callable[[dict[str, Any]], Any] = lambda obj: None) -> None:
        self.token, self.check = token, check

    def opening(self) -> None:
        return None

    def on_answer(self, frame: wire.Frame) -> tuple[None, Any]:
        obj = frame.obj if frame.kind is wire.Kind.JSON and frame.obj is not None else {}
        if obj.get("hello") != DATA_HELLO or not hmac.compare_digest(str(obj.get("token", "")), self.token):
            raise ConnectionRefusedError("bad hello or token")
        return None, self.check(obj)


def accept_data_links(address: tuple[str, int], handshake: DataHandshake, count: int,
                      timeout_s: float = DATA_ACCEPT_TIMEOUT_S) -> list[Admitted]:
    """Accept ``count`` data connections that pass ``handshake``; peers that fail, stall or trickle are dropped
    by the gate without delaying the real ones."""
    admitted: list[Admitted] = []
    deadline = time.monotonic() + timeout_s
    with socket.create_server(address, reuse_port=False, backlog=16) as server:
        gate = Gate(server, lambda: handshake, MAX_DATA_HELLO_BYTES, "data connection")
        try:
            while len(admitted) < count:
                if (left := deadline - time.monotonic()) <= 0:
                    raise TimeoutError(f"the peer did not open its data link on {address} within {timeout_s:g} s")
                admitted += gate.poll(left)
        finally:
            gate.close()
    for link in admitted:
        link.sock.settimeout(None)
        link.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return admitted


def accept_data(address: tuple[str, int], token: str) -> socket.socket:
    """Accept the peer's data connection, refusing any that does not present the token."""
    return accept_data_links(address, DataHandshake(token), 1)[0].sock


def link_timeouts(setup: dict[str, Any], socks: list[socket.socket]) -> None:
    """Bound how long a data link may stall mid-transfer (``runtime.link_timeout_s``; 0: forever)."""
    timeout = float(setup.get("link_timeout_s") or 0) or None
    for sock in socks:
        sock.settimeout(timeout)


def serve_commands(control: Control, handlers: dict[str, Callable[[dict[str, Any]], None]]) -> None:
    """Dispatch the controller's commands to ``handlers`` until it says ``stop``; anything else is an error."""
    while True:
        frame = control.recv()
        command = frame.obj if frame.kind == wire.Kind.JSON and frame.obj else {}
        name = command.get("cmd")
        if name == "stop":
            return
        if name not in handlers:
            raise wire.FrameError(f"unexpected control message {command}; expected one of {sorted(handlers)} or stop")
        handlers[name](command)


_serving: set[threading.Thread] = set()  # the guarded threads of the run being served


def serving_threads() -> list[threading.Thread]:
    """The worker threads of the current run that are still alive (``guard`` registers them)."""
    return [t for t in list(_serving) if t.is_alive()]


def guard(fn: Callable[[], None], control: Control) -> Callable[[], None]:
    """Run a worker thread; any error is reported to the controller and ends the worker."""

    def run() -> None:
        _serving.add(threading.current_thread())
        try:
            fn()
        except Exception as exc:  # report, then die: the controller marks the run FAILED with this reason
            log.exception("worker thread failed")
            try:
                control.send({"event": "error", "reason": f"{type(exc).__name__}: {exc}"})
            finally:
                os._exit(3)
        finally:
            _serving.discard(threading.current_thread())

    return run
