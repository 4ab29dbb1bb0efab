"""What the controller observed of a run, in real (dilated) nanoseconds, and the pure readings of it: which
inferences were measured, their emulated latencies, their overruns, the goodput of a transfer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class RunResult:
    """What the controller observed, in real (dilated) nanoseconds; :mod:`harness.controller.measure` turns it into metrics."""

    tdf: float  # the TDF now (the last one, after any calibration or raise)
    backend: str
    warmup: int
    starts_ns: dict[int, int] = field(default_factory=dict)  # issued by the controller
    received_ns: dict[int, int] = field(default_factory=dict)  # its command arrived at the first endpoint
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

def measured_seqs(result: RunResult) -> list[int]:
    """The measured (post-warm-up) inferences that completed and were not replaced by a repeat, in order."""
    return sorted(s for s in result.ends_ns
                  if s >= result.warmup and s in result.starts_ns and s not in result.discarded)

def started_ns(result: RunResult, seq: int) -> int:
    """When inference ``seq`` started: its command's arrival at the first endpoint, where its input is made as a
    camera's frame would be (the controller's hop to that endpoint is the harness's, not the system's), or its
    issue where that endpoint did not say (or its clock is not trusted). Never before its issue."""
    issued = result.starts_ns[seq]
    return max(issued, result.received_ns.get(seq, issued))


def issue_hop_ms(result: RunResult, seq: int) -> float:
    """Emulated ms from inference ``seq``'s issue to its command's arrival at the first endpoint (left out of its
    latency)."""
    return (started_ns(result, seq) - result.starts_ns[seq]) / 1e6 / result.tdf_of(seq)


def latency_ms(result: RunResult, seq: int) -> float:
    """Inference ``seq``'s emulated latency: (completion at the last endpoint − start) / its TDF."""
    return (result.ends_ns[seq] - started_ns(result, seq)) / 1e6 / result.tdf_of(seq)

def latencies_ms(result: RunResult) -> np.ndarray:
    """Per measured inference, its emulated latency in ms."""
    return np.array([latency_ms(result, s) for s in measured_seqs(result)])

def compute_spans(result: RunResult, seq: int) -> list[tuple[float, float]]:
    """Inference ``seq``'s budgeted compute spans: (real ms, emulated budget ms)."""
    return [((s["end_ns"] - s["start_ns"]) / 1e6, s["budget_ms"]) for s in result.spans
            if s["kind"] == "compute" and s["seq"] == seq and s.get("budget_ms", 0) > 0]

def overrun_ms(spans: list[tuple[float, float]], tdf: float) -> float:
    """Emulated ms by which real compute ``spans`` (real ms, budget ms) overrun their budgets at ``tdf``."""
    return sum(max(0.0, real / tdf - budget) for real, budget in spans)

def overrun_cost_ms(result: RunResult, seq: int, tdf: float | None = None) -> float:
    """Emulated milliseconds by which inference ``seq``'s compute overran its budgets (at ``tdf``, default the TDF it
    ran at): an upper bound on how much the overruns delayed it."""
    return overrun_ms(compute_spans(result, seq), tdf or result.tdf_of(seq))

def overrun_pct(result: RunResult, seq: int) -> float:
    """How much inference ``seq``'s overruns delayed it, as a share of its own latency (%)."""
    latency = latency_ms(result, seq)
    return 100 * overrun_cost_ms(result, seq) / latency if latency > 0 else 0.0

# A transfer measures the link's rate only when it is large and long enough: smaller ones measure delay, not bandwidth;
# 10 emulated ms is ten times the kernel bucket's 1 ms burst, so that the burst is within 10 %.
GOODPUT_MIN_BYTES = 16 * 1024
GOODPUT_MIN_MS = 10.0


def goodput_mbps(nbytes: float, seconds: float) -> float:
    """Payload delivered per second, in Mbit/s; ``seconds`` undilated (real seconds / TDF). The one goodput
    formula: the pre-run probe, a dynamic run's estimates and a run's measured bandwidth all read it."""
    return nbytes * 8 / seconds / 1e6
