"""Runs whose controller died are ended KILLED, so that no record stays RUNNING for ever.

A controller killed with SIGKILL (or by the OOM killer, or a power cut) never ends its MLflow run, which would stay
RUNNING with ``valid=pending``, indistinguishable from a run in progress. Every run is therefore created with its
controller's identity: ``controller_host``, ``controller_pid`` and ``controller_start_time`` (when that process
started, seconds since the epoch). :func:`end_dead_runs` (called at the start of every job and by
``python -m harness.network cleanup``) ends as KILLED, with ``valid=false`` and the reason, each RUNNING run of this
host whose pid is gone or now belongs to another process: pids are reused, the start time tells them apart. Runs of
other hosts are left to their own host; runs without these tags (recorded before them) are left alone, as nothing
says whether their controller lives.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import psutil
from mlflow.entities import Run, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from harness.controller.tracking import local_store_exists, tracking_uri as default_tracking_uri

log = logging.getLogger("splitbench")

HOST_TAG = "controller_host"
PID_TAG = "controller_pid"
START_TIME_TAG = "controller_start_time"
# psutil derives a start time from the boot time, which clock adjustments can move by about a second; a pid reused
# by a process that started within that second of the dead one is not a case worth a stricter test.
START_TIME_TOLERANCE_S = 1.0


def this_host() -> str:
    return platform.node()


def controller_tags() -> dict[str, str]:
    """The identity of this process as a run's controller: host, pid and start time."""
    me = psutil.Process()
    return {HOST_TAG: this_host(), PID_TAG: str(me.pid), START_TIME_TAG: f"{me.create_time():.3f}"}


def controller_alive(pid: int, start_time: float) -> bool:
    """Is process ``pid`` on this host still the one that started at ``start_time``?"""
    return _how_controller_ended(pid, start_time) is None


def _how_controller_ended(pid: int, start_time: float) -> str | None:
    """None while the process runs; else what became of it."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return "exited (not reaped yet)"
        started = proc.create_time()
    except psutil.NoSuchProcess:
        return "no longer exists"
    except psutil.AccessDenied:  # cannot tell: leave the run alone
        return None
    if abs(started - start_time) <= START_TIME_TOLERANCE_S:
        return None
    return f"is now another process (started {_iso(started)})"


def end_dead_runs(tracking_uri: str | None = None) -> list[str]:
    """End as KILLED every RUNNING run, in every experiment of the store, whose controller died on this host.

    Each gets ``valid=false`` and an ``invalid_reason`` naming the controller and when it was last heard of; its end
    time is that moment. Returns the ids of the runs ended. A local store that does not exist yet is not created.
    """
    uri = tracking_uri or default_tracking_uri()
    if not local_store_exists(uri):
        return []
    client = MlflowClient(uri)
    ended = []
    for run in _running_runs(client):
        death = _dead_controller(run)
        if death is None:
            continue
        last_heard_ms, what = _last_heard_of(client, run)
        reason = (f"the controller died: {death}; last heard of at {_iso(last_heard_ms / 1000)} ({what}); "
                  f"ended KILLED at {_iso(time.time())}")
        client.log_batch(run.info.run_id, tags=[RunTag("valid", "false"), RunTag("invalid_reason", reason)])
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED), end_time=last_heard_ms)
        log.warning("run %s (%s) ended KILLED: %s", run.info.run_id, run.info.run_name, reason)
        ended.append(run.info.run_id)
    return ended


def _running_runs(client: MlflowClient) -> Iterator[Run]:
    experiment_ids, token = [], None
    while True:
        page = client.search_experiments(page_token=token)
        experiment_ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    if not experiment_ids:
        return
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _dead_controller(run: Run) -> str | None:
    """How this run's controller died, or None: alive, of another host, or not known."""
    tags = run.data.tags
    if tags.get(HOST_TAG) != this_host():
        return None
    try:
        pid, started = int(tags[PID_TAG]), float(tags[START_TIME_TAG])
    except (KeyError, ValueError):
        return None
    ended = _how_controller_ended(pid, started)
    return None if ended is None else f"pid {pid} on {this_host()}, started {_iso(started)}, {ended}"


def _last_heard_of(client: MlflowClient, run: Run) -> tuple[int, str]:
    """The latest moment the run recorded anything (ms since the epoch), and what that was.

    MLflow keeps times for the run's start and its metrics, not for tags or artifacts: this is a lower bound.
    """
    latest, what = run.info.start_time, "run start"
    for key in run.data.metrics:
        for point in client.get_metric_history(run.info.run_id, key):
            if point.timestamp > latest:
                latest, what = point.timestamp, f"metric {key}"
    return latest, what


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")
