"""A model's weights made once per machine: the controller builds the model, its local workers map the bytes.

Building a model with seeded random weights costs its initialisation in every process that builds it: VGG-16
draws 138 M numbers twice over (the layers' own initialisation, then torchvision's), ~2.4 s of CPU, in every worker
of every job. The controller builds the model anyway; it writes the state into an anonymous memory file
(``memfd``: no path, gone with its last descriptor, nothing left behind) that the workers it starts on this
machine inherit as a descriptor (``WEIGHTS_FD_ENV`` names it). A worker builds the model's structure without
initialising it (torch's meta device) and maps the tensors, copy-on-write. The file says which spec it holds, and
any mismatch or failure (a model that cannot be built on the meta device, keys that differ) falls back to
building from the seed. Nothing here crosses a network: a board's worker never has the descriptor and builds from
the seed, as before.
"""

from __future__ import annotations

import itertools
import json
import os

import torch
from torch import nn

from harness.model.models import ModelSpec, import_target

WEIGHTS_FD_ENV = "SPLITBENCH_WEIGHTS_FD"  # the descriptor a local worker inherits; never set on a board


def spec_key(spec: ModelSpec) -> str:
    """What the weights depend on: the spec, and the library versions that draw them."""
    import torchvision
    return json.dumps({"spec": spec.to_dict(), "torch": torch.__version__, "torchvision": torchvision.__version__},
                      sort_keys=True)


def write_shared(spec: ModelSpec, module: nn.Module) -> int:
    """A memory file holding ``module``'s state for ``spec``; returns its descriptor (the caller closes it)."""
    fd = os.memfd_create(f"splitbench-weights-{spec.name}", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as f:
            torch.save({"spec": spec_key(spec), "state": module.state_dict()}, f)
    except BaseException:
        os.close(fd)
        raise
    return fd


def load_shared(spec: ModelSpec, fd: int) -> nn.Module | None:
    """The model for ``spec`` with the weights in memory file ``fd``, in eval mode; None where the file holds
    another spec or the model cannot be made that way (then build it from the seed)."""
    # Only ever the memory file this machine's controller wrote and passed by descriptor (never bytes from a
    # network: a board drops the variable at start); weights_only admits tensors and plain containers, no code.
    try:
        saved = torch.load(f"/proc/self/fd/{fd}", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError, EOFError):
        return None
    if not isinstance(saved, dict) or saved.get("spec") != spec_key(spec):
        return None
    try:
        with torch.device("meta"):
            model = import_target(spec.target)(**spec.args)
        model.load_state_dict(saved["state"], strict=True, assign=True)
    except Exception:  # noqa: BLE001  (any model that will not be made this way is built from its seed instead)
        return None
    if not isinstance(model, nn.Module) or any(t.is_meta for t in itertools.chain(model.parameters(),
                                                                                  model.buffers())):
        return None  # a buffer the state does not hold (non-persistent): only a real build makes it
    return model.train(False)
