"""What crosses the wire at a cut: the input as a device sends a camera's image, feature maps as split-computing
systems send them.

The sender encodes and the receiver decodes for real, and both are part of the endpoints' budgeted work. A codec
turns a float32 tensor into a *wire tensor* (what the wire protocol carries) and back:

- input codecs (the model's input, a normalised RGB image): ``raw`` (float32 as computed), ``uint8`` (the image's
  bytes), ``png`` (lossless), ``jpeg`` (lossy, ``quality``), by torchvision's image codecs;
- feature codecs (any other tensor that crosses): ``raw``, ``fp16`` (half precision), ``int8`` (per-tensor affine
  quantisation to 256 levels: the payload starts with the minimum and the step as float32, then one byte per value).

A receiver knows the shape each tensor must have (from its plan), and a payload that does not decode to it is a
:class:`CodecError`, never a tensor of another shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.io import decode_jpeg, decode_png, encode_jpeg, encode_png

from harness.model.graph import ModelGraph
from harness.model.images import normalise, to_uint8

INPUT_CODECS = ("raw", "uint8", "png", "jpeg")
FEATURE_CODECS = ("raw", "fp16", "int8")
_INT8_HEADER = 8  # float32 minimum and float32 step, little-endian


class CodecError(ValueError):
    """A payload that does not decode to the tensor the plan expects."""


@dataclass(frozen=True)
class Codec:
    """One codec (module docstring); ``quality`` is JPEG's (1-100)."""

    name: str = "raw"
    quality: int = 90

    def __post_init__(self) -> None:
        if self.name not in INPUT_CODECS + FEATURE_CODECS:
            raise ValueError(f"codec {self.name!r} is not one of {sorted(set(INPUT_CODECS + FEATURE_CODECS))}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"codec.jpeg_quality {self.quality} is not in 1..100")

    @property
    def compresses(self) -> bool:
        return self.name != "raw"

    @property
    def lossless(self) -> bool:
        """Decoding gives back the exact tensor (``uint8``/``png``: of an input made from an image's bytes)."""
        return self.name in ("raw", "uint8", "png")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The wire tensor of ``x`` (float32, on the CPU)."""
        if self.name == "raw":
            return x
        if self.name == "fp16":
            return x.to(torch.float16)
        if self.name == "int8":
            return _quantise(x)
        image = to_uint8(x)
        if self.name == "uint8":
            return image
        if image.shape[0] != 1:
            raise CodecError(f"codec {self.name} encodes one image; the input holds {image.shape[0]}")
        if self.name == "png":
            return encode_png(image[0])
        return encode_jpeg(image[0], quality=self.quality)

    def decode(self, wire: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """The float32 tensor of ``shape`` that ``wire`` encodes; :class:`CodecError` if it cannot be."""
        shape = tuple(shape)
        if self.name in ("png", "jpeg"):
            image = self._decode_image(wire, shape)
            return normalise(image.unsqueeze(0))
        expected = {"raw": torch.float32, "fp16": torch.float16, "int8": torch.uint8, "uint8": torch.uint8}[self.name]
        if wire.dtype != expected:
            raise CodecError(f"codec {self.name}: payload of dtype {wire.dtype}, expected {expected}")
        if self.name == "int8":
            return _dequantise(wire, shape)
        if tuple(wire.shape) != shape:
            raise CodecError(f"codec {self.name}: payload of shape {list(wire.shape)}, expected {list(shape)}")
        if self.name == "uint8":
            return normalise(wire)
        return wire.to(torch.float32)

    def _decode_image(self, wire: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if wire.dtype != torch.uint8 or wire.dim() != 1:
            raise CodecError(f"codec {self.name}: payload must be bytes (uint8, 1-D), got {wire.dtype} "
                             f"{list(wire.shape)}")
        try:
            image = decode_png(wire) if self.name == "png" else decode_jpeg(wire)
        except RuntimeError as exc:
            raise CodecError(f"codec {self.name}: payload does not decode ({str(exc).splitlines()[0][:200]})") from exc
        if len(shape) != 4 or shape[0] != 1 or tuple(image.shape) != tuple(shape[1:]):
            raise CodecError(f"codec {self.name}: decoded image {list(image.shape)}, expected {list(shape[1:])}")
        return image

    def wire_bytes(self, shape: tuple[int, ...]) -> int | None:
        """Payload bytes of a float32 tensor of ``shape``; None where they depend on the content (png, jpeg)."""
        numel = math.prod(shape)
        return {"raw": 4 * numel, "fp16": 2 * numel, "int8": _INT8_HEADER + numel, "uint8": numel}.get(self.name)

    def error_bound(self, x: torch.Tensor) -> float:
        """The largest absolute error decoding may leave on ``x`` (inf for jpeg, whose error depends on the image)."""
        if self.lossless:
            return 0.0 if self.name == "raw" else 1e-5  # a normalised image's bytes: float rounding only
        if self.name == "fp16":
            return float(x.abs().max()) * 2.0 ** -11 if x.numel() else 0.0
        if self.name == "int8":
            return (float(x.max() - x.min()) / 255.0) * 0.5 + 1e-6 * float(x.abs().max()) if x.numel() else 0.0
        return math.inf


def _quantise(x: torch.Tensor) -> torch.Tensor:
    flat = x.detach().reshape(-1).to(torch.float32)
    lo, hi = (float(v) for v in torch.aminmax(flat)) if flat.numel() else (0.0, 0.0)
    step = (hi - lo) / 255.0 if hi > lo else 1.0
    levels = flat.sub(lo).mul_(1.0 / step).round_().clamp_(0, 255).to(torch.uint8)
    header = torch.from_numpy(np.array([lo, step], dtype="<f4").view(np.uint8).copy())
    return torch.cat([header, levels])


def _dequantise(wire: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    numel = math.prod(shape)
    if wire.dim() != 1 or wire.numel() != _INT8_HEADER + numel:
        raise CodecError(f"codec int8: payload of {wire.numel()} bytes, expected {_INT8_HEADER + numel} for "
                         f"shape {list(shape)}")
    lo, step = np.frombuffer(wire[:_INT8_HEADER].numpy().tobytes(), dtype="<f4")
    if not (math.isfinite(lo) and math.isfinite(step) and step > 0):
        raise CodecError(f"codec int8: minimum {lo} and step {step} must be finite, the step positive")
    return wire[_INT8_HEADER:].to(torch.float32).mul_(float(step)).add_(float(lo)).reshape(shape)


@dataclass(frozen=True)
class Codecs:
    """The codecs of one run: one for the model's input, one for every other tensor that crosses."""

    input: Codec = Codec()
    features: Codec = Codec()

    @classmethod
    def of(cls, input: str = "raw", features: str = "raw", jpeg_quality: int = 90) -> "Codecs":
        if input not in INPUT_CODECS:
            raise ValueError(f"codec.input {input!r} is not one of {list(INPUT_CODECS)}")
        if features not in FEATURE_CODECS:
            raise ValueError(f"codec.features {features!r} is not one of {list(FEATURE_CODECS)}")
        return cls(Codec(input, jpeg_quality), Codec(features, jpeg_quality))

    @property
    def compresses(self) -> bool:
        return self.input.compresses or self.features.compresses

    def for_node(self, graph: ModelGraph, name: str) -> Codec:
        """The codec of node ``name``'s output when it crosses: the input's, or the features' for a float32 tensor
        (anything else, e.g. integer indices, crosses raw)."""
        node = graph[name]
        if name == graph.input_name:
            return self.input
        is_float32 = node.out_shape is not None and node.out_bytes == 4 * math.prod(node.out_shape)
        return self.features if is_float32 else Codec()

    @property
    def label(self) -> str:
        """How the records name them: 'raw', 'jpeg90', 'jpeg90+int8', 'raw+fp16'."""
        first = f"jpeg{self.input.quality}" if self.input.name == "jpeg" else self.input.name
        return first if not self.features.compresses else f"{first}+{self.features.name}"
