"""The cost model held against real execution: on ``hardware=local_pair`` both endpoints are this machine computing
for real at TDF 1 (nothing padded, nothing dilated), so a run's measured median latency can be set beside the
latency its own plan predicts from the local profile.

Each job runs as a user runs it: ``python run.py -m model=M hardware=local_pair method=device_only,server_only,dads
link.bandwidth_mbps=R1,R2`` (one sweep per model and repeat, workers kept alive across its jobs; device-only does not
depend on the rate, so it runs twice per sweep), into a store and profile cache of its own, so every repeat measures
its profiles afresh. A model's jobs measure at least ``--seconds`` of device-only inference (the count from the
model's device-only prediction, ``run.py mode=predict``, first): ten inferences of a 6 ms model are 60 ms, one
moment of a machine whose speed drifts. Per job: predicted ms, the measured median of each repeat, measured /
predicted (median over the repeats), the spread between repeats ((max - min) / median), and
``compute_over_profile`` (real compute over the profile's time for the same nodes, median over inferences and
repeats), which separates the profile's error from the rest (link, wire, process hops). Goal on a quiet machine:
median |measured / predicted - 1| <= 3 %, every job within 10 %.

Whether the machine was quiet is measured, not assumed: before each sweep and at the end, with no sweep running,
the benchmark times one fixed model (the custom one, one thread, as a worker runs it) for ``--probe-seconds``. The
spread of those medians over the run is how far the host's own speed moved while the jobs ran; where it moved more
than a job's tolerance (10 %), the verdict says the host was not quiet: a miss there is not the cost model's alone.

    PYTHONPATH=. .venv/bin/python benchmarks/reality.py                        # 8 models, 5 repeats (~35 min)
    PYTHONPATH=. .venv/bin/python benchmarks/reality.py --models resnet18 --repeats 1 --inferences 4 --seconds 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import torch
from omegaconf import OmegaConf

from benchmarks.sweeps import run_sweep, store_of
from harness.model.memory import keep_activations_resident
from harness.model.models import ModelSpec, build_model, make_input

ROOT = Path(__file__).resolve().parent.parent
# Chains, residual, dense, inception, depthwise (+ squeeze-excitation), and a user's own model (one residual block).
MODELS = {"alexnet": [], "vgg16": [], "resnet50": [], "densenet121": [], "googlenet": [], "mobilenet_v2": [],
          "efficientnet_b0": [],
          "custom": ["model._target_=tests.user_models.build", "model.input_shape=[1,3,224,224]", "+model.args.width=32"]}
METHODS = ("device_only", "server_only", "dads")
RATES_MBPS = (18.88, 100.0)
GOAL_MEDIAN, GOAL_EACH = 0.03, 0.10
MAX_INFERENCES = 300
PROBE_MODEL = "custom"


def spec_of(name: str) -> ModelSpec:
    """The model as this benchmark runs it: its config, with the overrides in ``MODELS`` (the custom model's factory,
    input and width)."""
    overrides = [o.lstrip("+").removeprefix("model.") for o in MODELS.get(name, [])]
    return ModelSpec.from_config(OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"),
                                                 OmegaConf.from_dotlist(overrides)))


def as_a_worker_runs_it(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model and its input as a worker holds them once its part is built: the harness's seeded model, its
    activations kept resident from then on."""
    spec = spec_of(name)
    model = build_model(spec)
    keep_activations_resident()
    return model, make_input(spec)


class HostProbe:
    """The host's own speed over the run: one fixed model timed now and then, between sweeps (never beside one)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.samples: list[dict[str, Any]] = []
        if seconds > 0:
            torch.set_num_threads(1)  # as a worker computes
            self.model, self.input = as_a_worker_runs_it(PROBE_MODEL)

    def sample(self, when: str) -> None:
        """Median time of the probe model over ``seconds`` of back-to-back runs, after two to warm it up."""
        if self.seconds <= 0:
            return
        times: list[float] = []
        with torch.no_grad():
            for _ in range(2):
                self.model(self.input)
            end = time.perf_counter() + self.seconds
            while time.perf_counter() < end or len(times) < 5:
                start = time.perf_counter_ns()
                self.model(self.input)
                times.append((time.perf_counter_ns() - start) / 1e6)
        self.samples.append({"when": when, "median_ms": statistics.median(times), "runs": len(times)})

    def summary(self) -> dict[str, float] | None:
        """The probes' median and their spread over the run, (max - min) / median; None without two probes."""
        medians = [s["median_ms"] for s in self.samples]
        if len(medians) < 2:
            return None
        middle = statistics.median(medians)
        deciles = statistics.quantiles(medians, n=10, method="inclusive")
        return {"median_ms": middle, "spread": (max(medians) - min(medians)) / middle,
                "min_ms": min(medians), "max_ms": max(medians), "p10_ms": deciles[0], "p90_ms": deciles[-1],
                "probes": len(medians)}


