"""The wire protocol between workers: a fixed binary header, then raw bytes. Nothing received is unpickled or run.

Header (little-endian, ``HEADER.size`` = 88 bytes): magic ``b"SPLB"``, version (u8), kind (u8), dtype code (u8),
ndim (u8), seq (u32, the inference index), tag (u32, which tensor or slot), shape (8 x u64, unused dims 0),
payload length (u64). The payload follows: a tensor's bytes in C order (little-endian), a UTF-8 JSON object, or
nothing (ACK); on a control connection each frame is followed by a MAC (``harness.worker.sealed``). Every field is
checked and the payload bounded before a byte of it is allocated; a JSON payload's nesting depth and number lengths
are bounded before it is parsed, so no frame can make the parser recurse or compute without bound (``FrameError`` is
all that comes out).
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import struct
import sys
import threading
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

MAGIC = b"SPLB"
VERSION = 2  # 2: mutual authentication and MAC-sealed control frames (harness.worker.auth, .sealed)
MAX_DIMS = 8
MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 32  # setups nest a handful of levels; the parser recurses once per level
MAX_NUMBER_CHARS = 40  # enough for any int64 or float repr; a 100000-digit number costs quadratic time
HEADER = struct.Struct(f"<4sBBBBII{MAX_DIMS}QQ")


class Kind(IntEnum):
    TENSOR = 1  # raw tensor bytes
    JSON = 2  # a UTF-8 JSON object
    ACK = 3  # no payload: acknowledges (seq, tag)
    ERROR = 4  # a JSON object with a "reason"


# Codes are part of the protocol: never renumber, only append.
DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.float16, 3: torch.bfloat16, 4: torch.float64,
    5: torch.int64, 6: torch.int32, 7: torch.uint8, 8: torch.bool,
}
DTYPE_CODES: dict[torch.dtype, int] = {dtype: code for code, dtype in DTYPES.items()}
NO_DTYPE = 0


class FrameError(ValueError):
    """A frame that breaks the protocol; ``reason`` says which rule."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ConnectionClosed(ConnectionError):
    """The peer closed the connection; ``mid_frame`` is False when it closed cleanly between frames."""

    def __init__(self, message: str, mid_frame: bool):
        super().__init__(message)
        self.mid_frame = mid_frame


@dataclass
class Frame:
    kind: Kind
    seq: int
    tag: int
    tensor: torch.Tensor | None = None
    obj: dict[str, Any] | None = None


def _check_byteorder() -> None:
    # Tensor bytes travel as the host lays them out; every board we target is little-endian.
    if sys.byteorder != "little":
        raise FrameError(f"the wire carries little-endian tensors; this host is {sys.byteorder}-endian")


def _header(kind: Kind, seq: int, tag: int, nbytes: int, dtype: int = NO_DTYPE, shape: tuple[int, ...] = ()) -> bytes:
    return HEADER.pack(MAGIC, VERSION, kind, dtype, len(shape), seq, tag,
                       *shape, *([0] * (MAX_DIMS - len(shape))), nbytes)


def _sendall(sock: socket.socket, parts: list[memoryview | bytes]) -> None:
    """Gather-write header and payload in as few syscalls as the kernel allows (no concatenation copy)."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a CPU tensor in C order, without a copy when it is already contiguous."""
    flat = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def tensor_parts(tensor: torch.Tensor, seq: int, tag: int) -> list[bytes | memoryview]:
    """A tensor frame as header and payload, ready to be gathered onto a socket."""
    _check_byteorder()
    if tensor.dtype not in DTYPE_CODES:
        raise FrameError(f"dtype {tensor.dtype} has no wire code; accepted: {list(DTYPE_CODES)}")
    if tensor.dim() > MAX_DIMS:
        raise FrameError(f"tensor has {tensor.dim()} dims; the wire carries at most {MAX_DIMS}")
    payload = tensor_bytes(tensor)
    return [_header(Kind.TENSOR, seq, tag, payload.nbytes, DTYPE_CODES[tensor.dtype], tuple(tensor.shape)), payload]


def object_parts(kind: Kind, obj: dict[str, Any], seq: int = 0, tag: int = 0) -> list[bytes | memoryview]:
    """A JSON or ERROR frame as header and payload."""
    if not isinstance(obj, dict):
        raise FrameError(f"a {kind.name} frame carries a JSON object, not {type(obj).__name__}")
    payload = json.dumps(obj, separators=(",", ":")).encode()
    if len(payload) > MAX_JSON_BYTES:
        raise FrameError(f"JSON of {len(payload)} bytes exceeds the {MAX_JSON_BYTES}-byte bound")
    return [_header(kind, seq, tag, len(payload)), payload]


def send_parts(sock: socket.socket, parts: list[bytes | memoryview]) -> int:
    """Put a frame's parts on the socket; returns the bytes sent."""
    _sendall(sock, parts)
    return sum(memoryview(p).nbytes for p in parts)


def send_tensor(sock: socket.socket, tensor: torch.Tensor, seq: int, tag: int) -> int:
    """Send one tensor frame; returns the bytes put on the socket (header included)."""
    return send_parts(sock, tensor_parts(tensor, seq, tag))


