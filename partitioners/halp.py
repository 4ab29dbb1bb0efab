"""HALP (Li, Iosifidis, Zhang, ICC 2022): receptive-field-aware segments with the host computing the overlap zones.

Within a block of fused layers, output rows are ordered ``[S1 | O1 | S2 | O2 | ... | Sn]`` (``[S1 | O]`` for one
secondary): secondary ``es<i>`` computes segment ``S<i>`` from its own input slice only, and the host, which holds
the whole input, computes the zones ``O`` between them — the rows whose receptive fields cross a segment border —
while it sends the secondaries their slices. Segment sizes balance the branches so that all finish together:
``T = max(T_host(O), max_i(Σ_{j≤i} send_j + compute_i + return_i))``; the blocks (exchange points) are chosen by
dynamic programming over the layer boundaries to minimise Σ T + T_suffix. With ``tasks_per_batch`` > 1 the host
sends the next task's slices while the secondaries compute the current one (see ``batch_done_ms``).

The segment sizes come from a bisection on T: for a trial T each secondary in send order takes the most rows it can
finish by T, the host keeps the rest, and T is feasible when the host's zones also finish by T. The bisection uses
precomputed per-size tables (offline, in ``prepare``); the block it settles on is then timed exactly, and never
worse than the host computing the block alone.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from partitioners.base import LinkState, Partitioner, Plan
from partitioners.spatial import (Block, SpatialProblem, block_of, block_timing, secondary_links, spatial_plan,
                                  transfer_ms)

PLACES = ("top", "middle", "bottom")
_BISECTION_STEPS = 30  # T to within 1e-9 of the host-alone time


@dataclass
class SizeTable:
    """For one block and one placement of a segment: per output-row count s = 0..H, the block-input rows it needs
    and its compute time on each endpoint."""

    in_rows: np.ndarray
    compute_ms: dict[str, np.ndarray]


@dataclass
class BlockTables:
    """Everything about a candidate block that does not depend on the network."""

    places: dict[str, SizeTable]  # top / middle / bottom
    host_zone_ms: dict[int, np.ndarray]  # secondaries used -> host's time per total rows it keeps


@dataclass
class Tables:
    problem: SpatialProblem
    blocks: dict[tuple[int, int], BlockTables]  # (first, last) -> tables


def size_tables(problem: SpatialProblem, first: int, last: int) -> dict[str, SizeTable]:
    """Row-count tables of block ``first..last`` for a segment at the top, in the middle and at the bottom."""
    windows = problem.windows(first, last)
    height = windows[-1].out_height
    sizes = np.arange(height + 1)
    used = sizes > 0
    tables = {}
    for place in PLACES:
        a = {"top": np.zeros_like(sizes), "middle": (height - sizes) // 2, "bottom": height - sizes}[place]
        b = a + sizes
        rows_out = []  # rows each layer outputs, last layer first
        for window in reversed(windows):  # RowWindow.input_rows on every size at once
            rows_out.append(b - a)
            lo, hi = window.span(a, b)
            lo, hi = np.maximum(lo, 0), np.minimum(hi, window.in_height)
            keep = (b > a) & (hi > lo)  # none for no rows, or for rows that see only padding
            a, b = np.where(keep, lo, 0), np.where(keep, hi, 0)
        rows_out.reverse()
        compute = {e: sum((layer.ms(e, np.where(used, rows, 0))
                           for layer, rows in zip(problem.layers[first:last + 1], rows_out)), np.zeros(height + 1))
                   for e in problem.endpoints}
        tables[place] = SizeTable(np.where(used, b - a, 0), compute)
    return tables


def host_zone_ms(places: dict[str, SizeTable], host: str, used: int) -> np.ndarray:
    """The host's time per total rows it keeps when ``used`` secondaries work: one zone below S1, or
    ``used`` − 1 zones between them (all rows when none works)."""
    if used == 0:
        return places["top"].compute_ms[host]
    if used == 1:
        return places["bottom"].compute_ms[host]
    middle, zones = places["middle"].compute_ms[host], used - 1
    rows = np.arange(len(middle))
    base, extra = rows // zones, rows % zones
    return (zones - extra) * middle[base] + extra * middle[np.minimum(base + 1, len(middle) - 1)]


def zone_sizes(rows: int, zones: int) -> list[int]:
    """``rows`` split as evenly as possible into ``zones`` parts."""
    return [rows // zones + (1 if k < rows % zones else 0) for k in range(zones)]


def segment_places(used: int) -> list[str]:
    """Where the segments of ``used`` secondaries sit: S1 on top, the last one at the bottom, others between."""
    return ["top"] if used == 1 else ["top"] + ["middle"] * (used - 2) + ["bottom"]


class HALP(Partitioner):
    name = "halp"
    kind = "spatial"

    def __init__(self, name: str = "halp", tasks_per_batch: int = 1) -> None:
        if tasks_per_batch < 1:
            raise ValueError(f"halp: tasks_per_batch must be >= 1, got {tasks_per_batch}")
        self.tasks_per_batch = int(tasks_per_batch)

    def prepare(self, problem: SpatialProblem) -> Tables:
        """Per-size tables of every candidate block; they depend on geometry and compute only, not on the network."""
        blocks = {}
        for j in range(len(problem.layers)):
            for i in range(j + 1):
                places = size_tables(problem, i, j)
                zones = {m: host_zone_ms(places, problem.host, m) for m in range(len(problem.secondaries) + 1)}
                blocks[(i, j)] = BlockTables(places, zones)
        return Tables(problem, blocks)

    def decide(self, prepared: Tables, link: LinkState | Mapping[str, LinkState]) -> Plan:
        problem = prepared.problem
        links = secondary_links(problem, link)
        count = len(problem.layers)
        best = [0.0] + [math.inf] * count  # best[j]: layers 0..j-1 done
        choice: list[Block | None] = [None] * (count + 1)
        for j in range(count):
            for i in range(j + 1):
                block, makespan = self.balance(prepared, i, j, links)
                if best[i] + makespan < best[j + 1]:
                    best[j + 1], choice[j + 1] = best[i] + makespan, block
        blocks: list[Block] = []
        end = count
        while end:
            block = choice[end]
            blocks.append(block)
            end = block.first
        blocks.reverse()
        return spatial_plan(self.name, problem, blocks, links, self.tasks_per_batch, pipelined=True,
                            extra={"partition": "HALP: [S1 | O1 | S2 | ...], host computes the overlap zones; "
                                                "blocks fused by dynamic programming"})

    def balance(self, prepared: Tables, first: int, last: int,
                links: Mapping[str, LinkState]) -> tuple[Block, float]:
        """Block ``first..last`` with segment sizes that make the host and the secondaries finish together, using
        m secondaries for the best m (m = 0: the host alone); returns the block and its time."""
        problem = prepared.problem
        tables = prepared.blocks[(first, last)]
        height = problem.layers[last].out_height
        # The m best-placed secondaries (fastest link, then fastest compute), kept in send order.
        ranked = sorted(problem.secondaries, key=lambda e: (-links[e].bandwidth_mbps, links[e].delay_ms,
                                                            tables.places["top"].compute_ms[e][height]))
        best: tuple[Block, float] | None = None
        for used in range(len(ranked) + 1):
            chosen = [e for e in problem.secondaries if e in ranked[:used]]
            shares = self._shares(problem, tables, first, last, links, chosen)
            block = self._layout(problem, first, last, chosen, shares)
            makespan = block_timing(problem, block, links).makespan_ms
            if best is None or makespan < best[1]:
                best = (block, makespan)
        return best

    @staticmethod
    def _shares(problem: SpatialProblem, tables: BlockTables, first: int, last: int,
                links: Mapping[str, LinkState], chosen: list[str]) -> list[int]:
        """Rows for each secondary in ``chosen`` (in send order): bisection on the common finish time T."""
        used = len(chosen)
        if used == 0:
            return []
        height = problem.layers[last].out_height
        in_bpr, out_bpr = problem.layers[first].in_bytes_per_row, problem.layers[last].out_bytes_per_row
        sizes = np.arange(height + 1)
        send, finish = [], []  # per secondary and row count: send time; send + compute + return (running max)
        for e, place in zip(chosen, segment_places(used)):
            link, table = links[e], tables.places[place]
            sending = link.transfer_ms(table.in_rows * in_bpr)
            total = sending + np.where(sizes > 0, link.delay_ms + table.compute_ms[e]
                                       + transfer_ms(link, sizes * out_bpr), 0.0)
            send.append(sending.tolist())
            finish.append(np.maximum.accumulate(total).tolist())  # lists: bisect is faster than numpy here
        host = tables.host_zone_ms[used]

        def fill(limit: float) -> list[int]:
            """Each secondary in send order takes the most rows it can finish by ``limit``."""
            clock, left, shares = 0.0, height, []
            for k in range(used):
                share = max(bisect.bisect_right(finish[k], limit - clock, 0, left + 1) - 1, 0)
                shares.append(share)
                left -= share
                clock += send[k][share]
            return shares

        lo, hi, shares = 0.0, float(host[height]), [0] * used
        for _ in range(_BISECTION_STEPS):
            mid = (lo + hi) / 2
            trial = fill(mid)
            if host[height - sum(trial)] <= mid:
                hi, shares = mid, trial
            else:
                lo = mid
        return shares

    @staticmethod
    def _layout(problem: SpatialProblem, first: int, last: int, used: list[str], shares: list[int]) -> Block:
        """``[S1 | O]`` for one secondary, ``[S1 | O1 | S2 | ... | Sm]`` for several, all host rows for none."""
        height = problem.layers[last].out_height
        host_rows = height - sum(shares)
        if len(used) <= 1:
            rows = [*zip(used, shares), (problem.host, host_rows)]
        else:
            zones = zone_sizes(host_rows, len(used) - 1) + [0]
            rows = [pair for e, s, z in zip(used, shares, zones) for pair in ((e, s), (problem.host, z))]
        return block_of(problem, first, last, rows)
