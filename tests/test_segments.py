"""Row segments give exactly the unsplit rows: random conv/pool stacks, VGG-16 and AlexNet, fused and per block;
the spatial prefix stops with an error that names the node (resnet18's residual add)."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from harness.model.graph import ModelGraph, build_graph, graph_from_module
from harness.model.models import ModelSpec
from harness.model.rows import RowWindow, SpatialUnsupported, rows_through, segment_input_rows, spatial_prefix
from harness.worker.segments import join_rows, run_segment, run_suffix, suffix_part

TOL = 1e-5


def node_values(graph: ModelGraph, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every node's value on ``x`` (copied: in-place activations would overwrite their input's record)."""
    values: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node):
            result = super().run_node(n)
            if isinstance(result, torch.Tensor):
                values[n.name] = result.clone()
            return result

    with torch.no_grad():
        Recorder(graph.module).run(x)
    return values


def split_and_join(graph: ModelGraph, values: dict[str, torch.Tensor], nodes: list[str], cuts: list[int],
                   whole_band: bool = False) -> torch.Tensor:
    """Run block ``nodes`` as segments between row ``cuts`` (each on just its input rows) and join them."""
    prefix = spatial_prefix(graph)
    ops = prefix.block(nodes)
    x = values[prefix.block_input(nodes)]
    pieces = []
    for rows in itertools.pairwise(cuts):
        lo, hi = (0, x.shape[2]) if whole_band else segment_input_rows(ops, rows)
        pieces.append((rows, run_segment(ops, x[:, :, lo:hi], (lo, hi), rows)))
    return join_rows(pieces, cuts[-1])


def uneven_cuts(rng: random.Random, height: int, segments: int) -> list[int]:
    """Row boundaries of ``segments`` non-empty segments; often one of them is a single row."""
    segments = min(segments, height)
    inner = sorted(rng.sample(range(1, height), segments - 1))
    if segments > 1 and rng.random() < 0.5:  # force a 1-row segment at the top, bottom or inside
        where = rng.choice(["top", "bottom", "inside"])
        if where == "top":
            inner[0] = 1
        elif where == "bottom":
            inner[-1] = height - 1
        elif height > 3:
            k = rng.randrange(len(inner))
            start = rng.randrange(1, height - 1)
            inner = sorted(set(inner[:k] + [start, start + 1] + inner[k + 1:]))[:segments]
        inner = sorted({min(max(c, 1), height - 1) for c in inner})
    return [0, *inner, height]


# ------------------------------------------------------------------------------------------------ row arithmetic

def test_row_window_arithmetic_by_hand():
    w = RowWindow(kernel=3, stride=2, pad_top=1, in_height=224, out_height=112)
    assert w.input_rows((0, 10)) == (0, 20) and w.border_pads((0, 10)) == (1, 0)  # row -1 is padding
    assert w.input_rows((100, 112)) == (199, 224) and w.border_pads((100, 112)) == (0, 0)
    last = RowWindow(kernel=3, stride=1, pad_top=1, in_height=5, out_height=5)
    assert last.input_rows((4, 5)) == (3, 5) and last.border_pads((4, 5)) == (0, 1)
    # conv3 (pad 1) then pool 2/2: output rows 3..4 of the pool need pool input 6..9, conv input 5..10
    chain = [RowWindow(3, 1, 1, 16, 16), RowWindow(2, 2, 0, 16, 8)]
    assert rows_through(chain, (3, 5)) == [(5, 11), (6, 10), (3, 5)]


# ---------------------------------------------------------------------------------------- random conv/pool stacks

