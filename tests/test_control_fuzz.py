"""Property-based fuzzing of what a worker parses before and after authentication: the frame decoder, the
handshake (the controller's answer to the challenge, as the gate buffers it from any chunking of the bytes) and the
sealed frames that follow it, driven in-process. Nothing but ``FrameError`` / ``ConnectionClosed`` / ``AuthError``
may come out, no buffer larger than the stated bounds may be asked for, and no altered sealed frame is accepted.

13000 cases in all (the five tests below), in seconds: no subprocesses.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torch

from harness.worker import auth, wire
from harness.worker.gate import _NeedMore, _Pending
from harness.worker.sealed import SealedSocket
from harness.worker.wire import HEADER, MAGIC, MAX_DIMS, VERSION, ConnectionClosed, FrameError, Kind

MAX_PAYLOAD = 4096  # tensor bound for these cases
MAX_JSON = 2048
FUZZ = settings(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

def random_json(rng: random.Random, depth: int = 0) -> object:
    """A random JSON value (seeded: cheaper than drawing every leaf through hypothesis, and it replays)."""
    pick = rng.randrange(8 if depth < 4 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick == 2:
        return rng.randrange(-(2 ** 70), 2 ** 70)
    if pick == 3:
        return rng.uniform(-1e308, 1e308) * rng.random() ** 50
    if pick in (4, 5):
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x10FFFF)])) for _ in range(rng.randrange(12)))
    if pick == 6:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(random_json(rng, 4)): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


json_objects = st.builds(lambda seed: random_json(random.Random(seed), 3) or {}, st.integers(0, 2 ** 32)).map(
    lambda v: v if isinstance(v, dict) else {"v": v})

# Payloads an attacker would try first: deep nesting, huge numbers, bad UTF-8, constants JSON does not have.
nasty_payloads = st.sampled_from([
    b"[" * 3000, b'{"a":' * 1000 + b"1" + b"}" * 1000, b'{"n": ' + b"9" * 1500 + b"}", b'{"x": 1e99999}',
    b'{"x": NaN}', b'{"x": -Infinity}', b"\xff\xfe\xfd", b'{"a": "\xed\xa0\x80"}', b'{"a": "\\ud800"}', b"",
    b'{"a": "' + b"\\" * 999 + b'"}', b'"just a string"', b"[1, 2]", b"{" + b'"k": [' * 40 + b"]" * 40 + b"}",
])


def header(kind: int, dtype: int, ndim: int, dims: list[int], nbytes: int, magic: bytes = MAGIC,
           version: int = VERSION, seq: int = 0, tag: int = 0) -> bytes:
    dims = (dims + [0] * MAX_DIMS)[:MAX_DIMS]
    return HEADER.pack(magic, version, kind, dtype, ndim, seq, tag, *dims, nbytes)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """A well-formed frame of any kind, or one with a field drawn from its edge values."""
    kind = draw(st.sampled_from([1, 2, 3, 4]) | st.integers(0, 255))
    if kind in (2, 4):
        obj = dict(draw(json_objects))
        if kind == 4:
            obj["reason"] = draw(st.text(max_size=30) | st.integers())
        payload = draw(nasty_payloads | st.just(json.dumps(obj).encode()))
        return header(kind, 0, 0, [], len(payload)) + payload
    if kind == 1:
        dtype = draw(st.sampled_from(list(wire.DTYPES)) | st.integers(0, 255))
        ndim = draw(st.integers(0, 10))
        dims = draw(st.lists(st.integers(0, 8) | st.sampled_from([2 ** 32, 2 ** 63, 2 ** 64 - 1]),
                             min_size=0, max_size=MAX_DIMS))
        itemsize = wire.DTYPES[dtype].itemsize if dtype in wire.DTYPES else 1
        count = 1
        for d in dims[:ndim]:
            count *= d
        nbytes = draw(st.just(min(count * itemsize, 2 ** 64 - 1)) | st.integers(0, 2 ** 64 - 1))
        body = bytes(min(nbytes, MAX_PAYLOAD + 8))
        return header(1, dtype, ndim, dims, nbytes) + body
    return header(kind, 0, 0, [], draw(st.just(0) | st.integers(0, 2 ** 64 - 1)))


def mutate(data: bytes, seed: int) -> bytes:
    """Up to four random bytes overwritten, then maybe a truncation or a few junk bytes (seeded: the case replays)."""
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(rng.randrange(5) if out else 0):
        out[rng.randrange(len(out))] = rng.randrange(256)
    if rng.random() < 0.3:
        out = out[:rng.randrange(len(out) + 1)]
    if rng.random() < 0.2:
        out += rng.randbytes(rng.randrange(1, 9))
    return bytes(out)


def mutated(source: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(mutate, source, st.integers(0, 2 ** 32))


class Recording:
    """Reads from bytes in memory as a socket would, and remembers the largest buffer the decoder asked it to fill."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset, self.largest = data, 0, 0

    def __call__(self, view: memoryview, what: str, started: bool) -> None:
        self.largest = max(self.largest, len(view))
        chunk = self.data[self.offset:self.offset + len(view)]
        view[:len(chunk)] = chunk
        self.offset += len(chunk)
        if len(chunk) < len(view):
            raise ConnectionClosed(f"short {what}", mid_frame=started or bool(chunk))


