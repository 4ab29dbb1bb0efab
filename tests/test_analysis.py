"""Reading recorded runs (harness.analysis) on small hand-built runs tables shaped as ``mlflow.search_runs`` returns
them: what each section shows, which baseline is missing and how to record it, when runs are at a paper's setting,
one name per model, and gains between results within noise marked instead of ordered."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import PROJECT_ROOT
from harness.analysis import claims, compare, spatial
from harness.analysis.labels import link_label, link_rates, method_styles, model_label
from harness.analysis.runs import experiment_line, left_out, missing_cells, runs_table
from harness.controller import summary
from harness.controller.tracking import figures_dir
from notebooks import papers  # the papers' numbers, beside the notebook

BASE = {"status": "FINISHED", "tags.valid": "true", "tags.measured": "true", "params.model.name": "vgg16",
        "params.model._target_": "torchvision.models.vgg16", "params.model.input_shape": "[1, 3, 224, 224]",
        "params.hardware.name": "xavier_1080ti", "params.hardware.topology": "pair", "params.link.name": "gigabit",
        "params.link.bandwidth_mbps": "1000.0", "params.link.delay_ms": "0.0", "params.scenario.name": "single_stream",
        "params.experiment.name": "own_runs", "metrics.decision_time_ms": 0.5}


def run(method: str, latency: float, spread: float = 0.01, **fields: object) -> dict[str, object]:
    """One measured run: median latency with a 95 % interval of +-``spread``, throughput its inverse."""
    return {**BASE, "run_id": f"{method}-{len(fields)}-{latency}", "params.method.name": method,
            "metrics.latency_p50_ms": latency, "metrics.latency_p50_ms_ci_low": latency * (1 - spread),
            "metrics.latency_p50_ms_ci_high": latency * (1 + spread), "metrics.throughput_ips": 1000 / latency,
            "metrics.measured_inferences": 30.0, **fields}


def table(*rows: dict[str, object]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    return runs_table(df.assign(start_time=pd.date_range("2026-01-01", periods=len(df), freq="min")))


STAR = {"params.hardware.name": "4x_xavier", "params.hardware.topology": "star", "params.hardware.num_servers": "4"}


def test_a_cut_run_on_a_star_is_a_cut_run_and_is_shown() -> None:
    """The default run: CIC on the four-server star (the host es0 and one server es1) is in the cut tables."""
    runs = table(run("cic", 11.0, **STAR, **{"tags.method_kind": "cut"}))
    cells = runs[runs["kind"] == "cut"]
    gains = compare.gain_table(cells, ["device_only"])
    assert list(gains.index.get_level_values("hardware")) == ["4x_xavier"]
    assert gains["latency_ms"].iloc[0] == 11.0
    assert compare.decision_table(cells)["decision_ms"].iloc[0] == 0.5
    assert left_out(runs).empty


def test_a_missing_baseline_is_named_with_the_command_that_adds_it() -> None:
    """CIC runs on xavier_1080ti and no DADS run: ratios against DADS are empty, not an error."""
    runs = table(run("cic", 10.0, **{"params.link.bandwidth_mbps": "5.85"}),
                 run("cic", 9.0, **{"params.link.bandwidth_mbps": "18.88"}),
                 run("device_only", 12.0, **{"params.link.bandwidth_mbps": "5.85"}))
    decision = compare.decision_table(runs)
    assert decision["dads_over_this"].isna().all()
    assert compare.gain_table(runs, ["dads"])["lat_x_vs_dads"].isna().all()
    lines = compare.missing_baselines(runs, ["device_only", "dads"])
    assert lines == [
        "MISSING baseline dads: .venv/bin/python run.py -m model=vgg16 'model.input_shape=[1,3,224,224]' "
        "hardware=xavier_1080ti scenario=single_stream experiment.name=own_runs method=dads link.bandwidth_mbps=5.85",
        "MISSING baseline device_only, dads: .venv/bin/python run.py -m model=vgg16 'model.input_shape=[1,3,224,224]' "
        "hardware=xavier_1080ti scenario=single_stream experiment.name=own_runs method=device_only,dads "
        "link.bandwidth_mbps=18.88"]


def test_a_users_model_is_recorded_again_by_its_factory_and_arguments() -> None:
    mine = {"params.model.name": "custom", "params.model._target_": "mymodels.tiny.build",
            "params.model.input_shape": "[1, 3, 64, 64]", "params.model.args.width": "32"}
    [line] = compare.missing_baselines(table(run("cic", 5.0, **mine)), ["dads"])
    assert "model=custom model._target_=mymodels.tiny.build +model.args.width=32 " in line
    assert "'model.input_shape=[1,3,64,64]'" in line


def test_the_papers_setting_needs_model_input_hardware_and_link() -> None:
    """A three-layer model of the user's at 64x64 on CIC's hardware is not CIC's setting, nor VGG-16 at 64x64, nor
    VGG-16 at 224x224 on a rate CIC's preset does not sweep; VGG-16 at 224x224 at 5.85 Mbit/s is."""
    rows = table(run("cic", 1.0, **{"params.model.name": "custom", "params.model._target_": "mymodels.tiny.build",
                                    "params.model.input_shape": "[1, 3, 64, 64]",
                                    "params.link.bandwidth_mbps": "5.85"}),
                 run("cic", 2.0, **{"params.model.input_shape": "[1, 3, 64, 64]",
                                    "params.link.bandwidth_mbps": "5.85"}),
                 run("cic", 3.0, **{"params.link.bandwidth_mbps": "1000.0"}),
                 run("cic", 4.0, **{"params.link.bandwidth_mbps": "5.85"}))
    assert list(papers.CIC_SETTING.holds(rows)) == [False, False, False, True]
    gains = pd.DataFrame({"lat_x": [2.7, 1.2]}, index=pd.MultiIndex.from_tuples(
        [("xavier_1080ti", "mymodels.tiny.build 64x64", "single_stream", 5.85, "measured"),
         ("xavier_1080ti", "vgg16 224x224", "single_stream", 5.85, "measured")],
        names=["hardware", "model", "scenario", "bandwidth_mbps", "source"]))
    check = claims.claim_check("CIC latency", "up to 2.6x", gains["lat_x"], papers.CIC_SETTING)
    assert check["at the paper's setting"] == "1.20-1.20" and check["elsewhere (best)"] == "2.70"
    regions = claims.claim_regions(gains, "lat_x", "CIC latency", 2.6, np.inf, papers.CIC_SETTING)
    judged = regions.set_index("setting")["paper's setting"]
    assert judged["xavier_1080ti · mymodels.tiny.build 64x64 · single_stream"] == "no"
    assert judged["xavier_1080ti · vgg16 224x224 · single_stream"] == "yes"


