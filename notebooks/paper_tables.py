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
# Reads the MLflow runs of the experiments you name (all the store's by default) and prints each paper's table beside
# the paper's own numbers (`notebooks/papers.py`, copied from the papers; "[paper gives no figure]" where a paper has
# none). A paper's claim is printed only beside runs at the setting it was made for (its hardware, models and rates);
# your own models are labelled by their factory (`model._target_`).
#
# - **(a) CIC** (`cic_paper`): decision time per model and method, and latency / throughput per uplink and method,
#   with speed-ups against device-only, server-only and DADS.
# - **(b) HALP** (`halp_paper`, `modnn_paper`, `halp_host_alone`): speed-up over the host edge server alone, per
#   board, link rate, tasks per batch and number of servers.
# - **(c) Reliability** (`halp_reliability`): deadline hit rate against the deadline under a fading link.
# - **(d) Dynamic links** (`dynamic_payoff`): CIC re-deciding on a measured estimate, against the oracle and a fixed
#   plan, and latency over time with the decisions marked.
# - **(e) DADS** (`dads_paper`): DADS's ranges and ResNet-18's per-rate row on its Raspberry Pi 3B + CPU server.
# - **(f) HALP's prototype** (`halp_prototype`): VGG-16 on three Raspberry Pi 4, beside its 1.7x.
# - **(g) Where each claim holds** (`cut_claims_predicted`, `halp_claims_predicted`, in the MLflow experiment
#   `claims_predicted`): the cost model's gain against the link rate with each paper's claimed range as a band, the
#   measured runs marked on it, and a table of where each headline claim is reproduced or would hold.
#
# The full presets take hours (`cic_paper` 9-14 h without a budget, `modnn_paper` 3-5 h); each has a quick taste that
# takes minutes: `cic_paper_quick`, `halp_paper_quick`, `dads_paper_quick`. `python run.py -m experiment=<preset>
# mode=predict` records any preset's predictions in seconds (runs tagged `measured=false`).
#
# **Measured and predicted.** Tables of measured values count only valid runs (status FINISHED and `tags.valid ==
# "true"`: never a RUNNING, FAILED, KILLED or INVALID run); if a cell has several, the latest wins; the runs left out
# are listed and counted beside each table. Predicted values (`tags.measured == "false"`: `mode=predict`, and jobs a
# sweep's `runtime.max_real_minutes` skipped) come from the cost model alone: what licenses reading them is the
# emulation-fidelity benchmark (`benchmarks/emulation_fidelity.py`, `benchmarks/RESULTS.md`), which measures how far
# real runs land from the cost model's prediction.
#
# Settings come from the environment: `MLFLOW_TRACKING_URI` (default `sqlite:///mlflow.db` at the repository root),
# `EXPERIMENTS` (comma-separated MLflow experiment names to read; default: all), `CIC_EXPERIMENT`, `HALP_EXPERIMENT`,
# `RELIABILITY_EXPERIMENT`, `DYNAMIC_EXPERIMENT` (narrow a section to these experiments; default: those of
# `EXPERIMENTS`; (c) reads the runs given a deadline), `PAPER_FIGURES_DIR` (where to save the figures; default: not
# saved) and `PAPER_FIGURES_MLFLOW=1` (also log them as artifacts of a run in the MLflow experiment `paper_figures`).
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
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
import mlflow
import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "run.py").exists())
sys.path[:0] = [str(ROOT), str(ROOT / "notebooks")]  # the harness, and papers.py beside this notebook
import papers

from harness.config import register
from harness.controller.tracking import local_store_exists
from harness.controller.traces import rayleigh_trace


def experiments(var: str, default: str) -> list[str]:
    return [name.strip() for name in os.environ.get(var, default).split(",") if name.strip()]


TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}"
mlflow.set_tracking_uri(TRACKING_URI)
print(f"MLflow store: {TRACKING_URI}")
FIGURES_TO_MLFLOW = os.environ.get("PAPER_FIGURES_MLFLOW") == "1"
STORED = [e.name for e in mlflow.MlflowClient().search_experiments()
          if e.name not in ("Default", "paper_figures")] if local_store_exists(TRACKING_URI) else []
SELECTED = experiments("EXPERIMENTS", ",".join(STORED))
CIC_EXPERIMENTS = experiments("CIC_EXPERIMENT", ",".join(SELECTED))
HALP_EXPERIMENTS = experiments("HALP_EXPERIMENT", ",".join(SELECTED))
RELIABILITY_EXPERIMENTS = experiments("RELIABILITY_EXPERIMENT", ",".join(SELECTED))
FIGURES_DIR = os.environ.get("PAPER_FIGURES_DIR")
FADING = {"seed": 0, "bandwidth_mhz": 33.0}  # the channel halp_reliability measured the quantiles of [ours]
BASELINES = ("device_only", "server_only", "dads")
SPATIAL = ("halp", "modnn")

