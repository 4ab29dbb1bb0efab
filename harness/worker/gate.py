"""Handshakes before authentication, served side by side and each within one wall-clock deadline.

A listener (a board's control port, a worker's data port) must not be held by a peer that says nothing or that
trickles a byte every few seconds: a per-``recv`` timeout allows exactly that. The gate multiplexes every pending
handshake in one thread with a selector, gives each one ``HANDSHAKE_DEADLINE_S`` from its accept to its last byte,
and bounds how many may be pending (in all, and per peer address), so that idle or slow peers delay a real one by
nothing, and a flood from one address cannot crowd out another.

A handshake is an opening frame (optional), then exactly one frame from the peer, then an optional reply. The gate
never reads past that frame (so nothing that follows it is lost), and a frame is decoded by ``wire`` with the
pre-authentication bounds before anything else looks at it.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from harness.worker import wire

log = logging.getLogger("splitbench.worker")

HANDSHAKE_DEADLINE_S = 5.0  # accept to authenticated, wall clock; a real peer needs a few milliseconds
MAX_PENDING = 64
MAX_PENDING_PER_PEER = 8  # more than a real controller ever has open; a flood from one address stops here


class Handshake(Protocol):
    def opening(self) -> dict[str, Any] | None:
        """The frame sent as soon as the connection is accepted, or None."""

    def on_answer(self, frame: wire.Frame) -> tuple[dict[str, Any] | None, Any]:
        """Judge the peer's one frame: the reply to send (or None) and what the caller gets; raises to refuse."""


class _NeedMore(Exception):
    pass


@dataclass
class Admitted:
    """A connection that passed its handshake (blocking again), with what the handshake returned."""

    sock: socket.socket
    peer: Any
    result: Any


@dataclass
class _Pending:
    sock: socket.socket
    peer: Any
    handshake: Handshake
    deadline: float
    buffer: bytearray = field(default_factory=bytearray)

    def wanted(self) -> int:
        """Bytes still missing from the one frame (never more: what follows it is not the gate's to read)."""
        if len(self.buffer) < wire.HEADER.size:
            return wire.HEADER.size - len(self.buffer)
        nbytes = wire.HEADER.unpack(self.buffer[:wire.HEADER.size])[-1]
        return wire.HEADER.size + nbytes - len(self.buffer)

    def frame(self, max_hello: int) -> wire.Frame:
        """The frame once it is whole (``_NeedMore`` before); ``FrameError`` as soon as its header is bad."""
        offset = 0

        def read_into(view: memoryview, what: str, started: bool) -> None:
            nonlocal offset
            if offset + len(view) > len(self.buffer):
                raise _NeedMore()
            view[:] = self.buffer[offset:offset + len(view)]
            offset += len(view)

        return wire.read_frame(read_into, 0, max_hello)


def peer_key(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else "local"


class Gate:
    """Serves the handshakes of ``server``'s connections; :meth:`poll` returns those that passed."""

    def __init__(self, server: socket.socket, make_handshake: Callable[[], Handshake], max_hello: int,
                 what: str = "connection", refuse: Callable[[], str | None] = lambda: None,
                 deadline_s: float = HANDSHAKE_DEADLINE_S, max_pending: int = MAX_PENDING,
                 max_per_peer: int = MAX_PENDING_PER_PEER) -> None:
        self.server, self.make_handshake, self.max_hello, self.what = server, make_handshake, max_hello, what
        self.refuse, self.deadline_s = refuse, deadline_s
        self.max_pending, self.max_per_peer = max_pending, max_per_peer
        self.pending: dict[socket.socket, _Pending] = {}
        self.selector = selectors.DefaultSelector()
        server.setblocking(False)
        self.selector.register(server, selectors.EVENT_READ)

    def poll(self, timeout_s: float) -> list[Admitted]:
        """Serve handshakes for up to ``timeout_s``; returns as soon as one or more connections passed."""
        end = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            self._expire(now)
            wait = min([end] + [p.deadline for p in self.pending.values()]) - now
            admitted = []
            for key, _ in self.selector.select(timeout=max(0.0, wait)):
                if key.fileobj is self.server:
                    self._accept()
                elif (done := self._read(self.pending[key.fileobj])) is not None:  # type: ignore[index]
                    admitted.append(done)
            if admitted or time.monotonic() >= end:
                return admitted

    def _accept(self) -> None:
        try:
            sock, peer = self.server.accept()
        except (BlockingIOError, InterruptedError):
            return
        if (reason := self.refuse()) is not None:
            self._reject(sock, peer, reason, tell=True)
            return
        same_peer = sum(peer_key(p.peer) == peer_key(peer) for p in self.pending.values())
        if len(self.pending) >= self.max_pending or same_peer >= self.max_per_peer:
            self._reject(sock, peer, f"too many pending handshakes ({len(self.pending)} in all, {same_peer} from "
                                     "this address)", tell=False)
            return
        handshake = self.make_handshake()
        sock.setblocking(False)
        try:
            if (opening := handshake.opening()) is not None:
                wire.send_json(sock, opening)  # ~200 bytes into an empty send buffer: never blocks
        except OSError:
            sock.close()
            return
        self.pending[sock] = _Pending(sock, peer, handshake, time.monotonic() + self.deadline_s)
        self.selector.register(sock, selectors.EVENT_READ)

    def _read(self, pending: _Pending) -> Admitted | None:
        try:
            chunk = pending.sock.recv(pending.wanted())
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self._drop(pending, f"{exc}")
            return None
        if not chunk:
            self._drop(pending, "closed before its handshake was complete")
            return None
        pending.buffer += chunk
        try:
            frame = pending.frame(self.max_hello)
            reply, result = pending.handshake.on_answer(frame)
            if reply is not None:
                wire.send_json(pending.sock, reply)
        except _NeedMore:
            return None
        except (wire.FrameError, ConnectionError, ValueError, OSError) as exc:  # AuthError is a ConnectionError
            self._drop(pending, str(exc) or type(exc).__name__, tell=True)
            return None
        self._forget(pending)
        pending.sock.setblocking(True)
        return Admitted(pending.sock, pending.peer, result)

    def _expire(self, now: float) -> None:
        for pending in [p for p in self.pending.values() if p.deadline <= now]:
            self._drop(pending, f"no complete handshake within {self.deadline_s:g} s")

    def _forget(self, pending: _Pending) -> None:
        self.selector.unregister(pending.sock)
        del self.pending[pending.sock]

    def _drop(self, pending: _Pending, reason: str, tell: bool = False) -> None:
        self._forget(pending)
        self._reject(pending.sock, pending.peer, reason, tell)

    def _reject(self, sock: socket.socket, peer: Any, reason: str, tell: bool) -> None:
        log.warning("%s from %s refused: %s", self.what, peer or "local socket", reason)
        if tell:
            try:
                sock.setblocking(False)
                wire.send_error(sock, reason)
            except OSError:
                pass
        sock.close()

    def abandon(self) -> None:
        """In a forked child: let go of the parent's listener and pending connections without touching the
        selector's registrations, which the parent shares."""
        for pending in self.pending.values():
            pending.sock.close()
        self.server.close()
        self.selector.close()

    def close(self) -> None:
        for pending in list(self.pending.values()):
            self._forget(pending)
            pending.sock.close()
        self.selector.close()
