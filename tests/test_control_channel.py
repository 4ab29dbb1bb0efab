"""A board's worker under attack before authentication, over real sockets: every malformed hello gets an ERROR reply
or a closed connection, and the worker keeps serving (the same process answers a proper controller afterwards).
Then, after authentication: a model factory the board's owner did not allow is refused, naming it."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from pathlib import Path
from typing import Iterator

import pytest

from harness.worker import auth, wire
from harness.worker.wire import HEADER, MAGIC, MAX_DIMS, VERSION, Kind
from tests.boards import TOKEN, challenge_when_free, free_port, start_board, stop_board


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """One board worker that allows only the project's own models; yields (port, pid)."""
    port = free_port()
    proc = start_board(port, tmp_path_factory.mktemp("board") / "worker.log",
                       args=["--allow-models", "harness.model.zoo.*"])
    yield port, proc.pid
    stop_board(proc)


def header(kind: int, nbytes: int, dtype: int = 0, ndim: int = 0, dims: tuple[int, ...] = (),
           magic: bytes = MAGIC, version: int = VERSION) -> bytes:
    return HEADER.pack(magic, version, kind, dtype, ndim, 0, 0, *(list(dims) + [0] * MAX_DIMS)[:MAX_DIMS], nbytes)


def json_frame(payload: bytes) -> bytes:
    return header(Kind.JSON, len(payload)) + payload


ATTACKS = {
    "deep nesting (150000, oversized)": json_frame(b"[" * 150_000),
    "deep nesting within the size bound": json_frame(b'{"auth":' + b"[" * 2000 + b"]" * 2000 + b"}"),
    "huge number (100000 digits, oversized)": json_frame(b'{"auth": ' + b"9" * 100_000 + b"}"),
    "huge number within the size bound": json_frame(b'{"auth": ' + b"9" * 3000 + b"}"),
    "bad UTF-8": json_frame(b'{"auth": "\xff\xfe"}'),
    "not an object": json_frame(b"[1, 2, 3]"),
    "NaN": json_frame(b'{"auth": NaN}'),
    "the old clear-text token": json_frame(json.dumps({"token": TOKEN, "setup": {}}).encode()),
    "wrong kind: tensor": header(Kind.TENSOR, 16, dtype=1, ndim=1, dims=(4,)) + bytes(16),
    "wrong kind: ack": header(Kind.ACK, 0),
    "wrong kind: error": json_frame(b'{"reason": "x"}')[:5] + bytes([Kind.ERROR]) + json_frame(b'{"reason": "x"}')[6:],
    "unknown kind": header(77, 0),
    "bad magic": header(Kind.JSON, 2, magic=b"HTTP") + b"{}",
    "truncated header": header(Kind.JSON, 2)[:40],
    "truncated payload": json_frame(b'{"auth": "' + b"0" * 64 + b'"}')[:-10],
    "oversized frame": header(Kind.JSON, 2 ** 62),
    "answer of the wrong length": json_frame(b'{"auth": "abc"}'),
    "HTTP request": b"GET / HTTP/1.1\r\nHost: board\r\n\r\n" + bytes(64),
}


def attack(port: int, data: bytes) -> str:
    """Send ``data`` after the challenge; what the worker did: 'error: ...' or 'closed'."""
    sock, _ = challenge_when_free(port)
    with sock:
        sock.settimeout(20)
        try:
            sock.sendall(data)
            with contextlib.suppress(OSError):  # the worker may have answered and closed already (ENOTCONN)
                sock.shutdown(socket.SHUT_WR)
            reply = auth.recv_hello(sock)
        except (wire.ConnectionClosed, ConnectionResetError, BrokenPipeError):
            return "closed"
        assert reply.kind is Kind.ERROR, f"an attack got {reply.kind.name} {reply.obj}"
        return f"error: {reply.obj['reason']}"


def assert_serving(port: int, pid: int) -> None:
    sock, nonce = challenge_when_free(port)
    with sock:
        sock.settimeout(20)
        wire.send_json(sock, {"auth": auth.answer(TOKEN, nonce)})
        assert auth.recv_hello(sock).obj == {"event": "authenticated"}
    assert Path(f"/proc/{pid}").exists()


def test_malformed_hellos_leave_the_worker_serving(board: tuple[int, int]) -> None:
    port, pid = board
    outcomes = {name: attack(port, data) for name, data in ATTACKS.items()}
    assert outcomes["deep nesting within the size bound"].startswith("error") and "deep" in outcomes[
        "deep nesting within the size bound"]
    assert "number" in outcomes["huge number within the size bound"]
    assert "UTF-8" in outcomes["bad UTF-8"]
    assert "exceeds" in outcomes["oversized frame"]
    assert "wrong secret" not in " ".join(outcomes.values())  # none got as far as a MAC comparison
    assert_serving(port, pid)


def test_a_silent_client_is_dropped(board: tuple[int, int]) -> None:
    port, pid = board
    sock, _ = challenge_when_free(port)
    with sock:
        sock.settimeout(30)
        start = time.monotonic()
        assert sock.recv(1) == b""  # the worker's hello timeout, then a close
        assert time.monotonic() - start < 25
    assert_serving(port, pid)


def test_a_model_the_owner_did_not_allow_is_refused(board: tuple[int, int]) -> None:
    port, pid = board
    sock, nonce = challenge_when_free(port)
    with sock:
        sock.settimeout(30)
        wire.send_json(sock, {"auth": auth.answer(TOKEN, nonce)})
        assert auth.recv_hello(sock).obj == {"event": "authenticated"}
        wire.send_json(sock, {"setup": {"model": {"name": "evil", "target": "os.system", "input_shape": [1],
                                                  "seed": 0, "args": {"command": "touch /tmp/pwned"}}}})
        reply = wire.recv_frame(sock, 0)
    assert reply.obj["event"] == "error"
    assert "'os.system' is not allowed" in reply.obj["reason"] and "harness.model.zoo.*" in reply.obj["reason"]
    assert_serving(port, pid)


def test_struct_layout() -> None:
    assert struct.calcsize(HEADER.format) == HEADER.size
