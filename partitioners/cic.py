"""CIC (Yang et al., IJCNN 2022): cut a small *splitting model* online instead of the model's whole DAG.

The paper says only that the DAG is compressed offline, from the model's structure and the two platforms' costs and
independently of the network, and that the small splitting model is min-cut in real time. Our
construction [ours] keeps the optimum *exact at every bandwidth*. A cut S has latency a(S) + x*b(S) with x the link's
ms per byte, so the best latency over all bandwidths is the lower envelope of finitely many lines. ``prepare``:

1. Merges what no optimal cut needs to separate, by two exchange rules that hold at every x >= 0
   (:func:`merge_dominated`). For an edge u->v where v is u's only successor:
   * *forward*: v's only predecessor is u, v is no slower on the device (d(v) <= s(v)) and v sends no more than u
     (out(v) <= out(u), in bytes and in codec time): a cut between u and v is never better than the cut right
     after v (zero-cost views);
   * *backward*: u is no faster on the device (s(u) <= d(u)) and sends at least what it reads (in(u) <= out(u),
     in bytes and in codec time): a device side that ends at u is never better than the same side without u
     (batch norms, activations, widening convolutions).
   A codec's time to encode and decode a crossing tensor is paid once per cut that sends it, like its bytes but
   whatever the bandwidth: it is part of a(S), so every line, and the exactness, stay as they are.
2. Finds the envelope exactly by parametric min-cut (Eisner & Severance): the optimal cuts at x = 0 and x = inf; where
   the lines of two neighbouring optimal cuts meet, one more min-cut either finds a cheaper cut (a new line: recurse
   on both sides) or proves the meeting point a breakpoint of the envelope (:func:`lower_envelope`).
3. The splitting model: groups that every envelope cut puts on the same side are merged (:func:`splitting_model`).
   It holds every envelope cut, and its cuts are cuts of the model, so its min-cut equals the model's at every x.

Online, ``online="mincut"`` cuts the splitting model at the link's bandwidth, by default with a max-flow written for
a handful of nodes (``flow="dense"``, :class:`~partitioners.flow.DenseCut`: exact, as networkx's, which
``flow="networkx"`` keeps); each device side it finds gets its node table once. ``online="envelope"`` bisects the
breakpoints and returns the piece's precomputed cut and node table. The link delay is paid by every cut that sends
something, so both weigh the cut found against the last piece, which sends nothing. Only latency is exact: the stream
scenario's max(device, link, server) is not a line in x, so ``objective`` accepts only "latency".
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

from partitioners.base import CutProblem, LinkState, Partitioner, Plan
from partitioners.flow import Cut, CutGraph, DenseCut, NetworkxCut, PlanTable, check_choice, cheapest, ms_per_byte

ONLINE = ("mincut", "envelope")
ONLINE_FLOWS: dict[str, type[DenseCut] | type[NetworkxCut]] = {"dense": DenseCut, "networkx": NetworkxCut}
# A min-cut at a meeting point counts as cheaper than the two lines when below them by more than this (relative):
# float noise stays far under it, and a missed line could lower the latency by no more than it.
_TOLERANCE = 1e-12


# ---- 1. structural merges ---------------------------------------------------------------------------------------


def merge_dominated(graph: CutGraph) -> CutGraph:
    """Merge, round after round, every edge u->v that one of the two exchange rules allows (module docstring)."""
    while True:
        pairs = _mergeable_pairs(graph)
        if not pairs:
            return graph
        # Disjoint pairs: each rule's exchange argument holds for any cut, so they can all be applied at once.
        root = list(range(len(graph)))
        for u, v in pairs:
            root[v] = u
        renumber = {r: i for i, r in enumerate(sorted(set(root)))}
        graph = graph.contract([renumber[r] for r in root])


def _mergeable_pairs(graph: CutGraph) -> list[tuple[int, int]]:
    n = len(graph)
    preds: list[set[int]] = [set() for _ in range(n)]
    succs: list[set[int]] = [set() for _ in range(n)]
    out_bytes, in_bytes = [0] * n, [0] * n
    out_codec, in_codec = [0.0] * n, [0.0] * n
    for t in graph.tensors:
        out_bytes[t.producer] += t.nbytes
        out_codec[t.producer] += t.codec_ms
        for c in t.consumers:
            preds[c].add(t.producer)
            succs[t.producer].add(c)
            in_bytes[c] += t.nbytes
            in_codec[c] += t.codec_ms
    pairs, used = [], set()
    for u in range(n):
        if len(succs[u]) != 1 or u in used:
            continue
        (v,) = succs[u]
        if v in used:
            continue
        forward = (preds[v] == {u} and v not in graph.on_server and graph.device_ms[v] <= graph.server_ms[v]
                   and out_bytes[v] <= out_bytes[u] and out_codec[v] <= out_codec[u])
        backward = (u not in graph.on_device and graph.server_ms[u] <= graph.device_ms[u]
                    and in_bytes[u] <= out_bytes[u] and in_codec[u] <= out_codec[u])
        if forward or backward:
            pairs.append((u, v))
            used.update((u, v))
    return pairs


# ---- 2. the envelope of latency over all bandwidths -------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """An optimal cut (groups of the graph it was found on) and its latency line a + x*b."""

    a: float
    b: int
    groups: tuple[int, ...]

    def at(self, x: float) -> float:
        return self.a + x * self.b


def lower_envelope(graph: CutGraph, solver: NetworkxCut | None = None) -> list[tuple[float, Line]]:
    """The pieces (first x where optimal, cut) of min over cuts of latency, for x = ms per byte in [0, inf).

    Needs the all-device cut to be feasible (no server pins), so that some cut sends nothing.
    """
    solver = solver or NetworkxCut(graph)

    def optimum(x: float) -> Line:
        groups = tuple(solver.solve(x))
        return Line(*graph.line(groups), groups)

    def between(lo: Line, hi: Line) -> list[Line]:
        """The envelope's lines from lo (optimal at a smaller x) to hi, both included."""
        if lo.b <= hi.b:
            return [lo, hi]
        meet = (hi.a - lo.a) / (lo.b - hi.b)
        mid = optimum(max(meet, 0.0))
        level = lo.at(meet)
        if mid.at(meet) < level - _TOLERANCE * abs(level) and hi.b < mid.b < lo.b:
            return between(lo, mid)[:-1] + between(mid, hi)
        return [lo, hi]

    return _hull(between(optimum(0.0), optimum(math.inf)))


