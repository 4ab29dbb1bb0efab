"""An endpoint of split inference: ``python -m harness.worker``.

The controller (or an operator on a real board) starts one worker per endpoint. A worker listens for one control
connection, checks the shared token, receives its setup as JSON (model spec, plan, its role, its peers), builds the
model itself from the spec and seed, keeps only its own part, and then runs inferences when told to. Only JSON and
raw tensors cross the wire (``harness.wire``); nothing received is unpickled or executed.

Timestamps are ``time.monotonic_ns()``: on one machine every process reads the same clock, so the controller can
order spans of different endpoints. Workers report what happened; the controller decides what it means.
"""

from __future__ import annotations

import argparse
import gc
import hmac
import logging
import os
import queue
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from harness import wire
from harness.graph import graph_from_module
from harness.models import ModelSpec, build_model, make_input
from harness.network import Pacer
from harness.submodels import Part, split

log = logging.getLogger("splitbench.worker")


def now_ns() -> int:
    return time.monotonic_ns()


def reset_peak_rss() -> None:
    """Reset VmHWM so that the peak we report covers inference, not model construction."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


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
    """Time dilation: pad real compute up to the emulated device's time × TDF; report overruns."""

    def __init__(self, budget_ms: float, tdf: float, pad: bool) -> None:
        self.budget_ns = int(budget_ms * tdf * 1e6)
        self.pad = pad and self.budget_ns > 0  # a part with no emulated cost (views only) is not padded

    def finish(self, start_ns: int) -> tuple[int, bool]:
        """Sleep until the budget is spent; returns (end time, whether the real compute overran it)."""
        if not self.pad:
            return now_ns(), False
        deadline = start_ns + self.budget_ns
        overran = now_ns() > deadline
        while (remaining := deadline - now_ns()) > 0:
            time.sleep(remaining / 1e9 if remaining > 2_000_000 else 0)
        return max(now_ns(), deadline), overran


class Control:
    """The control connection: JSON commands in, JSON reports and result tensors out (thread-safe sends)."""

    def __init__(self, sock: socket.socket, max_payload: int) -> None:
        self.sock = sock
        self.max_payload = max_payload
        self.lock = threading.Lock()

    def send(self, obj: dict[str, Any]) -> None:
        with self.lock:
            wire.send_json(self.sock, obj)

    def send_tensor(self, tensor: torch.Tensor, seq: int, tag: int = 0) -> None:
        with self.lock:
            wire.send_tensor(self.sock, tensor, seq, tag)

    def recv(self) -> wire.Frame:
        return wire.recv_frame(self.sock, self.max_payload)


def _connect_data(address: tuple[str, int], token: str, timeout_s: float = 60.0) -> socket.socket:
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
    wire.send_json(sock, {"hello": "data", "token": token})
    return sock


def _accept_data(address: tuple[str, int], token: str, max_payload: int) -> socket.socket:
    """Accept the peer's data connection, refusing any that does not present the token."""
    with socket.create_server(address, reuse_port=False) as server:
        server.settimeout(120)
        while True:
            sock, peer = server.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                hello = wire.recv_frame(sock, 64 * 1024)
                if hello.kind == wire.Kind.JSON and hmac.compare_digest(str(hello.obj.get("token", "")), token):
                    return sock
                log.warning("data connection from %s refused: bad hello or token", peer)
            except (wire.FrameError, wire.ConnectionClosed, OSError) as exc:
                log.warning("data connection from %s refused: %s", peer, exc)
            sock.close()


@dataclass
class StagePlan:
    """This endpoint's share of one cut plan."""

    part: Part | None  # None: this endpoint has nothing to compute in this plan
    sends: list[str]
    recvs: list[str]
    budget: Budget
    is_last: bool


