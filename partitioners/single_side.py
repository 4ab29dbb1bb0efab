"""The two trivial plans every comparison needs: everything on the device, everything on the server."""

from __future__ import annotations

from partitioners.base import CutProblem, LinkState, Partitioner, Plan, cut_plan


class DeviceOnly(Partitioner):
    """Edge-only: the device runs the whole model; nothing crosses the link."""

    name = "device_only"

    def __init__(self, name: str = "device_only", objective: str = "latency") -> None:
        self.objective = objective

    def prepare(self, problem: CutProblem) -> CutProblem:
        return problem

    def decide(self, prepared: CutProblem, link: LinkState) -> Plan:
        return cut_plan(self.name, prepared, set(prepared.order), link)


class ServerOnly(Partitioner):
    """Cloud-only: the device sends its input and the server runs the whole model."""

    name = "server_only"

    def __init__(self, name: str = "server_only", objective: str = "latency") -> None:
        self.objective = objective

    def prepare(self, problem: CutProblem) -> CutProblem:
        return problem

    def decide(self, prepared: CutProblem, link: LinkState) -> Plan:
        return cut_plan(self.name, prepared, {prepared.input}, link)
