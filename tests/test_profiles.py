"""Device profiles: the roofline's arithmetic, the calibrated boards against published times, measuring and tables."""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import fx

import hardware.profiles as profiles
from harness.model.graph import ModelGraph, build_graph
from harness.model.memory import collector_paused, keep_activations_resident
from harness.model.models import ModelSpec
from hardware.codec_costs import median_ms
from hardware.profiles import LocalProfile, RooflineProfile, TableProfile, write_table

CONF = Path(__file__).resolve().parent.parent / "conf"
# Every calibrated board in conf/profile/, so a new one is checked against its published figures without editing this.
BOARDS = sorted(p.stem for p in (CONF / "profile").glob("*.yaml")
                if OmegaConf.load(p).get("_target_") == "hardware.profiles.RooflineProfile")
USER_SPEC = ModelSpec("custom", "tests.user_models.build", (1, 3, 64, 64), 0, {"width": 8})


@functools.lru_cache(maxsize=None)
def model_graph(name: str) -> ModelGraph:
    return build_graph(ModelSpec.from_config(OmegaConf.load(CONF / "model" / f"{name}.yaml")))


@functools.lru_cache(maxsize=None)
def user_graph() -> ModelGraph:
    return build_graph(USER_SPEC)


def board(name: str) -> RooflineProfile:
    return instantiate(OmegaConf.load(CONF / "profile" / f"{name}.yaml"))


def plain_roofline(**changes: object) -> RooflineProfile:
    base = RooflineProfile(name="test", peak_gflops=1000.0, memory_gbps=100.0, kernel_overhead_us=0.0,
                           efficiency={"conv2d": 0.5}, default_efficiency=0.5, memory_efficiency=1.0)
    return dataclasses.replace(base, **changes)


def no_cost(graph: ModelGraph, name: str) -> bool:
    node = graph[name]
    return node.op in ("placeholder", "output", "get_attr") or node.is_view


# ---- roofline arithmetic -------------------------------------------------------------------------------------------

def test_roofline_is_positive_for_operators_and_zero_for_views() -> None:
    graph = user_graph()
    times = plain_roofline(kernel_overhead_us=5.0).node_ms(graph)
    assert set(times) == set(graph.nodes)
    assert times["flatten"] == times["x"] == times[graph.output_name] == 0.0
    for name in graph.order:
        assert (times[name] == 0.0) if no_cost(graph, name) else (times[name] > 0.0), name


def test_roofline_node_time_is_the_slower_of_arithmetic_and_memory() -> None:
    graph = user_graph()
    conv = graph["conv1"]  # 1.18 MFLOP on 32 KiB in / 32 KiB out / 2.3 KiB of weights: arithmetic-bound
    bytes_moved = conv.in_bytes + conv.out_bytes + conv.param_bytes
    times = plain_roofline().node_ms(graph)
    assert times["conv1"] == pytest.approx(max(conv.flops / (1000e9 * 0.5), bytes_moved / 100e9) * 1e3)
    assert times["conv1"] == pytest.approx(conv.flops / (1000e9 * 0.5) * 1e3)
    relu = graph["relu_1"]  # element-wise: memory-bound
    assert times["relu_1"] == pytest.approx((relu.in_bytes + relu.out_bytes) / 100e9 * 1e3)


def test_roofline_scales_with_peak_and_bandwidth() -> None:
    graph = user_graph()
    base = plain_roofline().node_ms(graph)
    fast_alu = plain_roofline(peak_gflops=2000.0).node_ms(graph)
    fast_memory = plain_roofline(memory_gbps=200.0).node_ms(graph)
    assert fast_alu["conv1"] == pytest.approx(base["conv1"] / 2)  # arithmetic-bound
    assert fast_alu["relu_1"] == pytest.approx(base["relu_1"])
    assert fast_memory["relu_1"] == pytest.approx(base["relu_1"] / 2)  # memory-bound
    assert fast_memory["conv1"] == pytest.approx(base["conv1"])
    halved = plain_roofline(efficiency={"conv2d": 0.25}).node_ms(graph)
    assert halved["conv1"] == pytest.approx(2 * base["conv1"])


def test_launch_overhead_adds_or_overlaps() -> None:
    graph = user_graph()
    kernel = plain_roofline().node_ms(graph)
    added = plain_roofline(kernel_overhead_us=100.0).node_ms(graph)
    overlapped = plain_roofline(kernel_overhead_us=100.0, async_launch=True).node_ms(graph)
    for name in graph.order:
        if no_cost(graph, name):
            assert added[name] == overlapped[name] == 0.0
        else:
            assert added[name] == pytest.approx(kernel[name] + 0.1)
            assert overlapped[name] == pytest.approx(max(kernel[name], 0.1))


