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
# # Your runs, beside the papers' tables
#
# `make report` runs this notebook on the store your runs went to (`MLFLOW_TRACKING_URI`, default `sqlite:///mlflow.db`
# at the repository root); its figures go to `figures/` beside that store and to MLflow (experiment `reports`, one run
# per report, tagged `report=true`: never counted as a result). Every number comes from runs through `harness.analysis`
# (as in the end-of-run summary). Each section shows what the store has and names the command that records what it
# lacks: (a) cut methods (a device and a server, or the host es0 and one server es1 of a star), (b) spatial methods
# against the host alone, (c) deadline hit rates, (d) dynamic links, (e) DADS's setting, (f) the claims, (g) the cut
# methods against compressed offload (the camera's JPEG sent as it is).
#
# **Rules.** Tables count FINISHED runs tagged valid (the latest of a cell); the others are listed with why and counted
# ("left out"). Predicted runs (`tags.measured == "false"`: `mode=predict`, jobs over the real-time budget) carry the
# cost model's figures, marked "predicted" everywhere. Latency is a run's median with its 95 % interval: methods whose
# intervals overlap are within noise, not ranked. A claim stands beside runs only where model, input size, hardware and
# link rate match the paper's setting (`notebooks/papers.py`). One name per model (as in the summary and the MLflow tag
# `model_label`), one colour and marker per method.
#
# **Settings** (environment): `EXPERIMENTS` (comma-separated; default: all); `CIC_EXPERIMENT`, `HALP_EXPERIMENT`,
# `RELIABILITY_EXPERIMENT`, `DYNAMIC_EXPERIMENT` narrow a section; `PAPER_FIGURES_DIR` saves figures elsewhere. Paired
# with `paper_tables.ipynb` (jupytext): after editing one, `.venv/bin/jupytext --sync notebooks/paper_tables.py`.

# %%
import math
import os
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # a plain script: draw to files, never to a screen
import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from hydra import compose, initialize_config_dir

HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()  # a script, or a kernel
ROOT = next(p for p in (HERE, *HERE.parents) if (p / "run.py").exists())
sys.path[:0] = [str(ROOT), str(ROOT / "notebooks")]  # the harness, and papers.py beside this notebook
import papers

from harness.analysis import claims, compare, links, spatial
from harness.analysis import runs as R
from harness.analysis.labels import REPORT_EXPERIMENTS, REPORTS, RUN, command, method_styles
from harness.config import register
from harness.controller.tracking import dynamic_record, figures_dir, local_store_exists, log_report

pd.set_option("display.width", 250, "display.max_columns", 40, "display.max_colwidth", 100)
TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}"
mlflow.set_tracking_uri(TRACKING_URI)
STORED = {e.experiment_id: e.name for e in mlflow.MlflowClient().search_experiments()
          if e.name not in ("Default", *REPORT_EXPERIMENTS)} if local_store_exists(TRACKING_URI) else {}
SELECTED = [n.strip() for n in os.environ.get("EXPERIMENTS", ",".join(STORED.values())).split(",") if n.strip()]
SECTIONS = {var: [n.strip() for n in os.environ.get(var, ",".join(SELECTED)).split(",") if n.strip()]
            for var in ("CIC_EXPERIMENT", "HALP_EXPERIMENT", "RELIABILITY_EXPERIMENT", "DYNAMIC_EXPERIMENT")}
FIGURES_DIR = Path(os.environ.get("PAPER_FIGURES_DIR") or figures_dir(TRACKING_URI))
BASELINES = ("device_only", "server_only", R.COMPRESSED_OFFLOAD, "dads")  # the camera's JPEG offloaded, too
print(f"MLflow store: {TRACKING_URI}\nreading experiments: {', '.join(SELECTED) or '(none)'}")

# %% [markdown]
# ## The store: what each experiment holds, and the cells of your sweeps that have no valid run

