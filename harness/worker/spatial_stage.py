"""An edge server of a spatial plan (HALP, MoDNN): the host scatters row bands, every server computes its rows.

The host (``es0``) holds the input: for each fused block it sends every secondary the input rows of its segment
(one after another, as the plans' timing model assumes), computes its own segments meanwhile, gathers the rows,
joins them and goes on; after the last block it runs the rest of the model (the FC layers). Each secondary only
receives bands, computes its rows and returns them. Every link has two connections, one per direction, so that
a band going out and rows coming back never wait on each other.

With several tasks in flight (HALP's multi-task mode) every resource serves its work earliest-ready first, as the
plans' list schedule (``partitioners.spatial.batch_done_ms``) assumes: the host sends a task's first bands as soon
as it arrives and a block's next bands as soon as it is joined, its compute thread takes whichever of its own
operations became ready first (the next task's zones while the current task's rows are out), and a secondary
computes the next band while it returns the last one's rows.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from harness.worker.channel import Receiver, Sender
from harness.model.models import ModelSpec
from harness.worker.pacer import Pacer
from harness.model.rows import spatial_prefix
from harness.worker.segments import join_rows, run_segment, suffix_part
from harness.worker.stage import (Budget, DataHandshake, Inputs, Timeline, accept_data_links, connect_data, guard,
                                  injected_stall, link_timeouts, model_graph, now_ns, quiet_for_measurement,
                                  retime_pacer, serve_commands, time_repeats, to_device, to_host)

DIRECTIONS = ("down", "up")  # down: host -> secondary (bands); up: secondary -> host (rows)


def _connect(address: tuple[str, int], token: str, direction: str) -> socket.socket:
    return connect_data(address, token, direction=direction)


def _direction(hello: dict[str, Any]) -> str:
    if hello.get("direction") not in DIRECTIONS:
        raise ConnectionRefusedError(f"direction {str(hello.get('direction'))[:20]!r} is not one of {list(DIRECTIONS)}")
    return str(hello["direction"])


def _accept_both(address: tuple[str, int], token: str) -> dict[str, socket.socket]:
    """Accept the host's two connections (down and up), refusing any without the token."""
    links = accept_data_links(address, DataHandshake(token, _direction), len(DIRECTIONS))
    socks = {link.result: link.sock for link in links}
    if len(socks) != len(DIRECTIONS):
        raise ConnectionRefusedError(f"the host opened {[link.result for link in links]}; expected {list(DIRECTIONS)}")
    return socks


@dataclass
class _Task:
    """A task on the host: the input of its current block and the pieces of that block still out."""

    value: torch.Tensor
    received_ns: int  # when its command arrived: the inference's latency starts here
    block: int = 0
    pieces: list[tuple[tuple[int, int], torch.Tensor]] = field(default_factory=list)
    missing: set[str] = field(default_factory=set)


