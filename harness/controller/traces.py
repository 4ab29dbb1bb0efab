"""Bandwidth traces: a link rate that changes over (emulated) time.

Three file formats, told apart by their content:

- the project's CSV, with a header ``time_s,mbps``: from ``time_s`` on, the link runs at ``mbps`` until the next row;
  the trace loops after its last row's time plus the previous step's length;
- Mahimahi's, the format measured cellular traces are shared in: one line per delivery opportunity of one
  1500-byte packet, its time in integer milliseconds; the trace loops after its last line. Opportunities are
  counted per ``MAHIMAHI_BIN_S`` into a piecewise-constant rate (a qdisc changes rate, it does not replay packets);
- time/throughput pairs, whitespace-separated (``seconds Mbit/s``, as in Pensieve's cooked traces), without a
  header; times are taken from the first line's.

Shipped traces live in ``conf/traces``: the project's stepped CSV, and two that :func:`shipped_trace_files` generates
from a seed (a Mahimahi file and ``seconds Mbit/s`` pairs; ``benchmarks/make_traces.py`` writes them). ``rayleigh``
traces are generated from a seed (block fading: per block, |h|² ~ Exp(1), Shannon rate).
"""

from __future__ import annotations

import bisect
import csv
import math
import random
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from harness import PROJECT_ROOT

TRACE_DIR = PROJECT_ROOT / "conf" / "traces"
MAHIMAHI_PACKET_BYTES = 1500
MAHIMAHI_BIN_S = 0.1  # opportunities are counted per 100 ms: ten rate changes per emulated second at most
OUTAGE_MBPS = 0.01  # a bin without a delivery opportunity: a qdisc cannot run at 0
FORMATS = "a time_s,mbps CSV, a Mahimahi trace (one integer ms per line) or 'seconds Mbit/s' pairs"


@dataclass(frozen=True)
class Trace:
    """A piecewise-constant rate: ``mbps[i]`` holds from ``times_s[i]`` until ``times_s[i + 1]``."""

    name: str
    times_s: tuple[float, ...]
    mbps: tuple[float, ...]
    period_s: float

    def __post_init__(self) -> None:
        if not self.times_s or len(self.times_s) != len(self.mbps):
            raise ValueError(f"trace {self.name!r}: needs as many times as rates, at least one")
        if self.times_s[0] != 0 or any(b <= a for a, b in zip(self.times_s, self.times_s[1:])):
            raise ValueError(f"trace {self.name!r}: times must start at 0 and increase, got {self.times_s[:5]}")
        if any(r <= 0 for r in self.mbps):
            raise ValueError(f"trace {self.name!r}: every rate must be > 0 Mbit/s, got min {min(self.mbps)}")

    @property
    def mean_mbps(self) -> float:
        """The time-weighted mean rate over one period."""
        ends = (*self.times_s[1:], self.period_s)
        return sum(r * (end - t) for t, end, r in zip(self.times_s, ends, self.mbps)) / self.period_s

    def rate_at(self, t_s: float) -> float:
        """The rate in force at emulated time ``t_s`` (the trace repeats)."""
        return self.mbps[bisect.bisect_right(self.times_s, t_s % self.period_s) - 1]

    def mbit_between(self, start_s: float, end_s: float) -> float:
        """Megabits the trace offers from emulated ``start_s`` to ``end_s``: its rate integrated over time (it
        repeats). Divided by the duration, the rate a transfer over that interval should have achieved."""
        return self._mbit_until(end_s) - self._mbit_until(start_s)

    def _mbit_until(self, t_s: float) -> float:
        loops, within = divmod(t_s, self.period_s)
        step = bisect.bisect_right(self.times_s, within) - 1
        before = sum(r * (end - t) for t, end, r in zip(self.times_s[:step], self.times_s[1:step + 1], self.mbps))
        return loops * self.mean_mbps * self.period_s + before + self.mbps[step] * (within - self.times_s[step])

    def changes(self, until_s: float) -> list[tuple[float, float]]:
        """Every (time, rate) step from 0 to ``until_s``, the loop unrolled."""
        steps, offset = [], 0.0
        while offset < until_s:
            steps.extend((offset + t, r) for t, r in zip(self.times_s, self.mbps) if offset + t < until_s)
            offset += self.period_s
        return steps