pd.set_option("display.width", 250)
pd.set_option("display.max_columns", 40)
pd.set_option("display.max_colwidth", 90)
print(f"reading experiments: {', '.join(SELECTED) or '(none)'}")
if not SELECTED:
    print("MISSING: no experiments in this store. Quick presets take minutes: `python run.py -m "
          "experiment=cic_paper_quick` (also halp_paper_quick, dads_paper_quick); predictions take seconds: "
          "`python run.py -m experiment=cut_claims_predicted`")

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
PRESETS = {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
MODEL_PRESETS = {p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")} - {"custom"}


def preset_label(name: str) -> str:
    """A model preset at its own input size, as the tables label it: "tiny_yolov2 416x416"."""
    shape = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml").input_shape
    return f"{name} {shape[-2]}x{shape[-1]}"


LEFT_OUT: dict[str, int] = {}  # per kind of run: how many invalid or failed runs the tables left out
print("quick presets (minutes each, on 2 cores): " + ", ".join(
    f"`python run.py -m experiment={p}`" for p in sorted(p for p in PRESETS if p.endswith("_quick"))))


def how_to_run(name: str) -> str:
    """The command that records experiment ``name``, and its quick taste where there is one."""
    command = f"`python run.py -m experiment={name}`" if name in PRESETS else f"a sweep with experiment.name={name}"
    if f"{name}_quick" in PRESETS:
        command += f" (hours; a taste in minutes: `python run.py -m experiment={name}_quick`; predictions in " \
                   f"seconds: add `mode=predict`)"
    return command


def load_runs(names: list[str]) -> pd.DataFrame:
    """Every run of these experiments, with short columns for the axes; an absent experiment is reported, not fatal."""
    client = mlflow.MlflowClient()
    found = [n for n in names if client.get_experiment_by_name(n) is not None]
    for name in sorted(set(names) - set(found)):
        print(f"MISSING experiment {name!r} in {TRACKING_URI}: run {how_to_run(name)}")
    if not found:
        return pd.DataFrame()
    df = mlflow.search_runs(experiment_names=found, output_format="pandas")
    predicted = column_of(df, "tags.measured").eq("false") if not df.empty else pd.Series(dtype=bool)
    for name in found:
        experiment_id = client.get_experiment_by_name(name).experiment_id
        ours = df["experiment_id"] == experiment_id if not df.empty else pd.Series(dtype=bool)
        valid, guessed = int((ours & counts(df)).sum()), int((ours & predicted).sum())
        if name in PRESET_JOBS:
            print(f"{name}: {valid} valid runs of the {PRESET_JOBS[name]} jobs its presets sweep"
                  + (f", {guessed} predicted only" if guessed else ""))
    if df.empty:
        print(f"MISSING: experiments {found} have no runs")
        return df
    for short, column in AXES.items():
        df[short] = column_of(df, column)
    # a model of the user's own is named by its factory; the same model at another input size is another row
    custom = ~df["model"].isin(MODEL_PRESETS) & column_of(df, "params.model._target_").notna()
    df.loc[custom, "model"] = column_of(df, "params.model._target_")[custom]
    sizes = column_of(df, "params.model.input_shape").astype(str).str.findall(r"\d+").map(lambda d: "x".join(d[-2:]))
    df["model"] = df["model"].astype(str) + " " + sizes
    df["bandwidth_mbps"] = pd.to_numeric(column_of(df, "params.link.bandwidth_mbps"), errors="coerce")
    df["num_servers"] = pd.to_numeric(column_of(df, "params.hardware.num_servers"), errors="coerce").fillna(1).astype(int)
    df["tasks"] = pd.to_numeric(column_of(df, "params.method.tasks_per_batch"), errors="coerce").fillna(1).astype(int)
    df["topology"] = column_of(df, "params.hardware.topology")
    df["measured"] = ~column_of(df, "tags.measured").eq("false")
    df["valid"] = counts(df)
    return df.sort_values("start_time")


def counts(df: pd.DataFrame) -> pd.Series:
    """Runs that count: FINISHED and valid. A run's tags are set before it ends, so `valid` alone is not enough."""
    return df["status"].eq("FINISHED") & column_of(df, "tags.valid").eq("true")


def column_of(df: pd.DataFrame, column: str) -> pd.Series:
    return df[column] if column in df else pd.Series(np.nan, index=df.index, dtype=object)


def measured_runs(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["measured"]] if not df.empty else df


def predicted_runs(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df["measured"] & df["status"].eq("FINISHED")] if not df.empty else df


def valid_cells(df: pd.DataFrame, keys: list[str], what: str, within: int = 1) -> pd.DataFrame:
    """The latest valid measured run of each cell; lists (and counts in ``LEFT_OUT[what]``) the invalid runs, and
    prints the cells of the swept grid with no valid run. Predicted runs are not measurements: left to (g).

    The grid is the product of the values seen on each key, within each experiment and each value of the first
    ``within`` keys (a pair and a star were swept over different things).
    """
    df = measured_runs(df)
    LEFT_OUT[what] = LEFT_OUT.get(what, 0) + int((~df["valid"]).sum()) if not df.empty else LEFT_OUT.get(what, 0)
    if df.empty:
        return df
    for _, run in df[~df["valid"]].iterrows():
        reason = run.get("tags.invalid_reason")
        reason = reason if isinstance(reason, str) and reason else run["status"]  # NaN when the tag is absent
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


def show(title: str, table: pd.DataFrame, note: str = "", left_out: str | None = None) -> None:
    """Print a table with fixed decimals per column ("-" where there is no value), and how many invalid runs of the
    kind ``left_out`` it leaves out."""
    print(f"\n=== {title} ===")
    if note:
        print(note)
    if left_out is not None:
        print(f"left out: {LEFT_OUT.get(left_out, 0)} invalid or failed {left_out}s (listed above as INVALID)")
    if table is None or table.empty:
        print("(no valid runs for this table)")
        return

    def fixed(decimals: int):
        return lambda v: f"{v:.{decimals}f}"

    formatters = {c: fixed(DECIMALS.get(c, 3 if str(c).startswith("<=") or "hit_rate" in str(c) else 2))
                  for c in table.columns if pd.api.types.is_float_dtype(table[c])}
    print(table.to_string(formatters=formatters, na_rep="-"))


FIGURES: dict[str, plt.Figure] = {}  # logged to MLflow at the end with PAPER_FIGURES_MLFLOW=1


def save(fig: plt.Figure, name: str) -> None:
    if FIGURES_DIR:
        Path(FIGURES_DIR).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(FIGURES_DIR) / name, dpi=120, bbox_inches="tight")
    if FIGURES_TO_MLFLOW:
        FIGURES[name] = fig
    plt.show()
    if not FIGURES_TO_MLFLOW:
        plt.close(fig)


def ratio(num: pd.Series, den: pd.Series) -> pd.Series:
    return num / den


# %% [markdown]
# ## (a) CIC: decision time, latency and throughput against DADS, QDMP, Neurosurgeon, device-only, server-only

# %%
cic_runs = load_runs(CIC_EXPERIMENTS)
if not cic_runs.empty:  # device/server runs (a star's host-alone runs belong to (b))
    cic_runs = cic_runs[~cic_runs["method"].isin(SPATIAL) & (cic_runs["scenario"] != "dynamic")
                        & (cic_runs["topology"] != "star")]
cut = valid_cells(cic_runs, ["hardware", "model", "scenario", "method", "bandwidth_mbps"], "cut run")

# %%
decision = pd.DataFrame()
if not cut.empty:
    cut = cut.assign(latency_ms=metric(cut, "latency_ms"), throughput_ips=metric(cut, "throughput_ips"),
                     decision_ms=metric(cut, "decision_time_ms"), offline_ms=metric(cut, "offline_time_ms"),
                     nodes=metric(cut, "nodes_before"), nodes_after=metric(cut, "nodes_after"))
    # The decision hardly depends on the bandwidth: the median over the uplinks of each (model, method).
    decision = cut.groupby(["hardware", "model", "scenario", "method"], dropna=False).agg(
        nodes=("nodes", "max"), nodes_after=("nodes_after", "max"), decision_ms=("decision_ms", "median"),
        offline_ms=("offline_ms", "median"), uplinks=("bandwidth_mbps", "count"))
    if "dads" in decision.index.unique("method"):
        dads_ms = decision["decision_ms"].xs("dads", level="method")
        decision["dads_over_this"] = ratio(
            pd.Series(dads_ms.reindex(decision.index.droplevel("method")).to_numpy(), decision.index),
            decision["decision_ms"])
    else:
        print("MISSING baseline dads: no decision-time ratios")
    decision["paper"] = [papers.DECISION_CLAIMS.get(m, papers.NO_FIGURE)
                         for m in decision.index.get_level_values("method")]
show("(a1) decision time per model and method (median over uplinks, ms); dads_over_this = how many times faster "
     "than DADS", decision, left_out="cut run")

# %%
latency = pd.DataFrame()
if not cut.empty:
    cells = cut.set_index(["hardware", "model", "scenario", "bandwidth_mbps", "method"])[["latency_ms",
                                                                                           "throughput_ips"]]
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
        """DADS's ResNet-18 row, only beside DADS's own setting: its board pair, ResNet-18 at 224x224, light load."""
        hardware, model, scenario, bw, method = index
        if (method != "dads" or bw not in papers.DADS_RESNET18_VS_EDGE or hardware != papers.DADS_HARDWARE
                or model != preset_label("resnet18") or scenario != "single_stream"):
            return ""
        lat, tput = papers.DADS_RESNET18_VS_EDGE[bw]
        return f"DADS ResNet-18 vs edge-only ({papers.DADS_UPLINKS[bw]}): {lat}x / {tput}x"

    latency["paper"] = [dads_paper(i) for i in latency.index]
show("(a2) latency (ms) and throughput (inferences/s) per uplink and method; *_x_vs_B = speed-up over B", latency,
     "single_stream throughput is one inference at a time; stream (DADS's heavy load) keeps several in flight",
     left_out="cut run")

# %%
def at_setting(table: pd.DataFrame, hardware: str | None, models: tuple[str, ...] | None = None,
               scenario: str | None = None) -> pd.DataFrame:
    """The rows of a (hardware, model, scenario, ...) table measured at a paper's setting (None: any)."""
    if table.empty:
        return table
    keep = np.ones(len(table), dtype=bool)
    if hardware is not None:
        keep &= table.index.get_level_values("hardware") == hardware
    if models is not None:
        keep &= table.index.get_level_values("model").isin([preset_label(m) for m in models])
    if scenario is not None:
        keep &= table.index.get_level_values("scenario") == scenario
    return table[keep]


def span(values: pd.Series) -> str:
    values = values.dropna()
    return f"{values.min():.2f}-{values.max():.2f}" if len(values) else "-"


claims = pd.DataFrame()
if not latency.empty:
    rows = []
    cic = latency.xs("cic", level="method") if "cic" in latency.index.unique("method") else pd.DataFrame()
    dads = latency.xs("dads", level="method") if "dads" in latency.index.unique("method") else pd.DataFrame()
    for what, col, claim in (("latency", "lat_x_vs", "latency_speedup"),
                             ("throughput", "tput_x_vs", "throughput_speedup")):
        for base in BASELINES:
            if f"{col}_{base}" in cic:
                here = at_setting(cic, papers.CIC_HARDWARE)[f"{col}_{base}"]
                rows.append({"claim": f"CIC {what} vs {base}", "paper": f"up to {papers.CIC_CLAIMS[claim]}x vs "
                             f"existing solutions [{papers.CIC}]", "at the paper's setting": span(here),
                             "elsewhere (best)": cic[f"{col}_{base}"].max()})
        for (load, base, kind), (low, high) in papers.DADS_RANGES.items():
            scenario = "single_stream" if load == "light" else "stream"
            if kind == what and f"{col}_{base}" in dads:
                here = at_setting(dads, papers.DADS_HARDWARE, papers.DADS_MODELS, scenario)[f"{col}_{base}"]
                rows.append({"claim": f"DADS {what} vs {base}, {load} load", "paper": f"{low}-{high}x, five models, "
                             f"RPi 3B device [{papers.DADS}]", "at the paper's setting": span(here),
                             "elsewhere (best)": dads[f"{col}_{base}"].max()})
    if not decision.empty and "cic" in decision.index.unique("method"):
        rows.append({"claim": "CIC decision time vs DADS",
                     "paper": f"up to {papers.CIC_CLAIMS['decision_speedup']:g}x faster [{papers.CIC}]",
                     "at the paper's setting": span(decision.xs("cic", level="method")["dads_over_this"]),
                     "elsewhere (best)": np.nan})
    claims = pd.DataFrame(rows, columns=["claim", "paper", "at the paper's setting", "elsewhere (best)"]
                          ).set_index("claim")
show("(a3) the papers' headline claims beside the measured ratios: the range at the paper's own setting (CIC: "
     f"{papers.CIC_HARDWARE}; DADS: {papers.DADS_HARDWARE}, its five models) and the best anywhere else",
     claims, left_out="cut run")

# %%
if not cut.empty:
    groups = list(cut.groupby(["hardware", "model", "scenario"], dropna=False))
    ncols = min(4, len(groups))
    nrows = -(-len(groups) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.6 * nrows), squeeze=False)
    for ax, ((hw, model, scenario), runs) in zip(axes.flat, groups):
        for method, rows in runs.sort_values("bandwidth_mbps").groupby("method"):
            ax.plot(rows["bandwidth_mbps"], rows["latency_ms"], marker="o", label=method)
        ax.set(xscale="log", yscale="log", xlabel="uplink (Mbit/s)", ylabel="latency (ms)",
               title=f"{model} · {hw} · {scenario}")
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save(fig, "cic_latency_vs_bandwidth.png")

    table = decision["decision_ms"].unstack("method")
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(table)), 3.6))
    table.plot.bar(ax=ax, logy=True, rot=0)
    ax.set(ylabel="decision time (ms)", xlabel="", title="decision time per model")
    ax.set_xticklabels([f"{model}\n{hw}\n{scenario}" for hw, model, scenario in table.index], fontsize=8)
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
    host_runs = halp_runs[(halp_runs["method"] == "device_only") & (halp_runs["topology"] == "star")]
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
        """HALP's range beside its own boards only; the prototype's figure beside three Raspberry Pi 4."""
        hardware, _, tasks, n = index
        if hardware == papers.HALP_PROTOTYPE_HARDWARE:
            return f"prototype: {papers.HALP_PROTOTYPE}" if n == 3 and tasks == 1 else ""
        if hardware not in papers.HALP_HARDWARE:
            return ""
        low, high = papers.HALP_SPEEDUP.get(tasks, (None, None))
        if low is None:
            return papers.NO_FIGURE
        return f"HALP {low}-{high}x ({tasks} task{'s' * (tasks > 1)}/batch), {papers.HALP_VS_MODNN}"

    speedup["paper"] = [halp_paper(i) for i in speedup.index]
