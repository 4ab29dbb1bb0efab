"""Kernel-shaped links without privileges over the host's network: each run here starts under a user namespace
(``unshare --user --map-root-user``: root inside, nothing over the host's network or mounts), as an ordinary user on
a shared server would, and the harness enters a user namespace of its own beneath it.

- cut runs and a spatial run (one sweep: the second cut job reshapes the first's live link) are valid on a kernel
  backend, recorded ``privilege=rootless``, and leave no worker and no namespace directory behind;
- inside a live rootless process (``tests/rootless_checks.py``): the pre-run goodput probe reads each rate within the
  bounds it meets with root, a topology left by an exception takes its namespaces and processes with it, and one
  ended by SIGINT or SIGTERM leaves no process in its namespaces or its user namespace;
- where user namespaces are refused (a limit of 0 set inside a throwaway user namespace: the machine's own settings
  are never touched) the run goes on in userspace, says why in one line, and records ``privilege=none``;
- a job whose Python already runs threads (submitit's) re-executes itself into a user namespace, and stale cleanup
  removes the folders dead rootless processes mounted their namespace directory on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import mlflow
import pandas as pd
import pytest

from harness.network import namespaces
from harness.network.shaping import KERNEL_RATE_BACKENDS
from harness.network.userns import DECISION_ENV, namespace_directory
from tests.conftest import ROOT, last_attempts
from tests.test_network import PROBE_CASES, PROBE_TOLERANCE
from tests.test_runtime import MARK, SMALL, marked_workers

UNSHARE = ["unshare", "--user", "--map-root-user"]
# Inside that namespace: no more user namespaces may be made beneath it (the limit is per user namespace).
REFUSING = "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$@\""


def _user_namespaces_allowed() -> bool:
    try:
        return subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_userns = pytest.mark.skipif(not _user_namespaces_allowed(),
                                  reason="this machine refuses user namespaces (unshare --user --map-root-user)")


def run_py(args: list[str], tracking_uri: str, cwd: Path, marker: str, refuse: bool = False,
           env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python run.py args`` under a user namespace that holds no privilege over the host's network."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT), MARK: marker, **(env or {})}
    command = [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={cwd}/outputs",
               f"hydra.sweep.dir={cwd}/multirun"]
    prefix = [*UNSHARE, "sh", "-c", REFUSING, "sh"] if refuse else UNSHARE  # sh and unshare exec: one pid
    return subprocess.Popen([*prefix, *command], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finished(proc: subprocess.Popen, timeout: float = 600) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def runs(uri: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(uri)
    return last_attempts(mlflow.search_runs(experiment_names=["own_runs"]))


def assert_nothing_left(pid: int, marker: str) -> None:
    """No worker of the run still running; its namespaces went with its user namespace, and the folder their
    tmpfs was mounted on is gone."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and marked_workers(marker):
        time.sleep(0.2)
    assert [p.pid for p in marked_workers(marker)] == [], "worker processes left running"
    assert not os.path.exists(namespace_directory(pid)), f"{namespace_directory(pid)} left behind"


# One sweep, one process (as a user's sweep): two cut jobs on one model, so that the second reshapes the first's live
# link and keeps its workers, and a spatial job, each its own preset.
CUT = """# @package _global_
defaults:
  - override /model: resnet18
  - override /hardware: local_pair
  - override /method: server_only
model: {{input_shape: [1, 3, 64, 64]}}
link: {{bandwidth_mbps: {mbps}}}
scenario: {{inferences: 3}}
"""
PRESETS = {"rootless_cut_20": CUT.format(mbps=20), "rootless_cut_40": CUT.format(mbps=40),
           "rootless_spatial": """# @package _global_
defaults:
  - override /model: vgg16
  - override /hardware: 4x_local
  - override /method: modnn
model: {input_shape: [1, 3, 64, 64]}
hardware: {num_servers: 2}
scenario: {inferences: 2}
"""}


@pytest.mark.e2e
@pytest.mark.exclusive  # the pre-run goodput probe within 5 %
@needs_userns
def test_rootless_cut_and_spatial_runs_are_kernel_shaped_valid_and_leave_nothing(tracking_uri: str,
                                                                                 tmp_path: Path) -> None:
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    for name, text in PRESETS.items():
        (conf / f"{name}.yaml").write_text(text)
    marker = uuid.uuid4().hex
    proc = run_py(["-m", f"experiment={','.join(PRESETS)}"], tracking_uri, tmp_path, marker,
                  env={"SPLITBENCH_CONF": str(tmp_path / "conf")})
    finished(proc)
    df = runs(tracking_uri)
    assert sorted(df["params.method.name"]) == ["modnn", "server_only", "server_only"]
    assert (df["tags.privilege"] == "rootless").all() and (df["tags.valid"] == "true").all(), \
        df["tags.invalid_reason"].tolist()
    assert df["tags.link_backend"].isin(KERNEL_RATE_BACKENDS).all()
    assert (df["metrics.bytes_transferred"] > 0).all() and (df["metrics.max_abs_error"] <= 1e-5).all()
    cut = df[df["params.method.name"] == "server_only"]
    probed = dict(zip(cut["params.link.bandwidth_mbps"].astype(float), cut["metrics.probe_bandwidth_mbps"]))
    for mbps in (20, 40):  # the second on the first's link, reshaped live: its pre-run probe reads the new rate
        assert abs(probed[mbps] / mbps - 1) <= PROBE_TOLERANCE, probed
    assert_nothing_left(proc.pid, marker)