def test_roofline_rejects_impossible_numbers() -> None:
    with pytest.raises(ValueError, match="peak_gflops"):
        plain_roofline(peak_gflops=0.0)
    with pytest.raises(ValueError, match="conv2d"):
        plain_roofline(efficiency={"conv2d": 1.5})


# ---- calibrated boards ---------------------------------------------------------------------------------------------

def published(board_name: str) -> list[tuple[str, str]]:
    cfg = OmegaConf.load(CONF / "profile" / f"{board_name}.yaml")
    return [(board_name, model) for model in cfg.published_ms]


@pytest.mark.parametrize("board_name", BOARDS)
def test_board_cites_its_spec_sheet_and_three_published_models(board_name: str) -> None:
    profile = board(board_name)
    assert {"peak_gflops", "memory_gbps"} <= set(profile.sources)
    assert {"vgg16", "resnet50", "mobilenet_v2"} <= set(profile.published_ms)
    for model, figure in profile.published_ms.items():
        assert 0 < figure["low"] <= figure["high"], model
        assert len(figure["source"]) > 40, model


@pytest.mark.parametrize("board_name, model", [p for b in BOARDS for p in published(b)])
def test_calibrated_whole_model_time_lies_in_the_published_range(board_name: str, model: str) -> None:
    profile = board(board_name)
    figure = profile.published_ms[model]
    total = sum(profile.node_ms(model_graph(model)).values())
    assert figure["low"] <= total <= figure["high"], (
        f"{board_name}: {model} predicted {total:.2f} ms, published {figure['low']}..{figure['high']} ms")


def test_every_board_is_discovered() -> None:
    assert {"gtx1080ti", "jetson_agx_xavier", "raspberry_pi_3b", "raspberry_pi_4", "cpu_server_8core"} <= set(BOARDS)


def test_xavier_is_slower_than_1080ti_on_every_model() -> None:
    gtx, xavier = board("gtx1080ti"), board("jetson_agx_xavier")
    for model in ("vgg16", "resnet50", "mobilenet_v2"):
        graph = model_graph(model)
        assert sum(xavier.node_ms(graph).values()) > 2 * sum(gtx.node_ms(graph).values()), model


def test_pi3b_is_slower_than_pi4_and_both_far_slower_than_the_cpu_server() -> None:
    pi3, pi4, server = board("raspberry_pi_3b"), board("raspberry_pi_4"), board("cpu_server_8core")
    for model in ("vgg16", "resnet50", "mobilenet_v2", "nin", "tiny_yolov2"):
        graph = model_graph(model)
        pi3_ms, pi4_ms = sum(pi3.node_ms(graph).values()), sum(pi4.node_ms(graph).values())
        assert pi3_ms > 1.5 * pi4_ms, model
        assert pi4_ms > 5 * sum(server.node_ms(graph).values()), model


# ---- measured here: LocalProfile -----------------------------------------------------------------------------------

