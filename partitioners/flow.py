"""The min-cut form of the device/server cut problem, shared by DADS, QDMP and CIC.

A :class:`CutGraph` is a cut problem over *groups* of model nodes: each group runs wholly on the device or wholly on
the server, and each tensor is one value leaving a group for one or more consumer groups. A model's own graph is the
case of one node per group; QDMP's blocks and CIC's splitting model are contractions of it. A cut is the set of
groups on the device (closed under predecessors); its latency is a line in x, the link's milliseconds per byte::

    latency(S, x) = a(S) + x * b(S)    a: device time of S + server time of the rest (+ the codec's time to encode
                                          and decode each crossing tensor),  b: bytes crossing the link

:class:`NetworkxCut`, :class:`ScipyCut` and :class:`OrtoolsCut` find the S of least latency for one x by a minimum
s-t cut on the network of the DADS paper (Hu et al., INFOCOM 2019) with its two fixes: source = device, sink =
server; arc source->g costs g's server time (paid when g is on the server), g->sink g's device time; a tensor with
one consumer is an arc producer->consumer costing x*bytes (+ its codec time), one with several consumers goes
through an auxiliary node (producer->aux x*bytes + codec time, aux->consumer infinite) so that it is paid once;
every DAG edge u->w has an infinite reverse arc w->u (no data flows back to the device); pinned groups get infinite
arcs from the source or to the sink. The one-way link delay is not a capacity: it is paid by every cut that sends
something, so :func:`cheapest` weighs the min-cut against the cheapest cut that sends nothing.
"""

from __future__ import annotations

import graphlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import networkx as nx
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from partitioners.base import DEVICE, SERVER, CutProblem, LinkState, Plan

_SOURCE, _SINK = "source", "sink"


@dataclass(frozen=True)
class Tensor:
    """Bytes that leave ``producer`` for ``consumers`` (sorted group indices): they cross the link once if any
    consumer is on the server while the producer is on the device."""

    producer: int
    consumers: tuple[int, ...]
    nbytes: int
    encode_ms: float = 0.0  # the device's time to encode it, paid when it crosses
    decode_ms: float = 0.0  # the server's time to decode it

    @property
    def codec_ms(self) -> float:
        return self.encode_ms + self.decode_ms


