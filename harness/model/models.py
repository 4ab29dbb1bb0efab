"""Build a model and its input from a model spec, the same way in every process.

The controller, every worker and every test call :func:`build_model` with the same spec; nothing about the model
ever crosses the wire. Weights are random (no downloads here), drawn from the spec's seed. Batch-norm running
statistics are then calibrated on a seeded batch so that activations stay near unit scale even in 150-layer
residual networks; without that, random eval-mode networks grow activations to ~1e7 and absolute error checks
become meaningless.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from harness.model.images import natural_batch, normalise

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class ModelSpec:
    """What a process needs to rebuild the exact same model and input."""

    name: str
    target: str
    input_shape: tuple[int, ...]
    seed: int = 0
    args: dict[str, Any] = field(default_factory=dict)
    input: str = "random"  # "random": seeded noise; "natural": photographs (harness.model.images)

    @classmethod
    def from_config(cls, cfg: Any) -> "ModelSpec":
        """Accept a Hydra/OmegaConf model node or a plain dict (as sent to workers)."""
        get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
        target = get("_target_") or get("target")
        if target is None:  # e.g. conf/model/custom.yaml, whose mandatory _target_ the user has not set
            raise ModelBuildError(f"model {get('name')!r}: model._target_ is not set; name an importable factory, "
                                  "e.g. model._target_=mypackage.models.build")
        args = get("args") or {}
        if hasattr(args, "items"):
            args = {k: (list(v) if hasattr(v, "__iter__") and not isinstance(v, str) else v) for k, v in args.items()}
        return cls(
            name=str(get("name")),
            target=str(target),
            input_shape=tuple(int(d) for d in get("input_shape")),
            seed=int(get("seed", 0) or 0),
            args=dict(args),
            input=_input_kind(get("input")),
        )

    @classmethod
    def from_setup(cls, model: Any) -> "ModelSpec":
        """The spec as a worker receives it: exactly :meth:`to_dict`'s keys, the factory in ``target`` alone.

        Anything else is refused (a ``_target_`` beside ``target`` above all), so that the field a board checks
        against its allow-list is the one it builds from."""
        if not isinstance(model, dict):
            raise ModelBuildError(f"the setup's model must be an object, got {type(model).__name__}")
        if set(model) != SETUP_KEYS:
            raise ModelBuildError(f"the setup's model has keys {sorted(map(str, model))}; accepted: exactly "
                                  f"{sorted(SETUP_KEYS)} (the factory is named by 'target' alone)")
        shape, args = model["input_shape"], model["args"]
        if not (isinstance(shape, list) and 1 <= len(shape) <= 8
                and all(isinstance(d, int) and 0 < d <= 1 << 16 for d in shape)):
            raise ModelBuildError(f"the setup's model.input_shape must be 1 to 8 positive integers, "
                                  f"got {str(shape)[:200]}")
        if not (isinstance(model["name"], str) and isinstance(model["target"], str) and isinstance(model["seed"], int)
                and isinstance(args, dict)):
            raise ModelBuildError("the setup's model needs a string name and target, an integer seed and an args "
                                  "object")
        if model["input"] not in INPUTS:
            raise ModelBuildError(f"the setup's model.input {str(model['input'])[:40]!r} is not one of {list(INPUTS)}")
        return cls(name=model["name"], target=model["target"], input_shape=tuple(shape), seed=model["seed"],
                   args=dict(args), input=model["input"])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "input_shape": list(self.input_shape),
                "seed": self.seed, "args": dict(self.args), "input": self.input}


def _input_kind(value: Any) -> str:
    """A config's ``model.input``: 'auto' (resolved by the config from the codec before this) reads as noise."""
    return "random" if value in (None, "", "auto") else str(value)


SETUP_KEYS = frozenset({"name", "target", "input_shape", "seed", "args", "input"})
INPUTS = ("random", "natural")


