"""Device profiles: what each node of a model graph costs on one device, in milliseconds.

Three kinds, one interface (:meth:`Profile.node_ms`):

* :class:`RooflineProfile` — from a spec sheet: peak FLOP/s, memory bandwidth, per-kernel overhead and an
  efficiency per op kind, calibrated against published whole-model measurements (see ``conf/hardware``).
* :class:`LocalProfile` — each node measured on this machine (warm-up, repeats, median), cached per model.
* :class:`TableProfile` — per-node times read from a CSV written by ``python run.py mode=profile`` on any machine.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import os
import statistics
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import fx

from harness.model.graph import COSTED_KINDS, ModelGraph
from harness.model.memory import collector_paused, keep_activations_resident

CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache"
MAX_REPEATS = 200  # a measured profile's repeats, however small the model
RUNS_A_REPEAT = 3  # a repeat runs the model three times: stamped, then twice whole (the second one timed)
TIMING = "in-context, resident, 1 s, warm"  # how node times are measured; in the cache key: a new way measures again


def cache_dir() -> Path:
    """``$SPLITBENCH_CACHE`` if set (read at each call, so tests and sweeps can redirect it), else ``.cache/``."""
    return Path(os.environ.get("SPLITBENCH_CACHE", CACHE_DIR))


class Profile(ABC):
    """Predicts each node's time on one device."""

    name: str

    @abstractmethod
    def node_ms(self, graph: ModelGraph) -> dict[str, float]:
        """Milliseconds per node, for every node of ``graph`` (zero for inputs, outputs and pure views)."""

    def measured_whole_ms(self, graph: ModelGraph) -> float | None:
        """The whole model's real time where this profile was measured on the device, else None."""
        return None


@dataclass
class RooflineProfile(Profile):
    """time(node) = overhead + max(FLOPs / (peak · efficiency[kind]), bytes moved / (bandwidth · memory_efficiency)).

    With ``async_launch`` the overhead and the kernel overlap, as in eager PyTorch on a GPU, whose host queues the
    next kernel while the current one runs: time(node) = max(overhead, FLOP time, memory time). Short kernels then
    cost the launch interval and long ones their own time, which is what batch-1 measurements show.
    """

    name: str
    peak_gflops: float
    memory_gbps: float
    kernel_overhead_us: float
    efficiency: dict[str, float] = field(default_factory=dict)
    default_efficiency: float = 0.5
    memory_efficiency: float = 0.7
    async_launch: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    published_ms: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("peak_gflops", "memory_gbps"):
            if getattr(self, key) <= 0:
                raise ValueError(f"hardware profile {self.name!r}: {key} must be > 0, got {getattr(self, key)}")
        unknown = sorted(set(self.efficiency) - COSTED_KINDS)
        if unknown:
            raise ValueError(f"hardware profile {self.name!r}: efficiency key {unknown[0]!r} is not an op kind the "
                             f"graph costs; accepted (lower case): {', '.join(sorted(COSTED_KINDS))}")
        bad = {k: v for k, v in self.efficiency.items() if not 0 < v <= 1}
        if bad:
            raise ValueError(f"hardware profile {self.name!r}: efficiencies must lie in (0, 1], got {bad}")

    def node_ms(self, graph: ModelGraph) -> dict[str, float]:
        times = {}
        for name, node in graph.nodes.items():
            if node.op in ("placeholder", "output", "get_attr") or node.is_view:
                times[name] = 0.0
                continue
            eff = self.efficiency.get(node.kind, self.default_efficiency)
            compute_s = node.flops / (self.peak_gflops * 1e9 * eff)
            memory_s = (node.in_bytes + node.out_bytes + node.param_bytes) / (
                self.memory_gbps * 1e9 * self.memory_efficiency)
            overhead_s = self.kernel_overhead_us * 1e-6
            kernel_s = max(compute_s, memory_s)
            times[name] = (max(overhead_s, kernel_s) if self.async_launch else overhead_s + kernel_s) * 1e3
        return times



class _TimingInterpreter(fx.Interpreter):
    """Runs the graph node by node on a GPU with CUDA events around each node, read after one synchronisation, so a
    node's time is what the device spent on it, not its launch."""

    def __init__(self, module: fx.GraphModule, device: torch.device) -> None:
        super().__init__(module)
        self.device = device
        self.events: dict[str, tuple[Any, Any]] = {}

    def run_node(self, n: fx.Node) -> Any:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = super().run_node(n)
        end.record()
        self.events[n.name] = (start, end)
        return result

    def node_times(self) -> dict[str, float]:
        torch.cuda.synchronize(self.device)
        return {name: start.elapsed_time(end) for name, (start, end) in self.events.items()}