show("(b) VGG-16 speed-up over the host alone per board, link (Mbit/s), tasks per batch and N", speedup,
     f"paper claims only beside the paper's boards ({', '.join(papers.HALP_HARDWARE)}; prototype: "
     f"{papers.HALP_PROTOTYPE_HARDWARE}). "
     f"paper: {papers.HALP} on GTX 1080 Ti and Jetson AGX Xavier, ranges over its settings (no value per N or "
     f"link); prototype {papers.HALP_PROTOTYPE}. {papers.MODNN} claims {papers.MODNN_SPEEDUP[0]}-"
     f"{papers.MODNN_SPEEDUP[1]}x with 2-4 workers in its own setting; per N: {papers.NO_FIGURE}",
     left_out="spatial run")

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
if not rel_runs.empty:  # the runs that were given a deadline
    rel_runs = rel_runs[pd.to_numeric(column_of(rel_runs, "params.scenario.deadline_ms"), errors="coerce").notna()]
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
     f"{papers.HALP_RELIABILITY}", left_out="reliability run")

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
DYNAMIC_EXPERIMENTS = experiments("DYNAMIC_EXPERIMENT", ",".join(SELECTED))
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
     dynamic, "goal: probe within 1.10x of the oracle and below 1.00x of the fixed plan [ours: no paper figure]",
     left_out="dynamic run")


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

