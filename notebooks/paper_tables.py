# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The papers' tables, rebuilt from splitbench runs
#
# Reads the MLflow runs of the presets in `conf/experiment/` and prints each paper's table beside the paper's own
# numbers (`notebooks/papers.py`, copied from the abstracts; "[paper gives no figure]" where a paper has none):
#
# - **(a) CIC** (`cic_paper`): decision time per model and method, and latency / throughput per uplink and method,
#   with speed-ups against device-only, server-only and DADS.
# - **(b) HALP** (`halp_paper`, `modnn_paper`, `halp_host_alone`): speed-up over the host edge server alone, per
#   board, link rate, tasks per batch and number of servers.
# - **(c) Reliability** (`halp_reliability`): deadline hit rate against the deadline under a fading link.
# - **(d) Dynamic links** (`dynamic_payoff`): CIC re-deciding on a measured estimate, against the oracle and a fixed
#   plan, and latency over time with the decisions marked.
#
# Only valid runs count (status FINISHED and `tags.valid == "true"`: never a RUNNING, FAILED or KILLED run); if a
# cell has several, the latest wins. Missing and invalid runs are listed, not fatal. Settings come from the
# environment: `MLFLOW_TRACKING_URI` (default `sqlite:///mlflow.db` at the repository root), `CIC_EXPERIMENT`,
# `HALP_EXPERIMENT`, `RELIABILITY_EXPERIMENT`, `DYNAMIC_EXPERIMENT` (comma-separated MLflow experiment names;
# defaults: the presets' names) and `PAPER_FIGURES_DIR` (where to save the figures; default: not saved).
#
# Headless: `python notebooks/paper_tables.py`. This notebook and `paper_tables.py` are a jupytext pair: edit either,
# then `jupytext --sync notebooks/paper_tables.py` (or `.ipynb`) brings the other up to date.

# %%
import itertools
import os
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # a plain script: draw to files, never to a screen
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir

ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "run.py").exists())
sys.path[:0] = [str(ROOT), str(ROOT / "notebooks")]  # the harness, and papers.py beside this notebook
import papers

from harness.config import register
from harness.controller.traces import rayleigh_trace


def experiments(var: str, default: str) -> list[str]:
    return [name.strip() for name in os.environ.get(var, default).split(",") if name.strip()]


TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}"
CIC_EXPERIMENTS = experiments("CIC_EXPERIMENT", "cic_paper")
HALP_EXPERIMENTS = experiments("HALP_EXPERIMENT", "halp_paper")
RELIABILITY_EXPERIMENTS = experiments("RELIABILITY_EXPERIMENT", "halp_reliability")
FIGURES_DIR = os.environ.get("PAPER_FIGURES_DIR")
FADING = {"seed": 0, "bandwidth_mhz": 33.0}  # the channel halp_reliability measured the quantiles of [ours]
BASELINES = ("device_only", "server_only", "dads")
SPATIAL = ("halp", "modnn")

pd.set_option("display.width", 250)
pd.set_option("display.max_columns", 40)
pd.set_option("display.max_colwidth", 90)
mlflow.set_tracking_uri(TRACKING_URI)
print(f"MLflow store: {TRACKING_URI}")

# %% [markdown]
# ## Reading the runs

# %%
AXES = {"model": "params.model.name", "method": "params.method.name", "hardware": "params.hardware.name",
        "scenario": "params.scenario.name"}


def preset_jobs() -> dict[str, int]:
    """How many jobs the presets in conf/experiment sweep into each MLflow experiment (several may share one)."""
    register()
    jobs: dict[str, int] = {}
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        for path in sorted((ROOT / "conf" / "experiment").glob("*.yaml")):
            cfg = compose(config_name="config", overrides=[f"experiment={path.stem}"], return_hydra_config=True)
            sizes = [len(str(v).split(",")) for v in (cfg.hydra.sweeper.params or {}).values()]
            jobs[cfg.experiment.name] = jobs.get(cfg.experiment.name, 0) + int(np.prod(sizes))
    return jobs


