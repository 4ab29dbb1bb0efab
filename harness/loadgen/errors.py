"""The failure of a run that is recorded FAILED with its reason, never a harness bug."""

from __future__ import annotations


class RunFailed(RuntimeError):
    """The run could not produce a result (a worker crashed, a timeout); the message is the reason."""

    def __init__(self, reason: str, worker_logs: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.worker_logs = dict(worker_logs or {})
