"""One direction of a data link between two workers: tensors one way, acknowledgements the other.

With a timeout on the socket (``runtime.link_timeout_s``), a link that stops moving ends the transfer with a
``TimeoutError`` naming the peer; the receiver waits for a frame's first byte without one (links idle between
inferences). A transfer's span runs from the sender's first byte (after any harness-added delay) to the receiver's
ACK, so it ends when the peer has the tensor, not when this kernel took it; the receiver's span starts when the
first byte arrives.
"""

from __future__ import annotations

import fcntl
import select
import socket
import struct
import termios
import time
from typing import Any, Callable

import torch

from harness.worker import wire
from harness.worker.pacer import Pacer

Record = Callable[..., None]  # Timeline.add(seq, kind, start_ns, end_ns, **extra)


class Sender:
    """The sending end: pace, send a tensor frame, wait for its ACK, record the span."""

    def __init__(self, sock: socket.socket, record: Record, pacer: Pacer | None = None, peer: str = "") -> None:
        self.sock, self.record, self.pacer, self.peer = sock, record, pacer, peer

    def send(self, tensor: torch.Tensor, seq: int, tag: int, **extra: Any) -> None:
        tensor = tensor.contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        start = time.monotonic_ns()
        if self.pacer is not None:
            self.pacer.before_send(nbytes)
        try:
            wire.send_tensor(self.sock, tensor, seq, tag)
            self._await_ack()
            ack = wire.recv_frame(self.sock, 1024)
        except TimeoutError:
            raise TimeoutError(f"data link to {self.peer or 'the peer'!r} stalled: no progress for "
                               f"{self.sock.gettimeout():g} s while sending inference {seq} (runtime.link_timeout_s)"
                               ) from None
        if ack.kind != wire.Kind.ACK or (ack.seq, ack.tag) != (seq, tag):
            raise wire.FrameError(f"expected ACK for ({seq}, {tag}), got {ack.kind!r} ({ack.seq}, {ack.tag})")
        self.record(seq, "send", start, time.monotonic_ns(), bytes=nbytes, peer=self.peer, **extra)

    def _await_ack(self) -> None:
        """Wait for the ACK while the link drains what is queued: a slow link is waited for as long as bytes keep
        leaving the socket; a link on which nothing moves for the timeout is stalled."""
        timeout = self.sock.gettimeout()
        if timeout is None:
            return
        queued = unsent_bytes(self.sock)
        while not select.select([self.sock], [], [], timeout)[0]:
            now = unsent_bytes(self.sock)
            if now >= queued:
                raise TimeoutError("no ACK and no bytes leaving")
            queued = now


def unsent_bytes(sock: socket.socket) -> int:
    """Bytes of this socket not yet acknowledged by the peer's kernel (Linux SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


class Receiver:
    """The receiving end: wait for a frame, acknowledge it at once, record the span."""

    def __init__(self, sock: socket.socket, record: Record, max_payload: int, peer: str = "") -> None:
        self.sock, self.record, self.max_payload, self.peer = sock, record, max_payload, peer

    def recv(self) -> wire.Frame | None:
        """The next tensor frame, or None when the peer closed the connection between frames."""
        select.select([self.sock], [], [])
        start = time.monotonic_ns()
        try:
            frame = wire.recv_frame(self.sock, self.max_payload)
        except wire.ConnectionClosed as exc:
            if exc.mid_frame:
                raise
            return None
        except TimeoutError:
            raise TimeoutError(f"data link from {self.peer or 'the peer'!r} stalled: no progress for "
                               f"{self.sock.gettimeout():g} s in the middle of a tensor (runtime.link_timeout_s)"
                               ) from None
        if frame.kind != wire.Kind.TENSOR:
            raise wire.FrameError(f"expected a tensor frame on the data link, got {frame.kind!r}")
        wire.send_ack(self.sock, frame.seq, frame.tag)
        self.record(frame.seq, "recv", start, time.monotonic_ns(),
                    bytes=frame.tensor.numel() * frame.tensor.element_size(), peer=self.peer)
        return frame