def decode_within_bounds(data: bytes, max_payload: int, max_json: int) -> None:
    reader = Recording(data)
    try:
        frame = wire.read_frame(reader, max_payload, max_json)
    except (FrameError, ConnectionClosed):
        frame = None
    assert reader.largest <= max(HEADER.size, max_payload, max_json), reader.largest
    if frame is not None and frame.kind in (Kind.JSON, Kind.ERROR):
        assert isinstance(frame.obj, dict)


@settings(FUZZ, max_examples=5000)
@given(mutated(frames()))
def test_decoder_on_mutated_frames(data: bytes) -> None:
    decode_within_bounds(data, MAX_PAYLOAD, MAX_JSON)


@settings(FUZZ, max_examples=2000)
@given(st.binary(min_size=0, max_size=HEADER.size + 64) | st.builds(lambda h, p: h + p, st.binary(
    min_size=HEADER.size, max_size=HEADER.size), st.binary(max_size=64)))
def test_decoder_on_random_bytes(data: bytes) -> None:
    decode_within_bounds(data, MAX_PAYLOAD, MAX_JSON)


def answer_frame(obj: dict) -> bytes:
    payload = json.dumps(obj).encode()
    return header(Kind.JSON, 0, 0, [], len(payload)) + payload


hellos = st.one_of(
    st.builds(lambda nonce, mac: answer_frame({"nonce": nonce, "auth": mac}),
              st.text(alphabet="0123456789abcdef", min_size=63, max_size=65),
              st.text(alphabet="0123456789abcdefABCDEF", max_size=70)),
    st.builds(lambda key, obj: answer_frame({key: obj}), st.sampled_from(["auth", "nonce", "token", "setup", "hello"]),
              json_objects),
    st.builds(lambda p: header(Kind.JSON, 0, 0, [], len(p)) + p, nasty_payloads),
    st.builds(lambda n: header(Kind.JSON, 0, 0, [], n), st.sampled_from([auth.MAX_HELLO_BYTES + 1, 2 ** 40])),
    st.builds(lambda: header(Kind.TENSOR, 1, 1, [4], 16) + bytes(16)),
)


@settings(FUZZ, max_examples=3000)
@given(mutated(hellos))
def test_hello_parser(data: bytes) -> None:
    """The worker's whole pre-authentication parse: bounded decode, then the answer's shape, then the proof."""
    reader = Recording(data)
    try:
        frame = wire.read_frame(reader, 0, auth.MAX_HELLO_BYTES)
        auth.WorkerHandshake("the secret of the board").on_answer(frame)
        raise AssertionError("a made-up answer passed")
    except (FrameError, ConnectionClosed, auth.AuthError):
        pass
    assert reader.largest <= max(HEADER.size, auth.MAX_HELLO_BYTES)


@settings(FUZZ, max_examples=2000)
@given(mutated(hellos), st.lists(st.integers(1, 200), min_size=1, max_size=40))
def test_the_gate_buffers_a_hello_from_any_chunking(data: bytes, chunks: list[int]) -> None:
    """As the board's gate meets a hello: in pieces, asking only for what the frame still lacks, and bounded."""
    handshake = auth.WorkerHandshake("the secret of the board")
    pending = _Pending(sock=None, peer=None, handshake=handshake, deadline=0.0)  # type: ignore[arg-type]
    offset, sizes = 0, iter(chunks * (len(data) + 1))
    while offset < len(data):
        wanted = pending.wanted()
        assert 0 < wanted <= HEADER.size + auth.MAX_HELLO_BYTES, wanted
        piece = data[offset:offset + min(wanted, next(sizes))]
        pending.buffer += piece
        offset += len(piece)
        try:
            frame = pending.frame(auth.MAX_HELLO_BYTES)
        except _NeedMore:
            continue
        except FrameError:
            return
        try:
            pending.handshake.on_answer(frame)
            raise AssertionError("a made-up answer passed")
        except (FrameError, auth.AuthError):
            return


