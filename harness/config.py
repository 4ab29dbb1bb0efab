"""The one place that reads the raw Hydra config: its structured schema, the checks that stop a bad experiment
before any work is done, and :func:`resolve`, which turns it into a typed :class:`Experiment`.

OmegaConf enforces the keys and types of the schema below (``link.bandwidth_mbps=abc`` and a misspelled key in any YAML
or override fail at composition); the polymorphic nodes (profiles, methods) are checked against the class their
``_target_`` names. :func:`validate` checks the values and the combinations, naming the bad value and the accepted
ones; :func:`explain` turns any configuration error into one line, and :func:`main_with_one_line_errors` prints it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from hardware.profiles import Profile
from hardware.topology import MAX_SERVERS, Hardware
from harness.analysis.labels import REPORTS
from harness.controller.experiment import ESTIMATORS, Experiment, Link, Runtime, Scenario
from harness.controller.traces import load_trace
from harness.model.graph import TraceFailure
from harness.model.codecs import FEATURE_CODECS, INPUT_CODECS, Codecs
from harness.model.models import INPUTS, ModelBuildError, ModelSpec, import_hint, import_target
from harness.network.link import LinkSpec
from harness.network.remote import bad_addresses
from harness.worker.auth import MAKE_SECRET, secret_problem
from partitioners.base import Partitioner

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
    input: str = "auto"  # auto: photographs when codec.input compresses, else seeded noise; random; natural


MODEL_INPUTS = ("auto", *INPUTS)


@dataclass
class CodecConfig:
    input: str = "raw"  # how the device sends the model's input (INPUT_CODECS)
    features: str = "raw"  # how any other tensor crosses a cut (FEATURE_CODECS)
    jpeg_quality: int = 90


@dataclass
class LinkConfig:
    name: str = "custom"
    bandwidth_mbps: float = MISSING
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    compensate_headers: bool = True
    trace: Optional[str] = None


def schema_of(typed: type, name: str, replace: dict[str, tuple[Any, Any]] | None = None,
              drop: tuple[str, ...] = ()) -> type:
    """A Hydra schema with ``typed``'s fields, types and defaults, so that each is written once, there; ``replace``
    gives a field the config spells otherwise (name -> type, default; a new name is added), ``drop`` leaves a field
    out of the config. A field without a default is MISSING (the group's YAML must set it)."""
    replace, hints = dict(replace or {}), typing.get_type_hints(typed)
    fields = []
    for f in dataclasses.fields(typed):
        if f.name in drop:
            continue
        kind, default = replace.pop(f.name, (hints[f.name], f.default))
        fields.append((f.name, kind, MISSING if default is dataclasses.MISSING else default))
    fields += [(key, kind, default) for key, (kind, default) in replace.items()]
    return dataclasses.make_dataclass(name, fields)


# The scenario group's schema: Scenario's fields and defaults.
ScenarioConfig = schema_of(Scenario, "ScenarioConfig")


@dataclass
class HardwareConfig:
    name: str = MISSING
    topology: str = MISSING  # pair: device + server; star: num_servers copies of server
    num_servers: int = 2
    device: Any = None  # a profile (conf/profile/), pair only; checked against its _target_ class
    server: Any = MISSING


DEFAULT_EXPERIMENT = "own_runs"  # the user's own runs; presets name theirs (cic_paper, ...)


@dataclass
class ExperimentConfig:
    name: str = DEFAULT_EXPERIMENT


# The runtime node's schema: Runtime's fields and defaults, except that ``tdf`` reads ``auto`` as None, ``remote`` is
# checked by hand (endpoint -> tcp:HOST:PORT of workers already running on real boards), and the boards' secrets are
# read from ``token_file`` or the environment, never from the config.
RuntimeConfig = schema_of(Runtime, "RuntimeConfig", replace={"tdf": (Any, "auto"), "remote": (Any, None),
                                                             "token_file": (Optional[str], None)}, drop=("token",))


# The runtime options the typed Runtime takes as they are written (the rest: tdf, remote, token_file/token).
SHARED_RUNTIME = tuple(f.name for f in dataclasses.fields(RuntimeConfig)
                       if f.name not in ("tdf", "remote", "token_file"))


@dataclass
class SplitbenchConfig:
    mode: str = "run"
    model: ModelConfig = MISSING
    hardware: HardwareConfig = MISSING
    link: LinkConfig = MISSING
    method: Any = MISSING
    scenario: ScenarioConfig = MISSING
    codec: CodecConfig = field(default_factory=CodecConfig)
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


def chosen_file(group: str) -> str:
    """The YAML a config group was composed from (``conf/hardware/xavier_1080ti.yaml``), from Hydra's choices."""
    if not HydraConfig.initialized():
        return f"the {group.split('@')[-1]} config"
    runtime = HydraConfig.get().runtime
    choice = runtime.choices.get(group)
    for source in runtime.config_sources if choice is not None else []:
        root = Path(str(source.path))
        path = root / group.split("@")[0] / f"{choice}.yaml"
        if source.schema == "file" and path.exists():
            return str(path.relative_to(root.parent))
    return f"{group.split('@')[0]}={choice}"


def load_target(target: Any, what: str, where: str) -> Any:
    """The class or function a ``_target_`` names; an import failure says which folder must be importable."""
    if not target or target == "???":
        raise ConfigError(f"{what}: _target_ is not set in {where}; name an importable class, e.g. "
                          "_target_: mypackage.module.MyClass")
    try:
        return import_target(str(target))
    except ImportError as exc:
        raise ConfigError(f"{what}: cannot import _target_ {target} ({where}): {exc}; {import_hint(str(target), exc)}"
                          ) from exc


def accepted_options(cls: Any) -> tuple[list[str], bool]:
    """The keyword options a constructor takes, and whether it takes any (``**kwargs``)."""
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls) if f.init], False
    params = inspect.signature(cls).parameters.values()
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def check_keys(node: DictConfig, accepted: list[str], where: str, what: str) -> None:
    """Refuse the first key of ``node`` that is not ``accepted``, naming the file and the accepted keys."""
    for key in node.keys():
        _require(key in accepted, f"unknown key {key!r} in {where} ({what}); accepted keys: {', '.join(accepted)}")


