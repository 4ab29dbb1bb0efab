"""The wire protocol: bit-exact round trips, and every malformed frame rejected with its own reason."""

from __future__ import annotations

import logging
import socket
import threading

import pytest
import torch

from harness.worker import wire
from harness.worker.wire import HEADER, MAGIC, MAX_DIMS, VERSION, ConnectionClosed, FrameError, Kind

MAX = 1 << 24


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(5), b.settimeout(5)
    yield a, b
    a.close(), b.close()


@pytest.fixture
def tcp_pair():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    server.settimeout(5)
    wire.nodelay(client), wire.nodelay(server)
    yield client, server
    client.close(), server.close()


def raw_header(kind=Kind.TENSOR, dtype=1, shape=(4,), nbytes=16, magic=MAGIC, version=VERSION, ndim=None, dims=None):
    dims = list(dims if dims is not None else shape) + [0] * (MAX_DIMS - len(dims if dims is not None else shape))
    return HEADER.pack(magic, version, kind, dtype, len(shape) if ndim is None else ndim, 7, 3, *dims, nbytes)


def sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        t = torch.randn(shape, generator=gen).to(dtype)
        if t.numel():
            t.view(-1)[0] = float("nan")  # NaN payloads must survive too
        return t
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=gen, dtype=dtype)


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bytes(wire.tensor_bytes(a)) == bytes(wire.tensor_bytes(b))


@pytest.mark.parametrize("dtype", list(wire.DTYPES.values()), ids=str)
@pytest.mark.parametrize("transport", ["pair", "tcp_pair"])
def test_round_trip_every_dtype_bit_exact(dtype, transport, request):
    a, b = request.getfixturevalue(transport)
    for seq, shape in enumerate([(), (3,), (2, 3, 5), (1, 2, 1, 2, 1, 2, 1, 3), (0, 4)]):
        t = sample(dtype, shape)
        wire.send_tensor(a, t, seq=seq, tag=40 + seq)
        frame = wire.recv_frame(b, MAX)
        assert (frame.kind, frame.seq, frame.tag) == (Kind.TENSOR, seq, 40 + seq)
        assert bits_equal(frame.tensor, t), (dtype, shape)


def test_non_contiguous_and_large_tensor_round_trip(tcp_pair):
    a, b = tcp_pair
    t = torch.arange(24, dtype=torch.float32).reshape(4, 6).t()  # a transposed view
    wire.send_tensor(a, t, 1, 1)
    assert torch.equal(wire.recv_frame(b, MAX).tensor, t)
    big = sample(torch.float32, (1, 64, 128, 128))  # 4 MiB: many partial sends and receives
    sender = threading.Thread(target=wire.send_tensor, args=(a, big, 2, 9))
    sender.start()
    frame = wire.recv_frame(b, MAX)
    sender.join()
    assert bits_equal(frame.tensor, big) and frame.tensor.is_contiguous()


def test_receive_into_a_reused_buffer(pair):
    a, b = pair
    buffer = torch.zeros(64, dtype=torch.uint8)
    t = sample(torch.float32, (2, 4))
    wire.send_tensor(a, t, 1, 1)
    got = wire.recv_frame(b, MAX, into=buffer).tensor
    assert bits_equal(got, t) and got.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
    big = sample(torch.float64, (20,))  # 160 bytes: does not fit, gets its own tensor
    wire.send_tensor(a, big, 2, 1)
    got = wire.recv_frame(b, MAX, into=buffer).tensor
    assert bits_equal(got, big) and got.untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="contiguous CPU uint8"):
        wire.recv_frame(b, MAX, into=torch.zeros(8))


def test_json_ack_error_round_trip(pair):
    a, b = pair
    wire.send_json(a, {"plan": [1, 2], "name": "cic"}, seq=4, tag=1)
    wire.send_ack(a, seq=4, tag=1)
    wire.send_error(a, "node overran its budget", seq=5)
    frames = [wire.recv_frame(b, MAX) for _ in range(3)]
    assert [f.kind for f in frames] == [Kind.JSON, Kind.ACK, Kind.ERROR]
    assert frames[0].obj == {"plan": [1, 2], "name": "cic"} and (frames[1].seq, frames[1].tag) == (4, 1)
    assert frames[2].obj == {"reason": "node overran its budget"} and frames[2].tensor is None


def test_sender_refuses_what_the_wire_cannot_carry(pair):
    a, _ = pair
    with pytest.raises(FrameError, match="no wire code"):
        wire.send_tensor(a, torch.zeros(2, dtype=torch.complex64), 0, 0)
    with pytest.raises(FrameError, match="at most 8"):
        wire.send_tensor(a, torch.zeros([1] * 9), 0, 0)
    with pytest.raises(FrameError, match="JSON object"):
        wire.send_json(a, [1, 2])


