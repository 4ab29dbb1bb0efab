"""Workers already running on real machines, reached over a real network that the harness neither shapes nor
dilates (``python -m harness.worker --control tcp:HOST:PORT`` on each board)."""

from __future__ import annotations

from typing import Any, Mapping


def bad_addresses(controls: Mapping[str, Any]) -> dict[str, Any]:
    """The endpoints whose control address is not ``tcp:HOST:PORT``, with that address."""
    return {e: a for e, a in controls.items() if not str(a).startswith("tcp:") or ":" not in str(a)[4:]}


class RemoteNetwork:
    """Workers already running on real machines (``python -m harness.worker --control tcp:HOST:PORT``).

    Stands where a :class:`Topology` would: the network is real, so nothing is shaped or dilated, and the backend
    recorded is ``real``.
    """

    backend = "real"
    tdf = 1.0
    failure = None
    local = False

    def __init__(self, controls: Mapping[str, str]) -> None:
        if bad := bad_addresses(controls):
            raise ValueError(f"runtime.remote addresses must look like tcp:HOST:PORT, got {bad}")
        self.controls = {e: str(a) for e, a in controls.items()}

    def __enter__(self) -> "RemoteNetwork":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def control(self, endpoint: str) -> tuple[str, int]:
        if endpoint not in self.controls:
            raise KeyError(f"runtime.remote has no address for endpoint {endpoint!r}; it names {list(self.controls)}")
        host, port = self.controls[endpoint][4:].rsplit(":", 1)
        return host, int(port)

    def address(self, endpoint: str, peer: str) -> str:
        return self.control(endpoint)[0]

    def pacer_config(self, a: str, b: str, seed: int = 0) -> dict[str, Any]:
        return {"rate_mbps": None, "delay_ms": 0.0, "jitter_ms": 0.0, "seed": seed}

    def record(self) -> dict[str, Any]:
        return {"backend": self.backend, "controls": self.controls}

    def set_rate(self, a: str, b: str, mbps: float) -> None:
        raise RuntimeError("a real network's rate cannot be set by the harness")
