"""Row geometry of a spatial split: which input rows a band of output rows needs, and the row ops of each layer.

A spatial split cuts feature maps along their height. For a conv/pool layer with (effective) kernel k, stride s
and top padding p, output rows a..b need input rows a·s − p .. b·s − p + k − 1; rows outside the image are padding
and exist only at the image's true borders. So a segment runs its layers with row padding 0 on an explicitly padded
band (zeros for convolutions and average pools, −inf for max pools) and keeps each layer's own width padding: the
rows it produces are exactly the rows of the unsplit output.

The *spatial prefix* of a model is the chain of row-local layers from its input up to the first node that needs
whole feature maps (flatten, linear, a pool over all rows) or where the graph branches. A whole spatial inference
is: run blocks of the prefix on row bands, join the rows, then run the rest of the model (the *suffix*) on one
endpoint.

Row ranges are half-open ``(start, stop)`` like Python slices, everywhere in this module and in spatial plans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from harness.model.graph import ModelGraph

Rows = tuple[int, int]

# Modules that map each row to the same row (eval mode): activations, per-channel normalisations, identity.
_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.PReLU, nn.Softplus, nn.BatchNorm2d, nn.LocalResponseNorm,
    nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Identity,
)
# call_function / call_method kinds (harness.model.graph's names) that act element-wise when their only tensor is the
# previous node; a second tensor operand (a residual add, a concat) is a merge and ends the prefix.
_POINTWISE_CALLS = {
    "relu", "relu_", "relu6", "leaky_relu", "elu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
    "hardtanh", "dropout", "dropout2d", "contiguous", "clone", "add", "iadd", "mul", "imul", "sub", "truediv", "div",
}


class SpatialUnsupported(ValueError):
    """The model, or a requested block, cannot be split along rows; the message names the node that stops it."""


@dataclass(frozen=True)
class RowWindow:
    """How one layer maps rows: (effective) kernel, stride and top padding along the height, and both heights."""

    kernel: int
    stride: int
    pad_top: int
    in_height: int
    out_height: int

    @classmethod
    def identity(cls, height: int) -> RowWindow:
        return cls(kernel=1, stride=1, pad_top=0, in_height=height, out_height=height)

    def span(self, start: Any, stop: Any) -> tuple[Any, Any]:
        """Input rows of non-empty output rows [start, stop), before clipping to the image (ints or numpy arrays)."""
        return start * self.stride - self.pad_top, (stop - 1) * self.stride - self.pad_top + self.kernel

    def input_rows(self, out_rows: Rows) -> Rows:
        """The input rows that exist in the image and that output rows ``out_rows`` read; ``(0, 0)`` when they read
        none (no output rows, or rows that see only padding, as with a padding wider than the kernel)."""
        if out_rows[1] <= out_rows[0]:
            return 0, 0
        lo, hi = self.span(*out_rows)
        lo, hi = max(0, lo), min(self.in_height, hi)
        return (lo, hi) if hi > lo else (0, 0)

    def border_pads(self, out_rows: Rows) -> tuple[int, int]:
        """Rows of padding above and below the band: non-zero only where the band meets the image's border."""
        if out_rows[1] <= out_rows[0]:
            return 0, 0
        lo, hi = self.span(*out_rows)
        return min(max(0, -lo), hi - lo), min(max(0, hi - self.in_height), hi - lo)


def rows_through(windows: Sequence[RowWindow], out_rows: Rows) -> list[Rows]:
    """Rows each layer of a fused block must hold for ``out_rows`` of its last layer.

    Returns ``len(windows) + 1`` ranges: the block's input rows first, then the output rows of every layer.
    """
    _check_rows(out_rows, windows[-1].out_height, "output rows")
    ranges = [tuple(out_rows)]
    for window in reversed(windows):
        ranges.append(window.input_rows(ranges[-1]))
    return [(int(a), int(b)) for a, b in reversed(ranges)]


def _check_rows(rows: Sequence[int], height: int, what: str) -> None:
    if len(rows) != 2 or not 0 <= rows[0] < rows[1] <= height:
        raise ValueError(f"{what} {list(rows)} are not a non-empty half-open range inside [0, {height})")


# ----------------------------------------------------------------------------------------------- layer operations

