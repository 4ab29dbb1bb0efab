"""An edge server of a spatial plan (HALP, MoDNN): the host scatters row bands, every server computes its rows.

The host (``es0``) holds the input: for each fused block it sends every secondary the input rows of its segment
(one after another, as the plans' timing model assumes), computes its own segments meanwhile, gathers the rows,
joins them and goes on; after the last block it runs the rest of the model (the FC layers). Each secondary only
receives bands, computes its rows and returns them. Every link has two connections, one per direction, so that
a band going out and rows coming back never wait on each other.

With several tasks in flight (HALP's multi-task mode), the host sends the first block's bands of every task as soon
as the task arrives, so the secondaries work on task t while the bands of task t+1 travel.
"""

from __future__ import annotations

import hmac
import queue
import socket
import threading
from typing import Any

import torch

from harness import wire
from harness.channel import Receiver, Sender
from harness.graph import graph_from_module
from harness.models import ModelSpec, build_model, make_input
from harness.network import Pacer
from harness.segments import join_rows, run_segment, spatial_prefix, suffix_part
from harness.stage import (HELLO_TIMEOUT_S, Budget, Timeline, connect_data, guard, now_ns, retime_pacer,
                           serve_commands)

DIRECTIONS = ("down", "up")  # down: host -> secondary (bands); up: secondary -> host (rows)


def _connect(address: tuple[str, int], token: str, direction: str) -> socket.socket:
    sock = connect_data(address, token)
    wire.send_json(sock, {"direction": direction})
    return sock


def _accept_both(address: tuple[str, int], token: str) -> dict[str, socket.socket]:
    """Accept the host's two connections (down and up), refusing any without the token."""
    socks: dict[str, socket.socket] = {}
    with socket.create_server(address) as server:
        server.settimeout(120)
        while len(socks) < len(DIRECTIONS):
            sock, _ = server.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(HELLO_TIMEOUT_S)  # a peer that connects and says nothing must not block the host
            try:
                hello = wire.recv_frame(sock, 64 * 1024)
                which = wire.recv_frame(sock, 64 * 1024)
            except (wire.FrameError, wire.ConnectionClosed, OSError):
                sock.close()
                continue
            ok = (hello.kind == wire.Kind.JSON and hmac.compare_digest(str(hello.obj.get("token", "")), token)
                  and which.kind == wire.Kind.JSON and which.obj.get("direction") in DIRECTIONS)
            if ok:
                sock.settimeout(None)
                socks[which.obj["direction"]] = sock
            else:
                sock.close()
    return socks


class SpatialStage:
    """Host or secondary of a spatial plan; ``serve`` runs until the controller says stop."""

    def __init__(self, setup: dict[str, Any], control: Any) -> None:
        self.setup, self.control = setup, control
        self.spec = ModelSpec.from_config(setup["model"])
        self.plan = setup["plan"]
        self.endpoint = setup["endpoint"]
        self.is_host = self.endpoint == self.plan["host"]
        self.timeline = Timeline(self.endpoint)
        self.max_payload = int(setup["max_payload"])
        self.make_budget = lambda ms: Budget(ms, setup["tdf"], setup["pad"])
        graph = graph_from_module(build_model(self.spec), self.spec)
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
        self.results: dict[tuple[int, int, str], torch.Tensor] = {}
        self.arrived = threading.Condition()
        self.sendq: queue.Queue = queue.Queue()

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

    # -- compute -----------------------------------------------------------------------------------------------------

    def compute(self, seq: int, block: int, band: torch.Tensor, segment: dict[str, Any]) -> torch.Tensor:
        start = now_ns()
        rows = run_segment(self.ops[block], band, tuple(segment["in_rows"]), tuple(segment["out_rows"]))
        self.make_budget(segment["compute_ms"]).finish(self.timeline, seq, start, block=block)
        return rows

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
            with self.arrived:
                self.results[(frame.seq, frame.tag, peer)] = frame.tensor
                self.arrived.notify_all()

    def _wait_rows(self, seq: int, block: int, peers: list[str]) -> dict[str, torch.Tensor]:
        with self.arrived:
            self.arrived.wait_for(lambda: all((seq, block, p) in self.results for p in peers))
            return {p: self.results.pop((seq, block, p)) for p in peers}

    def _run_task(self, seq: int, x: torch.Tensor) -> None:
        value = x
        for index, block in enumerate(self.plan["blocks"]):
            if index > 0:  # the first block's bands went out when the task arrived
                self._send_bands(seq, index, value)
            pieces = []
            for seg in (s for s in block["segments"] if s["endpoint"] == self.endpoint):
                a, b = seg["in_rows"]
                pieces.append((tuple(seg["out_rows"]), self.compute(seq, index, value[:, :, a:b], seg)))
            remote = sorted({s["endpoint"] for s in block["segments"] if s["endpoint"] != self.endpoint})
            rows = self._wait_rows(seq, index, remote)
            pieces += [(tuple(s["out_rows"]), rows[s["endpoint"]]) for s in block["segments"]
                       if s["endpoint"] != self.endpoint]
            value = join_rows(pieces, block["out_height"])
        if self.suffix is not None:
            start = now_ns()
            with torch.no_grad():
                value = self.suffix.run({self.suffix.inputs[0]: value})[self.result_name]
            self.make_budget(self.plan["suffix_ms"]).finish(self.timeline, seq, start, block="suffix")
        done = now_ns()
        self.control.send_tensor(value.contiguous(), seq)
        self.control.send({"event": "spans", "seq": seq, "spans": self.timeline.take(seq), "done_ns": done,
                           "final": True})

    def _serve_host(self) -> None:
        for target in [self._send_loop, *[lambda p=p: self._gather_loop(p) for p in self.secondaries]]:
            threading.Thread(target=guard(target, self.control), daemon=True).start()
        tasks: queue.Queue = queue.Queue()

        def arrive(command: dict[str, Any]) -> None:
            seq = int(command["seq"])
            x = make_input(self.spec, seq)
            self._send_bands(seq, 0, x)  # start shipping at once: overlaps the previous task
            tasks.put((seq, x))

        def watch_control() -> None:
            serve_commands(self.control, {"infer": arrive, "retime": self.retime})
            tasks.put(None)

        threading.Thread(target=guard(watch_control, self.control), daemon=True).start()
        while (task := tasks.get()) is not None:
            self._run_task(*task)
        self.sendq.put(None)

    # -- secondary ---------------------------------------------------------------------------------------------------

    def _serve_secondary(self) -> None:
        def watch_control() -> None:
            serve_commands(self.control, {"retime": self.retime})
            bands.put(None)

        bands: queue.Queue = queue.Queue()

        def receive() -> None:
            while (frame := self.receivers["host"].recv()) is not None:
                bands.put(frame)

        threading.Thread(target=guard(watch_control, self.control), daemon=True).start()
        threading.Thread(target=guard(receive, self.control), daemon=True).start()
        while (frame := bands.get()) is not None:
            block = self.plan["blocks"][frame.tag]
            for seg in (s for s in block["segments"] if s["endpoint"] == self.endpoint):
                rows = self.compute(frame.seq, frame.tag, frame.tensor, seg)
                self.senders["host"].send(rows, frame.seq, frame.tag, block=frame.tag)
            self.control.send({"event": "spans", "seq": frame.seq, "spans": self.timeline.take(frame.seq),
                               "final": False})

    def serve(self) -> None:
        self._serve_host() if self.is_host else self._serve_secondary()
