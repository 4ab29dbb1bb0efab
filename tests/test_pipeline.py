"""End to end: run.py -> real split inference through namespaces -> MLflow records with ARCHITECTURE.md's names."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow

from tests.conftest import needs_root, run_cli

SMALL = ["model=resnet18", "model.input_shape=[1,3,64,64]", "hardware=local_pair", "scenario.inferences=3"]
CORE_METRICS = ["decision_time_ms", "offline_time_ms", "predicted_latency_ms", "latency_ms", "latency_p50_ms",
                "latency_p90_ms", "latency_p99_ms", "throughput_ips", "bytes_transferred", "max_abs_error",
                "measured_bandwidth_mbps", "tdf"]


def runs(uri: str, experiment: str = "own_runs"):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="pandas")


@needs_root
def test_single_run_records_every_metric_and_artifact(tracking_uri: str, tmp_path: Path) -> None:
    proc = run_cli([*SMALL, "method=neurosurgeon", "link.bandwidth_mbps=50"], tracking_uri, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = runs(tracking_uri)
    assert len(df) == 1
    run = df.iloc[0]
    assert run["status"] == "FINISHED"
    for metric in CORE_METRICS:
        assert f"metrics.{metric}" in df.columns, metric
    assert run["tags.valid"] == "true"
    assert run["tags.link_backend"] in ("netem", "tbf", "htb", "userspace")
    assert run["metrics.max_abs_error"] <= 1e-4
    assert run["metrics.tdf"] == 1.0  # local_pair: nothing dilated
    assert run["params.model.name"] == "resnet18" and run["params.link.bandwidth_mbps"] == "50.0"
    assert run["metrics.latency_p50_ms"] <= run["metrics.latency_p99_ms"]
    assert 0 <= run["metrics.issue_hop_ms"] < run["metrics.latency_p50_ms"]  # the device said when commands came
    assert run["tags.check_overrun"].startswith("pass") and run["tags.check_outputs"] == "pass: 4 of 4 outputs received"
    assert run["tags.check_percentiles"].startswith("fail: 3 measured inferences; p90 needs 10")  # 3 cannot give p99
    assert any(run[f"metrics.peak_rss_mb_{e}"] > 0 for e in ("device", "server") if f"metrics.peak_rss_mb_{e}" in df)
    client = mlflow.tracking.MlflowClient(tracking_uri)
    names = {a.path for a in client.list_artifacts(run["run_id"])}
    assert {"plan.json", "config.yaml", "timeline.png", "environment.json"} <= names
    plan = json.loads(Path(client.download_artifacts(run["run_id"], "plan.json", str(tmp_path))).read_text())
    assert {"method", "bandwidth_mbps", "predicted_latency_ms", "nodes"} <= set(plan)
    assert plan["method"] == "neurosurgeon" and plan["bandwidth_mbps"] == 50.0
    node = plan["nodes"][0]
    assert set(node) >= {"name", "inputs", "device_ms", "server_ms", "out_bytes", "side"}
    assert {n["side"] for n in plan["nodes"]} <= {"device", "server"}


@needs_root
def test_sweep_records_one_run_per_job(tracking_uri: str, tmp_path: Path) -> None:
    proc = run_cli(["-m", *SMALL, "method=device_only,server_only", "link.bandwidth_mbps=5,200"],
                   tracking_uri, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = runs(tracking_uri)
    assert len(df) == 4
    assert set(df["params.method.name"]) == {"device_only", "server_only"}
    assert (df["tags.valid"] == "true").all()
    server = df[df["params.method.name"] == "server_only"].set_index("params.link.bandwidth_mbps")
    device = df[df["params.method.name"] == "device_only"]
    # server-only ships the input (3*64*64 float32) every inference; device-only sends nothing
    assert (server["metrics.bytes_transferred"] == 3 * 64 * 64 * 4).all()
    assert (device["metrics.bytes_transferred"] == 0).all()
    # a 40x slower link makes server-only slower: the link is really shaped (the input takes 79 ms at 5 Mbit/s, 2 ms
    # at 200: more than real compute's swing between two jobs on a loaded 2-core machine, ~20 ms)
    assert server.loc["5.0", "metrics.latency_ms"] > server.loc["200.0", "metrics.latency_ms"] + 40
    # the sweep ends with one row per job, read back from MLflow, and where to look
    rows = [line for line in proc.stdout.splitlines() if line.split()[:1] in (["device_only"], ["server_only"])]
    assert sorted(line.split()[-1] for line in rows) == sorted(df["run_id"]) and all(" valid " in r for r in rows)
    assert "4 job(s), 4 valid; MLflow experiment 'own_runs'" in proc.stdout


@needs_root
def test_crashed_worker_marks_run_failed_and_sweep_goes_on(tracking_uri: str, tmp_path: Path) -> None:
    # A factory that only fails inside workers (SPLITBENCH_ROLE is set there) stands for a crashing endpoint.
    proc = run_cli(["-m", "model=custom", "model._target_=tests.crash_models.crash_in_worker",
                    "model.input_shape=[1,3,32,32]", "hardware=local_pair", "scenario.inferences=2",
                    "method=server_only,device_only"], tracking_uri, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = runs(tracking_uri)
    assert len(df) == 2
    assert (df["status"] == "FAILED").all()
    assert df["tags.invalid_reason"].str.contains("worker").all()
    assert (df["tags.valid"] == "false").all()


def test_bad_value_stops_before_any_run(tracking_uri: str, tmp_path: Path) -> None:
    proc = run_cli(["link.bandwidth_mbps=-1"], tracking_uri, tmp_path)
    assert proc.returncode != 0
    assert "link.bandwidth_mbps must be a finite number > 0 (Mbit/s), got -1" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists() or runs(tracking_uri).empty