PRESET_JOBS = preset_jobs()


def load_runs(names: list[str]) -> pd.DataFrame:
    """Every run of these experiments, with short columns for the axes; an absent experiment is reported, not fatal."""
    client = mlflow.MlflowClient()
    found = [n for n in names if client.get_experiment_by_name(n) is not None]
    for name in sorted(set(names) - set(found)):
        print(f"MISSING experiment {name!r} in {TRACKING_URI}: run `python run.py -m experiment={name}`")
    if not found:
        return pd.DataFrame()
    df = mlflow.search_runs(experiment_names=found, output_format="pandas")
    for name in found:
        experiment_id = client.get_experiment_by_name(name).experiment_id
        valid = int(((df["experiment_id"] == experiment_id) & counts(df)).sum()) if not df.empty else 0
        if name in PRESET_JOBS:
            print(f"{name}: {valid} valid runs of the {PRESET_JOBS[name]} jobs its presets sweep")
    if df.empty:
        print(f"MISSING: experiments {found} have no runs")
        return df
    for short, column in AXES.items():
        df[short] = column_of(df, column)
    # the same model at another input size is another row: "resnet18 64x64"
    sizes = column_of(df, "params.model.input_shape").astype(str).str.findall(r"\d+").map(lambda d: "x".join(d[-2:]))
    df["model"] = df["model"].astype(str) + " " + sizes
    df["bandwidth_mbps"] = pd.to_numeric(column_of(df, "params.link.bandwidth_mbps"), errors="coerce")
    df["num_servers"] = pd.to_numeric(column_of(df, "params.hardware.num_servers"), errors="coerce").fillna(1).astype(int)
    df["tasks"] = pd.to_numeric(column_of(df, "params.method.tasks_per_batch"), errors="coerce").fillna(1).astype(int)
    df["valid"] = counts(df)
    return df.sort_values("start_time")


def counts(df: pd.DataFrame) -> pd.Series:
    """Runs that count: FINISHED and valid. A run's tags are set before it ends, so `valid` alone is not enough."""
    return df["status"].eq("FINISHED") & column_of(df, "tags.valid").eq("true")


def column_of(df: pd.DataFrame, column: str) -> pd.Series:
    return df[column] if column in df else pd.Series(np.nan, index=df.index, dtype=object)


def valid_cells(df: pd.DataFrame, keys: list[str], what: str, within: int = 1) -> pd.DataFrame:
    """The latest valid run of each cell; prints the invalid runs and the cells of the swept grid with no valid run.

    The grid is the product of the values seen on each key, within each experiment and each value of the first
    ``within`` keys (a pair and a star were swept over different things).
    """
    if df.empty:
        return df
    for _, run in df[~df["valid"]].iterrows():
        reason = run.get("tags.invalid_reason") or run["status"]
        print(f"INVALID {what}: {run.get('tags.mlflow.runName', run['run_id'])}: {str(reason)[:160]}")
    good = df[df["valid"]].drop_duplicates(keys, keep="last")
    have = set(map(tuple, good[keys].itertuples(index=False)))
    for outer, runs in df.groupby(["experiment_id", *keys[:within]], dropna=False):
        inner = itertools.product(*(sorted(runs[k].dropna().unique()) for k in keys[within:]))
        for cell in (tuple(outer[1:]) + rest for rest in inner):
            if cell not in have:
                print(f"MISSING {what}: no valid run for " + ", ".join(f"{k}={v}" for k, v in zip(keys, cell)))
    return good


def metric(df: pd.DataFrame, name: str) -> pd.Series:
    return df[f"metrics.{name}"] if f"metrics.{name}" in df else pd.Series(np.nan, index=df.index)


DECIMALS = {"decision_ms": 4, "offline_ms": 3, "nodes": 0, "nodes_after": 0, "uplinks": 0}  # else 2; hit rates 3