class CutStage:
    """One side of a device/server cut: part 0 starts inferences, the last part reports results.

    In a static run the worker builds the model, keeps its own part and drops the rest. With ``keep_model`` (the
    dynamic scenario, where the method re-decides as the link changes) it keeps the whole model and splits again
    for each new plan the controller sends.
    """

    def __init__(self, setup: dict[str, Any], control: Control) -> None:
        self.setup = setup
        self.control = control
        self.spec = ModelSpec.from_config(setup["model"])
        self.part_index: int = setup["part"]
        self.is_first = self.part_index == 0
        self.timeline = Timeline(setup["endpoint"])
        self.max_payload = int(setup["max_payload"])
        self.overruns = 0
        self.graph = graph_from_module(build_model(self.spec), self.spec)
        self.plan = self.make_plan(setup["plan"])
        if not setup.get("keep_model"):
            self.graph = None  # only this endpoint's part stays in memory
            gc.collect()
        self.data: socket.socket | None = None
        pacer = setup.get("pacer")
        self.pacer = Pacer(**pacer) if pacer else None
        self.outbox: queue.Queue = queue.Queue()

    def make_plan(self, plan: dict[str, Any]) -> StagePlan:
        assert self.graph is not None, "a new plan needs the whole model: start the worker with keep_model"
        parts = split(self.graph, plan["assignment"], keep=[self.part_index])
        part = next((p for p in parts if p.index == self.part_index), None)
        return StagePlan(part=part, sends=list(plan["send"]) if self.is_first else [],
                         recvs=[] if self.is_first else list(plan["recv"]),
                         budget=Budget(plan["budget_ms"], self.setup["tdf"], self.setup["pad"]),
                         is_last=self.part_index == max(plan["assignment"].values()))

    def connect(self) -> None:
        token = self.setup["token"]
        if "listen" in self.setup:
            host, port = self.setup["listen"]
            self.data = _accept_data((host, int(port)), token, self.max_payload)
        if "connect" in self.setup:
            host, port = self.setup["connect"]
            self.data = _connect_data((host, int(port)), token)

    def compute(self, seq: int, plan: StagePlan, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        assert plan.part is not None
        start = now_ns()
        with torch.no_grad():
            out = plan.part.run(values)
        real_end = now_ns()
        end, overran = plan.budget.finish(start)
        self.overruns += overran
        self.timeline.add(seq, "compute", start, real_end, overran=overran)
        if end > real_end:
            self.timeline.add(seq, "pad", real_end, end)
        return out

    def finish(self, seq: int, plan: StagePlan, values: dict[str, torch.Tensor]) -> None:
        end = now_ns()
        if plan.is_last:
            self.control.send_tensor(values[self.setup["result"]].contiguous(), seq)
        self.control.send({"event": "spans", "seq": seq, "spans": self.timeline.take(seq), "done_ns": end,
                           "final": plan.is_last})

    def send_loop(self) -> None:
        """Sender thread: ships each inference's crossing tensors and waits for the peer's acknowledgement."""
        assert self.data is not None
        while (item := self.outbox.get()) is not None:
            seq, names, values = item
            for tag, name in enumerate(names):
                tensor = values[name].contiguous()
                nbytes = tensor.numel() * tensor.element_size()
                start = now_ns()
                if self.pacer is not None:
                    self.pacer.before_send(nbytes)
                wire.send_tensor(self.data, tensor, seq, tag)
                ack = wire.recv_frame(self.data, 1024)
                if ack.kind != wire.Kind.ACK or ack.seq != seq or ack.tag != tag:
                    raise wire.FrameError(f"expected ACK for ({seq}, {tag}), got {ack.kind} ({ack.seq}, {ack.tag})")
                self.timeline.add(seq, "send", start, now_ns(), bytes=nbytes, tensor=name)
            self.control.send({"event": "spans", "seq": seq, "spans": self.timeline.take(seq), "final": False})

    def recv_loop(self, ready: queue.Queue) -> None:
        """Receiver thread: collects each inference's inputs, acknowledging every tensor on arrival."""
        assert self.data is not None
        pending: dict[int, dict[str, torch.Tensor]] = {}
        while True:
            select.select([self.data], [], [])  # the span starts when the first byte arrives, not while idle
            start = now_ns()
            try:
                frame = wire.recv_frame(self.data, self.max_payload)
            except wire.ConnectionClosed:
                return
            plan = self.plan
            if frame.kind != wire.Kind.TENSOR or not 0 <= frame.tag < len(plan.recvs):
                raise wire.FrameError(f"unexpected frame kind={frame.kind!r} tag={frame.tag} on the data link")
            wire.send_ack(self.data, frame.seq, frame.tag)
            name = plan.recvs[frame.tag]
            self.timeline.add(frame.seq, "recv", start, now_ns(),
                              bytes=frame.tensor.numel() * frame.tensor.element_size(), tensor=name)
            got = pending.setdefault(frame.seq, {})
            got[name] = frame.tensor
            if len(got) == len(plan.recvs):
                ready.put((frame.seq, plan, pending.pop(frame.seq)))

    def switch_plan(self, command: dict[str, Any]) -> None:
        self.plan = self.make_plan(command["plan"])
        self.control.send({"event": "plan_ready", "id": command["id"]})

    def serve(self) -> None:
        """Run until the controller says stop."""
        inputs: queue.Queue = queue.Queue()
        if self.data is not None:
            worker = self.send_loop if self.is_first else lambda: self.recv_loop(inputs)
            threading.Thread(target=_guard(worker, self.control), daemon=True).start()
        if self.is_first:
            self._serve_first()
        else:
            self._serve_later(inputs)

    def _serve_first(self) -> None:
        input_name = self.setup["input"]
        while True:
            frame = self.control.recv()
            command = frame.obj if frame.kind == wire.Kind.JSON else {}
            if command.get("cmd") == "stop":
                self.outbox.put(None)
                return
            if command.get("cmd") == "plan":
                self.switch_plan(command)
                continue
            if command.get("cmd") != "infer":
                raise wire.FrameError(f"unexpected control message {command}")
            seq, plan = int(command["seq"]), self.plan
            values = self.compute(seq, plan, {input_name: make_input(self.spec, seq)})
            if plan.sends:
                self.outbox.put((seq, plan.sends, values))
            self.finish(seq, plan, values)

    def _serve_later(self, inputs: queue.Queue) -> None:
        def watch_control() -> None:
            while True:
                frame = self.control.recv()
                command = frame.obj if frame.kind == wire.Kind.JSON else {}
                if command.get("cmd") == "plan":
                    self.switch_plan(command)
                elif command.get("cmd") == "stop":
                    inputs.put(None)
                    return

        threading.Thread(target=_guard(watch_control, self.control), daemon=True).start()
        while (item := inputs.get()) is not None:
            seq, plan, values = item
            values.update(self.compute(seq, plan, values))
            self.finish(seq, plan, values)


def _guard(fn: Callable[[], None], control: Control) -> Callable[[], None]:
    """Run a worker thread; any error is reported to the controller and ends the worker."""

    def run() -> None:
        try:
            fn()
        except Exception as exc:  # report, then die: the controller marks the run FAILED with this reason
            log.exception("worker thread failed")
            try:
                control.send({"event": "error", "reason": f"{type(exc).__name__}: {exc}"})
            finally:
                os._exit(3)

    return run


def _listen_control(address: str) -> socket.socket:
    if address.startswith("unix:"):
        path = address[5:]
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
    elif address.startswith("tcp:"):
        host, port = address[4:].rsplit(":", 1)
        server = socket.create_server((host, int(port)))
    else:
        raise SystemExit(f"--control must be unix:/path or tcp:host:port, got {address!r}")
    server.listen(1)
    return server


def serve(address: str, token: str, max_payload: int = 1 << 30) -> None:
    """Accept the controller, authenticate it, set up this endpoint and run until told to stop."""
    server = _listen_control(address)
    while True:
        sock, _ = server.accept()
        control = Control(sock, max_payload)
        try:
            hello = control.recv()
        except (wire.FrameError, wire.ConnectionClosed) as exc:
            log.warning("control connection refused: %s", exc)
            sock.close()
            continue
        if hello.kind == wire.Kind.JSON and hmac.compare_digest(str(hello.obj.get("token", "")), token):
            break
        log.warning("control connection refused: bad token")
        wire.send_error(sock, "bad token")
        sock.close()
    server.close()
    setup = hello.obj["setup"]
    torch.set_num_threads(int(setup.get("threads", 1)))
    stage = CutStage(setup, control)
    gc.collect()
    control.send({"event": "built", "endpoint": setup["endpoint"]})
    stage.connect()
    reset_peak_rss()
    control.send({"event": "ready", "endpoint": setup["endpoint"], "pid": os.getpid()})
    stage.serve()
    control.send({"event": "stopped", "endpoint": setup["endpoint"], "peak_rss_mb": peak_rss_mb(),
                  "overruns": stage.overruns})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="splitbench endpoint worker")
    parser.add_argument("--control", required=True, help="unix:/path/to.sock or tcp:host:port to listen on")
    parser.add_argument("--token", default=os.environ.get("SPLITBENCH_TOKEN", ""),
                        help="shared secret the controller must present (or $SPLITBENCH_TOKEN)")
    parser.add_argument("--max-payload-mb", type=int, default=1024)
    args = parser.parse_args(argv)
    if not args.token:
        raise SystemExit("a token is required: --token or $SPLITBENCH_TOKEN")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    serve(args.control, args.token, args.max_payload_mb << 20)


if __name__ == "__main__":
    main()