class _Stamps:
    """Monotonic stamps taken by the generated code of a module between its nodes."""

    def __init__(self) -> None:
        self.ns: list[int] = []

    def take(self) -> None:
        self.ns.append(time.perf_counter_ns())


def _stamped(module: fx.GraphModule) -> tuple[fx.GraphModule, _Stamps, list[str]]:
    """A copy of ``module`` whose generated code takes a stamp before its first node and after each node: the nodes
    timed in context, as the whole module really runs (one generated function, no interpreter in between), for
    about a tenth of a microsecond per stamp. Returns the copy, its stamps and the nodes in stamp order."""
    graph = copy.deepcopy(module.graph)
    stamps = _Stamps()
    nodes = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
    if nodes:
        with graph.inserting_before(nodes[0]):
            graph.call_function(stamps.take)
    for node in nodes:
        with graph.inserting_after(node):
            graph.call_function(stamps.take)
    return fx.GraphModule(module, graph), stamps, [n.name for n in nodes]


@dataclass
class NodeTimes:
    """One model measured on one processor: each node's median time in context, and the whole model's median time
    run as it is (no stamps), measured in the same loop."""

    node_ms: dict[str, float]
    whole_ms: float
    node_sum_ms: float  # the medians' sum before correction

    @property
    def corrected(self) -> dict[str, float]:
        """Node times scaled so that they add up to the whole model's real time: medians of separate nodes need
        not add up to the median of their sum, and the stamps cost a little."""
        scale = self.whole_ms / self.node_sum_ms if self.node_sum_ms > 0 else 1.0
        return {n: t * scale for n, t in self.node_ms.items()}


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) if samples else 0.0


def measure_node_times(graph: ModelGraph, warmup: int = 2, repeats: int = 7, device: torch.device | str = "cpu",
                       min_seconds: float = 0.0) -> NodeTimes:
    """Time every node of ``graph`` and the whole model on ``device`` of this machine (the CPU with the current
    torch thread count, or a GPU: nodes timed with CUDA events, the whole model with a synchronisation): at least
    ``repeats`` times, and for at least ``min_seconds`` in all (a small model's few milliseconds are one moment of a
    machine whose speed drifts)."""
    device = torch.device(device)
    module = graph.module if device.type == "cpu" else copy.deepcopy(graph.module).to(device)
    example = graph.example_input.to(device)
    stamped, stamps, order = _stamped(module) if device.type == "cpu" else (module, _Stamps(), [])
    samples: dict[str, list[float]] = {n: [] for n in graph.order}
    whole: list[float] = []
    keep_activations_resident()  # the workers' memory policy: under the default one VGG-16 ran 12 % slower here
    with torch.no_grad(), collector_paused():
        i, total = 0, warmup + repeats
        while i < total:
            times = _stamped_run(stamped, stamps, order, example) if device.type == "cpu" else _events_run(
                module, example, device)
            _whole_run(module, example, device)  # untimed: the stamped run left its own code and data in the caches
            whole_ms = _whole_run(module, example, device)
            if i == max(warmup - 1, 0) and min_seconds > 0:  # enough repeats for min_seconds at this pace
                needed = math.ceil(min_seconds * 1e3 / (RUNS_A_REPEAT * whole_ms))
                total = max(total, warmup + min(MAX_REPEATS, needed))
            if i >= warmup:
                whole.append(whole_ms)
                for n, t in times.items():
                    samples[n].append(t)
            i += 1
    node_ms = {n: (_median_ms(s) if graph[n].op not in ("placeholder", "output") else 0.0) for n, s in samples.items()}
    return NodeTimes(node_ms=node_ms, whole_ms=_median_ms(whole), node_sum_ms=sum(node_ms.values()))


def _stamped_run(module: fx.GraphModule, stamps: _Stamps, order: list[str], example: torch.Tensor
                 ) -> dict[str, float]:
    stamps.ns.clear()
    module(example)
    return {name: (stamps.ns[i + 1] - stamps.ns[i]) / 1e6 for i, name in enumerate(order)}


def _events_run(module: fx.GraphModule, example: torch.Tensor, device: torch.device) -> dict[str, float]:
    interp = _TimingInterpreter(module, device)
    interp.run(example)
    return interp.node_times()


def _whole_run(module: fx.GraphModule, example: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter_ns()
    module(example)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter_ns() - start) / 1e6


def measure_node_ms(graph: ModelGraph, warmup: int = 2, repeats: int = 7,
                    device: torch.device | str = "cpu") -> dict[str, float]:
    """Every node's time on ``device`` of this machine, corrected to add up to the whole model's real time."""
    return measure_node_times(graph, warmup, repeats, device).corrected