# %% [markdown]
# ## (e) DADS in its own setting: a Raspberry Pi 3B device and an 8-core CPU server
#
# `dads_paper`: light load = `single_stream` (DADS's DSL), heavy load = `stream` (DSH, several inferences in flight).
# Gains of DADS over edge-only (`device_only`) and cloud-only (`server_only`) at the same model, uplink and load:
# measured (valid runs only) and predicted (the cost model: `mode=predict`, and jobs the sweep's real-time budget
# skipped). DADS's numbers are printed only beside its own board pair, its five models (at their preset input sizes)
# and its four uplinks.

# %%
CELL = ["hardware", "model", "scenario", "bandwidth_mbps"]


def gains(runs: pd.DataFrame, method: str, base: str, latency: str, throughput: str) -> pd.DataFrame:
    """Per cell: ``method``'s latency gain (base latency / its latency) and throughput gain over ``base``."""
    if runs.empty or not {method, base} <= set(runs["method"]):
        return pd.DataFrame(columns=["lat_x", "tput_x"])
    cells = runs.assign(lat=metric(runs, latency), tput=metric(runs, throughput)).drop_duplicates(
        [*CELL, "method"], keep="last").set_index([*CELL, "method"])
    ours, ref = cells.xs(method, level="method"), cells.xs(base, level="method")
    ref = ref.reindex(ours.index)
    return pd.DataFrame({"lat_x": ref["lat"] / ours["lat"], "tput_x": ours["tput"] / ref["tput"]}).dropna(how="all")


