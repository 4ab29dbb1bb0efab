"""The paper presets expand into jobs that compose, and the paper-tables notebook rebuilds its tables from real runs.

The end-to-end tests record real runs into private MLflow stores (the default experiment, shrunk; the quick presets
on this machine's own hardware: local_pair, 4x_local, TDF 1), execute notebooks/paper_tables.ipynb or its script
against them, and find each run's recorded values in the printed tables and the figures beside the store.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import jupytext
import mlflow
import nbformat
import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from mlflow.tracking import MlflowClient

from harness.config import register, resolve_objective, validate

from tests.conftest import ROOT, last_attempts, needs_root, run_cli, run_python

pytestmark = pytest.mark.e2e  # executes the notebook and composes every preset's jobs

NOTEBOOK = ROOT / "notebooks" / "paper_tables.ipynb"
SCRIPT = ROOT / "notebooks" / "paper_tables.py"
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
SMALL_CUT = ["model=resnet18", "hardware=local_pair", "link=gigabit"]  # cic_paper_quick sets 64x64 inputs
SMALL_STAR = ["hardware=4x_local", "model.input_shape=[1,3,64,64]"]
register()


def preset_jobs(preset: str) -> list[list[str]]:
    """The override lists `python run.py -m experiment=<preset>` launches, expanded as Hydra's basic sweeper does."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(config_name="config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    batches = BasicSweeper.split_arguments(overrides, None)
    return [[f"experiment={preset}", *job] for job in itertools.chain.from_iterable(batches)]


MAX_COMPOSED_JOBS = 20  # composing takes ~0.25 s a job; the predict-only presets sweep hundreds


