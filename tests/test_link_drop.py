"""A link that drops for a few seconds mid-run, through real namespaces: the stalled transfer ends with a clear
timeout naming the link (``runtime.link_timeout_s``), and the run fails with it instead of hanging."""

from __future__ import annotations

import threading
import time

import pytest
from pyroute2 import IPRoute

from harness.controller.runtime import run_workers
from harness.loadgen.dilation import Dilation
from harness.loadgen.errors import RunFailed
from tests.conftest import needs_root
from tests.test_runtime import cut_case, hand_runtime

DROP_S = 4.0
LINK_TIMEOUT_S = 1.5


def set_link(topology, endpoint: str, peer: str, up: bool) -> None:
    """Bring ``endpoint``'s end of the veth to ``peer`` down or up, inside its namespace."""
    link = topology._link(endpoint, peer)
    with IPRoute(netns=topology.netns(endpoint)) as ip:
        ip.link("set", index=ip.link_lookup(ifname=link.ifname[endpoint])[0], state="up" if up else "down")


def restore(topology, endpoint: str, peer: str) -> None:
    """The link comes back, unless the failed run has already removed its namespaces."""
    try:
        set_link(topology, endpoint, peer, up=True)
    except Exception:  # noqa: BLE001  (the namespace is gone: nothing to restore)
        pass


@needs_root
def test_a_link_down_for_seconds_mid_run_fails_with_a_clear_timeout() -> None:
    case = cut_case(["link.bandwidth_mbps=20", "scenario.warmup=1", "scenario.inferences=40"])
    device, server = case.hardware.cut_roles
    dropped: list[float] = []

    def make_hook(topology, controller, result):
        def before_issue(seq: int) -> None:
            if seq == 3:
                set_link(topology, device, server, up=False)
                dropped.append(time.monotonic())
                threading.Timer(DROP_S, restore, (topology, device, server)).start()
        return before_issue

    with pytest.raises(RunFailed) as err:
        run_workers(case.deployment(), case.exp.scenario,
                    hand_runtime(max_payload_mb=64, link_timeout_s=LINK_TIMEOUT_S), Dilation(1.0),
                    make_hook=make_hook, progress=False)
    reason = str(err.value)
    assert dropped and "stalled" in reason and "runtime.link_timeout_s" in reason, reason
    assert f"{device!r}" in reason or f"{server!r}" in reason, reason
    assert time.monotonic() - dropped[0] < 60, "the run hung instead of timing out"
    time.sleep(DROP_S)  # the timer's thread ends before the next test
