"""The clock estimate against a real worker's ping handler, and the conversion of reported stamps."""

from __future__ import annotations

import threading

from harness.loadgen.clock import ClockEstimate, estimate_clock, to_controller_clock
from harness.worker import wire
from harness.worker.serve import _await_setup
from harness.worker.stage import Control
from tests.boards import sealed_pair


def test_the_offset_of_a_worker_on_this_clock_lies_within_its_uncertainty() -> None:
    controller, worker = sealed_pair()
    got: dict = {}
    thread = threading.Thread(target=lambda: got.update(setup=_await_setup(Control(worker, 0))), daemon=True)
    thread.start()
    with controller, worker:
        controller.settimeout(10)
        clock = estimate_clock(controller, pings=8)
        controller.send_json({"setup": {"endpoint": "server"}})
        thread.join(timeout=10)
    assert got["setup"] == {"endpoint": "server"}
    assert abs(clock.offset_ns) <= clock.uncertainty_ns + 1000  # the same clock: zero, within the round trip
    assert clock.trusted


def test_stamps_are_converted_and_an_untrusted_completion_is_stamped_on_arrival() -> None:
    ahead = 10 ** 14  # 100000 s
    frame = wire.Frame(wire.Kind.JSON, 0, 0, obj={"event": "spans", "seq": 3, "final": True,
                                                  "done_ns": ahead + 900, "received_ns": ahead + 50, "spans": [
                                                      {"kind": "compute", "start_ns": ahead + 100,
                                                       "end_ns": ahead + 800}]})
    trusted = to_controller_clock(frame, ClockEstimate(ahead, 50), arrived_ns=5000)
    assert (trusted.obj["done_ns"], trusted.obj["received_ns"]) == (900, 50)
    assert (trusted.obj["spans"][0]["start_ns"], trusted.obj["spans"][0]["end_ns"]) == (100, 800)
    untrusted = to_controller_clock(frame, ClockEstimate(ahead, 5_000_000, trusted=False), arrived_ns=5000)
    assert untrusted.obj["done_ns"] == 5000
    assert "received_ns" not in untrusted.obj  # an untrusted clock's inference starts when the controller issued it
    assert frame.obj["done_ns"] == ahead + 900  # the worker's report itself is left as it came
    ack = wire.Frame(wire.Kind.ACK, 1, 0)
    assert to_controller_clock(ack, ClockEstimate(ahead, 50), 0) is ack
