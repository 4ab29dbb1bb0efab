"""splitbench entry point: `python run.py [group=option ...]`, or `python run.py -m ...` to sweep.

Composes the Hydra config under conf/, runs one experiment (decide a plan, run it as real split inference over
shaped links) and records it in MLflow. See README.md.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness.config import register

register()


def refuse_secret_overrides(argv: list[str]) -> None:
    """A secret on the command line would land in Hydra's output folder (overrides.yaml) before any check runs."""
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+~")
        if "=" in arg and key.split(".")[-1].lower() in ("token", "secret"):
            sys.exit(f"{key}=... is not accepted: a secret given as config is recorded (Hydra's output folder, "
                     "MLflow). Set $SPLITBENCH_TOKEN or runtime.token_file=PATH")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from harness.config import resolve  # after Hydra parsed the command line: fast --help and errors
    from harness.controller.pipeline import run_job

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    metrics = run_job(resolve(cfg), multirun=multirun)
    return metrics.get("latency_ms")


if __name__ == "__main__":
    refuse_secret_overrides(sys.argv[1:])
    main()