def show(title: str, table: pd.DataFrame, note: str = "") -> None:
    """Print a table with fixed decimals per column ("-" where there is no value)."""
    print(f"\n=== {title} ===")
    if note:
        print(note)
    if table is None or table.empty:
        print("(no valid runs for this table)")
        return

    def fixed(decimals: int):
        return lambda v: f"{v:.{decimals}f}"

    formatters = {c: fixed(DECIMALS.get(c, 3 if str(c).startswith("<=") or "hit_rate" in str(c) else 2))
                  for c in table.columns if pd.api.types.is_float_dtype(table[c])}
    print(table.to_string(formatters=formatters, na_rep="-"))


def save(fig: plt.Figure, name: str) -> None:
    if FIGURES_DIR:
        Path(FIGURES_DIR).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(FIGURES_DIR) / name, dpi=120, bbox_inches="tight")
    plt.show()
    plt.close(fig)


def ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    return num / den


# %% [markdown]
# ## (a) CIC: decision time, latency and throughput against DADS, QDMP, Neurosurgeon, device-only, server-only

# %%
cic_runs = load_runs(CIC_EXPERIMENTS)
if not cic_runs.empty:
    cic_runs = cic_runs[~cic_runs["method"].isin(SPATIAL) & (cic_runs["scenario"] != "dynamic")]
cut = valid_cells(cic_runs, ["hardware", "model", "method", "bandwidth_mbps"], "cut run")

# %%
decision = pd.DataFrame()
if not cut.empty:
    cut = cut.assign(latency_ms=metric(cut, "latency_ms"), throughput_ips=metric(cut, "throughput_ips"),
                     decision_ms=metric(cut, "decision_time_ms"), offline_ms=metric(cut, "offline_time_ms"),
                     nodes=metric(cut, "nodes_before"), nodes_after=metric(cut, "nodes_after"))
    # The decision hardly depends on the bandwidth: the median over the uplinks of each (model, method).
    decision = cut.groupby(["hardware", "model", "method"]).agg(
        nodes=("nodes", "max"), nodes_after=("nodes_after", "max"), decision_ms=("decision_ms", "median"),
        offline_ms=("offline_ms", "median"), uplinks=("bandwidth_mbps", "count"))
    if "dads" in decision.index.unique("method"):
        dads_ms = decision["decision_ms"].xs("dads", level="method")
        decision["dads_over_this"] = ratio(
            pd.Series(dads_ms.reindex(decision.index.droplevel("method")).to_numpy(), decision.index),
            decision["decision_ms"])
    else:
        print("MISSING baseline dads: no decision-time ratios")
    decision["paper"] = [papers.DECISION_CLAIMS.get(m, papers.NO_FIGURE) for m in decision.index.get_level_values(2)]
show("(a1) decision time per model and method (median over uplinks, ms); dads_over_this = how many times faster "
     "than DADS", decision)

# %%
latency = pd.DataFrame()
if not cut.empty:
    cells = cut.set_index(["hardware", "model", "bandwidth_mbps", "method"])[["latency_ms", "throughput_ips"]]
    latency = cells.copy()
    for base in BASELINES:
        if base not in cells.index.unique("method"):
            print(f"MISSING baseline {base}: no speed-ups against it")
            continue
        ref = cells.xs(base, level="method").reindex(cells.index.droplevel("method"))
        ref.index = cells.index
        latency[f"lat_x_vs_{base}"] = ratio(ref["latency_ms"], cells["latency_ms"])
        latency[f"tput_x_vs_{base}"] = ratio(cells["throughput_ips"], ref["throughput_ips"])

    def dads_paper(index: tuple) -> str:
        _, _, bw, method = index
        if method != "dads" or bw not in papers.DADS_RESNET18_VS_EDGE:
            return ""
        lat, tput = papers.DADS_RESNET18_VS_EDGE[bw]
        return f"DADS ResNet-18 vs edge-only ({papers.DADS_UPLINKS[bw]}): {lat}x / {tput}x"

    latency["paper"] = [dads_paper(i) for i in latency.index]
