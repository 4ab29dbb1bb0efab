"""Mutual challenge-response on the control connection: the secret never crosses the wire, both ends prove it.

1. worker -> controller: ``{"hello", "version", "nonce": Nw}``, a fresh nonce.
2. controller -> worker: ``{"nonce": Nc, "auth": HMAC(secret, "controller" || T)}`` with T = CONTEXT || Nw || Nc.
3. worker -> controller: ``{"event": "authenticated", "auth": HMAC(secret, "worker" || T)}``, sent only once the
   controller's proof checked out (a worker never proves anything to a peer that has not proved itself first).

Each proof covers both fresh nonces and its sender's role, so an answer cannot be replayed (the other side's
nonce is new), reflected (the roles differ) or used by a relay: a box that passes the handshake between a controller
and a board learns nothing it could use, because every frame after it is sealed (``harness.worker.sealed``) with
keys derived from the secret and both nonces, one per direction.

Everything received before the proof is checked is bounded (``MAX_HELLO_BYTES``, no tensor payload) and parsed by
``wire`` with bounded depth and numbers, so an unauthenticated peer can only get an ERROR reply or a closed
connection. A secret must be at least ``MIN_SECRET_BYTES`` long: an HMAC over two public nonces is a perfect
oracle for an offline search of a short one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import socket
from dataclasses import dataclass
from typing import Any

from harness.worker import wire
from harness.worker.sealed import MAC_BYTES, SealedSocket

PROTOCOL = "splitbench-control"
CONTEXT = b"splitbench control channel v2"  # binds every proof and key to this use of the secret
NONCE_BYTES = 32
MAX_HELLO_BYTES = 4096  # a challenge or an answer is about 200 bytes
MIN_SECRET_BYTES = 16
MAKE_SECRET = 'python -c "import secrets; print(secrets.token_hex(32))"'
_HEX = re.compile(r"[0-9a-f]+")


class AuthError(ConnectionError):
    """The peer failed authentication; the message says how (never with the secret)."""


def secret_problem(secret: str) -> str | None:
    """Why ``secret`` is too weak to guard a board, or None. (The reason never quotes the secret.)"""
    if not secret.strip():
        return "the secret is empty or only whitespace"
    if len(secret.encode()) < MIN_SECRET_BYTES:
        return f"the secret is {len(secret.encode())} bytes; at least {MIN_SECRET_BYTES} are needed"
    return None


def _mac(secret: str, label: bytes, nonce_worker: str, nonce_controller: str) -> bytes:
    transcript = CONTEXT + bytes.fromhex(nonce_worker) + bytes.fromhex(nonce_controller)
    return hmac.new(secret.encode(), label + b"\0" + transcript, hashlib.sha256).digest()


def proof(secret: str, role: str, nonce_worker: str, nonce_controller: str) -> str:
    """``role``'s proof (``controller`` or ``worker``) that it knows ``secret``, over both nonces; hex."""
    return _mac(secret, role.encode() + b" proof", nonce_worker, nonce_controller).hex()


@dataclass(frozen=True)
class SessionKeys:
    """The keys that seal one authenticated connection, one per direction."""

    to_worker: bytes
    to_controller: bytes

    @classmethod
    def derive(cls, secret: str, nonce_worker: str, nonce_controller: str) -> "SessionKeys":
        return cls(_mac(secret, b"controller to worker", nonce_worker, nonce_controller),
                   _mac(secret, b"worker to controller", nonce_worker, nonce_controller))


def _hex_field(frame: wire.Frame, key: str, nbytes: int) -> str:
    if frame.kind is not wire.Kind.JSON or frame.obj is None:
        raise wire.FrameError(f"expected a JSON frame with {key!r}, got a {frame.kind.name} frame")
    value = frame.obj.get(key)
    if not isinstance(value, str) or len(value) != 2 * nbytes or not _HEX.fullmatch(value):
        raise wire.FrameError(f"{key!r} must be {2 * nbytes} lowercase hex digits")
    return value


