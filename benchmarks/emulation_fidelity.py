"""How closely a dilated split-inference run reproduces the latency the cost model predicts for the emulated boards.

VGG-16 (224x224) on ``xavier_1080ti`` (Jetson AGX Xavier device, GTX 1080 Ti server), cut after pool3, pool4 and
pool5 (one tensor of 784, 392 and 98 KiB crosses), at DADS's 3G, LTE and Wi-Fi uplink rates (1.1, 5.85, 18.88
Mbit/s). Each combination is one real run through ``harness.controller.runtime.run_workers``: two worker processes in network
namespaces, the kernel shaping the veth at bandwidth / TDF, compute padded to the roofline time x TDF, TDF calibrated
per run from this machine's local profile. ``--auto-tdf`` sets it as ``run.py`` does instead: the workers time their
own parts after the warm-up, and an inference that overruns is repeated at a higher TDF (``calibrated_tdf`` and
``repeats`` in the JSON). The ratio is
measured latency (issue to result, divided by TDF, mean over the measured inferences) over the plan's predicted
latency (device + transfer + server); the goal is within +-5 %. ``link`` compares the measured send spans (first
byte to ACK) with the predicted transfer. A run is marked INVALID by the rule ``run.py`` applies: when the real
compute's overruns of its dilated budgets delay a measured inference by more than ``runtime.overrun_tolerance_pct``
of its latency.

Real time is TDF x emulated time: TDF is ~20-45 here, so the pool3 cut at 1.1 Mbit/s (5.9 s emulated) takes ~4 min
per inference; the whole grid with one warm-up and two measured inferences takes ~25 min.

    PYTHONPATH=. .venv/bin/python benchmarks/emulation_fidelity.py --json
    PYTHONPATH=. .venv/bin/python benchmarks/emulation_fidelity.py --cuts pool5 --rates 18.88 --inferences 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from hardware.profiles import LocalProfile
from harness.config import build_hardware, register, resolve
from partitioners.base import cut_problem
from harness.controller.cut import CutStrategy, cut_workers
from harness.controller.measure import output_deviation
from harness.controller.measurer import overrun_metrics, verdict
from harness.controller.measurer import calibrate_tdf
from harness.model.graph import ancestors, build_graph
from harness.model.models import ModelSpec
from harness.network.link import LinkSpec
from harness.controller.measurer import AutoTdf, latencies_ms, measured_seqs, overrun_cost_ms
from harness.controller.runtime import RunFailed, run_workers
from partitioners.base import LinkState, cut_plan

ROOT = Path(__file__).resolve().parent.parent
CUTS = {"pool3": "features_16", "pool4": "features_23", "pool5": "features_30"}  # torchvision's vgg16.features
RATES_MBPS = (1.1, 5.85, 18.88)
GOAL = 0.05


def make_cfg(overrides: list[str]) -> DictConfig:
    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(config_name="config", overrides=overrides)
    resolve(cfg)  # validates
    return cfg


def measure(cfg: DictConfig, cut: str, mbps: float, margin: float, retime: bool) -> dict[str, Any]:
    """One dilated run of VGG-16 cut after ``cut`` at ``mbps``: predicted and measured latency, TDF, validity."""
    graph = build_graph(ModelSpec.from_config(cfg.model))
    hardware = build_hardware(cfg.hardware)
    node_ms = hardware.node_ms(graph)
    device, server = hardware.cut_roles
    problem = cut_problem(graph, node_ms[device], node_ms[server])
    link = LinkState(mbps, float(cfg.link.delay_ms))
    plan = cut_plan("fixed_cut", problem, ancestors(graph, [CUTS[cut]]), link)
    side = {n["name"] for n in plan.to_json()["nodes"] if n["side"] == "device"}
    exp = resolve(cfg)
    local_ms = LocalProfile(threads=exp.runtime.threads_per_worker).node_ms(graph)
    tdf, _ = calibrate_tdf(CutStrategy(exp, graph, node_ms).compute_ratios(plan, local_ms), margin, concurrent=1)
    workers, first = cut_workers(exp, graph, plan, node_ms, tdf, pad=True), device
    predicted_device, predicted_link, predicted_server = problem.stage_ms(side, link)
    row: dict[str, Any] = {"cut": cut, "node": CUTS[cut], "tensor_bytes": graph[CUTS[cut]].out_bytes,
                           "bandwidth_mbps": mbps, "tdf": tdf, "predicted_ms": plan.predicted_latency_ms,
                           "predicted_link_ms": predicted_link,
                           "predicted_compute_ms": predicted_device + predicted_server}
    tolerance = float(cfg.runtime.overrun_tolerance_pct)
    started = time.monotonic()
    try:
        result = run_workers([device, server], [(device, server, LinkSpec(mbps, float(cfg.link.delay_ms)))],
                             workers, first, OmegaConf.to_container(cfg.scenario), tdf, float(cfg.runtime.timeout_s),
                             int(cfg.runtime.max_payload_mb) << 20, backend=cfg.runtime.backend, progress=False,
                             auto_tdf=AutoTdf(tolerance, int(cfg.runtime.max_repeats), plan.predicted_latency_ms,
                                              together=False) if retime else None)
    except RunFailed as exc:
        return {**row, "valid": False, "invalid_reason": str(exc), "real_s": time.monotonic() - started}
    measured = latencies_ms(result)
    seqs = set(measured_seqs(result))
    sends = [s for s in result.spans if s["kind"] == "send" and s["seq"] in seqs]
    per_inference_link = sum((s["end_ns"] - s["start_ns"]) / 1e6 / result.tdf_of(s["seq"]) for s in sends) / max(
        1, len(measured))
    overruns = overrun_metrics(result)
    measured_compute = [s for s in result.spans if s["kind"] == "compute" and s["seq"] in seqs]
    # Where real compute overran, and what that cost in emulated latency (the runtime's measure, per inference).
    by_endpoint = {e: 100 * max(s.get("overrun", 0.0) for s in measured_compute if s["endpoint"] == e)
                   for e in sorted({s["endpoint"] for s in measured_compute})}
    worst_cost_ms = max((overrun_cost_ms(result, seq) for seq in measured_seqs(result)), default=0.0)
    reason = verdict(result, len(result.starts_ns), tolerance)  # the rule run.py applies
    valid = reason is None
    return {**row, "tdf_calibrated": tdf, "tdf": result.tdf, "calibrated_tdf": result.calibration.get("tdf"),
            "repeats": len(result.repeats),
            "backend": result.backend, "measured_ms": float(measured.mean()),
            "measured_ms_each": [float(x) for x in measured], "ratio": float(measured.mean()) / plan.predicted_latency_ms,
            "measured_link_ms": per_inference_link, "link_ratio": per_inference_link / predicted_link,
            "max_overrun_pct": overruns["max_overrun_pct"], "overrun_cost_pct": overruns["overrun_cost_pct"],
            "max_overrun_pct_by_endpoint": by_endpoint,
            "max_overrun_cost_ms": worst_cost_ms, **output_deviation(graph, result),
            "valid": valid, "invalid_reason": reason or "",
            "real_s": time.monotonic() - started}


def table(rows: list[dict[str, Any]]) -> str:
    lines = [("| cut | tensor | Mbit/s | TDF | backend | predicted ms | measured ms | measured / predicted | "
              "link measured / predicted | valid | real s |"),
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        if "measured_ms" not in r:
            lines.append(f"| {r['cut']} | {r['tensor_bytes'] / 1024:.0f} KiB | {r['bandwidth_mbps']:g} | "
                         f"{r['tdf']:.1f} | - | {r['predicted_ms']:.1f} | - | - | - | INVALID: {r['invalid_reason']} "
                         f"| {r['real_s']:.0f} |")
            continue
        where = ", ".join(f"{e} {p:.0f}%" for e, p in r["max_overrun_pct_by_endpoint"].items() if p > 0)
        ok = "yes" if r["valid"] else f"INVALID: overrun {where}, costing {r['overrun_cost_pct']:.1f}% of latency"
        goal = "" if abs(r["ratio"] - 1) <= GOAL else " (outside ±5%)"
        lines.append(f"| {r['cut']} | {r['tensor_bytes'] / 1024:.0f} KiB | {r['bandwidth_mbps']:g} | {r['tdf']:.1f} | "
                     f"{r['backend']} | {r['predicted_ms']:.1f} | {r['measured_ms']:.1f} | {r['ratio']:.3f}{goal} | "
                     f"{r['link_ratio']:.3f} | {ok} | {r['real_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuts", nargs="+", choices=list(CUTS), default=list(CUTS))
    parser.add_argument("--rates", nargs="+", type=float, default=list(RATES_MBPS), metavar="MBPS")
    parser.add_argument("--inferences", type=int, default=2, help="measured inferences per run (after 1 warm-up)")
    parser.add_argument("--tdf-margin", type=float, default=None,
                        help="headroom over the slowest part's local/emulated ratio (default: runtime.tdf_margin)")
    parser.add_argument("--auto-tdf", dest="retime", action="store_true",
                        help="set the TDF as run.py does: the workers calibrate it after the warm-up, and an overrun "
                             "inference is repeated at a higher TDF")
    parser.add_argument("--json", nargs="?", const=str(ROOT / "benchmarks" / "results" / "emulation_fidelity.json"),
                        metavar="PATH", help="also write the rows as JSON (default benchmarks/results/"
                                             "emulation_fidelity.json)")
    args = parser.parse_args()
    cfg = make_cfg(["model=vgg16", "hardware=xavier_1080ti", "link=wifi", "scenario=single_stream",
                    f"scenario.inferences={args.inferences}", "scenario.warmup=1"])
    margin = float(args.tdf_margin if args.tdf_margin is not None else cfg.runtime.tdf_margin)
    load = os.getloadavg()
    print(f"host {platform.node()}, {os.cpu_count()} cpus, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"torch {torch.__version__}, tdf margin {margin:g}, auto tdf {args.retime}", flush=True)
    rows = []
    for cut in args.cuts:
        for mbps in args.rates:
            rows.append(measure(cfg, cut, mbps, margin, args.retime))
            r = rows[-1]
            print(f"{cut} @ {mbps:g} Mbit/s: tdf {r['tdf']:.1f}, predicted {r['predicted_ms']:.1f} ms, "
                  f"measured {r.get('measured_ms', float('nan')):.1f} ms, valid {r['valid']}, {r['real_s']:.0f} s real",
                  flush=True)
    print()
    print(table(rows))
    ratios = [r["ratio"] for r in rows if r.get("valid")]
    if ratios:
        print(f"\nvalid runs: {len(ratios)}/{len(rows)}; measured / predicted median {statistics.median(ratios):.3f}, "
              f"range {min(ratios):.3f}..{max(ratios):.3f}; within ±5%: "
              f"{sum(abs(x - 1) <= GOAL for x in ratios)}/{len(ratios)}")
    load_after = os.getloadavg()
    print(f"load after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"host": platform.node(), "cpus": os.cpu_count(), "load_before": load,
                                   "load_after": load_after, "tdf_margin": margin, "auto_tdf": args.retime,
                                   "rows": rows}, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