def load_trace(path: str | Path) -> Trace:
    """Read a trace file in any of the three formats; a bare name is looked up in ``conf/traces``;
    ``rayleigh:<seed>`` is generated."""
    text = str(path)
    if text.startswith("rayleigh"):
        seed = int(text.split(":", 1)[1]) if ":" in text else 0
        return rayleigh_trace(seed=seed)
    p = Path(text)
    if not p.exists() and (TRACE_DIR / p.name).exists():
        p = TRACE_DIR / p.name
    if not p.exists():
        available = sorted(q.name for q in TRACE_DIR.iterdir() if q.is_file())
        raise FileNotFoundError(f"bandwidth trace {text!r} not found; shipped traces: {available} or rayleigh:<seed>")
    lines = [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        raise ValueError(f"bandwidth trace {p}: empty; expected {FORMATS}")
    if lines[0].replace(" ", "") == "time_s,mbps":
        return _csv_trace(p, lines)
    fields = {len(line.split()) for line in lines}
    try:
        if fields == {1}:
            return mahimahi_trace(p.stem, [int(line) for line in lines])
        if fields == {2}:
            pairs = [line.split() for line in lines]
            return _pairs_trace(p.stem, [float(t) for t, _ in pairs], [float(r) for _, r in pairs])
    except ValueError as exc:
        raise ValueError(f"bandwidth trace {p}: {exc}; expected {FORMATS}") from exc
    raise ValueError(f"bandwidth trace {p}: first line {lines[0]!r} is none of the formats; expected {FORMATS}")


def _csv_trace(p: Path, lines: list[str]) -> Trace:
    rows = list(csv.DictReader(line.replace(" ", "") for line in lines))
    try:
        times = tuple(float(r["time_s"]) for r in rows)
        rates = tuple(float(r["mbps"]) for r in rows)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"bandwidth trace {p}: expected columns time_s,mbps with numbers ({exc})") from exc
    step = times[-1] - times[-2] if len(times) > 1 else 1.0
    return Trace(p.stem, times, rates, times[-1] + step)


def _pairs_trace(name: str, times: list[float], rates: list[float]) -> Trace:
    """``seconds Mbit/s`` pairs: times from the first one's; a rate of 0 is an outage (``OUTAGE_MBPS``)."""
    start = times[0]
    times = [t - start for t in times]
    step = times[-1] - times[-2] if len(times) > 1 else 1.0
    return Trace(name, tuple(times), tuple(max(r, OUTAGE_MBPS) for r in rates), times[-1] + step)


