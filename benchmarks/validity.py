"""How often an emulated run is valid on this machine, and what its safety costs in TDF.

A matrix of models (chain, residual, inception, dense, mobile) x scenarios (single_stream, stream, dynamic) x
hardware presets, each job run as ``run.py`` runs it (one ``run.py -m`` sweep per hardware and scenario, recorded to
a private MLflow store). Per job: valid or not (with the reason), the TDF used against the TDF the profile alone
gives (``tdf_from_profile``: a run takes about TDF x its emulated time, so that ratio is the cost of safety), how
many measured inferences were repeated at a raised TDF, and for the valid ones the measured over the predicted
latency. ``--hog`` runs a CPU hog pinned to one core beside the whole matrix. ``--repo`` runs another checkout's
``run.py`` (e.g. the commit before a change) with the same matrix, for before/after figures.

The default matrix is small and fast (inputs 112x112, few inferences, a short dynamic trace walk: ~15 jobs, a few
minutes on 2 cores); ``--full`` runs the models at their own input size with the scenarios' defaults.

    PYTHONPATH=. .venv/bin/python benchmarks/validity.py
    PYTHONPATH=. .venv/bin/python benchmarks/validity.py --hog
    PYTHONPATH=. .venv/bin/python benchmarks/validity.py --models resnet18 mobilenet_v2 --scenarios single_stream
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# One model of each family: a chain, residual blocks, inception branches, dense blocks, inverted residuals.
MODELS = ["vgg16", "resnet50", "googlenet", "densenet121", "mobilenet_v2"]
SCENARIOS = ["single_stream", "stream", "dynamic"]
HARDWARE = ["xavier_1080ti"]
# The fast matrix: overrides per scenario (the full matrix keeps the scenarios' defaults).
FAST = {"single_stream": ["scenario.inferences=5"],
        "stream": ["scenario.inferences=6", "scenario.in_flight=2"],
        "dynamic": ["scenario.inferences=6", "scenario.interval_ms=100"]}
FAST_INPUT = "model.input_shape=[1,3,112,112]"


def sweep(repo: Path, hardware: str, scenario: str, models: list[str], method: str, full: bool, store: str,
          out_dir: Path, timeout_s: float) -> float:
    """One ``run.py -m`` over the models; returns its wall time in seconds."""
    args = [f"model={','.join(models)}", f"hardware={hardware}", f"method={method}", f"scenario={scenario}",
            "experiment.name=validity", f"hydra.sweep.dir={out_dir}/multirun", f"hydra.run.dir={out_dir}/run"]
    if scenario == "dynamic":
        args.append("link=trace_stepped")
    if not full:
        args += [FAST_INPUT, *FAST[scenario]]
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(repo)}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(repo / "run.py"), "-m", *args], cwd=out_dir, env=env,
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        print(f"run.py exited {proc.returncode} for {hardware} {scenario}:\n{proc.stderr[-2000:]}", file=sys.stderr)
    return time.monotonic() - started


def rows_from(store: str) -> list[dict[str, Any]]:
    import mlflow

    mlflow.set_tracking_uri(store)
    rows = []
    for run in mlflow.search_runs(experiment_names=["validity"], output_format="list"):
        p, m, t = run.data.params, run.data.metrics, run.data.tags
        tdf = m.get("tdf", math.nan)
        rows.append({"model": p.get("model.name"), "scenario": p.get("scenario.name"),
                     "hardware": t.get("hardware", p.get("hardware.name")), "method": p.get("method.name"),
                     "status": run.info.status, "valid": t.get("valid") == "true",
                     "invalid_reason": t.get("invalid_reason", ""), "tdf": tdf,
                     "tdf_from_profile": m.get("tdf_from_profile", tdf), "tdf_set_by": t.get("tdf_set_by", ""),
                     "repeated": m.get("repeated_inferences", 0.0), "latency_ms": m.get("latency_ms", math.nan),
                     "predicted_ms": m.get("predicted_latency_ms", math.nan),
                     "seconds": ((run.info.end_time or 0) - run.info.start_time) / 1e3,
                     # a whole-run retry is a run of its own: the attempt it replaced does not count as a job
                     "attempt": int(t.get("attempt", "1")), "retried": bool(t.get("retried_as"))})
    return sorted(rows, key=lambda r: (r["hardware"] or "", r["scenario"] or "", r["model"] or "", r["attempt"]))


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| hardware | scenario | model | valid | TDF | profile-only TDF | TDF / profile | set by | repeats | "
             "measured / predicted | s |", "|---|---|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        ok = "yes" if r["valid"] else f"NO: {r['invalid_reason'][:90]}"
        ok += f" (attempt {r['attempt']}, retried)" if r["retried"] else f" (attempt {r['attempt']})" \
            if r["attempt"] > 1 else ""
        ratio = r["latency_ms"] / r["predicted_ms"] if r["valid"] else math.nan
        lines.append(f"| {r['hardware']} | {r['scenario']} | {r['model']} | {ok} | {r['tdf']:.1f} | "
                     f"{r['tdf_from_profile']:.1f} | {r['tdf'] / r['tdf_from_profile']:.2f} | {r['tdf_set_by']} | "
                     f"{r['repeated']:.0f} | {ratio:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per job (its last attempt: a whole-run retry replaces the attempt before it)."""
    jobs = [r for r in rows if not r["retried"]]
    valid = [r for r in jobs if r["valid"]]
    cost = [r["tdf"] / r["tdf_from_profile"] for r in jobs if r["tdf_from_profile"] > 0]
    fidelity = [r["latency_ms"] / r["predicted_ms"] for r in valid if r["predicted_ms"] > 0]
    return {"jobs": len(jobs), "valid": len(valid), "valid_rate": len(valid) / len(jobs) if jobs else math.nan,
            "retried_runs": len(rows) - len(jobs),
            "median_tdf_over_profile": statistics.median(cost) if cost else math.nan,
            "median_measured_over_predicted": statistics.median(fidelity) if fidelity else math.nan,
            "repeated_inferences": sum(r["repeated"] for r in jobs)}


