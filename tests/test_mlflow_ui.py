"""The MLflow UI shows our runs: `mlflow server` on loopback, read by headless Chromium (Debian's package).

The runs are written with MLflow's API, with the names ARCHITECTURE.md fixes (run names, params, metrics, tags). The
screenshot of the runs page is kept under the test's tmp dir and copied to benchmarks/results/mlflow_ui.png when
that folder exists.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from tests.boards import free_port
from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                                 "(`apt-get install -y chromium`; .ci/run installs it)")]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=20000"]
RUNS = {  # run name -> (method, latency_ms)
    "cic-vgg16-xavier_1080ti-18.88mbps": ("cic", 51.27),
    "dads-vgg16-xavier_1080ti-18.88mbps": ("dads", 48.93),
}


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, str, dict[str, str]]:
    """A SQLite store with one experiment and two finished runs like run.py's: (uri, experiment id, name -> id)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("cic_paper", artifact_location=str(tmp_path / "artifacts"))
    ids = {}
    for name, (method, latency) in RUNS.items():
        run = client.create_run(experiment, run_name=name, tags={"valid": "true", "invalid_reason": "",
                                                                  "method": method, "link_backend": "tbf"})
        for key, value in {"method.name": method, "model.name": "vgg16", "link.bandwidth_mbps": 18.88}.items():
            client.log_param(run.info.run_id, key, value)
        for key, value in {"latency_ms": latency, "decision_time_ms": 0.1, "throughput_ips": 1000 / latency}.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
        ids[name] = run.info.run_id
    return uri, experiment, ids


@pytest.fixture
def ui(store: tuple[str, str, dict[str, str]], tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on a free loopback port, up and healthy; its whole process group is ended afterwards."""
    port = free_port()
    log = (tmp_path / "mlflow_server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store[0],
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not come up: {(tmp_path / 'mlflow_server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker, which we started
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def chromium(args: list[str], profile: Path) -> str:
    proc = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_ui_lists_the_runs_and_shows_their_metrics(store: tuple[str, str, dict[str, str]], ui: str,
                                                    tmp_path: Path) -> None:
    _, experiment, ids = store
    page = f"{ui}/#/experiments/{experiment}/runs"
    dom = chromium(["--dump-dom", page], tmp_path / "profile")
    for name in RUNS:
        assert name in dom, f"run {name} not listed on {page}"
    assert re.search(r"\b2\s+matching runs", " ".join(re.sub(r"<[^>]+>", " ", dom).split()))

    name = "dads-vgg16-xavier_1080ti-18.88mbps"
    run_page = chromium(["--dump-dom", f"{ui}/#/experiments/{experiment}/runs/{ids[name]}"], tmp_path / "profile")
    assert "latency_ms" in run_page and f"{RUNS[name][1]:g}" in run_page and "method.name" in run_page

    shot = tmp_path / "mlflow_ui.png"
    chromium(["--window-size=1600,900", f"--screenshot={shot}", page], tmp_path / "profile")
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    results = ROOT / "benchmarks" / "results"
    if results.is_dir():
        shutil.copy(shot, results / "mlflow_ui.png")
