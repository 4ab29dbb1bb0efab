"""One direction of a data link between two workers: tensors one way, acknowledgements the other.

A transfer's span runs from the sender's first byte (after any harness-added delay) to the receiver's ACK, as
ECOSYSTEM.md recommends; the receiver's span starts when the first byte arrives.
"""

from __future__ import annotations

import select
import socket
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
        wire.send_tensor(self.sock, tensor, seq, tag)
        ack = wire.recv_frame(self.sock, 1024)
        if ack.kind != wire.Kind.ACK or (ack.seq, ack.tag) != (seq, tag):
            raise wire.FrameError(f"expected ACK for ({seq}, {tag}), got {ack.kind!r} ({ack.seq}, {ack.tag})")
        self.record(seq, "send", start, time.monotonic_ns(), bytes=nbytes, peer=self.peer, **extra)


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
        if frame.kind != wire.Kind.TENSOR:
            raise wire.FrameError(f"expected a tensor frame on the data link, got {frame.kind!r}")
        wire.send_ack(self.sock, frame.seq, frame.tag)
        self.record(frame.seq, "recv", start, time.monotonic_ns(),
                    bytes=frame.tensor.numel() * frame.tensor.element_size(), peer=self.peer)
        return frame
