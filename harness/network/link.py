"""A link as the experiment sees it (undilated), and the error for a link a backend cannot shape."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class LinkSpec:
    """One link as the experiment sees it (undilated): payload bandwidth, one-way delay, jitter, loss."""

    bandwidth_mbps: float
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.bandwidth_mbps, (int, float)) and math.isfinite(self.bandwidth_mbps)
                and self.bandwidth_mbps > 0):
            raise ValueError(f"bandwidth_mbps must be a finite number > 0 (Mbit/s), got {self.bandwidth_mbps!r}")
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0 <= self.loss_pct < 100:
            raise ValueError(f"loss_pct must be in [0, 100), got {self.loss_pct!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "LinkSpec":
        """From a ``conf/link/*.yaml`` group (its ``name``, ``trace`` and ``compensate_headers`` are not link facts)."""
        return cls(float(cfg["bandwidth_mbps"]), float(cfg.get("delay_ms", 0.0)),
                   float(cfg.get("jitter_ms", 0.0)), float(cfg.get("loss_pct", 0.0)))


class BackendError(RuntimeError):
    """A link asks for something the available shaping backend cannot do."""