def send_json(sock: socket.socket, obj: dict[str, Any], seq: int = 0, tag: int = 0) -> int:
    return send_parts(sock, object_parts(Kind.JSON, obj, seq, tag))


def send_error(sock: socket.socket, reason: str, seq: int = 0, tag: int = 0) -> int:
    return send_parts(sock, object_parts(Kind.ERROR, {"reason": reason}, seq, tag))


def send_ack(sock: socket.socket, seq: int, tag: int = 0) -> int:
    header = _header(Kind.ACK, seq, tag, 0)
    sock.sendall(header)
    return len(header)


def _recv_exact(sock: socket.socket, view: memoryview, what: str, started: bool) -> None:
    got, total = 0, len(view)
    while got < total:
        n = sock.recv_into(view[got:])
        if n == 0:
            mid = started or got > 0
            raise ConnectionClosed(f"peer closed after {got} of {total} bytes of the {what}"
                                   if mid else "peer closed the connection", mid_frame=mid)
        got += n


def _validate(magic: bytes, version: int, kind: int, dtype: int, ndim: int, shape: tuple[int, ...], nbytes: int,
              max_payload: int, max_json: int) -> Kind:
    """Every rule a header must pass before anything is allocated for its payload."""
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise FrameError(f"unsupported version {version}, this side speaks {VERSION}")
    if kind not in Kind._value2member_map_:
        raise FrameError(f"unknown kind {kind}; known: {[f'{k.value}={k.name}' for k in Kind]}")
    kind = Kind(kind)
    if ndim > MAX_DIMS:
        raise FrameError(f"ndim {ndim} exceeds {MAX_DIMS}")
    if any(shape[ndim:]):
        raise FrameError(f"shape {shape} has non-zero dims beyond ndim {ndim}")
    if kind is not Kind.TENSOR:
        if dtype != NO_DTYPE or ndim:
            raise FrameError(f"a {kind.name} frame has dtype {dtype} and ndim {ndim}; both must be 0")
        bound = 0 if kind is Kind.ACK else max_json
        if nbytes > bound:
            raise FrameError(f"{kind.name} payload of {nbytes} bytes exceeds the {bound}-byte bound")
        return kind
    if dtype not in DTYPES:
        raise FrameError(f"unknown dtype code {dtype}; known: {{{', '.join(f'{c}: {d}' for c, d in DTYPES.items())}}}")
    if nbytes > max_payload:
        raise FrameError(f"payload of {nbytes} bytes exceeds max_payload {max_payload}")
    dims = shape[:ndim]
    if any(d > max(max_payload, 1) for d in dims):
        raise FrameError(f"shape {dims} has a dim larger than max_payload {max_payload}")
    expected = math.prod(dims) * DTYPES[dtype].itemsize
    if expected != nbytes:
        raise FrameError(f"shape {dims} of {DTYPES[dtype]} needs {expected} bytes, header declares {nbytes}")
    return kind


ReadInto = Callable[[memoryview, str, bool], None]  # fill the view exactly, or raise ConnectionClosed
Check = Callable[[bytes, memoryview], None]  # a sealed frame's MAC check: header and payload, before decoding


def read_frame(read_into: ReadInto, max_payload: int, max_json: int = MAX_JSON_BYTES,
               into: torch.Tensor | None = None, check: Check | None = None) -> Frame:
    """Read and validate one frame through ``read_into``; the one decoder behind :func:`recv_frame` and
    :func:`decode_frame`. Raises ``FrameError`` (bad frame) or ``ConnectionClosed`` (stream ended).

    ``check`` sees the raw header and payload once both are read and before the payload is decoded (a sealed
    connection verifies its MAC there, so nothing a MAC does not cover is ever parsed)."""
    if into is not None and not (into.dtype == torch.uint8 and into.device.type == "cpu" and into.is_contiguous()):
        raise ValueError(f"into must be a contiguous CPU uint8 tensor, got {into.dtype} on {into.device}")
    _check_byteorder()
    raw = bytearray(HEADER.size)
    read_into(memoryview(raw), "header", False)
    magic, version, kind, dtype, ndim, seq, tag, *rest = HEADER.unpack(raw)
    shape, nbytes = tuple(rest[:MAX_DIMS]), rest[MAX_DIMS]
    kind = _validate(magic, version, kind, dtype, ndim, shape, nbytes, max_payload, max_json)
    if kind is Kind.ACK:
        if check is not None:
            check(bytes(raw), memoryview(b""))
        return Frame(kind, seq, tag)
    if kind is Kind.TENSOR:
        fits = into is not None and into.numel() >= nbytes
        flat = into.reshape(-1)[:nbytes] if fits else torch.empty(nbytes, dtype=torch.uint8)
        read_into(memoryview(flat.numpy()), "tensor payload", True)
        if check is not None:
            check(bytes(raw), memoryview(flat.numpy()))
        return Frame(kind, seq, tag, tensor=flat.view(DTYPES[dtype]).reshape(shape[:ndim]))
    payload = bytearray(nbytes)
    read_into(memoryview(payload), f"{kind.name} payload", True)
    if check is not None:
        check(bytes(raw), memoryview(payload))
    obj = parse_json(bytes(payload), kind.name)
    if kind is Kind.ERROR and not isinstance(obj.get("reason"), str):
        raise FrameError("ERROR payload has no string 'reason'")
    return Frame(kind, seq, tag, obj=obj)