class ModelBuildError(ValueError):
    """The model factory could not be imported or called."""


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    # Calibration must give bit-identical statistics in every process; one thread makes reductions deterministic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def make_input(spec: ModelSpec, index: int = 0) -> torch.Tensor:
    """The ``index``-th input of a run: deterministic from the spec's seed, or the photographs in turn."""
    if spec.input == "natural":
        return normalise(natural_batch(spec.input_shape, index))
    gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + index)
    return torch.randn(spec.input_shape, generator=gen)


def _calibrate_batch_norms(model: nn.Module, spec: ModelSpec) -> None:
    norms = [m for m in model.modules() if isinstance(m, _BATCH_NORMS)]
    if not norms:
        return
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batch
        bn.train()
    shape = (max(2, spec.input_shape[0]),) + tuple(spec.input_shape[1:])
    gen = torch.Generator().manual_seed(spec.seed + 7919)
    with torch.no_grad(), _single_thread():
        model(torch.randn(shape, generator=gen))
    for bn in norms:
        bn.train(False)  # eval mode


def import_target(target: str) -> Any:
    """The object a dotted path names (``torchvision.models.resnet18``): the longest importable module, then
    attributes. Raises ImportError naming the path."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as exc:
            if exc.name and not ".".join(parts[:cut]).startswith(exc.name):
                raise  # the module exists but one of its own imports is missing
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError as exc:
            raise ImportError(f"{target}: {exc}", name=".".join(parts[:cut + 1])) from exc
        return obj
    raise ImportError(f"no importable module in {target!r}", name=parts[0])


def import_hint(target: str, exc: BaseException) -> str:
    """Which folder must be importable for ``target``: the one holding its top-level package (found near the working
    directory where it can be), or, when that package imports, the file it lacks."""
    missing = getattr(exc, "name", None) or target.split(".")[0]
    top = missing.split(".")[0]
    if "." in missing:
        try:
            package = importlib.import_module(top)
        except ImportError:
            package = None
        if package is not None:
            where = Path(next(iter(getattr(package, "__path__", [])), "") or getattr(package, "__file__", "") or top)
            rest = missing.split(".", 1)[1].replace(".", "/")
            return f"{top} is imported from {where}, which has no {rest}.py: is {missing} spelled right and saved there?"
    here = Path.cwd()
    found = sorted({p.parent for pattern in (f"{top}/__init__.py", f"*/{top}/__init__.py", f"*/*/{top}/__init__.py",
                                              f"{top}.py", f"*/{top}.py", f"*/*/{top}.py")
                    for p in here.glob(pattern)})
    found = [p.parent if p.name == top else p for p in found]
    now = os.environ.get("PYTHONPATH", "")
    if found:
        return (f"the folder {found[0]} (which holds {top}) must be importable: "
                f"export PYTHONPATH={found[0]}{':' + now if now else ''}")
    return (f"the folder that holds the package or module {top!r} must be importable: add it to PYTHONPATH "
            f"(now {now!r}) on this machine and on every worker")


def build_model(spec: ModelSpec) -> nn.Module:
    """Call ``spec.target(**spec.args)`` with seeded random weights, in eval mode, calibrated."""
    torch.manual_seed(spec.seed)
    try:
        factory = import_target(spec.target)
    except ImportError as exc:
        raise ModelBuildError(f"model {spec.name!r}: cannot import model._target_={spec.target}: {exc}; "
                              f"{import_hint(spec.target, exc)}") from exc
    try:
        model = factory(**spec.args)
    except Exception as exc:  # a call that fails: name the model, keep the cause
        raise ModelBuildError(
            f"model {spec.name!r}: cannot build {spec.target}({spec.args}): {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelBuildError(
            f"model {spec.name!r}: factory {spec.target} returned {type(model).__name__}, expected torch.nn.Module")
    model.train(False)  # eval mode: dropout off, batch norms use their running statistics
    try:
        _calibrate_batch_norms(model, spec)
    except Exception as exc:  # the first run of the model on an input of spec.input_shape
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelBuildError(
            f"model.input_shape={list(spec.input_shape)} does not fit model {spec.name!r}: a trial run on that input "
            f"failed ({type(exc).__name__}: {first}); set model.input_shape to the shape the model takes, batch "
            "first (e.g. [1, 3, 224, 224] for an ImageNet classifier)") from exc
    return model
