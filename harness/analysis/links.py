"""Runs whose link or deadline is the point: the deadline hit rate each run recorded, and CIC re-deciding under a
changing link against the oracle's and a fixed plan's latency on the same trace."""

from __future__ import annotations

from pathlib import PurePath
from typing import Sequence

import numpy as np
import pandas as pd

from harness.analysis.runs import column, latest, numbers

DYNAMIC_CELL = ["hardware", "model", "method", "trace", "estimator"]


def link_of(runs: pd.DataFrame) -> pd.Series:
    """The link a run had: its trace's name, else its rate."""
    trace = column(runs, "params.link.trace")
    rate = runs["bandwidth_mbps"].map(lambda r: f"{r:g} Mbit/s")
    return trace.map(lambda t: PurePath(str(t)).stem if isinstance(t, str) and t not in ("", "None") else None
                     ).fillna(rate)


def reliability(runs: pd.DataFrame) -> pd.DataFrame:
    """Every counting run given a deadline (``scenario.deadline_ms``): the share of its measured inferences within
    it (``deadline_hit_rate``, as recorded), per hardware, servers, model, method, scenario and link."""
    if runs.empty:
        return pd.DataFrame()
    given = runs[numbers(runs, "params.scenario.deadline_ms").notna() & runs["counts"]
                 & runs["source"].eq("measured")]
    if given.empty:
        return pd.DataFrame()
    given = given.assign(link=link_of(given), deadline_ms=numbers(given, "params.scenario.deadline_ms"),
                         hit_rate=numbers(given, "metrics.deadline_hit_rate"),
                         inferences=numbers(given, "metrics.measured_inferences"))
    keys = ["hardware", "num_servers", "model", "method", "scenario", "link", "deadline_ms"]
    columns = ["hit_rate", "latency_ms", "inferences", "bandwidth_mbps"]
    return latest(given, keys).set_index(keys)[columns].sort_index()


def dynamic_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs under ``scenario=dynamic`` with their trace and estimator."""
    dyn = runs[runs["scenario"] == "dynamic"] if not runs.empty else runs
    return dyn.assign(trace=link_of(dyn), estimator=column(dyn, "params.scenario.estimator"))


def dynamic_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per counting dynamic run: mean latency over the trace, estimate error, plan switches, probing cost, and the
    mean latency over the oracle's and the fixed plan's on the same trace (NaN where that estimator did not run)."""
    dyn = dynamic_runs(runs)
    dyn = latest(dyn[dyn["source"] == "measured"], DYNAMIC_CELL) if not dyn.empty else dyn
    if dyn.empty:
        return pd.DataFrame()
    table = dyn.set_index(DYNAMIC_CELL)[[]].copy()
    table["mean_latency_ms"] = numbers(dyn, "metrics.latency_ms").to_numpy()
    table["estimate_rel_error"] = numbers(dyn, "metrics.estimate_rel_error").to_numpy()
    for name in ("plan_switches", "probes", "probe_bytes"):
        table[name] = numbers(dyn, f"metrics.{name}").round().astype("Int64").to_numpy()
    for baseline in ("oracle", "fixed"):
        ref = table.xs(baseline, level="estimator")["mean_latency_ms"] if baseline in dyn["estimator"].values \
            else pd.Series(dtype=float)
        table[f"vs_{baseline}"] = table["mean_latency_ms"] / ref.reindex(table.index.droplevel("estimator")).to_numpy()
    return table.sort_index()


def timeline(decisions: Sequence[dict], latencies: Sequence[float], warmup: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A dynamic run over emulated time: its measured inferences (t_s, latency_ms, switched: the decision before
    it changed the plan) and the trace's true rate at each decision (t_s, true_mbps), from its ``decisions.json``
    and its ``inference_latency_ms`` series."""
    ordered = sorted(decisions, key=lambda d: d["seq"])
    measured = [d for d in ordered if d["seq"] >= warmup][: len(latencies)]
    points = pd.DataFrame({"t_s": [d["emulated_s"] for d in measured],
                           "latency_ms": np.asarray(latencies, dtype=float)[: len(measured)],
                           "switched": [bool(d["switched"]) for d in measured]})
    rates = pd.DataFrame({"t_s": [d["emulated_s"] for d in ordered], "true_mbps": [d["true_mbps"] for d in ordered]})
    return points, rates