def _hull(lines: list[Line]) -> list[tuple[float, Line]]:
    """Lower envelope on x >= 0 of lines given by decreasing slope: (start, line) pieces, starts increasing."""
    pieces: list[tuple[float, Line]] = []
    for line in sorted(lines, key=lambda l: (-l.b, l.a)):
        if pieces and pieces[-1][1].b == line.b:
            continue  # same slope, higher or equal intercept
        while pieces:
            start, top = pieces[-1]
            meet = (line.a - top.a) / (top.b - line.b)  # where line becomes cheaper than top
            if meet > start:
                pieces.append((meet, line))
                break
            pieces.pop()
        else:
            pieces.append((0.0, line))
    return pieces


# ---- 3. the splitting model ---------------------------------------------------------------------------------------


def splitting_model(graph: CutGraph, cuts: list[tuple[int, ...]]) -> CutGraph:
    """Merge the groups that every cut in ``cuts`` puts on the same side."""
    sides = [set(c) for c in cuts]
    label: dict[tuple[bool, ...], int] = {}
    return graph.contract([label.setdefault(tuple(g in s for s in sides), len(label)) for g in range(len(graph))])


class FoundCuts:
    """The device sides of the splitting model that its min-cut has returned, each with its cut and node table.

    A side's table lists every model node, so it is made once: in ``prepare`` for the envelope's cuts, else the first
    time the min-cut returns the side.
    """

    def __init__(self, model: CutGraph, table: PlanTable) -> None:
        self.model, self.table = model, table
        self._found: dict[tuple[int, ...], tuple[Cut, list[dict[str, Any]]]] = {}

    def get(self, groups: list[int]) -> tuple[Cut, list[dict[str, Any]]]:
        key = tuple(groups)
        found = self._found.get(key)
        if found is None:
            cut = Cut.of(self.model, key)
            found = self._found[key] = (cut, self.table.nodes(cut.device))
        return found