@dataclass
class CutGraph:
    """A cut problem over groups of model nodes (see the module docstring)."""

    members: list[tuple[str, ...]]
    device_ms: list[float]
    server_ms: list[float]
    tensors: list[Tensor]
    on_device: frozenset[int]  # groups pinned to the device (the input's)
    on_server: frozenset[int] = frozenset()  # groups pinned to the server

    @classmethod
    def from_problem(cls, problem: CutProblem) -> "CutGraph":
        """One group per model node, in the problem's topological order."""
        index = {n: i for i, n in enumerate(problem.order)}
        tensors = [Tensor(index[n], tuple(sorted(index[s] for s in problem.succs[n])), problem.out_bytes[n],
                          problem.encode_ms.get(n, 0.0), problem.decode_ms.get(n, 0.0))
                   for n in problem.order if problem.succs[n]]
        return cls(members=[(n,) for n in problem.order],
                   device_ms=[problem.device_ms[n] for n in problem.order],
                   server_ms=[problem.server_ms[n] for n in problem.order],
                   tensors=tensors, on_device=frozenset({index[problem.input]}))

    def __len__(self) -> int:
        return len(self.members)

    def contract(self, label: Sequence[int]) -> "CutGraph":
        """Merge the groups that share a label (labels 0..k-1); tensors between the same groups are summed.

        Each merged set must be convex (no path leaves it and comes back), else the result has a cycle: raises.
        """
        if len(label) != len(self):
            raise ValueError(f"contract: {len(label)} labels for a graph of {len(self)} groups")
        size = max(label) + 1
        members: list[list[str]] = [[] for _ in range(size)]
        device, server = [0.0] * size, [0.0] * size
        for g, new in enumerate(label):
            members[new].extend(self.members[g])
            device[new] += self.device_ms[g]
            server[new] += self.server_ms[g]
        merged: dict[tuple[int, tuple[int, ...]], tuple[int, float, float]] = {}
        for t in self.tensors:
            producer = label[t.producer]
            consumers = tuple(sorted({label[c] for c in t.consumers} - {producer}))
            if consumers:  # a tensor inside one group never crosses
                nbytes, encode, decode = merged.get((producer, consumers), (0, 0.0, 0.0))
                merged[(producer, consumers)] = (nbytes + t.nbytes, encode + t.encode_ms, decode + t.decode_ms)
        on_device = frozenset(label[g] for g in self.on_device)
        on_server = frozenset(label[g] for g in self.on_server)
        if on_device & on_server:
            raise ValueError(f"contract: groups {sorted(on_device & on_server)} would be pinned to both sides")
        graph = CutGraph([tuple(m) for m in members], device, server,
                         [Tensor(p, c, *costs) for (p, c), costs in merged.items()], on_device, on_server)
        graph.topological_order()
        return graph

    def edges(self) -> set[tuple[int, int]]:
        """Precedence pairs (producer, consumer)."""
        return {(t.producer, c) for t in self.tensors for c in t.consumers}

    def topological_order(self) -> list[int]:
        preds: dict[int, set[int]] = {g: set() for g in range(len(self))}
        for p, c in self.edges():
            preds[c].add(p)
        try:
            return list(graphlib.TopologicalSorter(preds).static_order())
        except graphlib.CycleError as exc:
            raise ValueError(f"cut graph has a cycle through groups {exc.args[1]}: a contraction merged a "
                             "non-convex set of nodes") from exc

    def line(self, device: Iterable[int]) -> tuple[float, int]:
        """(a, b) of the cut whose device side is ``device``: latency = a + x*b (+ delay if b > 0)."""
        on = [False] * len(self)
        for g in device:
            on[g] = True
        crossing = self._crossing(on)
        a = math.fsum([*(d if o else s for d, s, o in zip(self.device_ms, self.server_ms, on)),
                       *(t.codec_ms for t in crossing if t.codec_ms)])
        return a, sum(t.nbytes for t in crossing)

    def _crossing(self, on: list[bool]) -> list[Tensor]:
        return [t for t in self.tensors if on[t.producer] and not all(on[c] for c in t.consumers)]

    def stages(self, device: Iterable[int]) -> tuple[float, int, float]:
        """(device ms, crossing bytes, server ms) of a cut: the pipeline stages of the throughput objective
        (encoding is the device's work, decoding the server's)."""
        side = set(device)
        crossing = self._crossing([g in side for g in range(len(self))])
        dev = math.fsum([*(self.device_ms[g] for g in side), *(t.encode_ms for t in crossing if t.encode_ms)])
        srv = math.fsum([*(self.server_ms[g] for g in range(len(self)) if g not in side),
                         *(t.decode_ms for t in crossing if t.decode_ms)])
        return dev, sum(t.nbytes for t in crossing), srv

    def names(self, groups: Iterable[int]) -> frozenset[str]:
        """The model nodes of ``groups``."""
        return frozenset(n for g in groups for n in self.members[g])

    def is_closed(self, device: Iterable[int]) -> bool:
        """True when ``device`` holds every predecessor of its groups and respects the pins."""
        side = set(device)
        return (self.on_device <= side and not (self.on_server & side)
                and all(p in side for p, c in self.edges() if c in side))

    def descendants(self, start: Iterable[int]) -> set[int]:
        """``start`` and every group that depends on it."""
        succs: dict[int, list[int]] = {}
        for p, c in self.edges():
            succs.setdefault(p, []).append(c)
        todo, seen = list(start), set()
        while todo:
            g = todo.pop()
            if g not in seen:
                seen.add(g)
                todo.extend(succs.get(g, ()))
        return seen


def ms_per_byte(link: LinkState) -> float:
    """x of the latency line: milliseconds per byte on this link."""
    return link.transfer_ms(1.0)


# ---- the min-cut network and its two solvers ------------------------------------------------------------------


