"""A topology of network namespaces joined by shaped veth links, made and torn down by the harness.

One namespace per endpoint, a veth pair per link, shaping on the egress of each end (``harness.network.shaping``).
Time dilation: the kernel runs at bandwidth / tdf with delays x tdf; every value this module hands out (rates,
delays, ``Pacer`` settings) is already dilated, and the harness divides measured times by tdf.

Nothing survives a run: exit, exception, SIGINT, SIGTERM and a crashed spawned process all remove every namespace,
veth and qdisc and kill every spawned process (``harness.network.processes``); names carry the owner's pid so that
the next run removes what a killed run left (``harness.network.namespaces``).
"""

from __future__ import annotations

import atexit
import errno
import itertools
import logging
import math
import os
import re
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from harness.network.link import BackendError, LinkSpec
from harness.network.namespaces import (DEFAULT_PREFIX, PREFIX_PATTERN, cleanup_stale, create_namespace,
                                       ipr_in, namespace_path, remove_namespace, socket_in)
from harness.network.processes import Processes
from harness.network.zygote import ForkedProcess, Zygote
from harness.worker.pacer import Pacer
from harness.network.shaping import (BACKENDS, HEADER_FACTOR, KERNEL_RATE_BACKENDS, available_backends, burst_bytes,
                                     kernel_rate, namespaces_available, privilege, shape)

log = logging.getLogger("harness.network")

IFNAMSIZ = 15
SUBNET = (10, 213)  # the harness owns 10.213.0.0/16: one /30 per link
LOOPBACK = (127, 213)  # without namespaces: distinct loopback addresses, the same plan
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_instances = itertools.count()


@dataclass
class _Link:
    index: int
    a: str
    b: str
    spec: LinkSpec
    ifname: dict[str, str] = field(default_factory=dict)
    ifindex: dict[str, int] = field(default_factory=dict)  # per end, once the veth exists: a rate change looks up none
    address: dict[str, str] = field(default_factory=dict)


