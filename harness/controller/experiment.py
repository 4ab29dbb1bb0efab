"""One experiment, typed: what ``harness.config.resolve`` makes of the Hydra config, once, at the top.

Everything below the entry point receives these objects; nothing below it reads the raw config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hardware.topology import Hardware
from harness.analysis.labels import model_name
from harness.model.codecs import Codecs
from harness.model.models import ModelSpec
from harness.network.link import LinkSpec
from partitioners.base import Partitioner


@dataclass(frozen=True)
class Link:
    """The link of every device-server or host-secondary pair: its facts, and how the harness plays it."""

    name: str
    spec: LinkSpec
    trace: str | None = None  # a bandwidth trace (CSV) for scenario=dynamic
    compensate_headers: bool = True  # raise the kernel rate so that TCP payload gets the configured bandwidth


# How the dynamic scenario estimates the link before each decision (harness.controller.dynamic says how each works).
ESTIMATORS = ("probe", "smoothed", "last", "oracle", "fixed")


@dataclass(frozen=True)
class Scenario:
    """How inferences are issued (after MLPerf LoadGen's scenarios). The defaults here are the config's
    (``harness.config`` makes the scenario group's schema from this class); a scenario YAML holds only what differs."""

    name: str
    warmup: int = 1
    inferences: int = 5
    in_flight: int = 1
    deadline_ms: float | None = None
    estimator: str = "probe"  # dynamic: how the bandwidth is estimated before each decision (ESTIMATORS)
    interval_ms: float = 500.0  # dynamic: emulated time between inference arrivals

    @property
    def total(self) -> int:
        return self.warmup + self.inferences


@dataclass(frozen=True)
class Runtime:
    """How the harness runs the workers. The fields and defaults here are the config's, written once
    (``harness.config`` makes the ``runtime`` node's schema from this class)."""

    threads_per_worker: int = 1  # torch threads in each worker (the local profile is measured with the same count)
    tdf: float | None = None  # None (runtime.tdf=auto): the workers time their own parts after the warm-up
    tdf_margin: float = 1.5  # the warm-up's TDF: headroom over the slowest part's local/emulated time ratio
    overrun_tolerance_pct: float = 5.0  # overruns delaying an inference by more than this: repeat it
    max_repeats: int = 3  # measured inferences a run may repeat at a raised TDF before it is INVALID
    timeout_s: float = 900.0  # a run that takes longer is recorded FAILED
    base_port: int = 47000  # data ports of the workers (one per endpoint)
    max_payload_mb: int = 1024  # frames announcing more are rejected before any allocation
    backend: str = "auto"  # link shaping: auto (probe: netem, tbf, htb, userspace) or one of them
    remote: dict[str, str] | None = None  # endpoint -> tcp:HOST:PORT of workers running on real boards
    token: dict[str, str] | None = None  # each board's secret (read from the environment or a file; never recorded)
    compute_device: str = "auto"  # auto | cpu | cuda: what the workers compute on
    link_timeout_s: float = 60.0  # a data link that makes no progress this long fails the run (0: never)
    reuse: bool = True  # in a sweep: keep topology, workers and model across jobs (harness.controller.session)
    max_real_minutes: float | None = 10.0  # a job predicted to take longer here is recorded predicted only
    retries: int = 2  # an INVALID emulation is run again, each time at a fixed TDF, up to this many times
    retry_tdf_factor: float = 1.5  # a retry runs at this times the TDF whose budgets real compute overran

    @property
    def max_payload(self) -> int:
        return self.max_payload_mb << 20


@dataclass(frozen=True)
class Experiment:
    """One job: a model on a hardware topology over a link, decided by a method, run in a scenario."""

    name: str  # the MLflow experiment it is recorded in
    mode: str
    model: ModelSpec
    hardware: Hardware
    link: Link
    method: Partitioner
    scenario: Scenario
    codecs: Codecs = field(default_factory=Codecs)  # what crosses a cut: the input's codec, the features'
    runtime: Runtime = field(default_factory=Runtime)
    profile_out: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config, as recorded

    @property
    def run_name(self) -> str:
        model = model_name(self.model.name, self.model.target)  # a command-line model by its factory, not "custom"
        return f"{self.method.name}-{model}-{self.hardware.name}-{self.link.spec.bandwidth_mbps:g}mbps"