def sealed_stream(seed: int) -> tuple[bytes, list[wire.Frame]]:
    """Three frames as a controller seals them (JSON, tensor, error), and the frames themselves."""
    rng = random.Random(seed)
    tensor = torch.arange(rng.randrange(1, 9), dtype=torch.float32)
    frames_sent = [wire.Frame(Kind.JSON, 0, 0, obj={"cmd": "infer", "seq": rng.randrange(100)}),
                   wire.Frame(Kind.TENSOR, 3, 1, tensor=tensor),
                   wire.Frame(Kind.ERROR, 0, 0, obj={"reason": "x" * rng.randrange(5)})]
    a, b = socket.socketpair()
    with a, b:
        sender = SealedSocket(a, KEY, b"")
        sender.send_json(frames_sent[0].obj)
        sender.send_tensor(tensor, 3, 1)
        sender.send_error(frames_sent[2].obj["reason"])
        a.shutdown(socket.SHUT_WR)
        data = b"".join(iter(lambda: b.recv(1 << 16), b""))
    return data, frames_sent


KEY = os.urandom(32)


def same(got: wire.Frame, sent: wire.Frame) -> bool:
    if (got.kind, got.seq, got.tag) != (sent.kind, sent.seq, sent.tag):
        return False
    return got.obj == sent.obj if sent.tensor is None else torch.equal(got.tensor, sent.tensor)


@settings(FUZZ, max_examples=1000)
@given(st.integers(0, 2 ** 32), st.integers(0, 2 ** 32), st.sampled_from(["mutate", "drop", "swap", "replay"]))
def test_no_altered_sealed_frame_is_accepted(seed: int, mutation: int, how: str) -> None:
    """Bytes changed, a frame dropped, two swapped or one replayed: every frame the receiver accepts is one that was
    sent, in its place; the first alteration ends the session."""
    data, sent = sealed_stream(seed)
    sizes = [len(part) for part in split_frames(data)]
    parts = [data[sum(sizes[:i]):sum(sizes[:i + 1])] for i in range(len(sizes))]
    if how == "mutate":
        altered = mutate(data, mutation)
    elif how == "drop":
        altered = b"".join(p for i, p in enumerate(parts) if i != mutation % 3)
    elif how == "swap":
        altered = parts[1] + parts[0] + parts[2]
    else:
        altered = parts[0] + parts[0] + parts[1] + parts[2]
    a, b = socket.socketpair()
    with a, b:
        a.sendall(altered)
        a.shutdown(socket.SHUT_WR)
        receiver = SealedSocket(b, b"", KEY)
        accepted = []
        try:
            while True:
                accepted.append(receiver.recv_frame(max_payload=1 << 10))
        except (FrameError, ConnectionClosed):
            pass
    assert all(same(got, want) for got, want in zip(accepted, sent)) and len(accepted) <= len(sent)
    if not altered.startswith(data):  # (junk after the last frame alters none of them)
        assert len(accepted) < len(sent)


def split_frames(data: bytes) -> list[bytes]:
    """A sealed stream cut into its frames (header, payload, MAC)."""
    out, offset = [], 0
    while offset < len(data):
        nbytes = HEADER.unpack(data[offset:offset + HEADER.size])[-1]
        end = offset + HEADER.size + nbytes + 32
        out.append(data[offset:end])
        offset = end
    return out


def test_bounds_hold_on_the_frames_of_the_issue() -> None:
    """The two frames that used to kill a board's worker, at the post-authentication bound (1 MiB)."""
    for payload, reason in [(b"[" * 150_000, "nests 150000 deep"), (b'{"n": ' + b"7" * 100_000 + b"}", "number")]:
        data = header(Kind.JSON, 0, 0, [], len(payload)) + payload
        try:
            wire.decode_frame(data, 0)
        except FrameError as err:
            assert reason in err.reason
        else:
            raise AssertionError("accepted")
    assert wire.decode_frame(answer_frame({"a": [[[1.5e300, -2 ** 62, "[[[{"]]]}), 0).obj == {
        "a": [[[1.5e300, -2 ** 62, "[[[{"]]]}
    assert struct.calcsize("<4sBBBBII8QQ") == HEADER.size
