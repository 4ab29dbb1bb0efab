"""MoDNN and HALP plans: consistent JSON, the papers' fusion figures, HALP ahead of MoDNN, and every plan executed
segment by segment equals the whole model."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hardware.topology import Hardware
from harness.model.graph import ModelGraph, build_graph
from harness.model.models import ModelSpec, make_input
from harness.model.rows import rows_through
from harness.worker.segments import run_spatial_plan_locally
from partitioners.base import LinkState
from partitioners.halp import HALP
from partitioners.modnn import MoDNN
from partitioners.spatial import (SpatialProblem, batch_done_ms, block_of, block_timing, extra_rows,
                                  kernel_overheads_ms, secondary_links, single_task_ms, spatial_problem)

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-5
FREE = LinkState(1e6)  # a link so fast that HALP hands every secondary some rows


def _graph(name: str) -> ModelGraph:
    return build_graph(ModelSpec(name, f"torchvision.models.{name}", (1, 3, 224, 224), 0, {"weights": None}))


@pytest.fixture(scope="module")
def graphs() -> dict[str, ModelGraph]:
    return {name: _graph(name) for name in ("vgg16", "alexnet")}


def _profile(board: str):
    return instantiate(OmegaConf.load(ROOT / "conf" / "profile" / f"{board}.yaml"))


def star_problem(graph: ModelGraph, board: str, servers: int) -> SpatialProblem:
    hardware = Hardware.star(board, _profile(board), servers)
    return spatial_problem(graph, hardware.node_ms(graph), kernel_overheads_ms(hardware.endpoints))


def _plan(method, problem: SpatialProblem, link) -> dict:
    return method.decide(method.prepare(problem), link).to_json()


# ---------------------------------------------------------------------------------------------- executable plans

@pytest.mark.parametrize("model", ["vgg16", "alexnet"])
@pytest.mark.parametrize("servers", [2, 3, 4])
@pytest.mark.parametrize("method", [HALP, MoDNN])
def test_plan_executed_segment_by_segment_equals_the_model(graphs, model, servers, method):
    graph = graphs[model]
    plan = _plan(method(), star_problem(graph, "jetson_agx_xavier", servers), FREE)
    used = {s["endpoint"] for block in plan["blocks"] for s in block["segments"]}
    assert used == {f"es{i}" for i in range(servers)}  # every server computes rows somewhere
    x = make_input(graph.spec, 3)
    with torch.no_grad():
        expected = graph.module(x)
    out = run_spatial_plan_locally(graph, plan, x)
    assert (out - expected).abs().max().item() <= TOL


def test_resnet18_prefix_plan_runs_its_residual_suffix():
    graph = _graph("resnet18")
    problem = star_problem(graph, "jetson_agx_xavier", 3)
    assert [n for layer in problem.layers for n in layer.nodes] == ["conv1", "bn1", "relu", "maxpool"]
    plan = _plan(HALP(), problem, FREE)
    x = make_input(graph.spec, 1)
    with torch.no_grad():
        expected = graph.module(x)
    assert (run_spatial_plan_locally(graph, plan, x) - expected).abs().max().item() <= TOL


# ------------------------------------------------------------------------------------------------ the plan's JSON

@pytest.mark.parametrize("method", [HALP, MoDNN])
def test_plan_json_is_consistent(graphs, method):
    problem = star_problem(graphs["vgg16"], "jetson_agx_xavier", 4)
    link = LinkState(1000, delay_ms=0.5)
    plan = _plan(method(), problem, link)
    assert plan["kind"] == "spatial" and plan["method"] == method.name and plan["bandwidth_mbps"] == 1000
    assert json.loads(json.dumps(plan)) == plan  # plain JSON
    layers = [n for layer in problem.layers for n in layer.nodes]
    assert [n for block in plan["blocks"] for n in block["layers"]] == layers
    total = 0.0
    per_link = {e: [0, 0] for e in problem.secondaries}
    for block in plan["blocks"]:
        first = next(i for i, layer in enumerate(problem.layers) if layer.nodes[0] == block["layers"][0])
        last = next(i for i, layer in enumerate(problem.layers) if layer.nodes[-1] == block["layers"][-1])
        windows = problem.windows(first, last)
        start = 0
        for seg in block["segments"]:
            a, b = seg["out_rows"]
            assert a == start and b > a
            start = b
            assert tuple(seg["in_rows"]) == rows_through(windows, (a, b))[0]
            if seg["endpoint"] != "es0":
                assert seg["send_bytes"] == (seg["in_rows"][1] - seg["in_rows"][0]) * block["in_bytes_per_row"]
                assert seg["return_bytes"] == (b - a) * block["out_bytes_per_row"]
                assert seg["send_ms"] == pytest.approx(link.transfer_ms(seg["send_bytes"]) + 0.5)
                per_link[seg["endpoint"]][0] += seg["send_bytes"]
                per_link[seg["endpoint"]][1] += seg["return_bytes"]
        assert start == block["out_height"]
        total += block["predicted_ms"]
    assert plan["bytes_per_task"] == {e: {"to_secondary_bytes": sent, "to_host_bytes": back}
                                      for e, (sent, back) in per_link.items()}
    assert plan["predicted_latency_ms"] == pytest.approx(total + plan["suffix_ms"])
    assert plan["predicted_single_task_ms"] == pytest.approx(plan["predicted_latency_ms"])


def test_per_secondary_links_and_a_missing_one(graphs):
    problem = star_problem(graphs["vgg16"], "jetson_agx_xavier", 3)
    slow, fast = LinkState(1), LinkState(1e5)
    plan = _plan(HALP(), problem, {"es1": slow, "es2": fast})
    used = {s["endpoint"] for b in plan["blocks"] for s in b["segments"]}
    assert used == {"es0", "es2"}  # the secondary behind a 1 Mbit/s link gets nothing; the fast one is used alone
    assert plan["bandwidth_mbps"] == 1
    with pytest.raises(ValueError, match=r"lack secondaries \['es2'\]"):
        secondary_links(problem, {"es1": slow})


# --------------------------------------------------------------------------------------------------- the papers

def test_fusion_costs_extra_input_rows_as_in_the_papers(graphs):
    """Two equal segments: fusing all of VGG-16's convs ~80 % extra rows, fusing up to pool1 ~2 %."""
    problem = star_problem(graphs["vgg16"], "gtx1080ti", 2)
    pool1 = next(i for i, layer in enumerate(problem.layers) if layer.nodes[0] == "features_4")
    last = len(problem.layers) - 1
    for end, low, high in ((last, 0.75, 0.85), (pool1, 0.01, 0.03)):
        height = problem.layers[end].out_height
        block = block_of(problem, 0, end, [("es0", height // 2), ("es1", height - height // 2)])
        assert low <= extra_rows(problem, block)[0] <= high


@pytest.mark.parametrize("board", ["gtx1080ti", "jetson_agx_xavier"])
@pytest.mark.parametrize("rate", [100, 1000])
def test_halp_beats_modnn_on_vgg16_with_four_servers(graphs, board, rate):
    problem = star_problem(graphs["vgg16"], board, 4)
    halp, modnn = _plan(HALP(), problem, LinkState(rate)), _plan(MoDNN(), problem, LinkState(rate))
    assert halp["predicted_latency_ms"] < modnn["predicted_latency_ms"]
    assert halp["predicted_latency_ms"] <= problem.host_alone_ms() + 1e-9  # never worse than the host alone


def test_halp_speeds_up_vgg16_on_xaviers_at_a_gigabit(graphs):
    problem = star_problem(graphs["vgg16"], "jetson_agx_xavier", 4)
    plan = _plan(HALP(), problem, LinkState(1000))
    assert plan["speedup_over_host"] > 1.3
    slow = _plan(HALP(), problem, LinkState(1))  # nothing is worth sending
    assert {s["endpoint"] for b in slow["blocks"] for s in b["segments"]} == {"es0"}
    assert slow["speedup_over_host"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------- the planners

def test_bodp_stripes_follow_server_speed(graphs):
    graph = graphs["vgg16"]
    times = Hardware.star("x", _profile("jetson_agx_xavier"), 2).node_ms(graph)["es0"]
    problem = spatial_problem(graph, {"es0": times, "es1": {n: t / 2 for n, t in times.items()}})
    stripes = MoDNN().prepare(problem)
    for block in stripes.blocks:
        rows = {s.endpoint: s.out_rows[1] - s.out_rows[0] for s in block.segments}
        height = problem.layers[block.first].out_height
        assert abs(rows["es1"] - 2 * height / 3) <= 1


def test_halp_segment_sizes_are_optimal_for_one_block(graphs):
    """The bisection's sizes match a brute force over all sizes, for several blocks and links (N = 2 and 3)."""
    graph = graphs["alexnet"]
    for servers in (2, 3):
        problem = star_problem(graph, "jetson_agx_xavier", servers)
        halp = HALP()
        tables = halp.prepare(problem)
        for link, (first, last) in itertools.product((LinkState(1000), LinkState(1e4, 0.2)), ((0, 1), (0, 4), (2, 7))):
            links = secondary_links(problem, link)
            _, makespan = halp.balance(tables, first, last, links)
            height = problem.layers[last].out_height
            brute = min(block_timing(problem, halp._layout(problem, first, last, problem.secondaries[:used],
                                                            list(shares)), links).makespan_ms
                        for used in range(servers) for shares in itertools.product(range(height + 1), repeat=used)
                        if sum(shares) <= height)
            assert makespan == pytest.approx(brute, rel=1e-6), (servers, link, first, last)


def test_batches_pipeline_for_halp_and_not_for_modnn(graphs):
    problem = star_problem(graphs["vgg16"], "jetson_agx_xavier", 3)
    link = LinkState(1000)
    links = secondary_links(problem, link)
    for method, pipelined in ((HALP, True), (MoDNN, False)):
        single = _plan(method(tasks_per_batch=1), problem, link)
        batch = _plan(method(tasks_per_batch=4), problem, link)
        assert batch["pipelined"] is pipelined
        assert batch["predicted_batch_ms"] == pytest.approx(max(batch["task_done_ms"]))
        assert batch["predicted_latency_ms"] == pytest.approx(batch["predicted_batch_ms"] / 4)
        if pipelined:
            assert single["predicted_latency_ms"] < batch["predicted_batch_ms"] < 4 * single["predicted_latency_ms"]
        else:
            assert batch["predicted_batch_ms"] == pytest.approx(4 * single["predicted_latency_ms"])
    # the scheduler with one task reproduces the per-block model exactly
    blocks = MoDNN().prepare(problem).blocks
    assert batch_done_ms(problem, blocks, links, 1, pipelined=True)[0] == pytest.approx(
        single_task_ms(problem, blocks, links))


@pytest.mark.parametrize("name, cls", [("halp", HALP), ("modnn", MoDNN)])
def test_method_configs_instantiate(name, cls):
    cfg = OmegaConf.load(ROOT / "conf" / "method" / f"{name}.yaml")
    method = instantiate(cfg)
    assert isinstance(method, cls) and method.kind == "spatial" and cfg.name == name
    assert method.tasks_per_batch == 1
    with pytest.raises(ValueError, match="tasks_per_batch must be >= 1, got 0"):
        cls(tasks_per_batch=0)
