"""What the cost model says about a job without running it: the decision, the predicted latency and throughput, and
how long the job would take in real time on this machine (``mode=predict`` and ``runtime.max_real_minutes``).

The job's first two steps, decide and calibrate (``harness.controller.job``), exactly as a measured run takes them
(``harness.controller.pipeline``), stopping before any worker starts. A prediction is as good as the cost model;
``benchmarks/emulation_fidelity.py`` measures how far measured runs land from it, which is what licenses reading
predicted runs beside measured ones.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from hardware.profiles import LocalProfile
from harness.controller.experiment import Experiment
from harness.controller.job import Strategy, plan_job
from harness.model.graph import ModelGraph, build_graph
from harness.model.models import ModelSpec
from partitioners.base import LinkState, Plan, device_side_of

# Real seconds a measured run spends outside its inferences: namespaces and shaping, spawning and loading the
# workers (each imports torch and builds its sub-model), the link probe, the records (measured on 2 cores: 8-15 s).
SETUP_S = 15.0


@dataclass
class Prediction:
    """One job as the cost model sees it (times in emulated ms unless named real)."""

    plan: Plan
    metrics: dict[str, float] = field(default_factory=dict)
    tdf_set_by: str | None = None

    @property
    def real_minutes(self) -> float:
        return self.metrics["predicted_real_s"] / 60.0


def predicted_throughput_ips(exp: Experiment, strategy: Strategy, problem: Any, plan: Plan) -> float:
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


@functools.lru_cache(maxsize=8)
def _graph_of(spec_json: str) -> ModelGraph:
    return build_graph(ModelSpec.from_config(json.loads(spec_json)))


def graph_of(spec: ModelSpec) -> ModelGraph:
    """The model's graph, built once per process: a predicted sweep visits each model many times, and tracing and
    shape propagation cost more than the decision."""
    return _graph_of(json.dumps(spec.to_dict(), sort_keys=True))


def predict(exp: Experiment, graph: ModelGraph | None = None) -> Prediction:
    """Decide and calibrate as a measured run would (``harness.controller.job``), then read latency, throughput and
    real time off the cost model; ``graph``: the model's, where the caller built it already."""
    graph = graph if graph is not None else graph_of(exp.model)
    local_ms = lambda: LocalProfile(threads=exp.runtime.threads_per_worker).node_ms(graph)  # noqa: E731
    decision = plan_job(exp, graph, local_ms)
    dilation = decision.dilation
    throughput = predicted_throughput_ips(exp, decision.strategy, decision.problem, decision.plan)
    emulated_ms = emulated_run_ms(exp, decision.plan.predicted_latency_ms, throughput)
    decision.strategy.close()
    metrics = {**decision.metrics, "predicted_throughput_ips": throughput, "predicted_emulated_s": emulated_ms / 1e3,
               "predicted_tdf": dilation.tdf, "predicted_real_s": SETUP_S + dilation.tdf * emulated_ms / 1e3}
    return Prediction(plan=decision.plan, metrics=metrics, tdf_set_by=dilation.set_by)