# %%
SWEPT = {"model": "params.model.name", "method": "params.method.name", "hardware": "params.hardware.name",
         "link": "params.link.name", "scenario": "params.scenario.name"}


def preset_sweeps() -> dict[str, dict]:
    """Per MLflow experiment of the presets (several may share one): the jobs and axes (the method always) swept."""
    register()
    found: dict[str, dict] = {}
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        for path in sorted((ROOT / "conf" / "experiment").glob("*.yaml")):
            cfg = compose(config_name="config", overrides=[f"experiment={path.stem}"], return_hydra_config=True)
            swept = {key: str(values).split(",") for key, values in (cfg.hydra.sweeper.params or {}).items()}
            sweep = found.setdefault(cfg.experiment.name, {"jobs": 0, "axes": ["params.method.name"]})
            sweep["jobs"] += math.prod(map(len, swept.values()))
            sweep["axes"] += [a for a in (SWEPT.get(k, f"params.{k}") for k in swept) if a not in sweep["axes"]]
    return found


SWEEPS, PRESETS = preset_sweeps(), {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
WANTED = sorted(set(SELECTED).union(*SECTIONS.values()))
for name in sorted(set(WANTED) - set(STORED.values()) - set(REPORT_EXPERIMENTS)):  # figures, not runs
    quick = f" (a taste in minutes: `{RUN} -m experiment={name}_quick`)" if f"{name}_quick" in PRESETS else ""
    print(f"MISSING experiment {name!r} in {TRACKING_URI}: run " + (
        f"`{RUN} -m experiment={name}`{quick}" if name in PRESETS else f"a sweep with experiment.name={name}"))
IDS = [i for i, n in STORED.items() if n in WANTED]
ALL = R.runs_table(mlflow.search_runs(experiment_ids=IDS) if IDS else pd.DataFrame(), STORED)
for name in sorted(set(WANTED) & set(STORED.values())):
    ours, sweep = ALL[ALL["experiment"] == name], SWEEPS.get(name, {"jobs": 0, "axes": []})
    print(R.experiment_line(ours, name, sweep["jobs"]))
    for cell in R.missing_cells(ours, sweep["axes"]):  # a preset's experiment only: within what the user swept
        print(f"MISSING in {name}: no valid run for " + ", ".join(f"{k[7:]}={v}" for k, v in cell.items()))
if ALL.empty:
    print(f"MISSING: no runs. `make run` records the default experiment; `{RUN} -m experiment=cic_paper_quick` "
          "(also halp_paper_quick, dads_paper_quick) a taste of the papers' tables in minutes")
STYLE = method_styles([*sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml")),
                       *sorted(ALL["method"].dropna().unique())])
LEFT_OUT: dict[str, int] = {}
DECIMALS = {"decision_ms": 4, "offline_ms": 3, "nodes": 0, "nodes_after": 0, "uplinks": 0, "hit_rate": 3}
SAVED: list[Path] = []


def section(var: str, what: str, keep) -> pd.DataFrame:
    """The runs of a section's experiments that ``keep`` selects; those that do not count listed with why."""
    runs = ALL[ALL["experiment"].isin(SECTIONS[var])]
    runs = runs[keep(runs)] if not runs.empty else runs
    dropped = R.left_out(runs[runs["source"] == "measured"])
    for _, run in dropped.iterrows():
        print(f"INVALID {what}: {run.get('tags.mlflow.runName', run['run_id'])}: {str(run['why'])[:160]}")
    LEFT_OUT[what] = LEFT_OUT.get(what, 0) + len(dropped)
    return runs


def show(title: str, table: pd.DataFrame | None, note: str = "", left_out: str | None = None, empty: str = "") -> None:
    """Print a table (fixed decimals, "-": no value), how many runs it leaves out, or the command to fill it."""
    print(f"\n=== {title} ===" + (f"\n{note}" if note else "") + (f"\nleft out: {LEFT_OUT.get(left_out, 0)} invalid "
          f"or failed {left_out}s (listed above as INVALID)" if left_out else ""))
    if table is None or table.empty:
        print("(no valid runs for this table)" + (f": {empty}" if empty else ""))
        return
    formats = {c: (lambda d: lambda v: f"{v:.{d}f}")(DECIMALS.get(c, 2)) for c in table.columns
               if pd.api.types.is_float_dtype(table[c])}
    print(table.to_string(formatters=formats, na_rep="-"))


def draw(ax: plt.Axes, x, y, method: str, source: str, label: str | None = None, **kw) -> None:
    """A method in its own colour and marker; predicted runs dashed with hollow markers, and labelled so."""
    style = STYLE.get(method, {"color": "k", "marker": "."})
    ax.plot(x, y, color=style["color"], marker=style["marker"], ls=kw.pop("ls", "--" if source == "predicted" else "-"),
            mfc="none" if source == "predicted" else style["color"],
            label=(label or method) + (" (predicted)" if source == "predicted" else ""), **kw)


def line_panels(table: pd.DataFrame, by: list[str], lines: list[str], x: str, y: str, name: str, title: str,
                extra=lambda ax, key: None, **axes_settings) -> None:
    """One panel per value of ``by`` (``title`` formats them), one line per value of ``lines`` (the method first:
    its colour and marker; ``source``, if there, only styles the line), then ``extra(ax, key)`` (a paper's band)."""
    groups = list(table.groupby(by)) if not table.empty else []
    if not groups:
        return
    cols, rows_of_panels = min(4, len(groups)), -(-len(groups) // 4)
    fig, grid = plt.subplots(rows_of_panels, cols, figsize=(4.6 * cols, 3.6 * rows_of_panels), squeeze=False)
    axes = list(grid.flat[:len(groups)])
    for ax in grid.flat[len(groups):]:
        ax.set_visible(False)
    for ax, (key, rows) in zip(axes, groups):
        for values, line in rows.sort_values(x).groupby(lines):
            named = dict(zip(lines, values))
            label = ", ".join([named["method"], *(f"{k}={v}" for k, v in list(named.items())[1:] if k != "source")])
            draw(ax, line[x], line[y], named["method"], named.get("source", "measured"), label)
        extra(ax, dict(zip(by, key)))
        ax.set(title=title.format(**dict(zip(by, key))), **axes_settings)
    save(fig, axes, name)


def save(fig: plt.Figure, axes: list[plt.Axes], name: str) -> None:
    """A legend on every panel, then the figure saved beside the store."""
    for ax in axes:
        ax.legend(fontsize=6)
    fig.tight_layout()
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURES_DIR / name, dpi=120, bbox_inches="tight")
    SAVED.append(FIGURES_DIR / name)
    plt.show()
    plt.close(fig)


# %% [markdown]
# ## (a) Cut methods: decision time, latency and throughput, gains over the baselines

# %%
cut_runs = section("CIC_EXPERIMENT", "cut run", lambda r: (r["kind"] == "cut") & (r["scenario"] != "dynamic"))
cells = R.latest(cut_runs, [*compare.CUT_CELL, "method"])
print("\n".join(compare.missing_baselines(cells, BASELINES)))
NO_CUT = f"`make run` records CIC on the default star; `{RUN} -m experiment=cic_paper_quick` a taste of CIC's table"
decision = compare.decision_table(cells)
show("(a1) decision time per model and method (median over link rates, ms); dads_over_this = how many times faster "
     "than DADS on the same setting", decision, "the papers, of their own settings: " + "; ".join(
         f"{m}: {claim}" for m, claim in papers.DECISION_CLAIMS.items()), left_out="cut run", empty=NO_CUT)

# %%
gains = compare.gain_table(cells, BASELINES)
show("(a2) median latency (ms) and throughput (inferences/s) per link rate and method; *_x_vs_B = gain over B",
     gains, "within noise of: baselines whose latency interval overlaps this method's, or with the same plan",
     left_out="cut run", empty=NO_CUT)
print("median latency, fastest first (95 % intervals; ≈: within noise, <: apart, =: the same plan):\n"
      + ("\n".join(compare.rankings(cut_runs)) or "  (no setting where several methods ran with an interval)"))

# %%
checks = []
for what, col, key in (("latency", "lat_x", "latency_speedup"), ("throughput", "tput_x", "throughput_speedup")):
    checks += [claims.claim_check(f"CIC {what} vs {base}", f"up to {papers.CIC_CLAIMS[key]}x vs existing solutions "
                                  f"[{papers.CIC}]", compare.gains_over(gains, "cic", base)[col], papers.CIC_SETTING)
               for base in BASELINES]
if "cic" in decision.index.unique("method") if not decision.empty else False:
    checks.append(claims.claim_check("CIC decision time vs DADS", f"up to {papers.CIC_CLAIMS['decision_speedup']:g}x"
                                     f" faster [{papers.CIC}]", decision.xs("cic", level="method")["dads_over_this"],
                                     papers.CIC_SETTING))
checks = pd.DataFrame(checks).set_index("claim")
show("(a3) CIC's headline claims beside the measured gains: their range where model, input size, hardware and link "
     "rate are the paper's, and the best elsewhere (DADS's: (e))", checks[checks.iloc[:, 1:].ne("-").any(axis=1)],
     f"CIC's setting: {papers.CIC_SETTING}", left_out="cut run", empty=NO_CUT)

# %%
line_panels(cells, ["hardware", "model", "scenario"], ["method", "source"], "bandwidth_mbps", "latency_ms",
            "cut_latency_vs_bandwidth.png", "{model} · {hardware} · {scenario}", xscale="log", xlabel="link (Mbit/s)",
            ylabel="median latency (ms)")
times = decision["decision_ms"].unstack("method").dropna(how="all") if not decision.empty else decision
if not times.empty:
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(times)), 3.6))
    times.plot.bar(ax=ax, logy=True, rot=0, color=[STYLE[m]["color"] for m in times.columns])
    ax.set(ylabel="decision time (ms)", xlabel="", title="decision time per model")
    ax.set_xticklabels([f"{m}\n{hw}\n{scenario}" + ("\n(predicted)" if source == "predicted" else "")
                        for hw, m, scenario, source in times.index], fontsize=8)
    save(fig, [ax], "cut_decision_time.png")

