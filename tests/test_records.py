"""Where a run's records land: its artifacts beside the store it was recorded to, not in the working directory."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from harness.controller.records import RunRecord


def test_artifacts_land_beside_the_store_not_in_the_working_directory(tracking_uri: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "where_the_process_runs"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with RunRecord("my sweep/1", {"model": {"name": "m"}}) as rec:
        rec.artifact_json({"a": 1}, "plan.json")
    store = Path(tracking_uri[len("sqlite:///"):]).parent
    run = mlflow.get_run(rec.run_id)
    assert run.info.artifact_uri.startswith((store / "mlruns" / "my_sweep_1").as_uri())
    assert list((store / "mlruns" / "my_sweep_1").rglob("plan.json"))
    assert list(elsewhere.iterdir()) == []  # MLflow's default would have made ./mlruns here
    with RunRecord("my sweep/1", {"model": {"name": "m"}}):  # the experiment is reused, not created again
        pass
