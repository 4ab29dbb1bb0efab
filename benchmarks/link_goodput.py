"""How close a shaped link's payload goodput comes to its configured rate, and what the wire protocol costs on it.

For each rate and tensor size: a device -> server transfer through two namespaces and the kernel's qdisc, timed by
the sender from the first byte until the receiver's ACK is back. Goodput / configured rate with header compensation
(qdisc rate x 1514/1448) and without; and the wire protocol (88-byte header, tensor received into a preallocated
tensor, 88-byte ACK frame) against a raw socket (``sendall`` of the same bytes, 1-byte ack) on the same compensated
link: the ratio of their times. Medians over repeats (5x for transfers under 0.5 s), wire and raw interleaved.
Combinations whose transfer would take longer than ``--max-seconds`` are skipped and marked so.
Goal: >= 0.95 for tensors >= 1 MB; overhead <= 2 %.

``--netem-vm``: the netem column, for a kernel without sch_netem. A VM booted with a stock kernel that has it
(``harness.network.netem_vm``, as tests/test_netem_vm.py) times raw TCP transfers of ``--vm-seconds`` at each rate
through netem and through tbf beside it (same kernel, same CPU; no wire protocol: torch is kept out of the VM), and
measures netem's delay, jitter (20 ms, 5 ms) and loss (1 %, 5 %) there. Needs root, vng, QEMU and that kernel.

    PYTHONPATH=. .venv/bin/python benchmarks/link_goodput.py --quick     # one repeat, skip transfers > 8 s
    PYTHONPATH=. .venv/bin/python benchmarks/link_goodput.py             # three repeats, skip transfers > 20 s
    PYTHONPATH=. .venv/bin/python benchmarks/link_goodput.py --netem-vm  # netem and tbf in the VM
"""

from __future__ import annotations

import argparse
import platform
import queue
import statistics
import threading
import time
from typing import Callable

from harness.network.userns import enter_if_needed

if __name__ == "__main__":
    enter_if_needed()  # without root: a user namespace of its own, while single-threaded (as run.py)

import torch  # noqa: E402

from harness.loadgen.result import goodput_mbps  # noqa: E402
from harness.worker import wire  # noqa: E402
from harness.network.link import LinkSpec  # noqa: E402
from harness.network.shaping import available_backends  # noqa: E402
from harness.network.topology import Topology  # noqa: E402

RATES_MBPS = (1.1, 5.85, 18.88, 100.0, 1000.0)
SIZES = {"10 KB": 10_000, "100 KB": 100_000, "1 MB": 1_000_000, "10 MB": 10_000_000, "50 MB": 50_000_000}
PREFIX = "sbb"


class Receiver:
    """The server side in its namespace: a wire connection that ACKs frames and a raw one that acks n bytes."""

    def __init__(self, topo: Topology, max_bytes: int, reuse_buffer: bool):
        self.max_bytes = max_bytes
        self.into = torch.empty(max_bytes, dtype=torch.uint8) if reuse_buffer else None
        self.raw_sizes: queue.Queue[int] = queue.Queue()
        self.listener = topo.socket("server")
        self.listener.bind((topo.address("server", "device"), 0))
        self.listener.listen(2)
        self.threads: list[threading.Thread] = []

    def _serve_wire(self, conn) -> None:
        with conn:
            try:
                while True:
                    frame = wire.recv_frame(conn, self.max_bytes, into=self.into)
                    wire.send_ack(conn, frame.seq, frame.tag)
            except wire.ConnectionClosed:
                pass

    def _serve_raw(self, conn) -> None:
        buffer = bytearray(self.max_bytes)
        with conn:
            while (n := self.raw_sizes.get()) > 0:
                view, got = memoryview(buffer)[:n], 0
                while got < n:
                    got += conn.recv_into(view[got:])
                conn.sendall(b"k")

    def connect(self, topo: Topology):
        """(wire connection, raw connection) from the device's namespace, each served by its own thread."""
        conns = []
        for serve in (self._serve_wire, self._serve_raw):
            conn = topo.socket("device")
            conn.connect(self.listener.getsockname())
            accepted, _ = self.listener.accept()
            self.threads.append(threading.Thread(target=serve, args=(wire.nodelay(accepted),), daemon=True))
            self.threads[-1].start()
            conns.append(wire.nodelay(conn))
        return conns