@dataclass(frozen=True)
class _Arc:
    tail: Any
    head: Any
    kind: str  # "device" (ms, scaled), "server" (ms, scaled), "transfer" (bytes, times x) or "infinite"
    value: float = 0.0
    encode_ms: float = 0.0  # transfer: the codec's time, device (scaled as the device's) and server
    decode_ms: float = 0.0


def _arcs(graph: CutGraph) -> list[_Arc]:
    arcs = []
    for g in range(len(graph)):
        arcs.append(_Arc(_SOURCE, g, "infinite") if g in graph.on_device else
                    _Arc(_SOURCE, g, "server", graph.server_ms[g]))
        arcs.append(_Arc(g, _SINK, "infinite") if g in graph.on_server else
                    _Arc(g, _SINK, "device", graph.device_ms[g]))
    for k, t in enumerate(graph.tensors):
        if len(t.consumers) == 1:
            arcs.append(_Arc(t.producer, t.consumers[0], "transfer", t.nbytes, t.encode_ms, t.decode_ms))
        else:
            aux = ("aux", k)
            arcs.append(_Arc(t.producer, aux, "transfer", t.nbytes, t.encode_ms, t.decode_ms))
            arcs.extend(_Arc(aux, c, "infinite") for c in t.consumers)
    arcs.extend(_Arc(c, p, "infinite") for p, c in sorted(graph.edges()))
    return arcs


@dataclass(frozen=True)
class _ArcCosts:
    """The arcs' costs as arrays, in one arc order, so that a solve prices every arc at once (numpy solvers)."""

    infinite: np.ndarray  # bool
    device: np.ndarray  # ms, scaled by device_scale
    server: np.ndarray  # ms, scaled by server_scale
    nbytes: np.ndarray  # bytes, times x

    @classmethod
    def of(cls, arcs: Sequence[_Arc]) -> "_ArcCosts":
        kinds = np.array([a.kind for a in arcs])
        values = np.array([a.value for a in arcs], dtype=float)
        encode = np.array([a.encode_ms for a in arcs], dtype=float)
        decode = np.array([a.decode_ms for a in arcs], dtype=float)
        return cls(kinds == "infinite", np.where(kinds == "device", values, 0.0) + encode,
                   np.where(kinds == "server", values, 0.0) + decode, np.where(kinds == "transfer", values, 0.0))

    def ms(self, x: float, device_scale: float, server_scale: float) -> np.ndarray:
        """Each finite arc's capacity in ms (0 for the infinite ones)."""
        return device_scale * self.device + server_scale * self.server + x * self.nbytes


def _capacity(arc: _Arc, x: float, device_scale: float, server_scale: float) -> float:
    if arc.kind == "device":
        return device_scale * arc.value
    if arc.kind == "server":
        return server_scale * arc.value
    codec = device_scale * arc.encode_ms + server_scale * arc.decode_ms
    return (x * arc.value if arc.value else 0.0) + codec  # transfer; a zero-byte tensor is free even at x = inf


def _groups_first(graph: CutGraph, arcs: Sequence[_Arc]) -> dict[Any, int]:
    """Each network node's index: the groups first (node g is group g), then the terminals and auxiliary nodes."""
    nodes = dict.fromkeys([*range(len(graph)), _SOURCE, _SINK, *(n for a in arcs for n in (a.tail, a.head))])
    return {n: i for i, n in enumerate(nodes)}