cut_predicted = predicted_runs(cic_runs) if not cic_runs.empty else cic_runs
MEASURED, PREDICTED = ("latency_ms", "throughput_ips"), ("predicted_latency_ms", "predicted_throughput_ips")
dads_measured = {base: gains(cut, "dads", base, *MEASURED) for base in ("device_only", "server_only")}
dads_predicted = {base: gains(cut_predicted, "dads", base, *PREDICTED) for base in ("device_only", "server_only")}


def at_dads_setting(table: pd.DataFrame, scenario: str, models: tuple[str, ...] = papers.DADS_MODELS) -> pd.DataFrame:
    if table.empty:
        return table
    index = table.index
    keep = ((index.get_level_values("hardware") == papers.DADS_HARDWARE)
            & index.get_level_values("model").isin([preset_label(m) for m in models])
            & (index.get_level_values("scenario") == scenario)
            & index.get_level_values("bandwidth_mbps").isin(list(papers.DADS_UPLINKS)))
    return table[keep]


def value_at(table: pd.DataFrame, bw: float, column: str) -> float:
    rows = table[table.index.get_level_values("bandwidth_mbps") == bw] if not table.empty else table
    return float(rows[column].iloc[-1]) if len(rows) else np.nan


row18 = []
for bw, (paper_lat, paper_tput) in papers.DADS_RESNET18_VS_EDGE.items():
    light_m = at_dads_setting(dads_measured["device_only"], "single_stream", ("resnet18",))
    heavy_m = at_dads_setting(dads_measured["device_only"], "stream", ("resnet18",))
    light_p = at_dads_setting(dads_predicted["device_only"], "single_stream", ("resnet18",))
    heavy_p = at_dads_setting(dads_predicted["device_only"], "stream", ("resnet18",))
    row18.append({"uplink": f"{papers.DADS_UPLINKS[bw]} {bw:g}", "paper lat_x": paper_lat,
                  "measured lat_x": value_at(light_m, bw, "lat_x"), "predicted lat_x": value_at(light_p, bw, "lat_x"),
                  "paper tput_x": paper_tput, "measured tput_x": value_at(light_m, bw, "tput_x"),
                  "measured tput_x (stream)": value_at(heavy_m, bw, "tput_x"),
                  "predicted tput_x (stream)": value_at(heavy_p, bw, "tput_x")})
