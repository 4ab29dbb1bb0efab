"""Every record ends: RUNNING runs whose controller died on this host are ended KILLED, and no other run is touched.

Each test records to its own SQLite store (the ``tracking_uri`` fixture); the end-to-end test kills a real
controller with SIGKILL in the middle of a run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from hydra import compose, initialize_config_dir
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from pyroute2 import netns

from harness.config import register, resolve
from harness.controller import pipeline
from harness.controller.stale_runs import (HOST_TAG, PID_TAG, START_TIME_TAG, controller_tags, end_dead_runs,
                                           this_host)
from harness.network import namespaces
from tests.conftest import ROOT, needs_root, start_python

register()


def dead_process() -> tuple[int, float]:
    """The pid and start time of a process that has exited and been reaped."""
    proc = subprocess.Popen(["sleep", "60"])
    started = psutil.Process(proc.pid).create_time()
    proc.kill()
    proc.wait()
    return proc.pid, started


def identity(host: str, pid: int, started: float) -> dict[str, str]:
    return {HOST_TAG: host, PID_TAG: str(pid), START_TIME_TAG: f"{started:.3f}"}


def running_run(client: MlflowClient, experiment: str, tags: dict[str, str]) -> str:
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    return client.create_run(experiment_id, tags={"valid": "pending", **tags}).info.run_id


def test_runs_of_dead_controllers_of_this_host_end_killed_in_every_experiment(tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    pid, started = dead_process()
    first = running_run(client, "a", identity(this_host(), pid, started))
    second = running_run(client, "b", identity(this_host(), pid, started))
    start_ms = client.get_run(second).info.start_time
    client.log_batch(second, metrics=[Metric("decision_time_ms", 1.0, start_ms + 5000, 0)])
    finished = running_run(client, "a", identity(this_host(), pid, started))
    client.set_terminated(finished, "FINISHED")

    assert sorted(end_dead_runs(tracking_uri)) == sorted([first, second])

    for run_id in (first, second):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.data.tags["valid"] == "false"
        reason = run.data.tags["invalid_reason"]
        assert f"the controller died: pid {pid} on {this_host()}" in reason and "no longer exists" in reason
    # the end time is when the run was last heard of: its start, or a later metric
    assert client.get_run(first).info.end_time == client.get_run(first).info.start_time
    assert client.get_run(second).info.end_time == start_ms + 5000
    assert "(metric decision_time_ms)" in client.get_run(second).data.tags["invalid_reason"]
    assert client.get_run(finished).info.status == "FINISHED"
    assert end_dead_runs(tracking_uri) == []  # nothing left to end


def test_a_reused_pid_is_told_apart_by_its_start_time(tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    me = psutil.Process()
    run_id = running_run(client, "a", identity(this_host(), me.pid, me.create_time() - 3600))
    assert end_dead_runs(tracking_uri) == [run_id]
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and "is now another process" in run.data.tags["invalid_reason"]


def test_runs_of_other_hosts_are_left_alone(tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    pid, started = dead_process()  # dead here, but that pid is another machine's
    run_id = running_run(client, "a", identity(f"not-{this_host()}", pid, started))
    assert end_dead_runs(tracking_uri) == []
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["valid"]) == ("RUNNING", "pending")


def test_runs_of_live_controllers_and_untagged_runs_are_left_alone(tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    live = running_run(client, "a", controller_tags())  # this test process: alive, the same process
    untagged = running_run(client, "a", {})  # recorded before controllers tagged their runs: nothing to judge by
    assert end_dead_runs(tracking_uri) == []
    assert {client.get_run(r).info.status for r in (live, untagged)} == {"RUNNING"}


def test_a_missing_store_is_not_created(tmp_path: Path) -> None:
    assert end_dead_runs(f"sqlite:///{tmp_path / 'absent.db'}") == []
    assert not (tmp_path / "absent.db").exists()


def test_the_network_package_does_not_import_mlflow() -> None:
    code = ("import sys, harness.network.__main__, harness.network.topology; "
            "sys.exit(sorted({'mlflow', 'torch'} & set(sys.modules)) or None)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr


class OpenedRun(Exception):
    """Raised where a job opens its run: what the test wants to see has happened by then."""


def test_a_job_ends_dead_runs_before_it_opens_its_own(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = MlflowClient(tracking_uri)
    pid, started = dead_process()
    dead = running_run(client, "a", identity(this_host(), pid, started))

    def open_run(*args, **kwargs):
        raise OpenedRun(client.get_run(dead).info.status)

    monkeypatch.setattr(pipeline, "RunRecord", open_run)
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(config_name="config", overrides=["model=resnet18", "hardware=local_pair", "method=server_only"])
    with pytest.raises(OpenedRun, match="KILLED"):
        pipeline.run_job(resolve(cfg))


# -- a real controller killed with SIGKILL mid-run -----------------------------------------------------------------

def owned_namespaces(pid: int) -> list[str]:
    return [n for n in netns.listnetns() if namespaces._owner_pid(n, namespaces.DEFAULT_PREFIX) == pid]


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return bool(condition())


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@needs_root
def test_a_controller_killed_mid_run_leaves_a_run_that_cleanup_ends_killed(tracking_uri: str, tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT)}
    args = ["model=resnet18", "model.input_shape=[1,3,64,64]", "hardware=xavier_1080ti", "method=server_only",
            "link.bandwidth_mbps=1.1", "scenario.inferences=50", "runtime.max_real_minutes=null",
            f"hydra.run.dir={tmp_path}/outputs"]
    with open(tmp_path / "run.log", "w") as out:
        controller = start_python(ROOT / "run.py", args, tmp_path, env, out.fileno(), out.fileno())
    workers: list[int] = []
    try:
        # mid-run: its namespaces exist (so its run is open) and workers compute inside them
        assert wait_for(lambda: controller.poll() is not None or any(
            netns.ns_pids().get(n) for n in owned_namespaces(controller.pid)), 300), "the run never started"
        assert controller.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        workers = [p for n in owned_namespaces(controller.pid) for p in netns.ns_pids().get(n, [])]
        client = MlflowClient(tracking_uri)
        (run,) = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
                  if r.data.tags.get(PID_TAG) == str(controller.pid)]
        os.killpg(controller.pid, signal.SIGKILL)
        controller.wait(10)
        run = client.get_run(run.info.run_id)
        assert (run.info.status, run.data.tags["valid"]) == ("RUNNING", "pending")  # what SIGKILL leaves

        # --stale: only what dead owners left, never another live run's namespaces on this machine
        proc = subprocess.run([sys.executable, "-m", "harness.network", "cleanup", "--stale"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert f"ended 1 runs of dead controllers as KILLED: {run.info.run_id}" in proc.stdout
        run = client.get_run(run.info.run_id)
        assert (run.info.status, run.data.tags["valid"]) == ("KILLED", "false")
        assert f"the controller died: pid {controller.pid} on {this_host()}" in run.data.tags["invalid_reason"]
        assert [n for n in namespaces.leftovers(namespaces.DEFAULT_PREFIX)  # namespaces and root-namespace veths
                if namespaces._owner_pid(n, namespaces.DEFAULT_PREFIX) == controller.pid] == []
        assert wait_for(lambda: all(gone(p) for p in workers), 10), workers
    finally:
        if controller.poll() is None:
            os.killpg(controller.pid, signal.SIGKILL)
            controller.wait(10)
        for name in owned_namespaces(controller.pid):
            namespaces.remove_namespace(name, namespaces.DEFAULT_PREFIX)
