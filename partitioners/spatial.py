"""Spatial split across a star of edge servers: the problem, the shared timing model and the plan's JSON.

Setting: the host ``es0`` holds the input and runs the rest of the model after the spatial prefix (the FC layers);
the secondaries ``es1..`` each have their own link to the host. A plan cuts the prefix (see ``harness.worker.segments``)
into *blocks*, ranges of layers fused between exchange points, and gives each endpoint contiguous rows of each
block's output. Row ranges are half-open ``[start, stop)``.

Timing model, shared by MoDNN and HALP so that they are compared on the same terms [ours]:

* a segment costs, at every layer of its block, each node's fixed overhead plus the rest of the node's time scaled
  by the rows it computes there over the layer's height (the halo rows a fused block recomputes are counted);
* at each block the host sends the secondaries their input rows one after another, es1 first (one sender: the
  host's CPU and NIC serialise its sends even though each secondary has its own link), and computes its own rows
  meanwhile (sending is asynchronous);
* a secondary starts when its rows have arrived and returns its output rows over its own link; returns of
  different secondaries overlap;
* a block ends when the host holds all its rows (it joins them at every exchange point); after the last block the
  host runs the suffix;
* a transfer of b bytes takes b·8 / rate plus the link's one-way delay.

``decide``'s ``link`` is a :class:`LinkState` for every secondary link, or a mapping ``{"es1": LinkState, ...}``
with one entry per secondary.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from harness.model.graph import ModelGraph
from harness.model.rows import Rows, RowWindow, SpatialPrefix, rows_through, spatial_prefix
from partitioners.base import LinkState, Plan

HOST = "es0"
SCHEDULE = ("host sends secondaries' input rows one after another (es1 first) while computing its own rows; "
            "secondaries return their rows over their own links concurrently; the host joins every block, then "
            "runs the suffix")


@dataclass(frozen=True)
class LayerCost:
    """One layer of the prefix (a conv/pool and its element-wise tail) with its geometry and costs."""

    nodes: tuple[str, ...]
    window: RowWindow
    in_bytes_per_row: int
    out_bytes_per_row: int
    fixed_ms: Mapping[str, float]  # per endpoint: overheads paid by any non-empty segment
    scaled_ms: Mapping[str, float]  # per endpoint: the part proportional to the rows computed

    @property
    def out_height(self) -> int:
        return self.window.out_height

    def ms(self, endpoint: str, rows: Any) -> Any:
        """Time of ``rows`` output rows (an int or a numpy array of row counts) on ``endpoint``."""
        share = self.scaled_ms[endpoint] * rows / self.out_height
        return np.where(np.asarray(rows) > 0, self.fixed_ms[endpoint] + share, 0.0)


@dataclass
class SpatialProblem:
    """A model's spatial prefix with per-endpoint costs, and the suffix the host runs after it."""

    graph: ModelGraph = field(repr=False)
    node_ms: dict[str, dict[str, float]] = field(repr=False)  # endpoint -> node -> ms
    endpoints: list[str]  # the host first
    prefix: SpatialPrefix = field(repr=False)
    layers: list[LayerCost]  # the prefix's layers: geometry (rows, heights), bytes per row, costs
    suffix_nodes: list[str]
    suffix_ms: dict[str, float]  # per endpoint

    @property
    def model(self) -> str:
        return self.graph.name

    @property
    def input(self) -> str:
        return self.graph.input_name

    @property
    def host(self) -> str:
        return self.endpoints[0]

    @property
    def secondaries(self) -> list[str]:
        return self.endpoints[1:]

    @property
    def output(self) -> str:
        return self.layers[-1].nodes[-1]

    def windows(self, first: int, last: int) -> list[RowWindow]:
        return [layer.window for layer in self.layers[first:last + 1]]

    def host_alone_ms(self) -> float:
        """The whole model on the host: the baseline a speed-up is measured against."""
        return float(sum(layer.ms(self.host, layer.out_height) for layer in self.layers)) + self.suffix_ms[self.host]