# %% [markdown]
# ## (b) Spatial methods: speed-up over the host edge server alone
#
# Host alone = `device_only` on the same star (es0 computes by itself); a spatial run's time per task is
# `task_time_ms` (1000 / throughput: with 4 tasks per batch, tasks overlap); speed-up = host alone / task time.

# %%
star_runs = section("HALP_EXPERIMENT", "star run", lambda r: r["topology"] == "star")
print("\n".join(f"MISSING host-alone baseline: {line}" for line in spatial.missing_host_alone(star_runs)))
speedup = spatial.speedups(star_runs)
NO_STAR = (f"`{command({'method': 'halp,modnn,device_only'}, sweep=True)}` records HALP, MoDNN and the host alone "
           f"on the default star; `{RUN} -m experiment=halp_paper_quick` a taste of HALP's table")
show("(b) speed-up over the host alone per board, model, link (Mbit/s), tasks per batch and servers N", speedup,
     "within noise: the host's latency interval and the task time's overlap (the speed-up is noise). HALP's and its "
     f"prototype's claims: (f). {papers.MODNN} claims {papers.MODNN_SPEEDUP[0]}-{papers.MODNN_SPEEDUP[1]}x in its own "
     f"setting; {papers.HALP_VS_MODNN}", left_out="star run", empty=NO_STAR)