class SpatialStage:
    """Host or secondary of a spatial plan; ``serve`` runs until the controller says stop."""

    def __init__(self, setup: dict[str, Any], control: Any, spec: ModelSpec) -> None:
        self.setup, self.control = setup, control
        self.spec = spec  # resolved and checked by the worker (``serve.resolve_model``), never re-read
        self.plan = setup["plan"]
        self.endpoint = setup["endpoint"]
        self.is_host = self.endpoint == self.plan["host"]
        self.inputs = Inputs(spec) if self.is_host else None
        self.timeline = Timeline(self.endpoint)
        self.max_payload = int(setup["max_payload"])
        self.make_budget = lambda ms: Budget(ms, setup["tdf"], setup["pad"])
        self.device = torch.device(setup.get("device", "cpu"))  # resolved by the worker from runtime.compute_device
        graph = model_graph(self.spec)
        graph.module.to(self.device)  # the row ops and the suffix use the module's own weights
        prefix = spatial_prefix(graph)
        # Keep only the layers of the blocks this endpoint computes in (and the FC suffix on the host).
        self.ops = [prefix.block(b["layers"]) if self.is_host or any(s["endpoint"] == self.endpoint
                                                                     for s in b["segments"]) else None
                    for b in self.plan["blocks"]]
        self.suffix = suffix_part(graph, prefix) if self.is_host else None
        self.result_name = graph.result_name
        del graph, prefix
        self.secondaries = [e for e in self.plan["endpoints"] if e != self.plan["host"]]
        self.senders: dict[str, Sender] = {}
        self.receivers: dict[str, Receiver] = {}
        self.tasks: dict[int, _Task] = {}  # host: the tasks in flight
        self.lock = threading.Lock()  # guards ``tasks``: gather threads and the host's compute thread finish pieces
        self.host_ops: queue.Queue = queue.Queue()  # host: (seq, "block" | "suffix") in the order they became ready
        self.parked: deque[int] = deque()  # host: tasks waiting for the one in flight (plans not pipelined)
        self.sendq: queue.Queue = queue.Queue()
        # Per budgeted operation (a block's segment, the suffix): its budget and a replay of its last run.
        self.replays: dict[Any, tuple[float, Callable[[], Any]]] = {}

    # -- set-up ------------------------------------------------------------------------------------------------------

    def connect(self) -> None:
        token = self.setup["token"]
        if self.is_host:
            for peer, (host, port) in self.setup["peers"].items():
                pacer = Pacer(**self.setup["pacers"][peer])
                self.senders[peer] = Sender(_connect((host, int(port)), token, "down"), self.timeline.add, pacer, peer)
                self.receivers[peer] = Receiver(_connect((host, int(port)), token, "up"), self.timeline.add,
                                                self.max_payload, peer)
        else:
            host, port = self.setup["listen"]
            socks = _accept_both((host, int(port)), token)
            pacer = Pacer(**self.setup["pacer"])
            self.receivers["host"] = Receiver(socks["down"], self.timeline.add, self.max_payload, "host")
            self.senders["host"] = Sender(socks["up"], self.timeline.add, pacer, "host")
        link_timeouts(self.setup, [c.sock for c in [*self.senders.values(), *self.receivers.values()]])

    def data_sockets(self) -> list[socket.socket]:
        """The run's data links (released when the run ends, by a worker that serves the next one)."""
        return [s.sock for s in self.senders.values()] + [r.sock for r in self.receivers.values()]

    # -- compute -----------------------------------------------------------------------------------------------------

    def on_device(self, fn: Callable[[torch.Tensor], torch.Tensor], value: torch.Tensor) -> torch.Tensor:
        """``fn`` on the compute device: the value (a host tensor, as it came off the wire or out of a join) moves
        in, the result comes back to the host, the device synchronised (a compute span ends when it finished)."""
        if self.device.type == "cpu":
            return fn(value)
        return to_host({"y": fn(to_device({"x": value}, self.device)["x"])}, self.device)["y"]

    def compute(self, seq: int, block: int, band: torch.Tensor, segment: dict[str, Any]) -> torch.Tensor:
        ops, in_rows, out_rows = self.ops[block], tuple(segment["in_rows"]), tuple(segment["out_rows"])

        def rows_of(x: torch.Tensor) -> torch.Tensor:
            return run_segment(ops, x, in_rows, out_rows)

        self.replays[(block, out_rows)] = (segment["compute_ms"], lambda: self.on_device(rows_of, band))
        start = now_ns()
        rows = self.on_device(rows_of, band)
        injected_stall(self.setup, seq)
        self.make_budget(segment["compute_ms"]).finish(self.timeline, seq, start, block=block)
        return rows

    def calibrate(self, command: dict[str, Any]) -> None:
        """Time every budgeted operation of this endpoint, in this process, on the last inference's inputs, while
        the other servers do the same (they compute at once in the run too)."""
        repeats = int(command["repeats"])
        samples = [{"budget_ms": budget_ms, "real_ms": time_repeats(replay, repeats)}
                   for budget_ms, replay in list(self.replays.values()) if budget_ms > 0]
        self.control.send({"event": "calibrated", "samples": samples})

    # -- host --------------------------------------------------------------------------------------------------------

    def retime(self, command: dict[str, Any]) -> None:
        """A new TDF, calibrated by the controller on the warm-up: new budgets, new pacer delays."""
        self.setup["tdf"] = float(command["tdf"])
        for peer, config in command["pacers"].items():
            sender = self.senders.get(peer if self.is_host else "host")
            retime_pacer(sender.pacer if sender else None, config)
        self.control.send({"event": "retimed"})

    def _send_bands(self, seq: int, block: int, value: torch.Tensor) -> None:
        """Queue this block's bands for the secondaries, in the plan's secondary order."""
        segments = self.plan["blocks"][block]["segments"]
        for peer in self.secondaries:
            for seg in (s for s in segments if s["endpoint"] == peer):
                a, b = seg["in_rows"]
                self.sendq.put((peer, seq, block, value[:, :, a:b]))

    def _send_loop(self) -> None:
        while (item := self.sendq.get()) is not None:
            peer, seq, block, band = item
            self.senders[peer].send(band, seq, block, block=block)

    def _gather_loop(self, peer: str) -> None:
        while (frame := self.receivers[peer].recv()) is not None:
            segment = next(s for s in self.plan["blocks"][frame.tag]["segments"] if s["endpoint"] == peer)
            self._pieces_done(frame.seq, [(tuple(segment["out_rows"]), frame.tensor)], peer)

    def _start_block(self, seq: int, task: _Task) -> None:
        """Send the block's bands and make the host's own segments of it ready to compute."""
        block = self.plan["blocks"][task.block]
        task.pieces = []
        task.missing = {s["endpoint"] for s in block["segments"] if s["endpoint"] != self.endpoint} | {self.endpoint}
        self._send_bands(seq, task.block, task.value)
        self.host_ops.put((seq, "block"))

    def _pieces_done(self, seq: int, pieces: list[tuple[tuple[int, int], torch.Tensor]], who: str) -> None:
        """File ``who``'s rows of the task's current block; the last to arrive joins the block and starts the next."""
        with self.lock:
            task = self.tasks[seq]
            task.pieces += pieces
            task.missing.discard(who)
            if task.missing:
                return
            block = self.plan["blocks"][task.block]
            task.value = join_rows(task.pieces, block["out_height"])
            task.block += 1
            if task.block < len(self.plan["blocks"]):
                self._start_block(seq, task)
            else:
                self.host_ops.put((seq, "suffix"))

    def _host_block(self, seq: int) -> None:
        with self.lock:
            task = self.tasks[seq]
            index, value = task.block, task.value
        mine = [seg for seg in self.plan["blocks"][index]["segments"] if seg["endpoint"] == self.endpoint]
        pieces = [(tuple(seg["out_rows"]), self.compute(seq, index, value[:, :, slice(*seg["in_rows"])], seg))
                  for seg in mine]
        self._pieces_done(seq, pieces, self.endpoint)

    def _host_suffix(self, seq: int) -> None:
        with self.lock:
            value, received = self.tasks[seq].value, self.tasks[seq].received_ns
        if self.suffix is not None:
            suffix, name, result = self.suffix, self.suffix.inputs[0], self.result_name

            def output_of(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return suffix.run({name: x})[result]

            joined = value
            self.replays["suffix"] = (self.plan["suffix_ms"], lambda: self.on_device(output_of, joined))
            start = now_ns()
            value = self.on_device(output_of, value)
            self.make_budget(self.plan["suffix_ms"]).finish(self.timeline, seq, start, block="suffix")
        done = now_ns()
        self.control.send_tensor(value.contiguous(), seq)
        self.control.send({"event": "spans", "seq": seq, "spans": self.timeline.take(seq), "done_ns": done,
                           "received_ns": received, "final": True})
        with self.lock:
            del self.tasks[seq]
            if self.parked:
                following = self.parked.popleft()
                self._start_block(following, self.tasks[following])
        if self.inputs is not None:
            self.inputs.prepare_next()

    def _serve_host(self) -> None:
        """Every resource serves its work earliest-ready first, as the plan's list schedule assumes: the sender
        ships bands as blocks are joined, and the host computes whichever of its operations became ready first --
        the next task's zones while the current task's rows are still out."""
        for target in [self._send_loop, *[lambda p=p: self._gather_loop(p) for p in self.secondaries]]:
            threading.Thread(target=guard(target, self.control), daemon=True).start()

        def arrive(command: dict[str, Any]) -> None:
            received, seq = now_ns(), int(command["seq"])
            assert self.inputs is not None
            task = _Task(self.inputs.take(seq), received)
            with self.lock:
                self.tasks[seq] = task
                if self.plan.get("pipelined") or len(self.tasks) == 1:
                    self._start_block(seq, task)  # start shipping at once: overlaps the tasks in flight
                else:
                    self.parked.append(seq)  # a plan that is not pipelined runs its tasks one after another

        def watch_control() -> None:
            serve_commands(self.control, {"infer": arrive, "retime": self.retime, "calibrate": self.calibrate})
            self.host_ops.put(None)

        threading.Thread(target=guard(watch_control, self.control), daemon=True).start()
        while (op := self.host_ops.get()) is not None:
            seq, what = op
            self._host_block(seq) if what == "block" else self._host_suffix(seq)
        self.sendq.put(None)

    # -- secondary ---------------------------------------------------------------------------------------------------

    def _serve_secondary(self) -> None:
        """Receive bands, compute, return rows: compute and return are separate threads (the plan's timing model
        gives the CPU and the up-link each their own queue), so the next band is computed while rows travel."""
        bands: queue.Queue = queue.Queue()
        returns: queue.Queue = queue.Queue()

        def watch_control() -> None:
            serve_commands(self.control, {"retime": self.retime, "calibrate": self.calibrate})
            bands.put(None)

        def receive() -> None:
            while (frame := self.receivers["host"].recv()) is not None:
                bands.put(frame)

        def send_back() -> None:
            while (item := returns.get()) is not None:
                rows, seq, block = item
                self.senders["host"].send(rows, seq, block, block=block)
                self.control.send({"event": "spans", "seq": seq, "spans": self.timeline.take(seq), "final": False})

        for target in (watch_control, receive, send_back):
            threading.Thread(target=guard(target, self.control), daemon=True).start()
        while (frame := bands.get()) is not None:
            block = self.plan["blocks"][frame.tag]
            for seg in (s for s in block["segments"] if s["endpoint"] == self.endpoint):
                returns.put((self.compute(frame.seq, frame.tag, frame.tensor, seg), frame.seq, frame.tag))
        returns.put(None)

    def serve(self) -> None:
        with quiet_for_measurement():
            self._serve_host() if self.is_host else self._serve_secondary()