show("(a2) latency (ms) and throughput (inferences/s) per uplink and method; *_x_vs_B = speed-up over B", latency,
     "throughput is single-stream (one inference at a time); DADS's throughput figures are pipelined (heavy load): "
     "run scenario=stream for those")

# %%
claims = pd.DataFrame()
if not latency.empty:
    rows = []
    cic = latency.xs("cic", level="method") if "cic" in latency.index.unique("method") else pd.DataFrame()
    dads = latency.xs("dads", level="method") if "dads" in latency.index.unique("method") else pd.DataFrame()
    for what, col, claim in (("latency", "lat_x_vs", "latency_speedup"),
                             ("throughput", "tput_x_vs", "throughput_speedup")):
        for base in BASELINES:
            if f"{col}_{base}" in cic:
                best = cic[f"{col}_{base}"].max()
                rows.append({"claim": f"CIC {what} vs {base}", "measured best": best,
                             "paper": f"up to {papers.CIC_CLAIMS[claim]}x vs existing solutions [{papers.CIC}]"})
        for base, load in (("device_only", "light"), ("server_only", "light")):
            if f"{col}_{base}" in dads:
                low, high = papers.DADS_RANGES[(load, base, what)]
                values = dads[f"{col}_{base}"]
                rows.append({"claim": f"DADS {what} vs {base}", "measured best": values.max(),
                             "measured range": f"{values.min():.2f}-{values.max():.2f}",
                             "paper": f"{low}-{high}x, five models, RPi 3B device [{papers.DADS}]"})
    if not decision.empty and "cic" in decision.index.unique("method"):
        rows.append({"claim": "CIC decision time vs DADS",
                     "measured best": decision.xs("cic", level="method")["dads_over_this"].max(),
                     "paper": f"up to {papers.CIC_CLAIMS['decision_speedup']:g}x faster [{papers.CIC}]"})
    claims = pd.DataFrame(rows, columns=["claim", "measured best", "measured range", "paper"]).set_index("claim")
    claims["measured range"] = claims["measured range"].fillna("")
show("(a3) the papers' headline claims beside the best measured ratio", claims)

# %%
if not cut.empty:
    groups = list(cut.groupby(["hardware", "model"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.6), squeeze=False)
    for ax, ((hw, model), runs) in zip(axes[0], groups):
        for method, rows in runs.sort_values("bandwidth_mbps").groupby("method"):
            ax.plot(rows["bandwidth_mbps"], rows["latency_ms"], marker="o", label=method)
        ax.set(xscale="log", yscale="log", xlabel="uplink (Mbit/s)", ylabel="latency (ms)", title=f"{model} · {hw}")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save(fig, "cic_latency_vs_bandwidth.png")

    table = decision["decision_ms"].unstack("method")
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(table)), 3.6))
    table.plot.bar(ax=ax, logy=True, rot=0)
    ax.set(ylabel="decision time (ms)", xlabel="", title="decision time per model")
    ax.set_xticklabels([f"{model}\n{hw}" for hw, model in table.index], fontsize=8)
    fig.tight_layout()
    save(fig, "cic_decision_time.png")

# %% [markdown]
# ## (b) HALP and MoDNN: speed-up over the host edge server alone
#
# Host alone = `device_only` on the same board (it runs on es0 by itself). Per-task time of a spatial run =
# `task_time_ms` (1000 / throughput: with 4 tasks per batch, tasks overlap); speed-up = host-alone latency / task time.

# %%
halp_runs = load_runs(HALP_EXPERIMENTS)
spatial = host = pd.DataFrame()
if not halp_runs.empty:
    spatial = valid_cells(halp_runs[halp_runs["method"].isin(SPATIAL)],
                          ["hardware", "bandwidth_mbps", "tasks", "num_servers", "method"], "spatial run", within=0)
    host_runs = halp_runs[halp_runs["method"] == "device_only"]
    host = valid_cells(host_runs, ["hardware"], "host-alone run") if not host_runs.empty else host_runs
    for hw in sorted(set(spatial.get("hardware", [])) - set(host.get("hardware", []))):
        print(f"MISSING host-alone run on {hw}: run `python run.py -m experiment=halp_host_alone hardware={hw}`")

