"""What a tensor costs to cross a cut under the run's codecs: its bytes on the wire, the device's time to encode it
and the server's to decode it.

Codec times are measured here, on this machine, on tensors of each crossing candidate's shape (the input codec on
the run's real inputs), then scaled to each endpoint like any node: by how much slower or faster the endpoint's
profile runs the whole model than this machine's measured profile. Bytes are exact for the fixed-size codecs and,
for PNG and JPEG, the mean over the run's photographs.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from harness.model.codecs import Codec, Codecs
from harness.model.graph import ModelGraph
from harness.model.images import PHOTOGRAPHS
from harness.model.models import ModelSpec, make_input

REPEATS = 7


@dataclass(frozen=True)
class WireCosts:
    """Per node that can cross: payload bytes if cut, and ms to encode (device) and decode (server) it."""

    out_bytes: dict[str, int]
    encode_ms: dict[str, float]
    decode_ms: dict[str, float]


def median_ms(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    """The median real milliseconds of ``repeats`` calls of ``fn``, after an untimed first (allocation, tables)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(times)


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=1024)
def feature_codec_ms(codec: Codec, shape: tuple[int, ...], threads: int) -> tuple[float, float]:
    """(encode, decode) ms here, with ``threads`` torch threads, of a float32 tensor of ``shape`` (fp16 and int8
    cost the same for any content)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    wire = codec.encode(x)
    with torch.no_grad(), _threads(threads):
        return median_ms(lambda: codec.encode(x)), median_ms(lambda: codec.decode(wire, shape))


def input_codec_costs(codec: Codec, spec: ModelSpec) -> tuple[float, float, float]:
    """(mean payload bytes, encode ms, decode ms) here, over the run's first inputs (every photograph once);
    measured once per codec, input and thread count in a process (a sweep's jobs share them)."""
    return _input_codec_costs(codec, spec.input_shape, spec.input, spec.seed, torch.get_num_threads())


@functools.lru_cache(maxsize=64)
def _input_codec_costs(codec: Codec, shape: tuple[int, ...], kind: str, seed: int,
                       threads: int) -> tuple[float, float, float]:
    spec = ModelSpec("input", "", shape, seed, input=kind)  # make_input reads only these fields
    inputs = [make_input(spec, i) for i in range(len(PHOTOGRAPHS) if kind == "natural" else 1)]
    sizes, encode, decode = [], [], []
    for x in inputs:
        wire = codec.encode(x)
        sizes.append(wire.numel() * wire.element_size())
        encode.append(median_ms(lambda: codec.encode(x)))
        decode.append(median_ms(lambda: codec.decode(wire, tuple(x.shape))))
    return statistics.fmean(sizes), statistics.fmean(encode), statistics.fmean(decode)


def endpoint_scale(profile_ms: dict[str, float], local_ms: dict[str, float]) -> float:
    """How much longer the endpoint takes than this machine for the whole model (1 where nothing is known)."""
    here = sum(local_ms.values())
    return sum(profile_ms.values()) / here if here > 0 else 1.0


def wire_costs(graph: ModelGraph, codecs: Codecs, device_scale: float, server_scale: float,
               threads: int = 1) -> WireCosts:
    """Every node's crossing cost under ``codecs``, the codecs timed with the workers' ``threads``; raw tensors cost
    their bytes and no codec time."""
    out_bytes, encode_ms, decode_ms = {}, {}, {}
    for name in graph.order:
        node = graph[name]
        if node.op == "output":
            continue
        codec = codecs.for_node(graph, name)
        if not codec.compresses or node.out_shape is None or not node.out_bytes:
            out_bytes[name], encode_ms[name], decode_ms[name] = node.out_bytes, 0.0, 0.0
            continue
        if name == graph.input_name:
            with _threads(threads):
                nbytes, enc, dec = input_codec_costs(codec, graph.spec)
        else:
            enc, dec = feature_codec_ms(codec, node.out_shape, threads)
            nbytes = codec.wire_bytes(node.out_shape)
        out_bytes[name] = int(round(nbytes))
        encode_ms[name], decode_ms[name] = enc * device_scale, dec * server_scale
    return WireCosts(out_bytes, encode_ms, decode_ms)
