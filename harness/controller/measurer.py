"""The measurer (after MLPerf LoadGen): it owns the scenario's issue schedule, the completion stamps on its own
clock, and the verdict. Workers only compute, send and report; what their reports mean is decided here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch
from tqdm import tqdm

from harness.worker import wire


class Workers(Protocol):
    """What the measurer needs of the controller: send a command, read the next report."""

    endpoints: dict[str, Any]

    def send(self, endpoint: str, obj: dict[str, Any]) -> None: ...

    def next_message(self) -> tuple[Any, wire.Frame]: ...


@dataclass
class RunResult:
    """What the controller observed, in real (dilated) nanoseconds; :mod:`harness.controller.measure` turns it into metrics."""

    tdf: float
    backend: str
    warmup: int
    starts_ns: dict[int, int] = field(default_factory=dict)
    ends_ns: dict[int, int] = field(default_factory=dict)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    spans: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    model_rss_mb: dict[str, float] = field(default_factory=dict)  # peak minus the interpreter's own footprint
    events: list[dict[str, Any]] = field(default_factory=list)
    link_record: dict[str, Any] = field(default_factory=dict)
    probe_mbps: dict[str, float] = field(default_factory=dict)
    tdf_calibrated: float | None = None  # the TDF from local node times, when the warm-up had to raise it
    clocks: dict[str, dict[str, Any]] = field(default_factory=dict)  # remote endpoint -> its clock estimate
    devices: dict[str, str] = field(default_factory=dict)  # endpoint -> the processor it computed on


def absorb(frame: wire.Frame, result: RunResult) -> bool:
    """File a worker's report into ``result``; True when it completes an inference."""
    if frame.kind == wire.Kind.TENSOR:
        result.outputs[frame.seq] = frame.tensor
    elif frame.kind == wire.Kind.JSON and frame.obj.get("event") == "spans":
        result.spans.extend(frame.obj["spans"])
        if frame.obj.get("final"):
            result.ends_ns[frame.obj["seq"]] = int(frame.obj["done_ns"])
            return True
    elif frame.kind == wire.Kind.JSON:
        result.events.append(frame.obj)
    return False


def wait_all(controller: Workers, event: str, result: RunResult) -> None:
    """Wait until every worker reports ``event``; other reports are filed into ``result`` meanwhile."""
    pending = set(controller.endpoints)
    while pending:
        ep, frame = controller.next_message()
        if frame.kind == wire.Kind.JSON and frame.obj.get("event") == event:
            pending.discard(ep.name)
        else:
            absorb(frame, result)


def wait_for_span(controller: Workers, result: RunResult, seq: int, kind: str) -> None:
    """Wait until some worker has reported a ``kind`` span of inference ``seq``."""
    while not any(s["seq"] == seq and s["kind"] == kind for s in result.spans):
        absorb(controller.next_message()[1], result)


BeforeIssue = Callable[[int], None]


def drive(controller: Workers, first: str, total: int, warmup: int, in_flight: int, result: RunResult,
          before_issue: BeforeIssue | None = None, progress: bool = True,
          after_warmup: Callable[[], None] | None = None) -> None:
    """Issue ``total`` inferences to the first endpoint with at most ``in_flight`` outstanding; collect results."""
    issued = done = 0
    bar = tqdm(total=total, desc="inferences", unit="inf", disable=not progress, leave=False)
    while done < total:
        if done == warmup and issued == warmup and after_warmup is not None:
            after_warmup()
        # Warm-up inferences run one at a time; measured ones keep ``in_flight`` outstanding.
        limit = 1 if done < warmup else in_flight
        while issued < total and issued - done < limit:
            if before_issue is not None:
                before_issue(issued)
            result.starts_ns[issued] = time.monotonic_ns()  # the measurer's clock: a query starts when issued
            controller.send(first, {"cmd": "infer", "seq": issued})
            issued += 1
        _, frame = controller.next_message()
        if absorb(frame, result):
            done += 1
            bar.update(1)
    bar.close()


