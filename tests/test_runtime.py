"""The runtime through real namespaces: a split model gives the whole model's output, and nothing outlives a run.

Each run is a resnet18 (64x64) cut in the middle of its second stage on ``local_pair`` (TDF 1, nothing padded),
driven straight through :func:`harness.controller.runtime.run_workers` (or ``python run.py`` for SIGINT). What a test leaves
behind is looked up by owner: namespaces and veths carry the owner's pid, and worker processes carry this test's
marker in their environment, so runs of other people on the same machine never count.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import psutil
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from pyroute2 import IPRoute, netns

from hardware.topology import Hardware
from harness.network import namespaces, shaping, zygote
from harness.worker import wire
from harness.config import build_hardware, register, resolve
from partitioners.base import cut_problem
from harness.controller.cut import cut_workers
from harness.controller.experiment import Experiment, Runtime
from harness.model.graph import ModelGraph, ancestors, build_graph, crossing_tensors
from harness.model.models import ModelSpec, make_input
from harness.network.link import LinkSpec
from harness.loadgen.result import RunResult
from harness.controller.runtime import Deployment, run_workers
from harness.loadgen.dilation import Dilation
from harness.loadgen.errors import RunFailed
from harness.worker.gate import HANDSHAKE_DEADLINE_S
from partitioners.base import LinkState, Plan, cut_plan, device_side_of
from tests.conftest import ROOT, needs_root, start_python

CONF = ROOT / "conf"
PREFIX = namespaces.DEFAULT_PREFIX
MARK = "SPLITBENCH_TEST_RUN"  # environment variable every worker of a test inherits
SMALL = ["model=resnet18", "model.input_shape=[1,3,64,64]", "hardware=local_pair"]
# In the middle of layer2: both the branch (layer2_1_bn1) and the skip (layer2_0_relu_1) cross the link.
CUT_AFTER = "layer2_1_bn1"
register()


def make_cfg(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="config", overrides=overrides)
    resolve(cfg)  # validates
    return cfg


@dataclass
class CutCase:
    """A device/server cut ready to run: the config, the model graph, the plan and what crosses the link."""

    cfg: DictConfig
    exp: Experiment
    graph: ModelGraph
    hardware: Hardware
    plan: Plan
    node_ms: dict[str, dict[str, float]]
    crossing: list[str]

    def deployment(self) -> Deployment:
        """The cut on its device-server link, with fresh worker specs (``run_workers`` fills in addresses, so a
        deployment serves one run)."""
        device, server = self.hardware.cut_roles
        workers = cut_workers(self.exp, self.graph, self.plan, self.node_ms, tdf=1.0, pad=False)
        return Deployment([device, server], [(device, server, LinkSpec.from_config(self.cfg.link))], workers, device,
                          self.exp.scenario.in_flight)

    def run(self, make_hook: Callable[..., Any] | None = None, timeout_s: float = 300) -> RunResult:
        return run_workers(self.deployment(), self.exp.scenario,
                           hand_runtime(timeout_s=timeout_s, max_payload_mb=int(self.cfg.runtime.max_payload_mb)),
                           Dilation(1.0), make_hook=make_hook, progress=False)


def hand_runtime(**settings: Any) -> Runtime:
    """The runtime of a run a test builds by hand: 300 s at most, no data-link timeout, unless ``settings`` say."""
    return Runtime(**{"timeout_s": 300.0, "link_timeout_s": 0.0, **settings})


def cut_case(overrides: list[str], cut_after: str = CUT_AFTER) -> CutCase:
    cfg = make_cfg([*SMALL, *overrides])
    graph = build_graph(ModelSpec.from_config(cfg.model))
    hardware = build_hardware(cfg.hardware)
    node_ms = hardware.node_ms(graph)
    device, server = hardware.cut_roles
    problem = cut_problem(graph, node_ms[device], node_ms[server])
    plan = cut_plan("test_cut", problem, ancestors(graph, [cut_after]),
                    LinkState(float(cfg.link.bandwidth_mbps), float(cfg.link.delay_ms)))
    side = device_side_of(plan)
    assignment = {n: 0 if n in side else 1 for n in graph.order if graph[n].op != "output"}
    assignment[graph.output_name] = 1
    crossing = [n for n, src, dst in crossing_tensors(graph, assignment) if (src, dst) == (0, 1)]
    return CutCase(cfg, resolve(cfg), graph, hardware, plan, node_ms, crossing)


# ---------------------------------------------------------------------------------------------------------------------
# What a run leaves behind

def net_leftovers(owner: int) -> list[str]:
    """Namespaces and root-namespace interfaces made by process ``owner``."""
    return [n for n in namespaces.leftovers(PREFIX) if namespaces._owner_pid(n, PREFIX) == owner]


def marked_workers(marker: str) -> list[psutil.Process]:
    """Live ``harness.worker`` processes (spawned, or forked by a worker zygote, which names them) whose environment
    at start carries ``marker`` (so: started for this test)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "name"]):
        try:
            is_worker = "harness.worker" in (proc.info["cmdline"] or []) or proc.info["name"] == "harness.worker"
            if is_worker and proc.environ().get(MARK) == marker \
                    and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def endpoint_of(worker: psutil.Process) -> str | None:
    """The endpoint a local worker serves: its output goes to ``<endpoint>.log``."""
    try:
        return Path(os.readlink(f"/proc/{worker.pid}/fd/1")).stem
    except OSError:
        return None