class NetworkxCut:
    """Minimum cut by networkx (preflow-push, its fastest here) on exact integers.

    networkx decides which arcs are saturated by ``flow == capacity``; with float capacities, rounding can leave an
    arc a hair short of saturation and give a cut that is not minimal. Every float is a dyadic rational, so one power
    of two turns all capacities into Python integers *exactly*: the cut found is the exact minimum for the costs given.
    """

    def __init__(self, graph: CutGraph, flow_func: Callable[..., Any] = nx.algorithms.flow.preflow_push) -> None:
        self.graph = graph
        self.flow_func = flow_func
        self.network = nx.DiGraph()
        self._finite: list[tuple[dict, _Arc]] = []
        for arc in _arcs(graph):
            self.network.add_edge(arc.tail, arc.head)
            if arc.kind != "infinite":  # networkx reads a missing capacity as infinite
                self._finite.append((self.network.edges[arc.tail, arc.head], arc))

    def solve(self, x: float, device_scale: float = 1.0, server_scale: float = 1.0) -> list[int]:
        """The groups on the device in a minimum cut at ``x`` ms per byte, device and server times scaled.

        ``x = inf`` (no bandwidth) gives the cheapest cut that sends no byte; one must exist (no server pins).
        """
        return self.minimum(x, device_scale, server_scale)[1]

    def minimum(self, x: float, device_scale: float = 1.0, server_scale: float = 1.0) -> tuple[float, list[int]]:
        """The minimum cut's value in ms and its device groups (see :meth:`solve`)."""
        caps = [_capacity(arc, x, device_scale, server_scale) for _, arc in self._finite]
        shift = max((_exponent(c) for c in caps if not math.isinf(c)), default=0)
        for (attrs, _), cap in zip(self._finite, caps):
            if math.isinf(cap):
                attrs.pop("capacity", None)
            else:
                attrs["capacity"] = _scaled(cap, shift)
        value, (source_side, _) = nx.minimum_cut(self.network, _SOURCE, _SINK, flow_func=self.flow_func)
        return value / 2**shift, sorted(g for g in source_side if isinstance(g, int))


def _exponent(value: float) -> int:
    """k such that value * 2**k is an integer."""
    return value.as_integer_ratio()[1].bit_length() - 1


def _scaled(value: float, shift: int) -> int:
    numerator, denominator = value.as_integer_ratio()
    return numerator << (shift - (denominator.bit_length() - 1))


class ScipyCut:
    """Minimum cut by ``scipy.sparse.csgraph.maximum_flow`` (Dinic), which takes 32-bit integer capacities.

    Capacities are rounded to ticks of ``resolution_ms`` (1 ns) and the caller costs the device side found exactly,
    so rounding can only matter between cuts whose latencies differ by less than one tick per arc of the cut. scipy
    wraps larger values around silently, so every capacity is clipped below 2**31 and the tick grows above 1 ns when
    a feasible cut (all on the device but the server pins and their descendants) costs more than ~1 s: no minimum
    cut uses an arc dearer than a feasible cut.
    """

    resolution_ms = 1e-6
    _LIMIT = 2**30  # ticks of the feasible cut's value: the max flow stays well inside int32
    _CEILING = 2**31 - 1

    def __init__(self, graph: CutGraph) -> None:
        self.graph = graph
        arcs = _arcs(graph)
        nodes = list(dict.fromkeys(n for arc in arcs for n in (arc.tail, arc.head)))
        index = {n: i for i, n in enumerate(nodes)}
        rows = np.array([index[a.tail] for a in arcs])
        cols = np.array([index[a.head] for a in arcs])
        order = np.lexsort((cols, rows))
        self.size, self.source, self.sink = len(nodes), index[_SOURCE], index[_SINK]
        self.group_of = np.array([n if isinstance(n, int) else -1 for n in nodes])
        self.indices = cols[order].astype(np.int32)
        self.indptr = np.searchsorted(rows[order], np.arange(self.size + 1)).astype(np.int32)
        self._costs = _ArcCosts.of([arcs[i] for i in order])
        blocked = graph.descendants(graph.on_server)
        self._feasible = graph.stages(g for g in range(len(graph)) if g not in blocked)

    def solve(self, x: float, device_scale: float = 1.0, server_scale: float = 1.0) -> list[int]:
        """The groups on the device in a minimum cut at ``x`` ms per byte, device and server times scaled."""
        return self.minimum(x, device_scale, server_scale)[1]

    def minimum(self, x: float, device_scale: float = 1.0, server_scale: float = 1.0) -> tuple[float, list[int]]:
        """The minimum cut's value in ms (in whole ticks) and its device groups."""
        if not math.isfinite(x):
            raise ValueError(f"scipy flow needs a finite ms per byte, got {x}")
        dev, nbytes, srv = self._feasible
        bound_ms = device_scale * dev + x * nbytes + server_scale * srv
        ticks_per_ms = 1.0 / self.resolution_ms
        if bound_ms * ticks_per_ms > self._LIMIT:
            ticks_per_ms = self._LIMIT / bound_ms
        caps = np.minimum(np.rint(self._costs.ms(x, device_scale, server_scale) * ticks_per_ms), self._CEILING)
        caps[self._costs.infinite] = self._CEILING
        capacity = sp.csr_array((caps.astype(np.int32), self.indices, self.indptr), shape=(self.size, self.size))
        result = maximum_flow(capacity, self.source, self.sink)
        # Source side = reachable from the source through arcs with residual capacity (int64: no wrap-around).
        residual = (capacity.astype(np.int64) - result.flow.astype(np.int64)).tocsr()
        residual.data[residual.data < 0] = 0
        residual.eliminate_zeros()
        reached = breadth_first_order(residual, self.source, directed=True, return_predecessors=False)
        groups = self.group_of[reached]
        return result.flow_value / ticks_per_ms, sorted(int(g) for g in groups[groups >= 0])


