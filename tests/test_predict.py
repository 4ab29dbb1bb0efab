"""mode=predict and the real-time budget: the cost model's figures recorded without starting a worker.

The model used here builds in the controller but kills any worker that builds it (tests/crash_models.py): a job that
started a worker would end FAILED, so a FINISHED record proves that none started.
"""

from __future__ import annotations

import mlflow
import pytest
from hydra import compose, initialize_config_dir

from harness.config import register, resolve
from harness.controller.predict import predict

from tests.conftest import ROOT, run_cli

CRASHING = ["model=custom", "model._target_=tests.crash_models.crash_in_worker", "model.input_shape=[1,3,32,32]"]
register()


def runs(uri: str, experiment: str) -> "mlflow.entities.Run":
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="pandas")


def artifacts(uri: str, run_id: str) -> set[str]:
    return {a.path for a in mlflow.tracking.MlflowClient(uri).list_artifacts(run_id)}


def test_predict_sweep_records_one_predicted_run_per_job_without_a_worker(tracking_uri: str, tmp_path) -> None:
    proc = run_cli(["-m", "mode=predict", *CRASHING, "hardware=rpi3b_cpu_server", "experiment.name=predicted",
                    "method=dads,device_only,server_only", "link.bandwidth_mbps=1,100"], tracking_uri, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = runs(tracking_uri, "predicted")
    assert len(df) == 6
    assert (df["status"] == "FINISHED").all() and (df["tags.measured"] == "false").all()
    assert (df["tags.valid"] != "true").all()  # never counted as a measurement
    assert (df["metrics.predicted_latency_ms"] > 0).all() and (df["metrics.predicted_throughput_ips"] > 0).all()
    assert "metrics.latency_ms" not in df or df["metrics.latency_ms"].isna().all()
    for run_id in df["run_id"]:
        assert "plan.json" in artifacts(tracking_uri, run_id) and "spans.json" not in artifacts(tracking_uri, run_id)
    latency = df.set_index(["params.method.name", "params.link.bandwidth_mbps"])["metrics.predicted_latency_ms"]
    # server-only ships the input: 100x the rate, less time; device-only sends nothing, the rate does not matter
    assert latency[("server_only", "1.0")] > latency[("server_only", "100.0")]
    assert latency[("device_only", "1.0")] == latency[("device_only", "100.0")]
    for bw in ("1.0", "100.0"):  # DADS's exact min-cut is never worse than either side alone
        assert latency[("dads", bw)] <= min(latency[("device_only", bw)], latency[("server_only", bw)]) + 1e-9
    # and it ends with the summary a measured sweep prints, each row the cost model's figures, marked ~
    assert "6 job(s), 0 valid, 6 predicted only" in proc.stdout, proc.stdout[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.rstrip().endswith(tuple(df["run_id"]))]
    assert len(rows) == 6 and all("predicted only" in row and "~" in row for row in rows)
    assert all(f"~{v:.2f}" in proc.stdout for v in df["metrics.predicted_latency_ms"])


def test_over_budget_job_is_recorded_skipped_with_its_prediction(tracking_uri: str, tmp_path) -> None:
    proc = run_cli(["-m", *CRASHING, "hardware=rpi3b_cpu_server", "experiment.name=budget",
                    "method=server_only", "link.bandwidth_mbps=0.5", "runtime.max_real_minutes=0.05"],
                   tracking_uri, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = runs(tracking_uri, "budget")
    assert len(df) == 1
    run = df.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.skipped"] == "over_budget" and run["tags.measured"] == "false"
    assert run["metrics.predicted_real_s"] > 0.05 * 60
    assert "runtime.max_real_minutes=0.05" in run["tags.invalid_reason"]
    assert "spans.json" not in artifacts(tracking_uri, run["run_id"])
    # the end-of-run summary says it was predicted only, with the cost model's latency marked ~, never INVALID
    row = next(line for line in proc.stdout.splitlines() if line.endswith(run["run_id"]))
    assert "predicted only, skipped: predicted real time" in row and "INVALID" not in row
    assert f"~{run['metrics.predicted_latency_ms']:.2f}" in row
    assert "1 job(s), 0 valid, 1 predicted only" in proc.stdout


@pytest.mark.parametrize("scenario", ["single_stream", "stream"])
def test_predicted_real_time_grows_with_inferences_and_dilation(scenario: str) -> None:
    """Real time = set-up + TDF x emulated time of all inferences; a pipelined stream is paced by its slowest stage."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        few, many = (compose(config_name="config", overrides=[
            *CRASHING, "hardware=rpi3b_cpu_server", "method=dads", "link=3g", f"scenario={scenario}",
            "runtime.tdf=4", f"scenario.inferences={n}"]) for n in (2, 8))
    short, long = predict(resolve(few)), predict(resolve(many))
    assert short.metrics["predicted_tdf"] == long.metrics["predicted_tdf"] == 4.0
    extra_s = long.metrics["predicted_real_s"] - short.metrics["predicted_real_s"]
    per_inference_s = 1.0 / long.metrics["predicted_throughput_ips"]
    assert extra_s == pytest.approx(4.0 * 6 * per_inference_s, rel=1e-6)
    if scenario == "single_stream":
        assert per_inference_s == pytest.approx(long.metrics["predicted_latency_ms"] / 1e3)
    else:
        assert per_inference_s <= long.metrics["predicted_latency_ms"] / 1e3 * (1 + 1e-9)  # equal when one stage paces it
