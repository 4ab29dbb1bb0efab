"""Where runs are recorded. Apart from ``records`` (which imports torch) so that light tools can find the store."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

from harness.analysis.labels import REPORT_TAG, REPORTS


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a local SQLite store (``<its folder>/mlruns/<experiment>``),
    never in whatever directory the process happens to run in (MLflow's default); a server's own default (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlruns" / folder).as_uri()


def figures_dir(uri: str) -> Path:
    """Where the report saves its figures: a ``figures/`` folder beside a local store (the SQLite file, or a file
    store's folder), else (a tracking server) in the working directory."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).resolve().parent / "figures"
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path).resolve().parent / "figures"
    return Path.cwd() / "figures"


def local_store_exists(uri: str) -> bool:
    """False only for a local store (SQLite file or file store) that is not there yet; remote stores count as there.

    Opening a missing local store creates it: a tool that only reads or tidies runs must not leave one behind.
    """
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).exists()
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path).exists()
    return True


def log_report(uri: str, figures: list[Path], experiments: list[str]) -> str:
    """Log a report's figures as the artifacts (``figures/``) of a new run in the experiment ``reports`` (made beside
    a local store, as a run's experiment is), tagged ``report=true`` and with the experiments it read; its run id.

    One run per report, so an earlier report's figures stay as they were; the analysis never counts such a run."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(REPORTS)
    if experiment is None:
        try:
            client.create_experiment(REPORTS, artifact_location=artifact_location(uri, REPORTS))
        except MlflowException:  # made meanwhile by another report
            pass
        experiment = client.get_experiment_by_name(REPORTS)
    read = ", ".join(experiments)
    run = client.create_run(experiment.experiment_id, run_name=f"report of {read}"[:250], tags={
        REPORT_TAG: "true", "experiments": read, "figures_dir": str(figures[0].parent) if figures else "",
        "mlflow.note.content": f"The figures of notebooks/paper_tables.py over the experiments {read}."})
    try:
        for path in figures:
            client.log_artifact(run.info.run_id, str(path), "figures")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def dynamic_record(uri: str, run_id: str) -> tuple[list[dict], list[float]]:
    """A dynamic run as recorded: its decisions (``decisions.json``) and its per-inference latencies, in order."""
    import json
    import tempfile

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    with tempfile.TemporaryDirectory() as tmp:
        decisions = json.loads(Path(client.download_artifacts(run_id, "decisions.json", tmp)).read_text())
    history = client.get_metric_history(run_id, "inference_latency_ms")
    return decisions, [m.value for m in sorted(history, key=lambda m: m.step)]