def _graph_key(graph: ModelGraph, threads: int, device: str = "cpu") -> str:
    spec = graph.spec.to_dict()
    digest = hashlib.sha1(json.dumps({**spec, "threads": threads, "torch": torch.__version__, "timing": TIMING},
                                     sort_keys=True).encode()).hexdigest()[:12]
    shape = "x".join(str(d) for d in graph.spec.input_shape)
    where = "" if device == "cpu" else f"_{device}"
    return f"{graph.spec.name}_{shape}_t{threads}{where}_{digest}"


@dataclass
class LocalProfile(Profile):
    """This machine, measured now: per-node medians, cached per model, input shape, thread count and device
    (``cpu`` or ``cuda``: a board's GPU is profiled where its workers compute)."""

    name: str = "local"
    threads: int = 1
    warmup: int = 2
    repeats: int = 7
    min_seconds: float = 1.0  # and repeats for at least this long (a small model's are few ms each)
    cache: bool = True
    cache_dir: str | None = None  # default: cache_dir()
    device: str = "cpu"

    def cache_path(self, graph: ModelGraph) -> Path:
        root = Path(self.cache_dir) if self.cache_dir else cache_dir()
        return root / "local_profiles" / f"{_graph_key(graph, self.threads, self.device)}.csv"

    def node_ms(self, graph: ModelGraph) -> dict[str, float]:
        path = self.cache_path(graph)
        if self.cache and path.exists():
            return TableProfile(name=self.name, path=str(path)).node_ms(graph)
        measured = self.measure(graph)
        times = measured.corrected
        if self.cache:  # decide on the times as cached, so the first run decides as every later run will
            write_table(path, graph, times, {"threads": self.threads, **whole_model_meta(measured)})
            return TableProfile(name=self.name, path=str(path)).node_ms(graph)
        return times

    def measure(self, graph: ModelGraph) -> NodeTimes:
        """Measure now, with this profile's thread count, bypassing the cache."""
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return measure_node_times(graph, self.warmup, self.repeats, self.device, self.min_seconds)
        finally:
            torch.set_num_threads(previous)

    def measured_whole_ms(self, graph: ModelGraph) -> float | None:
        path = self.cache_path(graph)
        return TableProfile(name=self.name, path=str(path)).measured_whole_ms(graph) if path.exists() else None


def whole_model_meta(measured: NodeTimes) -> dict[str, float]:
    """What a table records of the whole model: its real time, and the per-node medians' sum it corrected."""
    return {"whole_ms": round(measured.whole_ms, 6), "node_sum_ms": round(measured.node_sum_ms, 6)}


def read_meta(path: Path | str) -> dict[str, Any]:
    """The ``# meta:`` header line of a table written by :func:`write_table` (empty when there is none)."""
    with Path(path).open() as f:
        for line in f:
            if not line.startswith("#"):
                break
            if line.startswith("# meta: "):
                return json.loads(line[len("# meta: "):])
    return {}


def write_table(path: Path | str, graph: ModelGraph, times: Mapping[str, float], meta: Mapping[str, Any]) -> Path:
    """Write per-node times as CSV (``node,kind,ms``) with the model and machine in ``#`` header lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        f.write(f"# model: {json.dumps(graph.spec.to_dict())}\n# meta: {json.dumps(dict(meta))}\n")
        writer = csv.writer(f)
        writer.writerow(["node", "kind", "ms"])
        for name in graph.order:
            writer.writerow([name, graph[name].kind, f"{times[name]:.6f}"])
    tmp.replace(path)  # atomic: concurrent readers never see half a table
    return path


@dataclass
class TableProfile(Profile):
    """Per-node times measured on a real device and saved as CSV (``node,kind,ms``)."""

    name: str
    path: str

    def node_ms(self, graph: ModelGraph) -> dict[str, float]:
        path = Path(self.path)
        if not path.exists():
            raise FileNotFoundError(f"hardware profile {self.name!r}: table {path} does not exist; write one with "
                                    f"`python run.py mode=profile model={graph.name}` on the device")
        with path.open() as f:
            rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
        times = {row["node"]: float(row["ms"]) for row in rows}
        unknown = sorted(set(times) - set(graph.nodes))
        if unknown:
            raise ValueError(f"hardware profile {self.name!r}: table {path} names nodes that model {graph.name!r} "
                             f"does not have: {unknown[:5]}; its nodes are e.g. {graph.order[:5]}")
        missing = [n for n in graph.order if n not in times]
        if missing:
            raise ValueError(f"hardware profile {self.name!r}: table {path} lacks {len(missing)} nodes of model "
                             f"{graph.name!r}, e.g. {missing[:5]}")
        return times

    def measured_whole_ms(self, graph: ModelGraph) -> float | None:
        whole = read_meta(self.path).get("whole_ms") if Path(self.path).exists() else None
        return float(whole) if whole else None

