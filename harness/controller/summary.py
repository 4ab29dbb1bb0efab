"""What a run or a sweep found, printed at its end: one row per job read back from MLflow (method, model, hardware,
link, decision time, median latency with its 95 % interval, throughput, valid or why not, run id), the methods
ranked where they ran the same model on the same hardware and link (``≈``: within noise, the intervals overlap),
the experiments they are in and the commands that open them in the UI and as the paper-tables report. Models,
links and rankings are named and judged by ``harness.analysis``, as the notebook does."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import mlflow
import pandas as pd

from harness import PROJECT_ROOT
from harness.analysis.compare import ranked_runs, rankings
from harness.analysis.labels import link_label, link_rates
from harness.analysis.runs import runs_table
from harness.analysis.intervals import inferences_for, relative_half_width
from harness.controller.tracking import tracking_uri

COLUMNS = {"method": "method", "model": "model", "hardware": "hardware", "link": "link", "Mbit/s": "bandwidth_mbps",
           "decision ms": "decision_ms", "p50 ms": "latency_ms", "95% CI": "latency_low",
           "inf/s": "throughput_ips", "valid": "tags.valid", "run id": "run_id"}
WHY_WIDTH = 70  # an invalid run's reason is cut here; the full reason is in its tags
PRECISION = 0.02  # the summary says how many inferences a +-2 % interval of the median would take
DEFAULT_STORE = f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"  # where `make run` records and `make report` reads


def launch_runs(launch: str, uri: str | None = None) -> pd.DataFrame:
    """Every run of one ``run.py`` invocation (tag ``launch``), oldest first, in every experiment."""
    mlflow.set_tracking_uri(uri or tracking_uri())
    df = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.launch = '{launch}'",
                            output_format="pandas")
    return df.sort_values("start_time") if not df.empty else df


def _cell(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cut(why: str) -> str:
    return why if len(why) <= WHY_WIDTH else why[:WHY_WIDTH - 3] + "..."


def predicted_only(run: pd.Series) -> bool:
    """A run of ``mode=predict`` or a job the real-time budget skipped: the cost model's figures, no worker."""
    return run.get("tags.measured") == "false"


def verdict_cell(run: pd.Series) -> str:
    if run.get("tags.valid") == "true" and run.get("status") == "FINISHED":
        return "valid"
    if predicted_only(run):
        why = str(run.get("tags.invalid_reason") or "").removeprefix("skipped: ")
        return "predicted only" + (f", skipped: {_cut(why)}" if why else "")
    return "INVALID: " + _cut(str(run.get("tags.invalid_reason") or run.get("status")))


def table(runs: pd.DataFrame) -> str:
    """The runs (a :func:`runs_table`) as an aligned text table; superseded attempts (retried at a higher TDF) left
    out; a predicted run's figures (the cost model's) marked ``~``."""
    rates = link_rates(PROJECT_ROOT / "conf" / "link")
    rows = []
    for _, run in runs.iterrows():
        if isinstance(run.get("tags.retried_as"), str) and run.get("tags.retried_as"):
            continue
        row = {name: _cell(run.get(column)) for name, column in COLUMNS.items()}
        row["link"] = link_label(run.get("params.link.name"), run.get("bandwidth_mbps"), rates)
        row["Mbit/s"] = _cell(f"{run['bandwidth_mbps']:g}" if pd.notna(run.get("bandwidth_mbps")) else None)
        row["decision ms"] = _cell(run.get("decision_ms"), 3)
        row["95% CI"] = _interval_cell(run)
        if predicted_only(run):
            row.update({name: "~" + row[name] for name in ("p50 ms", "inf/s") if row[name] != "-"})
        row["valid"] = verdict_cell(run)
        if run.get("tags.attempt") not in (None, "1") and isinstance(run.get("tags.attempt"), str):
            row["valid"] += f" (attempt {run['tags.attempt']})"
        rows.append(row)
    if not rows:
        return "(no runs recorded)"
    widths = {name: max(len(name), *(len(r[name]) for r in rows)) for name in COLUMNS}
    line = lambda r: "  ".join(r[n].ljust(widths[n]) for n in COLUMNS).rstrip()  # noqa: E731
    return "\n".join([line({n: n for n in COLUMNS}), line({n: "-" * widths[n] for n in COLUMNS}), *map(line, rows)])