def recv_exact(sock: socket.socket) -> ReadInto:
    """A :data:`ReadInto` over a socket."""
    return lambda view, what, started: _recv_exact(sock, view, what, started)


def recv_frame(sock: socket.socket, max_payload: int, max_json: int = MAX_JSON_BYTES,
               into: torch.Tensor | None = None) -> Frame:
    """Receive and validate one frame. Raises ``FrameError`` (bad frame) or ``ConnectionClosed`` (peer gone).

    ``into``: a contiguous CPU uint8 tensor to receive a tensor payload into when it fits (else a fresh one is
    allocated); the frame's tensor is then a view of it, valid until the next receive into it. At gigabit rates
    this saves faulting in fresh pages (~20 ms for 50 MB here).
    """
    return read_frame(recv_exact(sock), max_payload, max_json, into)


def decode_frame(data: bytes, max_payload: int, max_json: int = MAX_JSON_BYTES) -> Frame:
    """Decode one frame held in memory, with the exact rules of :func:`recv_frame`; bytes beyond the frame are an
    error. (In-process checks and fuzzing drive the decoder through this, without sockets.)"""
    offset = 0

    def read_into(view: memoryview, what: str, started: bool) -> None:
        nonlocal offset
        chunk = data[offset:offset + len(view)]
        view[:len(chunk)] = chunk
        offset += len(chunk)
        if len(chunk) < len(view):
            mid = started or len(chunk) > 0
            raise ConnectionClosed(f"peer closed after {len(chunk)} of {len(view)} bytes of the {what}"
                                   if mid else "peer closed the connection", mid_frame=mid)

    frame = read_frame(read_into, max_payload, max_json)
    if offset != len(data):
        raise FrameError(f"{len(data) - offset} bytes follow the frame")
    return frame


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)
_NUMBER = re.compile(rb"[-+0-9.eE]{%d,}" % (MAX_NUMBER_CHARS + 1))


def _check_shape(payload: bytes, what: str) -> None:
    """Bound nesting depth and number length before the parser sees the bytes (strings are skipped)."""
    bare = _STRING.sub(b'""', payload)
    marks = np.frombuffer(bare, np.uint8)
    steps = np.isin(marks, _OPEN).astype(np.int32) - np.isin(marks, _CLOSE).astype(np.int32)
    depth = int(np.cumsum(steps).max(initial=0))
    if depth > MAX_JSON_DEPTH:
        raise FrameError(f"{what} payload nests {depth} deep; the bound is {MAX_JSON_DEPTH}")
    if _NUMBER.search(bare):
        raise FrameError(f"{what} payload holds a number longer than {MAX_NUMBER_CHARS} characters")


def _no_constant(name: str) -> Any:
    raise FrameError(f"JSON constant {name} is not accepted")


def parse_json(payload: bytes, what: str = "JSON") -> dict[str, Any]:
    """Parse an untrusted JSON object: UTF-8, bounded depth and numbers, no NaN/Infinity; ``FrameError`` otherwise."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FrameError(f"{what} payload is not UTF-8 JSON: {err}") from None
    _check_shape(payload, what)
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except FrameError:
        raise
    except (json.JSONDecodeError, RecursionError, ValueError) as err:  # depth/number bounds make the last two moot
        raise FrameError(f"{what} payload is not UTF-8 JSON: {type(err).__name__}: {err}") from None
    if not isinstance(obj, dict):
        raise FrameError(f"{what} payload is a JSON {type(obj).__name__}, expected an object")
    return obj


def nodelay(sock: socket.socket) -> socket.socket:
    """Small frames (ACKs, headers) must not wait for Nagle's algorithm."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def serve(listener: socket.socket, on_frame: Callable[[socket.socket, Frame], None], max_payload: int,
          stop: threading.Event | None = None) -> None:
    """Serve connections one after another until ``stop`` is set; a bad frame ends only its own connection.

    The offending peer gets an ERROR frame with the reason (best effort), the reason is logged, and the loop goes
    on accepting. ``listener`` should have a timeout so that ``stop`` is noticed.
    """
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            conn, peer = listener.accept()
        except TimeoutError:
            continue
        with conn:
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                nodelay(conn)
            try:
                while not stop.is_set():
                    on_frame(conn, recv_frame(conn, max_payload))
            except FrameError as err:
                log.warning("closing connection from %s: bad frame: %s", peer, err.reason)
                try:
                    send_error(conn, err.reason)
                except OSError:
                    pass
            except ConnectionClosed as err:
                (log.warning if err.mid_frame else log.debug)("connection from %s ended: %s", peer, err)
            except OSError as err:
                log.warning("connection from %s failed: %s", peer, err)
