"""The measurer (after MLPerf LoadGen): it owns the scenario's issue schedule, the completion stamps on its own
clock, and the verdict. Workers only compute, send and report; what their reports mean is decided here.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch
from tqdm import tqdm

from harness.worker import wire


class Workers(Protocol):
    """What the measurer needs of the controller: send a command, read the next report."""

    endpoints: dict[str, Any]
    on_retime: list[Callable[[float], None]]  # told every new TDF (e.g. a trace player keeps its place)

    def send(self, endpoint: str, obj: dict[str, Any]) -> None: ...

    def next_message(self) -> tuple[Any, wire.Frame]: ...


# Calibration: every worker times its own part this many times, in its process, under the run's concurrency; the
# TDF is set from this quantile of each part's real compute, times this headroom.
CALIBRATION_REPEATS = 6
CALIBRATION_QUANTILE = 0.9
CALIBRATION_HEADROOM = 1.1
# A measured inference that overran is repeated at a TDF at least MIN_RAISE and at most MAX_RAISE times higher: a
# one-off pause (the scheduler, another process) must not multiply the run's real time by its own size.
MIN_RAISE, MAX_RAISE = 1.15, 2.0


class ProgressLines:
    """Progress where stderr is no terminal (a log file, a CI job): a plain line at the start, at each tenth and at
    the end, where a bar's carriage returns and escape codes would garble the log. The part of tqdm's interface
    the measurer uses."""

    def __init__(self, total: int, disable: bool = False) -> None:
        self.total, self.n, self.disable, self.said = total, 0, disable, -1
        self._say()

    def _say(self) -> None:
        if not self.disable and self.n != self.said:
            print(f"inferences: {self.n}/{self.total}", file=sys.stderr, flush=True)
            self.said = self.n

    def update(self, count: int = 1) -> None:
        step = max(1, self.total // 10)
        before, self.n = self.n, self.n + count
        if self.n // step != before // step or self.n >= self.total:
            self._say()

    def refresh(self) -> None:
        """A new total (repeats added): said at the next tenth."""

    def close(self) -> None:
        self._say()


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
class RunResult:
    """What the controller observed, in real (dilated) nanoseconds; :mod:`harness.controller.measure` turns it into metrics."""

    tdf: float  # the TDF now (the last one, after any calibration or raise)
    backend: str
    warmup: int
    starts_ns: dict[int, int] = field(default_factory=dict)
    ends_ns: dict[int, int] = field(default_factory=dict)
    seq_tdf: dict[int, float] = field(default_factory=dict)  # the TDF each inference ran at
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    spans: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    model_rss_mb: dict[str, float] = field(default_factory=dict)  # peak minus the interpreter's own footprint
    events: list[dict[str, Any]] = field(default_factory=list)
    link_record: dict[str, Any] = field(default_factory=dict)
    probe_mbps: dict[str, float] = field(default_factory=dict)
    clocks: dict[str, dict[str, Any]] = field(default_factory=dict)  # remote endpoint -> its clock estimate
    devices: dict[str, str] = field(default_factory=dict)  # endpoint -> the processor it computed on
    calibration: dict[str, Any] = field(default_factory=dict)  # what the workers measured and the TDF it gave
    repeats: list[dict[str, Any]] = field(default_factory=list)  # each overrun inference repeated, and why
    discarded: set[int] = field(default_factory=set)  # measured inferences replaced by a repeat

    def tdf_of(self, seq: int) -> float:
        return self.seq_tdf.get(seq, self.tdf)


def absorb(frame: wire.Frame, result: RunResult) -> int | None:
    """File a worker's report into ``result``; the inference it completes, if it completes one."""
    if frame.kind == wire.Kind.TENSOR:
        result.outputs[frame.seq] = frame.tensor
    elif frame.kind == wire.Kind.JSON and frame.obj.get("event") == "spans":
        result.spans.extend(frame.obj["spans"])
        if frame.obj.get("final"):
            result.ends_ns[frame.obj["seq"]] = int(frame.obj["done_ns"])
            return int(frame.obj["seq"])
    elif frame.kind == wire.Kind.JSON:
        result.events.append(frame.obj)
    return None


