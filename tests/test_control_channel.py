"""A board's worker under attack, over real sockets, as a peer on the same network would try it.

Before authentication: every malformed hello gets an ERROR reply or a closed connection, and silent or trickling
peers are dropped at the handshake deadline without delaying a real controller (control port and data port). The
handshake: a fake worker cannot pass the controller's check, and one that relays a real board's handshake can
speak for neither end (every frame after it is sealed). After authentication: the setup's model is checked where it
is built (one field, its real home, no downloads), and the board's own payload bound holds. Throughout, the same
worker process keeps serving a proper controller."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from harness.worker import auth, wire
from harness.worker.gate import HANDSHAKE_DEADLINE_S
from harness.worker.sealed import IntegrityError, SealedSocket
from harness.worker.stage import DataHandshake, accept_data_links, connect_data
from harness.worker.wire import HEADER, MAGIC, MAX_DIMS, VERSION, Kind
from tests.boards import TOKEN, challenge_when_free, free_port, start_board, stop_board
from tests.conftest import ROOT, run_python

pytestmark = pytest.mark.e2e  # attacks real board worker processes

BOARD_PAYLOAD_MB = 8


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """One board worker that allows only the project's own models; yields (port, pid)."""
    port = free_port()
    proc = start_board(port, tmp_path_factory.mktemp("board") / "worker.log",
                       args=["--allow-models", "harness.model.zoo.*", "--max-payload-mb", str(BOARD_PAYLOAD_MB)])
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
    "answer of the wrong length": json_frame(b'{"nonce": "' + b"0" * 64 + b'", "auth": "abc"}'),
    "the version 1 answer (no nonce)": json_frame(b'{"auth": "' + b"0" * 64 + b'"}'),
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


def login(port: int) -> SealedSocket:
    sock, _ = challenge_when_free(port)
    sock.close()
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    return auth.login(raw, TOKEN)


def assert_serving(port: int, pid: int) -> None:
    challenge_when_free(port)[0].close()  # free again
    with login(port):
        pass
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


def test_a_silent_client_is_dropped_at_the_deadline(board: tuple[int, int]) -> None:
    port, pid = board
    sock, _ = challenge_when_free(port)
    with sock:
        sock.settimeout(30)
        start = time.monotonic()
        assert sock.recv(1) == b""  # the worker's handshake deadline, then a close
        assert time.monotonic() - start < HANDSHAKE_DEADLINE_S + 2
    assert_serving(port, pid)


class SlowPeers:
    """Three silent peers and one that trickles a byte of a valid-looking hello every 0.5 s, all connected to
    ``address`` (which answers with an opening frame when ``opening``)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.socks = [socket.create_connection(address, timeout=30) for _ in range(4)]
        self.stop = threading.Event()
        self.trickled_until: float | None = None
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        data = json_frame(b'{"nonce": "' + b"0" * 64 + b'", "auth": "' + b"0" * 64 + b'"}')
        for byte in data:
            if self.stop.wait(0.5):
                return
            try:
                self.socks[0].send(bytes([byte]))
            except OSError:  # dropped by the worker: what the test wants
                self.trickled_until = time.monotonic()
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for sock in self.socks:
            sock.close()


def test_silent_and_trickling_peers_do_not_delay_a_real_controller(board: tuple[int, int]) -> None:
    port, pid = board
    challenge_when_free(port)[0].close()
    peers = SlowPeers(("127.0.0.1", port))
    try:
        time.sleep(1.0)  # the four are well into their handshakes
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            auth.login(raw, TOKEN)
        waited = time.monotonic() - start
        peers.thread.join(timeout=HANDSHAKE_DEADLINE_S + 10)
    finally:
        peers.close()
    assert waited < HANDSHAKE_DEADLINE_S, waited  # served beside them, not after them (a real one takes ms)
    assert peers.trickled_until is not None, "the trickler was never dropped"
    assert_serving(port, pid)


def test_silent_and_trickling_peers_do_not_delay_the_real_peer_on_a_data_port() -> None:
    """The worker's own data-port acceptor (what a stage runs once it has its setup), in this process."""
    port, token = free_port(), "link-token-of-this-run"
    got: dict = {}
    acceptor = threading.Thread(target=lambda: got.update(
        links=accept_data_links(("127.0.0.1", port), DataHandshake(token), 1), at=time.monotonic()), daemon=True)
    acceptor.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            peers = SlowPeers(("127.0.0.1", port))
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    try:
        time.sleep(1.0)
        start = time.monotonic()
        real = connect_data(("127.0.0.1", port), token)
        acceptor.join(timeout=30)
    finally:
        peers.close()
    with real:
        assert got["at"] - start < HANDSHAKE_DEADLINE_S, got["at"] - start
        [link] = got["links"]
        link.sock.close()


