"""Noise made visible: bootstrap intervals of a run's median latency and throughput, and the rule that calls two
results within noise (their intervals overlap) instead of ranking them; the summary's ranking reads them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.analysis.intervals import (inferences_for, median_interval, overlaps, ranking, relative_half_width,
                                          throughput_interval)
from harness.controller.measure import completion_gaps_s, interval_metrics, throughput_ips
from harness.loadgen.result import RunResult
from harness.analysis.compare import rankings as ranked_lines
from harness.analysis.runs import runs_table as prepared
from harness.controller.summary import precision_hint


def latencies(seed: int, median_ms: float, n: int = 30, spread: float = 0.04) -> list[float]:
    """Skewed like a shared machine's latencies: log-normal around ``median_ms``, a few slow outliers."""
    rng = np.random.default_rng(seed)
    values = median_ms * rng.lognormal(0.0, spread, n)
    values[rng.random(n) < 0.1] *= 1.3
    return list(values)


def test_two_runs_from_one_distribution_are_within_noise() -> None:
    """Two 95 % intervals of the same median miss each other well under 1 % of the time; 200 pairs of runs."""
    apart = [seed for seed in range(200)
             if not overlaps(median_interval(latencies(2 * seed, 100.0)), median_interval(latencies(2 * seed + 1, 100.0)))]
    assert len(apart) <= 4, f"same distribution ranked in {len(apart)} of 200 pairs: seeds {apart}"


def test_clearly_different_runs_are_ranked() -> None:
    ranked = 0
    for seed in range(200):
        fast, slow = latencies(2 * seed, 100.0), latencies(2 * seed + 1, 110.0)
        text = ranking([("slow", float(np.median(slow)), median_interval(slow)),
                        ("fast", float(np.median(fast)), median_interval(fast))])
        assert text in ("fast < slow", "fast ≈ slow")  # never the wrong way round
        ranked += text == "fast < slow"
    assert ranked >= 190, f"10 % apart ranked in only {ranked} of 200 pairs"


def test_ranking_joins_overlapping_neighbours_as_within_noise() -> None:
    assert ranking([("c", 30.0, (29.0, 31.0)), ("a", 10.0, (9.0, 11.0)), ("b", 10.5, (10.2, 12.0))]) == "a ≈ b < c"
    assert ranking([]) == ""


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0.1, max_value=1e4), min_size=1, max_size=40))
def test_the_median_lies_in_its_interval(samples: list[float]) -> None:
    low, high = median_interval(samples)
    assert min(samples) <= low <= np.median(samples) <= high <= max(samples)


def test_an_interval_narrows_as_one_over_the_root_of_the_inferences() -> None:
    small = relative_half_width(median_interval(latencies(1, 100.0, n=20)), 100.0)
    large = relative_half_width(median_interval(latencies(1, 100.0, n=320)), 100.0)
    assert large == pytest.approx(small / 4, rel=0.5)
    assert inferences_for(0.02, 0.04, 20) == 80  # half the width: four times the inferences
    assert inferences_for(0.05, 0.01, 20) == 20  # precise enough already
    with pytest.raises(ValueError, match="precision"):
        inferences_for(0.0, 0.04, 20)


def pipelined_run(gaps_ms: list[float]) -> RunResult:
    """A run whose measured inferences complete ``gaps_ms`` apart (each 20 ms long), at TDF 2."""
    result = RunResult(tdf=2.0, backend="tbf", warmup=1)
    end = 0
    result.starts_ns[0], result.ends_ns[0] = 0, 0  # the warm-up
    for seq, gap in enumerate(gaps_ms, start=1):
        end += int(gap * 2e6)
        result.starts_ns[seq], result.ends_ns[seq] = end - int(40e6), end
    return result


def test_throughput_interval_holds_the_throughput_the_run_reports() -> None:
    result = pipelined_run([10.0, 11.0, 9.0, 10.0, 12.0, 10.0, 9.5, 10.5])
    gaps = completion_gaps_s(result)
    assert sum(gaps) == pytest.approx(8 / throughput_ips(result))  # the same window
    metrics = interval_metrics(result)
    assert metrics["throughput_ips_ci_low"] <= throughput_ips(result) <= metrics["throughput_ips_ci_high"]
    assert metrics["latency_p50_ms_ci_low"] == metrics["latency_p50_ms_ci_high"] == pytest.approx(20.0)
    assert metrics["measured_inferences"] == 8
    low, high = throughput_interval([0.01] * 5)
    assert low == high == pytest.approx(100.0)


def rankings(df: pd.DataFrame) -> list[str]:
    return ranked_lines(prepared(df))


def runs_table(rows: list[dict[str, object]]) -> pd.DataFrame:
    base = {"params.model.name": "resnet18", "params.model.input_shape": "[1, 3, 224, 224]",
            "params.hardware.name": "local_pair", "params.link.bandwidth_mbps": "100.0", "params.link.delay_ms": "0",
            "params.scenario.name": "single_stream", "tags.valid": "true", "status": "FINISHED",
            "metrics.measured_inferences": 30.0}
    return pd.DataFrame([{**base, **row} for row in rows])


def run_row(method: str, seed: int, median_ms: float, digest: str) -> dict[str, object]:
    lat = latencies(seed, median_ms)
    low, high = median_interval(lat)
    return {"params.method.name": method, "run_id": f"run-{method}", "tags.plan_digest": digest,
            "metrics.latency_p50_ms": float(np.median(lat)), "metrics.latency_p50_ms_ci_low": low,
            "metrics.latency_p50_ms_ci_high": high}


def test_the_summary_ranks_apart_marks_noise_and_joins_one_plan() -> None:
    df = runs_table([run_row("server_only", 1, 140.0, "s"), run_row("cic", 2, 100.0, "c"),
                     run_row("dads", 3, 100.5, "d"), run_row("device_only", 4, 150.0, "x"),
                     run_row("neurosurgeon", 5, 151.0, "x")])
    [line] = rankings(df)
    assert line.startswith("  resnet18 224x224 on local_pair at 100 Mbit/s: ")
    order = line.split(": ", 1)[1]
    first, _ = order.split(" < ", 1)
    assert " ≈ " in first and "cic" in first and "dads" in first  # half a percent apart: within noise
    assert "device_only" in order and "= neurosurgeon" in order and "(same plan)" in order
    assert order.count("<") == 2  # {cic ≈ dads} < server_only < {device_only = neurosurgeon}


def test_other_settings_are_never_ranked_together() -> None:
    other = {**run_row("dads", 3, 100.5, "d"), "params.link.bandwidth_mbps": "5.85"}
    assert rankings(runs_table([run_row("cic", 2, 100.0, "c"), other])) == []
    invalid = {**run_row("dads", 3, 100.5, "d"), "tags.valid": "false"}
    assert rankings(runs_table([run_row("cic", 2, 100.0, "c"), invalid])) == []


def test_the_summary_says_how_many_inferences_a_precise_median_needs() -> None:
    wide = {**run_row("cic", 2, 100.0, "c"), "metrics.latency_p50_ms_ci_low": 95.0,
            "metrics.latency_p50_ms_ci_high": 105.0, "metrics.latency_p50_ms": 100.0,
            "metrics.measured_inferences": 10.0}
    hint = precision_hint(prepared(runs_table([wide])))
    assert hint is not None and "+-5.0 %" in hint and "scenario.inferences=63" in hint
    narrow = {**wide, "metrics.latency_p50_ms_ci_low": 99.5, "metrics.latency_p50_ms_ci_high": 100.5}
    assert precision_hint(prepared(runs_table([narrow]))) is None