def spatial_problem(graph: ModelGraph, node_ms_by_endpoint: Mapping[str, Mapping[str, float]],
                    overhead_ms: Mapping[str, float] | float = 0.0) -> SpatialProblem:
    """The spatial problem of ``graph`` on endpoints ``es0`` (host), ``es1``, ... with per-node times.

    ``overhead_ms``: per endpoint (or one value for all), the part of each node's time that does not shrink when
    the node computes fewer rows (a roofline profile's kernel overhead; see :func:`kernel_overheads_ms`).
    """
    if HOST not in node_ms_by_endpoint:
        raise ValueError(f"spatial problem: endpoints {list(node_ms_by_endpoint)} lack the host {HOST!r}; "
                         "expected es0 (host), es1, ... as made by Hardware.star")
    endpoints = [HOST] + [e for e in node_ms_by_endpoint if e != HOST]
    if not isinstance(overhead_ms, Mapping):
        overhead_ms = {e: float(overhead_ms) for e in endpoints}
    prefix = spatial_prefix(graph)
    layers = []
    for layer in prefix.layers:
        fixed, scaled = {}, {}
        for e in endpoints:
            times = [float(node_ms_by_endpoint[e][n]) for n in layer.nodes]
            fixed[e] = sum(min(overhead_ms.get(e, 0.0), t) for t in times)
            scaled[e] = sum(times) - fixed[e]
        layers.append(LayerCost(tuple(layer.nodes), layer.window, layer.in_bytes_per_row, layer.out_bytes_per_row,
                                fixed, scaled))
    in_prefix = {graph.input_name, *prefix.nodes}
    suffix = [n for n in graph.order if n not in in_prefix and graph[n].op != "output"]
    node_ms = {e: {n: float(t) for n, t in node_ms_by_endpoint[e].items()} for e in endpoints}
    suffix_ms = {e: sum(node_ms[e][n] for n in suffix) for e in endpoints}
    return SpatialProblem(graph, node_ms, endpoints, prefix, layers, suffix, suffix_ms)


def kernel_overheads_ms(endpoint_profiles: Mapping[str, Any]) -> dict[str, float]:
    """Per endpoint, the fixed per-node overhead of its profile (roofline profiles have one; others: 0)."""
    return {e: float(getattr(p, "kernel_overhead_us", 0.0)) / 1e3 for e, p in endpoint_profiles.items()}


def secondary_links(problem: SpatialProblem, link: LinkState | Mapping[str, LinkState]) -> dict[str, LinkState]:
    """One link state per secondary, from one for all or a mapping per secondary."""
    if isinstance(link, LinkState):
        return {e: link for e in problem.secondaries}
    missing = [e for e in problem.secondaries if e not in link]
    if missing:
        raise ValueError(f"link states {sorted(link)} lack secondaries {missing}; give a LinkState for all links "
                         f"or one per secondary {problem.secondaries}")
    return {e: link[e] for e in problem.secondaries}


def transfer_ms(link: LinkState, nbytes: Any) -> Any:
    """Serialisation plus one-way delay; nothing for nothing (works on numpy arrays of byte counts)."""
    return np.where(np.asarray(nbytes) > 0, link.transfer_ms(nbytes) + link.delay_ms, 0.0)


# ------------------------------------------------------------------------------------------- segments and blocks

@dataclass(frozen=True)
class Segment:
    """Rows of one block's output computed by one endpoint, and what that costs."""

    endpoint: str
    out_rows: Rows
    in_rows: Rows
    compute_ms: float
    in_bytes: int  # sent by the host (0 when the host computes the segment itself)
    out_bytes: int  # returned to the host (0 likewise)


@dataclass
class Block:
    """Layers ``first..last`` fused between two exchange points, and its segments in row order."""

    first: int
    last: int
    segments: list[Segment]