class OrtoolsCut:
    """Minimum cut by OR-tools' ``SimpleMaxFlow`` (push-relabel, C++), the fastest max-flow we know for DADS's
    network: the arcs are added once, and a solve only sets the capacities that depend on ``x`` and the scales.

    Capacities are 64-bit integers: all finite ones are scaled together so that their sum is ``2**52`` ticks at
    most, a tick of femtoseconds for a model's costs, far below any difference between two cuts' latencies that the
    float costs can express; the caller costs the device side found exactly. Infinite arcs get ``2**58``, above
    any finite cut, and no node's arcs can sum past 64 bits. The optional extra ``flow`` installs OR-tools.
    """

    _FINITE_SUM = 2**52
    _INFINITE = 2**58

    def __init__(self, graph: CutGraph) -> None:
        try:
            from ortools.graph.python.max_flow import SimpleMaxFlow
        except ImportError as exc:
            raise ValueError("flow 'ortools' needs OR-tools: pip install -e '.[flow]'") from exc
        self.graph = graph
        arcs = _arcs(graph)
        index = _groups_first(graph, arcs)
        self.source, self.sink = index[_SOURCE], index[_SINK]
        self.groups = len(graph)
        self.solver = SimpleMaxFlow()
        self._costs = _ArcCosts.of(arcs)
        tails = np.array([index[a.tail] for a in arcs], dtype=np.int32)
        heads = np.array([index[a.head] for a in arcs], dtype=np.int32)
        self.arcs = self.solver.add_arcs_with_capacity(tails, heads, np.zeros(len(arcs), dtype=np.int64))

    def solve(self, x: float, device_scale: float = 1.0, server_scale: float = 1.0) -> list[int]:
        """The groups on the device in a minimum cut at ``x`` ms per byte, device and server times scaled."""
        return self.minimum(x, device_scale, server_scale)[1]

    def minimum(self, x: float, device_scale: float = 1.0, server_scale: float = 1.0) -> tuple[float, list[int]]:
        """The minimum cut's value in ms (in whole ticks) and its device groups."""
        if not math.isfinite(x):
            raise ValueError(f"ortools flow needs a finite ms per byte, got {x}")
        ms = self._costs.ms(x, device_scale, server_scale)
        ticks_per_ms = self._FINITE_SUM / max(float(ms.sum()), 1e-300)
        caps = np.rint(ms * ticks_per_ms).astype(np.int64)
        caps[self._costs.infinite] = self._INFINITE
        self.solver.set_arcs_capacity(self.arcs, caps)
        status = self.solver.solve(self.source, self.sink)
        if status != self.solver.OPTIMAL:
            raise RuntimeError(f"OR-tools max flow ended with status {status}")
        side = self.solver.get_source_side_min_cut()
        return self.solver.optimal_flow() / ticks_per_ms, sorted(int(g) for g in side if g < self.groups)