@dataclass
class Splitting:
    """What ``prepare`` leaves for the online decision."""

    problem: CutProblem
    model: CutGraph  # the splitting model
    solver: DenseCut | NetworkxCut  # its min-cut (online="mincut")
    found: FoundCuts  # the sides that min-cut returns, with their tables (online="mincut")
    starts: list[float]  # the envelope's breakpoints in ms per byte (online="envelope")
    pieces: list[Cut]
    tables: list[list[dict[str, Any]]]  # each piece's plan table
    table: PlanTable
    extra: dict[str, Any]


class CIC(Partitioner):
    """Min-cut of a splitting model made offline, exact at every bandwidth; or a bisection of its envelope."""

    name = "cic"
    kind = "cut"

    def __init__(self, name: str = "cic", objective: str = "latency", online: str = "mincut",
                 flow: str = "dense") -> None:
        self.objective = check_choice("objective", objective, ("latency",), name)
        self.online = check_choice("online", online, ONLINE, name)
        self.flow = check_choice("flow", flow, ONLINE_FLOWS, name)  # the min-cut solver of online="mincut"

    def prepare(self, problem: CutProblem) -> Splitting:
        full = CutGraph.from_problem(problem)
        reduced = merge_dominated(full)
        envelope = lower_envelope(reduced)
        model = splitting_model(reduced, [line.groups for _, line in envelope])
        pieces = [Cut(reduced.names(line.groups), line.a, line.b) for _, line in envelope]
        table = PlanTable(problem)
        extra = {"nodes_before": len(full), "nodes_after": len(model), "nodes_merged_structurally": len(reduced),
                 "envelope_pieces": len(pieces), "online": self.online}
        found = FoundCuts(model, table)
        for cut in pieces:  # the sides the min-cut returns (but at exact ties): their tables are made here, offline
            found.get([g for g in range(len(model)) if model.members[g][0] in cut.device])
        return Splitting(problem, model, ONLINE_FLOWS[self.flow](model), found, [start for start, _ in envelope],
                         pieces, [table.nodes(cut.device) for cut in pieces], table, extra)

    def decide(self, prepared: Splitting, link: LinkState) -> Plan:
        if self.online == "envelope":
            piece = self._piece(prepared, link)
            cut, nodes = prepared.pieces[piece], prepared.tables[piece]
        else:
            cut, nodes = self._min_cut(prepared, link)
        return prepared.table.plan(self.name, cut, link, prepared.extra, nodes)

    def best_cut(self, prepared: Splitting, link: LinkState) -> Cut:
        """The decision without its plan."""
        if self.online == "envelope":
            return prepared.pieces[self._piece(prepared, link)]
        return self._min_cut(prepared, link)[0]

    @staticmethod
    def _min_cut(prepared: Splitting, link: LinkState) -> tuple[Cut, list[dict[str, Any]]]:
        """The splitting model's min-cut at the link's bandwidth, with its node table."""
        found = prepared.found.get(prepared.solver.solve(ms_per_byte(link)))
        silent = prepared.pieces[-1]  # the last piece sends nothing
        if cheapest(found[0], silent, link) is silent:
            return silent, prepared.tables[-1]
        return found

    @staticmethod
    def _piece(prepared: Splitting, link: LinkState) -> int:
        piece = bisect.bisect_right(prepared.starts, ms_per_byte(link)) - 1
        if link.delay_ms and prepared.pieces[piece].b:  # the last piece sends nothing and pays no delay
            silent = len(prepared.pieces) - 1
            if prepared.pieces[silent].latency_ms(link) < prepared.pieces[piece].latency_ms(link):
                return silent
        return piece