def segment(problem: SpatialProblem, first: int, last: int, endpoint: str, out_rows: Rows) -> Segment:
    """The cost of ``endpoint`` computing rows ``out_rows`` of layer ``last`` from the input of layer ``first``."""
    ranges = rows_through(problem.windows(first, last), out_rows)
    compute = sum(float(layer.ms(endpoint, b - a)) for layer, (a, b) in zip(problem.layers[first:last + 1], ranges[1:]))
    remote = endpoint != problem.host
    (lo, hi), (a, b) = ranges[0], out_rows
    return Segment(endpoint, (int(a), int(b)), (lo, hi), compute,
                   (hi - lo) * problem.layers[first].in_bytes_per_row if remote else 0,
                   (b - a) * problem.layers[last].out_bytes_per_row if remote else 0)


def block_of(problem: SpatialProblem, first: int, last: int, rows: Sequence[tuple[str, int]]) -> Block:
    """A block from ``(endpoint, row count)`` in row order; empty shares are dropped, adjacent ones of the same
    endpoint merged (one segment computes them without a second halo)."""
    merged: list[list] = []
    for endpoint, count in rows:
        if count > 0:
            if merged and merged[-1][0] == endpoint:
                merged[-1][1] += count
            else:
                merged.append([endpoint, int(count)])
    segments, start = [], 0
    for endpoint, count in merged:
        segments.append(segment(problem, first, last, endpoint, (start, start + count)))
        start += count
    if start != problem.layers[last].out_height:
        raise ValueError(f"row shares {list(rows)} add up to {start}, not the {problem.layers[last].out_height} rows "
                         f"of layer {problem.layers[last].nodes[0]!r}")
    return Block(first, last, segments)


@dataclass(frozen=True)
class BlockTiming:
    makespan_ms: float
    host_ms: float
    arrived_ms: dict[str, float]  # when each secondary's rows have arrived
    done_ms: dict[str, float]  # when each secondary's rows are back at the host


@dataclass
class Work:
    """What one endpoint does in one block: bytes in, compute, bytes out (summed over its segments)."""

    in_bytes: int = 0
    compute_ms: float = 0.0
    out_bytes: int = 0


def work_by_endpoint(block: Block) -> dict[str, Work]:
    work: dict[str, Work] = {}
    for s in block.segments:
        w = work.setdefault(s.endpoint, Work())
        w.in_bytes += s.in_bytes
        w.compute_ms += s.compute_ms
        w.out_bytes += s.out_bytes
    return work


def block_timing(problem: SpatialProblem, block: Block, links: Mapping[str, LinkState]) -> BlockTiming:
    """One block of one task under the shared timing model, from the moment the host holds its input."""
    work = work_by_endpoint(block)
    host = work[problem.host].compute_ms if problem.host in work else 0.0
    clock, arrived, done = 0.0, {}, {}
    for e in problem.secondaries:  # the host's sends, in secondary order
        if e in work:
            w, link = work[e], links[e]
            clock += link.transfer_ms(w.in_bytes)
            arrived[e] = clock + link.delay_ms
            done[e] = arrived[e] + w.compute_ms + float(transfer_ms(link, w.out_bytes))
    return BlockTiming(max([host, *done.values()]), host, arrived, done)


def single_task_ms(problem: SpatialProblem, blocks: Sequence[Block], links: Mapping[str, LinkState]) -> float:
    return sum(block_timing(problem, b, links).makespan_ms for b in blocks) + problem.suffix_ms[problem.host]


# -------------------------------------------------------------------------------------------- several tasks