# %%
def halp_band(ax: plt.Axes, key: dict) -> None:
    """HALP's claimed range on its own boards, its prototype's figure on three Pi 4, and the host alone (1x)."""
    if key["hardware"] in papers.HALP_HARDWARE:
        ax.axhspan(*papers.HALP_SPEEDUP[1], alpha=0.12, color="grey", label="HALP's claim, 1 task/batch")
    if key["hardware"] == papers.HALP_PROTOTYPE_HARDWARE:
        ax.axhline(papers.HALP_PROTOTYPE_SPEEDUP, color="grey", ls=":", label="HALP's prototype (N=3)")
    ax.axhline(1.0, color="grey", lw=0.8)


line_panels(speedup.reset_index() if not speedup.empty else speedup, ["hardware", "model", "bandwidth_mbps"],
            ["method", "tasks", "source"], "num_servers", "speedup_x", "spatial_speedup_vs_n.png",
            "{model} · {hardware} · {bandwidth_mbps:g} Mbit/s", halp_band, xlabel="edge servers N", xticks=[2, 3, 4],
            ylabel="speed-up over host alone")

# %% [markdown]
# ## (c) Deadlines: each run's recorded `deadline_hit_rate` (runs given `scenario.deadline_ms`)

# %%
rel_runs = section("RELIABILITY_EXPERIMENT", "reliability run",
                   lambda r: R.numbers(r, "params.scenario.deadline_ms").notna())