class DenseCut:
    """Minimum cut of a network of a handful of nodes (CIC's splitting model) by Edmonds-Karp on a dense matrix.

    On 2-4 groups, networkx spends over 100 us building and walking its graph objects for a cut that needs a few
    additions. Here the network's layout, its bandwidth-independent capacities (device and server times, infinite
    arcs) and the flow along every source -> group -> sink path are set once; a solve prices the transfer arcs at
    ``x``, augments along shortest residual paths and reads the cut off the last search. Capacities are exact
    integers as in :class:`NetworkxCut` (one power of two for all of them), and the device side is, as networkx
    returns it, every node that cannot reach the sink in the residual network: the same cut and the same value.
    Meant for small graphs: a solve is O(augmentations * nodes**2).
    """

    def __init__(self, graph: CutGraph) -> None:
        self.graph = graph
        arcs = _arcs(graph)
        index = _groups_first(graph, arcs)
        size = len(index)
        self.size, self.source, self.sink = size, index[_SOURCE], index[_SINK]

        def position(arc: _Arc) -> int:
            return index[arc.tail] * size + index[arc.head]

        fixed = [(position(a), a.value) for a in arcs if a.kind in ("device", "server")]
        self._shift = max((_exponent(value) for _, value in fixed), default=0)
        residual: list[int | float] = [0] * size * size
        for pos, value in fixed:
            residual[pos] += _scaled(value, self._shift)
        for arc in arcs:
            if arc.kind == "infinite":
                residual[position(arc)] = math.inf
        self._transfer = [(position(a), a.value, a.encode_ms + a.decode_ms) for a in arcs if a.kind == "transfer"]
        # Arcs that can carry residual capacity into each node: every arc and its reverse.
        into: list[set[int]] = [set() for _ in range(size)]
        for arc in arcs:
            into[index[arc.head]].add(index[arc.tail])
            into[index[arc.tail]].add(index[arc.head])
        self._into = [[(u, u * size + v) for u in sorted(tails)] for v, tails in enumerate(into)]
        # The paths source -> g -> sink use no transfer arc: saturate them once, here, not in every solve.
        self._flow = 0
        for g in range(len(graph)):
            down, up = self.source * size + g, g * size + self.sink
            push = min(residual[down], residual[up])
            if push == math.inf:
                raise ValueError(f"group {g} is pinned to both sides")
            residual[down] -= push
            residual[g * size + self.source] += push
            residual[up] -= push
            residual[self.sink * size + g] += push
            self._flow += push
        self._residual = residual

    def solve(self, x: float) -> list[int]:
        """The groups on the device in a minimum cut at ``x`` ms per byte (``inf``: the cheapest that sends nothing)."""
        return self.minimum(x)[1]

    def minimum(self, x: float) -> tuple[float, list[int]]:
        """The minimum cut's value in ms and its device groups (see :meth:`solve`)."""
        shift, flow, residual = self._shift, self._flow, self._residual[:]
        for pos, nbytes, codec_ms in self._transfer:
            cap = (x * nbytes if nbytes else 0.0) + codec_ms  # as _capacity: a zero-byte tensor is free at x = inf
            if cap == math.inf:
                residual[pos] = math.inf
                continue
            numerator, denominator = cap.as_integer_ratio()
            exponent = denominator.bit_length() - 1
            if exponent > shift:  # a cost finer than every one so far: refine the unit of all of them
                flow <<= exponent - shift
                residual = [c << (exponent - shift) if type(c) is int else c for c in residual]
                shift = exponent
            residual[pos] += numerator << (shift - exponent)
        more, toward_sink = _augment(residual, self.size, self.source, self.sink, self._into)
        return (flow + more) / (1 << shift), [g for g in range(len(self.graph)) if toward_sink[g] < 0]


