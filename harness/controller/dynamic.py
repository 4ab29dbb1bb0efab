"""The dynamic scenario: the link follows a bandwidth trace and the method re-decides before every inference.

The estimate a method decides on is measured, not given: ``last`` takes the goodput of the previous inference's
transfers as the runtime measured them (sender start to receiver ACK); ``oracle`` reads the trace (the bound any
estimator could reach). Every decision is recorded with its time, the estimate and the true rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from harness.network.base import Network
from harness.controller.measurer import BeforeIssue, RunResult, Workers, wait_all, wait_for_span
from harness.controller.traces import Trace, TracePlayer
from partitioners.base import LinkState, Partitioner, Plan, device_side_of

ESTIMATORS = ("last", "oracle")
MIN_PROBE_BYTES = 16 * 1024  # smaller transfers measure delay, not bandwidth


@dataclass
class Redecider:
    """Called before each inference: follow the trace, estimate, decide, switch the workers' plan if it changed."""

    method: Partitioner
    prepared: Any
    trace: Trace
    estimator: str
    initial_mbps: float
    interval_ms: float
    delay_ms: float
    make_stage_plans: Callable[[Plan], list[dict[str, Any]]]
    current: frozenset[str]
    sends_data: bool
    decisions: list[dict[str, Any]] = field(default_factory=list)
    player: TracePlayer | None = None
    estimate_mbps: float = 0.0

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"scenario.estimator={self.estimator!r} is not one of {list(ESTIMATORS)}")
        self.estimate_mbps = self.initial_mbps

    def hook(self, topology: Network, controller: Workers, result: RunResult) -> BeforeIssue:
        device, server = list(controller.endpoints)
        self.player = TracePlayer(self.trace, lambda mbps: topology.set_rate(device, server, mbps),
                                  result.tdf).start()

        def before_issue(seq: int) -> None:
            # Inferences arrive every interval_ms of emulated time, so that the run walks through the trace.
            due_ns = self.player.start_ns + int(seq * self.interval_ms * 1e6 * result.tdf)
            if (wait_ns := due_ns - time.monotonic_ns()) > 0:
                time.sleep(wait_ns / 1e9)
            if seq > 0 and self.sends_data:  # the previous transfer's ACK report is the measurement
                wait_for_span(controller, result, seq - 1, "send")
            self.estimate_mbps = self._estimate(seq, result)
            start = time.perf_counter_ns()
            plan = self.method.decide(self.prepared, LinkState(self.estimate_mbps, self.delay_ms))
            decision_ms = (time.perf_counter_ns() - start) / 1e6
            device_side = frozenset(device_side_of(plan))
            switched = device_side != self.current
            if switched:
                stage_plans = self.make_stage_plans(plan)
                for index, name in enumerate(controller.endpoints):
                    controller.send(name, {"cmd": "plan", "id": seq, "plan": stage_plans[index]})
                wait_all(controller, "plan_ready", result)
                self.current = device_side
                self.sends_data = bool(stage_plans[0]["send"]) and max(stage_plans[0]["assignment"].values()) == 1
            self.decisions.append({
                "seq": seq, "emulated_s": self.player.emulated_s(), "true_mbps": self.player.rate_now(),
                "estimate_mbps": self.estimate_mbps, "decision_ms": decision_ms, "switched": switched,
                "device_nodes": len(device_side), "predicted_latency_ms": plan.predicted_latency_ms})

        return before_issue

    def _estimate(self, seq: int, result: RunResult) -> float:
        if self.estimator == "oracle":
            return self.player.rate_now()
        sends = [s for s in result.spans if s["kind"] == "send" and s["seq"] == seq - 1
                 and s.get("bytes", 0) >= MIN_PROBE_BYTES]
        if not sends:
            return self.estimate_mbps  # nothing crossed: keep the last estimate
        seconds = sum(s["end_ns"] - s["start_ns"] for s in sends) / 1e9 / result.tdf
        return sum(s["bytes"] for s in sends) * 8 / seconds / 1e6

    def close(self) -> None:
        if self.player is not None:
            self.player.stop()
