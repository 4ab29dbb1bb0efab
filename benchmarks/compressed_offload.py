"""The baselines the field asks for, on DADS's setting: a Raspberry Pi 3B offloading to an 8-core CPU server at
DADS's four uplinks (CAT1 0.13, 3G 1.1, LTE 5.85, Wi-Fi 18.88 Mbit/s).

Per model and uplink: edge-only, offload of the float32 input (what the papers compare against), offload of the
camera's JPEG (quality 90: the naive baseline split methods must beat), DADS sending float32, and DADS with each
codec (the input as JPEG and the features as float32, float16 or int8), the best of which is reported. Every job runs
as a user runs it (``run.py -m``), emulated on this machine; a job whose real time would pass ``--budget-minutes``
(0.13 Mbit/s offloads: tens of seconds per inference, times the TDF) is recorded predicted only, as ``run.py`` does,
and its cell says so. ``--predict`` records the cost model's figures only (seconds in all).

    PYTHONPATH=. .venv/bin/python benchmarks/compressed_offload.py              # measured where it fits (~30 min)
    PYTHONPATH=. .venv/bin/python benchmarks/compressed_offload.py --predict    # the cost model only
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow

from benchmarks.sweeps import run_sweep, store_of

ROOT = Path(__file__).resolve().parent.parent
LINKS = {"cat1": 0.13, "3g": 1.1, "lte": 5.85, "wifi": 18.88}
CONDITIONS = {  # column: (method, codec)
    "edge-only": ("device_only", "raw"),
    "offload, float32": ("server_only", "raw"),
    "offload, JPEG": ("server_only", "jpeg"),
    "DADS, float32": ("dads", "raw"),
    "DADS, JPEG + float32": ("dads", "jpeg"),
    "DADS, JPEG + fp16": ("dads", "fp16"),
    "DADS, JPEG + int8": ("dads", "int8"),
}
CODEC_COLUMNS = [c for c in CONDITIONS if c.startswith("DADS, JPEG")]


def sweep(method: str, codec: str, args: argparse.Namespace, folder: Path) -> None:
    """One ``run.py -m`` over the models and uplinks for one method and codec."""
    links = ["wifi"] if method == "device_only" else list(LINKS)  # nothing crosses: the link does not matter
    run_sweep([f"model={','.join(args.models)}", "hardware=rpi3b_cpu_server", f"method={method}", f"codec={codec}",
               f"link={','.join(links)}", f"scenario.inferences={args.inferences}", "experiment.name=compressed_offload",
               f"mode={'predict' if args.predict else 'run'}", f"runtime.max_real_minutes={args.budget_minutes}"],
              folder, f"{method} codec={codec}")


def cells(store: str) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """(model, link, method, codec) -> what the last run of that job recorded."""
    mlflow.set_tracking_uri(store)
    df = mlflow.search_runs(search_all_experiments=True, order_by=["attributes.start_time ASC"])
    out = {}
    for _, run in df.iterrows():
        measured = run.get("tags.valid") == "true" and run.get("tags.measured", "true") != "false"
        out[(run["tags.model"], run["params.link.name"], run["params.method.name"], run["params.codec.input"] +
             "+" + run["params.codec.features"])] = {
            "measured_ms": run.get("metrics.latency_p50_ms") if measured else None,
            "predicted_ms": run["metrics.predicted_latency_ms"], "status": run.get("tags.valid"),
            "skipped": run.get("tags.skipped"), "bytes": run.get("metrics.bytes_transferred"),
            "top1": run.get("metrics.top1_agreement")}
    return out


def codec_key(codec: str) -> str:
    return {"raw": "raw+raw", "jpeg": "jpeg+raw", "fp16": "jpeg+fp16", "int8": "jpeg+int8"}[codec]


def cell_text(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    if cell["measured_ms"] is not None:
        return f"{cell['measured_ms']:.0f} ({cell['predicted_ms']:.0f})"
    return f"{cell['predicted_ms']:.0f}*"


def table(found: dict[tuple[str, str, str, str], dict[str, Any]], models: list[str]) -> list[str]:
    lines = ["| model | uplink | Mbit/s | " + " | ".join(c for c in CONDITIONS if c not in CODEC_COLUMNS) +
             " | DADS, best codec |", "|---|---|---:|" + "---:|" * (len(CONDITIONS) - len(CODEC_COLUMNS) + 1)]
    for model in models:
        for link, mbps in LINKS.items():
            row = []
            for column, (method, codec) in CONDITIONS.items():
                if column in CODEC_COLUMNS:
                    continue
                row.append(cell_text(found.get((model, "wifi" if method == "device_only" else link, method,
                                                codec_key(codec)))))
            best = min(((c, found.get((model, link, "dads", codec_key(CONDITIONS[c][1])))) for c in CODEC_COLUMNS),
                       key=lambda pair: latency(pair[1]))
            row.append(f"{cell_text(best[1])} ({best[0].removeprefix('DADS, ')})")
            lines.append(f"| {model} | {link} | {mbps:g} | " + " | ".join(row) + " |")
    return lines


def latency(cell: dict[str, Any] | None) -> float:
    if cell is None:
        return float("inf")
    return cell["measured_ms"] if cell["measured_ms"] is not None else cell["predicted_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "vgg16"])
    parser.add_argument("--inferences", type=int, default=5)
    parser.add_argument("--budget-minutes", type=float, default=3.0, help="longer jobs are recorded predicted only")
    parser.add_argument("--predict", action="store_true", help="the cost model's figures only")
    args = parser.parse_args()
    began, load = time.time(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="compressed-offload-") as tmp:
        for method, codec in CONDITIONS.values():
            print(f"{method} codec={codec} ({time.time() - began:.0f} s)", file=sys.stderr)
            sweep(method, codec, args, Path(tmp))
        found = cells(store_of(Path(tmp)))
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, load average {load:.2f} at the start; "
          f"hardware=rpi3b_cpu_server, {'predicted only' if args.predict else f'{args.inferences} inferences per job'}"
          f"; {(time.time() - began) / 60:.1f} min. Cells: measured p50 ms (predicted ms); * predicted only")
    print("\n".join(table(found, args.models)))


if __name__ == "__main__":
    main()
