"""Valid by default: the workers calibrate the TDF, and a measured inference that overruns is repeated at a higher
TDF instead of throwing the run away; a worker that always overruns still ends the run INVALID, with the reason.

The overruns are real: a worker told to stall (setup ``stall``) sleeps inside its compute span of the inferences
named, for an emulated time, so the stall overruns its budget by as much at any TDF. ResNet-18 at 64x64 on
``xavier_1080ti`` (padded, dilated), cut in its second stage, driven through ``run_workers``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from harness.config import build_hardware, resolve
from harness.controller import session
from harness.controller.cut import cut_workers
from harness.loadgen.dilation import AutoTdf, Dilation, calibrated_tdf
from harness.loadgen.result import RunResult, overrun_pct
from harness.loadgen.verdict import overrun_metrics, verdict
from harness.controller.runtime import Deployment, run_workers
from harness.controller.traces import Trace, TracePlayer
from harness.model.graph import ancestors, build_graph
from harness.model.models import ModelSpec
from harness.network.link import LinkSpec
from partitioners.base import LinkState, cut_plan, cut_problem
from tests.conftest import needs_root
from tests.test_runtime import hand_runtime, make_cfg, marker  # noqa: F401 (marker: the fixture that checks cleanup)

TOLERANCE_PCT = 5.0
WARMUP, INFERENCES = 1, 3
STALL_MS = 5.0  # emulated: more than the whole inference's emulated latency


def stalled_run(stall: dict, max_repeats: int, pool: session.WorkerPool | None = None) -> tuple[RunResult, int]:
    """One dilated run whose device stalls as ``stall`` says (on ``pool``'s workers if given); returns the result
    and the inferences asked for."""
    cfg = make_cfg(["model=resnet18", "model.input_shape=[1,3,64,64]", "hardware=xavier_1080ti",
                    "link.bandwidth_mbps=100", f"scenario.warmup={WARMUP}", f"scenario.inferences={INFERENCES}"])
    exp = resolve(cfg)
    graph = build_graph(ModelSpec.from_config(cfg.model))
    hardware = build_hardware(cfg.hardware)
    node_ms = hardware.node_ms(graph)
    device, server = hardware.cut_roles
    problem = cut_problem(graph, node_ms[device], node_ms[server])
    plan = cut_plan("test_cut", problem, ancestors(graph, ["layer2_1_bn1"]), LinkState(100.0, 0.0))
    workers = cut_workers(exp, graph, plan, node_ms, tdf=1.0, pad=True)
    workers[0].setup["stall"] = stall
    auto = AutoTdf(TOLERANCE_PCT, max_repeats, plan.predicted_latency_ms, together=False)
    deployment = Deployment([device, server], [(device, server, LinkSpec(100.0))], workers, device,
                            exp.scenario.in_flight)
    result = run_workers(deployment, exp.scenario, hand_runtime(max_payload_mb=int(cfg.runtime.max_payload_mb)),
                         Dilation(1.0, pads=True, auto=auto), progress=False, pool=pool)
    return result, WARMUP + INFERENCES


@needs_root
@pytest.mark.exclusive  # exactly the injected stall overruns: a concurrent test's load adds others
def test_one_stalled_inference_is_repeated_at_a_higher_tdf_and_the_run_stays_valid(marker: str) -> None:
    stalled = WARMUP + 1  # the second measured inference
    result, expected = stalled_run({"from_seq": stalled, "count": 1, "ms": STALL_MS}, max_repeats=2)
    assert result.calibration["tdf"] >= 1.0 and result.calibration["set_by"] in ("device", "server")
    assert len(result.repeats) == 1, result.repeats
    repeat = result.repeats[0]
    # The stalled device overran (a loaded machine may make the server overrun in the same inference too).
    assert repeat["seq"] == stalled and repeat["overrun_pct"] > TOLERANCE_PCT and "device" in repeat["endpoints"]
    assert repeat["tdf_after"] > repeat["tdf_before"] and result.tdf == repeat["tdf_after"]
    assert result.discarded == {stalled} and repeat["issued_again"] == [expected]
    assert result.tdf_of(expected) == repeat["tdf_after"] > result.tdf_of(WARMUP)  # the repeat ran at the raise
    assert verdict(result, expected, TOLERANCE_PCT) is None
    assert overrun_pct(result, stalled) > TOLERANCE_PCT  # the stall was real, and it is still in the record
    metrics = overrun_metrics(result)
    assert metrics["repeated_inferences"] == 1 and metrics["overrun_cost_pct"] <= TOLERANCE_PCT
    assert len(result.outputs) == expected + 1


@needs_root
@pytest.mark.exclusive  # exactly the injected stall overruns: a concurrent test's load adds others
def test_kept_alive_workers_reuse_their_calibration_until_an_inference_overruns(marker: str) -> None:
    pool = session.WorkerPool()
    try:
        first, _ = stalled_run({}, max_repeats=2, pool=pool)
        again, _ = stalled_run({}, max_repeats=2, pool=pool)  # the same parts on the same live workers
        stalled, _ = stalled_run({"from_seq": WARMUP + 1, "count": 1, "ms": STALL_MS}, max_repeats=2, pool=pool)
        after, _ = stalled_run({}, max_repeats=2, pool=pool)
    finally:
        pool.close()
    assert pool.builds == 1 and first.calibration["reused"] == []
    assert stalled.repeats  # the stall overran, reused calibration or not: the overrun is caught as before
    measured = first.calibration["samples"]
    for before, run in zip([first, again, stalled], [again, stalled, after]):
        if before.repeats:  # an inference overran (the stall, or this machine's noise): the parts are timed again
            assert run.calibration["reused"] == [] and run.calibration["samples"] != measured
            measured = run.calibration["samples"]
        else:  # the same parts on the same live workers: their times are reused, and so the TDF
            assert sorted(run.calibration["reused"]) == ["device", "server"]
            assert run.calibration["samples"] == measured and run.calibration["tdf"] == before.calibration["tdf"]
    assert after.calibration["reused"] == []


@needs_root
def test_a_worker_that_always_overruns_ends_invalid_with_the_reason(marker: str) -> None:
    result, expected = stalled_run({"from_seq": WARMUP, "count": None, "ms": STALL_MS}, max_repeats=2)
    assert len(result.repeats) == 2
    assert result.repeats[1]["tdf_after"] > result.repeats[0]["tdf_after"] > result.repeats[0]["tdf_before"]
    reason = verdict(result, expected, TOLERANCE_PCT)
    assert reason is not None
    assert "overran" in reason and "after 2 repeated inference(s)" in reason and "'device'" in reason, reason


def test_calibration_takes_a_high_quantile_of_each_workers_own_times() -> None:
    # The device's part (budget 2 ms) took 30 ms once in six: the 90th percentile keeps half of that outlier.
    samples = {"device": [{"budget_ms": 2.0, "real_ms": [10.0, 10.0, 10.0, 10.0, 10.0, 30.0]}],
               "server": [{"budget_ms": 1.0, "real_ms": [8.0] * 6}]}
    cal = calibrated_tdf(samples, AutoTdf(TOLERANCE_PCT, predicted_ms=0.0))
    need = float(np.quantile(samples["device"][0]["real_ms"], 0.9)) / 2.0
    assert cal["set_by"] == "device" and cal["needs"]["server"] == pytest.approx(8.0, rel=1e-6)
    assert cal["need"] == pytest.approx(need, rel=1e-6) and need == pytest.approx(10.0)  # the median would say 5
    assert cal["tdf"] == pytest.approx(1.1 * need, rel=1e-6)
    # A slower board than this machine: nothing to dilate.
    assert calibrated_tdf({"device": [{"budget_ms": 50.0, "real_ms": [10.0] * 6}]}, AutoTdf(5.0))["tdf"] == 1.0


def test_a_retimed_trace_player_keeps_its_place() -> None:
    rates: list[float] = []
    player = TracePlayer(Trace("t", (0.0, 100.0), (10.0, 1.0), 200.0), rates.append, tdf=1.0).start()
    try:
        time.sleep(0.05)
        before = player.emulated_s()
        player.retime(4.0)
        after = player.emulated_s()
        assert after == pytest.approx(before, abs=0.01)  # emulated time goes on from where it was...
        time.sleep(0.08)
        assert player.emulated_s() - after == pytest.approx(0.02, abs=0.01)  # ...at the new pace
    finally:
        player.stop()
    assert rates == [10.0]


def test_progress_in_a_log_is_plain_lines_at_the_tenths(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.loadgen.schedule import ProgressLines

    lines = ProgressLines(total=40)
    for _ in range(40):
        lines.update(1)
    lines.close()
    said = capsys.readouterr().err.splitlines()
    assert said == [f"inferences: {n}/40" for n in range(0, 41, 4)]
    assert not any("\r" in line or "\x1b" in line for line in said)
    ProgressLines(total=8, disable=True).close()
    assert capsys.readouterr().err == ""


def test_an_inference_starts_when_its_first_endpoint_receives_its_command() -> None:
    """The controller's hop to the first endpoint is the harness's, not the system's: the latency starts at the
    command's arrival there, reported (issue_hop_ms) but left out; never before the issue (a clock offset's error),
    and at the issue where the endpoint did not say."""
    from harness.controller.measure import latency_metrics
    from harness.loadgen.result import RunResult, latency_ms, started_ns

    result = RunResult(tdf=2.0, backend="tbf", warmup=0)
    for seq in range(3):
        result.starts_ns[seq], result.ends_ns[seq] = seq * 10**8, seq * 10**8 + 20 * 10**6
    result.received_ns = {0: 10**6, 1: 10**8 - 5}  # seq 1 "before" its issue; seq 2 not reported
    assert [started_ns(result, s) for s in range(3)] == [10**6, 10**8, 2 * 10**8]
    assert [latency_ms(result, s) for s in range(3)] == [9.5, 10.0, 10.0]  # emulated: real ms / TDF
    assert latency_metrics(result)["issue_hop_ms"] == 0.25  # the median over the inferences that reported one


def test_the_verdict_is_named_checks_and_only_some_invalidate() -> None:
    """Outputs and overruns decide validity; whether the percentiles are supported and whose clock stamped the
    completions are recorded beside it (tags check_<name>) without invalidating the run."""
    from harness.loadgen.result import RunResult
    from harness.loadgen.verdict import checks

    result = RunResult(tdf=1.0, backend="tbf", warmup=1)
    for seq in range(12):
        result.starts_ns[seq], result.ends_ns[seq] = seq * 10**7, seq * 10**7 + 5 * 10**6
        result.outputs[seq] = torch.zeros(1)
    judged = {c.name: c for c in checks(result, 12, TOLERANCE_PCT)}
    assert list(judged) == ["outputs", "overrun", "percentiles", "stamps"]
    assert judged["outputs"].passed and judged["overrun"].passed and verdict(result, 12, TOLERANCE_PCT) is None
    assert not judged["percentiles"].passed and not judged["percentiles"].invalidates
    assert judged["percentiles"].detail.startswith("11 measured inferences; p99 needs 100")
    assert judged["stamps"].tag() == "pass: starts and completions stamped by this machine's clock"
    result.clocks = {"server": {"offset_ms": 3.0, "uncertainty_ms": 2.5, "completion_stamp": "controller"}}
    assert checks(result, 12, TOLERANCE_PCT)[-1].tag().startswith(
        "fail: starts stamped on issue and completions on arrival for server")
    del result.outputs[5]
    assert verdict(result, 12, TOLERANCE_PCT) == "11 of 12 outputs received"
    assert [c.name for c in checks(result, 12, TOLERANCE_PCT)] == ["outputs", "percentiles", "stamps"]
