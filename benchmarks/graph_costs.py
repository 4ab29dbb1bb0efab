"""What each model's graph costs to extract, and what the profiles say it costs to run; printed as a markdown table.

Per model: nodes, fx trace time and whole graph extraction time (trace + shape propagation + per-node facts; both
warm), GFLOPs, parameter MB, the roofline whole-model time on the GTX 1080 Ti and the Jetson AGX Xavier, and this machine measured
two ways: the sum of LocalProfile's per-node medians and a plain forward's median (their ratio is the cost of
timing node by node through the fx interpreter).

    PYTHONPATH=. .venv/bin/python benchmarks/graph_costs.py                     # every model in conf/model
    PYTHONPATH=. .venv/bin/python benchmarks/graph_costs.py --models vgg16 resnet50 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from harness.model.graph import ModelGraph, graph_from_module, trace
from harness.model.models import ModelSpec, build_model, make_input
from hardware.profiles import LocalProfile, Profile

CONF = Path(__file__).resolve().parent.parent / "conf"
BOARDS = ("gtx1080ti", "jetson_agx_xavier")


def model_names() -> list[str]:
    return sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem != "custom")


def board(name: str) -> Profile:
    return instantiate(OmegaConf.load(CONF / "profile" / f"{name}.yaml"))


def median_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def measure(name: str, boards: dict[str, Profile], threads: int, warmup: int, repeats: int) -> dict[str, float]:
    spec = ModelSpec.from_config(OmegaConf.load(CONF / "model" / f"{name}.yaml"))
    model = build_model(spec)
    x = make_input(spec)
    # Extraction is timed warm (median of 3 after one call), as a sweep sees it after its first job.
    trace_ms = median_ms(lambda: trace(model, spec.name), 1, 3)
    graph_ms = median_ms(lambda: graph_from_module(model, spec, x), 1, 3)
    graph: ModelGraph = graph_from_module(model, spec, x)
    local = LocalProfile(threads=threads, warmup=warmup, repeats=repeats, cache=False).node_ms(graph)
    with torch.no_grad():
        forward_ms = median_ms(lambda: model(x), warmup, repeats)
    row = {"nodes": len(graph), "trace_ms": trace_ms, "graph_ms": graph_ms, "gflop": graph.total_flops / 1e9,
           "param_mb": sum(n.param_bytes for n in graph.nodes.values()) / 1e6,
           "local_nodes_ms": sum(local.values()), "local_forward_ms": forward_ms}
    row.update({f"{b}_ms": sum(p.node_ms(graph).values()) for b, p in boards.items()})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=model_names(), metavar="NAME",
                        help=f"models of conf/model (default: all): {' '.join(model_names())}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the local measurements (default 1)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    unknown = sorted(set(args.models) - set(model_names()))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; accepted: {model_names()}")
    boards = {b: board(b) for b in BOARDS}
    torch.set_num_threads(args.threads)  # extraction's shape propagation too: spare cores keep timings steady
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.threads} thread(s), median of {args.repeats} after {args.warmup} warm-up\n")
    print("| model | nodes | trace ms | graph ms | GFLOP | params MB | 1080 Ti ms | Xavier ms | local Σ nodes ms "
          "| local forward ms | Σ nodes / forward |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        r = measure(name, boards, args.threads, args.warmup, args.repeats)
        print(f"| {name} | {r['nodes']} | {r['trace_ms']:.0f} | {r['graph_ms']:.0f} | {r['gflop']:.2f} "
              f"| {r['param_mb']:.1f} | {r['gtx1080ti_ms']:.2f} | {r['jetson_agx_xavier_ms']:.2f} "
              f"| {r['local_nodes_ms']:.1f} | {r['local_forward_ms']:.1f} "
              f"| {r['local_nodes_ms'] / r['local_forward_ms']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
