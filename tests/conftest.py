"""Shared fixtures: a private MLflow store per test, root detection for namespace tests, run.py and the other scripts
as processes of their own, and the ``e2e`` mark (``make test-fast`` leaves those tests out, and those marked
``slow``)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import pytest

from harness.network.zygote import ForkedProcess, Zygotes

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="network namespaces and kernel qdiscs need root (CI runs as root)")


# A test is end to end when it records runs (a private MLflow store), builds namespaces (root), or says so itself.
E2E_FIXTURES = {"tracking_uri"}


# ``make test`` runs three tests at a time (pytest-xdist, ``--dist loadscope``). A test marked ``exclusive`` bounds a
# timing that another test's load would move (goodput, a trace followed per second, real time): it runs alone. Every
# test holds the machine's lock (made by the session's main process), shared, or exclusively when marked; a turnstile
# lets a waiting exclusive test in before the next shared one, and consecutive exclusive tests hold it from the first
# to the last. The workers write which unit each test is scheduled in (``pytest_collection_modifyitems``), and the
# main process hands out those units in collection order (``UnitScheduling``): all exclusive tests as one unit, first
# (so that they do not wait on a long test, and no worker waits for them mid-run); then each module as one unit (its
# module fixtures and caches built once), end-to-end modules first, so that the last units, the ones that decide when
# every worker is done, are short. (pytest-xdist's own loadscope orders modules by their number of tests.)
LOCKS_ENV = "SPLITBENCH_TEST_LOCKS"
_held: list[Any] = []  # this worker's open lock files while it holds the machine exclusively


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        os.environ[LOCKS_ENV] = tempfile.mkdtemp(prefix="splitbench-tests-")  # the workers inherit it


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and LOCKS_ENV in os.environ:
        shutil.rmtree(os.environ.pop(LOCKS_ENV), ignore_errors=True)


def _lock(exclusive: bool) -> list[Any]:
    folder = Path(os.environ[LOCKS_ENV])
    turnstile, machine = open(folder / "turnstile", "a"), open(folder / "machine", "a")
    fcntl.flock(turnstile, fcntl.LOCK_EX)
    fcntl.flock(machine, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    if not exclusive:
        fcntl.flock(turnstile, fcntl.LOCK_UN)
    return [machine, turnstile]


def _unlock(files: list[Any]) -> None:
    for f in files:  # closing drops the lock
        f.close()


def _exclusive(item: pytest.Item | None) -> bool:
    return item is not None and item.get_closest_marker("exclusive") is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    if LOCKS_ENV not in os.environ:  # one test at a time anyway
        yield
        return
    if _exclusive(item):
        if not _held:
            _held.extend(_lock(exclusive=True))
        try:
            yield
        finally:
            if not _exclusive(nextitem):
                _unlock(_held)
                _held.clear()
        return
    shared = _lock(exclusive=False)
    try:
        yield
    finally:
        _unlock(shared)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        needs_namespaces = any(mark.name == "skipif" and "need root" in str(mark.kwargs.get("reason", ""))
                               for mark in item.iter_markers())
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())) or needs_namespaces:
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: (not _exclusive(item), item.get_closest_marker("e2e") is None))
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and LOCKS_ENV in os.environ:
        units = {item.nodeid: _unit(item) for item in items}
        (Path(os.environ[LOCKS_ENV]) / f"units.{worker}.json").write_text(json.dumps(units))


def _unit(item: pytest.Item) -> str:
    """What the test is scheduled with: the exclusive tests together, any other with its module (module fixtures and
    the module's caches are built once)."""
    return "exclusive" if _exclusive(item) else item.nodeid.split("::")[0]


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        """``loadscope`` with the units the workers wrote, in collection order."""

        def __init__(self, config: pytest.Config, log: Any = None) -> None:
            super().__init__(config, log)
            config.option.loadscopereorder = False  # keep the collection's order: exclusive first, then end to end
            self.units: dict[str, str] = {}

        def _split_scope(self, nodeid: str) -> str:
            if not self.units:  # every worker has collected (and written) before the first unit is split
                for path in Path(os.environ[LOCKS_ENV]).glob("units.*.json"):
                    self.units.update(json.loads(path.read_text()))
            return self.units.get(nodeid) or super()._split_scope(nodeid)

    return UnitScheduling(config, log)


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made and nothing recorded, made once: MLflow's schema migrations take
    1-2 s of CPU per new store, which every end-to-end test would pay again (and each run.py it starts)."""
    path = tmp_path_factory.mktemp("empty_store") / "mlflow.db"
    from mlflow.tracking import MlflowClient
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path) -> str:
    """A fresh SQLite MLflow store for this test only (a copy of the empty store)."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def last_attempts(df: pd.DataFrame) -> pd.DataFrame:
    """Each job's run: an attempt that overran on a busy machine was retried at a higher TDF by design (FAILED,
    tagged ``retried_as``); the job's run is its last attempt."""
    if "tags.retried_as" not in df:
        return df
    return df[df["tags.retried_as"].isna() | (df["tags.retried_as"] == "")]


# What run.py, the benchmarks and the notebook import before they do anything (~5 s of CPU each time): a process of
# the suite forks from one that imported them once, and is otherwise the process ``python SCRIPT`` starts.
PRELOAD = ("harness.controller.pipeline", "harness.controller.summary", "harness.config", "hydra", "mlflow",
           "mlflow.store.tracking.sqlalchemy_store")
_forkers = Zygotes()  # the suite's own: a test that restarts the workers' zygotes (close_shared) keeps these


def start_python(script: Path | str, args: Sequence[str], cwd: Path, env: dict[str, str], stdout: int, stderr: int,
                 module: bool = False) -> ForkedProcess:
    """Start ``python script args`` (``python -m script args`` with ``module``) in ``cwd`` with exactly ``env``, in a
    session of its own, writing to the descriptors ``stdout`` and ``stderr``; its handle answers like a ``Popen``'s."""
    forker = _forkers.get(PRELOAD, env, str(ROOT))
    return forker.spawn(str(script), list(args), env, str(cwd), stdout, stderr, script=not module)


def run_python(script: Path | str, args: Sequence[str], cwd: Path, env: dict[str, str], timeout: float = 600,
               module: bool = False) -> subprocess.CompletedProcess:
    """``python script args`` (``python -m script args`` with ``module``) in ``cwd`` with exactly ``env``, its output
    captured, as ``subprocess.run`` would: in a session of its own, killed with its group when it outlives
    ``timeout``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = start_python(script, args, cwd, env, out.fileno(), err.fileno(), module)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            streams = []
            for f in (out, err):
                f.seek(0)
                streams.append(f.read().decode(errors="replace"))
    return subprocess.CompletedProcess([sys.executable, *(["-m"] if module else []), str(script), *args], code,
                                       *streams)


@pytest.fixture(scope="session", autouse=True)
def _forkers_end() -> object:
    yield
    _forkers.close()


def run_cli(args: list[str], tracking_uri: str, cwd: Path, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python run.py args`` as a user would, recording to ``tracking_uri``; outputs go under ``cwd``."""
    full_env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(ROOT), **(env or {})}
    return run_python(ROOT / "run.py", [*args, f"hydra.run.dir={cwd}/outputs", f"hydra.sweep.dir={cwd}/multirun"],
                      cwd, full_env, timeout)


# Where a run records when nobody says where (ignored by git, so looked at by name): a test must never use them.
RECORD_PLACES = ("mlflow.db", "mlruns", "mlartifacts", "outputs", "multirun", "figures")


def _untracked_files() -> set[str] | None:
    """Files git would add to the checkout (untracked, not ignored), and every file in the places a run records to
    by default; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--others", "--exclude-standard"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    recorded = {str(p.relative_to(ROOT)) for place in RECORD_PLACES for p in
                ([ROOT / place] if (ROOT / place).is_file() else (ROOT / place).rglob("*")) if p.is_file()}
    return set(out.splitlines()) | recorded


@pytest.fixture(scope="session", autouse=True)
def the_checkout_stays_clean() -> object:
    """The suite's runs write their stores, artifacts and outputs under temporary folders, never into the checkout:
    a file that appears there during the session fails it at the end, named."""
    before = _untracked_files()
    yield
    after = _untracked_files()
    if before is not None and after is not None and (new := sorted(after - before)):
        pytest.fail(f"the test session left {len(new)} file(s) in the checkout: {new[:10]}", pytrace=False)