def wire_transfer(conn, tensor: torch.Tensor, seq: int) -> float:
    start = time.perf_counter()
    wire.send_tensor(conn, tensor, seq, 0)
    ack = wire.recv_frame(conn, 0)
    elapsed = time.perf_counter() - start
    assert ack.kind is wire.Kind.ACK and ack.seq == seq, ack
    return elapsed


def raw_transfer(conn, receiver: Receiver, payload: memoryview) -> float:
    receiver.raw_sizes.put(len(payload))
    start = time.perf_counter()
    conn.sendall(payload)
    ack = conn.recv(1)
    elapsed = time.perf_counter() - start
    assert ack == b"k"
    return elapsed


def measure_link(mbps: float, sizes: dict[str, int], compensate: bool, repeats: int, with_raw: bool,
                 backend: str | None, reuse_buffer: bool) -> tuple[str, dict[str, tuple[float, float | None]]]:
    """Per size: (median wire seconds, median raw seconds or None) on one freshly built link."""
    out = {}
    largest = max(sizes.values(), default=1)
    with Topology(["device", "server"], [("device", "server", LinkSpec(mbps))], prefix=PREFIX,
                  compensate_headers=compensate, backend=backend) as topo:
        receiver = Receiver(topo, largest, reuse_buffer)
        wire_conn, raw_conn = receiver.connect(topo)
        seq = 0
        warm = torch.zeros(min(largest, 20_000), dtype=torch.uint8)  # connections past slow start's first rounds
        wire_transfer(wire_conn, warm, seq)
        raw_transfer(raw_conn, receiver, wire.tensor_bytes(warm))
        for label, nbytes in sizes.items():
            tensor = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)
            payload = wire.tensor_bytes(tensor)
            wire_s, raw_s = [], []
            short = nbytes * 8 / (mbps * 1e6) < 0.5  # short transfers are noisy and cheap: take more samples
            for _ in range(repeats * 5 if short else repeats):
                seq += 1
                wire_s.append(wire_transfer(wire_conn, tensor, seq))
                if with_raw:
                    raw_s.append(raw_transfer(raw_conn, receiver, payload))
            out[label] = (statistics.median(wire_s), statistics.median(raw_s) if raw_s else None)
        receiver.raw_sizes.put(0)
        wire_conn.close(), raw_conn.close()
        for thread in receiver.threads:
            thread.join(10)
        receiver.listener.close()
        return topo.backend, out


def table(rates: tuple[float, ...], sizes: dict[str, int], max_seconds: float, repeats: int,
          backend: str | None, reuse_buffer: bool, say: Callable[[str], None] = print) -> None:
    say("| rate Mbit/s | tensor | goodput / rate (compensated) | goodput / rate (uncompensated) "
        "| wire / raw socket time |")
    say("| ---: | ---: | ---: | ---: | ---: |")
    used = set()
    for mbps in rates:
        feasible = {k: v for k, v in sizes.items() if v * 8 / (mbps * 1e6) <= max_seconds}
        used_backend, comp = measure_link(mbps, feasible, True, repeats, True, backend, reuse_buffer)
        _, plain = measure_link(mbps, feasible, False, repeats, False, backend, reuse_buffer)
        used.add(used_backend)
        for label, nbytes in sizes.items():
            if label not in feasible:
                say(f"| {mbps:g} | {label} | skipped: > {max_seconds:g} s | | |")
                continue
            (wire_s, raw_s), (plain_s, _) = comp[label], plain[label]
            ratio = goodput_mbps(nbytes, wire_s) / mbps
            ratio_plain = goodput_mbps(nbytes, plain_s) / mbps
            say(f"| {mbps:g} | {label} | {ratio:.3f} | {ratio_plain:.3f} | {wire_s / raw_s:.3f} |")
    say(f"\nbackend {', '.join(sorted(used))} (offered: {', '.join(available_backends())}); tdf 1; "
        f"median of {repeats}; wire receiver {'reuses one buffer' if reuse_buffer else 'allocates each tensor'}; "
        f"{platform.node()}, {platform.release()}")


