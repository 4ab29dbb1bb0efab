"""The model graph: FLOPs and bytes per node, DAG consistency, exact split/rejoin, user models and their errors."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from harness.config import ModelConfig
from partitioners.base import cut_problem
from harness.model.graph import (ModelGraph, TraceFailure, ancestors, build_graph, crossing_tensors,
                           is_closed_under_predecessors)
from harness.model.models import ModelBuildError, ModelSpec, build_model
from harness.model.submodels import full_assignment, run_parts, split
from partitioners.base import LinkState

MODEL_DIR = Path(__file__).resolve().parent.parent / "conf" / "model"
TORCHVISION_MODELS = ["vgg16", "alexnet", "resnet18", "resnet50", "resnet152", "googlenet", "inception_v3",
                      "mobilenet_v2", "densenet121", "densenet201", "efficientnet_b0"]
USER_SPEC = ModelSpec("custom", "tests.user_models.build", (1, 3, 64, 64), 0, {"width": 8, "num_classes": 10})


def model_spec(name: str) -> ModelSpec:
    return ModelSpec.from_config(OmegaConf.load(MODEL_DIR / f"{name}.yaml"))


@functools.lru_cache(maxsize=None)
def model_graph(name: str) -> ModelGraph:
    """Each torchvision graph is built once per session: building, calibrating and tracing takes seconds."""
    return build_graph(model_spec(name))


@functools.lru_cache(maxsize=None)
def reference_output(name: str) -> torch.Tensor:
    graph = model_graph(name)
    with torch.no_grad():
        return graph.module(graph.example_input)


# ---- configs -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_model_config_fits_the_schema_and_gives_a_spec(name: str) -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(MODEL_DIR / f"{name}.yaml"))
    spec = ModelSpec.from_config(cfg)
    assert spec.name == name
    assert spec.target == f"torchvision.models.{name}"
    assert spec.input_shape == ((1, 3, 299, 299) if name == "inception_v3" else (1, 3, 224, 224))
    assert spec.seed == 0 and spec.args["weights"] is None
    if name in ("googlenet", "inception_v3"):
        assert spec.args["aux_logits"] is False and spec.args["init_weights"] is False


def test_custom_config_needs_a_target_and_then_builds_the_user_model() -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(MODEL_DIR / "custom.yaml"))
    assert OmegaConf.is_missing(cfg, "_target_")
    with pytest.raises(ModelBuildError, match="model._target_ is not set"):
        ModelSpec.from_config(cfg)
    cfg._target_ = "tests.user_models.build"
    cfg.args = {"width": 8, "num_classes": 10}
    spec = ModelSpec.from_config(cfg)
    assert spec == USER_SPEC
    assert len(build_graph(spec)) == len(build_graph(USER_SPEC))


# ---- FLOPs and structure -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, gflop", [("vgg16", 31.0), ("resnet50", 8.2), ("mobilenet_v2", 0.6)])
def test_flop_totals_match_the_known_figures(name: str, gflop: float) -> None:
    assert model_graph(name).total_flops / 1e9 == pytest.approx(gflop, rel=0.05)


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_flop_totals_match_torchvisions_own_count(name: str) -> None:
    # torchvision's weight metadata counts multiply-accumulates ("GFLOPS" in its docs); we count a MAC as 2 FLOPs.
    weights = torchvision.models.get_model_weights(name).DEFAULT
    assert model_graph(name).total_flops / 2e9 == pytest.approx(weights.meta["_ops"], rel=0.05)


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_graph_is_a_consistent_dag_with_bytes_everywhere(name: str) -> None:
    graph = model_graph(name)
    model = build_model(model_spec(name))
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert len(graph) == len(graph.module.graph.nodes) > convs + linears
    assert sum(n.kind == "conv2d" for n in graph.nodes.values()) == convs
    assert sum(n.kind == "linear" for n in graph.nodes.values()) == linears
    assert [n.op for n in graph.nodes.values()].count("placeholder") == 1
    assert [n.op for n in graph.nodes.values()].count("output") == 1
    position = {name: i for i, name in enumerate(graph.order)}
    for node in graph.nodes.values():
        if node.op != "output":
            assert node.out_bytes > 0, node.name
            assert node.out_shape is not None, node.name
        for p in node.preds:
            assert node.name in graph[p].succs and position[p] < position[node.name]
        for s in node.succs:
            assert node.name in graph[s].preds
        if node.op == "call_module" and node.kind in ("conv2d", "linear"):
            assert node.param_bytes > 0 and node.flops > 0, node.name
        if node.op not in ("placeholder", "output"):
            assert node.in_bytes == sum(graph[p].out_bytes for p in node.preds), node.name
    assert graph[graph.result_name].out_shape == tuple(reference_output(name).shape)
    assert sum(n.param_bytes for n in graph.nodes.values()) == sum(
        t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


# ---- split and rejoin ----------------------------------------------------------------------------------------------

def random_cuts(graph: ModelGraph, count: int, seed: int) -> list[set[str]]:
    """Device sides made of the ancestors of 1-3 random nodes: closed under predecessors by construction."""
    rng = random.Random(seed)
    inner = [n for n in graph.order if graph[n].op not in ("placeholder", "output") and n != graph.result_name]
    return [ancestors(graph, rng.sample(inner, rng.randint(1, 3))) for _ in range(count)]


def assert_split_is_exact(graph: ModelGraph, device_side: set[str], expected: torch.Tensor) -> None:
    assert is_closed_under_predecessors(graph, device_side)
    assignment = {n: 0 if n in device_side else 1 for n in graph.order if graph[n].op != "output"}
    parts = split(graph, assignment)
    values = run_parts(parts, graph.example_input, graph.input_name)
    assert (values[graph.result_name] - expected).abs().max().item() <= 1e-5
    if len(parts) == 2 and parts[1].module is not None:
        crossing = {name for name, src, dst in crossing_tensors(graph, full_assignment(graph, assignment))}
        assert set(parts[1].inputs) == crossing


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_random_cuts_split_and_rejoin_exactly(name: str) -> None:
    graph, expected = model_graph(name), reference_output(name)
    everything = {n for n in graph.order if graph[n].op != "output"}
    cuts = [everything, {graph.input_name}] + random_cuts(graph, 4, seed=len(name))  # device-only, server-only
    for device_side in cuts:
        assert_split_is_exact(graph, device_side, expected)


# ---- user models ---------------------------------------------------------------------------------------------------

def test_user_factory_is_traced_and_costed() -> None:
    graph = build_graph(USER_SPEC)
    add = next(n for n in graph.nodes.values() if n.kind == "add")
    assert len(add.preds) == 2  # the residual join: a DAG, not a chain
    # Convolutions and the classifier by hand: 2 * output elements * (input channels * kernel area), MAC = 2.
    w, hw = 8, 32 * 32
    expected = 2 * w * hw * 3 * 9 + 2 * (2 * w * hw * w * 9) + 2 * 10 * w
    assert sum(n.flops for n in graph.nodes.values() if n.kind in ("conv2d", "linear")) == expected
    device_ms = {n: 1.0 for n in graph.order}
    server_ms = {n: 0.5 for n in graph.order}
    problem = cut_problem(graph, device_ms, server_ms)
    assert problem.order == [n for n in graph.order if n != graph.output_name]
    link = LinkState(bandwidth_mbps=8.0)
    all_device = set(problem.order)
    assert problem.latency_ms(all_device, link) == pytest.approx(len(problem.order))
    # Server-only: the device keeps the input and sends its 64x64x3 float32 = 49152 bytes at 8 Mbit/s.
    assert problem.latency_ms({graph.input_name}, link) == pytest.approx(
        0.5 * (len(problem.order) - 1) + 1.0 + 49152 * 8 / 8e3)
    with torch.no_grad():
        expected_out = graph.module(graph.example_input)
    assert_split_is_exact(graph, ancestors(graph, ["add"]), expected_out)


def test_untraceable_model_names_the_model_and_the_line() -> None:
    spec = ModelSpec("branchy", "tests.user_models.build_untraceable", (1, 3, 16, 16))
    with pytest.raises(TraceFailure) as info:
        build_graph(spec)
    message = str(info.value)
    assert "'branchy'" in message
    assert "user_models.py" in message and "if x.sum() > 0:" in message
    assert "Traceback" not in message and len(message.splitlines()) == 1


@pytest.mark.parametrize("target", ["tests.user_models.no_such_factory", "no_such_package.build"])
def test_factory_that_cannot_be_imported_is_named(target: str) -> None:
    with pytest.raises(ModelBuildError, match=target.replace(".", r"\.")):
        build_model(ModelSpec("missing", target, (1, 3, 16, 16)))