class RowOp:
    """One node of the prefix, runnable on a band of rows: ``op(band, out_rows)`` returns exactly ``out_rows``.

    ``band`` must hold precisely ``window.input_rows(out_rows)`` of the node's input.
    """

    pointwise = False  # maps each row to itself (an identity window)

    def __init__(self, node: str, window: RowWindow) -> None:
        self.node = node
        self.window = window
        self.out_channels = self.out_width = 0  # set from the graph: the shape of an empty result

    def empty(self, band: torch.Tensor) -> torch.Tensor:
        """No output rows (a later layer's rows see only padding): an empty result of the right shape."""
        return band.new_zeros((band.shape[0], self.out_channels, 0, self.out_width))

    def __call__(self, band: torch.Tensor, out_rows: Rows) -> torch.Tensor:
        raise NotImplementedError


class _Conv(RowOp):
    def __init__(self, node: str, window: RowWindow, conv: nn.Conv2d, width_pads: tuple[int, int]) -> None:
        super().__init__(node, window)
        self.conv = conv
        self.width_pads = width_pads

    def __call__(self, band: torch.Tensor, out_rows: Rows) -> torch.Tensor:
        top, bottom = self.window.border_pads(out_rows)
        left, right = self.width_pads
        c = self.conv
        if left == right:  # the layer's own width padding, as in the unsplit model
            x = F.pad(band, (0, 0, top, bottom))
            return F.conv2d(x, c.weight, c.bias, c.stride, (0, left), c.dilation, c.groups)
        x = F.pad(band, (left, right, top, bottom))  # padding="same" with an even kernel pads unevenly
        return F.conv2d(x, c.weight, c.bias, c.stride, 0, c.dilation, c.groups)


class _MaxPool(RowOp):
    def __init__(self, node: str, window: RowWindow, pool: nn.MaxPool2d) -> None:
        super().__init__(node, window)
        self.pool = pool

    def __call__(self, band: torch.Tensor, out_rows: Rows) -> torch.Tensor:
        top, bottom = self.window.border_pads(out_rows)
        p = self.pool
        # Max pooling pads with -inf, never zeros; the band is exactly (rows-1)·s + k tall, so ceil_mode adds no
        # row here and only acts on the width, as in the unsplit layer.
        x = F.pad(band, (0, 0, top, bottom), value=-math.inf)
        return F.max_pool2d(x, p.kernel_size, _pair(p.stride or p.kernel_size), (0, _pair(p.padding)[1]),
                            p.dilation, p.ceil_mode)


class _AvgPool(RowOp):
    def __init__(self, node: str, window: RowWindow, pool: nn.AvgPool2d, pad_bottom: int) -> None:
        super().__init__(node, window)
        self.pool = pool
        self.pad_bottom = pad_bottom  # the layer's declared bottom padding (= top padding)

    def __call__(self, band: torch.Tensor, out_rows: Rows) -> torch.Tensor:
        top, bottom = self.window.border_pads(out_rows)
        p = self.pool
        x = F.pad(band, (0, 0, top, bottom))
        y = F.avg_pool2d(x, p.kernel_size, _pair(p.stride or p.kernel_size), (0, _pair(p.padding)[1]),
                         p.ceil_mode, p.count_include_pad, p.divisor_override)
        if p.divisor_override:
            return y
        # On the band every window sees k rows; the unsplit layer divides by the rows inside the padded image
        # (count_include_pad) or inside the image only, which differ at the borders: rescale each output row.
        k, w = self.window.kernel, self.window
        starts = np.arange(*out_rows) * w.stride - w.pad_top
        ends = np.minimum(starts + k, w.in_height + self.pad_bottom)
        if not p.count_include_pad:
            starts, ends = np.maximum(starts, 0), np.minimum(ends, w.in_height)
        scale = torch.as_tensor(k / (ends - starts), dtype=y.dtype, device=y.device)
        return y * scale.view(1, 1, -1, 1)


