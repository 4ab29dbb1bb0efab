"""Topology of network namespaces and shaped links, made and torn down by the harness (pyroute2 only).

One namespace per endpoint, a veth pair per link, shaping on the egress of each end. Backends, best first and
probed, never assumed: ``netem`` (rate, delay, jitter and loss in the kernel), ``tbf`` then ``htb`` (rate in the
kernel; delay and jitter added by the sender's ``Pacer``), ``userspace`` (no root: endpoints on loopback, the
``Pacer`` does everything). Time dilation: the kernel runs at bandwidth / tdf with delays x tdf; every value this
module hands out (rates, delays, ``Pacer`` settings) is already dilated, and the harness divides measured times by tdf.

Nothing survives a run: exit, exception, SIGINT, SIGTERM and a crashed spawned process all remove every namespace,
veth and qdisc and kill every spawned process; names carry the owner's pid so that the next run removes what a
killed run left (``cleanup_stale``), and ``python -m harness.network cleanup`` removes everything with a prefix.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import functools
import itertools
import json
import logging
import math
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)

BACKENDS = ("netem", "tbf", "htb", "userspace")
KERNEL_RATE_BACKENDS = ("netem", "tbf", "htb")
DEFAULT_PREFIX = "sb"
IFNAMSIZ = 15
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
SUBNET = (10, 213)  # the harness owns 10.213.0.0/16: one /30 per link
LOOPBACK = (127, 213)  # without root: distinct loopback addresses, the same plan
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_PREFIX = re.compile(r"^[a-z][a-z_]{0,5}$")
_instances = itertools.count()


@dataclass(frozen=True)
class LinkSpec:
    """One link as the experiment sees it (undilated): payload bandwidth, one-way delay, jitter, loss."""

    bandwidth_mbps: float
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.bandwidth_mbps, (int, float)) and math.isfinite(self.bandwidth_mbps)
                and self.bandwidth_mbps > 0):
            raise ValueError(f"bandwidth_mbps must be a finite number > 0, got {self.bandwidth_mbps!r}")
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0 <= self.loss_pct < 100:
            raise ValueError(f"loss_pct must be in [0, 100), got {self.loss_pct!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "LinkSpec":
        """From a ``conf/link/*.yaml`` group (its ``name``, ``trace`` and ``compensate_headers`` are not link facts)."""
        return cls(float(cfg["bandwidth_mbps"]), float(cfg.get("delay_ms", 0.0)),
                   float(cfg.get("jitter_ms", 0.0)), float(cfg.get("loss_pct", 0.0)))


class BackendError(RuntimeError):
    """A link asks for something the available shaping backend cannot do."""


# ---------------------------------------------------------------------------------------------------------------------
# Backend probing

def _is_root() -> bool:
    return os.geteuid() == 0


@functools.cache
def _probe() -> tuple[bool, tuple[str, ...]]:
    """(can this process make network namespaces, the backends offered best first); probed once per process."""
    if not _is_root():
        return False, ("userspace",)
    scratch = f"{DEFAULT_PREFIX}{os.getpid()}-probe"
    try:
        netns.create(scratch)
    except OSError as err:
        log.warning("cannot create a network namespace (%s): only the userspace backend is available", err)
        return False, ("userspace",)
    found = []
    try:
        with IPRoute(netns=scratch) as ip:
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


def probe_backend() -> str:
    """The best shaping backend here: netem, tbf, htb or userspace."""
    return available_backends()[0]


# ---------------------------------------------------------------------------------------------------------------------
# Sender-side shaping

class Pacer:
    """Sender-side shaping for one link direction: whatever the kernel backend cannot do.

    ``rate_mbps`` (userspace backend only) makes it a serialising link, a token bucket without burst: a message
    occupies the link for nbytes / rate after the previous one. ``delay_ms`` and ``jitter_ms`` (uniform in
    +-jitter, seeded, as netem draws it) are propagation: a message leaves ``delay`` after it was ready, without
    delaying the next one's serialisation, so pipelined senders keep their throughput. Times are wall-clock (dilated).
    """

    def __init__(self, rate_mbps: float | None = None, delay_ms: float = 0.0, jitter_ms: float = 0.0, seed: int = 0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if rate_mbps is not None and not rate_mbps > 0:
            raise ValueError(f"rate_mbps must be > 0 or None (the kernel shapes the rate), got {rate_mbps!r}")
        if delay_ms < 0 or jitter_ms < 0:
            raise ValueError(f"delay_ms and jitter_ms must be >= 0, got {delay_ms!r}, {jitter_ms!r}")
        self.rate_mbps, self.delay_ms, self.jitter_ms, self.seed = rate_mbps, delay_ms, jitter_ms, seed
        self._rng = random.Random(seed)
        self._clock, self._sleep = clock, sleep
        self._link_free = 0.0  # when the (virtual) link finishes serialising what was sent before
        self._last_departure = 0.0
        self._lock = threading.Lock()

    @property
    def idle(self) -> bool:
        """True when this pacer changes nothing (the kernel does all the shaping)."""
        return self.rate_mbps is None and self.delay_ms == 0 and self.jitter_ms == 0

    def set_rate(self, rate_mbps: float) -> None:
        if self.rate_mbps is None:
            raise ValueError("this pacer does not shape the rate (the kernel does): change it with Topology.set_rate")
        if not rate_mbps > 0:
            raise ValueError(f"rate_mbps must be > 0, got {rate_mbps!r}")
        with self._lock:
            self.rate_mbps = rate_mbps

    def departure(self, nbytes: int, ready_at: float | None = None) -> float:
        """When a message of ``nbytes`` ready at ``ready_at`` may leave; advances the link's timeline."""
        with self._lock:
            ready = self._clock() if ready_at is None else ready_at
            finish = ready
            if self.rate_mbps is not None:
                finish = max(ready, self._link_free) + nbytes * 8 / (self.rate_mbps * 1e6)
                self._link_free = finish
            delay = self.delay_ms
            if self.jitter_ms:
                delay = max(0.0, delay + self._rng.uniform(-self.jitter_ms, self.jitter_ms))
            # One TCP stream cannot reorder: a message never leaves before the previous one.
            self._last_departure = max(self._last_departure, finish + delay / 1e3)
            return self._last_departure

    def before_send(self, nbytes: int, ready_at: float | None = None) -> float:
        """Sleep until the message may be sent; returns the seconds slept."""
        if self.idle:
            return 0.0
        wait = self.departure(nbytes, ready_at) - self._clock()
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)

    def config(self) -> dict[str, Any]:
        """JSON-able settings, for a worker process: ``Pacer(**config)``."""
        return {"rate_mbps": self.rate_mbps, "delay_ms": self.delay_ms, "jitter_ms": self.jitter_ms,
                "seed": self.seed}


# ---------------------------------------------------------------------------------------------------------------------
# Cleanup of what earlier runs left

def _owner_pid(name: str, prefix: str) -> int | None:
    match = re.match(rf"^{re.escape(prefix)}(\d+)(?:-|l\d+[ab]$)", name)
    return int(match.group(1)) if match else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _remove_namespace(name: str, prefix: str) -> None:
    """Kill what still runs in it, delete its veths (the peer end goes too), then unmount it."""
    if name not in netns.listnetns():
        return  # already gone (e.g. removed by `cleanup` while its owner still ran)
    for pid in netns.ns_pids().get(name, []):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        # flags=0: never create the namespace we are removing (pyroute2 creates a missing one by default)
        with IPRoute(netns=name, flags=0) as ip:
            for link in ip.get_links():
                ifname = link.get_attr("IFLA_IFNAME")
                if _owner_pid(ifname, prefix) is not None:
                    try:
                        ip.link("del", index=link["index"])
                    except NetlinkError as err:
                        if err.code != errno.ENODEV:  # the peer's deletion already took it
                            raise
    finally:
        netns.remove(name)


def _cleanup(prefix: str, stale_only: bool) -> list[str]:
    if not _PREFIX.match(prefix):
        raise ValueError(f"prefix must match {_PREFIX.pattern}, got {prefix!r}")
    if not _is_root():
        return []
    removed = []
    for name in sorted(netns.listnetns()):
        pid = _owner_pid(name, prefix)
        if pid is None or (stale_only and _alive(pid)):
            continue
        try:
            _remove_namespace(name, prefix)
            removed.append(name)
        except (OSError, NetlinkError) as err:
            log.warning("could not remove namespace %s: %s", name, err)
    with IPRoute() as ip:  # veths left in the root namespace by an interrupted creation
        for link in ip.get_links():
            ifname = link.get_attr("IFLA_IFNAME")
            pid = _owner_pid(ifname, prefix)
            if pid is not None and not (stale_only and _alive(pid)):
                try:
                    ip.link("del", index=link["index"])
                    removed.append(ifname)
                except NetlinkError as err:
                    if err.code != errno.ENODEV:
                        log.warning("could not remove interface %s: %s", ifname, err)
    if removed:
        log.info("removed %s", ", ".join(removed))
    return removed


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove namespaces and veths with ``prefix`` whose owner process is dead; returns their names."""
    return _cleanup(prefix, stale_only=True)


def cleanup(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove every namespace and veth with ``prefix``, live owner or not (like ``mn -c``); returns their names."""
    return _cleanup(prefix, stale_only=False)


def leftovers(prefix: str) -> list[str]:
    """Namespaces (and root-namespace interfaces) whose name carries ``prefix`` and an owner pid."""
    names = [n for n in netns.listnetns() if _owner_pid(n, prefix) is not None]
    if _is_root():
        with IPRoute() as ip:
            names += [ln.get_attr("IFLA_IFNAME") for ln in ip.get_links()
                      if _owner_pid(ln.get_attr("IFLA_IFNAME"), prefix) is not None]
    return sorted(names)


# ---------------------------------------------------------------------------------------------------------------------
# The topology

@dataclass
class _Link:
    index: int
    a: str
    b: str
    spec: LinkSpec
    ifname: dict[str, str] = field(default_factory=dict)
    address: dict[str, str] = field(default_factory=dict)


@dataclass
class _Spawned:
    endpoint: str
    argv: list[str]
    proc: subprocess.Popen
    group: bool
    critical: bool


def _enter_namespace(name: str) -> None:
    # Runs in the child between fork and exec: only a setns(2), no namespace creation (flags=0).
    netns.setns(name, flags=0)


class Topology:
    """Endpoints in their own network namespaces joined by shaped veth links; a context manager.

    ``Topology(["device", "server"], [("device", "server", LinkSpec(18.88))])``; a star lists (es0, es1),
    (es0, es2), ... Without root the endpoints share the root namespace on distinct loopback addresses and the
    ``userspace`` backend shapes in the sender. ``backend`` forces one of the available backends (default: the best).
    """

    def __init__(self, endpoints: Sequence[str], links: Sequence[tuple[str, str, LinkSpec]], tdf: float = 1.0,
                 prefix: str = DEFAULT_PREFIX, compensate_headers: bool = True, backend: str | None = None):
        if not _PREFIX.match(prefix):
            raise ValueError(f"prefix must match {_PREFIX.pattern} (lower-case letters, <= 6), got {prefix!r}")
        if not (math.isfinite(tdf) and tdf > 0):
            raise ValueError(f"tdf must be a finite number > 0, got {tdf!r}")
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
        bad = [e for e in endpoints if not isinstance(e, str) or not _NAME.match(e)]
        if bad or len(set(endpoints)) != len(endpoints) or not endpoints:
            raise ValueError(f"endpoints must be distinct names matching {_NAME.pattern}, got {list(endpoints)}")
        self.endpoints = list(endpoints)
        self.prefix, self.tdf, self.compensate_headers = prefix, float(tdf), compensate_headers
        self._requested_backend = backend
        self._links: list[_Link] = []
        pairs = set()
        for i, (a, b, spec) in enumerate(links):
            if a not in endpoints or b not in endpoints or a == b:
                raise ValueError(f"link {i} ({a!r}, {b!r}) must join two distinct endpoints of {self.endpoints}")
            if frozenset((a, b)) in pairs:
                raise ValueError(f"link {i}: {a!r} and {b!r} are already linked")
            if not isinstance(spec, LinkSpec):
                raise TypeError(f"link {i}: expected a LinkSpec, got {type(spec).__name__}")
            pairs.add(frozenset((a, b)))
            self._links.append(_Link(i, a, b, spec))
        self.owner_pid = os.getpid()
        self.instance = next(_instances)
        for link in self._links:
            link.ifname = {link.a: f"{prefix}{self.owner_pid}l{link.index}a",
                           link.b: f"{prefix}{self.owner_pid}l{link.index}b"}
            too_long = [n for n in link.ifname.values() if len(n) > IFNAMSIZ]
            if too_long:
                raise ValueError(f"interface names {too_long} exceed {IFNAMSIZ} characters: shorten prefix {prefix!r}")
        self.isolated = False  # endpoints in their own namespaces (root) or sharing loopback
        self.backend: str | None = None
        self.failure: str | None = None
        self._namespaces: dict[str, str] = {}
        self._ipr: dict[str, IPRoute] = {}
        self._spawned: list[_Spawned] = []
        self._pacers: dict[tuple[str, str], list[Pacer]] = {}
        self._lock = threading.RLock()
        self._up = False
        self._down = False
        self._previous_handlers: dict[int, Any] = {}
        self._tearing_down: threading.Thread | None = None
        self._deferred_signal: int | None = None
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def __enter__(self) -> "Topology":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "Topology":
        """Clean what killed runs left, pick the backend, build namespaces, veths and qdiscs."""
        if self._up or self._down:
            raise RuntimeError("a Topology starts once; make a new one")
        if os.getpid() != self.owner_pid:
            raise RuntimeError("a Topology must start in the process that made it")
        self.backend = self._choose_backend()
        lossy = [f"{ln.a}-{ln.b}" for ln in self._links if ln.spec.loss_pct > 0]
        if lossy and self.backend != "netem":
            raise BackendError(f"links {lossy} ask for loss, which needs the netem backend; this machine offers "
                               f"{available_backends()} and the topology uses {self.backend!r}")
        self.isolated = namespaces_available()
        self._assign_addresses(SUBNET if self.isolated else LOOPBACK)
        self._up = True
        self._install_signal_handlers()
        atexit.register(self._teardown, "interpreter exit")
        try:
            if self.isolated:
                cleanup_stale(self.prefix)
                self._build()
        except BaseException:
            self.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, name=f"topology-{self.instance}-watch", daemon=True)
        self._watcher.start()
        log.info("topology up: %s, backend %s, tdf %g", [f"{ln.a}-{ln.b}" for ln in self._links], self.backend,
                 self.tdf)
        return self

    def stop(self) -> None:
        """Kill spawned processes, remove every namespace, veth and qdisc, restore signal handlers. Idempotent."""
        self._teardown("stop")
        self._restore_signal_handlers()
        atexit.unregister(self._teardown)
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)

    def check(self) -> None:
        """Raise if a spawned process crashed (which also took the topology down)."""
        if self.failure:
            raise RuntimeError(f"topology is down: {self.failure}")

    def _choose_backend(self) -> str:
        offered = available_backends()
        if self._requested_backend is None:
            return offered[0]
        if self._requested_backend not in offered:
            raise BackendError(f"backend {self._requested_backend!r} is not available here; offered: {offered}")
        return self._requested_backend

    def _assign_addresses(self, octets: tuple[int, int]) -> None:
        """One /30 per link, in 10.213/16 between namespaces or 127.213/16 on a shared loopback."""
        for link in self._links:
            third, fourth = divmod(link.index * 4, 256)
            if third > 255:
                raise ValueError(f"at most 16384 links, got {len(self._links)}")
            link.address = {link.a: f"{octets[0]}.{octets[1]}.{third}.{fourth + 1}",
                            link.b: f"{octets[0]}.{octets[1]}.{third}.{fourth + 2}"}

    def _namespace_name(self, endpoint: str) -> str:
        return f"{self.prefix}{self.owner_pid}-{self.instance}-{endpoint}"

    def _build(self) -> None:
        for endpoint in self.endpoints:
            name = self._namespace_name(endpoint)
            netns.create(name)
            self._namespaces[endpoint] = name
            ip = self._ipr[endpoint] = IPRoute(netns=name)
            ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
        for link in self._links:
            # Created straight into both namespaces: never visible in the root namespace.
            self._ipr[link.a].link("add", ifname=link.ifname[link.a], kind="veth",
                                   peer={"ifname": link.ifname[link.b], "net_ns_fd": self._namespaces[link.b]})
            for end in (link.a, link.b):
                ip = self._ipr[end]
                index = ip.link_lookup(ifname=link.ifname[end])[0]
                ip.addr("add", index=index, address=link.address[end], prefixlen=30)
                ip.link("set", index=index, state="up")
                self._shape(end, link, "add")

    # -- shaping ---------------------------------------------------------------------------------------------------

    def _kernel_rate(self, spec: LinkSpec) -> int:
        """Bytes/s for the qdisc: dilated, and raised by the header ratio so that TCP payload gets ``bandwidth``."""
        factor = HEADER_FACTOR if self.compensate_headers else 1.0
        rate = round(spec.bandwidth_mbps * 1e6 / 8 / self.tdf * factor)
        if not 1 <= rate <= MAX_KERNEL_RATE:
            raise BackendError(f"kernel rate {rate} B/s (from {spec.bandwidth_mbps} Mbit/s, tdf {self.tdf}) is "
                               f"outside the qdisc's range 1..{MAX_KERNEL_RATE}")
        return rate

    @staticmethod
    def _burst(rate: int) -> int:
        return max(int(rate * BURST_S), MIN_BURST_BYTES)

    def _shape(self, end: str, link: _Link, command: str) -> None:
        """Egress qdisc of ``end``'s veth: shapes the direction end -> peer. ``command`` is add or replace."""
        if self.backend == "userspace":
            return
        ip = self._ipr[end]
        index = ip.link_lookup(ifname=link.ifname[end])[0]
        rate = self._kernel_rate(link.spec)
        burst = self._burst(rate)
        queue = max(int(rate * QUEUE_S), MIN_QUEUE_BYTES) + burst
        if self.backend == "tbf":
            ip.tc(command, "tbf", index=index, handle="1:", rate=rate, burst=burst, limit=queue)
        elif self.backend == "htb":
            if command == "add":
                ip.tc("add", "htb", index=index, handle="1:", default=0x10)
            ip.tc(f"{command}-class", "htb", index=index, handle="1:10", parent="1:", rate=rate, ceil=rate,
                  burst=burst, cburst=burst)
        elif self.backend == "netem":
            delay_us = round(link.spec.delay_ms * self.tdf * 1e3)
            jitter_us = round(link.spec.jitter_ms * self.tdf * 1e3)
            packets = max(1000, 2 * int((queue + rate * delay_us / 1e6) / FRAME_BYTES))
            ip.tc(command, "netem", index=index, handle="1:", rate=rate, delay=delay_us, jitter=jitter_us,
                  loss=link.spec.loss_pct, limit=packets)

    def _link(self, a: str, b: str) -> _Link:
        for link in self._links:
            if {link.a, link.b} == {a, b}:
                return link
        raise KeyError(f"no link between {a!r} and {b!r}; links: {[(ln.a, ln.b) for ln in self._links]}")

    def set_rate(self, a: str, b: str, mbps: float) -> None:
        """Change a live link's bandwidth (undilated Mbit/s) in both directions, e.g. to follow a trace."""
        link = self._link(a, b)
        spec = replace(link.spec, bandwidth_mbps=mbps)  # validates
        with self._lock:
            self._require_up()
            link.spec = spec
            if self.backend == "userspace":
                for direction in ((a, b), (b, a)):
                    for pacer in self._pacers.get(direction, []):
                        pacer.set_rate(mbps / self.tdf)
                return
            for end in (link.a, link.b):
                self._shape(end, link, "replace" if self.backend != "htb" else "change")

    def _require_up(self) -> None:
        if not self._up:
            raise RuntimeError("the topology is not started")
        if self._down:
            raise RuntimeError(f"the topology is down{': ' + self.failure if self.failure else ''}")

    # -- what the runtime needs ------------------------------------------------------------------------------------

    def address(self, endpoint: str, peer: str) -> str:
        """The IP of ``endpoint`` on its link to ``peer``."""
        return self._link(endpoint, peer).address[endpoint]

    def netns(self, endpoint: str) -> str | None:
        """The namespace of ``endpoint``; None when endpoints share the root namespace (no root)."""
        if endpoint not in self.endpoints:
            raise KeyError(f"unknown endpoint {endpoint!r}; endpoints: {self.endpoints}")
        return self._namespaces.get(endpoint)

    def bandwidth_mbps(self, a: str, b: str) -> float:
        """The link's current undilated bandwidth."""
        return self._link(a, b).spec.bandwidth_mbps

    def sender_delay_ms(self, a: str, b: str) -> float:
        """Wall-clock delay the sender must add on a -> b (0 where netem delays in the kernel)."""
        link = self._link(a, b)
        return 0.0 if self.backend == "netem" else link.spec.delay_ms * self.tdf

    def sender_jitter_ms(self, a: str, b: str) -> float:
        link = self._link(a, b)
        return 0.0 if self.backend == "netem" else link.spec.jitter_ms * self.tdf

    def pacer_config(self, a: str, b: str, seed: int = 0) -> dict[str, Any]:
        """The ``Pacer`` settings for a -> b, as JSON for a worker process."""
        self._require_up()
        rate = self.bandwidth_mbps(a, b) / self.tdf if self.backend == "userspace" else None
        return {"rate_mbps": rate, "delay_ms": self.sender_delay_ms(a, b),
                "jitter_ms": self.sender_jitter_ms(a, b), "seed": seed}

    def pacer(self, a: str, b: str, seed: int = 0) -> Pacer:
        """A ``Pacer`` for a -> b in this process; ``set_rate`` keeps it current (userspace backend)."""
        pacer = Pacer(**self.pacer_config(a, b, seed))
        self._pacers.setdefault((a, b), []).append(pacer)
        return pacer

    def socket(self, endpoint: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket living in ``endpoint``'s namespace, usable from this process (e.g. a thread per endpoint)."""
        self._require_up()
        name = self.netns(endpoint)
        return socket.socket(family, kind) if name is None else netns.create_socket(name, family, kind)

    def spawn(self, endpoint: str, argv: Sequence[str], critical: bool = True, **popen_kwargs: Any) -> subprocess.Popen:
        """Start a process in ``endpoint``'s namespace, in its own session; stopping the topology kills it.

        A ``critical`` process that exits non-zero (a crash, a signal) takes the whole topology down: the other
        processes are killed, the links removed, and ``failure`` says why.
        """
        with self._lock:
            self._require_up()
            name = self.netns(endpoint)
            caller_hook = popen_kwargs.pop("preexec_fn", None)

            def in_namespace() -> None:
                if name is not None:
                    _enter_namespace(name)
                if caller_hook is not None:
                    caller_hook()

            group = popen_kwargs.setdefault("start_new_session", True)
            proc = subprocess.Popen(list(argv), preexec_fn=in_namespace, **popen_kwargs)
            self._spawned.append(_Spawned(endpoint, list(argv), proc, bool(group), critical))
            return proc

    def record(self) -> dict[str, Any]:
        """What the run records about its links: backend, dilation, compensation, per-link kernel settings."""
        links = []
        for ln in self._links:
            rate = self._kernel_rate(ln.spec) if self.backend in KERNEL_RATE_BACKENDS else None
            links.append({"a": ln.a, "b": ln.b, "bandwidth_mbps": ln.spec.bandwidth_mbps,
                          "delay_ms": ln.spec.delay_ms, "jitter_ms": ln.spec.jitter_ms, "loss_pct": ln.spec.loss_pct,
                          "kernel_rate_bytes_per_s": rate, "burst_bytes": self._burst(rate) if rate else None,
                          "sender_delay_ms": self.sender_delay_ms(ln.a, ln.b),
                          "sender_jitter_ms": self.sender_jitter_ms(ln.a, ln.b), "addresses": dict(ln.address)})
        return {"backend": self.backend, "isolated": self.isolated, "tdf": self.tdf,
                "compensate_headers": self.compensate_headers,
                "header_factor": HEADER_FACTOR if self.compensate_headers else 1.0, "links": links}

    # -- teardown --------------------------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Notice a crashed critical process and take everything down with it."""
        while not self._watch_stop.wait(0.05):
            with self._lock:
                if self._down:
                    return
                crashed = [s for s in self._spawned if s.critical and s.proc.poll() not in (None, 0)]
            if crashed:
                s = crashed[0]
                rc = s.proc.returncode
                how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
                self.failure = f"process {s.proc.pid} {s.argv[:3]} on {s.endpoint} died with {how}"
                log.error("%s: tearing the topology down", self.failure)
                self._teardown(self.failure)
                return

    def _kill_spawned(self) -> None:
        alive = [s for s in self._spawned if s.proc.poll() is None]
        for sig, grace in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0)):
            for s in alive:
                try:
                    os.killpg(s.proc.pid, sig) if s.group else s.proc.send_signal(sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            for s in alive:
                try:
                    s.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            alive = [s for s in alive if s.proc.poll() is None]
            if not alive:
                break
        for s in self._spawned:  # a process that exited by itself may have left children in its group
            if s.group:
                try:
                    os.killpg(s.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _teardown(self, reason: str) -> None:
        if os.getpid() != self.owner_pid:
            return  # a forked child (pyroute2's helpers, preexec) owns nothing
        with self._lock:
            if self._down or not self._up:
                self._down = True
                return
            self._down = True
            self._tearing_down = threading.current_thread()
            try:
                self._remove_everything(reason)
            finally:
                self._tearing_down = None
        if self._deferred_signal is not None and threading.current_thread() is threading.main_thread():
            signum, self._deferred_signal = self._deferred_signal, None
            self._redeliver(signum, None)

    def _remove_everything(self, reason: str) -> None:
        self._watch_stop.set()
        log.info("topology down (%s)", reason)
        self._kill_spawned()
        for link in self._links:
            ip = self._ipr.get(link.a)
            if ip is None:
                continue
            try:
                ip.link("del", ifname=link.ifname[link.a])  # takes the peer end and both qdiscs with it
            except Exception as err:  # noqa: BLE001 - keep removing the rest
                if not (isinstance(err, NetlinkError) and err.code == errno.ENODEV):
                    log.warning("could not delete %s: %s", link.ifname[link.a], err)
        for ip in self._ipr.values():
            ip.close()
        self._ipr.clear()
        ours = f"{self.prefix}{self.owner_pid}-{self.instance}-"
        for name in [n for n in netns.listnetns() if n.startswith(ours)]:
            try:
                _remove_namespace(name, self.prefix)
            except Exception as err:  # noqa: BLE001
                log.warning("could not remove namespace %s: %s", name, err)
        self._namespaces.clear()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.debug("not the main thread: no SIGINT/SIGTERM handlers; rely on the context manager")
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN:
                continue  # whoever ignores it does not want us to stop on it
            self._previous_handlers[sig] = previous
            signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in list(self._previous_handlers.items()):
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            del self._previous_handlers[sig]

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.owner_pid:
            os._exit(128 + signum)  # a forked child between fork and exec: die as the default would
        if self._tearing_down is threading.current_thread():
            self._deferred_signal = signum  # finish removing everything first; delivered right after
            return
        self._teardown(f"signal {signal.Signals(signum).name}")
        self._redeliver(signum, frame)

    def _redeliver(self, signum: int, frame: Any) -> None:
        """Hand the signal to whoever handled it before us, now that nothing of ours is left."""
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        self._restore_signal_handlers()
        if callable(previous):
            previous(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + signum)  # unlike the default, lets finally-blocks (an MLflow run) close


# ---------------------------------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.network", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    clean = sub.add_parser("cleanup", help="remove every namespace and veth with the prefix (like mn -c)")
    clean.add_argument("--prefix", default=DEFAULT_PREFIX)
    clean.add_argument("--stale", action="store_true", help="only those whose owner process is dead")
    sub.add_parser("probe", help="print the available shaping backends, best first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "probe":
        print(json.dumps({"backend": probe_backend(), "available": list(available_backends())}))
    else:
        removed = (cleanup_stale if args.stale else cleanup)(args.prefix)
        print(f"removed {len(removed)}: {' '.join(removed)}" if removed else "nothing to remove")


if __name__ == "__main__":
    main()
