"""Runnable parts of a model for an assignment of its nodes to parts, made by ``torch.fx.passes.split_module``.

Part ``p`` runs after every part ``q < p`` (for a device/server cut: 0 = device, 1 = server). Values are named by
the fx node that produced them, so the runtime moves tensors between parts by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import fx
from torch.fx.passes.split_module import split_module

from harness.model.graph import ModelGraph


class InvalidAssignment(ValueError):
    """An assignment that sends data backwards or leaves nodes unassigned."""


@dataclass
class Part:
    """One part of a split model: its module and the named values it consumes and produces."""

    index: int
    module: fx.GraphModule | None  # None: the part only holds the model input, or is another endpoint's
    inputs: list[str]
    outputs: list[str]
    nodes: list[str]

    def run(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run this part on the named values it needs and return the named values it produces."""
        if self.module is None:
            return {name: values[name] for name in self.outputs}
        result = self.module(*(values[name] for name in self.inputs))
        if len(self.outputs) == 1 and not isinstance(result, (tuple, list)):
            result = (result,)
        return dict(zip(self.outputs, result))


def full_assignment(graph: ModelGraph, assignment: Mapping[str, int]) -> dict[str, int]:
    """Complete an assignment: the input follows part 0 unless given, the output node follows its producer."""
    full = dict(assignment)
    full.setdefault(graph.input_name, 0)
    out = graph[graph.output_name]
    full[out.name] = max(full[p] for p in out.preds)
    missing = [n for n in graph.order if n not in full]
    if missing:
        raise InvalidAssignment(f"nodes without a part: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    backwards = [(u, v) for u in graph.order for v in graph[u].succs if full[v] < full[u]]
    if backwards:
        u, v = backwards[0]
        raise InvalidAssignment(
            f"{len(backwards)} edges send data to an earlier part, e.g. {u} (part {full[u]}) -> {v} (part {full[v]})")
    return full


def split(graph: ModelGraph, assignment: Mapping[str, int], keep: Sequence[int] | None = None) -> list[Part]:
    """Split ``graph`` into parts; with ``keep``, modules of other parts are dropped (a worker keeps its own)."""
    full = full_assignment(graph, assignment)
    num_parts = max(full.values()) + 1
    by_part = {p: [n for n in graph.order if full[n] == p and graph[n].op not in ("output",)] for p in range(num_parts)}
    split_gm = split_module(graph.module, graph.module, lambda n: full[n.name], keep_original_order=True)
    outputs = _output_names(split_gm, graph)
    parts = []
    for p in range(num_parts):
        sub = getattr(split_gm, f"submod_{p}", None)
        if sub is not None:
            inputs = [n.name for n in sub.graph.nodes if n.op == "placeholder"]
            if keep is not None and p not in keep:
                sub = None  # another endpoint's part: drop its weights
        else:  # a part that computes nothing and only holds the model input
            inputs = [graph.input_name]
            outputs[p] = [graph.input_name]
        parts.append(Part(index=p, module=sub, inputs=inputs, outputs=outputs.get(p, []), nodes=by_part[p]))
    return parts


def _output_names(split_gm: fx.GraphModule, graph: ModelGraph) -> dict[int, list[str]]:
    """Name each submodule's outputs after the original nodes.

    fx may rename nodes copied into a submodule, but a consumer's placeholders keep the original names, so output
    ``i`` of part ``p`` is named by the placeholder it feeds; the model result is named by the graph's output node.
    """
    named: dict[int, dict[int, str]] = {}

    def record(arg: object, name: str) -> None:
        if not isinstance(arg, fx.Node):
            return
        if arg.op == "call_module":
            named.setdefault(int(arg.target.split("_")[1]), {})[0] = name
        elif arg.op == "call_function" and isinstance(arg.args[0], fx.Node) and arg.args[0].op == "call_module":
            named.setdefault(int(arg.args[0].target.split("_")[1]), {})[int(arg.args[1])] = name

    for node in split_gm.graph.nodes:
        if node.op == "call_module":
            sub = getattr(split_gm, node.target)
            placeholders = [n.name for n in sub.graph.nodes if n.op == "placeholder"]
            for arg, name in zip(node.args, placeholders):
                record(arg, name)
        elif node.op == "output":
            record(node.args[0], graph.result_name)
    return {p: [names[i] for i in sorted(names)] for p, names in named.items()}


def run_parts(parts: Sequence[Part], x: torch.Tensor, input_name: str) -> dict[str, torch.Tensor]:
    """Run every part in order in this process; returns all named values produced."""
    values: dict[str, torch.Tensor] = {input_name: x}
    with torch.no_grad():
        for part in parts:
            values.update(part.run(values))
    return values