def batch_done_ms(problem: SpatialProblem, blocks: Sequence[Block], links: Mapping[str, LinkState],
                  tasks: int, pipelined: bool) -> list[float]:
    """When each of ``tasks`` tasks (all present at time 0) is done.

    Not pipelined: one task after another. Pipelined (HALP's batches): every resource — the host's sender, the
    host's compute, each secondary's compute and return link — serves operations as soon as their inputs are
    ready, earliest first, so the host sends the next task's rows while the secondaries compute the current one.
    """
    if not pipelined:
        one = single_task_ms(problem, blocks, links)
        return [one * (t + 1) for t in range(tasks)]
    ops: dict[tuple, tuple[str | None, float, float, list[tuple]]] = {}  # id -> resource, duration, lag, deps
    for t in range(tasks):
        ready: list[tuple] = []
        for b, block in enumerate(blocks):
            joined: list[tuple] = []
            work = work_by_endpoint(block)
            host = work[problem.host].compute_ms if problem.host in work else 0.0
            ops[("host", t, b)] = ("host", host, 0.0, list(ready))
            joined.append(("host", t, b))
            for e in problem.secondaries:
                if e in work:
                    w, link = work[e], links[e]
                    ops[("send", t, b, e)] = ("tx", link.transfer_ms(w.in_bytes), link.delay_ms, list(ready))
                    ops[("compute", t, b, e)] = (f"cpu:{e}", w.compute_ms, 0.0, [("send", t, b, e)])
                    ops[("return", t, b, e)] = (f"up:{e}", link.transfer_ms(w.out_bytes), link.delay_ms,
                                                [("compute", t, b, e)])
                    joined.append(("return", t, b, e))
            ops[("join", t, b)] = (None, 0.0, 0.0, joined)
            ready = [("join", t, b)]
        ops[("suffix", t)] = ("host", problem.suffix_ms[problem.host], 0.0, ready)
    end = _list_schedule(ops)
    return [end[("suffix", t)] for t in range(tasks)]


def _list_schedule(ops: Mapping[tuple, tuple[str | None, float, float, list[tuple]]]) -> dict[tuple, float]:
    """Non-delay list scheduling: repeatedly start the ready operation that can start earliest (ties: earlier
    task, then creation order); each resource serves one operation at a time. Returns when each result is usable."""
    rank = {op: i for i, op in enumerate(ops)}
    users: dict[tuple, list[tuple]] = {op: [] for op in ops}
    waiting = {op: len(deps) for op, (_, _, _, deps) in ops.items()}
    for op, (_, _, _, deps) in ops.items():
        for d in deps:
            users[d].append(op)
    free: dict[str, float] = {}
    usable: dict[tuple, float] = {}
    heap = [(0.0, op[1], rank[op], op) for op, n in waiting.items() if n == 0]
    heapq.heapify(heap)
    while heap:
        start, _, _, op = heapq.heappop(heap)
        resource, duration, lag, deps = ops[op]
        earliest = max([usable[d] for d in deps], default=0.0)
        if resource is not None:
            earliest = max(earliest, free.get(resource, 0.0))
        if earliest > start + 1e-12:  # its resource got busier since it was queued
            heapq.heappush(heap, (earliest, op[1], rank[op], op))
            continue
        finish = earliest + duration
        if resource is not None:
            free[resource] = finish
        usable[op] = finish + lag
        for user in users[op]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready_at = max(usable[d] for d in ops[user][3])
                heapq.heappush(heap, (ready_at, user[1], rank[user], user))
    return usable


# ------------------------------------------------------------------------------------------------------ the plan

