"""How much slower this machine computes a model after it waited: what a profile measured back to back leaves out.

A profile times each model back to back, with the previous run's weights and activations still in the caches. An
endpoint of a split waits between its computes (a server for its input, a device for the next frame), and its
compute then starts from whatever the wait left. This times each model's whole forward pass in pairs, as the
workers run it (their thread count and memory policy, the harness's seeded model and input): one run right after
another, then one after waiting W ms, asleep (the processor idles) or spinning (it stays busy on nothing that
touches memory), and, with ``--receive-mbps R``, one after receiving the model's input over a kernel-shaped link
at R Mbit/s, as a server's compute follows its input (the harness's own topology: namespaces, veth, qdisc; the
sender a thread of this process in the other namespace). Per model and wait: the back-to-back median and each
wait's median ratio over the pairs, with the ratios' interquartile range. Slower after spinning as well as after
sleeping means the model's cached state went (to other processes, the kernel, a host's other guests sharing the
cache); slower only after sleeping means the idle processor itself (its clock, a halted virtual CPU); slower after
receiving than after a wait as long means the receive path's own work.

    PYTHONPATH=. .venv/bin/python benchmarks/after_idle.py                     # the reality benchmark's 8 models
    PYTHONPATH=. .venv/bin/python benchmarks/after_idle.py --models custom resnet50 --waits-ms 50 250 --pairs 15
    PYTHONPATH=. .venv/bin/python benchmarks/after_idle.py --receive-mbps 18.88 100   # needs namespaces (root or
                                                                                      # rootless) and tbf/htb/netem
"""

from __future__ import annotations

from harness.network.userns import enter_if_needed

enter_if_needed()  # while single-threaded: a user namespace of its own where it cannot make namespaces as it is

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import queue  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.reality import MODELS, as_a_worker_runs_it, spec_of  # noqa: E402
from harness.network.link import LinkSpec  # noqa: E402
from harness.network.shaping import KERNEL_RATE_BACKENDS  # noqa: E402
from harness.network.topology import Topology  # noqa: E402

CONF = Path(__file__).resolve().parent.parent / "conf"
WAYS = ("asleep", "spinning")
PORT = 46990


class Receiver:
    """The model's input bytes sent device -> server through the shaped link each time :meth:`receive` is called;
    returns once the last byte is here (the server's wait for its input)."""

    def __init__(self, topology: Topology, nbytes: int) -> None:
        listener = topology.socket("server")
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((topology.address("server", "device"), PORT))
        listener.listen(1)
        self.tx = topology.socket("device")
        self.tx.connect((topology.address("server", "device"), PORT))
        self.rx, _ = listener.accept()
        listener.close()
        self.payload, self.buffer = bytes(nbytes), bytearray(nbytes)
        self.go: queue.Queue = queue.Queue()
        threading.Thread(target=self._send, daemon=True).start()

    def _send(self) -> None:
        while self.go.get() is not None:
            self.tx.sendall(self.payload)

    def receive(self) -> float:
        """ms from asking for the bytes to holding all of them."""
        start = time.perf_counter_ns()
        self.go.put(True)
        view, got = memoryview(self.buffer), 0
        while got < len(self.buffer):
            got += self.rx.recv_into(view[got:])
        return (time.perf_counter_ns() - start) / 1e6

    def close(self) -> None:
        self.go.put(None)
        self.tx.close()
        self.rx.close()


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def wait(way: str, seconds: float) -> None:
    if way == "asleep":
        time.sleep(seconds)
    else:
        spin(seconds)


