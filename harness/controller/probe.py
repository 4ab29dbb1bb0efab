"""Active probing of a live shaped link: tensor frames of the wire protocol from one endpoint's namespace to the
other's, each acknowledged by the receiver, sent through the same veth and qdisc as the workers' data, so they
measure the rate the workers would get. One prober serves two uses:

- before the workers start, :func:`probe_link` measures every link's goodput once, with a single frame that lasts
  about ``GOODPUT_REAL_S`` of real time (``RunResult.probe_mbps``: recorded even when a plan sends nothing);
- the dynamic scenario's ``probe`` estimator sends a short packet train between inferences, when the plan's own
  transfers said too little about the link (:meth:`LinkProber.measure`).

Sizing. A train lasts about ``TRAIN_MS`` of emulated time at the current estimate, in ``CHUNKS`` frames. The
kernel's token bucket (``shaping.burst_bytes``: 1 ms of traffic, at least one frame) lets the first bytes after an
idle pause through above the rate, so the first frame is not counted when there are later ones: between frames the
link pauses only for one ACK, far too short to refill the bucket, and the later frames see the sustained rate. A
frame is never smaller than ``MIN_CHUNK_BYTES``, several buckets, so that even a lone first frame reads close to
the rate. A train stops early once it has run ``MAX_TRAIN_MS``: a link far slower than estimated costs one frame.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import torch

from harness.loadgen.result import goodput_mbps
from harness.network.shaping import MIN_BURST_BYTES
from harness.network.topology import Topology
from harness.worker.channel import Receiver, Sender

TRAIN_MS = 50.0  # emulated duration of a train at the estimated rate
MAX_TRAIN_MS = 120.0  # emulated: after this, no further frame is sent
CHUNKS = 5
MIN_CHUNK_BYTES = 4 * MIN_BURST_BYTES
MAX_CHUNK_BYTES = 16 << 20
TRAIN_PORT = 46998  # a dynamic run's standing connection for packet trains
GOODPUT_PORT = 46999  # the pre-run goodput probe's
GOODPUT_REAL_S = 0.3  # the pre-run probe's frame lasts about this long in real time, whatever the rate and TDF
GOODPUT_MIN_FRAME_BYTES = 64 * 1024


@dataclass(frozen=True)
class ProbeSample:
    """One train: the rate it measured (undilated Mbit/s), what it cost, and when it ended (monotonic ns)."""

    mbps: float
    bytes: int
    emulated_ms: float
    end_ns: int


class LinkProber:
    """A standing probe connection ``a -> b`` through the topology's shaped link; :meth:`measure` sends a train.
    Its receiver refuses frames over ``max_frame_bytes``."""

    def __init__(self, topology: Topology, a: str, b: str, tdf: float, port: int = TRAIN_PORT,
                 max_frame_bytes: int = MAX_CHUNK_BYTES) -> None:
        self.tdf = tdf
        self.seq = 0
        listener = topology.socket(b)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((topology.address(b, a), port))
        listener.listen(1)
        accepted: list[socket.socket] = []
        acceptor = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
        acceptor.start()
        self.sock = topology.socket(a)
        try:
            self.sock.connect((topology.address(b, a), port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            acceptor.join(timeout=10)
        finally:
            listener.close()
        if not accepted:
            self.sock.close()
            raise RuntimeError(f"the link probe {a} -> {b} could not connect")
        self.peer = accepted[0]
        # The receiving end acknowledges every frame and discards it; it ends when the sender closes.
        receiver = Receiver(self.peer, lambda *args, **kw: None, max_frame_bytes)
        self.receiver = threading.Thread(target=self._drain, args=(receiver,), daemon=True, name="probe-receiver")
        self.receiver.start()
        self.sender_spans: list[tuple[int, int, int]] = []
        self.sender = Sender(self.sock, lambda seq, kind, start, end, **kw: self.sender_spans.append(
            (start, end, int(kw["bytes"]))), topology.pacer(a, b))

    @staticmethod
    def _drain(receiver: Receiver) -> None:
        try:
            while receiver.recv() is not None:
                pass
        except (OSError, ValueError):  # closed under it at the end of the run (select on a closed socket: ValueError)
            pass

    def measure(self, estimate_mbps: float) -> ProbeSample:
        """Send one train sized to ``estimate_mbps`` (undilated) and return the rate it measured."""
        chunk = int(min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, estimate_mbps * 1e6 / 8 * TRAIN_MS / 1e3 / CHUNKS)))
        return self.train(chunk, CHUNKS)

    def train(self, frame_bytes: int, frames: int) -> ProbeSample:
        """Send ``frames`` frames of ``frame_bytes`` (no further one once the train has run ``MAX_TRAIN_MS``); the
        rate is read over the frames after the first, or over the first when it is the only one: each frame from
        its first byte sent to its ACK, undilated by the prober's TDF."""
        payload = torch.zeros(frame_bytes, dtype=torch.uint8)
        self.sender_spans.clear()
        self.seq += 1
        start = time.monotonic_ns()
        stop_at = start + int(MAX_TRAIN_MS * 1e6 * self.tdf)
        for tag in range(frames):
            self.sender.send(payload, self.seq, tag)
            if time.monotonic_ns() >= stop_at:
                break
        spans = self.sender_spans[1:] or self.sender_spans  # the first frame rode the bucket's burst
        seconds = sum(end - begin for begin, end, _ in spans) / 1e9 / self.tdf
        sent = sum(n for _, _, n in self.sender_spans)
        end_ns = self.sender_spans[-1][1]
        return ProbeSample(mbps=goodput_mbps(sum(n for _, _, n in spans), seconds), bytes=sent,
                           emulated_ms=(end_ns - start) / 1e6 / self.tdf, end_ns=end_ns)

    def close(self) -> None:
        for sock in (self.sock, self.peer):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.receiver.join(timeout=5)


def probe_link(topology: Topology, a: str, b: str, port: int = GOODPUT_PORT) -> float:
    """Goodput of the link a -> b (undilated Mbit/s) before the workers start: one frame sized to last about
    ``GOODPUT_REAL_S`` at the link's dilated rate (at least ``GOODPUT_MIN_FRAME_BYTES``), timed at its sender.

    Every run records what its link really delivered, even when its plan sends nothing.
    """
    kernel_mbps = topology.bandwidth_mbps(a, b) / topology.tdf
    nbytes = max(GOODPUT_MIN_FRAME_BYTES, int(kernel_mbps * 1e6 / 8 * GOODPUT_REAL_S))
    prober = LinkProber(topology, a, b, topology.tdf, port, max_frame_bytes=nbytes)
    try:
        return prober.train(nbytes, frames=1).mbps
    finally:
        prober.close()
