"""One job in explicit steps: decide -> calibrate -> run -> judge -> record.

The first two steps are the same whether the job is measured (``harness.controller.pipeline``) or only predicted
(``mode=predict`` and the real-time budget, ``harness.controller.predict``), and are written once, here, behind one
call (:func:`plan_job`):

- :func:`decide`: the model's node costs on the hardware, the strategy of the method's kind (cut or spatial: the only
  place that branches on it), the method's ``prepare`` (offline) and ``decide`` (online) timed by the harness;
- :func:`calibrate`: the TDF the run starts at, from this machine's local profile of the parts the plan gives each
  endpoint (or the fixed ``runtime.tdf``; 1 where nothing is padded: ``hardware=local_pair``, real boards), and
  whether the workers may calibrate and raise it themselves once they run.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from hardware.codec_costs import WireCosts, endpoint_scale, wire_costs
from hardware.profiles import LocalProfile
from harness.controller.cut import CutStrategy
from harness.controller.experiment import Experiment
from harness.loadgen.dilation import AutoTdf, Dilation, calibrate_tdf
from harness.controller.spatial import SpatialStrategy
from harness.model.graph import ModelGraph
from partitioners.base import LinkState, Plan

DECISION_REPEATS = 5  # the online decision is timed as the median of this many calls

Strategy = CutStrategy | SpatialStrategy


def timed(fn: Callable[..., Any], *args: Any, repeats: int = 1) -> tuple[Any, float]:
    """Call ``fn`` ``repeats`` times; the last result and the median time in ms."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter_ns()
        result = fn(*args)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return result, statistics.median(times)


def strategy_for(exp: Experiment, graph: ModelGraph, node_ms: dict[str, dict[str, float]],
                 wire: WireCosts | None = None) -> Strategy:
    if exp.method.kind == "spatial":
        return SpatialStrategy(exp, graph, node_ms)
    return CutStrategy(exp, graph, node_ms, wire)


def cut_wire_costs(exp: Experiment, graph: ModelGraph, node_ms: dict[str, dict[str, float]],
                   local_ms: Callable[[], dict[str, float]]) -> WireCosts | None:
    """What each tensor costs to cross a cut under the job's codecs (None: float32, no codec time): codec times
    measured here and scaled to the device and the server like their nodes (``local_ms()`` asked only then)."""
    if exp.method.kind != "cut" or not exp.codecs.compresses:
        return None
    scales = [1.0 if isinstance(exp.hardware.endpoints[e], LocalProfile) else endpoint_scale(node_ms[e], local_ms())
              for e in exp.hardware.cut_roles]
    return wire_costs(graph, exp.codecs, *scales, threads=exp.runtime.threads_per_worker)


@dataclass
class Decision:
    """What the method decided for this job, what deciding cost, and the TDF the job starts at."""

    strategy: Strategy
    problem: Any
    prepared: Any
    plan: Plan
    metrics: dict[str, float] = field(default_factory=dict)  # decision and offline time, predicted latency, plan facts
    dilation: Dilation = field(default_factory=Dilation)


def plan_job(exp: Experiment, graph: ModelGraph, local_ms: Callable[[], dict[str, float]]) -> Decision:
    """Decide, then calibrate: what runs where, and at which TDF (``local_ms()``: this machine's node times, asked
    only where a codec's time or the TDF needs them)."""
    decision = decide(exp, graph, local_ms)
    decision.dilation = calibrate(exp, decision, local_ms)
    return decision


def decide(exp: Experiment, graph: ModelGraph, local_ms: Callable[[], dict[str, float]]) -> Decision:
    """Cost the graph on the job's hardware and let the method decide at the job's link (both calls timed);
    ``local_ms()``: this machine's node times, asked only where a codec's time is scaled to an emulated board."""
    node_ms = exp.hardware.node_ms(graph)
    strategy = strategy_for(exp, graph, node_ms, cut_wire_costs(exp, graph, node_ms, local_ms))
    problem = strategy.problem()
    prepared, offline_ms = timed(exp.method.prepare, problem)
    link = LinkState(exp.link.spec.bandwidth_mbps, exp.link.spec.delay_ms)
    plan, decision_ms = timed(exp.method.decide, prepared, link, repeats=DECISION_REPEATS)
    metrics = {"decision_time_ms": decision_ms, "offline_time_ms": offline_ms,
               "predicted_latency_ms": plan.predicted_latency_ms, **strategy.plan_metrics(problem, plan.to_json()),
               **exp.hardware.whole_model_metrics(graph, node_ms)}
    return Decision(strategy, problem, prepared, plan, metrics)


def calibrate(exp: Experiment, decision: Decision, local_ms: Callable[[], dict[str, float]]) -> Dilation:
    """The TDF from the profile: ``local_ms()`` (this machine's node times, asked only when needed) over the
    emulated node times of each endpoint's part, with the run's margin and its workers' contention."""
    strategy, plan = decision.strategy, decision.plan
    if exp.runtime.remote or not strategy.pads():
        return Dilation()
    if exp.runtime.tdf is not None:
        return Dilation(exp.runtime.tdf, pads=True)
    tdf, endpoint = calibrate_tdf(strategy.compute_ratios(plan, local_ms()), exp.runtime.tdf_margin,
                                  strategy.concurrent(plan))
    auto = AutoTdf(exp.runtime.overrun_tolerance_pct, exp.runtime.max_repeats, plan.predicted_latency_ms,
                   together=strategy.concurrent(plan) > 1)
    return Dilation(tdf, pads=True, set_by=endpoint, auto=auto)