def covering_sample(jobs: list[list[str]], size: int) -> list[list[str]]:
    """Every job when there are few; else every job that brings an override value not yet seen (so each value of
    each axis composes at least once), topped up with evenly spaced jobs (so values also meet each other)."""
    if len(jobs) <= size:
        return jobs
    seen: set[str] = set()
    chosen = [i for i, job in enumerate(jobs) if not set(job) <= seen and not seen.update(job)]
    stride = max(1, len(jobs) // max(1, size - len(chosen)))
    return [jobs[i] for i in sorted(set(chosen) | set(range(0, len(jobs), stride)))]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_job_of_a_preset_sweep_composes_and_validates(preset: str) -> None:
    jobs = preset_jobs(preset)
    assert len(jobs) > 1, f"experiment={preset} sweeps nothing"
    names = set()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        for job in covering_sample(jobs, MAX_COMPOSED_JOBS):
            cfg = compose(config_name="config", overrides=job)
            resolve_objective(cfg)
            validate(cfg)
            names.add(cfg.experiment.name)
    assert len(names) == 1 and names != {"default"}, f"experiment={preset} must set experiment.name, got {names}"


def test_preset_sweeps_have_the_papers_axes() -> None:
    cic = {tuple(sorted(j[1:])) for j in preset_jobs("cic_paper")}
    assert len(cic) == 4 * 6 * 5
    assert any("method=cic" in j and "link=cat1" in j and "model=densenet201" in j for j in cic)
    halp = preset_jobs("halp_paper")
    assert len(halp) == 2 * 3 * 2 * 2
    assert {j for job in halp for j in job if j.startswith("hardware.num_servers")} == {
        f"hardware.num_servers={n}" for n in (2, 3, 4)}


def test_notebook_and_script_are_the_same_jupytext_pair() -> None:
    """Edit one, then `jupytext --sync notebooks/paper_tables.py`: the cells must match."""
    from_script = jupytext.read(SCRIPT)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert [(c.cell_type, c.source) for c in notebook.cells] == [(c.cell_type, c.source) for c in from_script.cells]


def shows(figure: str, text: str) -> bool:
    """``figure`` printed as a number of its own in ``text`` (not the tail of another, as 8.32 is of 88.32)."""
    return re.search(rf"(?<![\d.]){re.escape(figure)}(?!\d)", text) is not None


def execute_notebook(env: dict[str, str]) -> str:
    """Run the notebook as Jupyter would (kernel cwd = notebooks/); all printed text, in order."""
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def logged_figures(uri: str, out: str, folder: Path) -> str:
    """The report's own run, as the notebook names it: in the experiment ``reports``, tagged ``report=true``,
    FINISHED, holding (under ``figures/``) exactly the figures saved in ``folder``, byte for byte; its id."""
    run_id = re.search(r"^logged to MLflow: experiment 'reports', run (\w+)$", out, re.M).group(1)
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "reports" and run.info.status == "FINISHED"
    assert run.data.tags["report"] == "true" and not run.data.params and not run.data.metrics
    logged = {Path(a.path).name: a.file_size for a in client.list_artifacts(run_id, "figures")}
    assert logged == {p.name: p.stat().st_size for p in folder.iterdir()} and logged
    return run_id


@pytest.fixture(scope="module")
def paper_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A small sweep of the quick presets on local hardware, in a private MLflow store."""
    tmp = tmp_path_factory.mktemp("paper_runs")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    sweeps = [
        ["-m", "experiment=cic_paper_quick", *SMALL_CUT, "link.bandwidth_mbps=10,100"],
        ["-m", "experiment=halp_paper_quick", *SMALL_STAR, "link.bandwidth_mbps=200"],
        ["-m", "experiment=halp_host_alone", *SMALL_STAR, "scenario.inferences=2",
         "experiment.name=halp_paper_quick"],
        # a cut method under the fading trace player, with a deadline, for the reliability table
        [*SMALL_CUT, "model.input_shape=[1,3,64,64]", "method=dads", "scenario=dynamic", "link=rayleigh",
         "scenario.inferences=3", "scenario.deadline_ms=20", "experiment.name=halp_paper_quick"],
    ]
    for args in sweeps:
        proc = run_cli(args, uri, tmp)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return uri, tmp


@needs_root
@pytest.mark.slow
def test_notebook_prints_the_runs_values_beside_the_papers(paper_store: tuple[str, Path]) -> None:
    uri, tmp = paper_store
    mlflow.set_tracking_uri(uri)
    cut = mlflow.search_runs(experiment_names=["cic_paper_quick"])
    star = mlflow.search_runs(experiment_names=["halp_paper_quick"])
    assert len(cut) == 8 and (cut["tags.valid"] == "true").all(), cut.get("tags.invalid_reason")
    assert len(star) == 4 and (star["tags.valid"] == "true").all(), star.get("tags.invalid_reason")

    out = execute_notebook({"MLFLOW_TRACKING_URI": uri, "CIC_EXPERIMENT": "cic_paper_quick",
                            "HALP_EXPERIMENT": "halp_paper_quick", "RELIABILITY_EXPERIMENT": "halp_paper_quick",
                            "DYNAMIC_EXPERIMENT": "halp_paper_quick", "PAPER_FIGURES_DIR": str(tmp / "figures")})

    for _, run in cut.iterrows():  # (a): every cut run's median latency, throughput and decision time, as measured
        assert f"{run['metrics.latency_p50_ms']:.2f}" in out, run["params.method.name"]
        assert f"{run['metrics.throughput_ips']:.2f}" in out, run["params.method.name"]
    decision = cut.groupby("params.method.name")["metrics.decision_time_ms"].median()
    assert all(f"{ms:.4f}" in out for ms in decision), decision
    latency = cut.set_index(["params.link.bandwidth_mbps", "params.method.name"])["metrics.latency_p50_ms"]
    for bw in ("10.0", "100.0"):  # speed-up of DADS over device-only, as the notebook computes it
        assert f"{latency[(bw, 'device_only')] / latency[(bw, 'dads')]:.2f}" in out
    assert "up to 2.6x" in out and not shows("8.32", out)  # CIC's claim; DADS's Wi-Fi figure only beside its setting

    host = star[star["params.method.name"] == "device_only"]["metrics.latency_p50_ms"].iloc[0]
    for _, run in star[star["params.method.name"].isin(["halp", "modnn"])].iterrows():  # (b): speed-ups
        assert f"{run['metrics.task_time_ms']:.2f}" in out
        assert f"{host / run['metrics.task_time_ms']:.2f}" in out
    halp = next(line for line in out.splitlines() if line.startswith("HALP 1.7-2.0x, 1 task/batch"))
    assert "4x_local · vgg16 64x64 · N=2" in halp and " no " in halp  # not HALP's setting: its boards, 224x224

    dynamic = star[star["params.scenario.name"] == "dynamic"].iloc[0]  # (c): the hit rate as the run recorded it
    assert "(c) deadline hit rate" in out and f"{dynamic['metrics.deadline_hit_rate']:.3f}" in out
    assert f"{dynamic['metrics.latency_ms']:.2f}" in out  # (d): the dynamic run's mean latency
    # The sections this store's presets feed have data; (e) needs dads_paper, not run here.
    ours = [part for part in out.split("\n=== ") if part.startswith(("(a", "(b", "(c", "(d", "(f"))]
    assert len(ours) == 7 and not [part[:60] for part in ours if "(no valid runs for this table)" in part]
    assert "MISSING experiment 'cic_paper_quick'" not in out and "MISSING experiment 'halp_paper_quick'" not in out
    assert "MISSING in" not in out  # every job these sweeps launched has a valid run
    assert {p.name for p in (tmp / "figures").iterdir()} == {
        "cut_latency_vs_bandwidth.png", "cut_decision_time.png", "spatial_speedup_vs_n.png",
        "dynamic_latency_over_time.png", "where_halp_holds.png", "where_cut_claims_hold.png"}
    logged_figures(uri, out, tmp / "figures")  # and logged, from a Jupyter kernel as from the script


def test_notebook_names_what_is_missing_instead_of_failing(tmp_path: Path) -> None:
    out = run_script(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path, CIC_EXPERIMENT="cic_paper",
                     HALP_EXPERIMENT="halp_paper", RELIABILITY_EXPERIMENT="halp_reliability",
                     DYNAMIC_EXPERIMENT="dynamic_payoff")
    for name in ("cic_paper", "halp_paper", "halp_reliability", "dynamic_payoff"):
        assert f"MISSING experiment '{name}'" in out and f"experiment={name}" in out
    assert out.count("(no valid runs for this table)") == 9  # (a1-3), (b), (c), (d), (e1-2), (f)
    assert "MISSING: no runs. `make run` records the default experiment" in out
    assert "no figures" in out and not (tmp_path / "figures").exists() and not (tmp_path / "empty.db").exists()
    assert "logged to MLflow" not in out  # nothing to log: no report run, and no store made to hold one


def test_only_finished_valid_runs_count(tmp_path: Path) -> None:
    """Tags are set before a run ends: a run tagged valid but KILLED (or still RUNNING) must not reach a table."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("cic_paper_quick")
    latency = {"FINISHED": 11.11, "KILLED": 22.22, "RUNNING": 33.33}
    for status, ms in latency.items():
        run_id = client.create_run(experiment, run_name=f"run-{status}", tags={"valid": "true"}).info.run_id
        for key, value in {"model.name": "resnet18", "method.name": "dads", "hardware.name": "local_pair",
                           "link.bandwidth_mbps": "10.0", "model.input_shape": "[1, 3, 32, 32]"}.items():
            client.log_param(run_id, key, value)
        client.log_metric(run_id, "latency_ms", ms)
        if status != "RUNNING":
            client.set_terminated(run_id, status)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "CIC_EXPERIMENT": "cic_paper_quick",  # the cut tables only
           "HALP_EXPERIMENT": "absent", "RELIABILITY_EXPERIMENT": "absent", "PAPER_FIGURES_DIR": ""}
    proc = run_python(SCRIPT, [], SCRIPT.parent, env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cic_paper_quick: 1 valid measured runs, 0 predicted, 2 left out" in proc.stdout
    assert "11.11" in proc.stdout and "22.22" not in proc.stdout and "33.33" not in proc.stdout
    assert "INVALID cut run: run-KILLED: KILLED" in proc.stdout and "INVALID cut run: run-RUNNING: RUNNING" in proc.stdout


def make_run(client, experiment: str, status: str, valid: str, params: dict[str, str],
             metrics: dict[str, float]) -> None:
    tags = {"valid": valid, **({"measured": "false"} if valid == "predicted" else {})}
    run_id = client.create_run(experiment, run_name=f"{params['method.name']}-{params['link.bandwidth_mbps']}",
                               tags=tags).info.run_id
    for key, value in params.items():
        client.log_param(run_id, key, value)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id, status)