reliability = links.reliability(rel_runs)
show("(c) deadline hit rate P(latency <= deadline), as recorded", reliability,
     f"{papers.HALP} studies service reliability under a time-varying channel: {papers.HALP_RELIABILITY}",
     left_out="reliability run", empty=f"`{RUN} -m experiment=halp_reliability` records HALP and the host alone at "
     "ten rates of a fading link with a 50 ms deadline; `scenario.deadline_ms=50` adds one to any run")
steady = reliability.reset_index().query("scenario != 'dynamic'") if not reliability.empty else reliability
line_panels(steady, ["hardware", "model", "deadline_ms"], ["method", "num_servers"], "bandwidth_mbps", "hit_rate",
            "deadline_hit_rate.png", "{model} · {hardware} · deadline {deadline_ms:g} ms", xscale="log",
            xlabel="link (Mbit/s)", ylabel="deadline hit rate", ylim=(-0.02, 1.02))

# %% [markdown]
# ## (d) Dynamic links: re-deciding on a measured estimate, against the oracle (the trace's true rate) and a fixed plan
#
# The figure draws each inference's latency at its emulated time, plan switches marked (v), over the true rate.

# %%
dyn_runs = links.dynamic_runs(section("DYNAMIC_EXPERIMENT", "dynamic run", lambda r: r["scenario"] == "dynamic"))
show("(d) re-deciding under a changing link: mean latency (ms) per estimator, its ratio to the oracle's and the fixed "
     "plan's", links.dynamic_table(dyn_runs), "goal: probe within 1.10x of the oracle and below 1.00x of the fixed "
     "plan [ours: no paper figure]", left_out="dynamic run",
     empty=f"`{RUN} -m experiment=dynamic_payoff` records CIC under two traces, once per estimator")


shown = R.latest(dyn_runs[dyn_runs["source"] == "measured"], links.DYNAMIC_CELL)
if not shown.empty:
    fig, axes = plt.subplots(shown["trace"].nunique(), 1, figsize=(8, 3.2 * shown["trace"].nunique()), squeeze=False)
    for ax, (trace, runs) in zip(axes[:, 0], shown.groupby("trace")):
        rate_ax = ax.twinx()
        for i, (_, run) in enumerate(runs.sort_values("estimator").iterrows()):
            warmup = int(float(run["params.scenario.warmup"]))
            points, rates = links.timeline(*dynamic_record(TRACKING_URI, run["run_id"]), warmup)
            draw(ax, points["t_s"], points["latency_ms"], run["method"], "measured",
                 f"{run['method']} · {run['estimator']}", ls=["-", "--", ":", "-."][i % 4])
            switched = points[points["switched"]]
            ax.scatter(switched["t_s"], switched["latency_ms"], marker="v", s=60, color="w", edgecolor="k", zorder=3)
            rate_ax.step(rates["t_s"], rates["true_mbps"], where="post", color="grey", alpha=0.4)
        rate_ax.set_ylabel("true rate (Mbit/s)", color="grey")
        ax.set(xlabel="emulated time (s)", ylabel="latency (ms)", title=f"{trace}: latency per estimator")
    save(fig, axes[:, 0], "dynamic_latency_over_time.png")

