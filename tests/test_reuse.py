"""A sweep's jobs reuse the live topology and workers (``harness.controller.session``): what they record is what
fresh jobs record, a worker killed in one job does not break the next, and nothing outlives the pool."""

from __future__ import annotations

import json
import os
import signal
import socket
import string
import threading
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings, strategies as st
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from pyroute2 import netns

from harness.config import register, resolve
from harness.controller import phases, session
from harness.controller.pipeline import run_job
from harness.worker import wire
from harness.worker.serve import next_setup
from harness.worker.stage import Control
from tests.boards import sealed_pair
from tests.conftest import ROOT, needs_root

SMALL = ["model=resnet18", "model.input_shape=[1,3,64,64]", "hardware=local_pair", "scenario.inferences=2"]
JOBS = [["method=server_only", "link.bandwidth_mbps=50"], ["method=neurosurgeon", "link.bandwidth_mbps=5"],
        ["method=device_only", "link.bandwidth_mbps=200"]]


def experiment(overrides: list[str]):
    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return resolve(compose(config_name="config", overrides=overrides))


def sweep(jobs: list[list[str]], name: str, reuse: bool) -> None:
    """Run ``jobs`` one after another in this process, as Hydra's basic launcher runs ``-m``."""
    for overrides in jobs:
        run_job(experiment([*SMALL, *overrides, f"experiment.name={name}", f"runtime.reuse={reuse}"]), multirun=True)


def recorded(uri: str, name: str, tmp_path: Path) -> list[dict]:
    """Per job, in order: status, metric names, the metrics that must not depend on reuse, the plan."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    out = []
    for run in sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time):
        plan_path = client.download_artifacts(run.info.run_id, "plan.json", str(tmp_path / run.info.run_id))
        out.append({"status": run.info.status, "valid": run.data.tags.get("valid"),
                    "metrics": set(run.data.metrics), "tags": set(run.data.tags) - {"mlflow.runName"},
                    "max_abs_error": run.data.metrics.get("max_abs_error"),
                    "bytes": run.data.metrics.get("bytes_transferred"),
                    "plan": json.loads(Path(plan_path).read_text())})
    return out


def our_namespaces() -> list[str]:
    return [n for n in netns.listnetns() if n.startswith(f"sb{os.getpid()}-")]


@pytest.fixture
def fresh_pool():
    session.release_pool()
    yield
    session.release_pool()
    assert not our_namespaces(), "the pool left namespaces behind"


@needs_root
def test_reused_workers_record_what_fresh_workers_record(tracking_uri: str, tmp_path: Path, fresh_pool) -> None:
    sweep(JOBS, "fresh", reuse=False)
    assert session._pool is None  # nothing kept without reuse
    sweep(JOBS, "reused", reuse=True)
    pool = session.worker_pool()
    assert pool.builds == 1 and pool.topology is not None and pool.topology.up  # one topology for the sweep
    assert len(phases.jobs) >= 2 * len(JOBS)
    fresh, reused = recorded(tracking_uri, "fresh", tmp_path), recorded(tracking_uri, "reused", tmp_path)
    assert len(fresh) == len(reused) == len(JOBS)
    for before, after in zip(fresh, reused):
        assert before["status"] == after["status"] == "FINISHED" and before["valid"] == after["valid"] == "true"
        assert before["plan"] == after["plan"]
        assert before["metrics"] == after["metrics"] and before["tags"] == after["tags"]
        assert before["max_abs_error"] == after["max_abs_error"] <= 1e-4
        assert before["bytes"] == after["bytes"]


@needs_root
def test_a_worker_killed_in_one_job_does_not_break_the_next(tracking_uri: str, fresh_pool) -> None:
    sweep([JOBS[0]], "killed", reuse=True)
    pool = session.worker_pool()
    server = pool.workers["server"].process
    jobs_before = len(phases.jobs)

    def kill_during_inference() -> None:  # once the next job's workers run inferences, kill the server's
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(phases.jobs) > jobs_before and "workers" in phases.jobs[-1]:
                os.kill(server.pid, signal.SIGKILL)
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_during_inference)
    killer.start()
    sweep([[*JOBS[0], "scenario.inferences=300"]], "killed", reuse=True)
    killer.join()
    sweep([["method=server_only", "link.bandwidth_mbps=200"]], "killed", reuse=True)
    client = MlflowClient(tracking_uri)
    runs = sorted(client.search_runs([client.get_experiment_by_name("killed").experiment_id]),
                  key=lambda r: r.info.start_time)
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED", "FINISHED"]
    assert "server" in runs[1].data.tags["invalid_reason"]
    assert runs[2].data.tags["valid"] == "true"
    assert pool.builds == 2  # the topology in doubt was rebuilt, with a new server worker
    assert pool.workers["server"].process.pid != server.pid
    alive = [ep.process.pid for ep in pool.workers.values()]
    session.release_pool()
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in alive)


def test_a_kept_alive_worker_takes_only_a_reset_for_its_own_endpoint() -> None:
    controller, worker = sealed_pair()
    with controller, worker:
        control = Control(worker, 1 << 20)
        setup = {"endpoint": "server", "part": 1}
        controller.send_json({"cmd": "clock", "id": 7})  # the controller may estimate the clock first
        controller.send_json({"cmd": "reset", "setup": setup})
        assert next_setup(control, "server") == setup
        pong = controller.recv_frame(max_payload=0)
        assert pong.obj["event"] == "clock" and pong.obj["id"] == 7 and isinstance(pong.obj["now_ns"], int)
        for bad in ({"cmd": "reset", "setup": {"endpoint": "device"}}, {"cmd": "reset", "setup": [1]},
                    {"setup": setup}, {"cmd": "infer", "seq": 0}):
            controller.send_json(bad)
            with pytest.raises(wire.FrameError, match="a reset with a setup for endpoint 'server'"):
                next_setup(control, "server")
        controller.send_tensor(torch.zeros(4), seq=0, tag=0)  # a reset carries no payload: refused unread
        with pytest.raises(wire.FrameError, match="exceeds max_payload 0"):
            next_setup(control, "server")
    controller, worker = sealed_pair()
    with controller, worker:
        controller.shutdown(socket.SHUT_WR)
        assert next_setup(Control(worker, 1 << 20), "server") is None  # the sweep is over: the worker exits


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(string.printable, max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["cmd", "setup", "endpoint", "id"]) | st.text(string.ascii_letters, max_size=4), inner,
        max_size=3), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, st.builds(lambda setup: {"cmd": "reset", "setup": setup}, json_values)))
def test_a_kept_alive_worker_parses_any_json_into_a_setup_or_a_frame_error(obj: object) -> None:
    controller, worker = sealed_pair()
    with controller, worker:
        controller.send_json(obj if isinstance(obj, dict) else {"value": obj})
        controller.shutdown(socket.SHUT_WR)
        try:
            setup = next_setup(Control(worker, 1 << 20), "server")
        except wire.FrameError:
            return
        assert setup is None or (isinstance(setup, dict) and setup.get("endpoint") == "server")