def processes_in(kind: str, inodes: set[int]) -> list[int]:
    """Pids of every process whose ``kind`` namespace (net, user) is one of ``inodes``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}/ns/{kind}").st_ino in inodes:
                found.append(int(entry))
        except OSError:  # gone meanwhile, or not ours to look at
            pass
    return found


@contextlib.contextmanager
def pinned(paths: list[str]) -> Iterator[None]:
    """Hold each namespace open: one that has ended frees its inode number, which the kernel gives to the next
    namespace made (a concurrent test's), so only a held namespace is still the one its inode names."""
    fds = [os.open(path, os.O_RDONLY) for path in paths]
    try:
        yield
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.e2e
@needs_userns
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_a_rootless_holder_leaves_nothing(sig: signal.Signals) -> None:
    """Its spawned process is killed, and no process is left in its namespaces or its user namespace."""
    holder = subprocess.Popen([*UNSHARE, sys.executable, "-m", "tests.rootless_checks", "hold"], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        held = json.loads(holder.stdout.readline() or "null") or pytest.fail(holder.communicate()[1][-3000:])
        assert held["privilege"] == "rootless"
        # Its namespaces are bound in its private mount namespace: reached through its root.
        namespaces_held = [f"/proc/{holder.pid}/root{path}" for path in held["netns_paths"]]
        with pinned([*namespaces_held, f"/proc/{holder.pid}/ns/user"]):
            assert processes_in("net", set(held["netns_inodes"])) == [held["child"]]
            holder.send_signal(sig)
            holder.wait(timeout=60)
            assert holder.returncode != 0
            assert processes_in("net", set(held["netns_inodes"])) == []
            assert processes_in("user", {held["userns_inode"]}) == []
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert not os.path.exists(held["namespace_directory"])


@pytest.mark.e2e
@pytest.mark.exclusive  # goodput within 5 %
@needs_userns
def test_a_live_rootless_process_probes_goodput_as_root_does_and_an_exception_leaves_nothing() -> None:
    kernel_cases = [case for case in PROBE_CASES if case[0] != "userspace"]
    out = subprocess.run([*UNSHARE, sys.executable, "-m", "tests.rootless_checks", "probe", json.dumps(kernel_cases)],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.splitlines()[-1])
    assert found["privilege"] == "rootless" and found["backends"][0] in KERNEL_RATE_BACKENDS, found
    for probe in found["probes"]:
        assert probe["privilege"] == "rootless"
        assert abs(probe["measured"] / probe["mbps"] - 1) <= PROBE_TOLERANCE, probe
    exception = found["exception"]
    assert len(exception["during"]) == 2 and exception["after"] == [] and exception["leftovers"] == [], exception
    assert exception["sleeper_returncode"] == -signal.SIGTERM
    assert not os.path.exists(found["namespace_directory"])


@pytest.mark.e2e
@needs_userns
def test_refused_user_namespaces_fall_back_to_userspace_with_one_line(tracking_uri: str, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    proc = run_py([*SMALL, "method=server_only", "link.bandwidth_mbps=20", "runtime.tdf=1", "scenario.warmup=0",
                   "scenario.inferences=1"], tracking_uri, tmp_path, marker, refuse=True)
    out, err = finished(proc)
    lines = [line for line in (out + err).splitlines() if "user namespaces" in line]  # Hydra logs to stdout
    assert len(lines) == 1 and "user.max_user_namespaces" in lines[0] and "userspace" in lines[0], out + err
    run = runs(tracking_uri).iloc[0]
    assert (run["tags.privilege"], run["tags.link_backend"], run["tags.valid"]) == ("none", "userspace", "true")
    assert_nothing_left(proc.pid, marker)


# A job's Python that imported torch before the job's function ran (as submitit's does), and inherited a decision
# made on another host (sbatch exports the login node's environment): it re-executes itself into a user namespace.
JOB = """
import os, sys, torch
from harness.network import userns
print("started", os.getpid(), userns.thread_count() > 1, file=sys.stderr, flush=True)
userns.reexec_if_undecided()
from harness.network import shaping
print(os.getpid(), shaping.privilege(), shaping.probe_backend())
"""


@pytest.mark.e2e
@needs_userns
def test_a_job_not_started_through_run_py_reexecutes_itself_into_a_user_namespace(tmp_path: Path) -> None:
    login_node = json.dumps({"host": "login-node", "mount_namespace": 1, "directory": "/tmp/sb1-netns",
                             "refusal": None})
    out = subprocess.run([*UNSHARE, sys.executable, "-c", JOB], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), DECISION_ENV: login_node}, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    pid, privilege, backend = out.stdout.split()
    assert out.stderr.splitlines() == [f"started {pid} True"] * 2  # threads at first, run again in place, once
    assert (privilege, backend in KERNEL_RATE_BACKENDS) == ("rootless", True)
    assert not os.path.exists(namespace_directory(int(pid)))


def test_stale_cleanup_removes_the_folders_of_dead_rootless_processes_only() -> None:
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True).stdout.strip()
    stale, live = namespace_directory(int(dead)), namespace_directory(os.getpid())
    os.makedirs(stale)
    os.makedirs(live)
    try:
        removed = namespaces.cleanup_stale("sbzz")  # a prefix of nobody's: only the folders are at stake
        assert stale in removed and not os.path.exists(stale) and os.path.isdir(live)
    finally:
        for folder in (stale, live):
            if os.path.isdir(folder):
                os.rmdir(folder)
