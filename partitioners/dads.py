"""DADS (Hu, Bao, Wang, Liu, INFOCOM 2019): the optimal device/server cut of a DAG as a minimum s-t cut.

DSL (light load, ``objective="latency"``) is exact: the min-cut of the network in :mod:`partitioners.flow` at the
link's bandwidth is the least sequential latency. DSH (heavy load, ``objective="throughput"``) minimises the slowest
pipeline stage, max(device, link, server), which is NP-hard; as in the paper, it solves DSL with device times scaled
by alpha and server times by gamma over a grid, then refines the grid around the best point with shrinking steps,
and keeps the cut with the smallest bottleneck. The grid holds alpha = gamma = 1 and the cut that sends nothing is
tried too (DSL's two candidates), so DSH's bottleneck is never worse than DSL's. Each grid point is one min-cut
(57 with the defaults): with ``flow="networkx"`` on a large model that is seconds per decision; ``flow="scipy"``
is ~30x faster, and ``flow="ortools"`` (OR-tools' push-relabel, the optional extra ``flow``) faster still
(``benchmarks/decision_time.py`` measures all three).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable

from partitioners.base import CutProblem, LinkState, Partitioner, Plan, cut_plan
from partitioners.flow import (FLOWS, Cut, CutGraph, NetworkxCut, OrtoolsCut, ScipyCut, check_choice, cheapest,
                               min_cut_solver, ms_per_byte, zero_crossing_cut)

OBJECTIVES = ("latency", "throughput")


@dataclass
class Network:
    """What ``prepare`` leaves for the online decision: the model's min-cut network, ready for any bandwidth."""

    problem: CutProblem
    graph: CutGraph
    solver: NetworkxCut | ScipyCut | OrtoolsCut
    silent: Cut  # the best cut that sends nothing (it pays no delay)


class DADS(Partitioner):
    """DSL (exact min-cut) for latency, DSH (scaled min-cut grid search) for throughput."""

    name = "dads"
    kind = "cut"

    def __init__(self, name: str = "dads", objective: str = "latency", flow: str = "networkx",
                 grid_exponents: int = 2, refine_rounds: int = 4) -> None:
        self.objective = check_choice("objective", objective, OBJECTIVES, name)
        self.flow = check_choice("flow", flow, FLOWS, name)
        if grid_exponents < 0 or refine_rounds < 0:
            raise ValueError(f"{name}: grid_exponents and refine_rounds must be >= 0, got {grid_exponents}, "
                             f"{refine_rounds}")
        self.grid_exponents = grid_exponents  # DSH's first grid: alpha, gamma in 2**-k .. 2**k
        self.refine_rounds = refine_rounds  # DSH's refinements: 3x3 around the best, step square-rooted each time

    def prepare(self, problem: CutProblem) -> Network:
        graph = CutGraph.from_problem(problem)
        return Network(problem, graph, min_cut_solver(graph, self.flow), zero_crossing_cut(graph))

    def decide(self, prepared: Network, link: LinkState) -> Plan:
        if self.objective == "latency":
            return cut_plan(self.name, prepared.problem, set(self.best_cut(prepared, link).device), link)
        cut, weights = self.throughput_cut(prepared, link)
        stages = prepared.problem.stage_ms(set(cut.device), link)
        return cut_plan(self.name, prepared.problem, set(cut.device), link,
                        {"stage_ms": list(stages), "alpha": weights[0], "gamma": weights[1]})

    def best_cut(self, prepared: Network, link: LinkState) -> Cut:
        """The decision without its plan: DSL's cut of least latency, or DSH's (``throughput_cut``)."""
        if self.objective == "throughput":
            return self.throughput_cut(prepared, link)[0]
        cut = Cut.of(prepared.graph, prepared.solver.solve(ms_per_byte(link)))
        return cheapest(cut, prepared.silent, link)

    def throughput_cut(self, prepared: Network, link: LinkState) -> tuple[Cut, tuple[float | None, float | None]]:
        """DSH: the cut with the smallest bottleneck stage found by the alpha/gamma search, and its weights."""
        graph, x = prepared.graph, ms_per_byte(link)
        seen: dict[tuple[float, float], tuple[tuple[float, float], tuple[int, ...]]] = {}

        def score(groups: Iterable[int]) -> tuple[float, float]:
            dev, nbytes, srv = graph.stages(groups)
            return max(dev, x * nbytes, srv), dev + x * nbytes + srv  # the bottleneck; ties: lower latency

        def evaluate(weights: tuple[float, float]) -> tuple[tuple[float, float], tuple[int, ...]]:
            if weights not in seen:
                groups = tuple(prepared.solver.solve(x, *weights))
                seen[weights] = (score(groups), groups)
            return seen[weights]

        k = self.grid_exponents
        grid = [2.0**e for e in range(-k, k + 1)]
        best = min(itertools.product(grid, grid), key=lambda w: evaluate(w)[0])
        step = 2.0
        for _ in range(self.refine_rounds):
            step = step**0.5
            best = min(((best[0] * fa, best[1] * fg) for fa, fg in itertools.product((1 / step, 1.0, step), repeat=2)),
                       key=lambda w: evaluate(w)[0])
        # DSL may prefer the cut that sends nothing (it pays no delay): keep DSH never worse than DSL.
        silent = [g for g in range(len(graph)) if graph.members[g][0] in prepared.silent.device]
        if score(silent) < evaluate(best)[0]:
            return prepared.silent, (None, None)
        return Cut.of(graph, evaluate(best)[1]), best
