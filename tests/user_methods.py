"""A method a user might bring, written from README's "Extending" section alone: one class, no constructor.

``Half`` runs the first half of the model's nodes (in topological order, so every predecessor comes along) on the
device and the rest on the server. ``Fraction`` takes one option, to show that options are constructor keywords.
"""

from __future__ import annotations

from partitioners.base import CutProblem, LinkState, Partitioner, Plan, cut_plan


class Half(Partitioner):
    kind = "cut"

    def prepare(self, problem: CutProblem) -> CutProblem:
        return problem

    def decide(self, prepared: CutProblem, link: LinkState) -> Plan:
        return cut_plan(self.name, prepared, set(prepared.order[: len(prepared.order) // 2]), link)


class Fraction(Half):
    def __init__(self, fraction: float = 0.5) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.fraction = fraction

    def decide(self, prepared: CutProblem, link: LinkState) -> Plan:
        return cut_plan(self.name, prepared, set(prepared.order[: int(len(prepared.order) * self.fraction)]), link)
