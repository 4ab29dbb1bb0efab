"""Weights made once per machine (``harness.model.weights``): a model mapped from the controller's memory file is
the model built from the seed, bit for bit; anything else is built from the seed."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from harness.model.models import ModelSpec, build_model
from harness.model.weights import WEIGHTS_FD_ENV, load_shared, write_shared
from harness.worker import stage


class WithScratchBuffer(nn.Module):
    """A module whose buffer is not part of its state: only a real build makes it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("scale", torch.full((1,), 2.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale


def spec(name: str = "resnet18", seed: int = 0, target: str | None = None) -> ModelSpec:
    return ModelSpec(name, target or f"torchvision.models.{name}", (1, 3, 32, 32), seed)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_a_mapped_model_is_the_model_built_from_its_seed(name: str) -> None:
    built = build_model(spec(name))
    fd = write_shared(spec(name), built)
    try:
        mapped = load_shared(spec(name), fd)
    finally:
        os.close(fd)
    assert mapped is not None and not mapped.training
    assert built.state_dict().keys() == mapped.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), mapped.state_dict().values()))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(built(x), mapped(x))


def test_weights_of_another_spec_or_an_unreadable_file_are_not_used() -> None:
    fd = write_shared(spec(seed=0), build_model(spec(seed=0)))
    try:
        assert load_shared(spec(seed=1), fd) is None  # another seed: other weights
        assert load_shared(spec("resnet34"), fd) is None
    finally:
        os.close(fd)
    assert load_shared(spec(), fd) is None  # closed


def test_a_model_with_state_outside_its_state_dict_is_built_from_its_seed() -> None:
    scratch = spec("scratch", target=f"{__name__}.WithScratchBuffer")
    fd = write_shared(scratch, build_model(scratch))
    try:
        assert load_shared(scratch, fd) is None
    finally:
        os.close(fd)


def test_a_worker_maps_the_inherited_weights_once_then_builds_from_the_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    fd = write_shared(spec(), build_model(spec()))
    monkeypatch.setenv(WEIGHTS_FD_ENV, str(fd))
    graph = stage.model_graph(spec())
    assert WEIGHTS_FD_ENV not in os.environ  # consumed: a kept-alive worker's next model is drawn from its seed
    with pytest.raises(OSError):
        os.fstat(fd)  # and the descriptor closed (the mapping holds the memory)
    rebuilt = stage.model_graph(spec(seed=3))  # no descriptor any more: built
    x = graph.example_input
    with torch.no_grad():
        assert torch.equal(graph.module(x), build_model(spec())(x))
        assert not torch.equal(rebuilt.module(x), graph.module(x))
