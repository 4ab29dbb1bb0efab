"""A control connection after authentication: every frame carries a MAC over its bytes and its sequence number.

Each direction has its own key (``auth.SessionKeys``) and counts its frames from 0; a frame is followed by
HMAC-SHA256(key, counter || header || payload). The counter is not sent: both ends know it. So a frame injected on
the path (no key), replayed or reordered (wrong counter), or altered fails the check, and the receiver ends the
session with :class:`IntegrityError` before it decodes a byte of the payload. Frames are not encrypted: anyone on the
path can read setups and results, not change them.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct
import threading
from typing import Any

import torch

from harness.worker import wire

MAC = hashlib.sha256
MAC_BYTES = MAC().digest_size
_COUNTER = struct.Struct("<Q")


class IntegrityError(wire.FrameError):
    """A sealed frame's MAC did not match: injected, replayed, reordered or altered on the path."""


class SealedSocket:
    """A socket whose frames are sealed one way with ``send_key`` and checked the other way with ``recv_key``.

    Sends are thread-safe (a worker's threads report on one connection); receives are made by one thread.
    """

    def __init__(self, sock: socket.socket, send_key: bytes, recv_key: bytes) -> None:
        self.sock = sock
        self._send_key, self._recv_key = send_key, recv_key
        self._sent = self._received = 0
        self._lock = threading.Lock()
        self._broken: str | None = None

    def _mac(self, key: bytes, counter: int, header: bytes | memoryview, payload: bytes | memoryview) -> bytes:
        mac = hmac.new(key, _COUNTER.pack(counter), MAC)
        mac.update(header)
        mac.update(payload)
        return mac.digest()

    def _send(self, parts: list[bytes | memoryview]) -> int:
        header, payload = parts[0], parts[1] if len(parts) > 1 else b""
        with self._lock:
            mac = self._mac(self._send_key, self._sent, header, payload)
            self._sent += 1
            return wire.send_parts(self.sock, [*parts, mac])

    def send_json(self, obj: dict[str, Any], seq: int = 0, tag: int = 0) -> int:
        return self._send(wire.object_parts(wire.Kind.JSON, obj, seq, tag))

    def send_error(self, reason: str, seq: int = 0, tag: int = 0) -> int:
        return self._send(wire.object_parts(wire.Kind.ERROR, {"reason": reason}, seq, tag))

    def send_tensor(self, tensor: torch.Tensor, seq: int, tag: int = 0) -> int:
        return self._send(wire.tensor_parts(tensor, seq, tag))

    def recv_frame(self, max_payload: int, max_json: int = wire.MAX_JSON_BYTES) -> wire.Frame:
        """The next frame, its MAC checked before its payload is decoded. Raises ``IntegrityError`` (and keeps
        raising it: the session is over), ``FrameError`` or ``ConnectionClosed``."""
        if self._broken is not None:
            raise IntegrityError(self._broken)
        read_into = wire.recv_exact(self.sock)

        def check(header: bytes, payload: memoryview) -> None:
            trailer = bytearray(MAC_BYTES)
            read_into(memoryview(trailer), "frame MAC", True)
            expected = self._mac(self._recv_key, self._received, header, payload)
            if not hmac.compare_digest(expected, bytes(trailer)):
                self._broken = (f"control frame {self._received} failed its integrity check (injected, replayed, "
                                "reordered or altered on the path): the session is ended")
                raise IntegrityError(self._broken)
            self._received += 1

        return wire.read_frame(read_into, max_payload, max_json, check=check)

    # What a selector and a caller need of the socket beneath.
    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "SealedSocket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
