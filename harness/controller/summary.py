"""What a run or a sweep found, printed at its end: one row per job read back from MLflow (method, model, hardware,
link, decision time, median latency with its 95 % interval, throughput, valid or why not, run id), the methods
ranked where they ran the same model on the same hardware and link (``≈``: within noise, the intervals overlap),
the experiments they are in and the commands that open them in the UI and in the notebook."""

from __future__ import annotations

import shlex
from typing import Any

import mlflow
import pandas as pd

from harness.controller.intervals import inferences_for, ranking, relative_half_width
from harness.controller.tracking import tracking_uri

COLUMNS = {"method": "params.method.name", "model": "params.model.name", "hardware": "params.hardware.name",
           "link": "params.link.name", "Mbit/s": "params.link.bandwidth_mbps", "decision ms": "metrics.decision_time_ms",
           "p50 ms": "metrics.latency_p50_ms", "95% CI": "metrics.latency_p50_ms_ci_low",
           "inf/s": "metrics.throughput_ips", "valid": "tags.valid", "run id": "run_id"}
PREDICTED_COLUMNS = {"p50 ms": "metrics.predicted_latency_ms", "inf/s": "metrics.predicted_throughput_ips"}
WHY_WIDTH = 70  # an invalid run's reason is cut here; the full reason is in its tags
# Runs compared with each other: the same model and input, hardware, link and scenario.
SAME_SETTING = ("params.model.name", "params.model.input_shape", "params.hardware.name", "params.link.bandwidth_mbps",
                "params.link.delay_ms", "params.scenario.name")
PRECISION = 0.02  # the summary says how many inferences a +-2 % interval of the median would take


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


def table(df: pd.DataFrame) -> str:
    """The runs as an aligned text table; superseded attempts (retried at a higher TDF) left out."""
    rows = []
    for _, run in df.iterrows():
        if isinstance(run.get("tags.retried_as"), str) and run.get("tags.retried_as"):
            continue
        row = {name: _cell(run.get(column)) for name, column in COLUMNS.items()}
        row["decision ms"] = _cell(run.get(COLUMNS["decision ms"]), 3)
        row["95% CI"] = _interval_cell(run)
        if predicted_only(run):  # the cost model's figures, marked as such
            for name, metric in PREDICTED_COLUMNS.items():
                if (value := _cell(run.get(metric))) != "-":
                    row[name] = "~" + value
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
    low, high = run.get("metrics.latency_p50_ms_ci_low"), run.get("metrics.latency_p50_ms_ci_high")
    return None if low is None or high is None or pd.isna(low) or pd.isna(high) else (float(low), float(high))


def _interval_cell(run: pd.Series) -> str:
    interval = _interval(run)
    return "-" if interval is None else f"{interval[0]:.2f}-{interval[1]:.2f}"


def counted_valid(df: pd.DataFrame) -> pd.DataFrame:
    """The valid measured runs that count (not superseded by a retry), with a latency interval."""
    if df.empty:
        return df
    keep = (df["tags.valid"] == "true") & (df["status"] == "FINISHED")
    if "tags.retried_as" in df:
        keep &= ~df["tags.retried_as"].fillna("").astype(bool)
    if "metrics.latency_p50_ms_ci_low" not in df:
        return df.iloc[0:0]
    return df[keep & df["metrics.latency_p50_ms_ci_low"].notna()]


def rankings(df: pd.DataFrame) -> list[str]:
    """One line per setting where several methods ran: fastest median latency first, ``<`` where their 95 %
    intervals lie apart, ``≈`` where they overlap (within noise: the data cannot order them)."""
    runs = counted_valid(df)
    columns = [c for c in SAME_SETTING if c in runs]
    lines = []
    for key, group in runs.groupby(columns, sort=False, dropna=False) if columns and not runs.empty else []:
        if group["params.method.name"].nunique() < 2:
            continue
        setting = dict(zip(columns, key if isinstance(key, tuple) else (key,)))
        label = (f"{setting.get('params.model.name')} on {setting.get('params.hardware.name')} at "
                 f"{_cell(setting.get('params.link.bandwidth_mbps'))} Mbit/s")
        lines.append(f"  {label}: {ranking(_by_plan(group))}")
    return lines


def _by_plan(group: pd.DataFrame) -> list[tuple[str, float, tuple[float, float]]]:
    """One entry per plan: methods that chose the same plan (tag ``plan_digest``) are one result, shown with ``=``,
    its interval the union of theirs (they differ only by noise)."""
    entries = []
    digests = group["tags.plan_digest"].fillna(group["run_id"]) if "tags.plan_digest" in group else group["run_id"]
    for _, same in group.groupby(digests, sort=False):
        names = " = ".join(f"{r['params.method.name']} {r['metrics.latency_p50_ms']:.2f}" for _, r in same.iterrows())
        intervals = [_interval(r) for _, r in same.iterrows()]
        entries.append((names + (" (same plan)" if len(same) > 1 else ""), float(same["metrics.latency_p50_ms"].median()),
                        (min(i[0] for i in intervals), max(i[1] for i in intervals))))
    return entries


def precision_hint(df: pd.DataFrame) -> str | None:
    """How many inferences the least precise run would need for a +-2 % interval of its median, if it has not."""
    worst, need = None, 0
    for _, run in counted_valid(df).iterrows():
        width = relative_half_width(_interval(run), run["metrics.latency_p50_ms"])
        count = int(run.get("metrics.measured_inferences") or 0)
        if count and width > PRECISION and (n := inferences_for(PRECISION, width, count)) > need:
            worst, need = run, n
    if worst is None:
        return None
    width = relative_half_width(_interval(worst), worst["metrics.latency_p50_ms"])
    return (f"precision: {worst['params.method.name']} on {worst['params.model.name']} has a +-{100 * width:.1f} % "
            f"interval from {int(worst['metrics.measured_inferences'])} inferences; +-{100 * PRECISION:g} % would "
            f"take about scenario.inferences={need}")


def open_commands(experiments: list[str], uri: str) -> list[str]:
    """How to look at these experiments: the MLflow UI and the notebook, with this store."""
    names = ",".join(experiments)
    store = shlex.quote(uri)
    ui = (f"open {uri} (experiments {names})" if uri.startswith(("http://", "https://"))
          else f"mlflow ui --backend-store-uri {store}   # then http://127.0.0.1:5000, experiment {names}")
    notebook = f"MLFLOW_TRACKING_URI={store} EXPERIMENTS={shlex.quote(names)} python notebooks/paper_tables.py"
    return [f"UI:       {ui}", f"notebook: {notebook}"]


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
    ranked = rankings(df)
    noise = (["median latency, fastest first (95 % intervals; ≈: within noise, <: apart):", *ranked]
             if ranked else [])
    hint = precision_hint(df)
    return "\n".join([table(df), head, *noise, *([hint] if hint else []), *open_commands(experiments, uri)])