def test_one_name_per_model_in_the_tables_and_the_summary() -> None:
    mine = {"params.model.name": "custom", "params.model._target_": "mymodels.tiny.build",
            "params.model.input_shape": "[1, 3, 64, 64]"}
    runs = table(run("cic", 5.0, **mine), run("cic", 7.0))
    assert list(runs["model"]) == ["mymodels.tiny.build 64x64", "vgg16 224x224"]
    assert model_label("custom", "mymodels.tiny.build", [1, 3, 64, 64]) == "mymodels.tiny.build 64x64"
    rows = summary.table(runs).splitlines()[2:]
    assert [row.split()[1:3] for row in rows] == [["mymodels.tiny.build", "64x64"], ["vgg16", "224x224"]]


def test_the_link_column_shows_an_overridden_rate() -> None:
    rates = link_rates(PROJECT_ROOT / "conf" / "link")
    assert link_label("gigabit", 1000.0, rates) == "gigabit"
    assert link_label("gigabit", 1.1, rates) == "gigabit, set to 1.1"
    row = summary.table(table(run("cic", 5.0, **{"params.link.bandwidth_mbps": "1.1"}))).splitlines()[2]
    assert "gigabit, set to 1.1  1.1" in row


@pytest.mark.parametrize("spread, noise", [(0.05, "device_only"), (0.001, "")])
def test_a_gain_between_overlapping_intervals_is_marked_within_noise(spread: float, noise: str) -> None:
    runs = table(run("cic", 100.0, spread), run("device_only", 102.0, spread))
    gains = compare.gain_table(runs, ["device_only"])
    cic = gains.xs("cic", level="method").iloc[0]
    assert cic["lat_x_vs_device_only"] == pytest.approx(1.02) and cic[compare.NOISE] == noise
    [line] = compare.rankings(runs)
    assert (" ≈ " in line) == bool(noise) and (" < " in line) != bool(noise)


def test_a_gain_between_two_runs_of_the_same_plan_is_noise() -> None:
    """Methods that chose the same plan differ only by noise, whatever their intervals say (two runs of one plan
    differ beyond a run's own interval): marked, and joined by = in the ranking."""
    runs = table(run("cic", 100.0, 0.001, **{"tags.plan_digest": "p"}),
                 run("device_only", 120.0, 0.001, **{"tags.plan_digest": "p"}))
    gains = compare.gain_table(runs, ["device_only"])
    assert gains.xs("cic", level="method")[compare.NOISE].iloc[0] == "device_only (same plan)"
    assert compare.rankings(runs) == ["  vgg16 224x224 on xavier_1080ti at 1000 Mbit/s: cic 100.00 = device_only "
                                      "120.00 (same plan)"]