dads_resnet18 = pd.DataFrame(row18).set_index("uplink")
if dads_resnet18.drop(columns=["paper lat_x", "paper tput_x"]).isna().all().all():
    dads_resnet18 = pd.DataFrame()
show(f"(e1) DADS vs edge-only, ResNet-18 224x224 on {papers.DADS_HARDWARE}, light load, per uplink [{papers.DADS}]",
     dads_resnet18, "lat_x, tput_x: gain over edge-only; light-load throughput is one inference at a time, so the "
     "stream columns (heavy load, DSH) are given beside it. Predicted: the cost model (measured=false runs)",
     left_out="cut run")

# %%
range_rows = []
for (load, base, kind), (low, high) in papers.DADS_RANGES.items():
    scenario = "single_stream" if load == "light" else "stream"
    column = "lat_x" if kind == "latency" else "tput_x"
    here_m = at_dads_setting(dads_measured[base], scenario)[column].dropna() if base in dads_measured else pd.Series()
    here_p = at_dads_setting(dads_predicted[base], scenario)[column].dropna() if base in dads_predicted else pd.Series()
    range_rows.append({"claim": f"{kind} vs {base}, {load} load", "paper": f"{low}-{high}x",
                       "measured": span(here_m),
                       "measured cells in range": f"{((here_m >= low) & (here_m <= high)).sum()} of {len(here_m)}",
                       "predicted": span(here_p),
                       "predicted cells in range": f"{((here_p >= low) & (here_p <= high)).sum()} of {len(here_p)}"})
dads_ranges = pd.DataFrame(range_rows).set_index("claim")
if (dads_ranges["measured"] == "-").all() and (dads_ranges["predicted"] == "-").all():
    dads_ranges = pd.DataFrame()
show(f"(e2) DADS's ranges over its five models and four uplinks on {papers.DADS_HARDWARE} [{papers.DADS}]",
     dads_ranges, "cells: (model, uplink) pairs of dads_paper with both DADS and the baseline", left_out="cut run")

# %% [markdown]
# ## (f) HALP's prototype: VGG-16 on three Raspberry Pi 4
#
# `halp_prototype`: HALP and the host alone on `3x_rpi4` at the rates a Pi 4's Wi-Fi and Ethernet reach (sources in
# `conf/experiment/halp_prototype.yaml`), beside the prototype's 1.7x. Measured speed-up = host-alone latency /
# HALP's task time; the plan's own prediction and any predicted run (measured=false) beside it.

# %%
prototype = pd.DataFrame()
halp_predicted = predicted_runs(halp_runs) if not halp_runs.empty else halp_runs
if not halp_predicted.empty:
    halp_predicted = halp_predicted[halp_predicted["method"] == "halp"].assign(
        predicted_speedup=lambda d: metric(d, "predicted_speedup"))
proto_rows = {}
if not speedup.empty and papers.HALP_PROTOTYPE_HARDWARE in speedup.index.unique("hardware"):
    for (hw, bw, tasks, n), row in speedup.xs(papers.HALP_PROTOTYPE_HARDWARE, level="hardware",
                                              drop_level=False).iterrows():
        proto_rows[(n, tasks, bw)] = {"measured speedup_x": row.get("halp_speedup_x", np.nan),
                                      "plan's predicted_x": row.get("halp_predicted_x", np.nan)}
if not halp_predicted.empty:
    for _, run in halp_predicted[halp_predicted["hardware"] == papers.HALP_PROTOTYPE_HARDWARE].iterrows():
        proto_rows.setdefault((run["num_servers"], run["tasks"], run["bandwidth_mbps"]), {})[
            "predicted run speedup_x"] = run["predicted_speedup"]
if proto_rows:
    prototype = pd.DataFrame.from_dict(proto_rows, orient="index").sort_index()
    prototype.index.names = ["N", "tasks", "bandwidth_mbps"]
    prototype["paper"] = [f"prototype {papers.HALP_PROTOTYPE_SPEEDUP}x" if (n, t) == (3, 1) else ""
                          for n, t, _ in prototype.index]
show(f"(f) HALP on {papers.HALP_PROTOTYPE_HARDWARE}: speed-up over the host alone [{papers.HALP_PROTOTYPE}]",
     prototype, "the prototype's link rate is not in the stored sources: 64 Mbit/s stands for a Pi 4's Wi-Fi, "
     "941 for its Ethernet", left_out="spatial run")

