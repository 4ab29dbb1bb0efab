"""The dynamic scenario: the link follows a bandwidth trace and the method re-decides before every inference.

The estimate a method decides on is measured, not given (``scenario.estimator``):

- ``probe`` (default): the goodput of the previous inference's own transfers when they said enough about the link
  (at least ``GOODPUT_MIN_BYTES`` over ``GOODPUT_MIN_MS``, ended at most ``PASSIVE_MAX_AGE_MS`` ago); otherwise a
  short packet train through the shaped link between the device's and the server's namespaces
  (:mod:`harness.controller.probe`), sent after the previous inference completed and before the next is issued, so
  it never overlaps a measured inference. A plan that keeps everything on the device still sees the link recover.
- ``smoothed``: the same samples, averaged (EWMA) while the link holds steady; a sample that differs from the
  estimate by more than ``RESET_RATIO`` is taken as a step of the link and replaces it.
- ``last``: only the previous inference's transfers (passive); with nothing crossing it keeps its last estimate.
- ``oracle``: the trace's true rate, the bound any estimator could reach.
- ``fixed``: the trace's mean rate, always: the plan chosen once for the average link, never re-decided.

Every decision is recorded with its time, the estimate and its source, the true rate, the estimate's age (emulated
ms since the measurement it rests on) and what probing cost (bytes, emulated ms); with the controller's clock and the
TDF at that moment (``at_ns``, ``tdf``), which place the transfers that follow it on the trace's emulated time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from harness.controller.experiment import ESTIMATORS
from harness.loadgen.result import GOODPUT_MIN_BYTES, GOODPUT_MIN_MS, RunResult, goodput_mbps
from harness.loadgen.schedule import BeforeIssue, Workers, wait_all, wait_for_span
from harness.controller.probe import LinkProber, ProbeSample
from harness.controller.traces import Trace, TracePlayer
from harness.network.base import Network
from partitioners.base import LinkState, Partitioner, Plan, device_side_of

SMOOTHING = 0.5  # EWMA weight of a new sample (smoothed)
# Emulated: an older sample is stale. A link that fades in 0.5 s blocks (link=rayleigh) is unrelated to itself one
# arrival interval later, so the transfers of the previous inference are too old at the default 500 ms interval.
PASSIVE_MAX_AGE_MS = 100.0
RESET_RATIO = 0.3  # smoothed: a sample this far from the estimate is a step of the link, not noise


@dataclass
class Sample:
    """One measurement of the link: rate (undilated Mbit/s), where it came from, when it ended, what it cost."""

    mbps: float
    source: str
    end_ns: int
    probe_bytes: int = 0
    probe_ms: float = 0.0


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
    prober: LinkProber | None = None
    estimate_mbps: float = 0.0
    estimate_ns: int | None = None  # when the measurement behind the estimate ended (None: nothing measured yet)
    arrivals: int = 0  # inferences issued so far, repeats included: each takes the next arrival slot
    last_seq: int | None = None

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"scenario.estimator={self.estimator!r} is not one of {list(ESTIMATORS)}")
        self.estimate_mbps = self.initial_mbps

    def hook(self, topology: Network, controller: Workers, result: RunResult) -> BeforeIssue:
        device, server = list(controller.endpoints)
        if self.estimator in ("probe", "smoothed"):
            self.prober = LinkProber(topology, device, server, result.tdf)  # type: ignore[arg-type]
        self.player = TracePlayer(self.trace, lambda mbps: topology.set_rate(device, server, mbps),
                                  result.tdf).start()
        controller.on_retime.append(self.player.retime)  # a new TDF: the trace keeps its place
        if self.prober is not None:
            controller.on_retime.append(lambda tdf: setattr(self.prober, "tdf", tdf))

        def before_issue(seq: int) -> None:
            # Inferences arrive every interval_ms of emulated time, so that the run walks through the trace.
            due_s, previous = self.arrivals * self.interval_ms / 1e3, self.last_seq
            self.arrivals, self.last_seq = self.arrivals + 1, seq
            if (wait_s := (due_s - self.player.emulated_s()) * self.player.tdf) > 0:
                time.sleep(wait_s)
            self.player.settle()  # an arrival at a step of the trace: the link has its new rate first
            if previous is not None and self.sends_data:  # the previous transfer's ACK report is the measurement
                wait_for_span(controller, result, previous, "send")
            sample = self._estimate(previous, result)
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
            now_ns = time.monotonic_ns()
            self.decisions.append({
                "seq": seq, "at_ns": now_ns, "tdf": self.player.tdf, "emulated_s": self.player.emulated_s(now_ns),
                "true_mbps": self.player.rate_now(now_ns),
                "estimate_mbps": self.estimate_mbps, "estimator": self.estimator,
                "source": sample.source if sample else "held",
                "estimate_age_ms": (now_ns - self.estimate_ns) / 1e6 / result.tdf if self.estimate_ns else None,
                "probe_bytes": sample.probe_bytes if sample else 0, "probe_ms": sample.probe_ms if sample else 0.0,
                "decision_ms": decision_ms, "switched": switched,
                "device_nodes": len(device_side), "predicted_latency_ms": plan.predicted_latency_ms})

        return before_issue

    def _estimate(self, previous: int | None, result: RunResult) -> Sample | None:
        """Update ``estimate_mbps`` before an inference (``previous``: the one issued before it); the sample it
        rests on (None: the estimate is held)."""
        now_ns = time.monotonic_ns()
        if self.estimator in ("oracle", "fixed"):
            rate = self.player.rate_now(now_ns) if self.estimator == "oracle" else self.trace.mean_mbps
            sample = Sample(rate, self.estimator, now_ns)
        else:
            sample = self._passive(previous, result, min_ms=0.0 if self.estimator == "last" else GOODPUT_MIN_MS)
            idle = all(s in result.ends_ns for s in result.starts_ns)  # a probe must never overlap an inference
            if self.estimator != "last" and idle and (sample is None or self._stale(sample, result.tdf)):
                sample = self._probe()
        if sample is None:
            return None
        if self.estimator == "smoothed" and self.estimate_ns is not None and \
                abs(sample.mbps - self.estimate_mbps) <= RESET_RATIO * self.estimate_mbps:
            self.estimate_mbps = SMOOTHING * sample.mbps + (1 - SMOOTHING) * self.estimate_mbps
        else:
            self.estimate_mbps = sample.mbps
        self.estimate_ns = sample.end_ns
        return sample

    def _passive(self, previous: int | None, result: RunResult, min_ms: float) -> Sample | None:
        """The goodput of inference ``previous``'s transfers (sender start to receiver ACK), if they said enough."""
        sends = [s for s in result.spans if s["kind"] == "send" and s["seq"] == previous]
        sent = sum(s.get("bytes", 0) for s in sends)
        seconds = sum(s["end_ns"] - s["start_ns"] for s in sends) / 1e9 / result.tdf_of(previous or 0)
        if previous is None or sent < GOODPUT_MIN_BYTES or seconds * 1e3 < min_ms:
            return None
        return Sample(goodput_mbps(sent, seconds), "passive", max(s["end_ns"] for s in sends))

    def _stale(self, sample: Sample, tdf: float) -> bool:
        return (time.monotonic_ns() - sample.end_ns) / 1e6 / tdf > PASSIVE_MAX_AGE_MS

    def _probe(self) -> Sample:
        assert self.prober is not None
        probe: ProbeSample = self.prober.measure(self.estimate_mbps)
        return Sample(probe.mbps, "probe", probe.end_ns, probe.bytes, probe.emulated_ms)

    def close(self) -> None:
        if self.player is not None:
            self.player.stop()
        if self.prober is not None:
            self.prober.close()
