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

from harness.network.namespaces import cleanup_stale
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.e2e  # sweeps through Hydra's launchers

BIN = Path(sys.executable).parent
JOBS = ["server_only", "neurosurgeon"]  # two, both over the link: enough to see whether they overlapped


def free_port() -> int:
    """A port the kernel picks (not tests.boards.free_port's: Ray keeps 10002-19999 for its workers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A process in its own session, so that it and everything it spawns can be ended by its group id."""
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})


def end(*procs: subprocess.Popen, grace: float = 3) -> None:
    """End ``procs`` and every process they started, by pid (Ray's workers start sessions of their own): one short
    grace after SIGTERM for all, then SIGKILL (Ray's daemons take tens of seconds over a graceful stop)."""
    family = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            family += [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(family, timeout=grace)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    _, alive = psutil.wait_procs(alive, timeout=10)
    for proc in procs:
        proc.wait(10)
    assert not alive, f"still running: {alive}"


def wait_for(check, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")


def healthy(uri: str) -> bool:
    try:
        return urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200
    except OSError:
        return False


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(Ray address, MLflow tracking URI), both started together and stopped even on failure: a local Ray cluster,
    its head started as docs/reference.md says (one splitbench_node slot on this node, and more CPUs than one job needs,
    so that only that slot keeps two jobs apart), and one tracking server, as conf/hydra/launcher/ray_cluster.yaml
    asks every job to record to."""
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher is not installed")
    ray_port, mlflow_port = free_port(), free_port()
    temp = Path("/tmp") / f"sbray{os.getpid()}"  # Ray's socket paths must stay short
    ray_log = tmp_path / "ray.log"
    ray = start([str(BIN / "ray"), "start", "--head", "--block", f"--port={ray_port}", "--num-cpus=4",
                 "--resources", '{"splitbench_node": 1}', "--include-dashboard=false", f"--temp-dir={temp}",
                 "--disable-usage-stats"], ray_log, env={"PYTHONPATH": str(ROOT)})
    tracking = None
    try:
        tracking = start([str(BIN / "mlflow"), "server", "--backend-store-uri",
                          f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts-destination",
                          str(tmp_path / "mlartifacts"), "--host", "127.0.0.1", "--port", str(mlflow_port),
                          "--workers", "1"], tmp_path / "mlflow_server.log")
        uri = f"http://127.0.0.1:{mlflow_port}"

        def ray_up() -> bool:
            if ray.poll() is not None:
                raise RuntimeError(f"ray start exited {ray.returncode}: {ray_log.read_text()[-2000:]}")
            # said once its raylet has registered with the head: sooner than polling `ray status`
            return "Ray runtime started" in ray_log.read_text()
        wait_for(ray_up, "ray head", timeout=120)
        wait_for(lambda: healthy(uri), "mlflow server")
        yield f"127.0.0.1:{ray_port}", uri
    finally:
        try:
            end(ray, *([tracking] if tracking is not None else []))
        finally:
            shutil.rmtree(temp, ignore_errors=True)
            cleanup_stale()  # namespaces of a job whose Ray worker had to be killed (a failed run)


def test_a_sweep_through_the_ray_launcher_records_each_job_once_one_at_a_time(
        cluster: tuple[str, str], tmp_path: Path) -> None:
    import mlflow

    ray_cluster, mlflow_server = cluster

    started = time.monotonic()
    proc = run_cli(["-m", "hydra/launcher=ray_cluster", f"method={','.join(JOBS)}", "model=custom",
                    "model._target_=tests.user_models.build", "model.input_shape=[1,3,32,32]", "hardware=local_pair",
                    "scenario.inferences=2", "experiment.name=ray_sweep"], mlflow_server, tmp_path,
                   env={"RAY_ADDRESS": ray_cluster}, timeout=180)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    mlflow.set_tracking_uri(mlflow_server)
    df = mlflow.search_runs(experiment_names=["ray_sweep"])
    assert sorted(df["params.method.name"]) == sorted(JOBS)  # every job recorded, once
    assert (df["status"] == "FINISHED").all() and (df["tags.valid"] == "true").all()
    if os.geteuid() == 0:  # namespaces and kernel shaping inside Ray's workers (pyroute2's forks once hung there)
        assert (df["tags.link_backend"] != "userspace").all(), df["tags.link_backend"].tolist()
    for host, runs in df.groupby("tags.controller_host"):  # no two timing jobs at once on one node
        spans = sorted(zip(runs["start_time"], runs["end_time"]))
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), (host, spans)
    assert df["tags.controller_pid"].nunique() >= 1
    # the driver's summary found the jobs' runs through the launch id Ray passed on
    assert f"{len(JOBS)} job(s), {len(JOBS)} valid; MLflow experiment 'ray_sweep' in {mlflow_server}" in proc.stdout
    nodes = df["tags.controller_host"].nunique()
    print(f"ray sweep: {len(JOBS)} jobs on {nodes} node(s), link backend "
          f"{sorted(set(df['tags.link_backend']))}, in {wall:.1f} s wall")


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
