"""Link shaping: which backends this kernel offers (probed, never assumed) and the qdisc each link gets.

Backends, best first: ``netem`` (rate, delay, jitter and loss in the kernel), ``tbf`` then ``htb`` (rate in the
kernel; delay and jitter added by the sender's ``Pacer``), ``userspace`` (no namespaces: the ``Pacer`` does
everything). Namespaces are probed by making one, never judged by the uid: root, and a rootless process under a user
namespace of its own (``harness.network.userns``), both can.
Under time dilation the kernel runs at bandwidth / tdf with delays x tdf. :func:`qdisc_request` is the one place
that turns a link into the request pyroute2 sends, so that it can be checked without applying it.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.tcmsg import sched_netem

from harness.network.link import BackendError, LinkSpec
from harness.network.namespaces import DEFAULT_PREFIX, create_namespace, ipr_in
from harness.network.userns import in_initial_user_namespace, refusal

log = logging.getLogger("harness.network")

BACKENDS = ("netem", "tbf", "htb", "userspace")
KERNEL_RATE_BACKENDS = ("netem", "tbf", "htb")
FRAME_BYTES = 1514  # what a qdisc counts for one full segment at MTU 1500: Ethernet 14 + IP 20 + TCP 32 + payload
PAYLOAD_BYTES = 1448  # TCP payload of that segment (MSS 1460 minus the 12-byte timestamp option)
HEADER_FACTOR = FRAME_BYTES / PAYLOAD_BYTES
BURST_S = 0.001  # tbf/htb bucket: 1 ms of traffic (timer-friendly at 1 Gbit/s) but never less than one frame
MIN_BURST_BYTES = 1600
# Queue bound: deeper than one TCP flow's send buffer (4 MiB here), so that the qdisc never drops: a drop at the tail
# of a tensor waits for a retransmission timeout (>= 200 ms on Linux); loss is netem's job.
QUEUE_S = 0.1
MIN_QUEUE_BYTES = 16 * 1024 * 1024
MAX_KERNEL_RATE = (1 << 32) - 1  # tbf and netem carry the rate as u32 bytes/s


def _drop_top_level_rate(request: dict[str, Any]) -> None:
    request.pop("rate", None)


# pyroute2's netem plugin reads ``rate`` into TCA_NETEM_RATE but, unlike its tbf and htb plugins, leaves the keyword
# in the request, which the tcmsg encoder also writes as a top-level TCA_RATE (a rate estimator): an int rate makes
# the encoder raise TypeError, a "10mbit" string sends a bogus estimator. Every netem link with a rate hit this.
# pyroute2 calls fix_request after get_parameters, so TCA_NETEM_RATE is already built when the keyword goes.
if not hasattr(sched_netem, "fix_request"):
    sched_netem.fix_request = _drop_top_level_rate


@functools.cache
def _probe() -> tuple[bool, tuple[str, ...]]:
    """(can this process make network namespaces, the backends offered best first); probed once per process."""
    if refusal() is not None:  # the entry point could not enter a user namespace: the one line saying why
        log.warning("%s; links are shaped in userspace", refusal())
        return False, ("userspace",)
    scratch = f"{DEFAULT_PREFIX}{os.getpid()}-probe"
    try:
        create_namespace(scratch)
    except OSError as err:
        log.warning("cannot create a network namespace (%s): only the userspace backend is available", err)
        return False, ("userspace",)
    found = []
    try:
        with ipr_in(scratch) as ip:
            trials = {"netem": {"delay": 1000},
                      "tbf": {"rate": 125_000, "burst": MIN_BURST_BYTES, "limit": MIN_QUEUE_BYTES},
                      "htb": {"default": 0x10}}
            for i, (kind, options) in enumerate(trials.items()):
                ip.link("add", ifname=f"probe{i}a", kind="veth", peer={"ifname": f"probe{i}b"})
                index = ip.link_lookup(ifname=f"probe{i}a")[0]
                try:
                    ip.tc("add", kind, index=index, handle="1:", **options)
                except NetlinkError as err:
                    if err.code != errno.ENOENT:  # ENOENT: the kernel has no such qdisc
                        raise
                    continue
                found.append(kind)
    finally:
        netns.remove(scratch)
    return True, (*found, "userspace")


def available_backends() -> tuple[str, ...]:
    """The shaping backends this machine offers, best first."""
    return _probe()[1]


def namespaces_available() -> bool:
    """True when this process can make network namespaces (root, and the kernel allows it)."""
    return _probe()[0]


def privilege() -> str:
    """``root`` (namespaces in the host's user namespace), ``rootless`` (under a user namespace) or ``none``."""
    if not namespaces_available():
        return "none"
    return "root" if in_initial_user_namespace() else "rootless"


def probe_backend() -> str:
    """The best shaping backend here: netem, tbf, htb or userspace."""
    return available_backends()[0]



def kernel_rate(spec: LinkSpec, tdf: float, compensate_headers: bool) -> int:
    """Bytes/s for the qdisc: dilated, and raised by the header ratio so that TCP payload gets ``bandwidth``."""
    factor = HEADER_FACTOR if compensate_headers else 1.0
    rate = round(spec.bandwidth_mbps * 1e6 / 8 / tdf * factor)
    if not 1 <= rate <= MAX_KERNEL_RATE:
        raise BackendError(f"kernel rate {rate} B/s (from {spec.bandwidth_mbps} Mbit/s, tdf {tdf}) is "
                           f"outside the qdisc's range 1..{MAX_KERNEL_RATE}")
    return rate


def burst_bytes(rate: int) -> int:
    return max(int(rate * BURST_S), MIN_BURST_BYTES)


def qdisc_request(backend: str, spec: LinkSpec, tdf: float, compensate_headers: bool,
                  command: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The ``IPRoute.tc`` calls (command, kind, options) that shape one direction of a link; ``command`` is add,
    replace or change. Empty for the userspace backend."""
    if backend == "userspace":
        return []
    rate = kernel_rate(spec, tdf, compensate_headers)
    burst = burst_bytes(rate)
    queue = max(int(rate * QUEUE_S), MIN_QUEUE_BYTES) + burst
    if backend == "tbf":
        return [(command, "tbf", {"handle": "1:", "rate": rate, "burst": burst, "limit": queue})]
    if backend == "htb":
        calls = [("add", "htb", {"handle": "1:", "default": 0x10})] if command == "add" else []
        return calls + [(f"{command}-class", "htb", {"handle": "1:10", "parent": "1:", "rate": rate, "ceil": rate,
                                                     "burst": burst, "cburst": burst})]
    if backend == "netem":
        delay_us = round(spec.delay_ms * tdf * 1e3)
        jitter_us = round(spec.jitter_ms * tdf * 1e3)
        packets = max(1000, 2 * int((queue + rate * delay_us / 1e6) / FRAME_BYTES))
        return [(command, "netem", {"handle": "1:", "rate": rate, "delay": delay_us, "jitter": jitter_us,
                                    "loss": spec.loss_pct, "limit": packets})]
    raise BackendError(f"backend {backend!r} is not one of {list(BACKENDS)}")


def shape(ip: IPRoute, index: int, backend: str, spec: LinkSpec, tdf: float, compensate_headers: bool,
          command: str) -> None:
    """Apply :func:`qdisc_request` to interface ``index`` (the egress of one end: the direction end -> peer)."""
    for tc_command, kind, options in qdisc_request(backend, spec, tdf, compensate_headers, command):
        ip.tc(tc_command, kind, index=index, **options)
