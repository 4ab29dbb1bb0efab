"""The kernel backends' requests, checked without sending them: netem runs even where the kernel has no netem.

``shape`` sends what :func:`harness.network.shaping.qdisc_request` returns through ``IPRoute.tc``; here pyroute2's
``IPBatch`` compiles the same calls into netlink bytes instead of sending them, pyroute2's own parser (``tcmsg``)
decodes those bytes, and every field is checked against the kernel's units (include/uapi/linux/pkt_sched.h,
net/sched/sch_netem.c): delay and jitter in psched ticks, loss as a u32 fraction of 2^32-1, rate in bytes/s, limit
in packets. No root needed: nothing reaches the kernel. Where the kernel has netem, the end-to-end link tests of
test_network.py shape with it (a Topology picks the best backend the kernel offers).
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest
from pyroute2.iproute.linux import IPBatch
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_NEWQDISC, RTM_NEWTCLASS, TC_H_ROOT
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from harness.network.link import LinkSpec
from harness.network.shaping import shape

INDEX = 7  # any interface index: nothing is sent
FRAME_OVER_PAYLOAD = 1514 / 1448  # a full TCP segment on the wire (Ethernet + IP + TCP with timestamps) / its payload
QUEUE_BYTES_AT_LEAST = 16 * 1024 * 1024  # what the harness promises to queue without dropping (tcp send buffer)


def kernel_ticks_per_us() -> float:
    """psched ticks per microsecond, as this kernel announces them.

    /proc/net/psched holds NSEC_PER_USEC and PSCHED_TICKS2NS(1) first (net/sched/sch_api.c): ns per µs over ns per
    tick. Read here, apart from pyroute2's own reading, so that a unit slip on either side shows.
    """
    ns_per_us, ns_per_tick = (int(field, 16) for field in Path("/proc/net/psched").read_text().split()[:2])
    return ns_per_us / ns_per_tick


def sent_messages(backend: str, spec: LinkSpec, tdf: float, compensate_headers: bool, command: str) -> list[tcmsg]:
    """What ``shape`` would send for one direction of a link, compiled to bytes and decoded by pyroute2."""
    with IPBatch() as batch:
        shape(batch, INDEX, backend, spec, tdf, compensate_headers, command)
        data = bytes(batch.batch)
    messages, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("=I", data, offset)  # nlmsghdr.nlmsg_len
        message = tcmsg(data[offset:offset + length])
        message.decode()
        messages.append(message)
        offset += length
    return messages


def payload_rate(spec: LinkSpec, tdf: float, compensate_headers: bool) -> float:
    """Bytes/s the qdisc must pass: the payload bandwidth, dilated, raised by the headers when compensating."""
    return spec.bandwidth_mbps * 1e6 / 8 / tdf * (FRAME_OVER_PAYLOAD if compensate_headers else 1.0)


LINKS = [LinkSpec(mbps, delay, jitter, loss)
         for mbps, delay, jitter, loss in itertools.product([1.1, 18.88, 1000.0], [0.0, 20.0], [0.0, 5.0], [0.0, 1.5])]


@pytest.mark.parametrize("tdf", [1.0, 8.5])
@pytest.mark.parametrize("spec", LINKS, ids=lambda s: f"{s.bandwidth_mbps:g}mbit-{s.delay_ms:g}ms-{s.jitter_ms:g}j-"
                                                        f"{s.loss_pct:g}loss")
def test_netem_request_carries_the_link_in_the_kernels_units(spec: LinkSpec, tdf: float) -> None:
    (message,) = sent_messages("netem", spec, tdf, True, "add")
    header = message["header"]
    assert header["type"] == RTM_NEWQDISC
    assert header["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    assert (message["index"], message["handle"], message["parent"]) == (INDEX, 0x10000, TC_H_ROOT)  # root, 1:
    # only the kind and the options: a top-level TCA_RATE would be a rate estimator, which the kernel rejects
    assert [name for name, _ in message["attrs"]] == ["TCA_KIND", "TCA_OPTIONS"]
    assert message.get_attr("TCA_KIND") == "netem"

    options = message.get_attr("TCA_OPTIONS")
    ticks_per_us = kernel_ticks_per_us()
    # the harness rounds to whole µs and the encoder truncates to whole ticks: within 1 µs of the dilated value
    assert options["delay"] / ticks_per_us == pytest.approx(spec.delay_ms * tdf * 1e3, abs=1.0)
    assert options["jitter"] / ticks_per_us == pytest.approx(spec.jitter_ms * tdf * 1e3, abs=1.0)
    assert options["loss"] == pytest.approx(spec.loss_pct / 100 * 0xFFFFFFFF, abs=1.0)  # loss is not dilated
    assert (options["gap"], options["duplicate"]) == (0, 0)

    rate = payload_rate(spec, tdf, True)
    netem_rate = options.get_attr("TCA_NETEM_RATE")  # read as test_network.qdisc_rate reads a live netem qdisc
    assert netem_rate["rate"] == pytest.approx(rate, abs=0.5)  # bytes/s, the u32 field (no RATE64 needed here)
    assert (netem_rate["packet_overhead"], netem_rate["cell_size"], netem_rate["cell_overhead"]) == (0, 0, 0)

    # limit counts packets: enough full frames for the promised queue plus what the delay holds in flight, and a
    # count of frames, not of bytes
    held_bytes = max(rate * 0.1, QUEUE_BYTES_AT_LEAST) + rate * spec.delay_ms * tdf / 1e3
    assert options["limit"] * 1514 >= held_bytes
    assert options["limit"] <= max(1000, 4 * held_bytes / 1514)


def test_netem_rate_change_replaces_the_whole_qdisc_with_the_same_units() -> None:
    """``Topology.set_rate`` sends ``replace``: the same options, and flags that create or replace the root qdisc."""
    spec = LinkSpec(5.85, delay_ms=20.0, jitter_ms=5.0, loss_pct=1.5)
    (added,) = sent_messages("netem", spec, 8.5, False, "add")
    (replaced,) = sent_messages("netem", spec, 8.5, False, "replace")
    assert replaced["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE
    assert replaced.get_attr("TCA_OPTIONS") == added.get_attr("TCA_OPTIONS")
    netem_rate = added.get_attr("TCA_OPTIONS").get_attr("TCA_NETEM_RATE")
    assert netem_rate["rate"] == round(payload_rate(spec, 8.5, False))  # no header compensation asked


@pytest.mark.parametrize("backend, kinds, where", [
    ("tbf", [(RTM_NEWQDISC, "tbf")], "TCA_TBF_PARMS"),
    ("htb", [(RTM_NEWQDISC, "htb"), (RTM_NEWTCLASS, "htb")], "TCA_HTB_PARMS"),
])
def test_tbf_and_htb_requests_carry_the_rate_in_their_own_options(backend: str, kinds: list, where: str) -> None:
    spec = LinkSpec(18.88)
    messages = sent_messages(backend, spec, 8.5, True, "add")
    assert [(m["header"]["type"], m.get_attr("TCA_KIND")) for m in messages] == kinds
    assert all([name for name, _ in m["attrs"]] == ["TCA_KIND", "TCA_OPTIONS"] for m in messages)  # no TCA_RATE
    (parms,) = [m.get_attr("TCA_OPTIONS").get_attr(where) for m in messages if m.get_attr("TCA_OPTIONS").get_attr(where)]
    assert parms["rate"] == round(payload_rate(spec, 8.5, True))  # bytes/s
