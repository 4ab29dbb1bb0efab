"""The model graph: one torch.fx trace, with shapes, FLOPs and bytes per node.

Every other part of the harness (costs, partitioners, runtime) reads this one type; none keeps its own copy of the
graph. Nodes are kept in the fx graph's topological order.
"""

from __future__ import annotations

import contextlib
import io
import math
import operator
import traceback
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from harness.model.models import ModelSpec, build_model, make_input

# Nodes whose output aliases or reshapes their input: no arithmetic, no kernel worth timing on a GPU.
_VIEW_KINDS = {
    "flatten", "view", "reshape", "getitem", "size", "contiguous", "dropout", "identity", "squeeze", "unsqueeze",
    "transpose", "permute", "chunk", "split", "stochasticdepth", "stochastic_depth", "getattr", "dropout2d",
}
_ELEMENTWISE_KINDS = {
    "relu", "relu6", "relu_", "silu", "sigmoid", "hardswish", "hardsigmoid", "gelu", "tanh", "add", "iadd", "mul",
    "imul", "sub", "truediv", "div", "softmax", "logsoftmax",
}

# Every kind that :func:`_flops` gives arithmetic to: the kinds a profile's efficiency per op kind can apply to.
COSTED_KINDS = frozenset({
    "conv1d", "conv2d", "conv3d", "linear", "maxpool2d", "avgpool2d", "adaptiveavgpool2d", "adaptivemaxpool2d",
    "batchnorm1d", "batchnorm2d", "batchnorm3d", "layernorm", "groupnorm", "matmul", "mm", "bmm",
    "adaptive_avg_pool2d", "mean", *_ELEMENTWISE_KINDS,
})


class TraceFailure(ValueError):
    """torch.fx cannot trace the model; the message names the model and the operation that failed."""


@dataclass(frozen=True)
class Node:
    """One operation of the model."""

    name: str
    op: str  # fx opcode: placeholder, call_module, call_function, call_method, get_attr, output
    kind: str  # lower-case operator name: conv2d, linear, relu, add, cat, input, output, ...
    target: str
    flops: int  # a multiply-accumulate counts as 2
    out_bytes: int
    in_bytes: int
    param_bytes: int
    out_shape: tuple[int, ...] | None
    preds: tuple[str, ...]
    succs: tuple[str, ...]

    @property
    def is_view(self) -> bool:
        return self.kind in _VIEW_KINDS


@dataclass
class ModelGraph:
    """A traced model: the fx GraphModule, its nodes in topological order and the input it was shaped with."""

    spec: ModelSpec
    module: fx.GraphModule
    nodes: dict[str, Node]
    example_input: torch.Tensor

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def order(self) -> list[str]:
        return list(self.nodes)

    @property
    def input_name(self) -> str:
        return next(n.name for n in self.nodes.values() if n.op == "placeholder")

    @property
    def output_name(self) -> str:
        return next(n.name for n in self.nodes.values() if n.op == "output")

    @property
    def result_name(self) -> str:
        """The node whose value is the model's output."""
        preds = self.nodes[self.output_name].preds
        if len(preds) != 1:
            raise TraceFailure(f"model {self.name!r} returns {len(preds)} values; only single-tensor outputs are supported")
        return preds[0]

    @property
    def total_flops(self) -> int:
        return sum(n.flops for n in self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch: the model code whose operation fx could not trace."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/torch/" not in f.filename and f.filename != __file__]
    if not frames:
        return "unknown location"
    f = frames[-1]
    return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}"


def trace(model: nn.Module, name: str) -> fx.GraphModule:
    """``symbolic_trace`` with an error that says which model and which operation stopped it."""
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:
        raise TraceFailure(
            f"model {name!r} cannot be traced by torch.fx: the operation at {_user_frame(exc)} failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Data-dependent Python control flow and non-torch calls on tensors are the usual causes; wrap them in a "
            "leaf module or use torch.fx.wrap.") from exc


