"""Which profile each endpoint of an experiment runs: a device/server pair, or a star of N edge servers."""

from __future__ import annotations

from dataclasses import dataclass

from harness.model.graph import ModelGraph
from hardware.profiles import Profile

TOPOLOGIES = ("pair", "star")
MAX_SERVERS = 4  # the largest star the papers measured (HALP: N = 2..4)


@dataclass
class Hardware:
    """Endpoints and their profiles. ``pair``: ``device`` and ``server``; ``star``: host ``es0`` and ``es1..``."""

    name: str
    topology: str
    endpoints: dict[str, Profile]

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"hardware {self.name!r}: topology {self.topology!r} is not one of {TOPOLOGIES}")

    @classmethod
    def pair(cls, name: str, device: Profile, server: Profile) -> "Hardware":
        return cls(name=name, topology="pair", endpoints={"device": device, "server": server})

    @classmethod
    def star(cls, name: str, server: Profile, num_servers: int) -> "Hardware":
        if not 2 <= num_servers <= MAX_SERVERS:
            raise ValueError(f"hardware {name!r}: num_servers must be in 2..{MAX_SERVERS}, got {num_servers}")
        return cls(name=name, topology="star", endpoints={f"es{i}": server for i in range(num_servers)})

    @property
    def cut_roles(self) -> tuple[str, str]:
        """The endpoints a device/server method runs on: the pair itself, or the host and one secondary."""
        return ("device", "server") if self.topology == "pair" else ("es0", "es1")

    def node_ms(self, graph: ModelGraph) -> dict[str, dict[str, float]]:
        """Per-endpoint, per-node milliseconds; each distinct profile is evaluated once."""
        by_profile: dict[int, dict[str, float]] = {}
        out = {}
        for endpoint, profile in self.endpoints.items():
            if id(profile) not in by_profile:
                by_profile[id(profile)] = profile.node_ms(graph)
            out[endpoint] = by_profile[id(profile)]
        return out


    def whole_model_metrics(self, graph: ModelGraph, node_ms: dict[str, dict[str, float]]) -> dict[str, float]:
        """Per endpoint, the profile's whole model (its node times' sum) and, where the profile was measured on
        that processor, how far it lies from the whole model's real time measured there (in %); each distinct
        profile's table is read once, as in :meth:`node_ms`."""
        measured: dict[int, float | None] = {}
        out = {}
        for endpoint, profile in self.endpoints.items():
            total = sum(node_ms[endpoint].values())
            out[f"profile_whole_ms_{endpoint}"] = total
            if id(profile) not in measured:
                measured[id(profile)] = profile.measured_whole_ms(graph)
            if real := measured[id(profile)]:
                out[f"profile_whole_error_pct_{endpoint}"] = 100.0 * (total / real - 1.0)
        return out