def test_notebook_reads_the_users_own_runs(tmp_path: Path) -> None:
    """All experiments by default; INVALID runs out of the tables and counted; a custom model named by its factory;
    DADS's ResNet-18 figure only beside DADS's setting; the quick presets named."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    mine, dads = client.create_experiment("my_sweep"), client.create_experiment("dads_paper")
    custom = {"model.name": "custom", "model._target_": "mypkg.models.build", "model.input_shape": "[1, 3, 64, 64]",
              "hardware.name": "local_pair", "hardware.topology": "pair", "scenario.name": "single_stream"}
    for method, ms in (("dads", 12.34), ("device_only", 45.67)):
        make_run(client, mine, "FINISHED", "true", {**custom, "method.name": method, "link.bandwidth_mbps": "18.88"},
                 {"latency_ms": ms, "throughput_ips": 1000 / ms})
    make_run(client, mine, "FAILED", "false", {**custom, "method.name": "cic", "link.bandwidth_mbps": "18.88"},
             {"latency_ms": 99.99})
    setting = {"model.name": "resnet18", "model._target_": "torchvision.models.resnet18",
               "model.input_shape": "[1, 3, 224, 224]", "hardware.name": "rpi3b_cpu_server",
               "hardware.topology": "pair", "scenario.name": "single_stream", "link.bandwidth_mbps": "18.88"}
    for method, ms in (("dads", 50.0), ("device_only", 215.0)):
        make_run(client, dads, "FINISHED", "true", {**setting, "method.name": method},
                 {"latency_ms": ms, "throughput_ips": 1000 / ms})

    claims = client.create_experiment("claims_predicted")  # the cost model's curves for (f)
    for bw, gain in ((1.0, 1.2), (10.0, 2.5), (100.0, 5.0)):
        for method, ms in (("dads", 215.0 / gain), ("device_only", 215.0)):
            make_run(client, claims, "FINISHED", "predicted", {**setting, "method.name": method,
                                                               "link.bandwidth_mbps": str(bw)},
                     {"predicted_latency_ms": ms, "predicted_throughput_ips": 1000 / ms})
    star = {"model.name": "vgg16", "model._target_": "torchvision.models.vgg16", "model.input_shape": "[1, 3, 224, 224]",
            "hardware.name": "3x_rpi4", "hardware.topology": "star", "hardware.num_servers": "3",
            "scenario.name": "single_stream", "method.name": "halp", "method.tasks_per_batch": "1"}
    for bw, speedup in ((10.0, 1.1), (100.0, 1.75), (1000.0, 2.2)):
        make_run(client, claims, "FINISHED", "predicted", {**star, "link.bandwidth_mbps": str(bw)},
                 {"predicted_latency_ms": 930 / speedup, "predicted_speedup": speedup})

    def notebook(**env: str) -> str:
        proc = run_python(SCRIPT, [], SCRIPT.parent, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri, "PAPER_FIGURES_DIR": "", **env})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    out = notebook()
    assert "reading experiments: " in out and "my_sweep" in out and "MISSING experiment" not in out
    assert "mypkg.models.build 64x64" in out and "custom 64x64" not in out  # labelled by its factory
    assert "12.34" in out and "99.99" not in out  # the failed run is kept out of the tables...
    assert "INVALID cut run: cic-18.88" in out and "left out: 1 invalid or failed cut runs" in out  # ...and counted
    assert "4.30" in out and shows("8.32", out)  # DADS's setting: measured 215 / 50 beside the paper's Wi-Fi figure
    ours = [line for line in out.splitlines() if "mypkg.models.build" in line]
    assert ours and not any(shows("8.32", line) or "DADS ResNet-18" in line for line in ours)  # not beside a user's model
    assert "MISSING baseline server_only: .venv/bin/python run.py -m model=custom model._target_=mypkg.models.build" \
        in out  # the baseline my_sweep lacks, with the command that records it
    assert "DADS latency 1.91-6.45x vs edge-only" in out
    region = next(line for line in out.splitlines() if "rpi3b_cpu_server · resnet18 224x224" in line)
    assert "yes: 18.88 Mbit/s: 4.30x" in region
    assert "10-100 Mbit/s (2 of 3 rates)" in region  # predicted gains 2.5 and 5.0 inside 1.91-6.45
    prototype = next(line for line in out.splitlines() if "HALP prototype >= 1.7x" in line)
    assert "3x_rpi4 · vgg16 224x224 · N=3" in prototype and "100-1000 Mbit/s (2 of 3 rates)" in prototype

    only_mine = notebook(EXPERIMENTS="my_sweep")
    assert "12.34" in only_mine and "4.30" not in only_mine and "resnet18" not in only_mine


def run_script(uri: str, cwd: Path, **env: str) -> str:
    """The notebook as `make report` runs it (a script), from another folder, with only these settings."""
    settings = {k: v for k, v in os.environ.items() if k not in ("EXPERIMENTS", "PAPER_FIGURES_DIR")
                and not k.endswith("_EXPERIMENT")}
    proc = run_python(SCRIPT, [], cwd, {**settings, "MLFLOW_TRACKING_URI": uri, **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_default_run_and_a_prediction_are_shown_and_drawn_beside_the_store(tmp_path: Path) -> None:
    """`make run` (the default: CIC, VGG-16, the four-server Xavier star, gigabit; inputs shrunk to stay fast), then a
    `mode=predict` sweep: the summary names the model as the notebook does and points at the report; the report shows
    the star's cut run, names the baselines it lacks with the command that records them, marks the predictions, and
    saves its figures beside the store."""
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    default = run_cli(["model.input_shape=[1,3,64,64]", "scenario.inferences=2"], uri, tmp_path)
    assert default.returncode == 0, default.stderr[-3000:]
    predict = run_cli(["-m", "mode=predict", "method=cic,device_only", "hardware=xavier_1080ti", "model=resnet18",
                       "model.input_shape=[1,3,64,64]", "link.bandwidth_mbps=1.1,18.88"], uri, tmp_path)
    assert predict.returncode == 0, predict.stderr[-3000:]
    row = next(line for line in default.stdout.splitlines() if line.startswith("cic "))
    assert row.split()[1:5] == ["vgg16", "64x64", "4x_xavier", "gigabit"]
    assert f"report:   MLFLOW_TRACKING_URI={uri} EXPERIMENTS=own_runs {sys.executable} " in default.stdout

    out = run_script(uri, tmp_path)
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["own_runs"], filter_string="tags.measured = 'true'").iloc[0]
    assert "own_runs: 1 valid measured runs, 4 predicted, 0 left out" in out
    sections = {part.split(")")[0]: part for part in out.split("\n=== ")[1:]}
    for name in ("(a1", "(a2"):  # the star's cut run, measured, beside the predicted pair runs
        assert "4x_xavier" in sections[name] and "vgg16 64x64" in sections[name], sections[name]
        assert "predicted" in sections[name] and "(no valid runs" not in sections[name]
    assert f"{run['metrics.latency_p50_ms']:.2f}" in sections["(a2"]
    assert ("MISSING baseline device_only, server_only, dads: .venv/bin/python run.py -m model=vgg16 "
            "'model.input_shape=[1,3,64,64]' hardware=4x_xavier hardware.num_servers=4 ") in out
    assert "MISSING in" not in out  # own_runs is no preset's experiment: nothing it did not ask for is "missing"
    assert "xavier_1080ti · resnet18 64x64" in sections["(f"] and " yes " not in sections["(f"]  # 64x64: never
    # the paper's setting, though the hardware is CIC's
    figures = tmp_path / "figures"
    assert f"figures saved in {figures}" in out
    assert {"cut_latency_vs_bandwidth.png", "cut_decision_time.png", "where_cut_claims_hold.png"} <= {
        p.name for p in figures.iterdir()}
    logged_figures(uri, out, figures)


def test_a_store_of_cic_runs_on_one_board_is_shown_and_each_report_logs_a_run_of_its_own(tmp_path: Path) -> None:
    """(b) Only CIC, on one board (once a KeyError: no DADS run to set its decision time against): its tables are
    filled and the baselines it lacks named. A second report reads the store as the first did (the first report's
    run is no result) and logs its figures in a run of its own."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    cic_only = client.create_experiment("cic_only")
    setting = {"model.name": "vgg16", "model._target_": "torchvision.models.vgg16", "method.name": "cic",
               "model.input_shape": "[1, 3, 224, 224]", "hardware.name": "xavier_1080ti", "hardware.topology": "pair",
               "scenario.name": "single_stream"}
    for bw, ms in (("1.1", 61.25), ("18.88", 23.75)):
        make_run(client, cic_only, "FINISHED", "true", {**setting, "link.bandwidth_mbps": bw},
                 {"latency_p50_ms": ms, "throughput_ips": 1000 / ms, "decision_time_ms": 0.0125})
    legacy = client.create_run(client.create_experiment("paper_figures"), tags={"measured": "false"})  # an earlier
    client.set_terminated(legacy.info.run_id, "FINISHED")  # report's figures, logged when asked to: not a prediction

    first = run_script(uri, tmp_path)
    assert "reading experiments: cic_only\n" in first
    assert "cic_only: 2 valid measured runs, 0 predicted, 0 left out" in first
    sections = {part.split(")")[0]: part for part in first.split("\n=== ")[1:]}
    assert "0.0125" in sections["(a1"] and "61.25" in sections["(a2"] and "23.75" in sections["(a2"]
    assert "MISSING baseline device_only, server_only, dads: .venv/bin/python run.py -m model=vgg16 " in first
    report = logged_figures(uri, first, tmp_path / "figures")
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {"cut_latency_vs_bandwidth.png", "cut_decision_time.png"}

    second = run_script(uri, tmp_path)
    assert "reading experiments: cic_only\n" in second
    assert second.split("\nfigures saved in")[0] == first.split("\nfigures saved in")[0]  # the same report...
    assert logged_figures(uri, second, tmp_path / "figures") != report  # ...in a run of its own


