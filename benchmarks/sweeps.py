"""How the benchmarks run their jobs: as a user does, ``run.py -m`` into a store of their own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def store_of(folder: Path) -> str:
    """The MLflow store a benchmark's sweeps record to: a SQLite file in its own folder."""
    return f"sqlite:///{folder / 'mlflow.db'}"


def run_sweep(overrides: list[str], folder: Path, what: str, **env: str) -> float:
    """``run.py -m <overrides>`` recorded to the store in ``folder`` (its Hydra output there too); the real seconds
    it took. A failing ``run.py`` ends the benchmark with its last lines."""
    argv = [sys.executable, str(ROOT / "run.py"), "-m", *overrides, f"hydra.sweep.dir={folder / 'hydra'}"]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "MLFLOW_TRACKING_URI": store_of(folder), "PYTHONPATH": str(ROOT), **env})
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"run.py failed for {what}: exit status {proc.returncode}")
    return time.monotonic() - started
