"""An endpoint of split inference, started as ``python -m harness.worker``.

The controller (or an operator on a real board) starts one worker per endpoint. A worker listens for one control
connection, checks the shared token, receives its setup as JSON (model spec, plan, its role, its peers), builds the
model itself from the spec and seed, keeps only its own part, and then runs inferences when told to. Only JSON and
raw tensors cross the wire (``harness.worker.wire``); nothing received is unpickled or executed.

Timestamps are ``time.monotonic_ns()``: on one machine every process reads the same clock, so the controller can
order spans of different endpoints. Workers report what happened; the controller decides what it means.
"""

from __future__ import annotations

import argparse
import gc
import hmac
import importlib
import logging
import os
import socket

import torch

from harness.worker import wire
from harness.worker.stage import HELLO_TIMEOUT_S, Control, peak_rss_mb, reset_peak_rss, rss_mb

log = logging.getLogger("splitbench.worker")


def _listen_control(address: str) -> socket.socket:
    if address.startswith("unix:"):
        path = address[5:]
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
    elif address.startswith("tcp:"):
        host, port = address[4:].rsplit(":", 1)
        server = socket.create_server((host, int(port)))
    else:
        raise SystemExit(f"--control must be unix:/path or tcp:host:port, got {address!r}")
    server.listen(1)
    return server


def serve(address: str, token: str, max_payload: int = 1 << 30) -> None:
    """Accept the controller, authenticate it, set up this endpoint and run until told to stop."""
    server = _listen_control(address)
    while True:
        sock, peer = server.accept()
        sock.settimeout(HELLO_TIMEOUT_S)  # a client that connects and says nothing must not lock the controller out
        control = Control(sock, max_payload)
        try:
            hello = control.recv()
        except (wire.FrameError, wire.ConnectionClosed, OSError) as exc:
            log.warning("control connection from %s refused: %s", peer or "local socket", exc or type(exc).__name__)
            sock.close()
            continue
        if hello.kind == wire.Kind.JSON and hmac.compare_digest(str(hello.obj.get("token", "")), token):
            sock.settimeout(None)
            break
        log.warning("control connection refused: bad token")
        wire.send_error(sock, "bad token")
        sock.close()
    server.close()
    setup = hello.obj["setup"]
    torch.set_num_threads(int(setup.get("threads", 1)))
    if setup.get("kind", "cut") == "spatial":
        from harness.worker.spatial_stage import SpatialStage as Stage
    else:
        from harness.worker.cut_stage import CutStage as Stage
    importlib.import_module(str(setup["model"]["target"]).rsplit(".", 1)[0])  # the factory's package
    baseline_mb = rss_mb()  # the interpreter and its libraries, before any model is built
    stage = Stage(setup, control)
    gc.collect()
    control.send({"event": "built", "endpoint": setup["endpoint"]})
    stage.connect()
    reset_peak_rss()
    control.send({"event": "ready", "endpoint": setup["endpoint"], "pid": os.getpid()})
    stage.serve()
    control.send({"event": "stopped", "endpoint": setup["endpoint"], "peak_rss_mb": peak_rss_mb(),
                  "baseline_rss_mb": baseline_mb})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="splitbench endpoint worker")
    parser.add_argument("--control", required=True, help="unix:/path/to.sock or tcp:host:port to listen on")
    parser.add_argument("--token", default=os.environ.get("SPLITBENCH_TOKEN", ""),
                        help="shared secret the controller must present (or $SPLITBENCH_TOKEN)")
    parser.add_argument("--max-payload-mb", type=int, default=1024)
    parser.add_argument("--once", action="store_true",
                        help="serve one run and exit (the harness's own workers); without it a board serves run after run")
    args = parser.parse_args(argv)
    if not args.token:
        raise SystemExit("a token is required: --token or $SPLITBENCH_TOKEN")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    while True:
        serve(args.control, args.token, args.max_payload_mb << 20)
        if args.once:
            return

