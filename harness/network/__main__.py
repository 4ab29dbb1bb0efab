"""``python -m harness.network cleanup|probe``: remove what crashed runs left, or list the shaping backends.

``cleanup`` also ends the MLflow runs that dead controllers of this host left RUNNING (in ``MLFLOW_TRACKING_URI``,
else ``mlflow.db`` here); MLflow is imported only then, so that the network package itself never needs it.
Both decide as ``run.py`` does (``harness.network.userns``): ``probe`` says what a run here would get.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Sequence

from harness.network.userns import enter_if_needed

enter_if_needed()  # while single-threaded, as run.py

from harness.network.namespaces import DEFAULT_PREFIX, cleanup, cleanup_stale  # noqa: E402
from harness.network.shaping import available_backends, privilege, probe_backend  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.network", description="namespaces and shaping of splitbench")
    sub = parser.add_subparsers(dest="command", required=True)
    clean = sub.add_parser("cleanup", help="remove every namespace and veth with the prefix (like mn -c), and end "
                                           "the MLflow runs of dead controllers of this host")
    clean.add_argument("--prefix", default=DEFAULT_PREFIX)
    clean.add_argument("--stale", action="store_true", help="only those whose owner process is dead")
    sub.add_parser("probe", help="print the available shaping backends, best first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "probe":
        print(json.dumps({"backend": probe_backend(), "available": list(available_backends()),
                          "privilege": privilege()}))
    else:
        removed = (cleanup_stale if args.stale else cleanup)(args.prefix)
        print(f"removed {len(removed)}: {' '.join(removed)}" if removed else "nothing to remove")
        from harness.controller.stale_runs import end_dead_runs  # MLflow: only here

        ended = end_dead_runs()
        print(f"ended {len(ended)} runs of dead controllers as KILLED: {' '.join(ended)}" if ended
              else "no run of a dead controller")


if __name__ == "__main__":
    main()