def _kind(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__.lower()
    if node.op == "call_function":
        if node.target is operator.getitem:
            return "getitem"
        return getattr(node.target, "__name__", str(node.target)).lower().strip("_")
    return str(node.target).lower().strip("_")


def _numel(meta: object) -> int:
    if isinstance(meta, TensorMetadata):
        return math.prod(meta.shape)
    if isinstance(meta, (tuple, list)):
        return sum(_numel(m) for m in meta)
    return 0


def _nbytes(meta: object) -> int:
    if isinstance(meta, TensorMetadata):
        return math.prod(meta.shape) * torch.empty((), dtype=meta.dtype).element_size()
    if isinstance(meta, (tuple, list)):
        return sum(_nbytes(m) for m in meta)
    return 0


def _flops(node: fx.Node, gm: fx.GraphModule, kind: str, out_numel: int, in_numel: int) -> int:
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return 2 * out_numel * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        if isinstance(mod, nn.Linear):
            return 2 * out_numel * mod.in_features
        if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
            k = mod.kernel_size
            return out_numel * (k * k if isinstance(k, int) else math.prod(k))
        if isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return in_numel
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)):
            return 2 * out_numel
    if kind in ("matmul", "mm", "bmm", "linear") and node.op == "call_function":
        a = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], fx.Node) else None
        if isinstance(a, TensorMetadata):
            return 2 * out_numel * a.shape[-1]
    if kind in _ELEMENTWISE_KINDS or kind in ("adaptive_avg_pool2d", "mean"):
        return max(out_numel, in_numel if kind in ("adaptive_avg_pool2d", "mean") else 0)
    return 0


def _param_bytes(node: fx.Node, gm: fx.GraphModule) -> int:
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        tensors = list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
        return sum(t.numel() * t.element_size() for t in tensors)
    if node.op == "get_attr":
        attr = gm
        for part in str(node.target).split("."):
            attr = getattr(attr, part)
        return attr.numel() * attr.element_size() if isinstance(attr, torch.Tensor) else 0
    return 0


def graph_from_module(model: nn.Module, spec: ModelSpec, example_input: torch.Tensor | None = None) -> ModelGraph:
    """Trace ``model``, propagate shapes on a real input and describe every node."""
    gm = trace(model, spec.name)
    x = make_input(spec) if example_input is None else example_input
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints the traceback it raises
        try:
            ShapeProp(gm).propagate(x)
        except Exception as exc:
            cause = exc.__cause__ or exc
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
            raise TraceFailure(
                f"model.input_shape={list(x.shape)} does not fit model {spec.name!r}: a trial run on that input failed "
                f"({type(cause).__name__}: {first}); set model.input_shape to the shape the model takes, batch "
                "first (e.g. [1, 3, 224, 224] for an ImageNet classifier)") from exc
    nodes: dict[str, Node] = {}
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        preds = tuple(dict.fromkeys(p.name for p in node.all_input_nodes))
        in_numel = sum(_numel(p.meta.get("tensor_meta")) for p in node.all_input_nodes)
        in_bytes = sum(_nbytes(p.meta.get("tensor_meta")) for p in node.all_input_nodes)
        kind = _kind(node, gm)
        out_numel = _numel(meta)
        nodes[node.name] = Node(
            name=node.name, op=node.op, kind=kind, target=str(getattr(node.target, "__name__", node.target)),
            flops=_flops(node, gm, kind, out_numel, in_numel),
            out_bytes=_nbytes(meta) if node.op != "output" else 0,
            in_bytes=in_bytes, param_bytes=_param_bytes(node, gm),
            out_shape=tuple(meta.shape) if isinstance(meta, TensorMetadata) else None,
            preds=preds, succs=tuple(dict.fromkeys(u.name for u in node.users)),
        )
    return ModelGraph(spec=spec, module=gm, nodes=nodes, example_input=x)


def build_graph(spec: ModelSpec) -> ModelGraph:
    """Build the model named by ``spec`` and return its graph."""
    return graph_from_module(build_model(spec), spec)


def is_closed_under_predecessors(graph: ModelGraph, side: Iterable[str]) -> bool:
    """True when every predecessor of a node in ``side`` is in ``side`` too (a valid device-side set)."""
    members = set(side)
    return all(p in members for n in members for p in graph[n].preds)


def ancestors(graph: ModelGraph, names: Iterable[str]) -> set[str]:
    """``names`` and everything they depend on."""
    todo, seen = list(names), set()
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(graph[n].preds)
    return seen


def crossing_tensors(graph: ModelGraph, assignment: Mapping[str, int]) -> list[tuple[str, int, int]]:
    """Each value that leaves its part: (node name, producing part, consuming part), once per consuming part."""
    crossings: dict[tuple[str, int], None] = {}
    out: list[tuple[str, int, int]] = []
    for name, node in graph.nodes.items():
        for succ in node.succs:
            src, dst = assignment[name], assignment[succ]
            if src != dst and (name, dst) not in crossings:
                crossings[(name, dst)] = None
                out.append((name, src, dst))
    return out
