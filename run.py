"""splitbench entry point: `python run.py [group=option ...]`, or `python run.py -m ...` to sweep.

Composes the Hydra config under conf/, runs one experiment (decide a plan, run it as real split inference over
shaped links), records it in MLflow and prints what it found. A configuration error prints one line
(HYDRA_FULL_ERROR=1 keeps the traceback). See README.md.
"""

from __future__ import annotations

import os
import sys
import uuid

# First, while this process is single-threaded (the kernel's condition; torch and MLflow start threads): without root,
# a user namespace of its own lets it build namespaces and kernel-shaped links all the same.
from harness.network.userns import enter_if_needed, reexec_if_undecided

if __name__ == "__main__":
    enter_if_needed()

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from harness.config import main_with_one_line_errors, one_line_errors, register  # noqa: E402
from harness.progress import LAUNCH_ENV  # noqa: E402

register()


SECRET_WORDS = ("token", "secret", "password", "passwd", "credential", "api_key")
PATH_KEYS = ("token_file",)  # the path of a file holding a secret, not a secret


def refuse_secret_overrides(argv: list[str]) -> None:
    """A secret on the command line would land in Hydra's output folder (overrides.yaml, and hydra.yaml for
    ``hydra.job.env_set``) before any check runs: refuse any key that names one, and any ``env_set`` entry."""
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+~")
        parts = [part.lower() for part in key.split(".")]
        named = any(word in part for part in parts if part not in PATH_KEYS for word in SECRET_WORDS)
        env_set = key.startswith("hydra.job.env_set") and any(word in arg.lower() for word in SECRET_WORDS)
        if "=" in arg and (named or env_set):
            sys.exit(f"{key}=... is not accepted: a secret given as config is recorded (Hydra's output folder, "
                     "MLflow). Set $SPLITBENCH_TOKEN or runtime.token_file=PATH")


USER_CONF_ENV = "SPLITBENCH_CONF"


def with_user_configs(argv: list[str]) -> list[str]:
    """``$SPLITBENCH_CONF`` (folders separated by ``:``) holds the user's own config groups (``model/``,
    ``method/``, ``hardware/``, ...), searched after ``conf/``: their YAML files live outside the clone, so runs are
    not marked ``-dirty`` for them (the resolved config is recorded either way). A ``hydra.searchpath`` given on the
    command line wins."""
    folders = [f for f in os.environ.get(USER_CONF_ENV, "").split(os.pathsep) if f]
    if not folders or any(arg.lstrip("+").startswith("hydra.searchpath") for arg in argv):
        return argv
    missing = [f for f in folders if not os.path.isdir(f)]
    if missing:
        sys.exit(f"error: {USER_CONF_ENV}={os.environ[USER_CONF_ENV]!r}: {missing[0]!r} is not a folder; it names "
                 "folders of your own config groups (model/, method/, ...), separated by ':'")
    paths = ",".join("file://" + os.path.abspath(f) for f in folders)
    return [*argv, f"hydra.searchpath=[{paths}]"]


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from harness.config import resolve  # after Hydra parsed the command line: fast --help and errors
    from harness.controller.pipeline import InvalidRun, run_job
    from harness.loadgen.errors import RunFailed
    from harness.controller.summary import summary

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and "submitit" in str(HydraConfig.get().launcher.get("_target_", "")):
        reexec_if_undecided()  # a SLURM job's process was not started through this file, and already runs threads
    launch = os.environ.get(LAUNCH_ENV) or uuid.uuid4().hex  # a sweep's callback sets one for all its jobs
    with one_line_errors():  # a bad value, or a model.input_shape the trial run refuses: one line, no record
        exp = resolve(cfg)
        try:
            metrics = run_job(exp, multirun=multirun, launch=launch)
        except (RunFailed, InvalidRun) as exc:
            print(summary(launch))
            raise SystemExit(f"run FAILED: {exc}") from None
    if not multirun and exp.mode in ("run", "predict"):  # a prediction's figures are marked ~ (the cost model's)
        print(summary(launch))
    return metrics.get("latency_ms")


if __name__ == "__main__":
    refuse_secret_overrides(sys.argv[1:])
    sys.argv[1:] = with_user_configs(sys.argv[1:])
    main_with_one_line_errors(main)
