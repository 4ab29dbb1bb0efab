"""The models torchvision lacks (harness/model/zoo.py): they trace, cost what their architecture says, split exactly."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from harness.model.graph import ModelGraph, build_graph
from harness.model.models import ModelSpec, build_model
from tests.test_graph import assert_split_is_exact, random_cuts

MODEL_DIR = Path(__file__).resolve().parent.parent / "conf" / "model"

# Convolutions by hand from the layer shapes: (output side, output channels, input channels, kernel side).
# NiN (ImageNet, 224x224): 1.100 GMAC = 2.200 GFLOP.
NIN_CONVS = [(54, 96, 3, 11), (54, 96, 96, 1), (54, 96, 96, 1), (27, 256, 96, 5), (27, 256, 256, 1),
             (27, 256, 256, 1), (13, 384, 256, 3), (13, 384, 384, 1), (13, 384, 384, 1), (6, 1024, 384, 3),
             (6, 1024, 1024, 1), (6, 1000, 1024, 1)]
# tiny-YOLOv2 (VOC, 416x416): 3.486 GMAC = 6.971 GFLOP; Darknet reports 6.97 BFLOPs for yolov2-tiny-voc.cfg.
TINY_YOLO_CONVS = [(416, 16, 3, 3), (208, 32, 16, 3), (104, 64, 32, 3), (52, 128, 64, 3), (26, 256, 128, 3),
                   (13, 512, 256, 3), (13, 1024, 512, 3), (13, 1024, 1024, 3), (13, 125, 1024, 1)]
ZOO = {"nin": (NIN_CONVS, (1, 1000)), "tiny_yolov2": (TINY_YOLO_CONVS, (1, 125, 13, 13))}


def conv_gflop(convs: list[tuple[int, int, int, int]]) -> float:
    return sum(2 * side * side * cout * cin * k * k for side, cout, cin, k in convs) / 1e9


def model_spec(name: str) -> ModelSpec:
    return ModelSpec.from_config(OmegaConf.load(MODEL_DIR / f"{name}.yaml"))


@functools.lru_cache(maxsize=None)
def model_graph(name: str) -> ModelGraph:
    return build_graph(model_spec(name))


def test_hand_counts_match_the_published_figures() -> None:
    assert conv_gflop(NIN_CONVS) == pytest.approx(2.200, abs=0.001)
    assert conv_gflop(TINY_YOLO_CONVS) == pytest.approx(6.97, abs=0.005)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_traces_with_the_architectures_shape_and_flops(name: str) -> None:
    convs, out_shape = ZOO[name]
    spec = model_spec(name)
    assert spec.target == f"harness.model.zoo.{name}"
    torch.fx.symbolic_trace(build_model(spec))  # plain fx, as a user would
    graph = model_graph(name)
    assert graph[graph.result_name].out_shape == out_shape
    assert sum(n.kind == "conv2d" for n in graph.nodes.values()) == len(convs)
    assert graph.total_flops / 1e9 == pytest.approx(conv_gflop(convs), rel=0.05)


def test_tiny_yolo_has_six_pools_and_darknets_stride_one_pool() -> None:
    model = build_model(model_spec("tiny_yolov2"))
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert [p.stride for p in pools] == [2, 2, 2, 2, 2, 1]
    # Darknet pads the stride-1 pool at the bottom and right with cells that never win the max (-FLT_MAX); leaky ReLU
    # outputs are negative here, where zero padding would differ.
    pad = next(m for m in model.modules() if isinstance(m, nn.ReplicationPad2d))
    x = -torch.rand(1, 512, 13, 13) - 0.1
    expected = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2, 1)
    assert torch.equal(pools[-1](pad(x)), expected)
    assert not torch.equal(pools[-1](F.pad(x, (0, 1, 0, 1))), expected)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_splits_and_rejoins_exactly(name: str) -> None:
    graph = model_graph(name)
    with torch.no_grad():
        expected = graph.module(graph.example_input)
    everything = {n for n in graph.order if graph[n].op != "output"}
    for device_side in [everything, {graph.input_name}] + random_cuts(graph, 5, seed=len(name)):
        assert_split_is_exact(graph, device_side, expected)
