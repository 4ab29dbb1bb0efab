"""Scale-out, run for real: a sweep through the Ray launcher on a local Ray cluster into one MLflow tracking server;
the SLURM launcher's config composed with the submitit plugin installed (CI installs both: `.[ray,slurm]`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from tests.conftest import ROOT, run_cli

BIN = Path(sys.executable).parent
JOBS = ["device_only", "server_only", "neurosurgeon"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A process in its own session, so that it and everything it spawns can be ended by its group id."""
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})


def end(proc: subprocess.Popen) -> None:
    """End ``proc`` and every process it started, by pid (Ray's workers start sessions of their own)."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(family, timeout=20)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=10)
    proc.wait(10)


def wait_for(check, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """One tracking server, as conf/hydra/launcher/ray_cluster.yaml asks every job to record to."""
    port = free_port()
    proc = start([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                  "--artifacts-destination", str(tmp_path / "mlartifacts"), "--host", "127.0.0.1",
                  "--port", str(port), "--workers", "1"], tmp_path / "mlflow_server.log")
    uri = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200
        except OSError:
            return False
    try:
        wait_for(up, "mlflow server")
        yield uri
    finally:
        end(proc)


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Iterator[str]:
    """A local Ray cluster, its head started as the README says: one splitbench_node slot on this node, and more
    CPUs than one job needs, so that only that slot keeps two jobs apart."""
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher is not installed")
    port = free_port()
    temp = Path("/tmp") / f"sbray{os.getpid()}"  # Ray's socket paths must stay short
    proc = start([str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=4",
                  "--resources", '{"splitbench_node": 1}', "--include-dashboard=false", f"--temp-dir={temp}",
                  "--disable-usage-stats"], tmp_path / "ray.log", env={"PYTHONPATH": str(ROOT)})
    address = f"127.0.0.1:{port}"
    status = lambda: subprocess.run([str(BIN / "ray"), "status", f"--address={address}"],  # noqa: E731
                                    capture_output=True, text=True, timeout=30)
    try:
        wait_for(lambda: "splitbench_node" in status().stdout, "ray head", timeout=120)
        yield address
    finally:
        end(proc)
        shutil.rmtree(temp, ignore_errors=True)


# Known to fail where Ray's workers run the jobs as root with kernel shaping: pyroute2 0.9.7 opens a namespace's
# netlink socket (IPRoute(netns=...)) from a forked child, and inside a Ray worker that child does not exit but
# unwinds through the job's own stack, ending the run from inside the empty namespace (MLflow: "Network is
# unreachable") while the parent waits for it. Strict: the day it passes, this mark must go.
@pytest.mark.xfail(strict=True, raises=(subprocess.TimeoutExpired, AssertionError),
                   reason="pyroute2's netns child process unwinds through the job inside a Ray worker")
def test_a_sweep_through_the_ray_launcher_records_each_job_once_one_at_a_time(
        ray_cluster: str, mlflow_server: str, tmp_path: Path) -> None:
    import mlflow

    started = time.monotonic()
    proc = run_cli(["-m", "hydra/launcher=ray_cluster", f"method={','.join(JOBS)}", "model=custom",
                    "model._target_=tests.user_models.build", "model.input_shape=[1,3,32,32]", "hardware=local_pair",
                    "scenario.inferences=2", "experiment.name=ray_sweep"], mlflow_server, tmp_path,
                   env={"RAY_ADDRESS": ray_cluster}, timeout=240)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    mlflow.set_tracking_uri(mlflow_server)
    df = mlflow.search_runs(experiment_names=["ray_sweep"])
    assert sorted(df["params.method.name"]) == sorted(JOBS)  # every job recorded, once
    assert (df["status"] == "FINISHED").all() and (df["tags.valid"] == "true").all()
    for host, runs in df.groupby("tags.controller_host"):  # no two timing jobs at once on one node
        spans = sorted(zip(runs["start_time"], runs["end_time"]))
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), (host, spans)
    assert df["tags.controller_pid"].nunique() >= 1
    # the driver's summary found the jobs' runs through the launch id Ray passed on
    assert f"{len(JOBS)} job(s), {len(JOBS)} valid; MLflow experiment 'ray_sweep' in {mlflow_server}" in proc.stdout
    nodes = df["tags.controller_host"].nunique()
    print(f"ray sweep: {len(JOBS)} jobs on {nodes} node(s) in {wall:.1f} s wall")


def test_the_slurm_launcher_config_composes_with_submitit_installed(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the slurm extra is not installed")
    job = run_cli(["--cfg", "job", "hydra/launcher=slurm", "experiment=cic_paper_quick"], "sqlite://", tmp_path)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "name: cic_paper_quick" in job.stdout
    launcher = run_cli(["--cfg", "hydra", "--package", "hydra.launcher", "hydra/launcher=slurm"],
                       "sqlite://", tmp_path)
    assert launcher.returncode == 0, launcher.stderr[-3000:]
    assert "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in launcher.stdout
    assert "exclusive: true" in launcher.stdout and "tasks_per_node: 1" in launcher.stdout