def _interval(run: pd.Series) -> tuple[float, float] | None:
    low, high = run.get("latency_low"), run.get("latency_high")
    return None if low is None or high is None or pd.isna(low) or pd.isna(high) else (float(low), float(high))


def _interval_cell(run: pd.Series) -> str:
    interval = _interval(run)
    return "-" if interval is None else f"{interval[0]:.2f}-{interval[1]:.2f}"


def precision_hint(runs: pd.DataFrame) -> str | None:
    """How many inferences the least precise run (of a :func:`runs_table`) would need for a +-2 % interval of its
    median, if it has not."""
    worst, need = None, 0
    for _, run in ranked_runs(runs).iterrows():
        width = relative_half_width(_interval(run), run["latency_ms"])
        count = int(run.get("metrics.measured_inferences") or 0)
        if count and width > PRECISION and (n := inferences_for(PRECISION, width, count)) > need:
            worst, need = run, n
    if worst is None:
        return None
    width = relative_half_width(_interval(worst), worst["latency_ms"])
    return (f"precision: {worst['method']} on {worst['model']} has a +-{100 * width:.1f} % interval from "
            f"{int(worst['metrics.measured_inferences'])} inferences; +-{100 * PRECISION:g} % would take about "
            f"scenario.inferences={need}")


def open_commands(experiments: list[str], uri: str) -> list[str]:
    """How to look at these experiments: the MLflow UI, and the report (the paper-tables notebook run as a script,
    figures saved beside the store): ``make report`` for the project's own store, else the full command with this
    interpreter (the one that has the packages; a bare ``python`` outside the venv lacks them)."""
    names = ",".join(experiments)
    store = shlex.quote(uri)
    ui = (f"open {uri} (experiments {names})" if uri.startswith(("http://", "https://"))
          else f"mlflow ui --backend-store-uri {store}   # then http://127.0.0.1:5000, experiment {names}")
    script = PROJECT_ROOT / "notebooks" / "paper_tables.py"
    report = (f"make report EXPERIMENTS={shlex.quote(names)}" if uri == DEFAULT_STORE else
              f"MLFLOW_TRACKING_URI={store} EXPERIMENTS={shlex.quote(names)} {shlex.quote(sys.executable)} "
              f"{shlex.quote(str(script))}")
    return [f"UI:       {ui}", f"report:   {report}"]


def summary(launch: str, uri: str | None = None) -> str:
    """The end-of-run report of one invocation, read back from the store it recorded to."""
    uri = uri or tracking_uri()
    df = launch_runs(launch, uri)
    if df.empty:
        return f"no runs of this invocation were recorded in {uri}"
    client = mlflow.MlflowClient(uri)
    experiments = sorted({client.get_experiment(i).name for i in df["experiment_id"].unique()})
    retried = int(df["tags.retried_as"].fillna("").astype(bool).sum()) if "tags.retried_as" in df else 0
    valid = int(((df["tags.valid"] == "true") & (df["status"] == "FINISHED")).sum())
    predicted = int((df["tags.measured"] == "false").sum()) if "tags.measured" in df else 0
    counted = len(df) - retried
    head = (f"{counted} job(s), {valid} valid"
            + (f", {predicted} predicted only (~: the cost model's figures; no worker started)" if predicted else "")
            + (f"; {retried} INVALID attempt(s) retried at a higher TDF (linked by tags retry_of/retried_as)"
               if retried else "")
            + f"; MLflow experiment {', '.join(repr(e) for e in experiments)} in {uri}")
    runs = runs_table(df)
    ranked = rankings(runs)
    noise = (["median latency, fastest first (95 % intervals; ≈: within noise, <: apart):", *ranked]
             if ranked else [])
    hint = precision_hint(runs)
    return "\n".join([table(runs), head, *noise, *([hint] if hint else []), *open_commands(experiments, uri)])
