"""The cut strategy: a device/server method's plan run by two workers, one per side of the cut."""

from __future__ import annotations

from typing import Any

from hardware.codec_costs import WireCosts
from hardware.profiles import LocalProfile
from harness.controller.dynamic import Redecider
from harness.controller.experiment import Experiment
from harness.controller.traces import load_trace
from harness.controller.runtime import WorkerSpec
from harness.model.codecs import Codecs
from harness.model.graph import ModelGraph, crossing_tensors
from harness.model.submodels import full_assignment
from harness.network.link import LinkSpec
from partitioners.base import Plan, cut_problem, device_side_of


def stage_plans(graph: ModelGraph, plan: Plan, roles: tuple[str, str], node_ms: dict[str, dict[str, float]],
                codecs: Codecs = Codecs(), wire: WireCosts | None = None) -> list[dict[str, Any]]:
    """What each side needs of a cut plan: the assignment, the tensors crossing with the codec and shape of each,
    its emulated budget (its nodes, and encoding what it sends or decoding what it receives)."""
    device_side = device_side_of(plan)
    assignment = full_assignment(graph, {n: 0 if n in device_side else 1 for n in graph.order
                                         if graph[n].op != "output"})
    crossing = [name for name, src, dst in crossing_tensors(graph, assignment) if (src, dst) == (0, 1)]
    codec_ms = [wire.encode_ms if wire else {}, wire.decode_ms if wire else {}]
    tensors = {n: {"codec": codecs.for_node(graph, n).name, "shape": list(graph[n].out_shape or ())}
               for n in crossing}
    return [{"assignment": assignment, "send": crossing, "recv": crossing, "tensors": tensors,
             "jpeg_quality": codecs.input.quality,
             "budget_ms": sum(node_ms[endpoint][n] for n, p in assignment.items()
                              if p == index and graph[n].op != "output")
             + sum(codec_ms[index].get(n, 0.0) for n in crossing)}
            for index, endpoint in enumerate(roles)]


def cut_workers(exp: Experiment, graph: ModelGraph, plan: Plan, node_ms: dict[str, dict[str, float]], tdf: float,
                pad: bool, keep_model: bool = False, wire: WireCosts | None = None) -> list[WorkerSpec]:
    """One worker per side of the cut (the server only if it computes, unless plans can change)."""
    roles = exp.hardware.cut_roles
    plans = stage_plans(graph, plan, roles, node_ms, exp.codecs, wire)
    server_needed = keep_model or max(plans[0]["assignment"].values()) == 1
    port = exp.runtime.base_port + 1  # the server listens; distinct ports let real workers share a host
    workers = []
    for index, endpoint in enumerate(roles[: 2 if server_needed else 1]):
        setup = {"model": exp.model.to_dict(), "plan": plans[index], "part": index,
                 "endpoint": endpoint, "tdf": tdf, "pad": pad, "keep_model": keep_model,
                 "max_payload": exp.runtime.max_payload, "threads": exp.runtime.threads_per_worker,
                 "input": graph.input_name, "result": graph.result_name}
        if server_needed:
            peer = roles[1 - index]
            setup["listen" if index else "connect"] = {"peer": peer, "port": port}
            if index == 0:
                setup["pacer"] = {"peer": peer}
        workers.append(WorkerSpec(endpoint, setup))
    return workers


class CutStrategy:
    """Device/server methods (DADS, QDMP, CIC, Neurosurgeon, one side only); re-decides under scenario=dynamic."""

    def __init__(self, exp: Experiment, graph: ModelGraph, node_ms: dict[str, dict[str, float]],
                 wire: WireCosts | None = None) -> None:
        self.exp, self.graph, self.node_ms = exp, graph, node_ms
        self.wire = wire  # the codecs' bytes and times (None: every tensor crosses as float32)
        self.device, self.server = exp.hardware.cut_roles
        self.endpoints = [self.device, self.server]
        self.first = self.device
        self.links: list[tuple[str, str, LinkSpec]] = [(self.device, self.server, exp.link.spec)]
        self.dynamic = exp.scenario.name == "dynamic"
        self.redecider: Redecider | None = None

    def tags(self) -> dict[str, str]:
        if self.exp.hardware.topology != "star":
            return {}
        return {"endpoints": f"{self.device},{self.server}",
                "endpoints_note": f"device-server method on a star: host {self.device} and one server {self.server}"}

    def problem(self) -> Any:
        return cut_problem(self.graph, self.node_ms[self.device], self.node_ms[self.server], self.wire)

    def plan_metrics(self, problem: Any, plan_json: dict[str, Any]) -> dict[str, float]:
        metrics = {"nodes_before": float(len(problem.order))}
        metrics.update({k: float(plan_json[k]) for k in ("nodes_before", "nodes_after") if k in plan_json})
        return metrics

    def pads(self) -> bool:
        return not all(isinstance(self.exp.hardware.endpoints[e], LocalProfile) for e in self.endpoints)

    def compute_ratios(self, plan: Plan, local_ms: dict[str, float]) -> dict[str, float]:
        """Per endpoint: its part's real compute here over its emulated compute."""
        device_side = device_side_of(plan)
        parts = {self.device: list(device_side),
                 self.server: [n["name"] for n in plan.to_json()["nodes"] if n["side"] == "server"]}
        ratios = {}
        for endpoint, nodes in parts.items():
            emulated = sum(self.node_ms[endpoint][n] for n in nodes)
            if emulated > 0:
                ratios[endpoint] = sum(local_ms[n] for n in nodes) / emulated
        return ratios

    def concurrent(self, plan: Plan) -> int:
        """Workers computing at once: both sides only when inferences are pipelined."""
        return 2 if self.exp.scenario.in_flight > 1 else 1

    def workers(self, plan: Plan, tdf: float, pad: bool) -> list[WorkerSpec]:
        return cut_workers(self.exp, self.graph, plan, self.node_ms, tdf, pad, keep_model=self.dynamic, wire=self.wire)

    def in_flight(self, plan: Plan) -> int:
        return self.exp.scenario.in_flight

    def make_hook(self, method: Any, prepared: Any, plan: Plan) -> Any:
        """Under scenario=dynamic: the re-decision before every inference, as it follows the trace."""
        if not self.dynamic:
            return None
        exp = self.exp
        first_plans = stage_plans(self.graph, plan, exp.hardware.cut_roles, self.node_ms, exp.codecs, self.wire)
        self.redecider = Redecider(
            method=method, prepared=prepared, trace=load_trace(exp.link.trace), estimator=exp.scenario.estimator,
            initial_mbps=exp.link.spec.bandwidth_mbps, interval_ms=exp.scenario.interval_ms,
            delay_ms=exp.link.spec.delay_ms,
            make_stage_plans=lambda p: stage_plans(self.graph, p, exp.hardware.cut_roles, self.node_ms, exp.codecs,
                                                   self.wire),
            current=frozenset(device_side_of(plan)),
            sends_data=bool(first_plans[0]["send"]) and max(first_plans[0]["assignment"].values()) == 1)
        return self.redecider.hook

    def close(self) -> None:
        if self.redecider is not None:
            self.redecider.close()

    def decisions(self) -> list[dict[str, Any]] | None:
        """The re-decisions of a dynamic run (None otherwise)."""
        return self.redecider.decisions if self.redecider is not None else None

    def trace_steps(self) -> list[dict[str, float]] | None:
        """When each step of a dynamic run's trace landed on the link (None where no trace was played)."""
        player = self.redecider.player if self.redecider is not None else None
        return player.landings if player is not None else None
