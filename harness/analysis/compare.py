"""Methods compared on one setting: gains over a baseline and rankings by median latency, where two results whose
95 % intervals overlap are within noise (marked, never ordered); decision-time ratios; the baselines a setting
lacks, each with the command that records it."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from harness.analysis.runs import column, commands_for, latest, method_overrides
from harness.analysis.intervals import overlaps, ranking

CUT_CELL = ["hardware", "model", "scenario", "bandwidth_mbps"]  # one setting of a cut method
SAME_SETTING = ["model", "hardware", "bandwidth_mbps", "params.link.delay_ms", "scenario"]  # runs ranked together
NOISE = "within noise of"


def interval(run: pd.Series) -> tuple[float, float] | None:
    """The 95 % interval of a run's median latency, None where the run has none (predicted, or recorded before)."""
    low, high = run.get("latency_low"), run.get("latency_high")
    return None if pd.isna(low) or pd.isna(high) else (float(low), float(high))


def within_noise(a: pd.Series, b: pd.Series) -> bool:
    """Two runs whose median latencies' intervals overlap: the data cannot order them."""
    first, second = interval(a), interval(b)
    return first is not None and second is not None and overlaps(first, second)


def same_plan(a: pd.Series, b: pd.Series) -> bool:
    """Two runs whose methods chose the same plan (tag ``plan_digest``): they differ only by noise."""
    first, second = a.get("tags.plan_digest"), b.get("tags.plan_digest")
    return isinstance(first, str) and bool(first) and first == second


