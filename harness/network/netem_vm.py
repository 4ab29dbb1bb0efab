"""Netem on a real kernel: boot a stock kernel that has ``sch_netem`` in a small VM sharing this machine's user space
(virtme-ng), build the harness's own ``Topology`` with backend netem in it, and measure what its links do.

Host side: :func:`missing` names what the VM needs and this machine lacks; :func:`run_in_vm` boots the VM, runs
``python -m harness.network.netem_vm --inside ...`` there and returns its measurements (one JSON line). Guest side
(``--inside``), all through ``Topology``: TCP goodput per rate on netem (and on tbf beside it: same kernel, same
CPU), the one-way delay of small UDP datagrams both ways on a delayed, jittered link (both ends share one clock), and
how many of N datagrams arrive at two loss rates (the second set on the live link, as a sweep's next job does).
The guest imports ``harness.network`` only, so no torch (and no ``LinkProber``): on an emulated CPU (TCG) Python
reads its modules slowly through 9p, and ``import torch`` alone took 190 s there, pyroute2's imports 13 s.

    python -m harness.network.netem_vm --rates 1.1 18.88 100 --compare tbf     # as root; prints the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[2]
MARK = "NETEM_VM_RESULT "
STARTED = "NETEM_VM_STARTED"  # the guest's first line: without it the VM never came up
PREFIX = "sbvm"
VM_NICENESS = -10  # as root: ahead of the machine's other processes, so that a load beside it moves no delay
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux: kernel receive time as a timespec
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
INSTALL = {  # what is missing: (what it is, how to get it)
    "root": ("not root", "run as root"),
    "vng": ("virtme-ng's vng not found", "pip install -e '.[vm]'"),
    "qemu-system-x86_64": ("qemu-system-x86_64 not found", "apt-get install qemu-system-x86"),
    "busybox": ("busybox not found", "apt-get install busybox-static"),
    "kernel": ("no /boot/vmlinuz-* with sch_netem", "apt-get install linux-image-amd64"),
}


# -- host side -------------------------------------------------------------------------------------------------------

def vng_path() -> str | None:
    """virtme-ng's ``vng``: beside this interpreter (a venv's bin) or on PATH."""
    beside = Path(sys.executable).parent / "vng"
    return str(beside) if beside.exists() else shutil.which("vng")


def _version_key(image: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", image.name)]


def has_netem(release: str) -> bool:
    """Whether kernel ``release`` has netem: built in, or a module under /lib/modules (what the guest loads)."""
    config = Path("/boot", f"config-{release}")
    if config.exists() and "CONFIG_NET_SCH_NETEM=y" in config.read_text():
        return True
    return any(Path("/lib/modules", release, "kernel/net/sched").glob("sch_netem.ko*"))


def stock_kernel() -> Path | None:
    """The newest installed kernel image (``/boot/vmlinuz-*``) with netem."""
    images = sorted(Path("/boot").glob("vmlinuz-*"), key=_version_key, reverse=True)
    return next((image for image in images if has_netem(image.name.removeprefix("vmlinuz-"))), None)


def missing() -> list[str]:
    """What the VM needs and this machine lacks, each with how to get it; empty when the VM can start."""
    lacking = []
    if os.geteuid() != 0:
        lacking.append("root")
    if vng_path() is None:
        lacking.append("vng")
    lacking += [tool for tool in ("qemu-system-x86_64", "busybox") if shutil.which(tool) is None]
    if stock_kernel() is None:
        lacking.append("kernel")
    return [f"{INSTALL[what][0]} ({INSTALL[what][1]})" for what in lacking]


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _boot(kernel: Path, inner: str, kvm: bool, cpus: int, memory: str,
          timeout: float) -> subprocess.CompletedProcess:
    vng = vng_path()
    command = [vng, "--run", str(kernel), "--cpus", str(cpus), "--memory", memory, "--exec", inner]
    if not kvm:
        command.insert(1, "--disable-kvm")
    if os.geteuid() == 0:  # an emulated CPU's timers fire late when the host's other work preempts it
        command = ["nice", "-n", str(VM_NICENESS), *command]
    env = {**os.environ, "PATH": f"{Path(vng).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # vng runs virtme-run
    return subprocess.run(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


def run_in_vm(args: Sequence[str], timeout: float = 900, cpus: int = 2, memory: str = "1G") -> dict[str, Any]:
    """Boot the stock kernel, run the guest side with ``args`` and return its JSON, plus ``accel`` (kvm or tcg) and
    ``wall_s`` (boot included). KVM when /dev/kvm is usable and the guest comes up on it, else software emulation."""
    lacking = missing()
    if lacking:
        raise RuntimeError(f"the netem VM cannot start: {'; '.join(lacking)}")
    kernel = stock_kernel()
    inner = shlex.join([sys.executable, "-m", "harness.network.netem_vm", "--inside", *args])
    start = time.monotonic()
    for kvm in ([True, False] if kvm_usable() else [False]):
        done = _boot(kernel, inner, kvm, cpus, memory, timeout)
        if STARTED in done.stdout:
            break  # a KVM that cannot run this kernel dies before the guest starts: then emulate
    results = [line[len(MARK):] for line in done.stdout.splitlines() if line.startswith(MARK)]
    if not results:
        output = (done.stdout + done.stderr)[-4000:]
        raise RuntimeError(f"the VM ({kernel.name}) printed no result, exit {done.returncode}:\n{output}")
    return {**json.loads(results[-1]), "accel": "kvm" if kvm else "tcg", "wall_s": time.monotonic() - start}


def delay_summary(delay: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per direction of the guest's delay measurement: count, mean, sd, min, 5th, 50th and 95th percentile, max (ms),
    and ``floor``, the median one-way time on the same link without delay (both directions)."""
    import numpy as np

    floor = float(np.median(sum(delay["floor_ms"].values(), [])))
    out = {}
    for way, samples in delay["one_way_ms"].items():
        ms = np.array(samples)
        p5, p50, p95 = np.percentile(ms, [5, 50, 95])
        out[way] = {"count": len(ms), "mean": ms.mean(), "sd": ms.std(), "min": ms.min(), "p5": p5, "median": p50,
                    "p95": p95, "max": ms.max(), "floor": floor, "samples": ms}
    return out


