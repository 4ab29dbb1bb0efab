"""The interface every method implements, and the problems and plans they exchange with the harness.

A method never does I/O and never times itself: the harness times ``prepare`` (offline, independent of the network)
and ``decide`` (online, for one link state) and runs the plan it returns.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from harness.model.graph import ModelGraph

DEVICE, SERVER = "device", "server"


@dataclass(frozen=True)
class LinkState:
    """What a method knows about the network when it decides."""

    bandwidth_mbps: float
    delay_ms: float = 0.0

    def transfer_ms(self, nbytes: float) -> float:
        """Serialisation time of ``nbytes`` of payload at this bandwidth (delay not included)."""
        return nbytes * 8.0 / (self.bandwidth_mbps * 1e3)


@dataclass
class CutProblem:
    """A model DAG with per-node costs on the two sides of a device/server cut.

    ``order`` is topological; ``input`` is pinned to the device; ``result`` is the node whose value is the output.
    Times are milliseconds on the real (undilated) boards; ``out_bytes`` is what a node sends if it is cut, as the
    run's codec puts it on the wire, and ``encode_ms``/``decode_ms`` (absent: 0) what encoding it costs the device
    and decoding it the server, paid once per crossing tensor.
    """

    order: list[str]
    preds: dict[str, tuple[str, ...]]
    succs: dict[str, tuple[str, ...]]
    out_bytes: dict[str, int]
    device_ms: dict[str, float]
    server_ms: dict[str, float]
    input: str
    result: str
    encode_ms: dict[str, float] = field(default_factory=dict)
    decode_ms: dict[str, float] = field(default_factory=dict)

    def crossing(self, device_side: set[str]) -> list[str]:
        """The nodes whose output crosses the link: on the device, with a consumer on the server."""
        return [n for n in device_side if any(s not in device_side for s in self.succs[n])]

    def latency_ms(self, device_side: set[str], link: LinkState) -> float:
        """Sequential latency of a cut: device part + every crossing tensor once + server part (+ delay)."""
        device, transfer, server = self.stage_ms(device_side, link)
        delay = link.delay_ms if any(self.out_bytes[n] for n in self.crossing(device_side)) else 0.0
        return device + transfer + server + delay

    def stage_ms(self, device_side: set[str], link: LinkState) -> tuple[float, float, float]:
        """(device stage, link stage, server stage): the pipeline stages when inferences overlap; encoding is the
        device's work, decoding the server's."""
        crossing = self.crossing(device_side)
        device = sum(self.device_ms[n] for n in device_side) + sum(self.encode_ms.get(n, 0.0) for n in crossing)
        server = (sum(self.server_ms[n] for n in self.order if n not in device_side)
                  + sum(self.decode_ms.get(n, 0.0) for n in crossing))
        return device, link.transfer_ms(sum(self.out_bytes[n] for n in crossing)), server


def cut_problem(graph: ModelGraph, device_ms: Mapping[str, float], server_ms: Mapping[str, float],
                wire: Any = None) -> CutProblem:
    """The device/server cut problem of ``graph``: every node but the fx ``output`` marker, in topological order.
    ``wire`` (``hardware.codec_costs.WireCosts``): the bytes and codec times of the run's codecs; None: float32."""
    order = [n for n in graph.order if graph[n].op != "output"]
    keep = set(order)
    return CutProblem(
        order=order,
        preds={n: tuple(p for p in graph[n].preds if p in keep) for n in order},
        succs={n: tuple(s for s in graph[n].succs if s in keep) for n in order},
        out_bytes={n: wire.out_bytes[n] if wire else graph[n].out_bytes for n in order},
        device_ms={n: float(device_ms[n]) for n in order},
        server_ms={n: float(server_ms[n]) for n in order},
        input=graph.input_name,
        result=graph.result_name,
        encode_ms={n: float(wire.encode_ms[n]) for n in order} if wire else {},
        decode_ms={n: float(wire.decode_ms[n]) for n in order} if wire else {},
    )


@dataclass
class Plan:
    """A method's decision, as plain JSON (``plan.json``)."""

    method: str
    kind: str  # "cut" or "spatial"
    predicted_latency_ms: float
    bandwidth_mbps: float
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "kind": self.kind, "bandwidth_mbps": self.bandwidth_mbps,
                "predicted_latency_ms": self.predicted_latency_ms, **self.detail}

    def digest(self) -> str:
        """Twelve hex digits naming what the plan runs where, not which method chose it: two methods that chose the
        same cut share it, so their runs differ only by noise."""
        what = sorted(device_side_of(self)) if self.kind == "cut" else self.detail
        return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cut_plan(method: str, problem: CutProblem, device_side: set[str], link: LinkState,
             extra: Mapping[str, Any] | None = None) -> Plan:
    """The plan of a device/server cut, with the per-node table that ``plan.json`` promises."""
    device_side = set(device_side) | {problem.input}
    nodes = [{"name": n, "inputs": list(problem.preds[n]), "device_ms": problem.device_ms[n],
              "server_ms": problem.server_ms[n], "out_bytes": problem.out_bytes[n],
              "side": DEVICE if n in device_side else SERVER} for n in problem.order]
    return Plan(method=method, kind="cut", predicted_latency_ms=problem.latency_ms(device_side, link),
                bandwidth_mbps=link.bandwidth_mbps, detail={"nodes": nodes, **(extra or {})})


def device_side_of(plan: Plan | Mapping[str, Any]) -> set[str]:
    """The set of nodes a cut plan runs on the device."""
    data = plan.to_json() if isinstance(plan, Plan) else plan
    return {n["name"] for n in data["nodes"] if n["side"] == DEVICE}


class Partitioner(ABC):
    """A collaborative-inference method: offline ``prepare``, online ``decide``.

    The contract with its YAML (``conf/method/<name>.yaml``), which the harness enforces before any work:

    - ``_target_`` names the class; every other key but ``name`` is passed to the constructor as a keyword
      argument, so the constructor's keyword parameters *are* the method's options (a class without options needs
      no ``__init__``). A key the constructor does not take is refused, naming the file and the accepted keys.
    - ``name`` is optional: the method is named by it, else by its YAML file's name; the harness sets ``name`` on
      the instance after construction (records, plans and tables use it).
    - ``kind`` (class attribute): ``"cut"`` (one device, one server: ``prepare`` receives a :class:`CutProblem`)
      or ``"spatial"`` (a star of edge servers: ``prepare`` receives a ``partitioners.spatial`` problem).
    - ``decide`` returns a :class:`Plan` (for cuts, :func:`cut_plan` builds it) and does no I/O and no timing.
    """

    name: str = ""  # set by the harness from the YAML's name or file name
    kind: ClassVar[str] = "cut"  # "cut": one device + one server; "spatial": N edge servers

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind not in ("cut", "spatial"):
            raise TypeError(f"{cls.__qualname__}.kind = {cls.kind!r}; a method's kind is 'cut' or 'spatial'")

    @abstractmethod
    def prepare(self, problem: Any) -> Any:
        """Offline work that does not depend on the network (timed as ``offline_time_ms``)."""

    @abstractmethod
    def decide(self, prepared: Any, link: LinkState) -> Plan:
        """The online decision for one link state (timed as ``decision_time_ms``)."""