def test_predicted_runs_carry_the_cost_models_figures_and_never_count_as_measured() -> None:
    predicted = {**run("dads", 1.0), "tags.measured": "false", "tags.valid": "predicted",
                 "metrics.latency_p50_ms": np.nan, "metrics.predicted_latency_ms": 8.0,
                 "metrics.predicted_throughput_ips": 125.0}
    runs = table(predicted, run("dads", 9.0))
    assert list(runs["source"]) == ["predicted", "measured"]
    assert list(runs["latency_ms"]) == [8.0, 9.0] and np.isnan(runs["latency_low"].iloc[0])
    gains = compare.gain_table(runs, [])
    assert set(gains.index.get_level_values("source")) == {"measured", "predicted"}
    assert compare.rankings(runs) == []  # one method per setting and source: nothing to rank


def test_invalid_runs_are_left_out_with_why_and_a_retried_attempt_is_not_counted_twice() -> None:
    runs = table(run("cic", 1.0, **{"status": "FAILED", "tags.valid": "false", "tags.invalid_reason": "overran",
                                    "tags.retried_as": "b"}),
                 run("cic", 2.0, **{"status": "FAILED", "tags.valid": "false", "tags.invalid_reason": "crashed"}),
                 run("cic", 3.0, **{"status": "KILLED"}), run("cic", 4.0))
    assert list(left_out(runs)["why"]) == ["crashed", "KILLED"]
    assert list(runs[runs["counts"]]["latency_ms"]) == [4.0]


def test_a_reports_own_run_is_no_run_of_the_table() -> None:
    """The run that holds a report's figures (tag report=true, no params, no verdict), even in an experiment read:
    neither counted nor left out, so the next report says what the one before it said."""
    runs = table(run("cic", 4.0), {"run_id": "figures", "status": "FINISHED", "tags.report": "true"})
    assert list(runs["run_id"]) == ["cic-0-4.0"] and left_out(runs).empty
    assert experiment_line(runs, "own_runs") == "own_runs: 1 valid measured runs, 0 predicted, 0 left out"


def test_missing_cells_stay_within_what_each_sweep_launched() -> None:
    """Two launches into one experiment: a sweep of two methods at two rates where one job failed, and a single run
    at a third rate. Only the failed job is missing, never the third rate for the first sweep's methods."""
    first = [run(m, 1.0, **{"tags.launch": "a", "params.link.bandwidth_mbps": bw})
             for m in ("cic", "dads") for bw in ("1.1", "5.85")]
    first[3].update({"status": "FAILED", "tags.valid": "false"})
    runs = table(*first, run("cic", 1.0, **{"tags.launch": "b", "params.link.bandwidth_mbps": "18.88"}))
    assert missing_cells(runs, ["params.method.name", "params.link.bandwidth_mbps"]) == [
        {"params.method.name": "dads", "params.link.bandwidth_mbps": "5.85"}]


def test_spatial_speedup_needs_the_host_alone_and_says_how_to_record_it() -> None:
    halp = {**STAR, "params.method.tasks_per_batch": "1", "metrics.task_time_ms": 50.0,
            "metrics.throughput_ips_ci_low": 19.0, "metrics.throughput_ips_ci_high": 21.0}
    runs = table(run("halp", 50.0, **halp))
    assert spatial.speedups(runs)["speedup_x"].isna().all()
    [line] = spatial.missing_host_alone(runs)
    assert "method=device_only" in line and "hardware=4x_xavier" in line and "tasks_per_batch" not in line
    runs = table(run("halp", 50.0, **halp), run("device_only", 100.0, **STAR))
    row = spatial.speedups(runs).iloc[0]
    assert row["speedup_x"] == 2.0 and row["within noise"] == ""
    assert spatial.missing_host_alone(runs) == []


def test_each_method_keeps_its_colour_whatever_else_a_figure_holds() -> None:
    known = ["cic", "dads", "device_only", "halp", "modnn"]
    assert method_styles(known)["halp"] == method_styles([*known, "my_method"])["halp"]
    styles = method_styles([*known, "my_method"])
    assert len({s["color"] for s in styles.values()}) == len(styles)


def test_figures_go_beside_the_store() -> None:
    assert figures_dir("sqlite:////data/runs/mlflow.db") == Path("/data/runs/figures")
    assert figures_dir("file:///data/mlruns") == Path("/data/figures")


