"""The runs table: MLflow's columns read once into short ones, which runs count, the latest run of each cell, the
runs a section leaves out, the cells a preset swept that have no run, and the command that records a missing one."""

from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from harness.analysis.labels import CUSTOM, REPORT_TAG, command, model_label

SPATIAL = ("halp", "modnn")  # methods of kind "spatial" in runs recorded before the tag method_kind
# the MLflow columns read into short ones as they are
PARAMS = {"method": "params.method.name", "hardware": "params.hardware.name", "scenario": "params.scenario.name",
          "topology": "params.hardware.topology", "experiment": "params.experiment.name"}


RAW = "raw"  # every tensor crosses as float32: the papers' setting, and runs recorded before codecs
COMPRESSED_OFFLOAD = "server_only+jpeg90"  # the naive baseline split methods must beat: the camera's JPEG offloaded


def with_codec(method: str, codec: str) -> str:
    """A method as the tables name it: with its codec where one compresses (``server_only+jpeg90``), so that a
    method run with and without a codec are two entries of one setting."""
    nothing_crosses = method == "device_only"  # edge-only sends nothing: no codec applies, whatever was set
    return method if nothing_crosses or codec in (RAW, "", None) or pd.isna(codec) else f"{method}+{codec}"


def method_overrides(label: str) -> dict[str, str]:
    """The ``run.py`` overrides that record the method a table names: ``server_only+jpeg90`` is
    method=server_only codec.input=jpeg codec.jpeg_quality=90; a plain name is itself."""
    method, _, codec = label.partition("+")
    out = {"method": method}
    first, _, features = codec.partition("+")
    if first.startswith("jpeg"):
        out.update({"codec.input": "jpeg", "codec.jpeg_quality": first[len("jpeg"):] or "90"})
    elif first and first != RAW:
        out["codec.input"] = first
    if features:
        out["codec.features"] = features
    return out


def column(df: pd.DataFrame, name: str) -> pd.Series:
    """A column of the table, all NaN where no run recorded it (MLflow leaves a never-logged name out)."""
    return df[name] if name in df else pd.Series(np.nan, index=df.index, dtype=object)


