"""Each remote worker's clock against this machine's: estimated by pings before its setup, and its reports' stamps
converted into the controller's clock (or replaced by the arrival, where the offset is too uncertain)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from harness.loadgen.errors import RunFailed
import harness.worker.wire as wire  # the protocol only: the load generator starts no worker
from harness.worker.sealed import SealedSocket

CLOCK_PINGS = 16  # ping exchanges per remote worker at set-up; the one with the smallest round trip is kept

CLOCK_TRUST_MS = 1.0  # above this offset uncertainty, an inference's start is its issue and its completion its arrival


@dataclass
class ClockEstimate:
    """A worker's clock relative to the controller's: worker stamp - offset = controller time, within +- uncertainty."""

    offset_ns: int = 0
    uncertainty_ns: int = 0
    trusted: bool = True  # False: completions are stamped by the controller when the last report arrives

    def record(self) -> dict[str, float]:
        return {"offset_ms": self.offset_ns / 1e6, "uncertainty_ms": self.uncertainty_ns / 1e6,
                "completion_stamp": "worker" if self.trusted else "controller"}

def estimate_clock(link: SealedSocket, pings: int = CLOCK_PINGS) -> ClockEstimate:
    """Ping a worker (before its setup): offset = its stamp - the midpoint of the exchange, from the exchange with the
    smallest round trip; the uncertainty is half that round trip (the stamp lies somewhere inside it)."""
    best: tuple[int, int] | None = None
    for i in range(pings):
        sent = time.monotonic_ns()
        link.send_json({"cmd": "clock", "id": i})
        reply = link.recv_frame(max_payload=0)
        received = time.monotonic_ns()
        if reply.kind is wire.Kind.ERROR and reply.obj is not None:
            raise RunFailed(f"the worker answered a clock ping with an error: {reply.obj['reason']}")
        if reply.kind is not wire.Kind.JSON or reply.obj.get("event") != "clock" or reply.obj.get("id") != i:
            raise wire.FrameError(f"expected the answer to clock ping {i}, got {reply.kind.name} {reply.obj}")
        now = reply.obj.get("now_ns")
        if not isinstance(now, int):
            raise wire.FrameError(f"clock ping {i}: now_ns must be an integer, got {now!r}")
        rtt = received - sent
        if best is None or rtt < best[0]:
            best = (rtt, now - (sent + received) // 2)
    assert best is not None
    rtt, offset = best
    return ClockEstimate(offset, rtt // 2, trusted=rtt / 2 / 1e6 <= CLOCK_TRUST_MS)

def to_controller_clock(frame: wire.Frame, clock: ClockEstimate, arrived_ns: int) -> wire.Frame:
    """A worker's report with its stamps converted into the controller's clock (and an untrusted clock's completion
    replaced by the report's arrival, its command's arrival dropped: the inference then starts when issued)."""
    if frame.kind is not wire.Kind.JSON or frame.obj is None or frame.obj.get("event") != "spans":
        return frame
    obj = dict(frame.obj)
    obj["spans"] = [{**span, "start_ns": int(span["start_ns"]) - clock.offset_ns,
                     "end_ns": int(span["end_ns"]) - clock.offset_ns} for span in obj.get("spans", [])]
    if "done_ns" in obj:
        obj["done_ns"] = int(obj["done_ns"]) - clock.offset_ns if clock.trusted else arrived_ns
    if "received_ns" in obj:
        if clock.trusted:
            obj["received_ns"] = int(obj["received_ns"]) - clock.offset_ns
        else:
            del obj["received_ns"]
    return wire.Frame(frame.kind, frame.seq, frame.tag, obj=obj)