def measure(name: str, waits_ms: list[float], pairs: int, warmup: int,
            link: tuple[Topology, Receiver] | None = None, receive_mbps: list[float] | None = None) -> dict[str, Any]:
    """One model's pairs: for each wait and way, and, over ``link``, after receiving its input at each rate."""
    model, x = as_a_worker_runs_it(name)

    def timed() -> float:
        start = time.perf_counter_ns()
        with torch.no_grad():
            model(x)
        return (time.perf_counter_ns() - start) / 1e6

    def pair(between: Callable[[], Any]) -> tuple[float, float, Any]:
        timed()  # the run a back-to-back run follows
        warm = timed()
        done = between()
        return warm, timed() / warm, done

    for _ in range(warmup):
        timed()
    back_to_back: list[float] = []
    after: dict[str, dict[str, dict[str, float]]] = {}
    for ms in waits_ms:
        for way in WAYS:
            runs = [pair(lambda: wait(way, ms / 1e3)) for _ in range(pairs)]
            back_to_back += [warm for warm, _, _ in runs]
            after.setdefault(f"{ms:g}", {})[way] = summary([ratio for _, ratio, _ in runs])
    received: dict[str, dict[str, float]] = {}
    for mbps in receive_mbps or []:
        assert link is not None, "receiving needs a link"
        topology, receiver = link
        topology.set_rate("device", "server", mbps)
        runs = [pair(receiver.receive) for _ in range(pairs)]
        back_to_back += [warm for warm, _, _ in runs]
        received[f"{mbps:g}"] = {**summary([ratio for _, ratio, _ in runs]),
                                 "wait_ms": statistics.median(waited for _, _, waited in runs)}
    return {"model": name, "back_to_back_ms": statistics.median(back_to_back), "pairs": pairs, "after": after,
            "after_receiving": received}


def input_bytes(name: str) -> int:
    spec = spec_of(name)
    return int(np.prod(spec.input_shape)) * 4  # float32, as a server-only plan sends it


def summary(ratios: list[float]) -> dict[str, float]:
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3)}


def table(rows: list[dict[str, Any]], waits_ms: list[float], receive_mbps: list[float]) -> str:
    cells: list[Callable[[dict], str]] = []
    head = ["model", "back to back ms"]
    cell = "x{median:.3f} ({q1:.2f}-{q3:.2f})"
    for ms in waits_ms:
        for way in WAYS:
            head.append(f"after {ms:g} ms {way}")
            cells.append(lambda r, k=f"{ms:g}", w=way: cell.format(**r["after"][k][w]))
    for mbps in receive_mbps:
        head.append(f"after receiving its input at {mbps:g} Mbit/s")
        cells.append(lambda r, k=f"{mbps:g}": (cell + ", {wait_ms:.0f} ms").format(**r["after_receiving"][k]))
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['back_to_back_ms']:.2f} | " + " | ".join(c(r) for c in cells) + " |")
    return "\n".join(lines)


def measure_with_links(name: str, args: Any) -> dict[str, Any]:
    """:func:`measure`, with a device -> server link for the receiving way where ``--receive-mbps`` asks for it."""
    if not args.receive_mbps:
        return measure(name, args.waits_ms, args.pairs, args.warmup)
    topology = Topology(["device", "server"], [("device", "server", LinkSpec(args.receive_mbps[0]))], prefix="sbai")
    with topology:
        if topology.backend not in KERNEL_RATE_BACKENDS:
            raise SystemExit(f"--receive-mbps needs a kernel-shaped link; this machine gives {topology.backend!r} "
                             f"(namespaces and one of {KERNEL_RATE_BACKENDS} are needed)")
        receiver = Receiver(topology, input_bytes(name))
        try:
            return measure(name, args.waits_ms, args.pairs, args.warmup, (topology, receiver), args.receive_mbps)
        finally:
            receiver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--waits-ms", nargs="+", type=float, default=[20.0, 50.0, 250.0])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--receive-mbps", nargs="*", type=float, default=[],
                        help="also time a run after receiving the model's input over a link shaped to each rate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the workers on local_pair: 1)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    known = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    unknown = [m for m in args.models if m not in known]
    if unknown:
        parser.error(f"unknown models {unknown}; accepted: {known}")
    if args.pairs < 1 or any(ms < 0 for ms in args.waits_ms) or any(r <= 0 for r in args.receive_mbps):
        parser.error(f"--pairs {args.pairs}, --waits-ms {args.waits_ms}, --receive-mbps {args.receive_mbps}: need at "
                     "least one pair, waits >= 0 and rates > 0")
    torch.set_num_threads(args.threads)
    started, load = time.monotonic(), os.getloadavg()[0]
    rows = []
    for name in args.models:
        rows.append(measure_with_links(name, args))
        print(f"{name}: back to back {rows[-1]['back_to_back_ms']:.2f} ms", flush=True)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}, load average {load:.2f} at "
          f"the start; {args.pairs} pairs per model, wait and way; {(time.monotonic() - started) / 60:.1f} min; "
          "each cell: the median of (run after the wait / the run just before it), interquartile range in brackets")
    print(table(rows, args.waits_ms, args.receive_mbps))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