# %% [markdown]
# ## (g) Where each claim holds
#
# None of the papers shows this. From `mode=predict` sweeps (`python run.py -m experiment=cut_claims_predicted` and
# `experiment=halp_claims_predicted`, seconds to minutes): HALP's speed-up over the host alone against the link rate
# for each board and N = 2..4, and DADS's/CIC's latency gain over device-only against the uplink for each device and
# model, with each paper's claimed range as a band. Measured runs (valid only) are marked with black crosses: where
# they sit on the predicted curve is the emulation-fidelity benchmark in miniature; `benchmarks/emulation_fidelity.py`
# is what licenses reading the curves between them.

# %%
halp_curve = halp_predicted[halp_predicted["tasks"] == 1] if not halp_predicted.empty else pd.DataFrame()
if not halp_curve.empty:
    boards = sorted(halp_curve["hardware"].unique())
    fig, axes = plt.subplots(1, len(boards), figsize=(4.6 * len(boards), 3.6), squeeze=False)
    for ax, hw in zip(axes[0], boards):
        for n, rows in halp_curve[halp_curve["hardware"] == hw].sort_values("bandwidth_mbps").groupby("num_servers"):
            rows = rows.drop_duplicates("bandwidth_mbps", keep="last")
            ax.plot(rows["bandwidth_mbps"], rows["predicted_speedup"], marker=".", label=f"predicted, N={n}")
        if hw in papers.HALP_HARDWARE:
            ax.axhspan(*papers.HALP_SPEEDUP[1], alpha=0.15, color="C2", label="HALP's claim, 1 task/batch")
        if hw == papers.HALP_PROTOTYPE_HARDWARE:
            ax.axhline(papers.HALP_PROTOTYPE_SPEEDUP, color="C2", ls="--", label="prototype 1.7x (N=3)")
        if not speedup.empty and hw in speedup.index.unique("hardware") and "halp_speedup_x" in speedup:
            seen = speedup.xs(hw, level="hardware").reset_index()
            seen = seen[seen["tasks"] == 1]
            ax.scatter(seen["bandwidth_mbps"], seen["halp_speedup_x"], marker="x", color="k", zorder=5,
                       label="measured")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set(xscale="log", xlabel="link rate (Mbit/s)", ylabel="speed-up over host alone", title=f"HALP · {hw}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, "where_halp_holds.png")

# %%
cut_curve = {m: gains(cut_predicted, m, "device_only", *PREDICTED) for m in ("dads", "cic")}
cut_seen = {m: gains(cut, m, "device_only", *MEASURED) for m in ("dads", "cic")}
devices = sorted(set().union(*(t.index.unique("hardware") for t in cut_curve.values() if not t.empty)))
if devices:
    fig, axes = plt.subplots(1, len(devices), figsize=(4.8 * len(devices), 3.8), squeeze=False)
    for ax, hw in zip(axes[0], devices):
        for method, style in (("dads", "-"), ("cic", ":")):
            table = cut_curve[method]
            if table.empty or hw not in table.index.unique("hardware"):
                continue
            rows = table.xs(hw, level="hardware").xs("single_stream", level="scenario", drop_level=True) \
                if "single_stream" in table.xs(hw, level="hardware").index.unique("scenario") else pd.DataFrame()
            for i, (model, curve) in enumerate(rows.groupby(level="model")):
                curve = curve.droplevel("model").sort_index()
                ax.plot(curve.index, curve["lat_x"], ls=style, color=f"C{i}",
                        label=f"{method} · {model}" if method == "dads" else None)
        low, high = papers.DADS_RANGES[("light", "device_only", "latency")]
        ax.axhspan(low, high, alpha=0.12, color="C2", label=f"DADS's claim {low}-{high}x (on {papers.DADS_HARDWARE})")
        ax.axhline(papers.CIC_CLAIMS["latency_speedup"], color="C3", ls="--",
                   label=f"CIC's 'up to {papers.CIC_CLAIMS['latency_speedup']}x' (on {papers.CIC_HARDWARE})")
        seen = cut_seen["dads"]
        if not seen.empty and hw in seen.index.unique("hardware"):
            points = seen.xs(hw, level="hardware").reset_index()
            points = points[points["scenario"] == "single_stream"]
            ax.scatter(points["bandwidth_mbps"], points["lat_x"], marker="x", color="k", zorder=5,
                       label="measured (dads)")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="uplink (Mbit/s)", ylabel="latency gain over device-only",
               title=f"DADS (solid), CIC (dotted) · {hw}")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # gains of 1-7x would get a single tick
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=6)
    fig.tight_layout()
    save(fig, "where_cut_claims_hold.png")

# %%


def rates_where(curve: pd.Series, low: float, high: float = np.inf) -> str:
    """The swept rates (index) where the curve lies in [low, high], as a span, and how many of the swept rates."""
    inside = curve[(curve >= low) & (curve <= high)].index
    if not len(curve):
        return "-"
    if not len(inside):
        return f"nowhere in {curve.index.min():g}-{curve.index.max():g} Mbit/s (max {curve.max():.2f}x)"
    return f"{inside.min():g}-{inside.max():g} Mbit/s ({len(inside)} of {len(curve)} rates)"


