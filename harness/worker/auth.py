"""Challenge-response on the control connection: the secret never crosses the wire.

The worker opens with a challenge (a fresh random nonce); the controller answers
HMAC-SHA256(secret, nonce || CONTEXT); the worker compares with ``hmac.compare_digest``. Everything received before
that check is bounded (``MAX_HELLO_BYTES``, no tensor payload) and parsed by ``wire`` with bounded depth and numbers,
so an unauthenticated peer can only get an ERROR reply or a closed connection.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import socket
from typing import Any

from harness.worker import wire

PROTOCOL = "splitbench-control"
CONTEXT = b"splitbench control channel v1"  # binds the answer to this use of the secret
NONCE_BYTES = 32
MAX_HELLO_BYTES = 4096  # a challenge or an answer is about 150 bytes
_HEX = re.compile(r"[0-9a-f]+")


class AuthError(ConnectionError):
    """The peer failed authentication; the message says how (never with the secret)."""


def challenge() -> dict[str, Any]:
    """The worker's opening frame: a fresh nonce."""
    return {"hello": PROTOCOL, "version": wire.VERSION, "nonce": secrets.token_hex(NONCE_BYTES)}


def answer(secret: str, nonce: str) -> str:
    """The controller's proof that it knows ``secret``: HMAC-SHA256(secret, nonce || CONTEXT), hex."""
    return hmac.new(secret.encode(), bytes.fromhex(nonce) + CONTEXT, hashlib.sha256).hexdigest()


def _hex_field(frame: wire.Frame, key: str, nbytes: int) -> str:
    if frame.kind is not wire.Kind.JSON or frame.obj is None:
        raise wire.FrameError(f"expected a JSON frame with {key!r}, got a {frame.kind.name} frame")
    value = frame.obj.get(key)
    if not isinstance(value, str) or len(value) != 2 * nbytes or not _HEX.fullmatch(value):
        raise wire.FrameError(f"{key!r} must be {2 * nbytes} lowercase hex digits")
    return value


def parse_challenge(frame: wire.Frame) -> str:
    """The nonce of a worker's challenge (controller side)."""
    if frame.kind is wire.Kind.ERROR and frame.obj is not None:
        raise AuthError(f"the worker refused the connection: {frame.obj['reason']}")
    if frame.kind is wire.Kind.JSON and frame.obj is not None and frame.obj.get("hello") != PROTOCOL:
        raise wire.FrameError(f"not a splitbench worker: hello {str(frame.obj.get('hello'))[:40]!r}")
    return _hex_field(frame, "nonce", NONCE_BYTES)


def parse_answer(frame: wire.Frame) -> str:
    """The MAC of a controller's answer (worker side)."""
    return _hex_field(frame, "auth", hashlib.sha256().digest_size)


def recv_hello(sock: socket.socket) -> wire.Frame:
    """One pre-authentication frame: JSON or ERROR only, at most ``MAX_HELLO_BYTES``."""
    return wire.recv_frame(sock, max_payload=0, max_json=MAX_HELLO_BYTES)


def decode_hello(data: bytes) -> wire.Frame:
    """:func:`recv_hello` on bytes in memory (the same bounds)."""
    return wire.decode_frame(data, max_payload=0, max_json=MAX_HELLO_BYTES)


def verify(secret: str, nonce: str, mac: str) -> bool:
    return hmac.compare_digest(answer(secret, nonce), mac)


def accept(sock: socket.socket, secret: str) -> None:
    """Worker side: challenge the peer and check its answer. Raises ``AuthError``, ``FrameError`` or
    ``ConnectionClosed``; the caller closes the connection."""
    hello = challenge()
    wire.send_json(sock, hello)
    mac = parse_answer(recv_hello(sock))
    if not verify(secret, hello["nonce"], mac):
        raise AuthError("authentication failed: wrong secret")
    wire.send_json(sock, {"event": "authenticated"})


def login(sock: socket.socket, secret: str) -> None:
    """Controller side: answer the worker's challenge. Raises ``AuthError`` when the worker refuses."""
    nonce = parse_challenge(recv_hello(sock))
    wire.send_json(sock, {"auth": answer(secret, nonce)})
    reply = recv_hello(sock)
    if reply.kind is wire.Kind.ERROR and reply.obj is not None:
        raise AuthError(f"the worker refused authentication: {reply.obj['reason']}")
    if reply.kind is not wire.Kind.JSON or reply.obj is None or reply.obj.get("event") != "authenticated":
        raise wire.FrameError(f"expected the worker's 'authenticated', got {reply.kind.name} {reply.obj}")
