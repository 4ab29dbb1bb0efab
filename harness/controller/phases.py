"""Where a job's wall time goes: set-up, network, workers, inference, recording. Nothing here is recorded with
the run; ``benchmarks/sweep_overhead.py`` reads it to tell a sweep's overhead from its measurement."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

jobs: list[dict[str, float]] = []  # one per job of this process, in order: phase -> seconds, and "total"
_current: dict[str, float] | None = None


@contextmanager
def job() -> Iterator[dict[str, float]]:
    """Time one job; its phases add up inside it, and ``total`` is its whole wall time."""
    global _current
    _current = {}
    jobs.append(_current)
    start = time.perf_counter()
    try:
        yield _current
    finally:
        _current["total"] = time.perf_counter() - start
        _current = None


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the time spent inside to phase ``name`` of the job being timed (none: nothing is kept)."""
    current, start = _current, time.perf_counter()
    try:
        yield
    finally:
        if current is not None:
            current[name] = current.get(name, 0.0) + time.perf_counter() - start


def begin(name: str) -> Callable[[], None]:
    """Start timing phase ``name``; call what it returns where the phase ends (where a ``with`` would not fit)."""
    current, start = _current, time.perf_counter()

    def end() -> None:
        if current is not None:
            current[name] = current.get(name, 0.0) + time.perf_counter() - start

    return end


def note(name: str, value: float) -> None:
    """A figure of the job being timed that is not a phase (e.g. the dilated time its inferences needed)."""
    if _current is not None:
        _current[name] = value


def count(name: str, by: float = 1.0) -> None:
    """Add ``by`` to a tally of the job being timed (e.g. the workers it had to start)."""
    if _current is not None:
        _current[name] = _current.get(name, 0.0) + by
