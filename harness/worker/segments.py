"""Running a spatial plan's segments: a fused block of row ops on a band of rows, joining bands, the suffix.

The geometry (which rows a band needs, the row op of each layer) is the model's (``harness.model.rows``); this is
its execution, in the workers and in :func:`run_spatial_plan_locally` (the reference the tests compare with).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from harness.model.graph import ModelGraph
from harness.model.rows import RowOp, Rows, SpatialPrefix, SpatialUnsupported, rows_through, spatial_prefix
from harness.model.submodels import Part, split


def run_segment(ops: Sequence[RowOp], band: torch.Tensor, in_rows: Rows, out_rows: Rows) -> torch.Tensor:
    """Run a fused block on a band holding rows ``in_rows`` of its input; returns rows ``out_rows`` of its output.

    The band may hold more rows than needed; it must hold at least :func:`segment_input_rows`. The result equals
    ``unsplit_output[:, :, out_rows[0]:out_rows[1]]``.
    """
    ranges = rows_through([op.window for op in ops], out_rows)
    (lo, hi), (a, b) = ranges[0], in_rows
    if band.dim() != 4 or band.shape[2] != b - a:
        raise ValueError(f"band of shape {list(band.shape)} does not hold input rows {list(in_rows)} "
                         f"({b - a} rows of an N×C×H×W map)")
    if hi > lo and not a <= lo < hi <= b:
        raise ValueError(f"output rows {list(out_rows)} of block {ops[0].node}..{ops[-1].node} need input rows "
                         f"[{lo}, {hi}), but the band holds [{a}, {b})")
    x = band[:, :, lo - a:hi - a] if hi > lo else band[:, :, :0]
    if ops[0].pointwise:
        x = x.clone()  # an in-place activation must not write into the caller's tensor
    with torch.no_grad():
        for op, rows in zip(ops, ranges[1:]):
            x = op(x, rows) if rows[1] > rows[0] else op.empty(x)
    return x


def join_rows(pieces: Sequence[tuple[Rows, torch.Tensor]], height: int) -> torch.Tensor:
    """Concatenate row segments ``(rows, tensor)`` (any order) that together cover rows [0, height) exactly once."""
    ordered = sorted(pieces, key=lambda piece: piece[0][0])
    expected = 0
    for (a, b), tensor in ordered:
        if a != expected:
            raise ValueError(f"row segments {[list(r) for r, _ in ordered]} do not tile [0, {height}): "
                             f"{'gap' if a > expected else 'overlap'} at row {min(a, expected)}")
        if tensor.shape[2] != b - a:
            raise ValueError(f"segment for rows [{a}, {b}) holds {tensor.shape[2]} rows")
        expected = b
    if expected != height:
        raise ValueError(f"row segments end at row {expected}, expected {height}")
    return torch.cat([tensor for _, tensor in ordered], dim=2)


def suffix_part(graph: ModelGraph, prefix: SpatialPrefix) -> Part | None:
    """The rest of the model after the prefix, as a runnable part reading the prefix's output (None if empty)."""
    if prefix.output == graph.result_name:
        return None
    in_prefix = {graph.input_name, *prefix.nodes}
    parts = split(graph, {n: 0 if n in in_prefix else 1 for n in graph.order if graph[n].op != "output"}, keep=[1])
    suffix = parts[1]
    if suffix.inputs != [prefix.output]:
        raise SpatialUnsupported(f"model {graph.name!r}: the rest of the model after node {prefix.output!r} also "
                                 f"reads {[n for n in suffix.inputs if n != prefix.output]}")
    return suffix


def run_suffix(graph: ModelGraph, suffix: Part | None, value: torch.Tensor) -> torch.Tensor:
    """The model output from the prefix's output value."""
    if suffix is None:
        return value
    with torch.no_grad():
        return suffix.run({suffix.inputs[0]: value})[graph.result_name]


def run_spatial_plan_locally(graph: ModelGraph, plan: Mapping[str, Any], x: torch.Tensor) -> torch.Tensor:
    """Execute a spatial plan (``partitioners.spatial`` JSON) in this process, segment by segment, as the workers
    would: every block's segments run on the input rows they receive, the host joins them, then runs the suffix."""
    prefix = spatial_prefix(graph)
    value, reads = x, prefix.input
    for block in plan["blocks"]:
        ops = prefix.block(block["layers"])
        if prefix.block_input(block["layers"]) != reads:
            raise ValueError(f"plan block {block['layers'][0]}..{block['layers'][-1]} does not start where the "
                             f"previous block ends ({reads!r})")
        reads = block["layers"][-1]
        pieces = []
        for seg in block["segments"]:
            a, b = seg["in_rows"]
            band = value[:, :, a:b]  # what the host sends (a secondary) or slices (itself)
            pieces.append((tuple(seg["out_rows"]), run_segment(ops, band, (a, b), tuple(seg["out_rows"]))))
        value = join_rows(pieces, block["out_height"])
    if reads != prefix.output:
        raise ValueError(f"plan ends its blocks at node {reads!r}; the suffix reads {prefix.output!r}")
    return run_suffix(graph, suffix_part(graph, prefix), value)