class Topology:
    """Endpoints in their own network namespaces joined by shaped veth links; a context manager.

    ``Topology(["device", "server"], [("device", "server", LinkSpec(18.88))])``; a star lists (es0, es1),
    (es0, es2), ... Where this process cannot make namespaces (neither root nor rootless: ``shaping.privilege``)
    the endpoints share its namespace on distinct loopback addresses and the ``userspace`` backend shapes in the
    sender. ``backend`` forces one of the available backends (default: the best).
    """

    def __init__(self, endpoints: Sequence[str], links: Sequence[tuple[str, str, LinkSpec]], tdf: float = 1.0,
                 prefix: str = DEFAULT_PREFIX, compensate_headers: bool = True, backend: str | None = None):
        if not PREFIX_PATTERN.match(prefix):
            raise ValueError(f"prefix must match {PREFIX_PATTERN.pattern} (lower-case letters, <= 6), got {prefix!r}")
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
        self.local = True  # a Network whose workers the harness spawns (harness.network.base)
        self.isolated = False  # endpoints in their own namespaces (root or rootless) or sharing loopback
        self.backend: str | None = None
        self.failure: str | None = None
        self._namespaces: dict[str, str] = {}
        self._ipr: dict[str, IPRoute] = {}
        self.processes = Processes(f"topology-{self.instance}", self._on_crash)
        self._pacers: dict[tuple[str, str], list[Pacer]] = {}
        self._lock = threading.RLock()
        self._up = False
        self._down = False
        self._previous_handlers: dict[int, Any] = {}
        self._tearing_down: threading.Thread | None = None
        self._deferred_signal: int | None = None

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
        self.processes.watch()
        log.info("topology up: %s, backend %s, tdf %g", [f"{ln.a}-{ln.b}" for ln in self._links], self.backend,
                 self.tdf)
        return self

    def stop(self) -> None:
        """Kill spawned processes, remove every namespace, veth and qdisc, restore signal handlers. Idempotent."""
        self._teardown("stop")
        self._restore_signal_handlers()
        atexit.unregister(self._teardown)
        self.processes.stop_watching()

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
            create_namespace(name)
            self._namespaces[endpoint] = name
            ip = self._ipr[endpoint] = ipr_in(name)
            ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
        for link in self._links:
            # Created straight into both namespaces: never visible in the root namespace.
            peer_namespace = namespace_path(self._namespaces[link.b])
            self._ipr[link.a].link("add", ifname=link.ifname[link.a], kind="veth",
                                   peer={"ifname": link.ifname[link.b], "net_ns_fd": peer_namespace})
            for end in (link.a, link.b):
                ip = self._ipr[end]
                index = link.ifindex[end] = ip.link_lookup(ifname=link.ifname[end])[0]
                ip.addr("add", index=index, address=link.address[end], prefixlen=30)
                ip.link("set", index=index, state="up")
                self._shape(end, link, "add")

    def _shape(self, end: str, link: _Link, command: str) -> None:
        """Egress qdisc of ``end``'s veth: shapes the direction end -> peer."""
        if self.backend != "userspace":
            shape(self._ipr[end], link.ifindex[end], self.backend, link.spec, self.tdf, self.compensate_headers,
                  command)

    # -- shaping ---------------------------------------------------------------------------------------------------

    def _link(self, a: str, b: str) -> _Link:
        for link in self._links:
            if {link.a, link.b} == {a, b}:
                return link
        raise KeyError(f"no link between {a!r} and {b!r}; links: {[(ln.a, ln.b) for ln in self._links]}")

    def set_rate(self, a: str, b: str, mbps: float) -> None:
        """Change a live link's bandwidth (undilated Mbit/s) in both directions, e.g. to follow a trace."""
        self.set_link(a, b, replace(self._link(a, b).spec, bandwidth_mbps=mbps))  # replace validates

    def set_link(self, a: str, b: str, spec: LinkSpec) -> None:
        """Give a live link new facts (rate, delay, jitter, loss) in both directions, shaped at the current TDF:
        the next job of a sweep on the same topology."""
        link = self._link(a, b)
        if spec.loss_pct > 0 and self.backend != "netem":
            raise BackendError(f"link {a}-{b} asks for loss, which needs the netem backend; the topology uses "
                               f"{self.backend!r}")
        with self._lock:
            self._require_up()
            link.spec = spec
            if self.backend == "userspace":
                for direction in ((a, b), (b, a)):
                    for pacer in self._pacers.get(direction, []):
                        pacer.set_rate(spec.bandwidth_mbps / self.tdf)
                return
            for end in (link.a, link.b):
                self._shape(end, link, "replace" if self.backend != "htb" else "change")

    @property
    def up(self) -> bool:
        """Started and not torn down (a crashed process takes it down)."""
        return self._up and not self._down

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
        """The namespace of ``endpoint``; None when endpoints share this process's namespace (no namespaces)."""
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
        return socket.socket(family, kind) if name is None else socket_in(name, family, kind)

    def spawn(self, endpoint: str, argv: Sequence[str], critical: bool = True, **popen_kwargs: Any) -> subprocess.Popen:
        """Start a process in ``endpoint``'s namespace, in its own session; stopping the topology kills it.

        A ``critical`` process that exits non-zero (a crash, a signal) takes the whole topology down: the other
        processes are killed, the links removed, and ``failure`` says why.
        """
        with self._lock:
            self._require_up()
            return self.processes.spawn(endpoint, self.netns(endpoint), argv, critical, **popen_kwargs)

    def fork(self, endpoint: str, zygote: Zygote, module: str, args: Sequence[str], env: dict[str, str], cwd: str,
             log: Any, critical: bool = True, fds: Mapping[int, int] | None = None) -> ForkedProcess:
        """``python -m module args`` forked by ``zygote`` into ``endpoint``'s namespace, as :meth:`spawn` starts it."""
        with self._lock:
            self._require_up()
            return self.processes.fork(endpoint, self.netns(endpoint), zygote, module, args, env, cwd, log, critical,
                                       fds)

    def record(self) -> dict[str, Any]:
        """What the run records about its links: backend, dilation, compensation, per-link kernel settings."""
        links = []
        for ln in self._links:
            rate = kernel_rate(ln.spec, self.tdf, self.compensate_headers) if self.backend in KERNEL_RATE_BACKENDS else None
            links.append({"a": ln.a, "b": ln.b, "bandwidth_mbps": ln.spec.bandwidth_mbps,
                          "delay_ms": ln.spec.delay_ms, "jitter_ms": ln.spec.jitter_ms, "loss_pct": ln.spec.loss_pct,
                          "kernel_rate_bytes_per_s": rate, "burst_bytes": burst_bytes(rate) if rate else None,
                          "sender_delay_ms": self.sender_delay_ms(ln.a, ln.b),
                          "sender_jitter_ms": self.sender_jitter_ms(ln.a, ln.b), "addresses": dict(ln.address)})
        return {"backend": self.backend, "privilege": privilege(), "isolated": self.isolated, "tdf": self.tdf,
                "compensate_headers": self.compensate_headers,
                "header_factor": HEADER_FACTOR if self.compensate_headers else 1.0, "links": links}

    # -- teardown --------------------------------------------------------------------------------------------------

    def _on_crash(self, failure: str) -> None:
        with self._lock:
            if self._down:
                return  # ended by our own teardown, not a crash
            self.failure = failure
        log.error("%s: tearing the topology down", failure)
        self._teardown(failure)

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
        log.info("topology down (%s)", reason)
        self.processes.kill_all()
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
                remove_namespace(name, self.prefix)
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