def test_a_users_model_and_method_beside_a_spatial_method_are_shown_and_drawn(tmp_path: Path) -> None:
    """(c) A model of the user's (set on the command line: named by its factory), a method of the user's (its YAML in
    a config folder outside the clone) and HALP beside the host alone, on a two-server star of this machine."""
    methods = tmp_path / "my_conf" / "method"
    methods.mkdir(parents=True)
    (methods / "half.yaml").write_text("_target_: tests.user_methods.Half\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_cli(["-m", "method=half,halp,device_only", "hardware=4x_local", "hardware.num_servers=2", "model=custom",
                    "model._target_=tests.user_models.build", "model.input_shape=[1,3,64,64]", "scenario.inferences=2"],
                   uri, tmp_path, env={"SPLITBENCH_CONF": str(tmp_path / "my_conf")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    runs = last_attempts(mlflow.search_runs(experiment_names=["own_runs"])).set_index("params.method.name")

    out = run_script(uri, tmp_path)
    assert "own_runs: 3 valid measured runs, 0 predicted, 0 left out" in out
    sections = {part.split(")")[0]: part for part in out.split("\n=== ")[1:]}
    label = "tests.user_models.build 64x64"
    for name in ("(a1", "(a2"):  # the user's method, a cut method, on the host and one server of the star
        assert label in sections[name] and "half" in sections[name] and "halp" not in sections[name]
    assert f"{runs.loc['half', 'metrics.latency_p50_ms']:.2f}" in sections["(a2"]
    host, task = runs.loc["device_only", "metrics.latency_p50_ms"], runs.loc["halp", "metrics.task_time_ms"]
    assert label in sections["(b"] and f"{task:.2f}" in sections["(b"] and f"{host / task:.2f}" in sections["(b"]
    halp = next(line for line in out.splitlines() if line.startswith("HALP 1.7-2.0x, 1 task/batch"))
    assert f"4x_local · {label} · N=2" in halp and " no " in halp  # not HALP's setting
    logged_figures(uri, out, tmp_path / "figures")
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {
        "cut_latency_vs_bandwidth.png", "cut_decision_time.png", "spatial_speedup_vs_n.png", "where_halp_holds.png"}
