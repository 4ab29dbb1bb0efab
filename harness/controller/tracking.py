"""Where runs are recorded. Apart from ``records`` (which imports torch) so that light tools can find the store."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a local SQLite store (``<its folder>/mlruns/<experiment>``),
    never in whatever directory the process happens to run in (MLflow's default); a server's own default (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlruns" / folder).as_uri()


def figures_dir(uri: str) -> Path:
    """Where the report saves its figures: a ``figures/`` folder beside a local store (the SQLite file, or a file
    store's folder), else (a tracking server) in the working directory."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).resolve().parent / "figures"
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path).resolve().parent / "figures"
    return Path.cwd() / "figures"


def local_store_exists(uri: str) -> bool:
    """False only for a local store (SQLite file or file store) that is not there yet; remote stores count as there.

    Opening a missing local store creates it: a tool that only reads or tidies runs must not leave one behind.
    """
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).exists()
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path).exists()
    return True