def test_a_fake_worker_cannot_pass_the_controllers_check() -> None:
    """A box the controller dials by mistake, without the secret: it makes up a challenge, accepts any answer."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        def fake() -> None:
            conn, _ = server.accept()
            with conn:
                wire.send_json(conn, auth.challenge())
                auth.recv_hello(conn)
                wire.send_json(conn, {"event": "authenticated", "auth": "00" * auth.MAC_BYTES})
                conn.recv(1)

        thread = threading.Thread(target=fake, daemon=True)
        thread.start()
        with socket.create_connection(server.getsockname(), timeout=30) as sock:
            with pytest.raises(auth.AuthError, match="could not prove that it knows the secret"):
                auth.login(sock, TOKEN)
        thread.join(timeout=10)


def relay(controller_side: socket.socket, board_side: socket.socket) -> None:
    """Pass the three handshake frames along unchanged, as a box on the path would."""
    wire.send_json(controller_side, auth.recv_hello(board_side).obj)
    wire.send_json(board_side, auth.recv_hello(controller_side).obj)
    wire.send_json(controller_side, auth.recv_hello(board_side).obj)


def test_a_relayed_handshake_gives_the_relay_no_voice(board: tuple[int, int], tmp_path: Path) -> None:
    """The relay passes a real board's handshake to a real controller untouched (so both accept it), then tries to
    speak: a setup of its own to the board, a report of its own to the controller. Both ends refuse and end."""
    port, pid = board
    challenge_when_free(port)[0].close()
    marker = tmp_path / "pwned"
    with socket.create_server(("127.0.0.1", 0)) as server:
        box: dict = {}

        def man_in_the_middle() -> None:
            conn, _ = server.accept()
            upstream = socket.create_connection(("127.0.0.1", port), timeout=30)
            relay(conn, upstream)
            box.update(conn=conn, upstream=upstream)

        thread = threading.Thread(target=man_in_the_middle, daemon=True)
        thread.start()
        raw = socket.create_connection(server.getsockname(), timeout=30)
        link = auth.login(raw, TOKEN)  # the relay was faithful: the controller cannot tell, and need not
        thread.join(timeout=30)
        conn, upstream = box["conn"], box["upstream"]
        with conn, upstream, link:
            # To the board: a setup of its own, with a made-up MAC.
            setup = {"setup": {"model": model("os.system", args={"command": f"touch {marker}"}), "max_payload": 1}}
            wire.send_parts(upstream, [*wire.object_parts(wire.Kind.JSON, setup), bytes(32)])
            upstream.settimeout(30)
            while upstream.recv(1 << 16):  # what the board says is sealed for the controller; then it hangs up
                pass
            # To the controller: a report it did not get from the board.
            wire.send_parts(conn, [*wire.object_parts(wire.Kind.JSON, {"event": "ready"}), bytes(32)])
            with pytest.raises(IntegrityError, match="failed its integrity check"):
                link.recv_frame(0)
    assert not marker.exists()
    assert_serving(port, pid)


def authenticated_setup(port: int, setup: dict) -> wire.Frame:
    """Log in as a proper controller, send ``setup``, return the worker's reply."""
    with login(port) as link:
        link.send_json({"setup": setup})
        return link.recv_frame(0)