def method_class(cfg: DictConfig) -> type[Partitioner]:
    """The method class ``method._target_`` names, checked against the :class:`Partitioner` contract."""
    where = chosen_file("method")
    cls = load_target(cfg.method.get("_target_"), "method", where)
    _require(isinstance(cls, type) and issubclass(cls, Partitioner),
             f"method _target_ {cfg.method._target_} ({where}) is not a partitioners.base.Partitioner subclass")
    return cls


def method_kind(cfg: DictConfig) -> str:
    """``cut`` or ``spatial``, read from the method class named by ``method._target_``."""
    return method_class(cfg).kind


def name_method(cfg: DictConfig) -> None:
    """A method YAML may leave ``name`` out: the method is then named by its file (``method=half`` -> half)."""
    if not cfg.method.get("name"):
        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
        with open_dict(cfg.method):
            cfg.method.name = choices.get("method") or getattr(method_class(cfg), "name", None) or "method"


def build_method(cfg: DictConfig) -> Partitioner:
    """``cls(**options)``: every key of the method's YAML but ``_target_`` and ``name`` (see Partitioner)."""
    cls, where = method_class(cfg), chosen_file("method")
    accepted, any_key = accepted_options(cls)
    options = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items()
               if k not in ("_target_", "name")}
    if not any_key:
        check_keys(OmegaConf.create(options), ["_target_", "name", *accepted], where, f"method {cfg.method.name!r}")
    try:
        method = cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"method {cfg.method.name!r} ({where}): {exc}") from exc
    method.name = str(cfg.method.name)
    return method


