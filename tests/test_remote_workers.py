"""Workers as on real boards: started by hand with a TCP control address and a shared token, reached over the
network (here loopback) instead of being spawned in namespaces. Needs no root."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from harness.worker import wire
from tests.conftest import ROOT, run_cli

TOKEN = "test-token-7f3a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def board_workers(tmp_path: Path):
    """Two workers listening on loopback, as an operator would start them on a Jetson and a server."""
    ports = {"device": free_port(), "server": free_port()}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPLITBENCH_TOKEN": TOKEN}
    procs = [subprocess.Popen([sys.executable, "-m", "harness.worker", "--control", f"tcp:127.0.0.1:{port}"],
                              env=env, cwd=ROOT, stdout=(tmp_path / f"{name}.log").open("w"),
                              stderr=subprocess.STDOUT) for name, port in ports.items()]
    for port in ports.values():  # wait until both listen
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "worker did not start listening"
                time.sleep(0.1)
    yield ports
    for p in procs:
        p.kill()
        p.wait(timeout=10)


def test_a_bad_token_is_refused_and_the_worker_keeps_serving(board_workers: dict[str, int]) -> None:
    with socket.create_connection(("127.0.0.1", board_workers["server"])) as sock:
        wire.send_json(sock, {"token": "wrong", "setup": {}})
        reply = wire.recv_frame(sock, 1 << 20)
        assert reply.kind == wire.Kind.ERROR
    # still listening for the real controller
    socket.create_connection(("127.0.0.1", board_workers["server"]), timeout=5).close()


def test_a_silent_client_does_not_lock_the_controller_out(board_workers: dict[str, int]) -> None:
    port = board_workers["server"]
    with socket.create_connection(("127.0.0.1", port)) as silent:  # connects and never says hello
        with socket.create_connection(("127.0.0.1", port)) as sock:
            wire.send_json(sock, {"token": "wrong", "setup": {}})
            sock.settimeout(30)  # without the hello timeout the worker would wait on the silent one forever
            assert wire.recv_frame(sock, 1 << 20).kind == wire.Kind.ERROR
        assert silent.recv(1) == b""  # the worker gave up on it and closed


def test_run_over_real_network_with_remote_workers(board_workers: dict[str, int], tracking_uri: str,
                                                   tmp_path: Path) -> None:
    remote = f"{{device: 'tcp:127.0.0.1:{board_workers['device']}', server: 'tcp:127.0.0.1:{board_workers['server']}'}}"
    base = free_port()
    for method in ("server_only", "device_only"):  # the workers serve run after run
        proc = run_cli(["model=resnet18", "model.input_shape=[1,3,64,64]", "hardware=local_pair", f"method={method}",
                        "scenario.inferences=2", f"runtime.remote={remote}", f"runtime.token={TOKEN}",
                        f"runtime.base_port={base}"], tracking_uri, tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    mlflow.set_tracking_uri(tracking_uri)
    df = mlflow.search_runs(experiment_names=["default"])
    assert len(df) == 2 and (df["tags.valid"] == "true").all()
    assert (df["tags.link_backend"] == "real").all()
    assert (df["metrics.max_abs_error"] <= 1e-5).all()
    server_only = df[df["params.method.name"] == "server_only"].iloc[0]
    assert server_only["metrics.bytes_transferred"] == 3 * 64 * 64 * 4
