"""A progress bar over the jobs of a sweep (``python run.py -m ...``) and its summary at the end, as a Hydra
callback."""

from __future__ import annotations

import math
import os
import sys
import uuid
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from tqdm import tqdm

LAUNCH_ENV = "SPLITBENCH_LAUNCH"  # the id every run of one sweep is tagged with (tag ``launch``)


def sweep_size(config: DictConfig) -> int | None:
    """How many jobs the basic sweeper will run: the product of the sweep choices in ``hydra.sweeper.params`` and
    on the command line, where, as in the sweeper, the command line wins for a key both name (None when a sweep
    cannot be counted, e.g. a range without a step)."""
    params = config.hydra.sweeper.get("params") or {}
    overrides = [f"{key}={value}" for key, value in params.items()] + list(config.hydra.overrides.task)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        sizes = {o.get_key_element(): len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
                 for o in parsed}
    except Exception:  # an unusual sweep syntax: show a bar without a total rather than fail the sweep
        return None
    return math.prod(sizes.values())


class SweepProgress(Callback):
    """One tick per finished job (the per-inference bar of each run is drawn below it); at the end, the table of
    what the sweep's jobs found, read back from MLflow by the sweep's launch id (launchers that run jobs elsewhere
    pass it on: see conf/hydra/launcher/ray_cluster.yaml)."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.total: int | None = None
        self.done = 0
        self.sweeping = False  # on_job_end also ends a single run's job: only a sweep counts

    def __getstate__(self) -> dict[str, Any]:
        # launchers that run jobs elsewhere (Ray) pickle the callbacks with the job; the bar stays with the driver
        return {**self.__dict__, "bar": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[LAUNCH_ENV] = uuid.uuid4().hex
        self.total, self.done, self.sweeping = sweep_size(config), 0, True
        if sys.stderr.isatty():  # in a log file a bar's carriage returns and escape codes garble it: plain lines
            self.bar = tqdm(total=self.total, desc="sweep", unit="job", position=1, leave=True)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.sweeping:
            print(f"sweep: {self.done}/{self.total if self.total is not None else '?'} jobs done", file=sys.stderr,
                  flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
        if config.get("mode") in ("run", "predict") and LAUNCH_ENV in os.environ:
            from harness.controller.summary import summary  # MLflow only when a sweep ends, not for --help

            print(summary(os.environ.pop(LAUNCH_ENV)), flush=True)