def inferences_for(models: list[str], args: argparse.Namespace, folder: Path) -> dict[str, int]:
    """Each model's measured inferences per job: at least ``--inferences``, and enough for ``--seconds`` at its
    device-only latency as the cost model predicts it (``run.py mode=predict``, no worker started)."""
    if args.seconds <= 0:
        return {model: args.inferences for model in models}
    counts = {}
    for model in models:
        where = folder / model
        run_sweep([f"model={model}", *MODELS[model], "hardware=local_pair", "method=device_only", "mode=predict",
                   "experiment.name=reality_counts"], where, model, SPLITBENCH_CACHE=str(folder / "cache"))
        mlflow.set_tracking_uri(store_of(where))
        predicted_ms = float(mlflow.search_runs(search_all_experiments=True)["metrics.predicted_latency_ms"].iloc[0])
        counts[model] = min(MAX_INFERENCES, max(args.inferences, math.ceil(args.seconds * 1e3 / predicted_ms)))
    return counts


def sweep(model: str, inferences: int, args: argparse.Namespace, folder: Path) -> None:
    """One ``run.py -m`` over the methods and rates of one model, recorded to the store in ``folder``."""
    run_sweep([f"model={model}", *MODELS[model], "hardware=local_pair", f"method={','.join(args.methods)}",
               f"link.bandwidth_mbps={','.join(str(r) for r in args.rates)}", f"scenario.inferences={inferences}",
               "scenario.warmup=2", "experiment.name=reality", "runtime.max_real_minutes=null"], folder, model,
              SPLITBENCH_CACHE=str(folder / "cache"))


def runs(store: str) -> list[dict[str, Any]]:
    """The valid measured runs of a store, as plain rows."""
    mlflow.set_tracking_uri(store)
    df = mlflow.search_runs(search_all_experiments=True, filter_string="tags.valid = 'true'")
    rows = []
    for _, run in df.iterrows():
        rows.append({"model": run["tags.model"], "method": run["params.method.name"],
                     "mbps": float(run["params.link.bandwidth_mbps"]),
                     "predicted_ms": run["metrics.predicted_latency_ms"], "measured_ms": run["metrics.latency_p50_ms"],
                     "ci": (run["metrics.latency_p50_ms_ci_low"], run["metrics.latency_p50_ms_ci_high"])
                     if "metrics.latency_p50_ms_ci_low" in run else None,
                     "compute": [run[c] for c in df.columns
                                 if c.startswith("metrics.compute_over_profile_") and run[c] == run[c]]})
    return rows


def job_key(row: dict[str, Any]) -> tuple[str, str, float | None]:
    return row["model"], row["method"], None if row["method"] == "device_only" else row["mbps"]