# -- guest side ------------------------------------------------------------------------------------------------------

def _recv_exact(conn: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("peer closed mid-transfer")
        got += n


def _serve_transfers(conn: socket.socket, largest: int) -> None:
    """Receive length-prefixed blobs and ack each with one byte, until a zero length."""
    buffer = memoryview(bytearray(largest))
    header = memoryview(bytearray(8))
    with conn:
        while True:
            _recv_exact(conn, header)
            (n,) = struct.unpack("!Q", header)
            if n == 0:
                return
            _recv_exact(conn, buffer[:n])
            conn.sendall(b"k")


def _timed_transfer(conn: socket.socket, payload: memoryview) -> float:
    start = time.perf_counter()
    conn.sendall(struct.pack("!Q", len(payload)))
    conn.sendall(payload)
    if conn.recv(1) != b"k":
        raise ConnectionError("no ack")
    return time.perf_counter() - start


def qdisc_readback(topo: Any, endpoint: str) -> dict[str, Any]:
    """The root qdisc the kernel holds on ``endpoint``'s veth, in the kernel's units turned into µs, % and B/s."""
    from harness.network.namespaces import ipr_in

    ns_per_us, ns_per_tick = (int(f, 16) for f in Path("/proc/net/psched").read_text().split()[:2])
    ticks_per_us = ns_per_us / ns_per_tick
    with ipr_in(topo.netns(endpoint)) as ip:
        (qdisc,) = [q for q in ip.get_qdiscs() if q.get_attr("TCA_KIND") in ("netem", "tbf")]
    kind, options = qdisc.get_attr("TCA_KIND"), qdisc.get_attr("TCA_OPTIONS")
    if kind == "tbf":
        return {"kind": kind, "rate_bytes_per_s": options.get_attr("TCA_TBF_PARMS")["rate"]}
    return {"kind": kind, "delay_us": options["delay"] / ticks_per_us, "jitter_us": options["jitter"] / ticks_per_us,
            "loss_pct": options["loss"] / 0xFFFFFFFF * 100, "limit_packets": options["limit"],
            "rate_bytes_per_s": options.get_attr("TCA_NETEM_RATE")["rate"]}


def measure_goodput(backend: str, mbps: float, seconds: float, repeats: int) -> dict[str, Any]:
    """Payload goodput / rate of ``repeats`` TCP transfers of ``seconds`` each at the rate, device -> server, timed
    from the first byte until the receiver's ack is back, on a fresh header-compensated link."""
    from harness.network.link import LinkSpec
    from harness.network.topology import Topology

    nbytes = max(int(mbps * 1e6 / 8 * seconds), 10_000)
    payload = memoryview(bytearray(os.urandom(nbytes)))
    with Topology(["device", "server"], [("device", "server", LinkSpec(mbps))], prefix=PREFIX,
                  backend=backend) as topo:
        listener = topo.socket("server")
        listener.bind((topo.address("server", "device"), 0))
        listener.listen(1)
        conn = topo.socket("device")
        conn.connect(listener.getsockname())
        server = threading.Thread(target=_serve_transfers, args=(listener.accept()[0], nbytes), daemon=True)
        server.start()
        _timed_transfer(conn, payload[:min(nbytes, 64_000)])  # past slow start's first rounds
        ratios = [nbytes * 8 / _timed_transfer(conn, payload) / (mbps * 1e6) for _ in range(repeats)]
        conn.sendall(struct.pack("!Q", 0))
        server.join(10)
        conn.close(), listener.close()
        return {"backend": topo.record()["backend"], "mbps": mbps, "bytes": nbytes, "ratios": ratios,
                "ratio": statistics.median(ratios), "qdisc": qdisc_readback(topo, "device")}


def _udp_pair(topo: Any, src: str, dst: str, rcvbuf: int = 8 << 20) -> tuple[socket.socket, socket.socket]:
    """(sender in ``src`` connected to, receiver in ``dst``) with kernel receive timestamps and a deep buffer."""
    receiver = topo.socket(dst, kind=socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)  # the socket must never be where packets drop
    receiver.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    receiver.bind((topo.address(dst, src), 0))
    receiver.settimeout(1.0)
    sender = topo.socket(src, kind=socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    return sender, receiver


def _one_way_delays(sender: socket.socket, receiver: socket.socket, count: int, interval_s: float,
                    out: list[float]) -> None:
    """Send ``count`` stamped datagrams ``interval_s`` apart; append each arrival's one-way delay (ms) to ``out``."""
    def receive() -> None:
        while len(out) < count:
            try:
                data, ancillary, _, _ = receiver.recvmsg(64, socket.CMSG_SPACE(16))
            except TimeoutError:
                return
            arrived = time.time_ns()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("=qq", value[:16])
                    arrived = seconds * 1_000_000_000 + nanoseconds
            out.append((arrived - struct.unpack("!q", data[:8])[0]) / 1e6)

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    for _ in range(count):
        sender.send(struct.pack("!q", time.time_ns()) + bytes(56))
        time.sleep(interval_s)
    reader.join(interval_s * count + 5)


def _both_ways(topo: Any, count: int, interval_s: float) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"device->server": [], "server->device": []}
    ways = [threading.Thread(target=_one_way_delays, args=(*_udp_pair(topo, a, b), count, interval_s,
                                                          samples[f"{a}->{b}"]))
            for a, b in (("device", "server"), ("server", "device"))]
    for way in ways:
        way.start()
    for way in ways:
        way.join()
    return samples


def measure_delay(mbps: float, delay_ms: float, jitter_ms: float, count: int) -> dict[str, Any]:
    """One-way delays (ms) of ``count`` datagrams each way, spaced wider than delay + jitter so that each meets an
    empty netem queue and gets a delay drawn afresh; first on the link without delay (``floor_ms``: what sending,
    receiving and the VM's timers add), then on the live link moved to the delay and jitter with ``set_link``."""
    from harness.network.link import LinkSpec
    from harness.network.topology import Topology

    interval = (delay_ms + jitter_ms) / 1e3 * 1.2 + 0.002
    with Topology(["device", "server"], [("device", "server", LinkSpec(mbps))], prefix=PREFIX,
                  backend="netem") as topo:
        floor = _both_ways(topo, count // 2, 0.005)
        topo.set_link("device", "server", LinkSpec(mbps, delay_ms, jitter_ms))
        return {"backend": topo.record()["backend"], "mbps": mbps, "delay_ms": delay_ms, "jitter_ms": jitter_ms,
                "sent_each_way": count, "one_way_ms": _both_ways(topo, count, interval), "floor_ms": floor,
                "qdisc": {end: qdisc_readback(topo, end) for end in ("device", "server")}}


def _udp_errors(topo: Any, endpoint: str) -> int:
    """The namespace's UDP RcvbufErrors: datagrams a full socket buffer dropped (they must not count as loss)."""
    from harness.network.namespaces import call_in

    lines = call_in(topo.netns(endpoint), lambda: Path("/proc/thread-self/net/snmp").read_text()).splitlines()
    names, values = [line.split()[1:] for line in lines if line.startswith("Udp:")][:2]
    return int(values[names.index("RcvbufErrors")])


def _softnet_drops() -> int:
    """Packets the kernel dropped for a full backlog queue (all CPUs; the veth's receive side lands there)."""
    return sum(int(line.split()[1], 16) for line in Path("/proc/net/softnet_stat").read_text().splitlines())


def _count_arrivals(sender: socket.socket, receiver: socket.socket, count: int) -> int:
    """Send ``count`` numbered datagrams in small paced bursts; the distinct numbers that arrive."""
    seen: set[int] = set()

    def receive() -> None:
        while True:
            try:
                seen.add(struct.unpack("!I", receiver.recv(64)[:4])[0])
            except TimeoutError:
                return

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    for seq in range(count):
        sender.send(struct.pack("!I", seq) + bytes(60))
        if seq % 16 == 15:
            time.sleep(0.002)
    reader.join(30)
    return len(seen)


def measure_loss(mbps: float, losses: Sequence[float], count: int) -> list[dict[str, Any]]:
    """Datagrams that arrive of ``count`` sent device -> server at each loss rate; the link is built with the first
    and moved to each next with ``Topology.set_link`` (a netem ``replace`` on the live qdisc)."""
    from harness.network.link import LinkSpec
    from harness.network.topology import Topology

    out = []
    with Topology(["device", "server"], [("device", "server", LinkSpec(mbps, loss_pct=losses[0]))], prefix=PREFIX,
                  backend="netem") as topo:
        for loss in losses:
            topo.set_link("device", "server", LinkSpec(mbps, loss_pct=loss))
            errors, drops = _udp_errors(topo, "server"), _softnet_drops()
            sender, receiver = _udp_pair(topo, "device", "server")
            received = _count_arrivals(sender, receiver, count)
            sender.close(), receiver.close()
            out.append({"backend": topo.record()["backend"], "loss_pct": loss, "sent": count, "received": received,
                        "rcvbuf_errors": _udp_errors(topo, "server") - errors,
                        "backlog_drops": _softnet_drops() - drops, "qdisc": qdisc_readback(topo, "device")})
    return out


def measure_capacity(nbytes: int = 20_000_000) -> float:
    """Mbit/s of one unshaped TCP transfer over the guest's loopback: what its CPU can carry at all."""
    listener = socket.create_server(("127.0.0.1", 0))
    conn = socket.create_connection(listener.getsockname())
    server = threading.Thread(target=_serve_transfers, args=(listener.accept()[0], nbytes), daemon=True)
    server.start()
    payload = memoryview(bytearray(nbytes))
    _timed_transfer(conn, payload[:1_000_000])
    mbps = nbytes * 8 / _timed_transfer(conn, payload) / 1e6
    conn.sendall(struct.pack("!Q", 0))
    server.join(10)
    conn.close(), listener.close()
    return mbps


def inside(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the VM measures, in one boot."""
    booted_s = time.clock_gettime(time.CLOCK_BOOTTIME)  # since the guest kernel started
    from harness.network.shaping import available_backends, probe_backend

    start = time.monotonic()
    result: dict[str, Any] = {"kernel": platform.release(), "cpus": os.cpu_count(), "python_started_s": booted_s,
                              "imported_s": time.clock_gettime(time.CLOCK_BOOTTIME),
                              "backends": list(available_backends()), "probe_backend": probe_backend(),
                              "capacity_mbps": measure_capacity()}
    result["goodput"] = [measure_goodput(backend, mbps, args.seconds, args.repeats)
                         for mbps in args.rates for backend in ("netem", *args.compare)]
    if args.delay_count:
        result["delay"] = measure_delay(args.delay_mbps, args.delay_ms, args.jitter_ms, args.delay_count)
    if args.loss_count:
        result["loss"] = measure_loss(args.delay_mbps, args.losses, args.loss_count)
    from harness.network.namespaces import leftovers

    result["leftovers"] = leftovers(PREFIX)  # every Topology above was stopped: nothing of it may remain
    result["guest_s"] = time.monotonic() - start
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.network.netem_vm", description=__doc__.split("\n")[0])
    parser.add_argument("--inside", action="store_true", help="measure here (the guest side; the host boots the VM)")
    parser.add_argument("--rates", type=float, nargs="*", default=[1.1, 18.88, 100.0], help="goodput rates, Mbit/s")
    parser.add_argument("--compare", nargs="*", default=[], choices=["tbf", "htb"], help="backends beside netem")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one goodput transfer at its rate")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--delay-mbps", type=float, default=18.88, help="rate of the delay and loss links")
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--jitter-ms", type=float, default=5.0)
    parser.add_argument("--delay-count", type=int, default=200, help="datagrams each way (0: no delay check)")
    parser.add_argument("--losses", type=float, nargs="+", default=[1.0, 5.0], help="loss rates, %%")
    parser.add_argument("--loss-count", type=int, default=4000, help="datagrams per loss rate (0: no loss check)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds the whole VM run may take")
    args = parser.parse_args(argv)
    if args.inside:
        print(STARTED, flush=True)
        print(MARK + json.dumps(inside(args)), flush=True)
        return
    print(json.dumps(run_in_vm(list(argv) if argv is not None else sys.argv[1:], timeout=args.timeout)))


if __name__ == "__main__":
    main()
