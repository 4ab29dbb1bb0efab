"""Workers as on real boards: started by hand with a TCP control address and a shared secret, reached over the
network (here loopback) instead of being spawned in namespaces. Needs no root."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator

import mlflow
import pytest

from harness.worker import auth, wire
from tests.boards import TOKEN, boards, challenge_when_free, free_port, remote_override
from tests.conftest import run_cli

pytestmark = pytest.mark.e2e  # real board worker processes and run.py


DEVICE_TOKEN = "device-secret-0b6f2d9e47a1c385"  # each board its own secret


@pytest.fixture
def board_workers(tmp_path: Path) -> Iterator[dict[str, int]]:
    """Two workers listening on loopback, as an operator would start them on a Jetson and a server."""
    with boards(tmp_path, tokens={"device": DEVICE_TOKEN}) as ports:
        yield ports


def test_a_wrong_secret_is_refused_and_the_worker_keeps_serving(board_workers: dict[str, int]) -> None:
    with socket.create_connection(("127.0.0.1", board_workers["server"])) as sock:
        sock.settimeout(30)
        with pytest.raises(auth.AuthError, match="wrong secret"):
            auth.login(sock, "wrong-secret-of-enough-length")
    with socket.create_connection(("127.0.0.1", board_workers["server"])) as sock:  # still serving
        sock.settimeout(30)
        auth.login(sock, TOKEN)


def test_the_secret_never_crosses_the_wire_and_an_old_answer_is_worthless(board_workers: dict[str, int]) -> None:
    """What the controller sends before its setup: a nonce and an HMAC over both nonces, not the secret."""
    sock, first = challenge_when_free(board_workers["server"])
    mine = "11" * auth.NONCE_BYTES
    answer = {"nonce": mine, "auth": auth.proof(TOKEN, "controller", first, mine)}
    with sock:
        sock.settimeout(30)
        wire.send_json(sock, answer)
        welcome = auth.recv_hello(sock)
        assert welcome.obj["event"] == "authenticated"
        assert auth.verify(TOKEN, "worker", first, mine, welcome.obj["auth"])  # the worker proved itself too
    sock, second = challenge_when_free(board_workers["server"])
    with sock:
        assert second != first  # a replayed answer is worthless
        wire.send_json(sock, answer)
        reply = auth.recv_hello(sock)
        assert reply.kind == wire.Kind.ERROR and "wrong secret" in reply.obj["reason"]
    assert TOKEN not in repr(answer) and TOKEN.encode().hex() not in repr(answer)


def test_run_over_real_network_with_remote_workers(board_workers: dict[str, int], tracking_uri: str,
                                                   tmp_path: Path) -> None:
    base = free_port()
    secrets_file = tmp_path / "boards.secrets"
    secrets_file.write_text(f"# one line per board\ndevice={DEVICE_TOKEN}\n*={TOKEN}\n")
    ways = {"server_only": ([f"runtime.token_file={secrets_file}"], {"SPLITBENCH_TOKEN": ""}),  # a file per board
            "device_only": ([], {"SPLITBENCH_TOKEN": TOKEN, "SPLITBENCH_TOKEN_DEVICE": DEVICE_TOKEN})}  # environment
    for method, (extra, env) in ways.items():  # the workers serve run after run
        proc = run_cli(["model=resnet18", "model.input_shape=[1,3,64,64]", "hardware=local_pair", f"method={method}",
                        "scenario.inferences=2", remote_override(board_workers), f"runtime.base_port={base}", *extra],
                       tracking_uri, tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert DEVICE_TOKEN not in proc.stdout + proc.stderr and TOKEN not in proc.stdout + proc.stderr
    mlflow.set_tracking_uri(tracking_uri)
    df = mlflow.search_runs(experiment_names=["own_runs"])
    assert len(df) == 2 and (df["tags.valid"] == "true").all()
    assert (df["tags.link_backend"] == "real").all()
    assert (df["metrics.max_abs_error"] <= 1e-5).all()
    server_only = df[df["params.method.name"] == "server_only"].iloc[0]
    assert 0 <= server_only["metrics.clock_uncertainty_ms_server"] < 1  # loopback: a round trip well under 2 ms
    assert abs(server_only["metrics.clock_offset_ms_server"]) <= server_only["metrics.clock_uncertainty_ms_server"]
    assert server_only["tags.compute_device_server"].startswith("cpu")  # auto on a machine without CUDA
    assert server_only["metrics.bytes_transferred"] == 3 * 64 * 64 * 4
