"""Sender-side shaping for one link direction, in the sending worker: what the kernel's qdisc cannot do."""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable


class Pacer:
    """Sender-side shaping for one link direction: whatever the kernel backend cannot do.

    ``rate_mbps`` (userspace backend only) makes it a serialising link, a token bucket without burst: a message
    occupies the link for nbytes / rate after the previous one. ``delay_ms`` and ``jitter_ms`` (uniform in
    +-jitter, seeded, as netem draws it) are propagation: a message leaves ``delay`` after it was ready, without
    delaying the next one's serialisation, so pipelined senders keep their throughput. Times are wall-clock (dilated).
    """

    def __init__(self, rate_mbps: float | None = None, delay_ms: float = 0.0, jitter_ms: float = 0.0, seed: int = 0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if rate_mbps is not None and not rate_mbps > 0:
            raise ValueError(f"rate_mbps must be > 0 or None (the kernel shapes the rate), got {rate_mbps!r}")
        if delay_ms < 0 or jitter_ms < 0:
            raise ValueError(f"delay_ms and jitter_ms must be >= 0, got {delay_ms!r}, {jitter_ms!r}")
        self.rate_mbps, self.delay_ms, self.jitter_ms, self.seed = rate_mbps, delay_ms, jitter_ms, seed
        self._rng = random.Random(seed)
        self._clock, self._sleep = clock, sleep
        self._link_free = 0.0  # when the (virtual) link finishes serialising what was sent before
        self._last_departure = 0.0
        self._lock = threading.Lock()

    @property
    def idle(self) -> bool:
        """True when this pacer changes nothing (the kernel does all the shaping)."""
        return self.rate_mbps is None and self.delay_ms == 0 and self.jitter_ms == 0

    def set_rate(self, rate_mbps: float) -> None:
        if self.rate_mbps is None:
            raise ValueError("this pacer does not shape the rate (the kernel does): change it with Topology.set_rate")
        if not rate_mbps > 0:
            raise ValueError(f"rate_mbps must be > 0, got {rate_mbps!r}")
        with self._lock:
            self.rate_mbps = rate_mbps

    def departure(self, nbytes: int, ready_at: float | None = None) -> float:
        """When a message of ``nbytes`` ready at ``ready_at`` may leave; advances the link's timeline."""
        with self._lock:
            ready = self._clock() if ready_at is None else ready_at
            finish = ready
            if self.rate_mbps is not None:
                finish = max(ready, self._link_free) + nbytes * 8 / (self.rate_mbps * 1e6)
                self._link_free = finish
            delay = self.delay_ms
            if self.jitter_ms:
                delay = max(0.0, delay + self._rng.uniform(-self.jitter_ms, self.jitter_ms))
            # One TCP stream cannot reorder: a message never leaves before the previous one.
            self._last_departure = max(self._last_departure, finish + delay / 1e3)
            return self._last_departure

    def before_send(self, nbytes: int, ready_at: float | None = None) -> float:
        """Sleep until the message may be sent; returns the seconds slept."""
        if self.idle:
            return 0.0
        wait = self.departure(nbytes, ready_at) - self._clock()
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)

    def config(self) -> dict[str, Any]:
        """JSON-able settings, for a worker process: ``Pacer(**config)``."""
        return {"rate_mbps": self.rate_mbps, "delay_ms": self.delay_ms, "jitter_ms": self.jitter_ms,
                "seed": self.seed}
