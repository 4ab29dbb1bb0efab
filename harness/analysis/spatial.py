"""Spatial methods (HALP, MoDNN) against the host edge server alone: per-task time, speed-up, and whether the two
are within noise of each other."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.analysis.runs import commands_for, latest, numbers
from harness.analysis.intervals import overlaps

SPATIAL_CELL = ["hardware", "model", "bandwidth_mbps", "tasks", "num_servers", "method"]
HOST_CELL = ["hardware", "model"]


def host_alone(runs: pd.DataFrame) -> pd.DataFrame:
    """The host edge server by itself (``device_only`` on a star: it runs on es0 alone and sends nothing, so the
    link and the number of servers do not matter): the latest of each hardware and model, per source."""
    host = runs[(runs["method"] == "device_only") & (runs["topology"] == "star")] if not runs.empty else runs
    return latest(host, HOST_CELL)


def task_times(runs: pd.DataFrame) -> pd.DataFrame:
    """Per-task time of spatial runs (``task_time_ms``, 1000 / throughput: tasks of one batch overlap) and its
    interval from the throughput's."""
    task = numbers(runs, "metrics.task_time_ms").fillna(1000 / runs["throughput_ips"])
    return runs.assign(task_ms=task, task_low=1000 / numbers(runs, "metrics.throughput_ips_ci_high"),
                       task_high=1000 / numbers(runs, "metrics.throughput_ips_ci_low"))


def speedups(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per spatial run (the latest of each cell): host-alone latency, task time, speed-up = host alone /
    task time, the plan's own predicted speed-up, and ``within noise`` where the host's latency interval and the
    task time's overlap. A spatial run with no host-alone run beside it has no speed-up (NaN)."""
    spatial = runs[runs["kind"] == "spatial"] if not runs.empty else runs
    if spatial.empty:
        return pd.DataFrame()
    cells = task_times(latest(spatial, SPATIAL_CELL))
    host = host_alone(runs).set_index([*HOST_CELL, "source"])
    ref = host.reindex(pd.MultiIndex.from_frame(cells[[*HOST_CELL, "source"]]))
    table = cells.set_index([*SPATIAL_CELL, "source"])
    out = pd.DataFrame({"host_alone_ms": ref["latency_ms"].to_numpy(), "task_ms": table["task_ms"]}, index=table.index)
    out["speedup_x"] = out["host_alone_ms"] / out["task_ms"]
    out["plan's predicted_x"] = numbers(table, "metrics.predicted_speedup")
    out["within noise"] = [
        "yes" if not np.isnan([*h, *t]).any() and overlaps(h, t) else ""
        for h, t in zip(zip(ref["latency_low"].to_numpy(dtype=float), ref["latency_high"].to_numpy(dtype=float)),
                        zip(table["task_low"].to_numpy(dtype=float), table["task_high"].to_numpy(dtype=float)))]
    return out.sort_index()


def missing_host_alone(runs: pd.DataFrame) -> list[str]:
    """The commands that record the host-alone baseline where spatial runs lack it."""
    spatial = runs[runs["kind"] == "spatial"] if not runs.empty else runs
    have = set(map(tuple, host_alone(runs)[[*HOST_CELL, "source"]].itertuples(index=False)))
    lacking = spatial[[tuple(r) not in have for r in spatial[[*HOST_CELL, "source"]].itertuples(index=False)]]
    return commands_for(lacking.drop_duplicates([*HOST_CELL, "source"]), method="device_only",
                        **{"link.bandwidth_mbps": None, "method.tasks_per_batch": None})


def speedup_curves(table: pd.DataFrame, method: str = "halp", tasks: int = 1) -> pd.DataFrame:
    """One spatial method's speed-up over the host alone as a gains table (index hardware, model, num_servers,
    bandwidth_mbps, source; column ``gain``): a measured run's measured speed-up, a predicted run's the plan's
    prediction (a predicted run has no host-alone run to divide by)."""
    order = ["hardware", "model", "num_servers", "bandwidth_mbps", "source"]
    if table.empty or method not in table.index.unique("method"):
        return pd.DataFrame({"gain": []}, index=pd.MultiIndex.from_arrays([[]] * len(order), names=order))
    rows = table.xs(method, level="method")
    rows = rows[rows.index.get_level_values("tasks") == tasks].droplevel("tasks")
    measured = rows.index.get_level_values("source") == "measured"
    gain = rows["speedup_x"].where(measured, rows["plan's predicted_x"])
    return gain.to_frame("gain").reorder_levels(order).sort_index()