def model(target: str, **extra: object) -> dict:
    return {"name": "m", "target": target, "input_shape": [1, 3, 8, 8], "seed": 0, "args": {}, "input": "random",
            **extra}


def test_a_model_the_owner_did_not_allow_is_refused(board: tuple[int, int], tmp_path: Path) -> None:
    port, pid = board
    marker = tmp_path / "pwned"
    reply = authenticated_setup(port, {"model": model("os.system", args={"command": f"touch {marker}"}),
                                       "max_payload": 1 << 20})
    assert reply.obj["event"] == "error"
    assert "'os.system' is not allowed" in reply.obj["reason"] and "harness.model.zoo.*" in reply.obj["reason"]
    assert not marker.exists()
    assert_serving(port, pid)


def test_a_second_target_field_cannot_smuggle_a_factory_past_the_allow_list(board: tuple[int, int],
                                                                            tmp_path: Path) -> None:
    port, pid = board
    marker = tmp_path / "pwned"
    smuggled = model("harness.model.zoo.nin", _target_="os.system", args={"command": f"touch {marker}"})
    reply = authenticated_setup(port, {"model": smuggled, "max_payload": 1 << 20})
    assert reply.obj["event"] == "error"
    assert "'_target_'" in reply.obj["reason"] and "'target' alone" in reply.obj["reason"]
    assert not marker.exists()
    assert_serving(port, pid)


def test_a_path_through_an_allowed_module_is_judged_by_where_it_leads(board: tuple[int, int], tmp_path: Path) -> None:
    """``harness.model.zoo.nn.modules.module.torch.save`` matches ``harness.model.zoo.*`` but is torch's ``save``
    (it writes files), as ``torchvision.models.resnet.torch.hub.download_url_to_file`` matches
    ``torchvision.models.*``."""
    port, pid = board
    reply = authenticated_setup(port, {"model": model("harness.model.zoo.nn.modules.module.torch.save"),
                                       "max_payload": 1 << 20})
    assert reply.obj["event"] == "error"
    assert "resolves to 'torch.serialization.save'" in reply.obj["reason"], reply.obj["reason"]
    assert_serving(port, pid)


def test_weights_that_a_board_would_download_are_refused(board: tuple[int, int]) -> None:
    port, pid = board
    reply = authenticated_setup(port, {"model": model("harness.model.zoo.nin", args={"weights": "DEFAULT"}),
                                       "max_payload": 1 << 20})
    assert reply.obj["event"] == "error"
    assert "model.args.weights='DEFAULT' would make this board download weights" in reply.obj["reason"]
    assert_serving(port, pid)


def test_the_boards_own_payload_bound_holds_whatever_the_setup_asks(board: tuple[int, int]) -> None:
    port, pid = board
    reply = authenticated_setup(port, {"model": model("harness.model.zoo.nin"), "max_payload": 1 << 30})
    assert reply.obj["event"] == "error"
    assert f"receives at most {BOARD_PAYLOAD_MB << 20}" in reply.obj["reason"]
    assert "runtime.max_payload_mb to at most 8" in reply.obj["reason"]
    assert_serving(port, pid)


@pytest.mark.parametrize("secret, problem", [("short-secret", "12 bytes; at least 16"), (" ", "only whitespace"),
                                             ("", "only whitespace")])
def test_a_weak_secret_stops_the_worker_at_start(secret: str, problem: str) -> None:
    proc = run_python("harness.worker", ["--control", f"tcp:127.0.0.1:{free_port()}"], ROOT,
                      {**os.environ, "PYTHONPATH": str(ROOT), "SPLITBENCH_TOKEN": secret}, timeout=120, module=True)
    assert proc.returncode != 0
    assert problem in proc.stderr and "secrets.token_hex(32)" in proc.stderr, proc.stderr


def test_struct_layout() -> None:
    assert struct.calcsize(HEADER.format) == HEADER.size
