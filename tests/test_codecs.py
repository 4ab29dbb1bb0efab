"""Codecs at the cut and the photographs they are measured on: round trips within each codec's stated error, the
bytes each puts on the wire, refusals of payloads that do not decode to the planned tensor, the config's checks, and
a compressed-offload run end to end."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch

from hardware.codec_costs import wire_costs
from harness.model.codecs import FEATURE_CODECS, INPUT_CODECS, Codec, CodecError, Codecs
from harness.model.graph import build_graph
from harness.model.images import PHOTOGRAPHS, NaturalInputError, natural_batch, photograph_paths
from harness.model.models import ModelSpec, make_input
from harness.config import ConfigError, resolve, validate
from harness.worker.cut_stage import crossing_codecs
from tests.conftest import run_python
from tests.test_config import make

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (1, 3, 224, 224)
NATURAL = ModelSpec("resnet18", "torchvision.models.resnet18", SHAPE, args={"weights": None}, input="natural")


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    return make_input(NATURAL, 0)


def test_every_photograph_is_installed_and_inputs_cycle_through_them() -> None:
    assert len(photograph_paths()) == len(PHOTOGRAPHS)
    images = [make_input(NATURAL, i) for i in range(len(PHOTOGRAPHS) + 1)]
    assert all(x.shape == SHAPE and x.dtype == torch.float32 for x in images)
    assert torch.equal(images[0], images[-1])  # the cycle comes back
    assert all(not torch.equal(images[i], images[i + 1]) for i in range(len(PHOTOGRAPHS) - 1))
    assert torch.equal(make_input(NATURAL, 3), make_input(NATURAL, 3))  # the same in every process
    assert -2.2 < float(images[0].min()) and float(images[0].max()) < 2.7  # ImageNet-normalised bytes


def test_a_natural_input_needs_an_rgb_image_shape() -> None:
    with pytest.raises(NaturalInputError, match=r"\[N, 3, H, W\]; model.input_shape is \[1, 1, 28, 28\]"):
        natural_batch((1, 1, 28, 28), 0)


@pytest.mark.parametrize("name", INPUT_CODECS)
def test_input_codecs_round_trip_a_photograph_within_their_error(photo: torch.Tensor, name: str) -> None:
    codec = Codec(name)
    wire = codec.encode(photo)
    back = codec.decode(wire, SHAPE)
    error = float((back - photo).abs().max())
    if codec.lossless:
        assert error <= codec.error_bound(photo)
    else:  # JPEG at quality 90: a few grey levels per pixel on average, in normalised units
        assert float((back - photo).abs().mean()) < 0.05 and error < 1.5
    expected = codec.wire_bytes(SHAPE)
    assert expected is None or wire.numel() * wire.element_size() == expected


def test_a_photograph_compresses_as_the_field_reports(photo: torch.Tensor) -> None:
    """float32 602 KB > uint8 147 KiB > PNG > JPEG q90 (about 16 KB, ~37x smaller than float32)."""
    sizes = {name: Codec(name).encode(photo).numel() * Codec(name).encode(photo).element_size()
             for name in INPUT_CODECS}
    assert sizes["raw"] == 602_112 and sizes["uint8"] == 150_528
    assert sizes["uint8"] > sizes["png"] > sizes["jpeg"]
    assert 20 < sizes["raw"] / sizes["jpeg"] < 80
    assert Codec("jpeg", quality=50).encode(photo).numel() < sizes["jpeg"]


@pytest.mark.parametrize("name", FEATURE_CODECS)
def test_feature_codecs_round_trip_within_their_stated_error(name: str) -> None:
    x = torch.randn(1, 64, 28, 28, generator=torch.Generator().manual_seed(1)) * 3.0
    codec = Codec(name)
    wire = codec.encode(x)
    back = codec.decode(wire, tuple(x.shape))
    assert back.dtype == torch.float32 and back.shape == x.shape
    assert float((back - x).abs().max()) <= codec.error_bound(x)
    assert wire.numel() * wire.element_size() == codec.wire_bytes(tuple(x.shape))
    if name == "int8":  # 256 levels over the range: the error is about half a step, not less
        assert float((back - x).abs().max()) > codec.error_bound(x) / 4


def test_int8_keeps_a_constant_tensor_exactly() -> None:
    x = torch.full((2, 3), 1.25)
    assert torch.equal(Codec("int8").decode(Codec("int8").encode(x), (2, 3)), x)


@pytest.mark.parametrize("name, payload, message", [
    ("jpeg", torch.tensor([0xFF, 0xD8, 1, 2, 3], dtype=torch.uint8), "does not decode"),
    ("png", torch.arange(64, dtype=torch.uint8), "does not decode"),
    ("jpeg", torch.zeros(4, 4), "must be bytes"),
    ("int8", torch.zeros(20, dtype=torch.uint8), "payload of 20 bytes, expected"),
    ("fp16", torch.zeros(1, 3, 4, 4), "dtype torch.float32, expected torch.float16"),
    ("fp16", torch.zeros(1, 3, 4, 5, dtype=torch.float16), r"shape \[1, 3, 4, 5\], expected \[1, 3, 4, 4\]"),
])
def test_a_payload_that_does_not_decode_to_the_planned_tensor_is_refused(name, payload, message) -> None:
    with pytest.raises(CodecError, match=message):
        Codec(name).decode(payload, (1, 3, 4, 4))


def test_a_jpeg_of_another_size_is_refused(photo: torch.Tensor) -> None:
    with pytest.raises(CodecError, match=r"decoded image \[3, 224, 224\], expected \[3, 112, 112\]"):
        Codec("jpeg").decode(Codec("jpeg").encode(photo), (1, 3, 112, 112))


def test_int8_refuses_a_header_that_is_not_finite() -> None:
    wire = Codec("int8").encode(torch.randn(4))
    wire[:4] = torch.tensor([0, 0, 0xC0, 0x7F], dtype=torch.uint8)  # NaN minimum
    with pytest.raises(CodecError, match="must be finite"):
        Codec("int8").decode(wire, (4,))


@pytest.mark.parametrize("plan, message", [
    ({"send": ["a"], "recv": [], "tensors": {"a": {"codec": "zip", "shape": [1, 2]}}}, "codec 'zip' is not one"),
    ({"send": ["a"], "recv": [], "tensors": {"a": {"codec": "int8", "shape": [1, -2]}}}, "no valid shape"),
    ({"send": [], "recv": ["a"], "tensors": {"a": {"codec": "int8", "shape": "big"}}}, "no valid shape"),
])
def test_a_worker_refuses_a_plan_with_an_unknown_codec_or_shape(plan, message) -> None:
    with pytest.raises(CodecError, match=message):
        crossing_codecs(plan)


def test_a_plan_without_codecs_sends_float32() -> None:
    codecs = crossing_codecs({"send": ["a"], "recv": []})
    assert codecs["a"][0] == Codec("raw")


def test_wire_costs_price_the_input_codec_on_photographs_and_features_by_size() -> None:
    graph = build_graph(ModelSpec("resnet18", "torchvision.models.resnet18", (1, 3, 64, 64), args={"weights": None},
                                  input="natural"))
    raw = wire_costs(graph, Codecs(), 1.0, 1.0)
    coded = wire_costs(graph, Codecs.of("jpeg", "int8"), 3.0, 1.0)
    x = graph.input_name
    assert raw.out_bytes[x] == graph[x].out_bytes and raw.encode_ms[x] == raw.decode_ms[x] == 0.0
    jpeg_sizes = [Codec("jpeg").encode(make_input(graph.spec, i)).numel() for i in range(len(PHOTOGRAPHS))]
    assert coded.out_bytes[x] == round(sum(jpeg_sizes) / len(jpeg_sizes))
    conv = "conv1"
    assert coded.out_bytes[conv] == 8 + math.prod(graph[conv].out_shape)
    assert coded.encode_ms[conv] > 0 and coded.decode_ms[conv] > 0


@pytest.mark.parametrize("overrides, message", [
    (["codec.input=jpeg", "model.input=random"], "is measured on photographs, not noise"),
    (["codec.input=zip"], "codec.input='zip' is not one of ['raw', 'uint8', 'png', 'jpeg']"),
    (["codec.features=int4"], "codec.features='int4' is not one of ['raw', 'fp16', 'int8']"),
    (["codec=jpeg", "model.input_shape=[2,3,64,64]"], "codec.input=jpeg encodes one image"),
    (["codec=jpeg", "model=custom", "model._target_=tests.user_models.build", "model.input_shape=[1,1,28,28]"],
     "is no RGB image"),
    (["codec=jpeg", "method=halp", "hardware=4x_local"], "row bands cross as float32"),
    (["model.input=photos"], "model.input='photos' is not one of ['auto', 'random', 'natural']"),
])
def test_a_bad_codec_setting_names_the_value_and_the_accepted_ones(overrides: list[str], message: str) -> None:
    cfg = make(["model=resnet18", "model.input_shape=[1,3,64,64]", "hardware=local_pair", "method=server_only",
                *overrides])
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    assert message in str(caught.value)


def test_model_input_auto_means_photographs_only_where_the_input_is_compressed() -> None:
    assert resolve(make(["codec=jpeg"])).model.input == "natural"
    assert resolve(make(["codec.features=int8"])).model.input == "random"
    assert resolve(make([])).codecs == Codecs()


def run(*overrides: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return run_python(ROOT / "run.py", [*overrides, f"hydra.run.dir={tmp_path}/out",
                                        f"hydra.sweep.dir={tmp_path}/multi"],
                      ROOT, {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", **env}, timeout=900)


@pytest.mark.e2e
def test_compressed_offload_and_quantised_features_run_for_real(tmp_path: Path) -> None:
    """JPEG offload, and a cut in the middle of the model (the user's ``Half`` method) with features as float32 and
    as int8, each run on local_pair: the bytes that crossed are the codec's, the codec and the input kind are
    recorded, and the outputs are compared with the whole float32 model's."""
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "half.yaml").write_text("_target_: tests.user_methods.Half\n")
    done = run("-m", "model=resnet18", "model.input_shape=[1,3,64,64]", "hardware=local_pair",
               "method=server_only,half", "codec=jpeg,int8", "link.bandwidth_mbps=10", "scenario.inferences=6",
               "experiment.name=codecs", tmp_path=tmp_path, SPLITBENCH_CONF=str(tmp_path / "conf"))
    assert done.returncode == 0, done.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["codecs"])
    assert len(runs) == 4 and set(runs["tags.valid"]) == {"true"}
    assert set(runs["tags.model_input"]) == {"natural"}
    for _, r in runs.iterrows():  # a lossy codec on the way changes the outputs; float32 features do not
        lossless = (r["tags.method"], r["tags.codec"]) == ("half", "jpeg90")
        assert 0.0 <= r["metrics.top1_agreement"] <= 1.0
        assert (r["metrics.max_abs_error"] == 0.0) == lossless, (r["tags.method"], r["tags.codec"])
    sent = {(r["tags.method"], r["tags.codec"]): r["metrics.bytes_transferred"] for _, r in runs.iterrows()}
    spec = ModelSpec("resnet18", "torchvision.models.resnet18", (1, 3, 64, 64), input="natural")
    jpeg_bytes = [Codec("jpeg").encode(make_input(spec, i)).numel() for i in range(len(PHOTOGRAPHS))]
    for codec in ("jpeg90", "jpeg90+int8"):  # one JPEG per inference, never the 48 KB of float32
        assert min(jpeg_bytes) <= sent[("server_only", codec)] <= max(jpeg_bytes)
    float32, int8 = sent[("half", "jpeg90")], sent[("half", "jpeg90+int8")]
    assert int8 == pytest.approx(float32 / 4, rel=0.01)  # one byte per value (+8 per tensor) instead of four