def assert_nothing_left(owner: int, marker: str) -> None:
    deadline = time.monotonic() + 10  # a killed process may take a moment to be reaped
    while time.monotonic() < deadline and (net_leftovers(owner) or marked_workers(marker)):
        time.sleep(0.2)
    assert net_leftovers(owner) == [], f"namespaces or veths left: {net_leftovers(owner)}"
    assert [p.pid for p in marked_workers(marker)] == [], "worker processes left running"


@pytest.fixture
def marker(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh marker in this process's environment; every worker it starts inherits it. Checks cleanup after."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(MARK, value)
    zygote.close_shared()  # workers are forked by a zygote: one started now has the marker in its environment
    yield value
    assert_nothing_left(os.getpid(), value)


@pytest.fixture(scope="module")
def case() -> CutCase:
    return cut_case(["link.bandwidth_mbps=50", "scenario.warmup=1", "scenario.inferences=3"])


# ---------------------------------------------------------------------------------------------------------------------
# A normal run

@needs_root
def test_split_model_returns_the_whole_models_output(case: CutCase, marker: str) -> None:
    assert sorted(case.crossing) == ["layer2_0_relu_1", "layer2_1_bn1"]  # the branch and the skip
    seen = {}

    def keep_controller(topology, controller, result):
        seen["controller"] = controller
        return lambda seq: None

    result = case.run(keep_controller)
    # Workers leave cleanly (an abort at interpreter exit used to take the topology down about one run in four).
    assert {n: ep.process.returncode for n, ep in seen["controller"].endpoints.items()} == {"device": 0, "server": 0}
    assert result.backend in shaping.KERNEL_RATE_BACKENDS  # shaped by the kernel between namespaces
    assert sorted(result.outputs) == [0, 1, 2, 3]
    with torch.no_grad():
        for seq, out in result.outputs.items():
            expected = case.graph.module(make_input(case.graph.spec, seq))
            assert out.shape == expected.shape
            assert float((out - expected).abs().max()) <= 1e-5, seq
    expected_bytes = sum(case.graph[n].out_bytes for n in case.crossing)
    for seq in result.outputs:
        sends = [s for s in result.spans if s["seq"] == seq and s["kind"] == "send"]
        recvs = [s for s in result.spans if s["seq"] == seq and s["kind"] == "recv"]
        assert {s["endpoint"] for s in sends} == {"device"} and {s["endpoint"] for s in recvs} == {"server"}
        assert sorted(s["value"] for s in sends) == sorted(case.crossing)
        assert sum(s["bytes"] for s in sends) == expected_bytes == sum(s["bytes"] for s in recvs)
        assert {s["endpoint"] for s in result.spans if s["seq"] == seq and s["kind"] == "compute"} == \
            {"device", "server"}


# ---------------------------------------------------------------------------------------------------------------------
# Failures mid-run: everything is still removed

@needs_root
def test_exception_in_the_controller_mid_run_leaves_nothing(case: CutCase, marker: str) -> None:
    def make_hook(topology, controller, result):
        def before_issue(seq: int) -> None:
            if seq == 2:
                assert marked_workers(marker), "the workers should be running now"
                raise RuntimeError("controller bug at inference 2")
        return before_issue

    with pytest.raises(RuntimeError, match="controller bug at inference 2"):
        case.run(make_hook)


@needs_root
def test_worker_killed_mid_run_fails_the_run_naming_it(marker: str) -> None:
    # A slow link: each inference's 64 KiB take ~100 ms on the wire, so the kill lands during a transfer.
    case = cut_case(["link.bandwidth_mbps=5", "scenario.warmup=1", "scenario.inferences=30"])
    killed: list[int] = []

    def make_hook(topology, controller, result):
        def before_issue(seq: int) -> None:
            if seq == 3:
                pid = controller.endpoints["server"].process.pid
                threading.Timer(0.03, os.kill, (pid, signal.SIGKILL)).start()
                killed.append(pid)
        return before_issue

    with pytest.raises(RunFailed) as err:
        case.run(make_hook)
    assert killed
    reason = str(err.value)
    assert "'server'" in reason or "on server" in reason, reason
    assert "SIGKILL" in reason or "-9" in reason, reason


@needs_root
def test_sigint_to_run_py_mid_run_ends_the_mlflow_run_and_leaves_nothing(tracking_uri: str, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT), MARK: marker}
    args = [*SMALL, "method=server_only", "link.bandwidth_mbps=2", "scenario.inferences=60",
            f"hydra.run.dir={tmp_path}/outputs"]
    read_end, write_end = os.pipe()
    with open(os.devnull, "w") as devnull:
        proc = start_python(ROOT / "run.py", args, tmp_path, env, devnull.fileno(), write_end)
    os.close(write_end)
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(lambda: os.read(read_end, 4096), b"")), daemon=True)
    reader.start()
    try:
        # Mid-run: the progress lines (at each tenth of the 61) show inferences done (each sends the 48 KiB input at
        # 2 Mbit/s: ~0.2 s an inference, so SIGINT comes with most of them still to go).
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            done = [int(n) for n in re.findall(rb"inferences: (\d+)/\d+", b"".join(stderr))]
            if done and max(done) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, b"".join(stderr).decode(errors="replace")[-3000:]
        assert len(marked_workers(marker)) == 2
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    os.close(read_end)
    text = b"".join(stderr).decode(errors="replace")
    assert proc.returncode != 0, text[-3000:]
    assert_nothing_left(proc.pid, marker)
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=["own_runs"])
    assert len(runs) == 1
    assert runs.iloc[0]["status"] in ("KILLED", "FAILED"), runs.iloc[0]["status"]  # KILLED here: never RUNNING
    assert runs.iloc[0]["tags.valid"] == "false"