# %% [markdown]
# ## (e) DADS in its own setting: a Raspberry Pi 3B device and an 8-core CPU server
#
# DADS's gains over edge-only (`device_only`) and cloud-only (`server_only`) where model, input size, board pair and
# uplink are DADS's; light load = `single_stream` (DADS's DSL), heavy load = `stream` (DSH).

# %%
row18 = compare.gains_over(gains, "dads", "device_only")
row18 = row18[papers.DADS_RESNET18_ANY_LOAD.holds(row18)].unstack(["source", "scenario"]) if not row18.empty else row18
if not row18.empty:
    row18.columns = [" ".join(c) for c in row18.columns]
    row18["paper (lat_x, tput_x)"] = [papers.DADS_RESNET18_VS_EDGE.get(i[-1], "") for i in row18.index]
show(f"(e1) DADS vs edge-only, ResNet-18 224x224 on {papers.DADS_HARDWARE}, per uplink [{papers.DADS}]", row18,
     "lat_x, tput_x: gain over edge-only; single_stream: the light load, stream: the heavy load", left_out="cut run",
     empty=f"`{RUN} -m experiment=dads_paper_quick` (minutes; add mode=predict for the cost model's figures)")
ranges = pd.DataFrame([claims.range_check(
    f"{kind} vs {base}, {load} load", f"{low}-{high}x", values[setting.holds(values)], low, high)
    for (load, base, kind), (low, high) in papers.DADS_RANGES.items()
    for setting in [papers.DADS_LIGHT if load == "light" else papers.DADS_HEAVY]
    for values in [compare.gains_over(gains, "dads", base)["lat_x" if kind == "latency" else "tput_x"]]])
show(f"(e2) DADS's ranges over its five models and four uplinks on {papers.DADS_HARDWARE} [{papers.DADS}]",
     ranges.set_index("claim") if (ranges[["measured", "predicted"]] != "-").any().any() else None,
     "cells: (model, uplink) pairs with both DADS and the baseline", left_out="cut run",
     empty=f"`{RUN} -m experiment=dads_paper` (hours; add mode=predict for the cost model's figures in minutes)")

# %% [markdown]
# ## (f) Where each claim holds
#
# The gain against the link rate, each paper's claimed range as a band: predicted runs (`mode=predict` sweeps such as
# `experiment=cut_claims_predicted`, minutes) dashed, measured ones solid. The emulation-fidelity benchmark
# (`benchmarks/emulation_fidelity.py`) is what licenses reading the predicted curves between measured points.

# %%
halp_curve = spatial.speedup_curves(speedup)
line_panels(halp_curve.reset_index().assign(method="halp"), ["hardware"], ["method", "num_servers", "source"],
            "bandwidth_mbps", "gain", "where_halp_holds.png", "HALP · {hardware}", halp_band, xscale="log",
            xlabel="link (Mbit/s)", ylabel="speed-up over host alone")
curves = {m: compare.gains_over(gains, m, "device_only") for m in ("dads", "cic")}
dads_low, dads_high = papers.DADS_RANGES[("light", "device_only", "latency")]


def cut_bands(ax: plt.Axes, key: dict) -> None:
    ax.axhspan(dads_low, dads_high, alpha=0.12, color="grey", label=f"DADS's claim {dads_low}-{dads_high}x")
    ax.axhline(papers.CIC_CLAIMS["latency_speedup"], color="grey", ls="--", label="CIC's 'up to "
               f"{papers.CIC_CLAIMS['latency_speedup']}x'")


