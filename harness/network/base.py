"""What the controller needs of a network, whether the harness builds it or it is real."""

from __future__ import annotations

from typing import Any, Protocol


class Network(Protocol):
    """A context manager over the endpoints' network: :class:`~harness.network.topology.Topology` (namespaces and
    shaped links on this machine) or :class:`~harness.network.remote.RemoteNetwork` (real boards).

    ``local`` says the endpoints run here: the harness spawns their workers and shapes, dilates and probes their
    links. Otherwise workers already run on their boards and answer at ``control(endpoint)``.
    """

    backend: str | None
    tdf: float
    failure: str | None
    local: bool

    def __enter__(self) -> "Network": ...

    def __exit__(self, *exc: Any) -> None: ...

    def address(self, endpoint: str, peer: str) -> str:
        """The IP of ``endpoint`` on its link to ``peer``."""

    def pacer_config(self, a: str, b: str, seed: int = 0) -> dict[str, Any]:
        """The sender-side shaping (``Pacer`` settings) for a -> b."""

    def set_rate(self, a: str, b: str, mbps: float) -> None:
        """Change a link's bandwidth (undilated Mbit/s) while it runs."""

    def record(self) -> dict[str, Any]:
        """What a run records about the network."""