@pytest.mark.parametrize("header, reason", [
    (raw_header(magic=b"XXXX"), "bad magic"),
    (raw_header(version=VERSION + 1), "unsupported version"),
    (raw_header(kind=9), "unknown kind 9"),
    (raw_header(dtype=42), "unknown dtype code 42"),
    (raw_header(ndim=9), "ndim 9 exceeds 8"),
    (raw_header(shape=(4,), nbytes=12), "needs 16 bytes, header declares 12"),
    (raw_header(shape=(2,), dims=(2, 5)), "non-zero dims beyond ndim"),
    (raw_header(kind=Kind.ACK, dtype=0, shape=(), nbytes=5), "ACK payload of 5 bytes"),
    (raw_header(kind=Kind.JSON, dtype=0, shape=(), nbytes=wire.MAX_JSON_BYTES + 1), "JSON payload of"),
    (raw_header(kind=Kind.JSON, dtype=1, shape=(), nbytes=4), "dtype 1 and ndim 0"),
])
def test_malformed_headers_rejected_with_their_reason(pair, header, reason):
    a, b = pair
    a.sendall(header)
    with pytest.raises(FrameError, match=reason):
        wire.recv_frame(b, MAX)


def test_huge_declared_payload_rejected_before_allocating(pair, monkeypatch):
    a, b = pair
    allocations = []
    monkeypatch.setattr(torch, "empty", lambda *args, **kw: allocations.append(args))
    huge = 1 << 62
    a.sendall(raw_header(dtype=7, shape=(huge,), nbytes=huge))
    with pytest.raises(FrameError, match=f"payload of {huge} bytes exceeds max_payload {MAX}"):
        wire.recv_frame(b, MAX)
    a.sendall(raw_header(dtype=7, shape=(0, huge), nbytes=0))  # zero elements, absurd shape
    with pytest.raises(FrameError, match="dim larger than max_payload"):
        wire.recv_frame(b, MAX)
    assert allocations == []


def test_bad_json_payloads_rejected(pair):
    a, b = pair
    for payload, reason in [(b"\xff\xfe", "not UTF-8 JSON"), (b"[1,2]", "JSON list, expected an object"),
                            (b'{"x": ', "not UTF-8 JSON")]:
        a.sendall(raw_header(kind=Kind.JSON, dtype=0, shape=(), nbytes=len(payload)) + payload)
        with pytest.raises(FrameError, match=reason):
            wire.recv_frame(b, MAX)
    payload = b'{"why": 1}'
    a.sendall(raw_header(kind=Kind.ERROR, dtype=0, shape=(), nbytes=len(payload)) + payload)
    with pytest.raises(FrameError, match="no string 'reason'"):
        wire.recv_frame(b, MAX)


def test_truncated_header_and_payload_raise_connection_closed():
    a, b = socket.socketpair()
    a.sendall(raw_header()[:40])
    a.close()
    with pytest.raises(ConnectionClosed, match="40 of 88 bytes of the header") as err:
        wire.recv_frame(b, MAX)
    assert err.value.mid_frame
    b.close()

    a, b = socket.socketpair()
    a.sendall(raw_header(shape=(100,), nbytes=400) + bytes(100))
    a.close()
    with pytest.raises(ConnectionClosed, match="100 of 400 bytes of the tensor payload") as err:
        wire.recv_frame(b, MAX)
    assert err.value.mid_frame
    b.close()

    a, b = socket.socketpair()
    a.close()
    with pytest.raises(ConnectionClosed, match="peer closed the connection") as err:
        wire.recv_frame(b, MAX)
    assert not err.value.mid_frame
    b.close()


def test_server_keeps_serving_after_a_bad_connection(caplog):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    served = []

    def on_frame(conn, frame):
        served.append(frame.seq)
        wire.send_ack(conn, frame.seq, frame.tag)

    server = threading.Thread(target=wire.serve, args=(listener, on_frame, MAX, stop))
    server.start()
    try:
        def good(seq):
            with socket.create_connection(listener.getsockname(), timeout=5) as c:
                wire.send_tensor(c, torch.full((3,), float(seq)), seq, 0)
                ack = wire.recv_frame(c, 0)
                assert (ack.kind, ack.seq) == (Kind.ACK, seq)

        good(1)
        with caplog.at_level(logging.WARNING, logger="harness.worker.wire"):
            with socket.create_connection(listener.getsockname(), timeout=5) as bad:
                bad.sendall(raw_header(magic=b"EVIL"))
                reply = wire.recv_frame(bad, 0)
                assert reply.kind is Kind.ERROR and "bad magic" in reply.obj["reason"]
                with pytest.raises(ConnectionClosed):
                    wire.recv_frame(bad, 0)
            with socket.create_connection(listener.getsockname(), timeout=5) as cut:
                cut.sendall(raw_header(shape=(100,), nbytes=400) + bytes(10))
            good(2)
        assert served == [1, 2]
        assert any("bad magic" in r.getMessage() for r in caplog.records)
        assert any("10 of 400" in r.getMessage() for r in caplog.records)
    finally:
        stop.set()
        server.join(5)
        listener.close()
    assert not server.is_alive()