def wait_all(controller: Workers, event: str, result: RunResult,
             endpoints: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Wait until every worker (or those named) reports ``event``; their reports, by endpoint. Other reports are
    filed into ``result`` meanwhile."""
    pending, reports = set(controller.endpoints if endpoints is None else endpoints), {}
    while pending:
        ep, frame = controller.next_message()
        if frame.kind == wire.Kind.JSON and frame.obj.get("event") == event and ep.name in pending:
            pending.discard(ep.name)
            reports[ep.name] = frame.obj
        else:
            absorb(frame, result)
    return reports


def wait_for_span(controller: Workers, result: RunResult, seq: int, kind: str) -> None:
    """Wait until some worker has reported a ``kind`` span of inference ``seq``."""
    while not any(s["seq"] == seq and s["kind"] == kind for s in result.spans):
        absorb(controller.next_message()[1], result)


BeforeIssue = Callable[[int], None]


def drive(controller: Workers, first: str, total: int, warmup: int, in_flight: int, result: RunResult,
          before_issue: BeforeIssue | None = None, progress: bool = True,
          after_warmup: Callable[[], None] | None = None, repeats: "Repeats | None" = None) -> None:
    """Issue ``total`` inferences to the first endpoint with at most ``in_flight`` outstanding; collect results.

    With ``repeats``, a measured inference whose overruns broke the tolerance is discarded and issued again at a
    higher TDF, once nothing is in flight. With several in flight the measured phase starts over instead: its
    throughput must come from one TDF and an unbroken pipeline.
    """
    queue, outstanding, next_seq = deque(range(total)), set(), total
    warmed, overran = warmup == 0, None
    bar = (tqdm(total=total, desc="inferences", unit="inf", disable=not progress, leave=False) if sys.stderr.isatty()
           else ProgressLines(total, disable=not progress))
    if warmed and after_warmup is not None:
        after_warmup()
    while queue or outstanding:
        if overran is not None and not outstanding:
            if in_flight == 1:
                discard, count = [overran], 1
            else:
                discard, count = measured_seqs(result), total - warmup
                queue.clear()  # the measured phase starts over
            repeats.repeat(result, overran, discard)
            result.discarded.update(discard)
            again = list(range(next_seq, next_seq + count))
            next_seq += count
            queue.extendleft(reversed(again))
            result.repeats[-1]["issued_again"] = again
            bar.total = bar.n + len(queue)
            bar.refresh()
            overran = None
        # Warm-up inferences run one at a time; measured ones keep ``in_flight`` outstanding.
        limit = in_flight if warmed else 1
        while overran is None and queue and len(outstanding) < limit and (warmed or queue[0] < warmup):
            seq = queue.popleft()
            if before_issue is not None:
                before_issue(seq)
            result.seq_tdf[seq] = result.tdf
            result.starts_ns[seq] = time.monotonic_ns()  # the measurer's clock: a query starts when issued
            controller.send(first, {"cmd": "infer", "seq": seq})
            outstanding.add(seq)
        if not outstanding:
            continue
        done = absorb(controller.next_message()[1], result)
        if done is None:
            continue
        outstanding.discard(done)
        bar.update(1)
        if not warmed and not outstanding and (not queue or queue[0] >= warmup):
            warmed = True
            if after_warmup is not None:
                after_warmup()
        if (repeats is not None and overran is None and done >= warmup and done not in result.discarded
                and repeats.should_repeat(result, done)):
            overran = done
    bar.close()


def overrun_cost_ms(result: RunResult, seq: int, tdf: float | None = None) -> float:
    """Emulated milliseconds by which inference ``seq``'s compute overran its budgets (at ``tdf``, default the TDF it
    ran at): an upper bound on how much the overruns delayed it."""
    return overrun_ms(compute_spans(result, seq), tdf or result.tdf_of(seq))


def compute_spans(result: RunResult, seq: int) -> list[tuple[float, float]]:
    """Inference ``seq``'s budgeted compute spans: (real ms, emulated budget ms)."""
    return [((s["end_ns"] - s["start_ns"]) / 1e6, s["budget_ms"]) for s in result.spans
            if s["kind"] == "compute" and s["seq"] == seq and s.get("budget_ms", 0) > 0]


def overrun_ms(spans: list[tuple[float, float]], tdf: float) -> float:
    """Emulated ms by which real compute ``spans`` (real ms, budget ms) overrun their budgets at ``tdf``."""
    return sum(max(0.0, real / tdf - budget) for real, budget in spans)


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


def goodput_mbps(nbytes: float, seconds: float) -> float:
    """Payload delivered per second, in Mbit/s; ``seconds`` undilated (real seconds / TDF). The one goodput
    formula: the pre-run probe, a dynamic run's estimates and a run's measured bandwidth all read it."""
    return nbytes * 8 / seconds / 1e6


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


def measured_seqs(result: RunResult) -> list[int]:
    """The measured (post-warm-up) inferences that completed and were not replaced by a repeat, in order."""
    return sorted(s for s in result.ends_ns
                  if s >= result.warmup and s in result.starts_ns and s not in result.discarded)


def latency_ms(result: RunResult, seq: int) -> float:
    """Inference ``seq``'s emulated latency: (completion at the last endpoint − issue) / its TDF."""
    return (result.ends_ns[seq] - result.starts_ns[seq]) / 1e6 / result.tdf_of(seq)


def latencies_ms(result: RunResult) -> np.ndarray:
    """Per measured inference, its emulated latency in ms."""
    return np.array([latency_ms(result, s) for s in measured_seqs(result)])


def overrun_pct(result: RunResult, seq: int) -> float:
    """How much inference ``seq``'s overruns delayed it, as a share of its own latency (%)."""
    latency = latency_ms(result, seq)
    return 100 * overrun_cost_ms(result, seq) / latency if latency > 0 else 0.0


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