def ranked_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The measured runs that count and have an interval, the latest of each method in each setting."""
    if runs.empty:
        return runs
    keep = runs[runs["counts"] & runs["source"].eq("measured") & runs["latency_low"].notna()]
    return latest(keep, [c for c in SAME_SETTING if c in keep] + ["method"])


def rankings(runs: pd.DataFrame) -> list[str]:
    """One line per setting where several methods ran: fastest median latency first, ``<`` where their 95 %
    intervals lie apart, ``≈`` where they overlap (within noise), ``=`` for methods that chose the same plan."""
    ranked = ranked_runs(runs)
    columns = [c for c in SAME_SETTING if c in ranked]
    lines = []
    for _, group in ranked.groupby(columns, sort=False, dropna=False) if not ranked.empty else []:
        if group["method"].nunique() > 1:
            first = group.iloc[0]
            label = f"{first['model']} on {first['hardware']} at {first['bandwidth_mbps']:g} Mbit/s"
            lines.append(f"  {label}: {ranking(by_plan(group))}")
    return lines


def by_plan(group: pd.DataFrame) -> list[tuple[str, float, tuple[float, float]]]:
    """One entry per plan: methods that chose the same plan (tag ``plan_digest``) are one result, shown with ``=``,
    its interval the union of theirs (they differ only by noise)."""
    entries = []
    digests = column(group, "tags.plan_digest").fillna(group["run_id"])
    for _, same in group.groupby(digests, sort=False):
        names = " = ".join(f"{r['method']} {r['latency_ms']:.2f}" for _, r in same.iterrows())
        entries.append((names + (" (same plan)" if len(same) > 1 else ""), float(same["latency_ms"].median()),
                        (float(same["latency_low"].min()), float(same["latency_high"].max()))))
    return entries


def gain_table(cells: pd.DataFrame, baselines: Sequence[str], keys: Sequence[str] = CUT_CELL) -> pd.DataFrame:
    """One row per setting (``keys`` and source) and method: latency_ms, throughput_ips, and for each baseline that
    ran there ``lat_x_vs_B`` (B's latency / this one's) and ``tput_x_vs_B`` (this throughput / B's); the column
    ``within noise of`` names the baselines whose latency interval overlaps this method's, or that chose the same
    plan: a gain between those is noise, not an ordering. A setting without a baseline gets no figure against it
    (NaN), never an error."""
    index = [*keys, "source", "method"]
    if cells.empty:
        return pd.DataFrame(columns=["latency_ms", "throughput_ips", NOISE])
    rows = cells.set_index(index)
    table = rows[["latency_ms", "throughput_ips"]].copy()
    noise = {i: [] for i in table.index}
    for base in baselines:
        ref = rows.xs(base, level="method") if base in rows.index.unique("method") else rows.iloc[0:0].droplevel(-1)
        ref = ref.reindex(table.index.droplevel("method"))
        table[f"lat_x_vs_{base}"] = ref["latency_ms"].to_numpy() / table["latency_ms"]
        table[f"tput_x_vs_{base}"] = table["throughput_ips"] / ref["throughput_ips"].to_numpy()
        for i, (key, run) in enumerate(rows.iterrows()):
            if key[-1] != base and same_plan(run, ref.iloc[i]):
                noise[key].append(f"{base} (same plan)")
            elif key[-1] != base and within_noise(run, ref.iloc[i]):
                noise[key].append(base)
    table[NOISE] = [", ".join(noise[i]) for i in table.index]
    return table.sort_index()


def gains_over(table: pd.DataFrame, method: str, base: str) -> pd.DataFrame:
    """``method``'s gains over ``base`` per setting (columns lat_x, tput_x), from a :func:`gain_table`."""
    if table.empty or f"lat_x_vs_{base}" not in table or method not in table.index.unique("method"):
        return pd.DataFrame(columns=["lat_x", "tput_x"])
    ours = table.xs(method, level="method")
    return pd.DataFrame({"lat_x": ours[f"lat_x_vs_{base}"], "tput_x": ours[f"tput_x_vs_{base}"]}).dropna(how="all")


def missing_baselines(cells: pd.DataFrame, baselines: Sequence[str], keys: Sequence[str] = CUT_CELL) -> list[str]:
    """The settings that lack some baselines, one line per group lacking the same ones: which, and the one command
    that records them there (a sweep over the methods and the link rates that lack them)."""
    if cells.empty:
        return []
    ran = cells.groupby([*keys, "source"], dropna=False, sort=False)["method"].agg(set)
    lacking = {cell: tuple(b for b in baselines if b not in methods) for cell, methods in ran.items()}
    firsts = cells.drop_duplicates([*keys, "source"]).set_index([*keys, "source"], drop=False)
    lines = []
    for group in dict.fromkeys(v for v in lacking.values() if v):
        where = firsts.loc[[cell for cell, v in lacking.items() if v == group]]
        plain, coded = [b for b in group if "+" not in b], [b for b in group if "+" in b]
        sweeps = ([(plain, {"method": ",".join(plain)})] if plain else []) + [
            ([b], method_overrides(b)) for b in coded]  # a method with a codec is a sweep of its own
        lines += [f"MISSING baseline {', '.join(names)}: {line}"
                  for names, change in sweeps for line in commands_for(where, **change)]
    return lines


def decision_table(cells: pd.DataFrame, reference: str = "dads") -> pd.DataFrame:
    """Decision time per model and method (the median over link rates: a decision hardly depends on the rate),
    with ``<reference>_over_this``: how many times faster than the reference method on the same setting (NaN where
    the reference did not run there)."""
    ratio = f"{reference}_over_this"
    if cells.empty:
        return pd.DataFrame(columns=["decision_ms", ratio])
    table = cells.assign(nodes=column(cells, "metrics.nodes_before"), nodes_after=column(cells, "metrics.nodes_after"),
                         offline_ms=column(cells, "metrics.offline_time_ms")).groupby(
        ["hardware", "model", "scenario", "source", "method"], dropna=False).agg(
        nodes=("nodes", "max"), nodes_after=("nodes_after", "max"), decision_ms=("decision_ms", "median"),
        offline_ms=("offline_ms", "median"), uplinks=("bandwidth_mbps", "count"))
    ref = (table.xs(reference, level="method")["decision_ms"] if reference in table.index.unique("method")
           else pd.Series(dtype=float))
    table[ratio] = ref.reindex(table.index.droplevel("method")).to_numpy() / table["decision_ms"]
    return table


def best(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.max()) if len(values) else np.nan