# %%
speedup = pd.DataFrame()
if not spatial.empty:
    host_ms = metric(host, "latency_ms").groupby(host["hardware"]).last() if not host.empty else pd.Series(dtype=float)
    cells = spatial.assign(task_ms=metric(spatial, "task_time_ms"), predicted_x=metric(spatial, "predicted_speedup"))
    cells["host_alone_ms"] = cells["hardware"].map(host_ms)
    cells["speedup_x"] = ratio(cells["host_alone_ms"], cells["task_ms"])
    speedup = cells.pivot_table(index=["hardware", "bandwidth_mbps", "tasks", "num_servers"], columns="method",
                                values=["task_ms", "speedup_x", "predicted_x"], aggfunc="last")
    speedup.columns = [f"{method}_{value}" for value, method in speedup.columns]
    speedup = speedup[sorted(speedup.columns, key=lambda c: (c.split("_")[0] != "halp", c))]
    speedup.insert(0, "host_alone_ms", [host_ms.get(i[0], np.nan) for i in speedup.index])

    def halp_paper(index: tuple) -> str:
        low, high = papers.HALP_SPEEDUP.get(index[2], (None, None))
        if low is None:
            return papers.NO_FIGURE
        return f"HALP {low}-{high}x ({index[2]} task{'s' * (index[2] > 1)}/batch), {papers.HALP_VS_MODNN}"

    speedup["paper"] = [halp_paper(i) for i in speedup.index]
show("(b) VGG-16 speed-up over the host alone per board, link (Mbit/s), tasks per batch and N", speedup,
     f"paper: {papers.HALP} on GTX 1080 Ti and Jetson AGX Xavier, ranges over its settings (no value per N or "
     f"link); prototype {papers.HALP_PROTOTYPE}. {papers.MODNN} claims {papers.MODNN_SPEEDUP[0]}-"
     f"{papers.MODNN_SPEEDUP[1]}x with 2-4 workers in its own setting; per N: {papers.NO_FIGURE}")