def challenge() -> dict[str, Any]:
    """The worker's opening frame: a fresh nonce."""
    return {"hello": PROTOCOL, "version": wire.VERSION, "nonce": secrets.token_hex(NONCE_BYTES)}


def parse_challenge(frame: wire.Frame) -> str:
    """The nonce of a worker's challenge (controller side)."""
    if frame.kind is wire.Kind.ERROR and frame.obj is not None:
        raise AuthError(f"the worker refused the connection: {frame.obj['reason']}")
    if frame.kind is wire.Kind.JSON and frame.obj is not None and frame.obj.get("hello") != PROTOCOL:
        raise wire.FrameError(f"not a splitbench worker: hello {str(frame.obj.get('hello'))[:40]!r}")
    if frame.kind is wire.Kind.JSON and frame.obj is not None and frame.obj.get("version") != wire.VERSION:
        raise AuthError(f"the worker speaks protocol version {str(frame.obj.get('version'))[:10]}, this controller "
                        f"{wire.VERSION}: run the same splitbench commit on both")
    return _hex_field(frame, "nonce", NONCE_BYTES)


def parse_answer(frame: wire.Frame) -> tuple[str, str]:
    """The controller's nonce and proof (worker side)."""
    return _hex_field(frame, "nonce", NONCE_BYTES), _hex_field(frame, "auth", MAC_BYTES)


def recv_hello(sock: socket.socket) -> wire.Frame:
    """One pre-authentication frame: JSON or ERROR only, at most ``MAX_HELLO_BYTES``."""
    return wire.recv_frame(sock, max_payload=0, max_json=MAX_HELLO_BYTES)


def verify(secret: str, role: str, nonce_worker: str, nonce_controller: str, mac: str) -> bool:
    return hmac.compare_digest(proof(secret, role, nonce_worker, nonce_controller), mac)


class WorkerHandshake:
    """The worker's side, as a small state machine (the board serves many handshakes at once, none blocking):
    :meth:`opening` is sent at once, :meth:`on_answer` takes the controller's one frame."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.hello = challenge()

    def opening(self) -> dict[str, Any]:
        return self.hello

    def on_answer(self, frame: wire.Frame) -> tuple[dict[str, Any], SessionKeys]:
        """The reply that proves this worker, and the session's keys; ``AuthError`` for a wrong proof."""
        nonce_controller, mac = parse_answer(frame)
        nonce_worker = self.hello["nonce"]
        if not verify(self.secret, "controller", nonce_worker, nonce_controller, mac):
            raise AuthError("authentication failed: wrong secret")
        return ({"event": "authenticated", "auth": proof(self.secret, "worker", nonce_worker, nonce_controller)},
                SessionKeys.derive(self.secret, nonce_worker, nonce_controller))


def login(sock: socket.socket, secret: str) -> SealedSocket:
    """Controller side: answer the worker's challenge, check the worker's own proof, and return the connection
    sealed with the session's keys. Raises ``AuthError`` when either side fails to prove itself."""
    nonce_worker = parse_challenge(recv_hello(sock))
    nonce_controller = secrets.token_hex(NONCE_BYTES)
    wire.send_json(sock, {"nonce": nonce_controller, "auth": proof(secret, "controller", nonce_worker,
                                                                     nonce_controller)})
    reply = recv_hello(sock)
    if reply.kind is wire.Kind.ERROR and reply.obj is not None:
        raise AuthError(f"the worker refused authentication: {reply.obj['reason']}")
    if reply.kind is not wire.Kind.JSON or reply.obj is None or reply.obj.get("event") != "authenticated":
        raise wire.FrameError(f"expected the worker's 'authenticated', got {reply.kind.name} {str(reply.obj)[:200]}")
    if not verify(secret, "worker", nonce_worker, nonce_controller, _hex_field(reply, "auth", MAC_BYTES)):
        raise AuthError("the worker could not prove that it knows the secret: it is not the board this controller "
                        "was given (a stale address, or a box on the path)")
    keys = SessionKeys.derive(secret, nonce_worker, nonce_controller)
    return SealedSocket(sock, send_key=keys.to_worker, recv_key=keys.to_controller)
