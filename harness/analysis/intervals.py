"""How sure a measured figure is: confidence intervals of a run's median latency and throughput, the rule that
calls two results "within noise", and how many inferences a stated precision needs.

Pure arithmetic over a run's own inferences (no store, no workers), shared by the run's record, the end-of-run
summary and the notebook. The median's interval is the distribution-free one from order statistics (the binomial
count of samples below the median), which holds its confidence whatever the latency's distribution (on a shared
machine skewed, often with two modes); a percentile bootstrap of the median is too narrow at a few dozen
inferences. Throughput, a mean over completion gaps, gets a bootstrap interval. Either is only as good as the
inferences are independent: it says nothing of what changes between runs (another day, another load).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy.stats import binom

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0  # the same inferences give the same interval


def _bootstrap_mean(samples: Sequence[float], confidence: float, resamples: int) -> tuple[float, float]:
    data = np.asarray(samples, dtype=float)
    draws = data[np.random.default_rng(SEED).integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (1.0 - confidence) / 2
    return float(np.quantile(draws, tail)), float(np.quantile(draws, 1.0 - tail))


def median_interval(samples: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The distribution-free interval of the median: the r-th smallest and r-th largest sample, r the largest for
    which fewer than r samples fall below the median with probability at most (1 - confidence) / 2. Below six
    samples no such r exists at 95 %: the interval is then the whole range, which covers the median with
    probability 1 - 2 / 2**n."""
    if not len(samples):
        raise ValueError("no samples: a confidence interval needs at least one measured inference")
    data = np.sort(np.asarray(samples, dtype=float))
    n, tail = len(data), (1.0 - confidence) / 2
    below = int(binom.ppf(tail, n, 0.5))  # the smallest count whose cumulative probability reaches the tail
    if binom.cdf(below, n, 0.5) > tail:
        below -= 1
    r = max(below + 1, 1)
    return float(data[r - 1]), float(data[n - r])


def throughput_interval(intervals_s: Sequence[float], confidence: float = CONFIDENCE,
                        resamples: int = RESAMPLES) -> tuple[float, float]:
    """Inferences per second from the gaps between consecutive completions (the first counted from its issue):
    the bootstrap interval of their mean, inverted."""
    if not len(intervals_s):
        raise ValueError("no completions: a confidence interval needs at least one measured inference")
    low, high = _bootstrap_mean(intervals_s, confidence, resamples)
    return 1.0 / high, 1.0 / low


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two intervals that share any value: the two results are within noise of each other."""
    return a[0] <= b[1] and b[0] <= a[1]


def relative_half_width(interval: tuple[float, float], centre: float) -> float:
    return (interval[1] - interval[0]) / 2 / centre if centre else math.inf


def inferences_for(precision: float, half_width: float, inferences: int) -> int:
    """Measured inferences for a relative half-width of ``precision`` (0.02: +-2 %), from a run of ``inferences``
    that gave ``half_width``: an interval narrows as one over the square root of the inferences."""
    if precision <= 0:
        raise ValueError(f"precision must be > 0 (0.02 means +-2 %), got {precision}")
    return max(inferences, math.ceil(inferences * (half_width / precision) ** 2))


def ranking(results: Iterable[tuple[str, float, tuple[float, float]]]) -> str:
    """``name, median, interval`` triples ordered by median, joined by ``<`` where the intervals lie apart and by
    ``≈`` where they overlap (within noise), e.g. ``cic ≈ dads < server_only``."""
    ordered = sorted(results, key=lambda r: r[1])
    if not ordered:
        return ""
    text = ordered[0][0]
    for previous, current in zip(ordered, ordered[1:]):
        text += (" ≈ " if overlaps(previous[2], current[2]) else " < ") + current[0]
    return text
