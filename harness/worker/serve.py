"""An endpoint of split inference, started as ``python -m harness.worker``.

The controller (or an operator on a real board) starts one worker per endpoint. A worker listens for a control
connection, authenticates it by challenge-response (``harness.worker.auth``: the secret never crosses the wire),
answers the controller's clock pings, receives its setup as JSON (model spec, plan, its role, its peers, the compute
device), builds the model itself from the spec and seed when its factory is allowed (``--allow-models``), keeps only
its own part, and then runs inferences when told to. Only JSON and raw tensors cross the wire
(``harness.worker.wire``); nothing received is unpickled or executed.

A board's worker (without ``--once``) serves run after run: each authenticated run is served by a forked child
that gets the connection, so a run that ends in any way (the controller killed, an error, a crash) leaves the
listener serving and the next run starts from a clean process. The harness's workers in a sweep (``--once
--keep-alive``) serve its runs one after another on the one authenticated connection: after ``stopped`` they take
only clock pings or a ``reset`` carrying the next setup for their own endpoint, and keep the model they built.

Timestamps are this machine's ``time.monotonic_ns()``; the controller estimates each worker's clock offset from the
pings and converts the stamps into its own clock. Workers report what happened; the controller decides what it means.
"""

from __future__ import annotations

import argparse
import ctypes
import fnmatch
import gc
import importlib
import inspect
import logging
import os
import signal
import socket
import time
from typing import Any, Callable, Sequence

import torch

from harness.model.models import ModelBuildError, ModelSpec, import_target
from harness.model.weights import WEIGHTS_FD_ENV
from harness.worker import auth, wire
from harness.worker.gate import Admitted, Gate
from harness.worker.sealed import SealedSocket
from harness.worker.stage import Control, keep_models, peak_rss_mb, reset_peak_rss, rss_mb, serving_threads

log = logging.getLogger("splitbench.worker")

# torchvision's model builders and the project's own factories; anything else must be allowed by the board's owner.
DEFAULT_ALLOWED_MODELS = ("torchvision.models.*", "harness.model.zoo.*")
KEEPALIVE_S = (10, 5, 3)  # idle, interval, probes: a controller that vanished without a FIN is noticed in ~25 s
RELEASE_TIMEOUT_S = 10.0  # a kept-alive worker's threads of the last run must end within this after its links shut


# Factory arguments that make a builder fetch weights over the network (and write them to a cache on disk).
DOWNLOAD_ARGS = ("weights", "pretrained")


class SetupRefused(ValueError):
    """A setup this board will not run; the message names the value and what is accepted."""


def model_allowed(target: str, patterns: Sequence[str]) -> bool:
    """Whether a factory's dotted path matches an allowed pattern (fnmatch); private names (``_x``) never do."""
    if any(part.startswith("_") for part in target.split(".")):
        return False
    return any(fnmatch.fnmatchcase(target, pattern) for pattern in patterns)


def _plain(value: Any) -> bool:
    """JSON scalars and lists of them: all a factory argument may be (an object could smuggle a nested target)."""
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def resolve_model(model: Any, patterns: Sequence[str]) -> ModelSpec:
    """The setup's model, checked once where it is used: one field names the factory, that name and the factory's
    real home (its module and qualified name, so no path can walk through an allowed module into another) both
    match the allow-list, and no argument asks for downloaded weights. Raises :class:`SetupRefused`."""
    try:
        spec = ModelSpec.from_setup(model)
    except ModelBuildError as exc:
        raise SetupRefused(str(exc)) from None
    allowed = f"allowed: {list(patterns)} (the worker's --allow-models)"
    if not model_allowed(spec.target, patterns):
        raise SetupRefused(f"model target {spec.target!r} is not allowed on this worker; {allowed}")
    try:
        factory = import_target(spec.target)
    except ImportError as exc:
        raise SetupRefused(f"model target {spec.target!r} cannot be imported on this worker: {exc}") from None
    home = f"{getattr(factory, '__module__', '')}.{getattr(factory, '__qualname__', '')}"
    if not (inspect.isfunction(factory) or inspect.isclass(factory)) or not model_allowed(home, patterns):
        raise SetupRefused(f"model target {spec.target!r} resolves to {home!r}, which is not allowed; {allowed}")
    for name, value in spec.args.items():
        if any(word in name.lower() for word in DOWNLOAD_ARGS) and value not in (None, False):
            raise SetupRefused(f"model.args.{name}={str(value)[:40]!r} would make this board download weights; "
                               "accepted: null or false (boards build random weights from the seed)")
        if not name.isidentifier() or not _plain(value):
            raise SetupRefused(f"model.args.{name[:40]} must be a keyword with a JSON scalar or list value")
    return spec