def test_the_summary_points_at_make_report_or_the_full_command() -> None:
    [ui, report] = summary.open_commands(["own_runs"], summary.DEFAULT_STORE)
    assert report == "report:   make report EXPERIMENTS=own_runs"
    [_, report] = summary.open_commands(["own_runs"], "sqlite:///elsewhere/mlflow.db")
    assert report.startswith(f"report:   MLFLOW_TRACKING_URI=sqlite:///elsewhere/mlflow.db EXPERIMENTS=own_runs "
                             f"{sys.executable} ") and report.endswith("notebooks/paper_tables.py")


def test_a_method_with_a_codec_is_its_own_entry_and_compressed_offload_a_baseline() -> None:
    """Offload of the float32 input and of the camera's JPEG are two entries of one setting; gains over the JPEG
    offload are read like any baseline's, and runs recorded before codecs read as raw."""
    from harness.analysis.runs import COMPRESSED_OFFLOAD

    runs = table(run("server_only", 800.0), run("server_only", 40.0, **{"tags.codec": "jpeg90"}),
                 run("dads", 200.0, **{"tags.codec": "raw"}), run("device_only", 210.0, **{"tags.codec": "jpeg90"}))
    assert list(runs["method"]) == ["server_only", COMPRESSED_OFFLOAD, "dads", "device_only"]  # nothing crosses
    gains = compare.gain_table(runs, ["server_only", COMPRESSED_OFFLOAD])
    dads = compare.gains_over(gains, "dads", COMPRESSED_OFFLOAD)
    assert dads["lat_x"].iloc[0] == pytest.approx(40.0 / 200.0)  # DADS is 5x slower than JPEG offload
    assert compare.gains_over(gains, "dads", "server_only")["lat_x"].iloc[0] == pytest.approx(4.0)
    assert len(compare.rankings(runs)) == 1 and COMPRESSED_OFFLOAD in compare.rankings(runs)[0]


def test_a_missing_compressed_offload_is_named_with_its_codec() -> None:
    from harness.analysis.runs import COMPRESSED_OFFLOAD, method_overrides

    assert method_overrides(COMPRESSED_OFFLOAD) == {"method": "server_only", "codec.input": "jpeg",
                                                    "codec.jpeg_quality": "90"}
    assert method_overrides("dads+jpeg75+int8") == {"method": "dads", "codec.input": "jpeg",
                                                    "codec.jpeg_quality": "75", "codec.features": "int8"}
    assert method_overrides("cic+raw+fp16") == {"method": "cic", "codec.features": "fp16"}
    runs = table(run("dads", 200.0, **{"params.link.bandwidth_mbps": "5.85"}))
    lines = compare.missing_baselines(runs, ["device_only", COMPRESSED_OFFLOAD])
    assert len(lines) == 2 and lines[0].startswith("MISSING baseline device_only: ") and "method=device_only" in lines[0]
    assert lines[1].startswith(f"MISSING baseline {COMPRESSED_OFFLOAD}: ") and "method=server_only" in lines[1]
    assert "codec.input=jpeg" in lines[1] and "codec.jpeg_quality=90" in lines[1]


def test_whether_a_claim_holds_against_compressed_offload_is_said_per_rate() -> None:
    from harness.analysis.runs import COMPRESSED_OFFLOAD

    rows = [run("dads", lat, **{"params.link.bandwidth_mbps": rate, "params.hardware.name": "rpi3b_cpu_server"})
            for lat, rate in ((200.0, "1.1"), (210.0, "18.88"))]
    rows += [run("server_only", lat, **{"params.link.bandwidth_mbps": rate, "tags.codec": "jpeg90",
                                        "params.hardware.name": "rpi3b_cpu_server"})
             for lat, rate in ((300.0, "1.1"), (40.0, "18.88"))]
    gains = compare.gain_table(table(*rows), [COMPRESSED_OFFLOAD])
    row = claims.against_offload(compare.gains_over(gains, "dads", COMPRESSED_OFFLOAD)["lat_x"], "DADS",
                                 papers.DADS_LIGHT)
    assert row["holds against compressed offload"] == "only at 1.1 Mbit/s"
    assert row["on the paper's hardware"] == "0.19-1.50x (measured)"
    elsewhere = claims.against_offload(compare.gains_over(gains, "dads", COMPRESSED_OFFLOAD)["lat_x"], "CIC",
                                       papers.CIC_SETTING)  # CIC's hardware: nothing ran there
    assert elsewhere["holds against compressed offload"] == "not measured"
    assert claims.against_offload(pd.Series(dtype=float), "x", papers.CIC_SETTING)["on the paper's hardware"] == "-"
