"""The one place that reads the raw Hydra config: its structured schema, the checks that stop a bad experiment
before any work is done, and :func:`resolve`, which turns it into a typed :class:`Experiment`.

OmegaConf enforces the types of the schema below (``link.bandwidth_mbps=abc`` fails at composition); :func:`validate`
checks the values and the combinations, naming the bad value and the accepted ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class, instantiate
from omegaconf import MISSING, DictConfig, OmegaConf

from hardware.topology import MAX_SERVERS, Hardware
from harness.controller.experiment import ESTIMATORS, Experiment, Link, Runtime, Scenario
from harness.model.models import ModelSpec
from harness.network.link import LinkSpec

MODES = ("run", "profile", "predict")
SCENARIOS = ("single_stream", "stream", "dynamic")
BACKENDS = ("auto", "netem", "tbf", "htb", "userspace")
COMPUTE_DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ModelConfig:
    name: str = MISSING
    _target_: str = MISSING
    input_shape: list[int] = MISSING
    seed: int = 0
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class LinkConfig:
    name: str = "custom"
    bandwidth_mbps: float = MISSING
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    compensate_headers: bool = True
    trace: Optional[str] = None


@dataclass
class ScenarioConfig:
    name: str = MISSING
    warmup: int = 1
    inferences: int = 5
    in_flight: int = 1
    deadline_ms: Optional[float] = None
    estimator: str = "probe"  # dynamic: how the runtime estimates bandwidth before each decision
    interval_ms: float = 500.0  # dynamic: emulated time between inference arrivals


@dataclass
class ExperimentConfig:
    name: str = "default"


@dataclass
class RuntimeConfig:
    threads_per_worker: int = 1
    tdf: Any = "auto"
    tdf_margin: float = 1.5
    overrun_tolerance_pct: float = 5.0
    max_repeats: int = 3
    timeout_s: float = 900.0
    base_port: int = 47000
    max_payload_mb: int = 1024
    backend: str = "auto"
    remote: Any = None  # endpoint -> tcp:HOST:PORT of workers already running on real boards
    token_file: Optional[str] = None  # a file holding their shared secret (else $SPLITBENCH_TOKEN); never the secret
    compute_device: str = "auto"  # what the workers compute on: auto (cuda when present), cpu, cuda
    link_timeout_s: float = 60.0  # a data link stalled this long mid-transfer fails the run (0: never)
    reuse: bool = True  # in a sweep: keep the topology, workers and model across jobs that allow it
    max_real_minutes: Optional[float] = 10.0  # a job predicted to take longer here is recorded skipped, not run


@dataclass
class SplitbenchConfig:
    mode: str = "run"
    model: ModelConfig = MISSING
    hardware: Any = MISSING
    link: LinkConfig = MISSING
    method: Any = MISSING
    scenario: ScenarioConfig = MISSING
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    profile_out: Optional[str] = None


def register() -> None:
    ConfigStore.instance().store(name="splitbench_schema", node=SplitbenchConfig)


class ConfigError(ValueError):
    """A config value that cannot run; the message names the value and what is accepted."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def method_kind(cfg: DictConfig) -> str:
    """``cut`` or ``spatial``, read from the method class named by ``method._target_``."""
    try:
        cls = get_class(cfg.method._target_)
    except Exception as exc:
        raise ConfigError(f"method {cfg.method.get('name')!r}: cannot import {cfg.method._target_}: {exc}") from exc
    return getattr(cls, "kind", "cut")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first value that cannot run."""
    _require(cfg.mode in MODES, f"mode={cfg.mode!r} is not one of {list(MODES)}")
    link, scenario, runtime, hw = cfg.link, cfg.scenario, cfg.runtime, cfg.hardware
    _require(link.bandwidth_mbps > 0, f"link.bandwidth_mbps must be > 0 Mbit/s, got {link.bandwidth_mbps}")
    _require(link.delay_ms >= 0, f"link.delay_ms must be >= 0, got {link.delay_ms}")
    _require(link.jitter_ms >= 0, f"link.jitter_ms must be >= 0, got {link.jitter_ms}")
    _require(0 <= link.loss_pct < 100, f"link.loss_pct must be in [0, 100), got {link.loss_pct}")
    _require(scenario.name in SCENARIOS, f"scenario {scenario.name!r} is not one of {list(SCENARIOS)}")
    _require(scenario.inferences >= 1, f"scenario.inferences must be >= 1, got {scenario.inferences}")
    _require(scenario.warmup >= 0, f"scenario.warmup must be >= 0, got {scenario.warmup}")
    _require(scenario.in_flight >= 1, f"scenario.in_flight must be >= 1, got {scenario.in_flight}")
    _require(scenario.interval_ms > 0, f"scenario.interval_ms must be > 0, got {scenario.interval_ms}")
    _require(scenario.estimator in ESTIMATORS,
             f"scenario.estimator={scenario.estimator!r} is not one of {list(ESTIMATORS)}")
    _require(scenario.deadline_ms is None or scenario.deadline_ms > 0,
             f"scenario.deadline_ms must be > 0 or null, got {scenario.deadline_ms}")
    _require(scenario.name != "dynamic" or link.trace is not None,
             "scenario=dynamic needs a bandwidth trace: set link.trace (e.g. link=trace_stepped)")
    _require(runtime.compute_device in COMPUTE_DEVICES,
             f"runtime.compute_device={runtime.compute_device!r} is not one of {list(COMPUTE_DEVICES)}")
    _require(runtime.link_timeout_s >= 0, f"runtime.link_timeout_s must be >= 0 (0: never), got {runtime.link_timeout_s}")
    _require(runtime.backend in BACKENDS, f"runtime.backend={runtime.backend!r} is not one of {list(BACKENDS)}")
    _require(runtime.tdf == "auto" or (isinstance(runtime.tdf, (int, float)) and runtime.tdf >= 1),
             f"runtime.tdf must be 'auto' or a number >= 1, got {runtime.tdf!r}")
    _require(runtime.max_repeats >= 0, f"runtime.max_repeats must be >= 0, got {runtime.max_repeats}")
    _require(runtime.max_real_minutes is None or runtime.max_real_minutes > 0,
             f"runtime.max_real_minutes must be > 0 or null (no budget), got {runtime.max_real_minutes}")
    _require(runtime.threads_per_worker >= 1, f"runtime.threads_per_worker must be >= 1, got {runtime.threads_per_worker}")
    if runtime.remote:
        _require(scenario.name != "dynamic", "scenario=dynamic shapes the link to a trace; runtime.remote runs over a "
                                             "real network that the harness cannot shape")
        _require(bool(read_secret(runtime.token_file)),
                 "runtime.remote needs the workers' shared secret: $SPLITBENCH_TOKEN or runtime.token_file=PATH "
                 f"(got {'an empty runtime.token_file' if runtime.token_file else 'neither'})")
    _require(hw.topology in ("pair", "star"), f"hardware.topology={hw.topology!r} is not one of ['pair', 'star']")
    if hw.topology == "star":
        _require(2 <= hw.num_servers <= MAX_SERVERS,
                 f"hardware.num_servers must be in 2..{MAX_SERVERS}, got {hw.num_servers}")
    _require(len(cfg.model.input_shape) >= 2 and all(d > 0 for d in cfg.model.input_shape),
             f"model.input_shape must be positive dimensions [N, C, H, W, ...], got {list(cfg.model.input_shape)}")
    kind = method_kind(cfg)
    _require(kind in ("cut", "spatial"), f"method {cfg.method.name!r} has kind {kind!r}; expected 'cut' or 'spatial'")
    if kind == "spatial":
        _require(scenario.name != "dynamic",
                 f"method {cfg.method.name!r} cannot follow a bandwidth trace: scenario=dynamic re-decides cut plans "
                 "only; accepted scenarios for spatial methods: single_stream, stream")
        _require(hw.topology == "star",
                 f"method {cfg.method.name!r} splits feature maps across edge servers and needs a star topology; "
                 f"hardware {hw.name!r} is a {hw.topology}. Accepted: hardware=4x_1080ti, 4x_xavier or 4x_local")
    if runtime.remote:
        bad = {e: a for e, a in runtime.remote.items() if not str(a).startswith("tcp:") or ":" not in str(a)[4:]}
        _require(not bad, f"runtime.remote addresses must look like tcp:HOST:PORT, got {bad}")


def resolve_objective(cfg: DictConfig) -> None:
    """``method.objective: auto`` means latency, except in the stream scenario, where throughput matters."""
    if cfg.method.get("objective") == "auto":
        cfg.method.objective = "throughput" if cfg.scenario.name == "stream" else "latency"


SECRET_KEYS = ("token", "secret")
SECRET_ENV = "SPLITBENCH_TOKEN"


def read_secret(token_file: str | None) -> str | None:
    """The boards' shared secret, from ``runtime.token_file`` or ``$SPLITBENCH_TOKEN``: never from the config
    itself, so that it cannot reach Hydra's output folder, MLflow params or ``config.yaml``."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError as exc:
            raise ConfigError(f"runtime.token_file={token_file!r} cannot be read: {exc.strerror}") from None
    return os.environ.get(SECRET_ENV) or None


