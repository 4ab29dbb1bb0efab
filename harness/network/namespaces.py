"""Network namespaces and veths the harness owns, and the cleanup of what killed runs left (like ``mn -c``).

Every name carries the owner's pid after a prefix (``sb<pid>-...``), so that a later run can tell a dead owner's
leftovers from a live run's. Namespaces are bound under pyroute2's directory (/var/run/netns), or, in a rootless
process, under a tmpfs of its own (``harness.network.userns``: :func:`use_namespace_directory`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import re
import signal
import socket
import tempfile
import threading
from typing import Callable, TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger("harness.network")

DEFAULT_PREFIX = "sb"
PREFIX_PATTERN = re.compile(r"^[a-z][a-z_]{0,5}$")
ROOTLESS_DIRECTORY = re.compile(rf"^{DEFAULT_PREFIX}(\d+)-netns$")


def use_namespace_directory(directory: str) -> None:
    """Bind namespaces under ``directory`` from now on (pyroute2 reads its module's setting at each call)."""
    netns.NETNS_RUN_DIR = directory


def namespace_path(name: str) -> str:
    """The file namespace ``name`` is bound to; pass this, never the bare name, where pyroute2 would look under its
    own fixed directory (a veth peer's ``net_ns_fd``)."""
    return os.path.join(netns.NETNS_RUN_DIR, name)


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


T = TypeVar("T")


def on_helper_thread(fn: Callable[[], T], thread_name: str) -> T:
    """``fn()`` run by a new thread, which ends there (with whatever namespace it joined); its result or its
    exception handed to the calling thread."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as err:
            failure.append(err)

    helper = threading.Thread(target=run, name=thread_name)
    helper.start()
    helper.join()
    if failure:
        raise failure[0]
    return result[0]


def create_namespace(name: str) -> None:
    """Make network namespace ``name`` without forking, as ``ip netns add`` does: a helper thread unshares its own
    network namespace (a per-thread operation) and bind-mounts it at :func:`namespace_path`.

    pyroute2's ``netns.create`` forks this whole process to do it and gives the child 2 s to answer; a child forked
    from a large, threaded process (torch, MLflow) can miss that, and a sweep's first job once fell back to the
    userspace backend for the whole sweep that way.
    """
    def make() -> None:
        if _libc.unshare(netns.CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"unshare(CLONE_NEWNET) for namespace {name!r}: {os.strerror(code)}")
        netns.attach(name, "thread-self")  # bind-mounts /proc/thread-self/ns/net: this thread's namespace

    on_helper_thread(make, f"create-netns-{name}")


def enter_namespace(name: str) -> None:
    """Join namespace ``name``; runs in a child between fork and exec: only a setns(2), never a creation."""
    netns.setns(name, flags=0)


def call_in(name: str, make: Callable[[], T]) -> T:
    """``make()`` run inside existing namespace ``name`` (never created here) by a helper thread that enters it
    (setns(2) is per thread) and ends there; the calling thread never leaves its own namespace.

    Sockets opened so stay in ``name`` for good: this is how the harness opens netlink and TCP sockets in a
    namespace without pyroute2's forked helper, whose child inside a host process that turns SIGTERM into
    SystemExit (a Ray worker) unwinds through the host's stack instead of exiting. The helper never comes back
    because a rootless process (``harness.network.userns``) may enter the namespaces it made but not return to the
    host's, which its user namespace does not own.
    """
    def run() -> T:
        netns.setns(name, flags=0)  # flags=0: never create it
        return make()

    return on_helper_thread(run, f"in-netns-{name}")


def socket_in(name: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket living in namespace ``name``, opened without a fork."""
    return call_in(name, lambda: socket.socket(family, kind))


def ipr_in(name: str) -> IPRoute:
    """An ``IPRoute`` talking to existing namespace ``name`` (never created here), opened without a fork.

    pyroute2 opens one netlink socket per thread that uses the object, lazily; each is opened inside ``name``
    too, so that a teardown from a watcher thread still talks to the namespace and not to the thread's own.
    """

    def make() -> IPRoute:
        ip = IPRoute()
        open_socket = ip.asyncore.setup_socket
        ip.asyncore.setup_socket = lambda: call_in(name, open_socket)
        # Its event loop belongs to this helper thread, which ends now: close it here (pyroute2's own per-call
        # cleanup, which it skips for the constructing thread); each thread that uses ``ip`` makes its own.
        del ip.asyncore.local.keep_event_loop
        ip._cleanup_transport()
        return ip

    ip = call_in(name, make)
    ip.asyncore.local.keep_event_loop = True  # the caller's loop lives until it closes ``ip``, as a constructor's
    return ip


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


def remove_namespace(name: str, prefix: str) -> None:
    """Kill what still runs in it, delete its veths (the peer end goes too), then unmount it."""
    if name not in netns.listnetns():
        return  # already gone (e.g. removed by `cleanup` while its owner still ran)
    for pid in netns.ns_pids(nspath=netns.NETNS_RUN_DIR).get(name, []):  # its default is bound at import
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        with ipr_in(name) as ip:  # never creates the namespace we are removing
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
    if not PREFIX_PATTERN.match(prefix):
        raise ValueError(f"prefix must match {PREFIX_PATTERN.pattern}, got {prefix!r}")
    removed = _remove_dead_rootless_directories()
    if os.geteuid() != 0:
        return removed  # neither root nor rootless (harness.network.userns): none of them is this process's
    for name in sorted(netns.listnetns()):
        pid = _owner_pid(name, prefix)
        if pid is None or (stale_only and _alive(pid)):
            continue
        try:
            remove_namespace(name, prefix)
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


def _remove_dead_rootless_directories() -> list[str]:
    """The empty folders rootless processes mounted their namespace directory on, where their owner is dead (its
    namespaces died with its user namespace). Only dead owners': a live one's mount would be detached."""
    removed = []
    top = tempfile.gettempdir()
    for entry in sorted(os.listdir(top)):
        match = ROOTLESS_DIRECTORY.match(entry)
        if match and not _alive(int(match.group(1))):
            try:
                os.rmdir(os.path.join(top, entry))
                removed.append(os.path.join(top, entry))
            except OSError as err:  # not ours, or not empty: not something the harness left
                log.debug("left %s: %s", entry, err)
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
    if os.geteuid() == 0:
        with IPRoute() as ip:
            names += [ln.get_attr("IFLA_IFNAME") for ln in ip.get_links()
                      if _owner_pid(ln.get_attr("IFLA_IFNAME"), prefix) is not None]
    return sorted(names)

