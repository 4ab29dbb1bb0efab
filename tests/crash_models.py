"""Model factories that misbehave on purpose, for failure-path tests."""

from __future__ import annotations

import os

from torch import nn


def crash_in_worker() -> nn.Module:
    """Builds fine in the controller, dies inside every worker: a stand-in for an endpoint that crashes."""
    if os.environ.get("SPLITBENCH_WORKER"):
        os._exit(17)
    # input_shape [1, 3, 32, 32]
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32 * 32, 10))