def compute_device(name: str) -> torch.device:
    """``auto``: CUDA when this machine has it, else the CPU; ``cuda`` without a GPU is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"compute device {name!r} is not one of ['auto', 'cpu', 'cuda']")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("runtime.compute_device=cuda, but this worker has no CUDA device; use auto or cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"


def keepalive(sock: socket.socket) -> None:
    """TCP keepalive on a control connection, so a peer that vanished is noticed even without a FIN."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in zip(("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"), KEEPALIVE_S):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _listen_control(address: str, backlog: int = 1) -> socket.socket:
    if address.startswith("unix:"):
        path = address[5:]
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
    elif address.startswith("tcp:"):
        host, port = address[4:].rsplit(":", 1)
        server = socket.create_server((host, int(port)))
    else:
        raise SystemExit(f"--control must be unix:/path or tcp:host:port, got {address!r}")
    server.listen(backlog)
    return server


def control_gate(server: socket.socket, token: str, refuse: Callable[[], str | None] = lambda: None) -> Gate:
    """The control port's handshakes (``auth.WorkerHandshake``), served side by side, each within the gate's
    deadline; a peer that fails in any way gets a reason (best effort) and is closed."""
    return Gate(server, lambda: auth.WorkerHandshake(token), auth.MAX_HELLO_BYTES, "control connection", refuse)


def sealed(admitted: Admitted) -> SealedSocket:
    """An authenticated control connection, its frames sealed from now on."""
    admitted.sock.settimeout(None)
    keys: auth.SessionKeys = admitted.result
    return SealedSocket(admitted.sock, send_key=keys.to_controller, recv_key=keys.to_worker)


def _await_setup(control: Control, endpoint: str | None = None) -> dict[str, Any] | None:
    """Answer clock pings until the setup arrives (the controller estimates this worker's clock offset).

    A kept-alive worker (``endpoint`` given) waits for the next run's ``{"cmd": "reset", "setup": {...}}`` for that
    same endpoint on the connection it already authenticated; None when the controller hung up between frames (the
    sweep is over). Frames carry JSON only (no payload), bounded as every frame is; nothing is unpickled.
    """
    while True:
        try:
            frame = control.sock.recv_frame(max_payload=0)
        except wire.ConnectionClosed as exc:
            if endpoint is not None and not exc.mid_frame:
                return None
            raise
        command = frame.obj if frame.kind == wire.Kind.JSON and frame.obj is not None else {}
        setup = command.get("setup")
        if command.get("cmd") == "clock":
            control.send({"event": "clock", "id": command.get("id"), "now_ns": time.monotonic_ns()})
        elif endpoint is None and isinstance(setup, dict):
            return setup
        elif (endpoint is not None and command.get("cmd") == "reset" and isinstance(setup, dict)
              and setup.get("endpoint") == endpoint):
            return setup
        elif endpoint is None:
            raise wire.FrameError(f"expected a clock ping or the setup, got {frame.kind.name} {sorted(command)}")
        else:
            raise wire.FrameError(f"expected a clock ping or a reset with a setup for endpoint {endpoint!r}, got "
                                  f"{frame.kind.name} {str(command)[:200]}")


def next_setup(control: Control, endpoint: str) -> dict[str, Any] | None:
    """A kept-alive worker, after ``stopped``: the next run's setup, from a ``reset`` for its own endpoint on the
    connection it authenticated (clock pings answered meanwhile); None when the controller hung up."""
    return _await_setup(control, endpoint)


def session(control: Control, allowed_models: Sequence[str], keep_alive: bool = False) -> None:
    """One authenticated run: clock pings, setup, build, serve until the controller says stop. With ``keep_alive``
    (a sweep's workers) the same connection then sends the next run's setup (a ``reset``), and the model built for a
    spec is kept for the runs that follow (``harness.worker.stage.model_graph``)."""
    if keep_alive:
        keep_models()
    setup = _await_setup(control)
    baseline_mb: float | None = None
    while setup is not None:
        baseline_mb = _run(setup, control, allowed_models, baseline_mb)
        if baseline_mb is None or not keep_alive:
            return
        setup = next_setup(control, str(setup["endpoint"]))