def _augment(residual: list[int | float], size: int, source: int, sink: int,
             into: list[list[tuple[int, int]]]) -> tuple[int, list[int]]:
    """Edmonds-Karp on a flat ``size`` x ``size`` residual matrix, changed in place: (flow added, next hop).

    Each search runs backwards from the sink, so the last one, which misses the source, marks exactly the nodes
    that can still reach the sink (next hop >= 0): the sink side of the minimum cut.
    """
    added = 0
    while True:
        toward_sink = [-1] * size
        toward_sink[sink] = sink
        queue = [sink]
        for v in queue:  # grows while it is read: breadth first
            for u, uv in into[v]:
                if toward_sink[u] < 0 and residual[uv] > 0:
                    toward_sink[u] = v
                    queue.append(u)
            if toward_sink[source] >= 0:
                break
        else:
            return added, toward_sink
        path, u = [], source
        while u != sink:
            v = toward_sink[u]
            path.append((u * size + v, v * size + u))
            u = v
        bottleneck = min(residual[uv] for uv, _ in path)
        if bottleneck == math.inf:
            raise ValueError("no cut of finite capacity (at x = inf: every device side sends something)")
        for uv, vu in path:
            residual[uv] -= bottleneck
            residual[vu] += bottleneck
        added += bottleneck


FLOWS: dict[str, type] = {"networkx": NetworkxCut, "scipy": ScipyCut, "ortools": OrtoolsCut}


def min_cut_solver(graph: CutGraph, flow: str) -> NetworkxCut | ScipyCut | OrtoolsCut:
    """The solver named ``flow`` (one of :data:`FLOWS`) for ``graph``."""
    return FLOWS[check_choice("flow", flow, FLOWS)](graph)


def check_choice(option: str, value: str, accepted: Iterable[str], method: str = "") -> str:
    accepted = sorted(accepted)
    if value not in accepted:
        where = f"{method}: " if method else ""
        raise ValueError(f"{where}{option} {value!r} is not one of {accepted}")
    return value


# ---- cuts, the link delay and plans ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """A device side (model node names) with its latency line a + x*b."""

    device: frozenset[str]
    a: float
    b: int

    @classmethod
    def of(cls, graph: CutGraph, groups: Iterable[int]) -> "Cut":
        groups = list(groups)
        a, b = graph.line(groups)
        return cls(graph.names(groups), a, b)

    def latency_ms(self, link: LinkState) -> float:
        """As ``CutProblem.latency_ms``: compute + transfer, + the one-way delay when anything crosses."""
        return self.a + link.transfer_ms(self.b) + (link.delay_ms if self.b else 0.0)


def zero_crossing_cut(graph: CutGraph) -> Cut:
    """The cheapest cut that sends nothing: the delay-free alternative to every cut that sends something."""
    if all(t.nbytes > 0 for t in graph.tensors) and not graph.on_server:
        return Cut.of(graph, range(len(graph)))  # only the all-device cut sends nothing
    return Cut.of(graph, NetworkxCut(graph).solve(math.inf))


def cheapest(cut: Cut, silent: Cut, link: LinkState) -> Cut:
    """The min-cut ignores the delay; with a delay, the best cut that sends nothing may win."""
    if link.delay_ms and cut.b and silent.latency_ms(link) < cut.latency_ms(link):
        return silent
    return cut


class PlanTable:
    """``cut_plan``'s output with every node row made once (in ``prepare``), so a decision builds no dicts.

    Rows are shared between plans: treat plans as read-only (``plan.json`` is written from them as is).
    """

    def __init__(self, problem: CutProblem) -> None:
        self.order = problem.order
        self.rows = [tuple({"name": n, "inputs": list(problem.preds[n]), "device_ms": problem.device_ms[n],
                            "server_ms": problem.server_ms[n], "out_bytes": problem.out_bytes[n], "side": side}
                           for side in (SERVER, DEVICE)) for n in problem.order]

    def nodes(self, device: frozenset[str]) -> list[dict[str, Any]]:
        return [row[n in device] for n, row in zip(self.order, self.rows)]

    def plan(self, method: str, cut: Cut, link: LinkState, extra: Mapping[str, Any] | None = None,
             nodes: list[dict[str, Any]] | None = None) -> Plan:
        """The plan of ``cut`` (``nodes``: its table, if made before)."""
        table = self.nodes(cut.device) if nodes is None else nodes
        return Plan(method=method, kind="cut", predicted_latency_ms=cut.latency_ms(link),
                    bandwidth_mbps=link.bandwidth_mbps, detail={"nodes": table, **(extra or {})})
