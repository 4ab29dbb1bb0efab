"""``runtime.compute_device``: the CPU path for real everywhere; the CUDA path where a GPU exists (skipped on
CPU-only machines such as CI, which say so)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest
import torch

from hardware.profiles import LocalProfile, measure_node_ms
from harness.controller.runtime import run_workers
from harness.loadgen.dilation import Dilation
from harness.model.graph import build_graph
from harness.model.models import ModelSpec, build_model, make_input
from harness.worker.serve import compute_device, device_name
from harness.worker.stage import to_device, to_host
from tests.conftest import run_cli
from tests.test_runtime import cut_case, hand_runtime

pytestmark = pytest.mark.e2e  # runs workers and profiles

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device on this machine: the GPU path runs where a GPU exists")
SPEC = ModelSpec(name="resnet18", target="torchvision.models.resnet18", input_shape=(1, 3, 64, 64))


def test_auto_is_the_cpu_without_cuda_and_cuda_without_a_gpu_is_refused() -> None:
    assert compute_device("cpu") == torch.device("cpu")
    assert compute_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'tpu' is not one of"):
        compute_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            compute_device("cuda")


def test_cpu_profile_times_every_node(tmp_path: Path) -> None:
    graph = build_graph(SPEC)
    times = LocalProfile(cache=False, repeats=2, warmup=1, device="cpu").node_ms(graph)
    convs = [n for n in graph.order if graph[n].kind == "conv2d"]
    assert convs and all(times[n] > 0 for n in convs)


def test_profile_mode_records_the_device_in_the_table(tracking_uri: str, tmp_path: Path) -> None:
    out = tmp_path / "table.csv"
    proc = run_cli(["mode=profile", "model=resnet18", "model.input_shape=[1,3,32,32]", "hardware=local",
                    "runtime.compute_device=cpu", f"profile_out={out}"], tracking_uri, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads(out.read_text().splitlines()[1].removeprefix("# meta: "))
    assert meta["device"].startswith("cpu")
    rows = list(csv.DictReader(line for line in out.read_text().splitlines() if not line.startswith("#")))
    assert sum(float(r["ms"]) for r in rows) > 0


def test_a_cpu_run_says_where_it_computed() -> None:
    case = cut_case(["scenario.warmup=0", "scenario.inferences=1"])
    device, server = case.hardware.cut_roles
    result = run_workers(case.deployment(), case.exp.scenario, hand_runtime(max_payload_mb=64, compute_device="cpu"),
                         Dilation(1.0), progress=False)
    assert set(result.devices) == {device, server}
    assert all(name.startswith("cpu") for name in result.devices.values())
    assert len(result.outputs) == 1


@needs_cuda
def test_cuda_moves_in_computes_and_comes_back_pinned() -> None:
    device = compute_device("cuda")
    model = build_model(SPEC).to(device)
    x = make_input(SPEC, 0)
    with torch.no_grad():
        out = to_host({"y": model(to_device({"x": x}, device)["x"])}, device)["y"]
    assert out.device.type == "cpu" and out.is_pinned()
    with torch.no_grad():
        expected = build_model(SPEC)(x)
    assert torch.allclose(out, expected, atol=1e-3)
    assert "cpu" not in device_name(device)


@needs_cuda
def test_cuda_profile_times_nodes_with_cuda_events() -> None:
    graph = build_graph(SPEC)
    cuda = measure_node_ms(graph, warmup=2, repeats=3, device="cuda")
    convs = [n for n in graph.order if graph[n].kind == "conv2d"]
    assert all(cuda[n] > 0 for n in convs)


@needs_cuda
def test_a_cuda_run_computes_on_the_gpu() -> None:
    case = cut_case(["scenario.warmup=1", "scenario.inferences=2"])
    result = run_workers(case.deployment(), case.exp.scenario, hand_runtime(max_payload_mb=64, compute_device="cuda"),
                         Dilation(1.0), progress=False)
    assert all("cpu" not in name for name in result.devices.values()), result.devices
    graph = case.graph
    with torch.no_grad():
        expected = graph.module(make_input(graph.spec, 1))
    assert torch.allclose(result.outputs[1], expected, atol=1e-3)



@needs_cuda
def test_a_spatial_run_computes_its_bands_on_the_gpu(tracking_uri: str, tmp_path: Path) -> None:
    proc = run_cli(["-m", "model=vgg16", "model.input_shape=[1,3,64,64]", "scenario.inferences=2",
                    "hardware=4x_local", "hardware.num_servers=3", "method=halp,modnn",
                    "runtime.compute_device=cuda"], tracking_uri, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlflow.set_tracking_uri(tracking_uri)
    df = mlflow.search_runs(experiment_names=["own_runs"], output_format="pandas")
    assert len(df) == 2 and (df["tags.valid"] == "true").all(), df["tags.invalid_reason"].tolist()
    assert (df["metrics.max_abs_error"] <= 1e-3).all(), df["metrics.max_abs_error"].tolist()
    devices = df[[c for c in df.columns if c.startswith("tags.compute_device_")]]
    assert devices.notna().all().all() and not devices.apply(lambda c: c.str.startswith("cpu")).any().any()