def start_hog() -> subprocess.Popen:
    """A busy loop pinned to the last core: the noisy neighbour a shared machine has."""
    core = max(os.sched_getaffinity(0))
    return subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=SCENARIOS)
    parser.add_argument("--hardware", nargs="+", default=HARDWARE, help="cut hardware presets (method cic)")
    parser.add_argument("--method", default="cic", help="a cut method that can re-decide (scenario=dynamic)")
    parser.add_argument("--full", action="store_true", help="models' own input sizes, scenarios' default lengths")
    parser.add_argument("--hog", action="store_true", help="a CPU hog on one core beside every job")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose run.py runs the jobs")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per sweep")
    parser.add_argument("--json", metavar="PATH", help="also write the rows and the summary as JSON")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"host {platform.node()}, {len(os.sched_getaffinity(0))} cores, load {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}, hog {args.hog}, repo {args.repo}, {'full' if args.full else 'fast'} matrix", flush=True)
    hog = start_hog() if args.hog else None
    try:
        with tempfile.TemporaryDirectory(prefix="validity-") as tmp:
            store = f"sqlite:///{tmp}/mlflow.db"
            for hardware in args.hardware:
                for scenario in args.scenarios:
                    seconds = sweep(args.repo.resolve(), hardware, scenario, args.models, args.method, args.full,
                                    store, Path(tmp), args.timeout)
                    print(f"{hardware} {scenario}: {len(args.models)} jobs in {seconds:.0f} s", flush=True)
            rows = rows_from(store)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    print()
    print(table(rows))
    result = summary(rows)
    print(f"\nvalid {result['valid']}/{result['jobs']} ({100 * result['valid_rate']:.0f} %); median TDF / profile-only "
          f"TDF {result['median_tdf_over_profile']:.2f}; median measured / predicted (valid) "
          f"{result['median_measured_over_predicted']:.3f}; repeated inferences {result['repeated_inferences']:.0f}; "
          f"whole-run retries {result['retried_runs']}")
    load = os.getloadavg()
    print(f"load after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"hog": args.hog, "full": args.full, "summary": result, "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()