for base, name in (("device_only", ""), (R.COMPRESSED_OFFLOAD, "_vs_compressed_offload")):
    drawn = [compare.gains_over(gains, m, base).reset_index().assign(method=m) for m in ("dads", "cic")]
    line_panels(pd.concat([d for d in drawn if not d.empty] or [pd.DataFrame()]), ["hardware"], ["method", "model",
                "scenario", "source"], "bandwidth_mbps", "lat_x", f"where_cut_claims_hold{name}.png", "DADS, CIC · "
                "{hardware}", cut_bands, xscale="log", xlabel="link (Mbit/s)", ylabel=f"latency gain over {base}")

# %%
cic_lat, cic_tput = papers.CIC_CLAIMS["latency_speedup"], papers.CIC_CLAIMS["throughput_speedup"]
(low, high), by_n = papers.HALP_SPEEDUP[1], ("hardware", "model", "num_servers")
prototype = halp_curve.index.get_level_values("hardware") == papers.HALP_PROTOTYPE_HARDWARE
regions = [claims.claim_regions(*args) for args in (
    (curves["dads"], "lat_x", f"DADS latency {dads_low}-{dads_high}x vs edge-only", dads_low, dads_high,
     papers.DADS_LIGHT),
    (curves["cic"], "lat_x", f"CIC latency up to {cic_lat}x (vs device-only here)", cic_lat, math.inf,
     papers.CIC_SETTING),
    (curves["cic"], "tput_x", f"CIC throughput up to {cic_tput}x (vs device-only)", cic_tput, math.inf,
     papers.CIC_SETTING),
    (halp_curve[~prototype], "gain", f"HALP {low}-{high}x, 1 task/batch", low, high, papers.HALP_SETTING, by_n),
    (halp_curve[prototype], "gain", f"HALP prototype >= {papers.HALP_PROTOTYPE_SPEEDUP}x",
     papers.HALP_PROTOTYPE_SPEEDUP, math.inf, papers.HALP_PROTOTYPE_SETTING, by_n))]
regions = pd.concat([r for r in regions if not r.empty] or [pd.DataFrame(columns=["claim", "setting"])])
show("(f) where each headline claim holds: measured runs in its range, or the rates where the cost model says it "
     "would; reproduced only at the paper's setting (model, input size, hardware and link rate all match)",
     regions.set_index(["claim", "setting"]), left_out="cut run",
     empty=f"`{RUN} -m experiment=cut_claims_predicted` and `experiment=halp_claims_predicted` (minutes)")
offload = pd.DataFrame([claims.against_offload(compare.gains_over(gains, m, R.COMPRESSED_OFFLOAD)["lat_x"], m, where)
                        for m, where in (("dads", papers.DADS_LIGHT), ("cic", papers.CIC_SETTING))])
show("(g) each cut method against compressed offload (the camera's JPEG: server_only+jpeg90) on its paper's hardware: "
     "latency gain over it", offload.set_index("claim"), left_out="cut run", empty=f"`{RUN} -m experiment="
     "dads_paper_quick method=server_only codec=jpeg` (cic_paper_quick likewise)")
try:  # the figures also in MLflow, beside the runs they show; a store that cannot take them is one line
    LOGGED = SAVED and f"logged to MLflow: experiment {REPORTS!r}, run {log_report(TRACKING_URI, SAVED, SELECTED)}"
except (mlflow.exceptions.MlflowException, OSError) as exc:
    LOGGED = f"not logged to MLflow ({type(exc).__name__}: {str(exc)[:200]})"
print(f"\nfigures saved in {FIGURES_DIR}: {', '.join(p.name for p in SAVED)}\n{LOGGED}" if SAVED else
      "\nno figures: no section had runs to draw")