def redacted(tree: Any) -> Any:
    """The config as it may be recorded: the value of any key naming a secret replaced."""
    if isinstance(tree, dict):
        return {k: ("<redacted>" if v is not None and any(s in str(k).lower() for s in SECRET_KEYS) else redacted(v))
                for k, v in tree.items()}
    if isinstance(tree, list):
        return [redacted(v) for v in tree]
    return tree


def build_hardware(cfg: DictConfig) -> Hardware:
    if cfg.topology == "pair":
        return Hardware.pair(cfg.name, instantiate(cfg.device), instantiate(cfg.server))
    return Hardware.star(cfg.name, instantiate(cfg.server), int(cfg.num_servers))


def resolve(cfg: DictConfig) -> Experiment:
    """Validate ``cfg`` and build the typed experiment everything below the entry point receives."""
    cfg = cfg.copy()
    resolve_objective(cfg)
    validate(cfg)
    runtime = cfg.runtime
    return Experiment(
        name=str(cfg.experiment.name),
        mode=str(cfg.mode),
        model=ModelSpec.from_config(cfg.model),
        hardware=build_hardware(cfg.hardware),
        link=Link(name=str(cfg.link.name), spec=LinkSpec.from_config(cfg.link), trace=cfg.link.trace,
                  compensate_headers=bool(cfg.link.compensate_headers)),
        method=instantiate(cfg.method),
        scenario=Scenario(**OmegaConf.to_container(cfg.scenario)),
        runtime=Runtime(
            threads_per_worker=int(runtime.threads_per_worker),
            tdf=None if runtime.tdf == "auto" else float(runtime.tdf), tdf_margin=float(runtime.tdf_margin),
            overrun_tolerance_pct=float(runtime.overrun_tolerance_pct), max_repeats=int(runtime.max_repeats),
            timeout_s=float(runtime.timeout_s),
            base_port=int(runtime.base_port), max_payload_mb=int(runtime.max_payload_mb), backend=str(runtime.backend),
            remote={str(e): str(a) for e, a in runtime.remote.items()} if runtime.remote else None,
            token=read_secret(runtime.token_file) if runtime.remote else None,
            compute_device=str(runtime.compute_device), link_timeout_s=float(runtime.link_timeout_s),
            reuse=bool(runtime.reuse),
            max_real_minutes=None if runtime.max_real_minutes is None else float(runtime.max_real_minutes)),
        profile_out=cfg.profile_out,
        config=redacted(OmegaConf.to_container(cfg, resolve=True)))
