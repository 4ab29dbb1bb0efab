"""Where a sweep's wall clock goes: per job, set-up (graph, profile, decision, TDF), network (topology, link shaping,
probe), workers (start and model build, or reset), dilated inference, and recording (MLflow, the rest); the total
against the sum of TDF x emulated time of its inferences, which is what a job must cost.

The jobs (methods x bandwidths on one model and hardware) run one after another in this process, as Hydra's basic
launcher runs ``python run.py -m``: first with ``runtime.reuse=false`` (every job builds its own topology, workers
and model), then with reuse (``harness.controller.session``). Runs are recorded to a temporary MLflow store.

    PYTHONPATH=. .venv/bin/python benchmarks/sweep_overhead.py --model vgg16 --hardware xavier_1080ti \\
        --methods device_only server_only dads cic --bandwidths 1000 --inferences 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.network.userns import enter_if_needed

if __name__ == "__main__":
    enter_if_needed()  # without root: a user namespace of its own, while single-threaded (as run.py)

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from harness.config import register, resolve  # noqa: E402
from harness.controller import phases, session  # noqa: E402
from harness.controller.pipeline import run_job  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("setup", "network", "workers", "inference")


def experiment(overrides: list[str]) -> Any:
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return resolve(compose(config_name="config", overrides=overrides))


def sweep(args: argparse.Namespace, reuse: bool) -> list[dict[str, Any]]:
    """Run every job of the sweep; per job its phases, its status and the dilated time its inferences needed."""
    rows = []
    for method in args.methods:
        for mbps in args.bandwidths:
            exp = experiment([f"model={args.model}", f"hardware={args.hardware}", f"method={method}",
                              f"link.bandwidth_mbps={mbps}", f"scenario.inferences={args.inferences}",
                              f"runtime.reuse={str(reuse).lower()}", "experiment.name=sweep_overhead",
                              *args.override])
            metrics = run_job(exp, multirun=True)
            job = dict(phases.jobs[-1])
            job["recording"] = job["total"] - sum(job.get(p, 0.0) for p in PHASES)
            rows.append({"reuse": reuse, "job": len(rows) + 1, "method": method, "mbps": mbps, "ok": bool(metrics),
                         "tdf": metrics.get("tdf", float("nan")), **job})
    session.release_pool()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| reuse | job | method | Mbit/s | ok | TDF | workers started | set-up s | network s | workers s | "
            "inference s | recording s | total s | Σ TDF×emulated s | overhead s |")
    lines = [head, "|" + "---|" * 3 + "---:|" * 12]
    for r in rows:
        dilated = r.get("dilated_s", 0.0)
        lines.append(f"| {'yes' if r['reuse'] else 'no'} | {r['job']} | "
                     f"{r['method']} | {r['mbps']:g} | {'yes' if r['ok'] else 'FAILED'} | {r['tdf']:.1f} | "
                     f"{int(r.get('workers_started', 0))} | "
                     + " | ".join(f"{r.get(p, 0.0):.2f}" for p in (*PHASES, "recording", "total"))
                     + f" | {dilated:.2f} | {r['total'] - dilated:.2f} |")
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> str:
    """Per mode: the first job (it builds everything either way) and the mean over the others."""
    out = []
    for reuse in (False, True):
        mine = [r for r in rows if r["reuse"] == reuse]
        if not mine:
            continue
        overheads = [r["total"] - r.get("dilated_s", 0.0) for r in mine]
        later = overheads[1:] or overheads
        total, dilated = sum(r["total"] for r in mine), sum(r.get("dilated_s", 0.0) for r in mine)
        out.append(f"reuse={'on ' if reuse else 'off'}: {len(mine)} jobs in {total:.1f} s for {dilated:.1f} s of "
                   f"dilated inference ({total / dilated:.2f}x); overhead: first job {overheads[0]:.2f} s, "
                   f"later jobs mean {statistics.mean(later):.2f} s (max {max(later):.2f} s)")
    live = [r["total"] - r.get("dilated_s", 0.0) for r in rows if r["reuse"] and not r.get("workers_started")]
    if live:
        out.append(f"jobs that started no worker (every worker live): {len(live)}, overhead mean "
                   f"{statistics.mean(live):.2f} s (max {max(live):.2f} s)")
    before = statistics.mean([r["total"] - r.get("dilated_s", 0.0) for r in rows if not r["reuse"]][1:] or [0])
    after = statistics.mean([r["total"] - r.get("dilated_s", 0.0) for r in rows if r["reuse"]][1:] or [0])
    if after > 0 and before > 0:  # both modes ran
        out.append(f"per-job overhead after the first job: {before / after:.1f}x lower with reuse")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--hardware", default="xavier_1080ti")
    parser.add_argument("--methods", nargs="+", default=["device_only", "server_only", "dads", "cic"])
    parser.add_argument("--bandwidths", nargs="+", type=float, default=[1000.0])
    parser.add_argument("--inferences", type=int, default=2)
    parser.add_argument("--override", nargs="*", default=[], help="more config overrides for every job")
    parser.add_argument("--only", choices=("reuse", "fresh"), help="run one mode only")
    args = parser.parse_args()
    register()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        load_before, started = os.getloadavg()[0], time.perf_counter()
        rows = []
        if args.only != "reuse":
            rows += sweep(args, reuse=False)
        if args.only != "fresh":
            rows += sweep(args, reuse=True)
        wall = time.perf_counter() - started
    print(f"# {args.model} on {args.hardware}, {len(args.methods) * len(args.bandwidths)} jobs per mode, "
          f"scenario.inferences={args.inferences} (+1 warm-up), {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {wall:.0f} s in all; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(table(rows))
    print()
    print(summary(rows))


if __name__ == "__main__":
    main()
