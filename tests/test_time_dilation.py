"""A board slower than this machine (Raspberry Pi 3B): no time dilation (TDF 1), padding alone stretches compute."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hardware.profiles import LocalProfile
from harness.loadgen.dilation import calibrate_tdf
from harness.model.graph import build_graph
from harness.model.models import ModelSpec
from tests.conftest import last_attempts, needs_root, run_cli

CONF = Path(__file__).resolve().parent.parent / "conf"
# AlexNet (a DADS model) at 64x64: the emulated Pi 3B streams its 244 MB of FC weights from LPDDR2 and needs ~4x what
# one core here does, so the TDF stays 1 with room for a loaded machine, and the padding absorbs scheduling hiccups.
# (ResNet-18 at 64x64 needs only ~1.3x one core of a loaded 2-core machine, under the default TDF margin of 1.5.)
SMALL = ["model=alexnet", "model.input_shape=[1,3,64,64]", "hardware=rpi3b_cpu_server", "scenario.inferences=2"]


def test_calibrated_tdf_for_a_pi3b_is_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITBENCH_CACHE", str(tmp_path))
    spec = ModelSpec.from_config(OmegaConf.load(CONF / "model" / "alexnet.yaml"))
    spec.input_shape = (1, 3, 64, 64)
    graph = build_graph(spec)
    pi3b = instantiate(OmegaConf.load(CONF / "profile" / "raspberry_pi_3b.yaml"))
    nodes = [n for n in graph.order if graph[n].op != "output"]
    local = LocalProfile(warmup=1, repeats=3).node_ms(graph)  # one thread, as a worker runs by default
    emulated = pi3b.node_ms(graph)
    assert sum(local[n] for n in nodes) * 1.5 < sum(emulated[n] for n in nodes)  # this machine is the faster one
    ratio = sum(local[n] for n in nodes) / sum(emulated[n] for n in nodes)
    assert calibrate_tdf({"device": ratio}, margin=1.5, concurrent=1) == (1.0, "device")


@needs_root
def test_a_pi3b_run_is_padded_not_dilated(tracking_uri: str, tmp_path: Path) -> None:
    proc = run_cli(["-m", *SMALL, "method=device_only,server_only"], tracking_uri, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlflow.set_tracking_uri(tracking_uri)
    df = last_attempts(mlflow.search_runs(experiment_names=["own_runs"], output_format="pandas"))
    df = df.set_index("params.method.name")
    assert (df["tags.valid"] == "true").all(), df.get("tags.invalid_reason")
    device = df.loc["device_only"]
    assert device["metrics.tdf"] == 1.0
    assert device["metrics.tdf_from_profile"] == 1.0  # the profile alone says: a slower board, nothing to dilate
    # Padding alone brought this machine's compute up to the Pi 3B's emulated time.
    assert device["metrics.latency_ms"] >= 0.95 * device["metrics.predicted_latency_ms"]
    # The server side is DADS's 8-core server, faster than one core here: that part of the pair is dilated.
    assert df.loc["server_only", "metrics.tdf"] > 1.0
