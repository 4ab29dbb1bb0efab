"""How closely a dilated split-inference run reproduces the latency the cost model predicts for the emulated boards.

VGG-16 (224x224) on ``xavier_1080ti`` (Jetson AGX Xavier device, GTX 1080 Ti server), cut after pool3, pool4 and
pool5 (one tensor of 784, 392 and 98 KiB crosses), at DADS's 3G, LTE and Wi-Fi uplink rates (1.1, 5.85, 18.88
Mbit/s). Each combination is one job run as a user runs it: ``run.py -m method=fixed_cut method.after=<node>`` (the
cut chosen in advance, through the same engine as every method): two worker processes in network namespaces, the
kernel shaping the veth at bandwidth / TDF, compute padded to the roofline time x TDF, the TDF calibrated by the
workers after the warm-up and raised where an inference overran (``runtime.retries=0``: an INVALID run is reported,
not retried). The ratio is measured latency (issue to result, divided by TDF, mean over the measured inferences)
over the plan's predicted latency (device + transfer + server); the goal is within +-5 %. ``link`` compares the
link's measured goodput during the plan's transfers with its rate. A run is INVALID by ``run.py``'s rule: when the
real compute's overruns of its dilated budgets delay a measured inference by more than
``runtime.overrun_tolerance_pct`` of its latency.

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
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import torch

from benchmarks.sweeps import run_sweep, store_of

ROOT = Path(__file__).resolve().parent.parent
CUTS = {"pool3": "features_16", "pool4": "features_23", "pool5": "features_30"}  # torchvision's vgg16.features
TENSOR_BYTES = {"pool3": 256 * 28 * 28 * 4, "pool4": 512 * 14 * 14 * 4, "pool5": 512 * 7 * 7 * 4}
RATES_MBPS = (1.1, 5.85, 18.88)
GOAL = 0.05


def sweep(args: argparse.Namespace, folder: Path) -> float:
    """One ``run.py -m`` over the cuts and rates, into the store in ``folder``; returns its real seconds."""
    return run_sweep(["model=vgg16", "hardware=xavier_1080ti", "method=fixed_cut",
                      f"method.after={','.join(CUTS[c] for c in args.cuts)}",
                      f"link.bandwidth_mbps={','.join(f'{r:g}' for r in args.rates)}",
                      f"scenario.inferences={args.inferences}", "scenario.warmup=1", "runtime.retries=0",
                      "runtime.max_real_minutes=null", "experiment.name=emulation_fidelity",
                      *([f"runtime.tdf_margin={args.tdf_margin}"] if args.tdf_margin else [])], folder, "the grid")


def rows_of(folder: Path) -> list[dict[str, Any]]:
    """One row per job, from what ``run.py`` recorded."""
    mlflow.set_tracking_uri(store_of(folder))
    df = mlflow.search_runs(experiment_names=["emulation_fidelity"], order_by=["attributes.start_time ASC"])
    cut_of = {node: cut for cut, node in CUTS.items()}
    rows = []
    for _, run in df.iterrows():
        mbps = float(run["params.link.bandwidth_mbps"])
        cut = cut_of[run["params.method.after"]]
        valid = run.get("tags.valid") == "true"
        row = {"cut": cut, "node": CUTS[cut], "tensor_bytes": TENSOR_BYTES[cut], "bandwidth_mbps": mbps,
               "tdf": run.get("metrics.tdf"), "predicted_ms": run["metrics.predicted_latency_ms"],
               "backend": run.get("tags.link_backend"), "valid": valid,
               "invalid_reason": "" if valid else str(run.get("tags.invalid_reason") or run["status"]),
               "repeats": run.get("metrics.repeated_inferences"),
               "max_overrun_pct": run.get("metrics.max_overrun_pct"),
               "overrun_cost_pct": run.get("metrics.overrun_cost_pct"),
               "max_abs_error": run.get("metrics.max_abs_error"),
               "real_s": (run["end_time"] - run["start_time"]).total_seconds()}
        if valid:
            row.update({"measured_ms": run["metrics.latency_ms"],
                        "ratio": run["metrics.latency_ms"] / run["metrics.predicted_latency_ms"],
                        "link_ratio": run["metrics.measured_bandwidth_mbps"] / mbps})
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [("| cut | tensor | Mbit/s | TDF | backend | predicted ms | measured ms | measured / predicted | "
              "link goodput / rate | valid | real s |"),
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        tdf = f"{r['tdf']:.1f}" if r["tdf"] == r["tdf"] and r["tdf"] is not None else "-"
        if not r["valid"]:
            lines.append(f"| {r['cut']} | {r['tensor_bytes'] / 1024:.0f} KiB | {r['bandwidth_mbps']:g} | {tdf} | "
                         f"{r['backend']} | {r['predicted_ms']:.1f} | - | - | - | INVALID: {r['invalid_reason']} | "
                         f"{r['real_s']:.0f} |")
            continue
        goal = "" if abs(r["ratio"] - 1) <= GOAL else " (outside ±5%)"
        lines.append(f"| {r['cut']} | {r['tensor_bytes'] / 1024:.0f} KiB | {r['bandwidth_mbps']:g} | {tdf} | "
                     f"{r['backend']} | {r['predicted_ms']:.1f} | {r['measured_ms']:.1f} | {r['ratio']:.3f}{goal} | "
                     f"{r['link_ratio']:.3f} | yes | {r['real_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuts", nargs="+", choices=list(CUTS), default=list(CUTS))
    parser.add_argument("--rates", nargs="+", type=float, default=list(RATES_MBPS), metavar="MBPS")
    parser.add_argument("--inferences", type=int, default=2, help="measured inferences per run (after 1 warm-up)")
    parser.add_argument("--tdf-margin", type=float, default=None,
                        help="headroom over the slowest part's local/emulated ratio (default: runtime.tdf_margin)")
    parser.add_argument("--json", nargs="?", const=str(ROOT / "benchmarks" / "results" / "emulation_fidelity.json"),
                        metavar="PATH", help="also write the rows as JSON (default benchmarks/results/"
                                             "emulation_fidelity.json)")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"host {platform.node()}, {os.cpu_count()} cpus, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"torch {torch.__version__}, tdf margin {args.tdf_margin or 'runtime.tdf_margin'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        seconds = sweep(args, Path(tmp))
        rows = rows_of(Path(tmp))
    print(table(rows))
    ratios = [r["ratio"] for r in rows if r["valid"]]
    if ratios:
        print(f"\nvalid runs: {len(ratios)}/{len(rows)}; measured / predicted median {statistics.median(ratios):.3f}, "
              f"range {min(ratios):.3f}..{max(ratios):.3f}; within ±5%: "
              f"{sum(abs(x - 1) <= GOAL for x in ratios)}/{len(ratios)}; {seconds / 60:.1f} min")
    load_after = os.getloadavg()
    print(f"load after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"host": platform.node(), "cpus": os.cpu_count(), "load_before": load,
                                   "load_after": load_after, "tdf_margin": args.tdf_margin, "rows": rows},
                                  indent=1, default=str))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