def overrun_metrics(result: RunResult) -> dict[str, float]:
    """How far real compute overran its emulated budgets in the measured inferences, per span and per inference;
    how many inferences were repeated."""
    seqs = set(measured_seqs(result))
    spans = [s for s in result.spans if s["kind"] == "compute" and s["seq"] in seqs]
    costs = [overrun_pct(result, seq) for seq in seqs]
    return {"max_overrun_pct": 100 * max((s.get("overrun", 0.0) for s in spans), default=0.0),
            "overrun_spans": float(sum(s.get("overrun", 0.0) > 0 for s in spans)), "compute_spans": float(len(spans)),
            "overrun_cost_pct": max(costs, default=0.0), "repeated_inferences": float(len(result.repeats))}


@dataclass(frozen=True)
class Check:
    """One named criterion of the verdict: whether it held, and what was measured. Only a check that
    ``invalidates`` can make a run INVALID; the others say how far its figures can be trusted."""

    name: str
    passed: bool
    detail: str
    invalidates: bool = True

    def tag(self) -> str:
        return f"{'pass' if self.passed else 'fail'}: {self.detail}"[:4000]


# A percentile q is more than the largest sample only from 1 / (1 - q) samples on (MLPerf asks far more for p99).
PERCENTILE_SAMPLES = {50: 2, 90: 10, 99: 100}


def outputs_check(result: RunResult, expected: int) -> Check:
    expected = max(expected, len(result.starts_ns))  # every inference issued, repeats included
    received = len(result.outputs)
    return Check("outputs", received == expected, f"{received} of {expected} outputs received")


def overrun_check(result: RunResult, tolerance_pct: float) -> Check:
    """Real compute that overruns its dilated budget delays everything after it: when the overruns of a measured
    inference add up to more than ``tolerance_pct`` of its latency, the emulation no longer holds. A tiny span that
    overruns by 50 % but costs microseconds does not invalidate a run; warm-up inferences and inferences replaced by
    a repeat do not count."""
    worst_pct, worst_seq = 0.0, None
    for seq in measured_seqs(result):
        if (pct := overrun_pct(result, seq)) > worst_pct:
            worst_pct, worst_seq = pct, seq
    if worst_pct <= tolerance_pct:
        return Check("overrun", True, f"worst inference delayed {worst_pct:.2f}% by overruns (<= {tolerance_pct:g}%)")
    late = [s for s in result.spans if s["kind"] == "compute" and s["seq"] == worst_seq and s.get("overrun", 0) > 0]
    by_endpoint = {e: sum(s["endpoint"] == e for s in late) for e in sorted({s["endpoint"] for s in late})}
    repeated = (f" after {len(result.repeats)} repeated inference(s) at raised TDFs (runtime.max_repeats)"
                if result.repeats else "")
    return Check("overrun", False,
                 f"real compute overran its emulated budgets (TDF {result.tdf_of(worst_seq):.2f}) by {worst_pct:.1f}% "
                 f"of inference {worst_seq}'s latency (> {tolerance_pct:g}%), in compute spans {by_endpoint}"
                 f"{repeated}; raise runtime.tdf or runtime.max_repeats, or run on a quieter machine")


def percentiles_check(result: RunResult) -> Check:
    """Which reported latency percentiles the measured inferences support (p90 from 10, p99 from 100)."""
    measured = len(measured_seqs(result))
    short = [f"p{q} needs {n}" for q, n in PERCENTILE_SAMPLES.items() if measured < n]
    detail = f"{measured} measured inferences" + (f"; {', '.join(short)} (reported, but no more than the largest)"
                                                  if short else ": every percentile supported")
    return Check("percentiles", not short, detail, invalidates=False)


def stamps_check(result: RunResult) -> Check:
    """Whose clock stamped each completion: a remote worker's, within its offset's uncertainty, or the controller's
    on arrival where that uncertainty was too large to trust."""
    untrusted = {e: c["uncertainty_ms"] for e, c in result.clocks.items() if c.get("completion_stamp") == "controller"}
    if untrusted:
        return Check("stamps", False, "completions stamped on arrival for " + ", ".join(
            f"{e} (clock uncertain by {ms:.2f} ms)" for e, ms in untrusted.items()), invalidates=False)
    where = "remote workers' clocks" if result.clocks else "this machine's clock"
    return Check("stamps", True, f"completions stamped by {where}", invalidates=False)


def checks(result: RunResult, expected: int, tolerance_pct: float) -> list[Check]:
    """The verdict's criteria, in the order they are judged (MLPerf's VALID/INVALID: the measurer decides, not the
    measured). ``expected``: the outputs the scenario asks for, before any repeat."""
    outputs = outputs_check(result, expected)
    judged = [outputs] if not outputs.passed else [outputs, overrun_check(result, tolerance_pct)]
    return [*judged, percentiles_check(result), stamps_check(result)]


def verdict(result: RunResult, expected: int, tolerance_pct: float) -> str | None:
    """Why a run is invalid (the first criterion that invalidates and failed), or None."""
    failed = [c for c in checks(result, expected, tolerance_pct) if c.invalidates and not c.passed]
    return failed[0].detail if failed else None