def random_stack(rng: random.Random, height: int, width: int) -> nn.Sequential:
    """Conv / max-pool / avg-pool layers with kernels 1–7, strides 1–3, paddings 0–3, batch-norms and ReLUs."""
    layers: list[nn.Module] = []
    channels = 3
    probe = torch.zeros(1, channels, height, width)
    for _ in range(rng.randint(2, 6)):
        kind = rng.choice(["conv", "conv", "max", "avg"])
        k, s = rng.randint(1, 7), rng.randint(1, 3)
        if kind == "conv":
            out = rng.randint(1, 4)
            dilation = 2 if rng.random() < 0.15 else 1
            layer: nn.Module = nn.Conv2d(channels, out, k, s, rng.randint(0, 3), dilation=dilation)
        else:
            p, ceil = rng.randint(0, min(3, k // 2)), rng.random() < 0.5
            layer = (nn.MaxPool2d(k, s, p, ceil_mode=ceil) if kind == "max" else
                     nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=rng.random() < 0.5))
        try:
            out_probe = layer(probe)
        except RuntimeError:  # input smaller than the kernel
            break
        if out_probe.shape[2] < 2 or out_probe.shape[3] < 1:
            break
        layers.append(layer)
        probe = out_probe
        channels = probe.shape[1]
        if kind == "conv" and rng.random() < 0.5:
            bn = nn.BatchNorm2d(channels)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            layers.append(bn)
        if rng.random() < 0.5:
            layers.append(nn.ReLU(inplace=rng.random() < 0.5))
    if not any(isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) for m in layers):
        layers.append(nn.Conv2d(channels, 2, 3, 1, 1))
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("seed", range(40))
def test_random_stacks_fused_and_per_block(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    height, width = rng.randint(24, 72), rng.randint(16, 40)
    model = random_stack(rng, height, width)
    x = torch.randn(1, 3, height, width)
    graph = graph_from_module(model, ModelSpec(f"stack{seed}", "tests.random_stack", tuple(x.shape)), x)
    values = node_values(graph, x)
    prefix = spatial_prefix(graph)
    assert prefix.stop == "output" and prefix.output == graph.result_name
    nodes = prefix.nodes
    first = rng.randrange(len(nodes))
    last = rng.randrange(first, len(nodes))
    for block in (nodes, nodes[first:last + 1]):
        reference = values[block[-1]]
        height_out = reference.shape[2]
        for segments in (2, 3, 4):
            cuts = uneven_cuts(rng, height_out, segments)
            joined = split_and_join(graph, values, block, cuts, whole_band=rng.random() < 0.3)
            assert joined.shape == reference.shape
            err = (joined - reference).abs().max().item()
            assert err <= TOL, f"seed {seed}: block {block[0]}..{block[-1]} cuts {cuts}: max error {err}"


class ElementwiseCalls(nn.Module):
    """Element-wise functions and methods between convs, a 'same'-padded even kernel and an identity adaptive pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 4, padding="same")
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2)
        self.pool = nn.AdaptiveAvgPool2d((15, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x)) * 2.0 - 1.0
        x = F.leaky_relu(x, 0.1).sigmoid()
        return self.pool(self.conv2(x))


def test_elementwise_calls_same_padding_and_identity_adaptive_pool():
    torch.manual_seed(1)
    model = ElementwiseCalls().eval()
    x = torch.randn(1, 3, 30, 11)
    graph = graph_from_module(model, ModelSpec("calls", "tests.ElementwiseCalls", tuple(x.shape)), x)
    prefix = spatial_prefix(graph)
    assert prefix.output == "pool" and [len(layer.ops) for layer in prefix.layers] == [6, 2]
    values = node_values(graph, x)
    for cuts in ([0, 1, 15], [0, 7, 8, 14, 15]):
        joined = split_and_join(graph, values, prefix.nodes, cuts)
        assert (joined - values["pool"]).abs().max().item() <= TOL


def test_segment_does_not_write_into_the_band():
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(2, 2, 3, padding=1)).eval()
    x = torch.randn(1, 2, 12, 6)
    graph = graph_from_module(model, ModelSpec("inplace", "tests", tuple(x.shape)), x.clone())  # tracing runs it
    ops = spatial_prefix(graph).block(["_0", "_1"])
    band = x.clone()
    run_segment(ops, band, (0, 12), (0, 6))
    assert (x < 0).any() and torch.equal(band, x)


def test_border_rows_that_see_only_padding():
    """A padding wider than the kernel: the first and last output rows read no input row at all."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 1, padding=3), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=3),
                          nn.AvgPool2d(3, 2, 1, count_include_pad=False)).eval()
    x = torch.randn(1, 2, 9, 5)
    graph = graph_from_module(model, ModelSpec("wide_pad", "tests", tuple(x.shape)), x)
    values = node_values(graph, x)
    ops = spatial_prefix(graph).block(["_0", "_1", "_2", "_3"])
    assert segment_input_rows(ops, (0, 1)) == (0, 0)  # nothing to receive: the row is made of padding
    height = values["_3"].shape[2]
    for cuts in ([0, 1, height], [0, 1, 2, height - 1, height], [0, height // 2, height]):
        joined = split_and_join(graph, values, ["_0", "_1", "_2", "_3"], cuts)
        assert (joined - values["_3"]).abs().max().item() <= TOL, cuts


def test_band_and_join_errors_name_the_rows():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1)).eval()
    x = torch.randn(1, 1, 10, 4)
    graph = graph_from_module(model, ModelSpec("one", "tests", tuple(x.shape)), x)
    ops = spatial_prefix(graph).block(["_0"])
    with pytest.raises(ValueError, match=r"need input rows \[2, 7\).*holds \[3, 7\)"):
        run_segment(ops, x[:, :, 3:7], (3, 7), (3, 6))
    piece = torch.zeros(1, 1, 3, 4)
    with pytest.raises(ValueError, match="gap at row 3"):
        join_rows([((0, 3), piece), ((4, 7), piece)], 7)
    with pytest.raises(ValueError, match="overlap at row 2"):
        join_rows([((0, 3), piece), ((2, 5), piece)], 5)


