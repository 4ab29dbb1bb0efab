"""One side of a device/server cut: the device computes its part and ships the crossing tensors; the server
receives them, computes the rest and reports the result."""

from __future__ import annotations

import gc
import queue
import socket
import threading
from dataclasses import dataclass
from typing import Any

import torch

from harness.worker import wire
from harness.worker.channel import Receiver, Sender
from harness.model.models import ModelSpec
from harness.worker.pacer import Pacer
from harness.worker.stage import (Budget, Control, Inputs, Timeline, accept_data, connect_data, guard, injected_stall,
                                  link_timeouts, model_graph, now_ns, quiet_for_measurement, retime_pacer,
                                  serve_commands, time_repeats, to_device, to_host)
from harness.model.codecs import Codec, CodecError
from harness.model.submodels import Part, split

MAX_WIRE_DIMS = 8


def crossing_codecs(plan: dict[str, Any]) -> dict[str, tuple[Codec, tuple[int, ...]]]:
    """Each crossing tensor's codec and decoded shape, as the plan names them (checked: an unknown codec or a shape
    that is not a few positive integers ends the run); a plan without them sends float32."""
    tensors, quality = plan.get("tensors") or {}, plan.get("jpeg_quality", 90)
    out = {}
    for name in {*plan["send"], *plan["recv"]}:
        entry = tensors.get(name, {"codec": "raw", "shape": []})
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(shape, list) and len(shape) <= MAX_WIRE_DIMS
                and all(isinstance(d, int) and 0 < d <= 1 << 30 for d in shape)):
            raise CodecError(f"plan: tensor {name!r} has no valid shape ({str(shape)[:100]})")
        try:
            out[name] = (Codec(str(entry.get("codec")), int(quality)), tuple(shape))
        except (TypeError, ValueError) as exc:
            raise CodecError(f"plan: tensor {name!r}: {exc}") from exc
    return out


