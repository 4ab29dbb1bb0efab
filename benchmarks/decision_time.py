"""Online decision time of the device/server cut methods, on the Xavier -> 1080 Ti roofline costs.

    PYTHONPATH=. .venv/bin/python benchmarks/decision_time.py \\
        --models vgg16 resnet50 resnet152 inception_v3 densenet121 densenet201 --repeats 5

For each model, every method is prepared once (``offline ms``), then ``decide`` is timed with
``time.perf_counter_ns`` over the 34 bandwidths (30 log-spaced 0.1..1000 Mbit/s and the DADS/Neurosurgeon ones),
in passes: at least ``--repeats`` passes, more until 1000 samples or 2 s. ``decide`` is the whole online call, plan
included; ``core`` is the decision without its plan (``best_cut``: the device side and its latency line), which is
what the <= 50 us goal of CIC's envelope is about. ``x dads`` is dads-networkx's median decide time over the
method's, measured in the same run. ``gap`` is the largest relative excess of the method's predicted latency over
dads's optimum across the bandwidths: 0 (<= 1e-9) for the exact methods. cic-mincut cuts the splitting model with
its default solver (``flow="dense"``), cic-mincut-nx with networkx. DADS runs on three max-flow solvers: networkx,
scipy and, with the ``flow`` extra installed, OR-tools (``dads-ortools``: the network built once, capacities set per
decision). A second table sets each CIC variant against the fastest DADS of the same model and run: ``cic x fastest
dads`` is that DADS's median decide time over CIC's (goal: >= 100 for cic-mincut on resnet152 and densenet201). One
thread everywhere; the garbage collector is off while timing. Timings are from a shared machine: compare ratios, not
absolute values.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"  # before numpy, scipy and torch load their BLAS

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from partitioners.base import cut_problem  # noqa: E402
from harness.model.graph import build_graph  # noqa: E402
from harness.model.models import ModelSpec  # noqa: E402
from partitioners.base import CutProblem, LinkState, Partitioner  # noqa: E402
from partitioners.cic import CIC  # noqa: E402
from partitioners.dads import DADS  # noqa: E402
from partitioners.qdmp import QDMP  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BANDWIDTHS = [float(b) for b in np.logspace(-1, 3, 30)] + [0.13, 1.1, 5.85, 18.88]
MODELS = {
    "vgg16": ("torchvision.models.vgg16", 224, {}),
    "alexnet": ("torchvision.models.alexnet", 224, {}),
    "resnet18": ("torchvision.models.resnet18", 224, {}),
    "resnet50": ("torchvision.models.resnet50", 224, {}),
    "resnet152": ("torchvision.models.resnet152", 224, {}),
    "googlenet": ("torchvision.models.googlenet", 224, {"aux_logits": False, "init_weights": False}),
    "inception_v3": ("torchvision.models.inception_v3", 299, {"aux_logits": False, "init_weights": False}),
    "mobilenet_v2": ("torchvision.models.mobilenet_v2", 224, {}),
    "densenet121": ("torchvision.models.densenet121", 224, {}),
    "densenet201": ("torchvision.models.densenet201", 224, {}),
    "efficientnet_b0": ("torchvision.models.efficientnet_b0", 224, {}),
}
DEFAULT_MODELS = ["vgg16", "resnet50", "resnet152", "inception_v3", "densenet121", "densenet201"]
MIN_SAMPLES, BUDGET_S = 1000, 2.0
REFERENCE = "dads-networkx"
DADS_LABELS = (REFERENCE, "dads-scipy", "dads-ortools")


def methods() -> dict[str, Partitioner]:
    """The methods compared, by label; Neurosurgeon when its module exists."""
    found: dict[str, Partitioner] = {}
    if importlib.util.find_spec("partitioners.neurosurgeon") is not None:
        from partitioners.neurosurgeon import Neurosurgeon
        found["neurosurgeon"] = Neurosurgeon()
    found.update({"qdmp": QDMP(), REFERENCE: DADS(flow="networkx"), "dads-scipy": DADS(flow="scipy")})
    if importlib.util.find_spec("ortools") is not None:  # the flow extra: the fastest DADS we know
        found["dads-ortools"] = DADS(flow="ortools")
    found.update({"cic-mincut": CIC(online="mincut"), "cic-mincut-nx": CIC(online="mincut", flow="networkx"),
                  "cic-envelope": CIC(online="envelope")})
    return found


def problem_of(name: str) -> CutProblem:
    target, size, args = MODELS[name]
    graph = build_graph(ModelSpec(name, target, (1, 3, size, size), 0, {"weights": None, **args}))
    device = instantiate(OmegaConf.load(ROOT / "conf" / "profile" / "jetson_agx_xavier.yaml"))
    server = instantiate(OmegaConf.load(ROOT / "conf" / "profile" / "gtx1080ti.yaml"))
    return cut_problem(graph, device.node_ms(graph), server.node_ms(graph))


def time_calls(call: Callable[[Any, LinkState], Any], prepared: Any, links: list[LinkState],
               repeats: int) -> np.ndarray:
    """Nanoseconds per call: one warm-up pass, then passes until ``repeats`` and (1000 samples or 2 s)."""
    for link in links:
        call(prepared, link)
    samples: list[int] = []
    passes, start = 0, time.perf_counter()
    gc.disable()
    try:
        while passes < repeats or (len(samples) < MIN_SAMPLES and time.perf_counter() - start < BUDGET_S):
            for link in links:
                t0 = time.perf_counter_ns()
                call(prepared, link)
                samples.append(time.perf_counter_ns() - t0)
            passes += 1
    finally:
        gc.enable()
    return np.array(samples, dtype=float)


def measure(model: str, repeats: int) -> list[dict[str, Any]]:
    problem = problem_of(model)
    links = [LinkState(b) for b in BANDWIDTHS]
    rows, optimum = [], None
    for label, method in methods().items():
        t0 = time.perf_counter_ns()
        prepared = method.prepare(problem)
        offline_ms = (time.perf_counter_ns() - t0) / 1e6
        latencies = np.array([method.decide(prepared, link).predicted_latency_ms for link in links])
        if label == REFERENCE:
            optimum = latencies
        decide = time_calls(method.decide, prepared, links, repeats)
        core = time_calls(method.best_cut, prepared, links, repeats) if hasattr(method, "best_cut") else None
        extra = getattr(prepared, "extra", {})
        rows.append({"model": model, "nodes": len(problem.order), "method": label, "offline_ms": offline_ms,
                     "decide_us": np.median(decide) / 1e3, "decide_p99_us": np.percentile(decide, 99) / 1e3,
                     "core_us": None if core is None else np.median(core) / 1e3,
                     "core_p99_us": None if core is None else np.percentile(core, 99) / 1e3,
                     "samples": len(decide), "nodes_after": extra.get("nodes_after"), "latencies": latencies})
    reference = next(r for r in rows if r["method"] == REFERENCE)
    for row in rows:
        row["speedup"] = reference["decide_us"] / row["decide_us"]
        row["gap"] = float(np.max((row["latencies"] - optimum) / optimum))
    return rows


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'model':<13} {'nodes':>5} {'method':<13} {'offline ms':>10} {'decide us':>11} {'p99 us':>11} "
            f"{'core us':>10} {'core p99':>10} {'x dads':>8} {'gap':>8} {'samples':>7} {'after':>5}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<13} {r['nodes']:>5} {r['method']:<13} {fmt(r['offline_ms']):>10} "
              f"{fmt(r['decide_us']):>11} {fmt(r['decide_p99_us']):>11} {fmt(r['core_us']):>10} "
              f"{fmt(r['core_p99_us']):>10} {r['speedup']:>8.1f} {r['gap']:>8.1e} {r['samples']:>7} "
              f"{r['nodes_after'] if r['nodes_after'] is not None else '-':>5}")


def print_cic_against_fastest_dads(rows: list[dict[str, Any]]) -> None:
    """Each CIC variant against the faster DADS solver of its model, both medians from the same run."""
    head = (f"{'cic method':<14} {'model':<13} {'decide us':>10}   {'fastest dads':<13} {'decide us':>10} "
            f"{'cic x fastest dads':>18}")
    print(head)
    print("-" * len(head))
    for model in dict.fromkeys(r["model"] for r in rows):
        of_model = [r for r in rows if r["model"] == model]
        fastest = min((r for r in of_model if r["method"] in DADS_LABELS), key=lambda r: r["decide_us"])
        for r in of_model:
            if r["method"].startswith("cic"):
                print(f"{r['method']:<14} {model:<13} {fmt(r['decide_us']):>10}   {fastest['method']:<13} "
                      f"{fmt(fastest['decide_us']):>10} {fastest['decide_us'] / r['decide_us']:>18.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS,
                        help=f"models to time, or 'all'; known: {', '.join(MODELS)}")
    parser.add_argument("--repeats", type=int, default=5, help="least passes over the 34 bandwidths per method")
    args = parser.parse_args()
    names = list(MODELS) if args.models == ["all"] else args.models
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {list(MODELS)} or 'all'")
    torch.set_num_threads(1)
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"torch threads {torch.get_num_threads()}, {len(BANDWIDTHS)} bandwidths, repeats >= {args.repeats}")
    rows: list[dict[str, Any]] = []
    for name in names:
        rows.extend(measure(name, args.repeats))
    print_table(rows)
    print()
    print_cic_against_fastest_dads(rows)


if __name__ == "__main__":
    main()