def reproduced(points: pd.DataFrame, low: float, high: float = np.inf) -> str:
    if points.empty:
        return "not measured"
    inside = points[(points["gain"] >= low) & (points["gain"] <= high)]
    if inside.empty:
        return f"no ({len(points)} measured, best {points['gain'].max():.2f}x)"
    return "yes: " + ", ".join(f"{r.where}: {r.gain:.2f}x" for r in inside.itertuples())


region_rows = []
dads_low, dads_high = papers.DADS_RANGES[("light", "device_only", "latency")]
cic_claim, cic_tput_claim = papers.CIC_CLAIMS["latency_speedup"], papers.CIC_CLAIMS["throughput_speedup"]
# A single stream's throughput is 1 / its latency, so CIC's throughput row asks where the same gain reaches 3.3x.
for method, column, claim, low, high in (
        ("dads", "lat_x", f"DADS latency {dads_low}-{dads_high}x vs edge-only", dads_low, dads_high),
        ("cic", "lat_x", f"CIC latency up to {cic_claim}x (vs device-only here)", cic_claim, np.inf),
        ("cic", "tput_x", f"CIC throughput up to {cic_tput_claim}x (single stream, vs device-only)", cic_tput_claim,
         np.inf)):
    curve, seen = cut_curve[method], cut_seen[method]
    keys = set(curve.index.droplevel("bandwidth_mbps").unique()) if not curve.empty else set()
    keys |= set(seen.index.droplevel("bandwidth_mbps").unique()) if not seen.empty else set()
    for hw, model, scenario in sorted(k for k in keys if k[2] == "single_stream"):
        pred = pd.Series(dtype=float)
        if not curve.empty and (hw, model, scenario) in curve.index.droplevel("bandwidth_mbps"):
            pred = curve.sort_index().xs((hw, model, scenario))[column]
        points = pd.DataFrame()
        if not seen.empty and (hw, model, scenario) in seen.index.droplevel("bandwidth_mbps"):
            got = seen.sort_index().xs((hw, model, scenario))[column].dropna()
            points = pd.DataFrame({"gain": got.to_numpy(), "where": [f"{bw:g} Mbit/s" for bw in got.index]})
        region_rows.append({"claim": claim, "setting": f"{hw} · {model}",
                            "paper's setting": "yes" if hw == (papers.DADS_HARDWARE if method == "dads"
                                                               else papers.CIC_HARDWARE) else "no",
                            "reproduced (measured)": reproduced(points, low, high),
                            "would hold (predicted)": rates_where(pred, low, high)})
if not halp_curve.empty:
    for (hw, n), rows in halp_curve.groupby(["hardware", "num_servers"]):
        curve = rows.drop_duplicates("bandwidth_mbps", keep="last").set_index("bandwidth_mbps")[
            "predicted_speedup"].sort_index()
        prototype_cell = hw == papers.HALP_PROTOTYPE_HARDWARE
        low, high = (papers.HALP_PROTOTYPE_SPEEDUP, np.inf) if prototype_cell else papers.HALP_SPEEDUP[1]
        points = pd.DataFrame()
        if not speedup.empty and (hw, n) in speedup.reset_index().set_index(["hardware", "num_servers"]).index:
            seen = speedup.reset_index()
            seen = seen[(seen["hardware"] == hw) & (seen["num_servers"] == n) & (seen["tasks"] == 1)]
            if "halp_speedup_x" in seen:
                points = pd.DataFrame({"gain": seen["halp_speedup_x"].to_numpy(),
                                       "where": [f"{bw:g} Mbit/s" for bw in seen["bandwidth_mbps"]]}).dropna()
        region_rows.append({"claim": f"HALP prototype >= {low}x" if prototype_cell else f"HALP {low}-{high}x, 1 task",
                            "setting": f"{hw} · N={n}",
                            "paper's setting": "yes" if (hw in papers.HALP_HARDWARE
                                                         or (prototype_cell and n == 3)) else "no",
                            "reproduced (measured)": reproduced(points, low, high),
                            "would hold (predicted)": rates_where(curve, low, high)})
regions = pd.DataFrame(region_rows)
if not regions.empty:
    regions = regions.set_index(["claim", "setting"])
show("(g) where each headline claim holds: reproduced by a measured run, or the swept rates where the cost model "
     "says it would hold", regions, "predicted regions from measured=false runs; the emulation-fidelity benchmark "
     "(benchmarks/emulation_fidelity.py) is what licenses reading them", left_out="cut run")

# %%
if FIGURES_TO_MLFLOW and FIGURES:
    mlflow.set_experiment("paper_figures")
    with mlflow.start_run(run_name="paper_tables", tags={"measured": "false", "experiments": ",".join(SELECTED)}):
        for name, fig in FIGURES.items():
            mlflow.log_figure(fig, name)
            plt.close(fig)
    print(f"logged {len(FIGURES)} figures to the MLflow experiment paper_figures")
