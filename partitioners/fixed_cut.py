"""A plan fixed in advance: the device runs the named nodes and everything they depend on, the server the rest.

Not a method a paper proposes: the way a benchmark (or a user) runs one chosen cut through the same engine as every
method, e.g. ``method=fixed_cut method.after=features_16``.
"""

from __future__ import annotations

from partitioners.base import CutProblem, LinkState, Partitioner, Plan, cut_plan


class FixedCut(Partitioner):
    """The device side is ``after`` (node names, comma-separated) and their ancestors, whatever the link."""

    name = "fixed_cut"

    def __init__(self, after: str, name: str = "fixed_cut", objective: str = "latency") -> None:
        self.after = [n.strip() for n in str(after).split(",") if n.strip()]
        if not self.after:
            raise ValueError("method.after must name at least one node, e.g. method.after=features_16")
        self.objective = objective

    def prepare(self, problem: CutProblem) -> tuple[CutProblem, set[str]]:
        unknown = [n for n in self.after if n not in problem.preds]
        if unknown:
            raise ValueError(f"{self.name}: method.after names {unknown}, which are not nodes of the model "
                             f"(its nodes begin {problem.order[:4]})")
        side, todo = set(), list(self.after)
        while todo:
            node = todo.pop()
            if node not in side:
                side.add(node)
                todo.extend(problem.preds[node])
        return problem, side

    def decide(self, prepared: tuple[CutProblem, set[str]], link: LinkState) -> Plan:
        problem, side = prepared
        return cut_plan(self.name, problem, side, link)