# %%
if not speedup.empty:
    panels = list(speedup.groupby(level=["hardware", "bandwidth_mbps"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, ((hw, bw), rows) in zip(axes[0], panels):
        for tasks, by_n in rows.groupby(level="tasks"):
            n = by_n.index.get_level_values("num_servers")
            for method in SPATIAL:
                if f"{method}_speedup_x" in by_n:
                    ax.plot(n, by_n[f"{method}_speedup_x"], marker="o", label=f"{method}, {tasks} task/batch")
        for tasks, (low, high) in papers.HALP_SPEEDUP.items():
            ax.axhspan(low, high, alpha=0.12, color="C0" if tasks == 1 else "C1", label=f"paper, HALP {tasks}/batch")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(sorted(set(rows.index.get_level_values("num_servers"))))
        ax.set(xlabel="edge servers N", ylabel="speed-up over host alone", title=f"{hw} · {bw:g} Mbit/s")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save(fig, "halp_speedup_vs_n.png")

# %% [markdown]
# ## (c) Reliability: deadline hit rate under a fading link
#
# Spatial runs (the runtime cannot play a trace to them) each held the link at one rate; each 0.5 s block of the
# fading trace is served by the run at the highest measured rate not above the block's rate (blocks below every
# measured rate count as misses), and a block's hit rate is the fraction of that run's per-task latencies within the
# deadline: a lower bound when latency falls as the rate grows. A method that sent nothing is rate-independent.
# Cut methods under `scenario=dynamic` were measured with the trace playing: their per-inference latencies count
# directly.

# %%
rel_runs = load_runs(RELIABILITY_EXPERIMENTS)
rel = valid_cells(rel_runs, ["hardware", "num_servers", "tasks", "scenario", "method", "bandwidth_mbps"],
                  "reliability run", within=4) if not rel_runs.empty else rel_runs
client = mlflow.MlflowClient()


def per_inference(run_id: str) -> np.ndarray:
    return np.array([m.value for m in sorted(client.get_metric_history(run_id, "inference_latency_ms"),
                                             key=lambda m: m.step)])


def fading_hit_rate(runs: pd.DataFrame, trace_mbps: np.ndarray, deadline: float) -> float:
    """P(latency <= deadline) over the trace's blocks, each served by the run of the highest rate not above it."""
    rates = runs["bandwidth_mbps"].to_numpy()
    hits = [np.mean(lat <= deadline) for lat in runs["latencies"]]
    if (metric(runs, "bytes_transferred").fillna(0) == 0).all():  # nothing crossed the link: the rate is irrelevant
        return float(np.mean(np.concatenate(list(runs["latencies"])) <= deadline))
    order = np.argsort(rates)
    idx = np.searchsorted(rates[order], trace_mbps + 1e-9, side="right") - 1
    return float(np.mean([hits[order[i]] if i >= 0 else 0.0 for i in idx]))


reliability = pd.DataFrame()
if not rel.empty:
    rel = rel.assign(latencies=[per_inference(r) for r in rel["run_id"]])
    trace = np.array(rayleigh_trace(**FADING).mbps)
    pooled = np.concatenate(list(rel["latencies"]))
    logged = pd.to_numeric(column_of(rel, "params.scenario.deadline_ms"), errors="coerce").dropna().unique()
    deadlines = np.unique(np.round(np.r_[np.quantile(pooled, [0.0, 0.25, 0.5, 0.75, 1.0]), logged], 2))
    rows = {}
    for (hw, n, tasks, scenario, method), runs in rel.groupby(["hardware", "num_servers", "tasks", "scenario", "method"]):
        if scenario == "dynamic":
            key = (hw, n, tasks, method, "measured under the trace")
            rows[key] = {f"<= {d:g} ms": np.mean(np.concatenate(list(runs["latencies"])) <= d) for d in deadlines}
            rows[key]["logged deadline_hit_rate"] = metric(runs, "deadline_hit_rate").iloc[-1]
        else:
            key = (hw, n, tasks, method, f"{len(runs)} rates, Rayleigh {FADING}")
            rows[key] = {f"<= {d:g} ms": fading_hit_rate(runs, trace, d) for d in deadlines}
    reliability = pd.DataFrame.from_dict(rows, orient="index")
    reliability["paper"] = papers.HALP_RELIABILITY
    reliability.index.names = ["hardware", "N", "tasks", "method", "how"]
show("(c) deadline hit rate P(latency <= deadline)", reliability,
     f"{papers.HALP} studies service reliability under a time-varying channel with a strict deadline: "
     f"{papers.HALP_RELIABILITY}")

# %%
if not reliability.empty:
    cols = [c for c in reliability.columns if c.startswith("<=")]
    xs = [float(c[3:-3]) for c in cols]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, row in reliability.iterrows():
        ax.plot(xs, row[cols].astype(float), marker="o", ls="--" if "measured" in key[-1] else "-",
                label=f"{key[3]} · {key[0]}")
    ax.set(xlabel="deadline (ms)", ylabel="deadline hit rate", ylim=(-0.02, 1.02), title="reliability under fading")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, "deadline_hit_rate.png")

# %% [markdown]
# ## (d) Dynamic links: re-deciding on a measured estimate, against the oracle and a fixed plan
#
# `python run.py -m experiment=dynamic_payoff`: CIC under `scenario=dynamic` on each trace, once per estimator:
# `probe` (the plan's own transfers when they say enough, else a packet train between inferences), `oracle` (the
# trace's true rate: the bound), `fixed` (one plan for the trace's mean rate, never re-decided) and `last` (passive
# only). Mean latency of the measured inferences, and its ratio to the oracle's and to the fixed plan's on the same
# trace; the figure draws each inference's latency at its emulated arrival time, the decisions that switched the plan
# marked, over the true rate.

# %%
DYNAMIC_EXPERIMENTS = experiments("DYNAMIC_EXPERIMENT", "dynamic_payoff")
dyn_runs = load_runs(DYNAMIC_EXPERIMENTS)
if not dyn_runs.empty:
    dyn_runs = dyn_runs[column_of(dyn_runs, "params.scenario.name") == "dynamic"].copy()
    dyn_runs["trace"] = column_of(dyn_runs, "params.link.trace")
    dyn_runs["estimator"] = column_of(dyn_runs, "params.scenario.estimator")
dyn = valid_cells(dyn_runs, ["hardware", "model", "method", "trace", "estimator"], "dynamic run",
                  within=4) if not dyn_runs.empty else dyn_runs


def dynamic_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: mean latency, estimate error, switches, probing cost; ratios to the oracle and the fixed plan."""
    keys = ["hardware", "model", "method", "trace", "estimator"]
    table = runs.set_index(keys)[[]].copy()
    for column, name in (("latency_ms", "latency_ms"), ("estimate_rel_error", "estimate_rel_error"),
                         ("plan_switches", "plan_switches"), ("probes", "probes"), ("probe_bytes", "probe_bytes")):
        table[column] = metric(runs, name).to_numpy()
    for column in ("plan_switches", "probes", "probe_bytes"):  # counts: no decimals
        table[column] = table[column].round().astype("Int64")
    for baseline in ("oracle", "fixed"):
        base = table.xs(baseline, level="estimator")["latency_ms"] if baseline in runs["estimator"].values else None
        table[f"vs_{baseline}"] = [row / base.get(index[:-1], np.nan) if base is not None else np.nan
                                   for index, row in table["latency_ms"].items()]
    return table.sort_index()


dynamic = dynamic_table(dyn) if not dyn.empty else pd.DataFrame()
show("(d) CIC under a changing link: mean latency (ms) per estimator, and its ratio to the oracle and the fixed plan",
     dynamic, "goal: probe within 1.10x of the oracle and below 1.00x of the fixed plan [ours: no paper figure]")


# %%
def decisions_of(run_id: str) -> list[dict]:
    """The run's decisions.json (one per inference, warm-up included)."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(mlflow.MlflowClient().download_artifacts(run_id, "decisions.json", tmp)).read_text())


def latencies_of(run_id: str) -> np.ndarray:
    history = mlflow.MlflowClient().get_metric_history(run_id, "inference_latency_ms")
    return np.array([m.value for m in sorted(history, key=lambda m: m.step)])


if not dyn.empty:
    traces = sorted(dyn["trace"].dropna().unique())
    fig, axes = plt.subplots(len(traces), 1, figsize=(8, 3.2 * len(traces)), squeeze=False)
    for ax, trace_name in zip(axes[:, 0], traces):
        rate_ax = ax.twinx()
        for i, (_, run) in enumerate(dyn[dyn["trace"] == trace_name].sort_values("estimator").iterrows()):
            decisions = sorted(decisions_of(run["run_id"]), key=lambda d: d["seq"])
            warmup = int(float(run.get("params.scenario.warmup", 1)))
            measured = [d for d in decisions if d["seq"] >= warmup]
            lat = latencies_of(run["run_id"])[: len(measured)]
            t = [d["emulated_s"] for d in measured][: len(lat)]
            ax.plot(t, lat, marker=".", color=f"C{i}", label=f"{run['estimator']} ({np.mean(lat):.0f} ms)")
            switched = [(d["emulated_s"], y) for d, y in zip(measured, lat) if d["switched"]]
            if switched:
                ax.scatter(*zip(*switched), marker="v", s=60, color=f"C{i}", edgecolor="black", zorder=3)
            if i == 0:
                rate_ax.step([d["emulated_s"] for d in decisions], [d["true_mbps"] for d in decisions],
                             where="post", color="grey", alpha=0.4)
        rate_ax.set_ylabel("true rate (Mbit/s)", color="grey")
        ax.set(xlabel="emulated time (s)", ylabel="latency (ms)",
               title=f"{trace_name}: latency over time, plan switches marked (v)")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save(fig, "dynamic_latency_over_time.png")