def spatial_plan(method: str, problem: SpatialProblem, blocks: Sequence[Block], links: Mapping[str, LinkState],
                 tasks_per_batch: int = 1, pipelined: bool = False, extra: Mapping[str, Any] | None = None) -> Plan:
    """The JSON plan: per block its layers (node names), each endpoint's output and input rows, the bytes every
    link carries each way, and the predicted times. ``predicted_latency_ms`` is the batch time per task;
    ``bandwidth_mbps`` the slowest secondary link."""
    _check_blocks(problem, blocks)
    done = batch_done_ms(problem, blocks, links, tasks_per_batch, pipelined)
    batch_ms = max(done)
    single = single_task_ms(problem, blocks, links)
    host_alone = problem.host_alone_ms()
    totals = {e: {"to_secondary_bytes": 0, "to_host_bytes": 0} for e in problem.secondaries}
    block_json = []
    for block in blocks:
        timing = block_timing(problem, block, links)
        carried = {e: {"to_secondary_bytes": 0, "to_host_bytes": 0} for e in problem.secondaries}
        segments = []
        for s in block.segments:
            seg = {"endpoint": s.endpoint, "out_rows": list(s.out_rows), "in_rows": list(s.in_rows),
                   "compute_ms": s.compute_ms}
            if s.endpoint != problem.host:
                link = links[s.endpoint]
                carried[s.endpoint]["to_secondary_bytes"] += s.in_bytes
                carried[s.endpoint]["to_host_bytes"] += s.out_bytes
                seg.update(send_bytes=s.in_bytes, return_bytes=s.out_bytes,
                           send_ms=float(transfer_ms(link, s.in_bytes)),
                           return_ms=float(transfer_ms(link, s.out_bytes)),
                           arrived_ms=timing.arrived_ms[s.endpoint], done_ms=timing.done_ms[s.endpoint])
            segments.append(seg)
        for e in problem.secondaries:
            for k in ("to_secondary_bytes", "to_host_bytes"):
                totals[e][k] += carried[e][k]
        first, last = problem.layers[block.first], problem.layers[block.last]
        block_json.append({
            "layers": [n for layer in problem.layers[block.first:block.last + 1] for n in layer.nodes],
            "input": problem.layers[block.first - 1].nodes[-1] if block.first else problem.input,
            "output": last.nodes[-1], "in_height": first.window.in_height, "out_height": last.out_height,
            "in_bytes_per_row": first.in_bytes_per_row, "out_bytes_per_row": last.out_bytes_per_row,
            "segments": segments, "links": carried, "predicted_ms": timing.makespan_ms,
            "host_ms": timing.host_ms, **dict(zip(("extra_input_rows", "extra_computed_rows"),
                                                  extra_rows(problem, block)))})
    detail = {
        "model": problem.model, "host": problem.host, "endpoints": list(problem.endpoints),
        "row_ranges": "half-open [start, stop)", "input": problem.input, "prefix_output": problem.output,
        "suffix_nodes": list(problem.suffix_nodes), "suffix_ms": problem.suffix_ms[problem.host],
        "links": {e: {"bandwidth_mbps": link.bandwidth_mbps, "delay_ms": link.delay_ms} for e, link in links.items()},
        "schedule": SCHEDULE, "blocks": block_json, "bytes_per_task": totals,
        "tasks_per_batch": tasks_per_batch, "pipelined": pipelined,
        "predicted_single_task_ms": single, "predicted_batch_ms": batch_ms, "task_done_ms": done,
        "host_alone_ms": host_alone, "speedup_over_host": host_alone * tasks_per_batch / batch_ms,
        **(extra or {})}
    bandwidth = min(link.bandwidth_mbps for link in links.values())
    return Plan(method=method, kind="spatial", predicted_latency_ms=batch_ms / tasks_per_batch,
                bandwidth_mbps=bandwidth, detail=detail)


def _check_blocks(problem: SpatialProblem, blocks: Sequence[Block]) -> None:
    expected = 0
    for block in blocks:
        if block.first != expected or block.last < block.first:
            raise ValueError(f"blocks {[(b.first, b.last) for b in blocks]} do not cover layers "
                             f"0..{len(problem.layers) - 1} in order")
        expected = block.last + 1
    if expected != len(problem.layers):
        raise ValueError(f"blocks end at layer {expected - 1}; the prefix has {len(problem.layers)} layers")


def extra_rows(problem: SpatialProblem, block: Block) -> tuple[float, float]:
    """The price of fusing: (input rows received by all segments, rows computed by all segments at every layer)
    over the rows of the unsplit block, minus one. The first is the papers' figure (fusing all of VGG-16's convs
    costs ~80 % extra rows for two segments)."""
    windows = problem.windows(block.first, block.last)
    heights = [windows[0].in_height] + [w.out_height for w in windows]
    held = [0] * len(heights)
    for s in block.segments:
        for i, (a, b) in enumerate(rows_through(windows, s.out_rows)):
            held[i] += b - a
    return held[0] / heights[0] - 1.0, sum(held[1:]) / sum(heights[1:]) - 1.0


def split_rows(height: int, weights: Sequence[float]) -> list[int]:
    """``height`` rows in shares proportional to ``weights`` (largest remainder; sums to ``height``)."""
    total = float(sum(weights))
    if total <= 0:
        weights, total = [1.0] * len(weights), float(len(weights))
    exact = [height * w / total for w in weights]
    rows = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: rows[i] - exact[i])[:height - sum(rows)]:
        rows[i] += 1
    return rows