def netem_vm_table(rates: tuple[float, ...], seconds: float, repeats: int,
                   say: Callable[[str], None] = print) -> None:
    """Goodput / rate through netem and tbf in the stock-kernel VM, then netem's delay, jitter and loss there."""
    from harness.network.netem_vm import delay_summary, run_in_vm

    vm = run_in_vm(["--rates", *map(str, rates), "--compare", "tbf", "--seconds", str(seconds),
                    "--repeats", str(repeats)])
    say("| rate Mbit/s | netem goodput / rate | tbf goodput / rate (same VM) |")
    say("| ---: | ---: | ---: |")
    ratios = {(g["backend"], g["mbps"]): g["ratio"] for g in vm["goodput"]}
    for mbps in rates:
        say(f"| {mbps:g} | {ratios['netem', mbps]:.3f} | {ratios['tbf', mbps]:.3f} |")
    delay = vm["delay"]
    say(f"\nnetem at {delay['mbps']:g} Mbit/s, delay {delay['delay_ms']:g} ms, jitter {delay['jitter_ms']:g} ms: "
        "one-way delay of spaced 64-byte datagrams (ms; floor: the same link without delay)\n")
    say("| direction | received | median - floor | 5-95 % range | mean | sd | min | max | floor |")
    say("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for way, d in delay_summary(delay).items():
        say(f"| {way} | {d['count']}/{delay['sent_each_way']} | {d['median'] - d['floor']:.2f} | "
            f"{d['p95'] - d['p5']:.2f} | {d['mean']:.2f} | {d['sd']:.2f} | {d['min']:.2f} | {d['max']:.2f} | "
            f"{d['floor']:.2f} |")
    say("\n| loss configured | lost / sent | measured |")
    say("| ---: | ---: | ---: |")
    for x in vm["loss"]:
        lost = x["sent"] - x["received"]
        say(f"| {x['loss_pct']:g} % | {lost} / {x['sent']} | {lost / x['sent']:.2%} |")
    say(f"\nkernel {vm['kernel']} in a {vm['accel']} VM with {vm['cpus']} CPUs (unshaped loopback TCP there: "
        f"{vm['capacity_mbps']:.0f} Mbit/s); median of {repeats} transfers of {seconds:g} s at the rate, "
        f"header-compensated; VM wall time {vm['wall_s']:.0f} s; host {platform.node()}, {platform.release()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, skip transfers longer than 8 s")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--rates", type=float, nargs="+", default=RATES_MBPS)
    parser.add_argument("--backend", default=None, help="force a backend (default: the best offered)")
    parser.add_argument("--reuse-buffer", action="store_true",
                        help="the wire receiver reuses one buffer (recv_frame into=) instead of a fresh tensor each")
    parser.add_argument("--netem-vm", action="store_true",
                        help="netem (and tbf beside it) in a VM booted with a stock kernel that has sch_netem")
    parser.add_argument("--vm-seconds", type=float, default=2.0, help="length of one transfer in the VM")
    args = parser.parse_args()
    if args.netem_vm:
        netem_vm_table(tuple(args.rates), args.vm_seconds, args.repeats or 2)
        return
    repeats = args.repeats or (1 if args.quick else 3)
    max_seconds = args.max_seconds or (8.0 if args.quick else 20.0)
    table(tuple(args.rates), SIZES, max_seconds, repeats, args.backend, args.reuse_buffer)


if __name__ == "__main__":
    main()
