"""Time dilation's arithmetic: the TDF the profile gives, the TDF the workers' own timings give, the raise of an
overrun inference and the TDF of a whole job's retry. Numbers in, numbers out: no worker, no clock."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from harness.loadgen.result import RunResult, compute_spans, latency_ms, overrun_ms, overrun_pct

# Calibration: every worker times its own part this many times, in its process, under the run's concurrency; the
# TDF is set from this quantile of each part's real compute, times this headroom.
CALIBRATION_REPEATS = 6

CALIBRATION_QUANTILE = 0.9

CALIBRATION_HEADROOM = 1.1
# A measured inference that overran is repeated at a TDF at least MIN_RAISE and at most MAX_RAISE times higher: a
# one-off pause (the scheduler, another process) must not multiply the run's real time by its own size.
MIN_RAISE, MAX_RAISE = 1.15, 2.0


@dataclass
class AutoTdf:
    """The run's TDF is the harness's to choose: calibrated on the workers after the warm-up, raised and the
    inference repeated when a measured inference overruns anyway (at most ``max_repeats`` times)."""

    tolerance_pct: float
    max_repeats: int = 3
    predicted_ms: float = 0.0  # the plan's emulated latency: the overruns calibration allows are a share of it
    together: bool = True  # the workers compute at once in this run: they calibrate at once
    repeats: int = CALIBRATION_REPEATS
    quantile: float = CALIBRATION_QUANTILE


@dataclass
class Dilation:
    """The TDF a job starts at, and who sets it from there."""

    tdf: float = 1.0
    pads: bool = False  # compute is padded to the profile's time x TDF (emulated boards)
    set_by: str | None = None  # the endpoint whose part needs the most headroom, when the profile set the TDF
    auto: AutoTdf | None = None  # the workers calibrate after the warm-up and raise it on an overrun


def tdf_needed(spans: list[tuple[float, float]], allowed_ms: float, floor: float = 1e-3) -> float:
    """The smallest TDF (at least ``floor``) at which ``spans`` overrun their budgets by at most ``allowed_ms``."""
    if overrun_ms(spans, floor) <= allowed_ms:
        return floor
    low, high = floor, floor * 2
    while overrun_ms(spans, high) > allowed_ms:
        low, high = high, high * 2
    for _ in range(40):  # bisection: the overrun falls as the TDF grows
        mid = (low + high) / 2
        low, high = (low, mid) if overrun_ms(spans, mid) <= allowed_ms else (mid, high)
    return high

def cores() -> int:
    """The cores this process may run on: what concurrent workers share."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

def calibrate_tdf(ratios: dict[str, float], margin: float, concurrent: int) -> tuple[float, str | None]:
    """The TDF the profile alone gives, and the endpoint that sets it: the warm-up runs at it, and a run records it
    beside the TDF its workers' measured compute set (``tdf_from_profile``). ``ratios``: per endpoint, the local
    profile's compute over emulated compute. ``concurrent`` workers computing at once on this machine's cores
    slow each other down; that is headroom too."""
    if not ratios:
        return 1.0, None
    endpoint = max(ratios, key=ratios.__getitem__)
    contention = max(1.0, concurrent / cores())
    return max(1.0, margin * contention * ratios[endpoint]), endpoint

def calibrated_tdf(samples: dict[str, list[dict[str, Any]]], auto: AutoTdf) -> dict[str, Any]:
    """The TDF from what each worker measured of its own part (``samples``: per endpoint, per budgeted operation,
    its budget and real times): each operation at the ``auto.quantile`` of its times, the smallest TDF at which
    they overrun by at most a quarter of the tolerance of the predicted latency, times the headroom, at least 1.
    Also which endpoint needs the most, and each endpoint's need alone."""
    allowed = auto.tolerance_pct / 400 * auto.predicted_ms
    spans = {e: [(float(np.quantile(op["real_ms"], auto.quantile)), float(op["budget_ms"])) for op in ops
                 if op["real_ms"] and op["budget_ms"] > 0] for e, ops in samples.items()}
    spans = {e: ops for e, ops in spans.items() if ops}
    if not spans:
        return {}
    needs = {e: tdf_needed(ops, allowed) for e, ops in spans.items()}
    need = tdf_needed([op for ops in spans.values() for op in ops], allowed)
    return {"tdf": max(1.0, CALIBRATION_HEADROOM * need), "need": need, "set_by": max(needs, key=needs.__getitem__),
            "needs": needs, "quantile": auto.quantile, "repeats": auto.repeats, "headroom": CALIBRATION_HEADROOM,
            "together": auto.together, "allowed_ms": allowed, "samples": samples}

@dataclass
class Repeats:
    """Repeat a measured inference that overran, at a higher TDF, at most ``max_repeats`` times in a run."""

    tolerance_pct: float
    max_repeats: int
    retime: Callable[[float], None]  # apply a new TDF to the workers and links (nothing in flight)

    def should_repeat(self, result: RunResult, seq: int) -> bool:
        return len(result.repeats) < self.max_repeats and overrun_pct(result, seq) > self.tolerance_pct

    def repeat(self, result: RunResult, seq: int, discard: list[int]) -> None:
        """Raise the TDF to what ``seq``'s real compute needed, with headroom, within [MIN_RAISE, MAX_RAISE] times the
        TDF it ran at; record why."""
        before, pct = result.tdf, overrun_pct(result, seq)
        need = tdf_needed(compute_spans(result, seq), self.tolerance_pct / 200 * latency_ms(result, seq))
        after = min(MAX_RAISE * before, max(MIN_RAISE * before, CALIBRATION_HEADROOM * need))
        late = sorted({s["endpoint"] for s in result.spans
                       if s["kind"] == "compute" and s["seq"] == seq and s.get("overrun", 0) > 0})
        self.retime(after)
        result.repeats.append({"seq": seq, "overrun_pct": pct, "endpoints": late, "tdf_before": before,
                               "tdf_after": after, "discarded": list(discard),
                               "reason": f"inference {seq}'s compute on {', '.join(late)} overran by {pct:.1f}% of "
                                         f"its latency (> {self.tolerance_pct:g}%) at TDF {before:.2f}"})


def retry_tdf(overran_tdf: float, factor: float) -> float:
    """The fixed TDF a whole job is run again at: ``factor`` times the one whose budgets real compute overran."""
    return overran_tdf * factor
