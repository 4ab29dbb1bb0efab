"""Neurosurgeon (Kang et al., ASPLOS 2017): the best single layer boundary of a chain.

On a DAG it walks a topological order and considers only the boundaries where exactly one tensor crosses, as the
DADS paper's baseline does. ``prepare`` precomputes, for each such boundary, the compute time on both sides and the
bytes that cross; ``decide`` picks the boundary minimising device + transfer + server time at the given bandwidth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from partitioners.base import CutProblem, LinkState, Partitioner, Plan, cut_plan


@dataclass
class Boundaries:
    problem: CutProblem
    prefix_len: np.ndarray  # device side = problem.order[:prefix_len]
    compute_ms: np.ndarray  # device prefix + server suffix + encoding and decoding what crosses
    crossing_bytes: np.ndarray
    device_ms: np.ndarray  # device prefix + encoding what crosses (the throughput objective's first stage)


class Neurosurgeon(Partitioner):
    name = "neurosurgeon"

    def __init__(self, name: str = "neurosurgeon", objective: str = "latency") -> None:
        if objective not in ("latency", "throughput"):
            raise ValueError(f"neurosurgeon: objective {objective!r} is not one of ['latency', 'throughput']")
        self.objective = objective

    def prepare(self, problem: CutProblem) -> Boundaries:
        order = problem.order
        remaining = {n: len(problem.succs[n]) for n in order}  # successors not yet on the device
        device = np.cumsum([problem.device_ms[n] for n in order])
        server_total = sum(problem.server_ms.values())
        server_prefix = np.cumsum([problem.server_ms[n] for n in order])
        open_tensors: set[str] = set()
        lengths, compute, crossing, device_stage = [], [], [], []
        for i, node in enumerate(order):
            for p in problem.preds[node]:
                remaining[p] -= 1
                if remaining[p] == 0:
                    open_tensors.discard(p)
            if remaining[node]:
                open_tensors.add(node)
            if len(open_tensors) <= 1:  # one tensor crosses (or none: device-only)
                encode = sum(problem.encode_ms.get(t, 0.0) for t in open_tensors)
                decode = sum(problem.decode_ms.get(t, 0.0) for t in open_tensors)
                lengths.append(i + 1)
                compute.append(device[i] + server_total - server_prefix[i] + encode + decode)
                crossing.append(sum(problem.out_bytes[t] for t in open_tensors))
                device_stage.append(device[i] + encode)
        return Boundaries(problem, np.array(lengths), np.array(compute), np.array(crossing, dtype=float),
                          np.array(device_stage))

    def decide(self, prepared: Boundaries, link: LinkState) -> Plan:
        transfer = prepared.crossing_bytes * 8.0 / (link.bandwidth_mbps * 1e3)
        if self.objective == "latency":
            cost = prepared.compute_ms + transfer
        else:  # throughput: the slowest pipeline stage
            device = prepared.device_ms
            cost = np.maximum(np.maximum(device, transfer), prepared.compute_ms - device)
        best = int(np.argmin(cost))
        device_side = set(prepared.problem.order[: prepared.prefix_len[best]])
        return cut_plan(self.name, prepared.problem, device_side, link,
                        {"candidates": int(len(prepared.prefix_len))})