# ------------------------------------------------------------------------------------------------ real models

def _graph(name: str) -> ModelGraph:
    return build_graph(ModelSpec(name, f"torchvision.models.{name}", (1, 3, 224, 224), 0, {"weights": None}))


@pytest.fixture(scope="module")
def vgg16():
    graph = _graph("vgg16")
    return graph, node_values(graph, graph.example_input)


@pytest.fixture(scope="module")
def alexnet():
    graph = _graph("alexnet")
    return graph, node_values(graph, graph.example_input)


def _blocks_at_pools(graph: ModelGraph) -> list[list[str]]:
    """The model's conv blocks: each ends at a max-pool (and its element-wise tail)."""
    blocks, current = [], []
    for layer in spatial_prefix(graph).layers:
        current += layer.nodes
        if graph[layer.nodes[0]].kind == "maxpool2d":
            blocks.append(current)
            current = []
    if current:
        blocks[-1] += current
    return blocks


@pytest.mark.parametrize("segments", [2, 3, 4])
def test_vgg16_whole_feature_extractor_fused_then_suffix(vgg16, segments):
    graph, values = vgg16
    prefix = spatial_prefix(graph)
    assert prefix.output == "avgpool" and prefix.stop == "flatten"
    height = values["avgpool"].shape[2]  # 7
    cuts = uneven_cuts(random.Random(segments), height, segments)
    joined = split_and_join(graph, values, prefix.nodes, cuts)
    assert (joined - values["avgpool"]).abs().max().item() <= TOL
    out = run_suffix(graph, suffix_part(graph, prefix), joined)
    assert (out - values[graph.result_name]).abs().max().item() <= TOL


@pytest.mark.parametrize("segments", [2, 3, 4])
def test_vgg16_per_block(vgg16, segments):
    graph, values = vgg16
    rng = random.Random(100 + segments)
    blocks = _blocks_at_pools(graph)
    assert len(blocks) == 5
    for block in blocks:
        reference = values[block[-1]]
        joined = split_and_join(graph, values, block, uneven_cuts(rng, reference.shape[2], segments))
        assert (joined - reference).abs().max().item() <= TOL, block


@pytest.mark.parametrize("segments", [2, 3, 4])
def test_alexnet_fused_and_per_block(alexnet, segments):
    graph, values = alexnet
    rng = random.Random(200 + segments)
    prefix = spatial_prefix(graph)
    for block in [prefix.nodes, *_blocks_at_pools(graph)]:
        reference = values[block[-1]]
        joined = split_and_join(graph, values, block, uneven_cuts(rng, reference.shape[2], segments))
        assert (joined - reference).abs().max().item() <= TOL, block


# ----------------------------------------------------------------------------------------- where the prefix stops

def test_resnet18_stops_at_the_residual_add():
    graph = _graph("resnet18")
    prefix = spatial_prefix(graph)
    assert prefix.nodes == ["conv1", "bn1", "relu", "maxpool"]
    assert prefix.stop == "add" and "branch" in prefix.stop_reason
    with pytest.raises(SpatialUnsupported, match=r"'layer1_0_conv1' is past the spatial prefix.*stops at node 'add'"):
        prefix.block(["conv1", "bn1", "relu", "maxpool", "layer1_0_conv1"])


class BranchAtInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def test_no_usable_prefix_names_the_node():
    x = torch.randn(1, 3, 8, 8)
    branch = graph_from_module(BranchAtInput().eval(), ModelSpec("branch", "tests", tuple(x.shape)), x)
    with pytest.raises(SpatialUnsupported, match=r"no conv or pool layer.*before node 'add'.*branch"):
        spatial_prefix(branch)
    flat = graph_from_module(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)).eval(),
                             ModelSpec("flat", "tests", tuple(x.shape)), x)
    with pytest.raises(SpatialUnsupported, match=r"before node '_0'"):
        spatial_prefix(flat)
