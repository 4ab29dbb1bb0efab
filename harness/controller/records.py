"""MLflow records: one run per experiment job, with the names ARCHITECTURE.md fixes for other tools to read."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
import torch
import yaml

from harness import PROJECT_ROOT
from harness.controller.stale_runs import controller_tags
from harness.controller.tracking import artifact_location, tracking_uri


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"link": {"bandwidth_mbps": 1.1}}`` -> ``{"link.bandwidth_mbps": 1.1}``."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


SOURCE_SUFFIXES = (".py", ".yaml", ".yml", ".csv", ".toml", ".json")  # code, configs, traces, profile tables


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5,
                          check=True).stdout


def git_commit() -> str:
    """HEAD, with ``-dirty`` when a tracked file changed or an untracked (not ignored) source or config file
    exists: a run that used a new method file must not look like the commit."""
    try:
        commit = _git("rev-parse", "HEAD").strip()
        status = _git("status", "--porcelain", "--untracked-files=all").splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = any(not line.startswith("??") or line.rstrip().endswith(SOURCE_SUFFIXES) for line in status)
    return f"{commit}{'-dirty' if dirty else ''}" if commit else "unknown"


def source_files() -> list[Path]:
    """The project's code and configs as they are on disk: tracked and untracked files git does not ignore (every
    such file under the project when it is not a git checkout)."""
    try:
        names = _git("ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
        files = [PROJECT_ROOT / n for n in names if n]
    except (OSError, subprocess.SubprocessError):
        files = [p for p in PROJECT_ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts]
    return sorted(p for p in files if p.suffix in SOURCE_SUFFIXES and p.is_file())


def code_hash(extra: list[Path] | None = None) -> str:
    """sha256 over the path and content of every source and config file (and ``extra``: code outside the
    project that the run imported): two runs with the same hash ran the same code and configs."""
    digest = hashlib.sha256()
    for path in [*source_files(), *sorted(extra or [])]:
        digest.update(str(path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path).encode())
        digest.update(b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def outside_code(config: Mapping[str, Any]) -> list[Path]:
    """The files of the ``_target_`` modules a run imported from outside the project (a user's model or method)."""
    targets = [str(v) for k, v in flatten(config).items() if k.endswith("_target_") and v]
    files = set()
    for target in targets:
        for cut in range(len(target.split(".")), 0, -1):
            module = sys.modules.get(".".join(target.split(".")[:cut]))
            if module is not None:
                file = getattr(module, "__file__", None)
                if file and not Path(file).resolve().is_relative_to(PROJECT_ROOT) and "site-packages" not in file:
                    files.add(Path(file).resolve())
                break
    return sorted(files)


def user_config_files() -> list[Path]:
    """The YAML files of the user's own config folders (``$SPLITBENCH_CONF``, searched after ``conf/``): hashed
    with the code, so that a run records them without the project being marked dirty."""
    folders = [Path(f) for f in os.environ.get("SPLITBENCH_CONF", "").split(os.pathsep) if f]
    return sorted(p.resolve() for folder in folders if folder.is_dir() for p in folder.rglob("*.y*ml") if p.is_file())


def environment() -> dict[str, Any]:
    """The machine and software a result was measured on."""
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(), "hostname": platform.node(),
            "git_commit": git_commit(), "mlflow": mlflow.__version__, "euid": os.geteuid()}


def use_experiment(name: str, uri: str) -> None:
    """Make ``name`` the active experiment, creating it with its artifacts beside the store if it is new."""
    if mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name, artifact_location=artifact_location(uri, name))
        except MlflowException:  # created meanwhile by another job of a parallel sweep
            pass
    mlflow.set_experiment(name)


class RunRecord:
    """An open MLflow run; ``with RunRecord(experiment, config) as rec:`` ends it FINISHED, or FAILED with the reason.

    ``config`` is the resolved config as it may be recorded (secrets already redacted): params and ``config.yaml``.
    """

    def __init__(self, experiment: str, config: Mapping[str, Any], run_name: str | None = None,
                 tags: Mapping[str, str] | None = None) -> None:
        self.experiment, self.config = experiment, config
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.failed_reason: str | None = None
        self.run_id: str | None = None

    def __enter__(self) -> "RunRecord":
        uri = tracking_uri()
        mlflow.set_tracking_uri(uri)
        use_experiment(self.experiment, uri)
        # created with its controller's identity, so that a later start can tell if the controller died
        run = mlflow.start_run(run_name=self.run_name, tags=controller_tags())
        self.run_id = run.info.run_id
        params = {k: str(v)[:6000] for k, v in flatten(self.config).items()}
        items = list(params.items())
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i:i + 100]))
        mlflow.log_text(yaml.safe_dump(dict(self.config), sort_keys=False), "config.yaml")
        env = environment()
        mlflow.log_dict(env, "environment.json")
        mlflow.set_tags({"git_commit": env["git_commit"], "code_hash": code_hash([*outside_code(self.config), *user_config_files()]),
                         **self.tags})
        return self

    def metrics(self, values: Mapping[str, float | None]) -> None:
        mlflow.log_metrics({k: float(v) for k, v in values.items() if v is not None})

    def series(self, name: str, values: list[float]) -> None:
        """A per-inference metric, one step per inference (MLflow draws it as a curve)."""
        stamp = int(time.time() * 1000)
        batch = [Metric(name, float(value), stamp, step) for step, value in enumerate(values)]
        client = MlflowClient()
        for i in range(0, len(batch), 1000):  # one request per thousand steps, not one per step
            client.log_batch(self.run_id, metrics=batch[i:i + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def tag_run(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Tag another run of this store (an earlier attempt, linked to this one)."""
        client = mlflow.tracking.MlflowClient(tracking_uri())
        for key, value in tags.items():
            client.set_tag(run_id, key, str(value))

    def artifact_json(self, data: Any, name: str) -> None:
        mlflow.log_dict(json.loads(json.dumps(data, default=str)), name)

    def text(self, text: str, name: str) -> None:
        mlflow.log_text(text, name)

    def figure(self, fig: Any, name: str) -> None:
        mlflow.log_figure(fig, name)

    def fail(self, reason: str) -> None:
        """Mark the run FAILED: ``valid=false`` and the reason, never a result."""
        self.failed_reason = reason
        mlflow.set_tags({"valid": "false", "invalid_reason": reason[:5000]})

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and self.failed_reason is None:
            self.fail(f"{exc_type.__name__}: {exc}")
        status = "FAILED" if self.failed_reason is not None else "FINISHED"
        if isinstance(exc, KeyboardInterrupt):
            status = "KILLED"
        mlflow.end_run(status=status)