def _run(setup: dict[str, Any], control: Control, allowed_models: Sequence[str],
         baseline_mb: float | None) -> float | None:
    """Check one run's setup, build and serve it; the baseline memory it reported, or None when it was refused."""
    try:
        spec = resolve_model(setup.get("model"), allowed_models)
        device = compute_device(str(setup.get("compute_device", "auto")))
        check_payload_bound(setup, control.max_payload)
    except ValueError as exc:  # SetupRefused, or a compute device this worker lacks
        control.send({"event": "error", "reason": str(exc)})
        return None
    setup["device"] = str(device)
    try:
        return _build_and_serve(setup, control, device, spec, baseline_mb)
    except (wire.ConnectionClosed, OSError):
        raise
    except Exception as exc:  # a setup this worker cannot run: the controller records why, then this run ends
        report_error(control, exc)
        raise


def report_error(control: Control, exc: BaseException) -> None:
    """Tell the controller why this run ends (it records the reason); a connection already gone is told nothing."""
    try:
        control.send({"event": "error", "reason": f"{type(exc).__name__}: {exc}"})
    except OSError:
        pass


def check_payload_bound(setup: dict[str, Any], board_bound: int) -> None:
    """The board's own ``--max-payload-mb`` bounds every link it receives on, whatever the setup asks."""
    asked = setup.get("max_payload")
    if not isinstance(asked, int) or not 0 < asked <= board_bound:
        raise SetupRefused(f"the setup asks for max_payload={str(asked)[:20]} bytes; this worker receives at most "
                           f"{board_bound} ({board_bound >> 20} MiB, its --max-payload-mb): set "
                           f"runtime.max_payload_mb to at most {board_bound >> 20}")


def _build_and_serve(setup: dict[str, Any], control: Control, device: torch.device, spec: ModelSpec,
                     baseline_mb: float | None = None) -> float:
    """Set up this endpoint for one run, serve it until told to stop, then let go of its data links. Returns the
    baseline memory it reported: the interpreter and its libraries before the first model was built."""
    torch.set_num_threads(int(setup.get("threads", 1)))
    if setup.get("kind", "cut") == "spatial":
        from harness.worker.spatial_stage import SpatialStage as Stage
    else:
        from harness.worker.cut_stage import CutStage as Stage
    importlib.import_module(spec.target.rsplit(".", 1)[0])  # the factory's package
    if baseline_mb is None:
        baseline_mb = rss_mb()  # the interpreter and its libraries, before any model is built
    stage = Stage(setup, control, spec)
    gc.collect()
    control.send({"event": "built", "endpoint": setup["endpoint"], "device": device_name(device)})
    stage.connect()
    reset_peak_rss()
    control.send({"event": "ready", "endpoint": setup["endpoint"], "pid": os.getpid()})
    stage.serve()
    release_data_links(stage.data_sockets())
    control.send({"event": "stopped", "endpoint": setup["endpoint"], "peak_rss_mb": peak_rss_mb(),
                  "baseline_rss_mb": baseline_mb})
    return baseline_mb


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


def serve_once(address: str, token: str, max_payload: int, allowed_models: Sequence[str],
               keep_alive: bool = False) -> None:
    """The harness's own workers: accept one authenticated controller, serve its run (with ``keep_alive``: its
    runs, one after another) in this process, return."""
    server = _listen_control(address, backlog=8)
    with server:
        gate = control_gate(server, token)
        admitted: list[Admitted] = []
        while not admitted:
            admitted = gate.poll(3600)
        for extra in admitted[1:]:
            extra.sock.close()
        gate.close()
    session(Control(sealed(admitted[0]), max_payload), allowed_models, keep_alive)


