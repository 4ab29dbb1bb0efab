"""QDMP (Zhang et al., IMWUT 2020): min-cut only between adjacent cut vertices.

A cut vertex is a node that every input->result path passes through (a dominator of the result) and that is an
ancestor or a descendant of every other node. With cut vertices c_1 < ... < c_m in topological order, every device
side holds some prefix c_1..c_k of them and not c_{k+1}; it then holds all of c_k's ancestors, none of c_{k+1}'s
descendants, and only the nodes *between* c_k and c_{k+1} are free. So the optimum is the best over the segments k
of the min-cut of segment k alone: everything up to c_k merged into one node pinned to the device, everything from
c_{k+1} on merged into one node pinned to the server. A segment with nothing between is a single cut ("cut right
after c_k"), costed in closed form. The result is exactly DADS's optimum (tests/test_mincut.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import networkx as nx

from partitioners.base import CutProblem, LinkState, Partitioner, Plan, cut_plan
from partitioners.flow import (Cut, CutGraph, FLOWS, NetworkxCut, ScipyCut, check_choice, cheapest, min_cut_solver,
                               ms_per_byte, zero_crossing_cut)


def cut_vertices(problem: CutProblem) -> list[str]:
    """The nodes every input->result path passes through and comparable with every node, in topological order."""
    dag = nx.DiGraph((n, s) for n in problem.order for s in problem.succs[n])
    dag.add_nodes_from(problem.order)
    idom = nx.immediate_dominators(dag, problem.input)
    chain, node = [problem.result], problem.result
    while node != problem.input:
        node = idom[node]
        chain.append(node)
    position = {n: i for i, n in enumerate(problem.order)}
    total = len(problem.order)
    comparable = [c for c in chain if len(nx.ancestors(dag, c)) + len(nx.descendants(dag, c)) + 1 == total]
    return sorted(comparable, key=position.__getitem__)


@dataclass
class Segment:
    """The cuts holding cut vertices c_1..c_k and not c_k+1: the free nodes between them, the rest merged into one
    node pinned to the device and one pinned to the server."""

    graph: CutGraph
    solver: NetworkxCut | ScipyCut | None  # None: nothing is free, the only cut is ``fixed``
    fixed: Cut | None


@dataclass
class Segments:
    """What ``prepare`` leaves for the online decision."""

    problem: CutProblem
    segments: list[Segment]
    silent: Cut


class QDMP(Partitioner):
    """Exact min-cut, solved segment by segment between adjacent cut vertices."""

    name = "qdmp"
    kind = "cut"

    def __init__(self, name: str = "qdmp", objective: str = "latency", flow: str = "networkx") -> None:
        # max(device, link, server) does not split into per-segment min-cuts: only latency is exact here.
        self.objective = check_choice("objective", objective, ("latency",), name)
        self.flow = check_choice("flow", flow, FLOWS, name)

    def prepare(self, problem: CutProblem) -> Segments:
        graph = CutGraph.from_problem(problem)
        index = {n: i for i, n in enumerate(problem.order)}
        vertices = [index[c] for c in cut_vertices(problem)]
        ancestors = _closures(graph, reverse=True)
        descendants = _closures(graph, reverse=False)
        bounds = list(zip([None] + vertices, vertices + [None]))
        segments = [self._segment(graph, ancestors[lo] if lo is not None else set(),
                                  descendants[hi] if hi is not None else set())
                    for lo, hi in bounds]
        return Segments(problem, [s for s in segments if s is not None], zero_crossing_cut(graph))

    def _segment(self, graph: CutGraph, device: set[int], server: set[int]) -> Segment | None:
        """The segment whose device side holds ``device`` and whose server side holds ``server``."""
        if graph.on_device & server:
            return None  # the input cannot run on the server
        device = device | graph.on_device
        free = [g for g in range(len(graph)) if g not in device and g not in server]
        label = {g: i for i, g in enumerate(free)}  # free nodes stay apart; each pinned side becomes one node
        label.update({g: len(free) for g in device})
        label.update({g: len(free) + 1 for g in server})
        sub = replace(graph, on_server=frozenset(server)).contract([label[g] for g in range(len(graph))])
        if not free:
            return Segment(sub, None, Cut.of(sub, [len(free)]))
        return Segment(sub, min_cut_solver(sub, self.flow), None)

    def decide(self, prepared: Segments, link: LinkState) -> Plan:
        cuts = sum(seg.solver is not None for seg in prepared.segments)
        return cut_plan(self.name, prepared.problem, set(self.best_cut(prepared, link).device), link,
                        {"segments": len(prepared.segments), "segments_min_cut": cuts})

    def best_cut(self, prepared: Segments, link: LinkState) -> Cut:
        """The optimal cut: the best of every segment's."""
        x = ms_per_byte(link)
        best = None
        for seg in prepared.segments:
            cut = seg.fixed if seg.solver is None else Cut.of(seg.graph, seg.solver.solve(x))
            if best is None or cut.a + x * cut.b < best.a + x * best.b:
                best = cut
        return cheapest(best, prepared.silent, link)


def _closures(graph: CutGraph, reverse: bool) -> list[set[int]]:
    """For each group: itself with all its ancestors (reverse) or descendants."""
    order = graph.topological_order()
    neighbours: dict[int, set[int]] = {g: set() for g in range(len(graph))}
    for p, c in graph.edges():
        neighbours[c if reverse else p].add(p if reverse else c)
    closure: list[set[int]] = [set() for _ in range(len(graph))]
    for g in (order if reverse else reversed(order)):
        closure[g] = {g}.union(*(closure[n] for n in neighbours[g]))
    return closure