def table(rows: list[dict[str, Any]]) -> tuple[list[str], list[float]]:
    """One line per job (model, method, rate): markdown rows and each job's |measured / predicted - 1|."""
    jobs: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        jobs.setdefault(job_key(row), []).append(row)
    lines, errors = [], []
    for (model, method, mbps), same in sorted(jobs.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        measured = [r["measured_ms"] for r in same]
        predicted = statistics.median(r["predicted_ms"] for r in same)
        ratio = statistics.median(m / r["predicted_ms"] for m, r in zip(measured, same))
        spread = (max(measured) - min(measured)) / statistics.median(measured)
        compute = [c for r in same for c in r["compute"]]
        errors.append(abs(ratio - 1))
        lines.append(f"| {model} | {method} | {'-' if mbps is None else f'{mbps:g}'} | {predicted:.2f} | "
                     f"{' / '.join(f'{m:.2f}' for m in measured)} | {ratio:.3f} | {100 * spread:.1f} % | "
                     f"{statistics.median(compute):.3f} |" if compute else
                     f"| {model} | {method} | {'-' if mbps is None else f'{mbps:g}'} | {predicted:.2f} | "
                     f"{' / '.join(f'{m:.2f}' for m in measured)} | {ratio:.3f} | {100 * spread:.1f} % | - |")
    return lines, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--rates", nargs="+", type=float, default=list(RATES_MBPS))
    parser.add_argument("--repeats", type=int, default=5, help="sweeps per model (run-to-run spread)")
    parser.add_argument("--inferences", type=int, default=10, help="measured inferences per job, at least")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="and enough for this long at the model's device-only latency (0: --inferences only)")
    parser.add_argument("--probe-seconds", type=float, default=0.5,
                        help="time the host probe this long before each sweep and at the end (0: no probe)")
    parser.add_argument("--json", help="write the rows and the host's probes here")
    args = parser.parse_args()
    began = time.time()
    load = os.getloadavg()[0]
    all_rows: list[dict[str, Any]] = []
    probe = HostProbe(args.probe_seconds)
    with tempfile.TemporaryDirectory(prefix="reality-") as tmp:
        counts = inferences_for(args.models, args, Path(tmp, "counts"))
        for repeat in range(args.repeats):
            folder = Path(tmp, f"r{repeat}")
            folder.mkdir()
            for model in args.models:
                print(f"repeat {repeat + 1}/{args.repeats}: {model}, {counts[model]} inferences a job "
                      f"({time.time() - began:.0f} s)", file=sys.stderr)
                probe.sample(f"repeat {repeat + 1}, before {model}")
                sweep(model, counts[model], args, folder)
            all_rows += runs(store_of(folder))
        probe.sample("at the end")
    lines, errors = table(all_rows)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, load average {load:.2f} at the start; hardware=local_pair "
          f"(TDF 1); measured inferences per job: {', '.join(f'{m} {n}' for m, n in counts.items())}; "
          f"{args.repeats} repeat(s); "
          f"{(time.time() - began) / 60:.1f} min")
    print("| model | method | Mbit/s | predicted ms | measured p50 ms (per repeat) | measured / predicted | "
          "spread between repeats | compute / profile |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines))
    median_error, worst = statistics.median(errors), max(errors)
    verdict = "met" if median_error <= GOAL_MEDIAN and worst <= GOAL_EACH else "NOT met"
    print(f"\nmedian |measured / predicted - 1| = {100 * median_error:.1f} % (goal <= {100 * GOAL_MEDIAN:g} %), "
          f"worst {100 * worst:.1f} % (goal <= {100 * GOAL_EACH:g} %), {sum(e <= GOAL_EACH for e in errors)} of "
          f"{len(errors)} jobs within {100 * GOAL_EACH:g} %: goal {verdict}")
    host = probe.summary()
    if host is not None:
        print(host_line(host))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": all_rows, "host_probes": probe.samples, "host": host},
                                              indent=1, default=str))


def host_line(host: dict[str, float]) -> str:
    """What the probes say of the host: how far its own speed moved over the run, and whether that was quiet."""
    quiet = host["spread"] <= GOAL_EACH
    return (f"host: the {PROBE_MODEL} model timed {host['probes']:.0f} times between sweeps (one thread, no sweep "
            f"running): median {host['median_ms']:.2f} ms, 10-90 % of the probes {host['p10_ms']:.2f}-"
            f"{host['p90_ms']:.2f} ms, all {host['min_ms']:.2f}-{host['max_ms']:.2f} ms, a spread of "
            f"{100 * host['spread']:.1f} % over the run: "
            + ("quiet (within a job's tolerance)" if quiet else
               f"NOT quiet (more than a job's tolerance of {100 * GOAL_EACH:g} %): the host's own speed moved as much "
               f"as the goal allows a job to miss, so a miss here is not the cost model's alone"))


if __name__ == "__main__":
    main()