@dataclass
class StagePlan:
    """This endpoint's share of one cut plan."""

    part: Part | None  # None: this endpoint has nothing to compute in this plan
    sends: list[str]
    recvs: list[str]
    budget: Budget
    is_last: bool
    codecs: dict[str, tuple[Codec, tuple[int, ...]]]  # each crossing tensor's codec and its decoded shape

    def work(self, values: dict[str, torch.Tensor], device: torch.device
             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Decode what arrived, run this part, encode what leaves: all of it this endpoint's budgeted work.
        Returns every value it holds (decoded and computed) and the wire tensors it sends."""
        held = dict(values)
        for name in self.recvs:
            codec, shape = self.codecs[name]
            held[name] = codec.decode(values[name], shape) if codec.compresses else values[name]
        if self.part is not None:
            held.update(to_host(self.part.run(to_device(held, device)), device))
        leaving = {}
        for name in self.sends:
            codec, _ = self.codecs[name]
            leaving[name] = codec.encode(held[name]) if codec.compresses else held[name]
        return held, leaving


class CutStage:
    """One side of a device/server cut: part 0 starts inferences, the last part reports results.

    In a static run the worker builds the model, keeps its own part and drops the rest. With ``keep_model`` (the
    dynamic scenario, where the method re-decides as the link changes) it keeps the whole model and splits again
    for each new plan the controller sends.
    """

    def __init__(self, setup: dict[str, Any], control: Control, spec: ModelSpec) -> None:
        self.setup = setup
        self.control = control
        self.spec = spec  # resolved and checked by the worker (``serve.resolve_model``), never re-read
        self.part_index: int = setup["part"]
        self.is_first = self.part_index == 0
        self.timeline = Timeline(setup["endpoint"])
        self.max_payload = int(setup["max_payload"])
        self.device = torch.device(setup.get("device", "cpu"))  # resolved by the worker from runtime.compute_device
        self.graph = model_graph(self.spec)
        self.plan = self.make_plan(setup["plan"])
        if not setup.get("keep_model"):
            self.graph = None  # only this endpoint's part stays in memory
            gc.collect()
        self.data: socket.socket | None = None
        pacer = setup.get("pacer")
        self.pacer = Pacer(**pacer) if pacer else None
        self.outbox: queue.Queue = queue.Queue()
        self.last_inputs: dict[str, torch.Tensor] | None = None  # what calibration replays
        self.inputs = Inputs(spec) if self.is_first else None

    def make_plan(self, plan: dict[str, Any]) -> StagePlan:
        assert self.graph is not None, "a new plan needs the whole model: start the worker with keep_model"
        parts = split(self.graph, plan["assignment"], keep=[self.part_index])
        part = next((p for p in parts if p.index == self.part_index), None)
        if part is not None and part.module is not None:
            part.module.to(self.device)
        return StagePlan(part=part, sends=list(plan["send"]) if self.is_first else [],
                         recvs=[] if self.is_first else list(plan["recv"]),
                         budget=Budget(plan["budget_ms"], self.setup["tdf"], self.setup["pad"]),
                         is_last=self.part_index == max(plan["assignment"].values()),
                         codecs=crossing_codecs(plan))

    def connect(self) -> None:
        token = self.setup["token"]
        if "listen" in self.setup:
            host, port = self.setup["listen"]
            self.data = accept_data((host, int(port)), token)
        if "connect" in self.setup:
            host, port = self.setup["connect"]
            self.data = connect_data((host, int(port)), token)
        link_timeouts(self.setup, [self.data] if self.data is not None else [])

    def data_sockets(self) -> list[socket.socket]:
        """The run's data links (released when the run ends, by a worker that serves the next one)."""
        return [self.data] if self.data is not None else []

    def compute(self, seq: int, plan: StagePlan, values: dict[str, torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """This endpoint's work on one inference, padded to its budget: (values held, wire tensors to send)."""
        assert plan.part is not None
        self.last_inputs = {name: values[name] for name in {*plan.part.inputs, *plan.recvs}}
        start = now_ns()
        with torch.no_grad():
            held, leaving = plan.work(values, self.device)
        injected_stall(self.setup, seq)
        plan.budget.finish(self.timeline, seq, start)
        return held, leaving

    def calibrate(self, command: dict[str, Any]) -> None:
        """Time this endpoint's part, in this process, on the last inference's inputs: the controller sets the TDF
        from the distribution (the other workers calibrate at the same time when they will compute at once)."""
        plan, samples = self.plan, []
        if plan.part is not None and self.last_inputs is not None and plan.budget.budget_ms > 0:
            inputs = self.last_inputs
            samples.append({"budget_ms": plan.budget.budget_ms,
                            "real_ms": time_repeats(lambda: plan.work(inputs, self.device), int(command["repeats"]))})
        self.control.send({"event": "calibrated", "samples": samples})

    def finish(self, seq: int, plan: StagePlan, values: dict[str, torch.Tensor], received_ns: int | None = None
               ) -> None:
        """Report inference ``seq``'s spans (and its result from the last part); the first part also says when its
        command arrived, where the inference's latency starts."""
        end = now_ns()
        if plan.is_last:
            self.control.send_tensor(values[self.setup["result"]].contiguous(), seq)
        report = {"event": "spans", "seq": seq, "spans": self.timeline.take(seq), "done_ns": end,
                  "final": plan.is_last}
        if received_ns is not None:
            report["received_ns"] = received_ns
        self.control.send(report)

    def send_loop(self) -> None:
        """Sender thread: ships each inference's crossing tensors, each acknowledged by the peer."""
        assert self.data is not None
        sender = Sender(self.data, self.timeline.add, self.pacer, peer="server")
        while (item := self.outbox.get()) is not None:
            seq, names, values = item
            for tag, name in enumerate(names):
                sender.send(values[name], seq, tag, value=name)
            self.control.send({"event": "spans", "seq": seq, "spans": self.timeline.take(seq), "final": False})

    def recv_loop(self, ready: queue.Queue) -> None:
        """Receiver thread: collects each inference's inputs (each tensor acknowledged on arrival)."""
        assert self.data is not None
        receiver = Receiver(self.data, self.timeline.add, self.max_payload, peer="device")
        pending: dict[int, dict[str, torch.Tensor]] = {}
        while (frame := receiver.recv()) is not None:
            plan = self.plan
            if not 0 <= frame.tag < len(plan.recvs):
                raise wire.FrameError(f"tensor tag {frame.tag} is not one of the {len(plan.recvs)} this plan expects")
            got = pending.setdefault(frame.seq, {})
            got[plan.recvs[frame.tag]] = frame.tensor
            if len(got) == len(plan.recvs):
                ready.put((frame.seq, plan, pending.pop(frame.seq)))

    def retime(self, command: dict[str, Any]) -> None:
        """A new TDF, calibrated by the controller on the warm-up: new budgets, new pacer delays."""
        self.setup["tdf"] = float(command["tdf"])
        self.plan.budget = Budget(self.plan.budget.budget_ms, self.setup["tdf"], self.setup["pad"])
        for config in command["pacers"].values():
            retime_pacer(self.pacer, config)
        self.control.send({"event": "retimed"})

    def switch_plan(self, command: dict[str, Any]) -> None:
        self.plan = self.make_plan(command["plan"])
        self.warm_up(self.plan)
        gc.collect()  # splitting leaves fx graphs' reference cycles; collected here, between inferences
        self.control.send({"event": "plan_ready", "id": command["id"]})

    def warm_up(self, plan: StagePlan) -> None:
        """Run a new part once on zeros, between inferences: the first call of layers this worker has not run yet
        (kernel selection, workspace allocation) must not land in a measured inference's compute budget."""
        if plan.part is None:
            return
        assert self.graph is not None
        metas = {n.name: n.meta.get("tensor_meta") for n in self.graph.module.graph.nodes}
        values = {name: torch.zeros(metas[name].shape, dtype=metas[name].dtype) for name in plan.part.inputs}
        for name in plan.recvs:  # as they arrive: encoded
            codec, _ = plan.codecs[name]
            values[name] = codec.encode(values[name]) if codec.compresses else values[name]
        with torch.no_grad():
            plan.work(values, self.device)
        self.last_inputs = values  # what calibration replays until an inference brings real ones

    def serve(self) -> None:
        """Run until the controller says stop."""
        inputs: queue.Queue = queue.Queue()
        with quiet_for_measurement():
            if self.data is not None:
                worker = self.send_loop if self.is_first else lambda: self.recv_loop(inputs)
                threading.Thread(target=guard(worker, self.control), daemon=True).start()
            if self.is_first:
                self._serve_first()
            else:
                self._serve_later(inputs)

    def _serve_first(self) -> None:
        serve_commands(self.control, {"infer": self.infer, "plan": self.switch_plan, "retime": self.retime,
                                       "calibrate": self.calibrate})
        self.outbox.put(None)

    def infer(self, command: dict[str, Any]) -> None:
        """Start an inference: make its input here, compute this part, hand the crossing tensors to the sender."""
        received = now_ns()
        seq, plan = int(command["seq"]), self.plan
        assert self.inputs is not None
        values, leaving = self.compute(seq, plan, {self.setup["input"]: self.inputs.take(seq)})
        if plan.sends:
            self.outbox.put((seq, plan.sends, leaving))
        self.finish(seq, plan, values, received_ns=received)
        self.inputs.prepare_next()

    def _serve_later(self, inputs: queue.Queue) -> None:
        def watch_control() -> None:
            serve_commands(self.control, {"plan": self.switch_plan, "retime": self.retime,
                                          "calibrate": self.calibrate})
            inputs.put(None)

        threading.Thread(target=guard(watch_control, self.control), daemon=True).start()
        while (item := inputs.get()) is not None:
            seq, plan, values = item
            held, _ = self.compute(seq, plan, values)
            self.finish(seq, plan, held)