def mahimahi_trace(name: str, opportunities_ms: list[int], bin_s: float = MAHIMAHI_BIN_S) -> Trace:
    """A Mahimahi trace as a piecewise-constant rate: 1500-byte delivery opportunities counted per ``bin_s``, over
    one period (the last opportunity's time, as Mahimahi loops), equal neighbouring bins merged."""
    if any(b < a for a, b in zip(opportunities_ms, opportunities_ms[1:])) or opportunities_ms[0] < 0:
        raise ValueError("Mahimahi times must be milliseconds that never decrease")
    bin_ms = max(1, round(bin_s * 1e3))  # whole milliseconds, as the trace counts: no float edge falls astray
    bins = max(1, -(-opportunities_ms[-1] // bin_ms))
    counts = np.bincount(np.minimum(np.asarray(opportunities_ms) // bin_ms, bins - 1), minlength=bins)
    bin_s = bin_ms / 1e3
    rates = np.maximum(counts * MAHIMAHI_PACKET_BYTES * 8 / bin_s / 1e6, OUTAGE_MBPS)
    times, mbps = [0.0], [float(rates[0])]
    for i, rate in enumerate(rates[1:], start=1):
        if rate != mbps[-1]:
            times.append(round(i * bin_s, 9))
            mbps.append(float(rate))
    return Trace(name, tuple(times), tuple(mbps), bins * bin_s)


def rayleigh_trace(seed: int = 0, mean_snr_db: float = 10.0, bandwidth_mhz: float = 5.0, block_s: float = 0.5,
                   blocks: int = 120, floor_mbps: float = 0.1) -> Trace:
    """Block fading: each block draws |h|² ~ Exp(1) and runs at the Shannon rate B·log2(1 + SNR·|h|²).

    Defaults give a mean near 15 Mbit/s with deep fades, the setting of HALP's reliability study [ours].
    """
    rng = np.random.default_rng(seed)
    snr = 10 ** (mean_snr_db / 10)
    gains = rng.exponential(1.0, size=blocks)
    rates = np.maximum(floor_mbps, bandwidth_mhz * np.log2(1 + snr * gains))
    times = tuple(i * block_s for i in range(blocks))
    return Trace(f"rayleigh_{seed}", times, tuple(float(round(r, 3)) for r in rates), blocks * block_s)


def random_walk_rates(seed: int, steps: int, low_mbps: float, high_mbps: float, max_factor: float) -> list[float]:
    """Rates that wander in log space between ``low_mbps`` and ``high_mbps``, from their geometric mean: each step
    multiplies the rate by a factor log-uniform in [1/max_factor, max_factor], reflected at the bounds. Drawn with
    ``random.Random(seed).random()``, whose sequence for a seed Python keeps across versions."""
    rng, low, high = random.Random(seed), math.log(low_mbps), math.log(high_mbps)
    level, rates = (low + high) / 2, []
    for _ in range(steps):
        rates.append(math.exp(level))
        level += (2 * rng.random() - 1) * math.log(max_factor)
        level = low + abs(level - low)  # reflected at the bounds
        level = high - abs(high - level)
    return rates


def mahimahi_opportunities(rates_mbps: list[float], bin_s: float = MAHIMAHI_BIN_S) -> list[int]:
    """A Mahimahi trace that gives ``rates_mbps``, one rate per ``bin_s``: each bin's 1500-byte delivery
    opportunities (the rate's, rounded to whole packets, at least one) spread evenly over it, in integer ms, each in
    the middle of its share of the bin: none on a bin's edge, so the last bin's last one is past its start and
    :func:`mahimahi_trace` counts every bin."""
    bin_ms = round(bin_s * 1e3)
    lines = []
    for index, rate in enumerate(rates_mbps):
        packets = max(1, round(rate * 1e6 * bin_s / 8 / MAHIMAHI_PACKET_BYTES))
        lines.extend(index * bin_ms + (2 * slot + 1) * bin_ms // (2 * packets) for slot in range(packets))
    return lines


def shipped_trace_files() -> dict[str, str]:
    """The generated traces shipped in ``conf/traces``, by file name: synthetic, no measured data; each seed was
    picked, of the first thirty, for a walk that spans most of 1-20 Mbit/s.

    - ``walk_100ms_mahimahi.up``: Mahimahi's format, 8 s, a new rate every 100 ms (factor up to 1.5 each);
    - ``steps_500ms_pairs.log``: ``seconds Mbit/s`` pairs, 10 s, a new rate every 0.5 s (factor up to 2 each).
    """
    walk = random_walk_rates(seed=20, steps=80, low_mbps=1.0, high_mbps=20.0, max_factor=1.5)
    steps = random_walk_rates(seed=5, steps=20, low_mbps=1.0, high_mbps=20.0, max_factor=2.0)
    return {"walk_100ms_mahimahi.up": "".join(f"{ms}\n" for ms in mahimahi_opportunities(walk)),
            "steps_500ms_pairs.log": "".join(f"{i * 0.5:.1f} {rate:.2f}\n" for i, rate in enumerate(steps))}


class TracePlayer:
    """Applies a trace to a live link in a background thread: rate at emulated time t is set at real t × TDF.

    Changing a qdisc takes real time (2-3 ms for both directions here under load, at times 10 or more), so each step
    is begun early by the median time the last ``LEAD_CALLS`` changes took: it lands about on its instant rather than
    always after it. A new TDF (:meth:`retime`) keeps the trace's place: emulated time goes on from where it was, at
    the new pace.
    """

    LEAD_CALLS = 15

    def __init__(self, trace: Trace, set_rate: Callable[[float], None], tdf: float, horizon_s: float = 3600) -> None:
        self.trace, self.set_rate, self.tdf = trace, set_rate, tdf
        self.steps = trace.changes(horizon_s)
        self.step_times = [t_s for t_s, _ in self.steps]
        self.stop_event = threading.Event()
        self.wake = threading.Event()  # a retime or stop: the next step's wait is recomputed
        self.start_ns = 0
        self.applied = threading.Condition()
        self.applied_steps = 0  # steps whose rate the link has (set_rate returned)
        self.call_s: deque[float] = deque(maxlen=self.LEAD_CALLS)  # real seconds each of the last set_rate calls took
        self.landings: list[dict[str, float]] = []  # per step after the first: when the link had its rate
        self.thread = threading.Thread(target=self._play, daemon=True, name="trace-player")

    def start(self) -> "TracePlayer":
        self.set_rate(self.steps[0][1])  # not timed for the lead: a first change of a fresh qdisc is slower
        self.applied_steps = 1
        self.start_ns = time.monotonic_ns()
        self.thread.start()
        return self

    def settle(self, timeout_s: float = 1.0) -> None:
        """Wait until the link has every rate due by now. At a step's instant the player's thread is still
        changing the qdisc (a few real ms): a probe or an inference that starts then must not see the old rate."""
        due = bisect.bisect_right(self.step_times, self.emulated_s())
        with self.applied:
            self.applied.wait_for(lambda: self.applied_steps >= due or self.stop_event.is_set(), timeout_s)

    def emulated_s(self, at_ns: int | None = None) -> float:
        return ((at_ns or time.monotonic_ns()) - self.start_ns) / 1e9 / self.tdf

    def rate_now(self, at_ns: int | None = None) -> float:
        return self.trace.rate_at(self.emulated_s(at_ns))

    def retime(self, tdf: float) -> None:
        """Go on at a new TDF from the emulated time reached now."""
        now = time.monotonic_ns()
        emulated = self.emulated_s(now)
        self.start_ns, self.tdf = now - int(emulated * tdf * 1e9), tdf
        self.wake.set()

    def lead_s(self) -> float:
        """How early (real seconds) the next step begins: the median time the last changes took."""
        return statistics.median(self.call_s) if self.call_s else 0.0

    def _apply(self, mbps: float) -> None:
        started = time.monotonic_ns()
        self.set_rate(mbps)
        self.call_s.append((time.monotonic_ns() - started) / 1e9)

    def _play(self) -> None:
        for t_s, mbps in self.steps[1:]:
            while (wait := self.start_ns / 1e9 + t_s * self.tdf - self.lead_s() - time.monotonic_ns() / 1e9) > 0:
                self.wake.wait(wait)
                self.wake.clear()
                if self.stop_event.is_set():
                    return
            if self.stop_event.is_set():
                return
            try:
                self._apply(mbps)
            except RuntimeError:  # the topology went down: the run is over
                return
            # Emulated ms after its instant (negative: early): a late player, not the shaper, moves these.
            self.landings.append({"step_s": t_s, "mbps": mbps, "late_ms": (self.emulated_s() - t_s) * 1e3})
            with self.applied:
                self.applied_steps += 1
                self.applied.notify_all()

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()
        with self.applied:
            self.applied.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