# ---------------------------------------------------------------------------------------------------------------------
# A hostile peer on the data port

def _header(kind: wire.Kind, nbytes: int) -> bytes:
    return wire.HEADER.pack(wire.MAGIC, wire.VERSION, kind, 0, 0, 0, 0, *[0] * wire.MAX_DIMS, nbytes)


def _bad_peers() -> dict[str, bytes]:
    """What a stranger might send to the server's data port instead of the device's token hello."""
    wrong_token = b'{"hello": "data", "token": "nope"}'
    return {"silent after half a header": _header(wire.Kind.JSON, 10)[:40],
            "garbage": bytes(range(256)) * 4,
            "huge payload announced": _header(wire.Kind.JSON, 1 << 40),
            "wrong token": _header(wire.Kind.JSON, len(wrong_token)) + wrong_token}


def _closed_by_peer(sock: socket.socket, timeout_s: float) -> bool:
    """True when the other end closes the connection (or resets it) within ``timeout_s``."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@needs_root
def test_malformed_frames_on_the_data_port_do_not_crash_the_server(case: CutCase, marker: str) -> None:
    """Strangers reach the server's data port before the device: each is refused, and the run completes.

    The device is kept off the server (an unreachable route in its namespace) until every stranger was served;
    its worker retries until the route is gone.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = case.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    mine = f"{PREFIX}{os.getpid()}-"
    port = int(case.cfg.runtime.base_port) + 1  # where cut_workers makes the server listen
    try:
        deadline = time.monotonic() + 120
        device_worker = None
        while device_worker is None and time.monotonic() < deadline and runner.is_alive():
            device_worker = next((p for p in marked_workers(marker) if endpoint_of(p) == "device"), None)
            time.sleep(0.01)
        assert device_worker is not None, outcome
        names = {n.rsplit("-", 1)[1]: n for n in netns.listnetns() if n.startswith(mine)}
        server_ip = _address_in(names["server"])
        with IPRoute(netns=names["device"]) as ip:
            ip.route("add", dst=f"{server_ip}/32", type="unreachable")
        refused = {}
        for what, payload in _bad_peers().items():
            sock = _connect_when_listening(names["server"], (server_ip, port), deadline)
            with sock:
                sock.sendall(payload)
                refused[what] = _closed_by_peer(sock, HANDSHAKE_DEADLINE_S + 10)
        with IPRoute(netns=names["device"]) as ip:
            ip.route("del", dst=f"{server_ip}/32", type="unreachable")
    finally:
        runner.join(timeout=300)
    assert refused == {what: True for what in _bad_peers()}, outcome.get("error")
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert sorted(result.outputs) == [0, 1, 2, 3]
    with torch.no_grad():
        for seq, out in result.outputs.items():
            assert float((out - case.graph.module(make_input(case.graph.spec, seq))).abs().max()) <= 1e-5


def _address_in(namespace: str) -> str:
    """The IPv4 address of the (single) veth in ``namespace``."""
    with IPRoute(netns=namespace) as ip:
        found = [a.get_attr("IFA_ADDRESS") for a in ip.get_addr(family=socket.AF_INET)
                 if a.get_attr("IFA_LABEL") != "lo"]
    assert len(found) == 1, found
    return found[0]


def _connect_when_listening(namespace: str, address: tuple[str, int], deadline: float) -> socket.socket:
    while True:
        sock = netns.create_socket(namespace, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.connect(address)
            return sock
        except ConnectionRefusedError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