def overrun_cost_ms(result: RunResult, seq: int, tdf: float | None = None) -> float:
    """Emulated milliseconds by which inference ``seq``'s compute overran its budgets (at ``tdf``, default the run's):
    an upper bound on how much the overruns delayed it."""
    tdf = tdf or result.tdf
    return sum(max(0.0, (s["end_ns"] - s["start_ns"]) / 1e6 / tdf - s["budget_ms"]) for s in result.spans
               if s["kind"] == "compute" and s["seq"] == seq and s.get("budget_ms", 0) > 0)


def warmup_tdf(result: RunResult, tolerance_pct: float) -> float:
    """The smallest TDF at which the last warm-up inference's real compute, measured in the workers under this
    machine's real contention, would have delayed it by at most half the tolerance."""
    seq = result.warmup - 1
    if seq < 0 or seq not in result.ends_ns:
        return result.tdf
    latency_ms = (result.ends_ns[seq] - result.starts_ns[seq]) / 1e6 / result.tdf
    allowed = tolerance_pct / 200 * latency_ms
    low, high = result.tdf, result.tdf
    while overrun_cost_ms(result, seq, high) > allowed and high < 1e4 * result.tdf:
        low, high = high, high * 2
    if high == result.tdf:
        return result.tdf
    for _ in range(30):  # bisection: the cost falls as the TDF grows
        mid = (low + high) / 2
        low, high = (low, mid) if overrun_cost_ms(result, seq, mid) <= allowed else (mid, high)
    return high


def measured_seqs(result: RunResult) -> list[int]:
    """The measured (post-warm-up) inferences that completed, in order."""
    return sorted(s for s in result.ends_ns if s >= result.warmup and s in result.starts_ns)


def latencies_ms(result: RunResult) -> np.ndarray:
    """Per measured inference: (completion at the last endpoint − issue) / TDF, in ms."""
    return np.array([(result.ends_ns[s] - result.starts_ns[s]) / 1e6 / result.tdf for s in measured_seqs(result)])


def overrun_metrics(result: RunResult) -> dict[str, float]:
    """How far real compute overran its emulated budgets in the measured inferences, per span and per inference."""
    spans = [s for s in result.spans if s["kind"] == "compute" and s["seq"] >= result.warmup]
    lat = dict(zip(measured_seqs(result), latencies_ms(result)))
    costs = [100 * overrun_cost_ms(result, seq) / latency for seq, latency in lat.items() if latency > 0]
    return {"max_overrun_pct": 100 * max((s.get("overrun", 0.0) for s in spans), default=0.0),
            "overrun_spans": float(sum(s.get("overrun", 0.0) > 0 for s in spans)), "compute_spans": float(len(spans)),
            "overrun_cost_pct": max(costs, default=0.0)}


def verdict(result: RunResult, expected: int, tolerance_pct: float) -> str | None:
    """Why a run is invalid, or None (MLPerf's VALID/INVALID: the measurer decides, not the measured).

    Real compute that overruns its dilated budget delays everything after it: when the overruns of a measured
    inference add up to more than ``tolerance_pct`` of its latency, the emulation no longer holds. A tiny span that
    overruns by 50 % but costs microseconds does not invalidate a run; warm-up inferences do not count.
    """
    if len(result.outputs) != expected:
        return f"expected {expected} outputs, received {len(result.outputs)}"
    worst_pct, worst_seq = 0.0, None
    for seq, latency in zip(measured_seqs(result), latencies_ms(result)):
        pct = 100 * overrun_cost_ms(result, seq) / latency if latency > 0 else 0.0
        if pct > worst_pct:
            worst_pct, worst_seq = pct, seq
    if worst_pct > tolerance_pct:
        late = [s for s in result.spans if s["kind"] == "compute" and s["seq"] == worst_seq and s.get("overrun", 0) > 0]
        by_endpoint = {e: sum(s["endpoint"] == e for s in late) for e in sorted({s["endpoint"] for s in late})}
        return (f"real compute overran its emulated budgets (TDF {result.tdf:.2f}) by {worst_pct:.1f}% of inference "
                f"{worst_seq}'s latency (> {tolerance_pct:g}%), in compute spans {by_endpoint}; raise "
                "runtime.tdf_margin or runtime.tdf, or run on a quieter machine")
    return None