def test_local_profile_measures_then_reads_its_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = user_graph()
    profile = LocalProfile(warmup=1, repeats=3, cache_dir=str(tmp_path))
    path = profile.cache_path(graph)
    assert path.parent.parent == tmp_path and not path.exists()
    measured = profile.node_ms(graph)
    assert path.exists()
    assert set(measured) == set(graph.nodes)
    assert measured["x"] == measured[graph.output_name] == 0.0
    assert all(measured[n] > 0 for n in graph.order if graph[n].kind in ("conv2d", "linear", "add"))

    def no_measuring(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second call must read the cache, not measure")

    monkeypatch.setattr(profiles, "measure_node_ms", no_measuring)
    cached = profile.node_ms(graph)
    assert cached == pytest.approx(measured, abs=1e-6)  # the table keeps 6 decimals


def test_local_profile_cache_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITBENCH_CACHE", str(tmp_path))
    graph = user_graph()
    profile = LocalProfile(warmup=0, repeats=1)
    profile.node_ms(graph)
    assert profile.cache_path(graph).is_relative_to(tmp_path) and profile.cache_path(graph).exists()
    assert LocalProfile(warmup=0, repeats=1, threads=2).cache_path(graph) != profile.cache_path(graph)




class _NodeByNode(fx.Interpreter):
    """Each node timed alone, between interpreter steps: the way whose sum does not add up."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.total_ms = 0.0

    def run_node(self, n: fx.Node) -> object:
        start = time.perf_counter_ns()
        result = super().run_node(n)
        if n.op not in ("placeholder", "output"):
            self.total_ms += (time.perf_counter_ns() - start) / 1e6
        return result


TOLERANCE = 0.08


def real_run_ms(graph: ModelGraph, runs: int = 501) -> float:
    """The model's median time run after run (for about as long as the profile measures it, ~1 s), as a worker runs
    it: the cycle collector paused (in a long test session a full collection lands inside a 2 ms model's loop) and
    activations kept resident."""
    keep_activations_resident()
    with collector_paused():
        return median_ms(lambda: graph.module(graph.example_input), runs)


@pytest.mark.exclusive  # real time within 8 %
def test_node_times_add_up_to_the_whole_model_as_it_really_runs(tmp_path: Path) -> None:
    """A chain of 121 small nodes: timed one at a time, their sum overshoots the model's real time by more than 15 %
    (the per-node work of timing them alone weighs as much as a node); measured in context and corrected, the
    profile's whole model is the real one within 8 %. Wall-clock figures of a 2 ms model on a shared virtual machine
    drift by up to ~10 % from one second to the next, so the bound is 8 % and three attempts are allowed: a correction
    that is missing or wrong fails all three (the 5 % figure on a quiet machine is the reality benchmark's)."""
    spec = ModelSpec("many_small", "tests.user_models.build_many_small", (1, 3, 32, 32), 0, {"depth": 60})
    graph = build_graph(spec)
    x = graph.example_input
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    attempts = []
    try:
        with torch.no_grad():
            for _ in range(5):
                graph.module(x)
            for attempt in range(3):
                alone = []
                for _ in range(15):
                    interpreter = _NodeByNode(graph.module)
                    interpreter.run(x)
                    alone.append(interpreter.total_ms)
                before_ms = real_run_ms(graph)
                profile = LocalProfile(warmup=3, repeats=15, cache_dir=str(tmp_path / str(attempt))).node_ms(graph)
                after_ms = real_run_ms(graph)
                real_ms = min((before_ms, after_ms), key=lambda t: abs(t - sum(profile.values())))  # drift
                attempts.append((statistics.median(alone), sum(profile.values()), real_ms))
                shows_error = statistics.median(alone) > 1.15 * real_ms
                if shows_error and sum(profile.values()) == pytest.approx(real_ms, rel=TOLERANCE):
                    break
    finally:
        torch.set_num_threads(previous)
    assert statistics.median(alone) > 1.15 * real_ms, ("the model no longer shows the error the profile corrects",
                                                       attempts)
    assert sum(profile.values()) == pytest.approx(real_ms, rel=TOLERANCE), attempts
    cache = str(tmp_path / str(len(attempts) - 1))  # the last attempt's profile
    meta = profiles.read_meta(LocalProfile(cache_dir=cache).cache_path(graph))
    assert meta["whole_ms"] == pytest.approx(sum(profile.values()), rel=1e-3)
    assert LocalProfile(cache_dir=cache).measured_whole_ms(graph) == meta["whole_ms"]


def test_a_profile_repeats_a_small_model_for_its_minimum_time(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = user_graph()
    runs: list[float] = []
    # The whole model's time as a 2 ms model's, whatever the machine's load: the number of repeats follows from it.
    monkeypatch.setattr(profiles, "_whole_run", lambda *a: runs.append(1) or 2.0)
    profiles.measure_node_times(graph, warmup=1, repeats=3, min_seconds=0.2)
    # 0.2 s at three runs of 2 ms a repeat (stamped, whole untimed, whole timed): 34 repeats, two whole runs each
    assert len(runs) == 2 * (1 + 34)
    runs.clear()
    profiles.measure_node_times(graph, warmup=1, repeats=3)
    assert len(runs) == 2 * (1 + 3)


# ---- measured elsewhere: TableProfile ------------------------------------------------------------------------------

def test_table_round_trip(tmp_path: Path) -> None:
    graph = user_graph()
    times = {n: 0.001 * (i + 1) for i, n in enumerate(graph.order)}
    path = write_table(tmp_path / "tables" / "custom.csv", graph, times, {"device": "test board"})
    assert path.read_text().startswith("# model: ")
    assert TableProfile(name="board", path=str(path)).node_ms(graph) == pytest.approx(times, abs=1e-9)


def test_table_with_an_unknown_node_names_it_and_the_model(tmp_path: Path) -> None:
    graph = user_graph()
    path = write_table(tmp_path / "custom.csv", graph, {n: 1.0 for n in graph.order}, {})
    path.write_text(path.read_text().replace("\nconv1,", "\nconv_renamed,"))
    with pytest.raises(ValueError, match="conv_renamed") as info:
        TableProfile(name="board", path=str(path)).node_ms(graph)
    assert "'custom'" in str(info.value)


def test_missing_table_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "custom.csv"
    with pytest.raises(FileNotFoundError, match=str(path)):
        TableProfile(name="board", path=str(path)).node_ms(user_graph())
