"""Real boards measured right, end to end through ``python run.py`` with workers started as an operator would
(``python -m harness.worker --control tcp:...``, here on loopback): one clock across machines (a worker in a time
namespace 100000 s ahead), the secret kept out of every record, models the board's owner did not allow refused,
and the faults a deployment meets (the controller SIGKILLed, a board's worker killed)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import mlflow
import pytest

from harness.network.zygote import ForkedProcess
from tests.boards import TOKEN, boards, free_port, remote_override, start_board, stop_board
from tests.conftest import IS_ROOT, ROOT, run_cli, start_python

pytestmark = pytest.mark.e2e  # real board worker processes and run.py

SMALL = ["model=resnet18", "model.input_shape=[1,3,64,64]", "hardware=local_pair", "method=server_only"]
NO_BUDGET = "runtime.max_real_minutes=null"  # a run killed mid-way is predicted to last ~30 min: not to be skipped
AHEAD_S = 100000
TIME_NAMESPACE = ["unshare", "--time", f"--monotonic={AHEAD_S}", f"--boottime={AHEAD_S}", "--fork"]


def runs(tracking_uri: str):
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(experiment_names=["own_runs"], order_by=["attributes.start_time ASC"])


def texts_under(folder: Path) -> dict[str, str]:
    return {str(p): p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file()}


@pytest.mark.skipif(not IS_ROOT, reason="a time namespace (unshare --time) needs root")
def test_a_worker_100000_s_ahead_gives_the_same_latency_and_no_record_holds_the_secret(
        tracking_uri: str, tmp_path: Path) -> None:
    ahead_port = free_port()
    ahead = start_board(ahead_port, tmp_path / "ahead.log", prefix=TIME_NAMESPACE)
    secret_file = tmp_path / "board.secret"
    secret_file.write_text(TOKEN + "\n")
    try:
        with boards(tmp_path) as ports:
            base = free_port()
            common = [*SMALL, "scenario.inferences=30", f"runtime.base_port={base}"]
            same = run_cli([*common, remote_override(ports)], tracking_uri, tmp_path,
                           env={"SPLITBENCH_TOKEN": TOKEN})
            assert same.returncode == 0, same.stderr[-3000:]
            shifted = run_cli([*common, remote_override({**ports, "server": ahead_port}),
                               f"runtime.token_file={secret_file}"], tracking_uri, tmp_path,
                              env={"SPLITBENCH_TOKEN": ""})
            assert shifted.returncode == 0, shifted.stderr[-3000:]
            outputs = same.stdout + same.stderr + shifted.stdout + shifted.stderr
    finally:
        stop_board(ahead)
    df = runs(tracking_uri)
    assert len(df) == 2 and (df["tags.valid"] == "true").all()
    ref, moved = df.iloc[0], df.iloc[1]
    assert abs(moved["metrics.clock_offset_ms_server"] - AHEAD_S * 1e3) < 50, moved["metrics.clock_offset_ms_server"]
    assert abs(ref["metrics.clock_offset_ms_server"]) < 50
    assert moved["metrics.clock_uncertainty_ms_server"] < 5
    # The secret: not in params, artifacts, Hydra's output folder, the run's output or the workers' logs.
    client = mlflow.MlflowClient(tracking_uri)
    for run_id in df["run_id"]:
        run = client.get_run(run_id)
        assert TOKEN not in repr(run.data.params) + repr(run.data.tags)
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / "artifacts" / run_id)))
        assert {"config.yaml", "environment.json"} <= {p.name for p in local.iterdir()}
        leaked = [name for name, text in texts_under(local).items() if TOKEN in text]
        assert not leaked, leaked
    hydra = texts_under(tmp_path / "outputs")
    assert any(name.endswith(".hydra/config.yaml") for name in hydra)
    assert not [name for name, text in hydra.items() if TOKEN in text]
    assert TOKEN not in outputs
    assert not [p.name for p in tmp_path.glob("*.log") if TOKEN in p.read_text(errors="replace")]
    # Last: the same latency on either clock (an offset missed anywhere would show as 10^8 ms). The two runs compute
    # on two different worker processes, unshaped and undilated, whose real ResNet-18 times differed by 11-27 % on
    # one machine (quiet to loaded) and by 2.1x on a shared host beside the suite's other tests (20.2 against
    # 42.1 ms): a factor of five bounds that noise, and is still six orders of magnitude inside a missed conversion.
    ratio = moved["metrics.latency_p50_ms"] / ref["metrics.latency_p50_ms"]
    assert 0.2 <= ratio <= 5, (moved["metrics.latency_p50_ms"], ref["metrics.latency_p50_ms"])


def test_a_secret_given_as_config_is_refused_before_hydra_records_it(tracking_uri: str, tmp_path: Path) -> None:
    proc = run_cli([*SMALL, f"runtime.token={TOKEN}"], tracking_uri, tmp_path)
    assert proc.returncode != 0
    assert "runtime.token=... is not accepted" in proc.stderr and "SPLITBENCH_TOKEN" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_model_the_board_does_not_allow_fails_the_run_naming_it(tracking_uri: str, tmp_path: Path) -> None:
    with boards(tmp_path, args={"server": ["--allow-models", "harness.model.zoo.*"]}) as ports:
        proc = run_cli([*SMALL, "scenario.inferences=1", remote_override(ports), f"runtime.base_port={free_port()}"],
                       tracking_uri, tmp_path, env={"SPLITBENCH_TOKEN": TOKEN})
    assert proc.returncode != 0
    run = runs(tracking_uri).iloc[0]
    assert run["status"] == "FAILED"
    assert "worker 'server'" in run["tags.invalid_reason"]
    assert "'torchvision.models.resnet18' is not allowed" in run["tags.invalid_reason"]


def start_run(args: list[str], tracking_uri: str, tmp_path: Path, name: str) -> tuple[ForkedProcess, Path]:
    err = tmp_path / f"{name}.err"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT), "SPLITBENCH_TOKEN": TOKEN}
    with open(os.devnull, "w") as out, err.open("w") as log:
        proc = start_python(ROOT / "run.py", [*args, f"hydra.run.dir={tmp_path}/outputs"], tmp_path, env,
                            out.fileno(), log.fileno())
    return proc, err


def wait_for_inferences(proc: ForkedProcess, err: Path, timeout_s: float = 180) -> None:
    """Until the run's progress bar shows inferences under way."""
    deadline = time.monotonic() + timeout_s
    while "inferences:" not in err.read_text(errors="replace"):
        assert proc.poll() is None, err.read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never started its inferences"
        time.sleep(0.2)
    time.sleep(1.0)