def numbers(df: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(column(df, name), errors="coerce")


def counts(df: pd.DataFrame) -> pd.Series:
    """Runs that count: FINISHED and tagged valid (a run's tags are set before it ends: valid alone is not enough)."""
    return column(df, "status").eq("FINISHED") & column(df, "tags.valid").eq("true")


def runs_table(df: pd.DataFrame, experiments: Mapping[str, str] | None = None) -> pd.DataFrame:
    """``mlflow.search_runs``'s table with short columns: model (its label), method (with its codec where one
    compresses: :func:`with_codec`), codec, hardware, topology, scenario,
    experiment, bandwidth_mbps, num_servers, tasks, kind (cut or spatial), source (measured or predicted), counts,
    and latency_ms, latency_low/high (95 % interval of the median), throughput_ips, decision_ms, oldest first.
    ``experiments`` (experiment id -> name) names the experiment of a run that did not record it.
    Latency is the median (``latency_p50_ms``, whose interval is recorded; the mean where a run has no median);
    a predicted run (``tags.measured == "false"``) carries the cost model's figures, never counted as measured.
    The report's own runs (tag ``report``: figures, no measurement) are not runs of this table at all."""
    df = df[~column(df, f"tags.{REPORT_TAG}").eq("true")]
    out = df.copy()
    for short, name in PARAMS.items():
        out[short] = column(df, name)
    out["codec"] = column(df, "tags.codec").fillna(RAW)
    out["method"] = [with_codec(m, c) for m, c in zip(out["method"], out["codec"])]
    if experiments:
        out["experiment"] = out["experiment"].fillna(column(df, "experiment_id").map(experiments))
    out["model"] = [model_label(n, t, s) for n, t, s in zip(column(df, "params.model.name"),
                                                            column(df, "params.model._target_"),
                                                            column(df, "params.model.input_shape"))]
    out["bandwidth_mbps"] = numbers(df, "params.link.bandwidth_mbps")
    out["num_servers"] = numbers(df, "params.hardware.num_servers").fillna(1).astype(int)
    out["tasks"] = numbers(df, "params.method.tasks_per_batch").fillna(1).astype(int)
    out["kind"] = column(df, "tags.method_kind").fillna(out["method"].isin(SPATIAL).map({True: "spatial",
                                                                                         False: "cut"}))
    predicted = column(df, "tags.measured").eq("false")
    out["source"] = np.where(predicted, "predicted", "measured")
    out["counts"] = counts(df) | (predicted & column(df, "status").eq("FINISHED"))
    median = numbers(df, "metrics.latency_p50_ms").fillna(numbers(df, "metrics.latency_ms"))
    out["latency_ms"] = median.where(~predicted, numbers(df, "metrics.predicted_latency_ms"))
    out["latency_low"] = numbers(df, "metrics.latency_p50_ms_ci_low").where(~predicted)
    out["latency_high"] = numbers(df, "metrics.latency_p50_ms_ci_high").where(~predicted)
    out["throughput_ips"] = numbers(df, "metrics.throughput_ips").where(
        ~predicted, numbers(df, "metrics.predicted_throughput_ips"))
    out["decision_ms"] = numbers(df, "metrics.decision_time_ms")
    return out.sort_values("start_time") if "start_time" in out else out


def latest(runs: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The latest counting run of each cell (``keys``; measured and predicted runs are separate cells)."""
    good = runs[runs["counts"]] if not runs.empty else runs
    return good.drop_duplicates([*keys, "source"], keep="last")


def left_out(runs: pd.DataFrame) -> pd.DataFrame:
    """The measured runs that do not count (INVALID, FAILED, KILLED, still RUNNING), with why, except attempts a
    retry superseded (the job's last attempt is its run)."""
    if runs.empty:
        return runs.assign(why=pd.Series(dtype=object))
    superseded = column(runs, "tags.retried_as").fillna("").astype(str).ne("")
    out = runs[~runs["counts"] & ~superseded]
    reason = column(out, "tags.invalid_reason")
    return out.assign(why=reason.where(reason.astype(str).str.len().gt(0) & reason.notna(), out["status"]))


def missing_cells(runs: pd.DataFrame, axes: Sequence[str]) -> list[dict[str, str]]:
    """The cells of the user's sweeps that have no counting run: within each launch (one ``run.py -m``, tag
    ``launch``; a run recorded without one is a launch of its own) every combination of the values its runs show on
    the swept ``axes`` (MLflow columns), so a sweep cut short or a job that failed is named, never a combination the
    user did not ask for."""
    if runs.empty or not axes:
        return []
    text = runs.reindex(columns=list(axes)).map(str)  # as recorded; "nan" where a run has no such param
    have = set(map(tuple, text[runs["counts"]].itertuples(index=False)))
    cells: dict[tuple, None] = {}
    for _, launch in text.groupby(column(runs, "tags.launch").fillna(column(runs, "run_id")), sort=False):
        values = [sorted(launch[a].unique()) for a in axes]
        cells.update(dict.fromkeys(c for c in itertools.product(*values) if c not in have))
    return [dict(zip(axes, cell)) for cell in cells]


def overrides(run: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """The ``run.py`` overrides that repeat ``run``'s setting (model, input, hardware, link rate, scenario,
    experiment), with ``changes`` on top: e.g. ``method="dads"`` for the baseline it lacks."""
    name, target = str(run.get("params.model.name")), run.get("params.model._target_")
    out: dict[str, Any] = {"model": name}
    if name == CUSTOM:
        out["model._target_"] = target
        out.update({f"+{k[len('params.'):]}": v for k, v in run.items()
                    if str(k).startswith("params.model.args.") and _given(v)})
    out["model.input_shape"] = str(run.get("params.model.input_shape")).replace(" ", "")
    out["hardware"] = run.get("params.hardware.name")
    if run.get("params.hardware.topology") == "star":
        out["hardware.num_servers"] = run.get("params.hardware.num_servers")
    rate = pd.to_numeric(run.get("params.link.bandwidth_mbps"), errors="coerce")
    out["link.bandwidth_mbps"] = None if pd.isna(rate) else f"{rate:g}"
    out["scenario"] = run.get("params.scenario.name")
    out["experiment.name"] = run.get("experiment", run.get("params.experiment.name"))
    if run.get("tags.measured") == "false":
        out["mode"] = "predict"
    return {k: v for k, v in {**out, **changes}.items() if _given(v)}


def _given(value: Any) -> bool:
    """A value the run recorded (MLflow writes an unset one as "None"; pandas fills an absent one with NaN)."""
    return value is not None and str(value) not in ("None", "nan", "")


def commands_for(runs: pd.DataFrame, **changes: Any) -> list[str]:
    """One command per setting that records ``changes`` beside ``runs`` (a sweep over their link rates)."""
    lines: dict[str, list[str]] = {}
    for _, run in runs.iterrows():
        args = overrides(run, **changes)
        rate = args.pop("link.bandwidth_mbps", None)
        rates = lines.setdefault(command(args, sweep=True), [])
        if rate is not None and rate not in rates:
            rates.append(rate)
    return [line + (f" link.bandwidth_mbps={','.join(rates)}" if rates else "") for line, rates in lines.items()]


def experiment_line(runs: pd.DataFrame, name: str, jobs: int = 0) -> str:
    """What one experiment holds: valid measured runs, predicted runs, runs left out, and its presets' jobs."""
    measured = int((runs["counts"] & runs["source"].eq("measured")).sum()) if not runs.empty else 0
    predicted = int(runs["source"].eq("predicted").sum()) if not runs.empty else 0
    return (f"{name}: {measured} valid measured runs, {predicted} predicted, {len(left_out(runs))} left out"
            + (f" (its presets sweep {jobs} jobs)" if jobs else ""))