class _Pointwise(RowOp):
    pointwise = True

    def __init__(self, node: str, height: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__(node, RowWindow.identity(height))
        self.fn = fn

    def __call__(self, band: torch.Tensor, out_rows: Rows) -> torch.Tensor:
        return self.fn(band)


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _same_pads(kernel: int, dilation: int) -> tuple[int, int]:
    total = dilation * (kernel - 1)
    return total // 2, total - total // 2  # torch pads the extra row/column at the end


def _row_op(graph: ModelGraph, fx_node: fx.Node) -> RowOp | str:
    """The row operation of ``fx_node``, or why it is not row-local."""
    node = graph[fx_node.name]
    if node.op == "output":
        return "it is the model's output"
    shape = node.out_shape
    in_shape = graph[node.preds[0]].out_shape if node.preds else None
    if shape is None or len(shape) != 4 or in_shape is None or len(in_shape) != 4:
        return f"{node.kind} gives shape {shape}, not an N×C×H×W feature map"
    h_in, h_out = in_shape[2], shape[2]
    op: RowOp | str
    if node.op == "call_module":
        op = _module_op(node.name, graph.module.get_submodule(fx_node.target), h_in, h_out, shape[3])
    elif node.op in ("call_function", "call_method") and node.kind in _POINTWISE_CALLS:
        operands = [a for a in [*fx_node.args, *fx_node.kwargs.values()] if isinstance(a, fx.Node)]
        if len(operands) != 1:
            return f"{node.kind} combines {len(operands)} tensors ({', '.join(a.name for a in operands)}): a merge"
        op = _Pointwise(node.name, h_out, _call(fx_node))
    else:
        return f"{node.kind} ({node.op}) is not a row-local layer"
    if isinstance(op, RowOp):
        op.out_channels, op.out_width = shape[1], shape[3]
    return op


def _call(fx_node: fx.Node) -> Callable[[torch.Tensor], torch.Tensor]:
    """An fx call_function / call_method node applied to a band in place of its one tensor operand."""
    def run(band: torch.Tensor) -> torch.Tensor:
        args = fx.node.map_arg(fx_node.args, lambda _: band)
        kwargs = fx.node.map_arg(fx_node.kwargs, lambda _: band)
        if fx_node.op == "call_method":
            return getattr(args[0], fx_node.target)(*args[1:], **kwargs)
        return fx_node.target(*args, **kwargs)
    return run


def _module_op(name: str, mod: nn.Module, h_in: int, h_out: int, w_out: int) -> RowOp | str:
    kind = type(mod).__name__
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros":
            return f"Conv2d with padding_mode={mod.padding_mode!r} (only 'zeros' is split along rows)"
        (kh, kw), (dh, dw) = mod.kernel_size, mod.dilation
        if mod.padding == "same":
            (top, _), width = _same_pads(kh, dh), _same_pads(kw, dw)
        else:
            top, pw = (0, 0) if mod.padding == "valid" else mod.padding
            width = (pw, pw)
        return _Conv(name, RowWindow(dh * (kh - 1) + 1, mod.stride[0], top, h_in, h_out), mod, width)
    if isinstance(mod, nn.MaxPool2d):
        if mod.return_indices:
            return "MaxPool2d with return_indices=True"
        k, s, p, d = (_pair(mod.kernel_size)[0], _pair(mod.stride or mod.kernel_size)[0], _pair(mod.padding)[0],
                      _pair(mod.dilation)[0])
        return _MaxPool(name, RowWindow(d * (k - 1) + 1, s, p, h_in, h_out), mod)
    if isinstance(mod, nn.AvgPool2d):
        k, s, p = _pair(mod.kernel_size)[0], _pair(mod.stride or mod.kernel_size)[0], _pair(mod.padding)[0]
        return _AvgPool(name, RowWindow(k, s, p, h_in, h_out), mod, p)
    if isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        if h_in != h_out:
            return f"{kind} pools {h_in} rows into {h_out}: every output row reads a share of all rows"
        if getattr(mod, "return_indices", False):
            return f"{kind} with return_indices=True"
        pool = F.adaptive_avg_pool2d if isinstance(mod, nn.AdaptiveAvgPool2d) else F.adaptive_max_pool2d
        # Same height in and out: each row is its own bin, so the layer pools within rows only.
        return _Pointwise(name, h_out, lambda band: pool(band, (band.shape[2], w_out)))
    if isinstance(mod, _POINTWISE_MODULES):
        if isinstance(mod, nn.BatchNorm2d) and mod.training:
            return "BatchNorm2d in training mode normalises with statistics over all rows"
        return _Pointwise(name, h_out, mod)
    return f"{kind} is not a row-local layer"


# ---------------------------------------------------------------------------------------------- the spatial prefix

@dataclass
class Layer:
    """One exchange-able layer: a row-changing op (conv/pool; none at a leading run of element-wise ops) followed
    by the element-wise ops that keep its rows (batch-norm, ReLU, ...)."""

    ops: list[RowOp]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    elem_bytes: int

    @property
    def nodes(self) -> list[str]:
        return [op.node for op in self.ops]

    @property
    def window(self) -> RowWindow:
        return self.ops[0].window if not self.ops[0].pointwise else RowWindow.identity(self.out_shape[2])

    @property
    def in_bytes_per_row(self) -> int:
        n, c, _, w = self.in_shape
        return n * c * w * self.elem_bytes

    @property
    def out_bytes_per_row(self) -> int:
        n, c, _, w = self.out_shape
        return n * c * w * self.elem_bytes


@dataclass
class SpatialPrefix:
    """The chain of row-local layers at the start of a model, and the node where it stops (and why)."""

    model: str
    input: str  # the model's input node: the first block reads it
    layers: list[Layer]
    stop: str  # the first node that is not part of the prefix
    stop_reason: str
    _ops: dict[str, RowOp] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._ops = {op.node: op for layer in self.layers for op in layer.ops}

    @property
    def output(self) -> str:
        """The last node of the prefix: the suffix reads its value."""
        return self.layers[-1].ops[-1].node

    @property
    def nodes(self) -> list[str]:
        return list(self._ops)

    def block(self, nodes: Sequence[str]) -> list[RowOp]:
        """The ops of a fused block, given its node names (consecutive nodes of the prefix, in order)."""
        if not nodes:
            raise ValueError(f"model {self.model!r}: a block needs at least one node")
        outside = [n for n in nodes if n not in self._ops]
        if outside:
            raise SpatialUnsupported(
                f"model {self.model!r}: node {outside[0]!r} is past the spatial prefix, which stops at node "
                f"{self.stop!r} because {self.stop_reason}; spatial blocks may use nodes {self.nodes[0]} .. "
                f"{self.output}")
        order = self.nodes
        first = order.index(nodes[0])
        if order[first:first + len(nodes)] != list(nodes):
            raise ValueError(f"model {self.model!r}: block nodes {list(nodes)} are not consecutive nodes of the "
                             f"spatial prefix {order}")
        return [self._ops[n] for n in nodes]

    def block_input(self, nodes: Sequence[str]) -> str:
        """The value a block reads: the node before its first node (or the model input)."""
        order = self.nodes
        i = order.index(nodes[0])
        return order[i - 1] if i else self.input


def _merge_after(graph: ModelGraph, fork: str) -> str | None:
    """The first node after ``fork`` where two paths leaving ``fork`` meet again (a residual add, a concat)."""
    order = graph.order
    reached = {fork}
    for name in order[order.index(fork) + 1:]:
        from_fork = [p for p in graph[name].preds if p in reached]
        if len(from_fork) >= 2 or (from_fork and len(graph[name].preds) > len(from_fork)):
            return name
        if from_fork:
            reached.add(name)
    return None


def spatial_prefix(graph: ModelGraph) -> SpatialPrefix:
    """The row-local chain from the model input; :class:`SpatialUnsupported` if it holds no conv or pool layer."""
    fx_nodes = {n.name: n for n in graph.module.graph.nodes}
    current, ops = graph.input_name, []
    in_shape = graph[current].out_shape
    if in_shape is None or len(in_shape) != 4:
        raise SpatialUnsupported(f"model {graph.name!r}: input {current!r} has shape {in_shape}, not N×C×H×W; "
                                 "spatial partitioning splits the rows of 4-D feature maps")
    while True:
        succs = graph[current].succs
        if len(succs) != 1:
            merge = _merge_after(graph, current)
            stop = merge or succs[0]
            reason = (f"{current!r} feeds {len(succs)} nodes ({', '.join(succs)}), a branch"
                      + (f" that merges again at {merge!r}" if merge else ""))
            break
        op = _row_op(graph, fx_nodes[succs[0]])
        if isinstance(op, str):
            stop, reason = succs[0], op
            break
        ops.append(op)
        current = succs[0]
    if not any(not op.pointwise for op in ops):
        raise SpatialUnsupported(
            f"model {graph.name!r} has no conv or pool layer to split by rows before node {stop!r}: {reason}")
    return SpatialPrefix(graph.name, graph.input_name, _group_layers(graph, ops), stop, reason)


def _group_layers(graph: ModelGraph, ops: list[RowOp]) -> list[Layer]:
    groups: list[list[RowOp]] = []
    for op in ops:
        if not op.pointwise or not groups:
            groups.append([op])
        else:
            groups[-1].append(op)
    layers = []
    for group in groups:
        first = graph[group[0].node]
        last = graph[group[-1].node]
        elem = last.out_bytes // max(1, math.prod(last.out_shape))
        layers.append(Layer(group, graph[first.preds[0]].out_shape, last.out_shape, elem))
    return layers


def segment_input_rows(ops: Sequence[RowOp], out_rows: Rows) -> Rows:
    """The rows of the block's input that a segment computing ``out_rows`` of the block's output needs."""
    return rows_through([op.window for op in ops], out_rows)[0]