def test_a_controller_killed_mid_run_leaves_the_boards_serving(tracking_uri: str, tmp_path: Path) -> None:
    with boards(tmp_path) as ports:
        base = free_port()
        proc, err = start_run([*SMALL, "scenario.inferences=100000", NO_BUDGET, remote_override(ports),
                               f"runtime.base_port={base}"], tracking_uri, tmp_path, "killed")
        wait_for_inferences(proc, err)
        proc.kill()  # SIGKILL: no cleanup of any kind on the controller's side
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        for name in ports:  # each board's run notices the lost control connection and ends
            while "ended with code" not in (tmp_path / f"{name}.log").read_text():
                assert time.monotonic() < deadline, (tmp_path / f"{name}.log").read_text()
                time.sleep(0.2)
        after = run_cli([*SMALL, "scenario.inferences=2", remote_override(ports), f"runtime.base_port={base}"],
                        tracking_uri, tmp_path, env={"SPLITBENCH_TOKEN": TOKEN})
    assert after.returncode == 0, after.stderr[-3000:]
    df = runs(tracking_uri)
    assert (df["tags.valid"] == "true").sum() == 1


def test_a_board_worker_killed_mid_run_fails_the_run_naming_it(tracking_uri: str, tmp_path: Path) -> None:
    ports = {"device": free_port(), "server": free_port()}
    device = start_board(ports["device"], tmp_path / "device.log")
    server = start_board(ports["server"], tmp_path / "server.log")
    try:
        proc, err = start_run([*SMALL, "scenario.inferences=100000", NO_BUDGET, remote_override(ports),
                               f"runtime.base_port={free_port()}"], tracking_uri, tmp_path, "board_killed")
        wait_for_inferences(proc, err)
        os.killpg(server.pid, signal.SIGKILL)  # the board's worker and its run
        assert proc.wait(timeout=120) != 0
    finally:
        stop_board(server)
        stop_board(device)
    run = runs(tracking_uri).iloc[0]
    assert run["status"] == "FAILED"
    assert "worker 'server'" in run["tags.invalid_reason"], run["tags.invalid_reason"]


def test_a_data_port_already_taken_on_a_board_fails_the_run_naming_it(tracking_uri: str, tmp_path: Path) -> None:
    base = free_port()
    with boards(tmp_path) as ports, socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))  # where the server board's run listens for the device's tensors
        taken.listen(1)
        proc = run_cli([*SMALL, "scenario.inferences=1", remote_override(ports), f"runtime.base_port={base}"],
                       tracking_uri, tmp_path, env={"SPLITBENCH_TOKEN": TOKEN})
    assert proc.returncode != 0
    run = runs(tracking_uri).iloc[0]
    assert run["status"] == "FAILED"
    reason = run["tags.invalid_reason"]
    assert "worker 'server'" in reason and "Address already in use" in reason and str(base + 1) in reason, reason
    assert "ending this run" not in (tmp_path / "server.log").read_text()  # not taken for a lost controller