def build_profile(node: DictConfig, slot: str) -> Profile:
    """A profile (``hardware.device``/``hardware.server``) after its keys are checked against its class."""
    where = chosen_file(f"profile@hardware.{slot}")
    cls = load_target(node.get("_target_"), f"hardware.{slot}", where)
    _require(isinstance(cls, type) and issubclass(cls, Profile),
             f"hardware.{slot}: _target_ {node._target_} ({where}) is not a hardware.profiles.Profile subclass")
    accepted, any_key = accepted_options(cls)
    if not any_key:
        check_keys(node, ["_target_", *accepted], where, f"a {cls.__name__}")
    try:
        return instantiate(node)
    except Exception as exc:  # the profile's own checks (e.g. an efficiency outside (0, 1])
        cause = exc.__cause__ or exc
        raise ConfigError(f"hardware.{slot} ({where}): {cause}") from exc


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first value that cannot run."""
    _require(cfg.mode in MODES, f"mode={cfg.mode!r} is not one of {list(MODES)}")
    _require(cfg.experiment.name != REPORTS, f"experiment.name={REPORTS!r} holds the report's figures (make report), "
                                             "never runs: name your experiment otherwise")
    link, scenario, runtime, hw = cfg.link, cfg.scenario, cfg.runtime, cfg.hardware
    try:
        LinkSpec.from_config(link)  # a link's facts are checked once, where they are kept
    except ValueError as exc:
        raise ConfigError(f"link.{exc}") from None
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
    if link.trace is not None:
        try:
            load_trace(link.trace)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"link.trace: {exc}") from None
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
    _require(runtime.retries >= 0, f"runtime.retries must be >= 0, got {runtime.retries}")
    _require(runtime.retry_tdf_factor > 1, f"runtime.retry_tdf_factor must be > 1, got {runtime.retry_tdf_factor}")
    if runtime.remote:
        _require(scenario.name != "dynamic", "scenario=dynamic shapes the link to a trace; runtime.remote runs over a "
                                             "real network that the harness cannot shape")
        read_secrets(runtime.token_file, list(runtime.remote))
    _require(hw.topology in ("pair", "star"), f"hardware.topology={hw.topology!r} is not one of ['pair', 'star']")
    if hw.topology == "star":
        _require(2 <= hw.num_servers <= MAX_SERVERS,
                 f"hardware.num_servers must be in 2..{MAX_SERVERS}, got {hw.num_servers}")
    _require(len(cfg.model.input_shape) >= 2 and all(d > 0 for d in cfg.model.input_shape),
             f"model.input_shape must be positive dimensions [N, C, H, W, ...], got {list(cfg.model.input_shape)}")
    kind = method_kind(cfg)
    _require(kind in ("cut", "spatial"), f"method {cfg.method.name!r} has kind {kind!r}; expected 'cut' or 'spatial'")
    validate_codec(cfg, kind)
    if kind == "spatial":
        _require(scenario.name != "dynamic",
                 f"method {cfg.method.name!r} cannot follow a bandwidth trace: scenario=dynamic re-decides cut plans "
                 "only; accepted scenarios for spatial methods: single_stream, stream")
        _require(hw.topology == "star",
                 f"method {cfg.method.name!r} splits feature maps across edge servers and needs a star topology; "
                 f"hardware {hw.name!r} is a {hw.topology}. Accepted: hardware=4x_1080ti, 4x_xavier or 4x_local")
    if runtime.remote:
        _require(not (bad := bad_addresses(runtime.remote)),
                 f"runtime.remote addresses must look like tcp:HOST:PORT, got {bad}")


def validate_codec(cfg: DictConfig, kind: str) -> None:
    """The codecs and the input they are measured on: an image codec needs photographs of one RGB image."""
    codec, model = cfg.codec, cfg.model
    _require(codec.input in INPUT_CODECS, f"codec.input={codec.input!r} is not one of {list(INPUT_CODECS)}")
    _require(codec.features in FEATURE_CODECS,
             f"codec.features={codec.features!r} is not one of {list(FEATURE_CODECS)}")
    _require(1 <= codec.jpeg_quality <= 100, f"codec.jpeg_quality must be in 1..100, got {codec.jpeg_quality}")
    _require(model.input in MODEL_INPUTS, f"model.input={model.input!r} is not one of {list(MODEL_INPUTS)}")
    shape = list(model.input_shape)
    if model.input == "natural" or codec.input != "raw":
        _require(len(shape) == 4 and shape[1] == 3,
                 f"model.input_shape={shape} is no RGB image [N, 3, H, W]: natural inputs and image codecs need one "
                 "(codec.input=raw and model.input=random take any shape)")
    _require(codec.input == "raw" or model.input != "random",
             f"codec.input={codec.input} compresses images and is measured on photographs, not noise: leave "
             "model.input=auto (or natural)")
    _require(codec.input not in ("png", "jpeg") or shape[0] == 1,
             f"codec.input={codec.input} encodes one image; model.input_shape={shape} holds {shape[0]}")
    _require(kind == "cut" or (codec.input == "raw" and codec.features == "raw"),
             f"method {cfg.method.name!r} is spatial: its row bands cross as float32; codecs apply to device/server "
             "cuts (accepted here: codec.input=raw codec.features=raw)")


def resolve_model_input(cfg: DictConfig) -> None:
    """``model.input: auto`` means photographs where the input codec compresses, else seeded noise."""
    if cfg.model.input == "auto":
        cfg.model.input = "natural" if cfg.codec.input != "raw" else "random"


def resolve_objective(cfg: DictConfig) -> None:
    """``method.objective: auto`` means latency, except in the stream scenario, where throughput matters."""
    if cfg.method.get("objective") == "auto":
        cfg.method.objective = "throughput" if cfg.scenario.name == "stream" else "latency"


SECRET_KEYS = ("token", "secret")
SECRET_ENV = "SPLITBENCH_TOKEN"


def read_secrets(token_file: str | None, endpoints: list[str]) -> dict[str, str]:
    """Each board's secret, from ``runtime.token_file`` or the environment: never from the config itself, so that it
    cannot reach Hydra's output folder, MLflow params or ``config.yaml``.

    The file holds one secret for every board, or one line per board, ``ENDPOINT=SECRET`` (``*=SECRET`` for the
    rest; ``#`` starts a comment). Without a file: ``$SPLITBENCH_TOKEN_<ENDPOINT>`` (upper case) for one board,
    ``$SPLITBENCH_TOKEN`` for the rest. A secret shorter than 16 bytes is refused, naming the board, not the secret.
    """
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                lines = [line.strip() for line in f.read().splitlines()
                         if line.strip() and not line.strip().startswith("#")]
        except OSError as exc:
            raise ConfigError(f"runtime.token_file={token_file!r} cannot be read: {exc.strerror}") from None
        pairs = [line.split("=", 1) for line in lines]
        named = {pair[0].strip(): pair[1].strip() for pair in pairs
                 if len(pair) == 2 and pair[0].strip() in [*endpoints, "*"]}
        if len(lines) == 1 and not named:
            named = {"*": lines[0]}
        _require(len(named) == len(lines), f"runtime.token_file={token_file!r} must hold one secret, or one line "
                                           f"per board: ENDPOINT=SECRET with ENDPOINT one of {[*endpoints, '*']}")
        where = f"runtime.token_file={token_file!r}"
    else:
        named = {e: os.environ[f"{SECRET_ENV}_{e.upper()}"] for e in endpoints
                 if os.environ.get(f"{SECRET_ENV}_{e.upper()}")}
        named["*"] = os.environ.get(SECRET_ENV, "")
        where = f"${SECRET_ENV}_<ENDPOINT> / ${SECRET_ENV}"
    secrets = {e: named.get(e, named.get("*", "")) for e in endpoints}
    for endpoint, secret in secrets.items():
        problem = secret_problem(secret)
        _require(problem is None, f"runtime.remote: the secret for board {endpoint!r} ({where}) is not usable: "
                                  f"{problem}. Make one with: {MAKE_SECRET}")
    return secrets


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
        _require(cfg.get("device") is not None,
                 f"hardware {cfg.name!r} ({chosen_file('hardware')}) is a pair and needs a device profile: "
                 "defaults: [/profile@device: <a conf/profile/ name>]")
        return Hardware.pair(cfg.name, build_profile(cfg.device, "device"), build_profile(cfg.server, "server"))
    return Hardware.star(cfg.name, build_profile(cfg.server, "server"), int(cfg.num_servers))


def resolve(cfg: DictConfig) -> Experiment:
    """Validate ``cfg`` and build the typed experiment everything below the entry point receives."""
    cfg = cfg.copy()
    resolve_objective(cfg)
    name_method(cfg)
    validate(cfg)
    resolve_model_input(cfg)
    runtime = cfg.runtime
    return Experiment(
        name=str(cfg.experiment.name),
        mode=str(cfg.mode),
        model=ModelSpec.from_config(cfg.model),
        hardware=build_hardware(cfg.hardware),
        link=Link(name=str(cfg.link.name), spec=LinkSpec.from_config(cfg.link), trace=cfg.link.trace,
                  compensate_headers=bool(cfg.link.compensate_headers)),
        method=build_method(cfg),
        scenario=Scenario(**OmegaConf.to_container(cfg.scenario)),
        codecs=Codecs.of(str(cfg.codec.input), str(cfg.codec.features), int(cfg.codec.jpeg_quality)),
        runtime=Runtime(
            **{name: runtime[name] for name in SHARED_RUNTIME},
            tdf=None if runtime.tdf == "auto" else float(runtime.tdf),
            remote={str(e): str(a) for e, a in runtime.remote.items()} if runtime.remote else None,
            token=read_secrets(runtime.token_file, list(runtime.remote)) if runtime.remote else None),
        profile_out=cfg.profile_out,
        config=redacted(OmegaConf.to_container(cfg, resolve=True)))


# One-line configuration errors -----------------------------------------------------------------------------------

CONFIG_ERRORS = (ConfigError, ModelBuildError, TraceFailure, HydraException, OmegaConfBaseException)


def _schema_keys(object_type: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(object_type)] if dataclasses.is_dataclass(object_type) else []


def explain(exc: BaseException) -> str | None:
    """One line for a configuration error (what, the bad value, the accepted values or the fix); None for anything
    else, which is a harness bug and keeps its traceback."""
    if not isinstance(exc, CONFIG_ERRORS):
        return None
    message = str(exc)
    key_error = next((e for e in _chain(exc) if getattr(e, "key", None) and "not in" in str(e)), None)
    if key_error is not None:  # a misspelled or unknown key: name it, the file or override, and the schema's keys
        origin = re.match(r"In '([^']+)'", message)
        where = (f"conf/{origin.group(1)}.yaml" if origin else
                 "the command line" if "override" in message.lower() else "the config")
        accepted = _schema_keys(getattr(key_error, "object_type", None))
        full_key = getattr(key_error, "full_key", None) or key_error.key
        return (f"unknown key {full_key!r} in {where}" +
                (f"; accepted keys: {', '.join(accepted)}" if accepted else
                 f"; a key the method or profile class takes but its YAML leaves out is added with +{full_key}=..."))
    lines = [line.strip() for line in message.splitlines() if line.strip()
             and not line.strip().startswith(("reference_type", "object_type", "Set the environment variable"))]
    return " ".join(lines)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


_user_full_error: bool | None = None  # what the user asked for, read before main_with_one_line_errors sets it


def one_line(exc: Exception) -> None:
    """Exit with ``exc``'s one line if it is a configuration error (and HYDRA_FULL_ERROR=1 was not asked for)."""
    line = explain(exc)
    full = _user_full_error if _user_full_error is not None else os.environ.get("HYDRA_FULL_ERROR") == "1"
    if line is not None and not full:
        print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Inside a Hydra job: a configuration error ends the process with one line (SystemExit passes through
    Hydra, which would otherwise print its own line about the job before re-raising)."""
    try:
        yield
    except Exception as exc:
        one_line(exc)
        raise


def main_with_one_line_errors(main: Callable[[], Any]) -> None:
    """Run a Hydra main; a configuration error (composition included) prints one line and exits 2.
    ``HYDRA_FULL_ERROR=1`` keeps the traceback."""
    global _user_full_error
    _user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own trimmed traceback
    try:
        main()
    except Exception as exc:
        one_line(exc)
        raise
