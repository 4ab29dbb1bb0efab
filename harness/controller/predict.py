"""What the cost model says about a job without running it: the decision, the predicted latency and throughput, and
how long the job would take in real time on this machine (``mode=predict`` and ``runtime.max_real_minutes``).

The same graph, node costs, strategy, ``prepare``/``decide`` and TDF calibration as a measured run
(``harness.controller.pipeline``), stopping before any worker starts. A prediction is as good as the cost model;
``benchmarks/emulation_fidelity.py`` measures how far measured runs land from it, which is what licenses reading
predicted runs beside measured ones.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from hardware.profiles import LocalProfile
from harness.controller.cut import CutStrategy
from harness.controller.experiment import Experiment
from harness.controller.spatial import SpatialStrategy
from harness.model.graph import ModelGraph, build_graph
from harness.model.models import ModelSpec
from partitioners.base import LinkState, Plan, device_side_of

DECISION_REPEATS = 5
# Real seconds a measured run spends outside its inferences: namespaces and shaping, spawning and loading the
# workers (each imports torch and builds its sub-model), the link probe, the records (measured on 2 cores: 8-15 s).
SETUP_S = 15.0


def timed(fn: Callable[..., Any], *args: Any, repeats: int = 1) -> tuple[Any, float]:
    """Call ``fn`` ``repeats`` times; the last result and the median time in ms."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter_ns()
        result = fn(*args)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return result, statistics.median(times)


def cores() -> int:
    """The cores this process may run on: what concurrent workers share."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def calibrate_tdf(ratios: dict[str, float], margin: float, concurrent: int) -> tuple[float, str | None]:
    """The TDF the profile alone gives, and the endpoint that sets it: the warm-up runs at it, and a run records it
    beside the TDF its workers' measured compute set (``tdf_from_profile``). ``ratios``: per endpoint, the local
    profile's compute over emulated compute. ``concurrent`` workers computing at once on this machine's cores
    slow each other down; that is headroom too."""
    if not ratios:
        return 1.0, None
    endpoint = max(ratios, key=ratios.__getitem__)
    contention = max(1.0, concurrent / cores())
    return max(1.0, margin * contention * ratios[endpoint]), endpoint


def strategy_for(exp: Experiment, graph: Any, node_ms: dict[str, dict[str, float]]) -> CutStrategy | SpatialStrategy:
    return (SpatialStrategy if exp.method.kind == "spatial" else CutStrategy)(exp, graph, node_ms)


@dataclass
class Prediction:
    """One job as the cost model sees it (times in emulated ms unless named real)."""

    plan: Plan
    metrics: dict[str, float] = field(default_factory=dict)
    tdf_set_by: str | None = None

    @property
    def real_minutes(self) -> float:
        return self.metrics["predicted_real_s"] / 60.0


def predicted_throughput_ips(exp: Experiment, strategy: CutStrategy | SpatialStrategy, problem: Any,
                             plan: Plan) -> float:
    """Inferences per second: pipelined cut plans are paced by their slowest stage, others by their latency
    (a spatial plan's latency is already its batch time per task)."""
    if exp.method.kind == "cut" and exp.scenario.in_flight > 1:
        link = LinkState(exp.link.spec.bandwidth_mbps, exp.link.spec.delay_ms)
        return 1e3 / max(problem.stage_ms(device_side_of(plan), link))
    return 1e3 / plan.predicted_latency_ms


def emulated_run_ms(exp: Experiment, latency_ms: float, throughput_ips: float) -> float:
    """Emulated time of all the run's inferences (warm-up included)."""
    total = exp.scenario.total
    if exp.scenario.name == "dynamic":
        return total * max(latency_ms, exp.scenario.interval_ms)
    if exp.method.kind == "cut" and exp.scenario.in_flight > 1:
        return latency_ms + (total - 1) * 1e3 / throughput_ips
    return total * latency_ms


def predicted_tdf(exp: Experiment, strategy: CutStrategy | SpatialStrategy, graph: Any,
                  plan: Plan) -> tuple[float, str | None]:
    """The TDF a measured run would start at (before any raise after its warm-up)."""
    if exp.runtime.remote or not strategy.pads():
        return 1.0, None
    if exp.runtime.tdf is not None:
        return exp.runtime.tdf, None
    local_ms = LocalProfile(threads=exp.runtime.threads_per_worker).node_ms(graph)
    return calibrate_tdf(strategy.compute_ratios(plan, local_ms), exp.runtime.tdf_margin, strategy.concurrent(plan))


@functools.lru_cache(maxsize=8)
def _graph_of(spec_json: str) -> ModelGraph:
    return build_graph(ModelSpec.from_config(json.loads(spec_json)))


def graph_of(spec: ModelSpec) -> ModelGraph:
    """The model's graph, built once per process: a predicted sweep visits each model many times, and tracing and
    shape propagation cost more than the decision."""
    return _graph_of(json.dumps(spec.to_dict(), sort_keys=True))


def predict(exp: Experiment) -> Prediction:
    """Decide as a measured run would, then read latency, throughput and real time off the cost model."""
    graph = graph_of(exp.model)
    node_ms = exp.hardware.node_ms(graph)
    strategy = strategy_for(exp, graph, node_ms)
    problem = strategy.problem()
    prepared, offline_ms = timed(exp.method.prepare, problem)
    link = LinkState(exp.link.spec.bandwidth_mbps, exp.link.spec.delay_ms)
    plan, decision_ms = timed(exp.method.decide, prepared, link, repeats=DECISION_REPEATS)
    throughput = predicted_throughput_ips(exp, strategy, problem, plan)
    emulated_ms = emulated_run_ms(exp, plan.predicted_latency_ms, throughput)
    tdf, endpoint = predicted_tdf(exp, strategy, graph, plan)
    metrics = {"decision_time_ms": decision_ms, "offline_time_ms": offline_ms,
               "predicted_latency_ms": plan.predicted_latency_ms, "predicted_throughput_ips": throughput,
               "predicted_emulated_s": emulated_ms / 1e3, "predicted_tdf": tdf,
               "predicted_real_s": SETUP_S + tdf * emulated_ms / 1e3,
               **strategy.plan_metrics(problem, plan.to_json())}
    strategy.close()
    return Prediction(plan=plan, metrics=metrics, tdf_set_by=endpoint)
