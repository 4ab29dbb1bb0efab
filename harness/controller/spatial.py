"""The spatial strategy: a HALP or MoDNN plan run by a star of edge servers, one shaped link per secondary."""

from __future__ import annotations

from typing import Any

from hardware.profiles import LocalProfile
from harness.controller.experiment import Experiment
from harness.controller.runtime import WorkerSpec
from harness.model.graph import ModelGraph
from harness.network.link import LinkSpec
from partitioners.base import Plan
from partitioners.spatial import SpatialProblem, kernel_overheads_ms, segment, spatial_problem


def spatial_workers(exp: Experiment, plan: dict[str, Any], tdf: float, pad: bool) -> list[WorkerSpec]:
    """The host dials every secondary (a connection per direction); each secondary listens on its link."""
    host = plan["host"]
    secondaries = [e for e in plan["endpoints"] if e != host]
    for block in plan["blocks"]:
        for e in secondaries:
            if sum(s["endpoint"] == e for s in block["segments"]) > 1:
                raise ValueError(f"spatial plan gives {e} several segments in block {block['layers'][0]}: the "
                                 "runtime sends one band per secondary and block")
    port = exp.runtime.base_port
    common = {"kind": "spatial", "model": exp.model.to_dict(), "plan": plan, "tdf": tdf,
              "pad": pad, "max_payload": exp.runtime.max_payload, "threads": exp.runtime.threads_per_worker}
    workers = [WorkerSpec(host, {**common, "endpoint": host,
                                 "peers": {e: {"peer": e, "port": port + i} for i, e in enumerate(secondaries, 1)},
                                 "pacers": {e: {"peer": e} for e in secondaries}})]
    workers += [WorkerSpec(e, {**common, "endpoint": e, "listen": {"peer": host, "port": port + i},
                               "pacer": {"peer": host}}) for i, e in enumerate(secondaries, start=1)]
    return workers


class SpatialStrategy:
    """Spatial methods: the host scatters row bands to the secondaries, joins their rows, runs the suffix."""

    def __init__(self, exp: Experiment, graph: ModelGraph, node_ms: dict[str, dict[str, float]]) -> None:
        self.exp, self.graph, self.node_ms = exp, graph, node_ms
        self.endpoints = list(exp.hardware.endpoints)
        self.emulated: SpatialProblem | None = None
        self.first = self.endpoints[0]
        self.links: list[tuple[str, str, LinkSpec]] = [(self.first, e, exp.link.spec) for e in self.endpoints[1:]]

    def tags(self) -> dict[str, str]:
        return {}

    def problem(self) -> SpatialProblem:
        self.emulated = spatial_problem(self.graph, self.node_ms, kernel_overheads_ms(self.exp.hardware.endpoints))
        return self.emulated

    def plan_metrics(self, problem: SpatialProblem, plan_json: dict[str, Any]) -> dict[str, float]:
        return {"host_alone_ms": float(plan_json["host_alone_ms"]),
                "predicted_speedup": float(plan_json["speedup_over_host"]), "blocks": float(len(plan_json["blocks"]))}

    def pads(self) -> bool:
        return not all(isinstance(p, LocalProfile) for p in self.exp.hardware.endpoints.values())

    def compute_ratios(self, plan: Plan, local_ms: dict[str, float]) -> dict[str, float]:
        """Per endpoint: the worst real/emulated compute ratio of its segments (the host's suffix included)."""
        assert self.emulated is not None
        plan_json = plan.to_json()
        local = spatial_problem(self.graph, {e: local_ms for e in self.endpoints})
        index = {node: i for i, layer in enumerate(local.layers) for node in layer.nodes}
        ratios: dict[str, float] = {}
        for block in plan_json["blocks"]:
            first, last = index[block["layers"][0]], index[block["layers"][-1]]
            for seg in block["segments"]:
                if seg["compute_ms"] > 0:
                    real = segment(local, first, last, local.host, tuple(seg["out_rows"])).compute_ms
                    ratios[seg["endpoint"]] = max(ratios.get(seg["endpoint"], 0.0), real / seg["compute_ms"])
        host = self.emulated.host
        if self.emulated.suffix_ms[host] > 0:
            ratios[host] = max(ratios.get(host, 0.0), local.suffix_ms[local.host] / self.emulated.suffix_ms[host])
        return ratios

    def concurrent(self, plan: Plan) -> int:
        """Every server computes its band at once."""
        return len(self.endpoints)

    def workers(self, plan: Plan, tdf: float, pad: bool) -> list[WorkerSpec]:
        return spatial_workers(self.exp, plan.to_json(), tdf, pad)

    def in_flight(self, plan: Plan) -> int:
        return max(self.exp.scenario.in_flight, int(plan.to_json().get("tasks_per_batch", 1)))

    def make_hook(self, method: Any, prepared: Any, plan: Plan) -> Any:
        return None

    def close(self) -> None:
        pass

    def decisions(self) -> list[dict[str, Any]] | None:
        return None

    def trace_steps(self) -> list[dict[str, float]] | None:
        return None
