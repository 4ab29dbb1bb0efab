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
from typing import Any

import torch

from harness.worker import wire
from harness.worker.stage import (HELLO_TIMEOUT_S, Control, keep_models, peak_rss_mb, reset_peak_rss, rss_mb,
                                  serving_threads)

log = logging.getLogger("splitbench.worker")

RELEASE_TIMEOUT_S = 10.0  # a kept-alive worker's threads of the last run must end within this after its links shut


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


def serve(address: str, token: str, max_payload: int = 1 << 30, keep_alive: bool = False) -> None:
    """Accept the controller, authenticate it, set up this endpoint and run until told to stop. With ``keep_alive``
    (a sweep's workers) the same connection then sends the next run's setup, and the model built for a spec is
    kept for the runs that follow (``harness.worker.stage.model_graph``)."""
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
    if keep_alive:
        keep_models()
    baseline_mb = None
    while setup is not None:
        baseline_mb = run_stage(setup, control, baseline_mb)
        setup = next_setup(control, setup["endpoint"]) if keep_alive else None


def run_stage(setup: dict[str, Any], control: Control, baseline_mb: float | None) -> float:
    """Set up this endpoint for one run, serve it until told to stop, then let go of its data links. Returns the
    baseline memory it reported: the interpreter and its libraries before the first model was built."""
    torch.set_num_threads(int(setup.get("threads", 1)))
    if setup.get("kind", "cut") == "spatial":
        from harness.worker.spatial_stage import SpatialStage as Stage
    else:
        from harness.worker.cut_stage import CutStage as Stage
    importlib.import_module(str(setup["model"]["target"]).rsplit(".", 1)[0])  # the factory's package
    if baseline_mb is None:
        baseline_mb = rss_mb()  # the interpreter and its libraries, before any model is built
    stage = Stage(setup, control)
    gc.collect()
    control.send({"event": "built", "endpoint": setup["endpoint"]})
    stage.connect()
    reset_peak_rss()
    control.send({"event": "ready", "endpoint": setup["endpoint"], "pid": os.getpid()})
    stage.serve()
    release_data_links(stage.data_sockets())
    control.send({"event": "stopped", "endpoint": setup["endpoint"], "peak_rss_mb": peak_rss_mb(),
                  "baseline_rss_mb": baseline_mb})
    return baseline_mb


def next_setup(control: Control, endpoint: str) -> dict[str, Any] | None:
    """A kept-alive worker waits for the next run's setup: ``{"cmd": "reset", "setup": {...}}`` from the controller
    it authenticated, for the same endpoint. None when the controller hung up (the sweep is over)."""
    try:
        frame = control.recv()
    except wire.ConnectionClosed:
        return None
    command = frame.obj if frame.kind == wire.Kind.JSON and frame.obj else {}
    setup = command.get("setup")
    if command.get("cmd") != "reset" or not isinstance(setup, dict) or setup.get("endpoint") != endpoint:
        raise wire.FrameError(f"expected a reset with a setup for endpoint {endpoint!r}, got {str(command)[:200]}")
    return setup


def release_data_links(socks: list[socket.socket]) -> None:
    """Shut the run's data links and wait for the threads that served them, so that the next run starts clean
    (a thread left reading a closed descriptor could read the next run's socket that reuses it)."""
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the peer closed first
    for thread in serving_threads():
        thread.join(timeout=RELEASE_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError(f"thread {thread.name} still serves the last run after {RELEASE_TIMEOUT_S:g} s")
    for sock in socks:
        sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="splitbench endpoint worker")
    parser.add_argument("--control", required=True, help="unix:/path/to.sock or tcp:host:port to listen on")
    parser.add_argument("--token", default=os.environ.get("SPLITBENCH_TOKEN", ""),
                        help="shared secret the controller must present (or $SPLITBENCH_TOKEN)")
    parser.add_argument("--max-payload-mb", type=int, default=1024)
    parser.add_argument("--once", action="store_true",
                        help="serve one run and exit (the harness's own workers); without it a board serves run after run")
    parser.add_argument("--keep-alive", action="store_true",
                        help="after a run, take the next run's setup on the same control connection and keep the "
                             "model built (the harness's sweeps)")
    args = parser.parse_args(argv)
    if not args.token:
        raise SystemExit("a token is required: --token or $SPLITBENCH_TOKEN")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    while True:
        serve(args.control, args.token, args.max_payload_mb << 20, args.keep_alive)
        if args.once:
            return

