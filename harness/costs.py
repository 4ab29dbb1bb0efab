"""From a model graph and per-endpoint node times to the problem a method solves."""

from __future__ import annotations

from typing import Mapping

from harness.graph import ModelGraph
from partitioners.base import CutProblem


def cut_problem(graph: ModelGraph, device_ms: Mapping[str, float], server_ms: Mapping[str, float]) -> CutProblem:
    """The device/server cut problem of ``graph``: every node but the fx ``output`` marker, in topological order."""
    order = [n for n in graph.order if graph[n].op != "output"]
    keep = set(order)
    return CutProblem(
        order=order,
        preds={n: tuple(p for p in graph[n].preds if p in keep) for n in order},
        succs={n: tuple(s for s in graph[n].succs if s in keep) for n in order},
        out_bytes={n: graph[n].out_bytes for n in order},
        device_ms={n: float(device_ms[n]) for n in order},
        server_ms={n: float(server_ms[n]) for n in order},
        input=graph.input_name,
        result=graph.result_name,
    )