def serve_boards(address: str, token: str, max_payload: int, allowed_models: Sequence[str]) -> None:
    """A board: listen forever; each authenticated run is served by a forked child that gets the connection.

    Handshakes are served side by side by the gate (none can hold the board); the child starts with the libraries
    already imported and dies with its run; while it serves, other controllers are told the worker is busy. When the
    run ends in any way, the next controller is served.
    """
    server = _listen_control(address, backlog=16)
    import harness.worker.cut_stage  # noqa: F401  (imported once here, so each run's child starts at once)
    import harness.worker.spatial_stage  # noqa: F401

    child: int | None = None

    def busy() -> str | None:
        return None if child is None else f"busy: this worker is serving another run (pid {child})"

    gate = control_gate(server, token, refuse=busy)
    while True:
        if child is not None and (ended := os.waitpid(child, os.WNOHANG))[0]:
            log.info("run served by pid %d ended with code %s; listening", child, os.waitstatus_to_exitcode(ended[1]))
            child = None
        for admitted in gate.poll(0.5):
            with admitted.sock:
                if (reason := busy()) is not None:  # two controllers got through in one poll
                    try:
                        wire.send_error(admitted.sock, reason)
                    except OSError:
                        pass
                    continue
                keepalive(admitted.sock)
                child = os.fork()
                if child == 0:
                    gate.abandon()
                    _serve_child(sealed(admitted), max_payload, allowed_models)
                log.info("controller %s authenticated; its run is served by pid %d", admitted.peer, child)


def _die_with_parent(parent: int) -> None:
    """A run's child must not outlive its board worker (nothing left behind): Linux's parent-death signal."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _serve_child(sock: SealedSocket, max_payload: int, allowed_models: Sequence[str]) -> None:
    """The forked child of :func:`serve_boards`: serve the run on the authenticated connection, then exit."""
    code = 0
    control = Control(sock, max_payload)
    try:
        _die_with_parent(os.getppid())
        session(control, allowed_models)
    except wire.FrameError as exc:  # a frame that broke the protocol or its seal: this session is over
        log.warning("control connection ended: %s", exc)
        try:
            sock.send_error(str(exc))
        except OSError:
            pass
        code = 2
    except (wire.ConnectionClosed, ConnectionError, TimeoutError) as exc:
        log.warning("the controller's connection was lost: %s; ending this run", exc)
        code = 2
    except OSError as exc:  # the board's own, e.g. the run's data port taken: the controller records why
        log.warning("the run failed: %s", exc)
        report_error(control, exc)
        code = 2
    except BaseException:  # noqa: BLE001  (whatever happened, the child must not return into the listener loop)
        log.exception("the run failed")
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def read_token(token_file: str | None) -> str:
    """The shared secret: ``--token-file`` or ``$SPLITBENCH_TOKEN`` (never a command-line argument: ps shows it)."""
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as exc:
            raise SystemExit(f"--token-file {token_file!r} cannot be read: {exc.strerror}") from None
    return os.environ.get("SPLITBENCH_TOKEN", "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="splitbench endpoint worker")
    parser.add_argument("--control", required=True, help="unix:/path/to.sock or tcp:host:port to listen on")
    parser.add_argument("--token-file", help="file holding the shared secret (else $SPLITBENCH_TOKEN)")
    parser.add_argument("--max-payload-mb", type=int, default=1024)
    parser.add_argument("--allow-models", nargs="+", default=list(DEFAULT_ALLOWED_MODELS), metavar="PATTERN",
                        help="model factories (_target_) this worker may build, as fnmatch patterns "
                             f"(default: {' '.join(DEFAULT_ALLOWED_MODELS)})")
    parser.add_argument("--once", action="store_true",
                        help="serve one run and exit (the harness's own workers); without it a board serves run after run")
    parser.add_argument("--keep-alive", action="store_true",
                        help="after a run, take the next run's setup on the same control connection and keep the "
                             "model built (the harness's sweeps)")
    args = parser.parse_args(argv)
    if not args.once:  # a board builds every model from its seed: it maps no memory file, whatever its environment
        os.environ.pop(WEIGHTS_FD_ENV, None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    max_payload = args.max_payload_mb << 20
    token = read_token(args.token_file)
    if (problem := auth.secret_problem(token)) is not None:
        raise SystemExit(f"a shared secret of at least {auth.MIN_SECRET_BYTES} bytes is required in $SPLITBENCH_TOKEN "
                         f"or --token-file PATH ({problem}); make one with: {auth.MAKE_SECRET}")
    if args.max_payload_mb < 1:
        raise SystemExit(f"--max-payload-mb must be >= 1, got {args.max_payload_mb}")
    if args.keep_alive and not args.once:
        raise SystemExit("--keep-alive is for the harness's own workers: use it with --once (a board serves run "
                         "after run in a fresh child each)")
    if args.once:
        serve_once(args.control, token, max_payload, args.allow_models, args.keep_alive)
    else:
        serve_boards(args.control, token, max_payload, args.allow_models)
