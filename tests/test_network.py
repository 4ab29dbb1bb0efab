"""Namespaces, kernel-shaped links and their cleanup, checked on the real kernel (root; CI runs as root).

Every test uses its own prefix family ("sbt...") so that it never touches another run's objects.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from harness.controller.probe import probe_link
from harness.loadgen.result import goodput_mbps
from harness.network import namespaces, shaping
from harness.worker import wire
from harness.network.link import BackendError, LinkSpec
from harness.network.namespaces import leftovers
from harness.network.shaping import available_backends
from harness.network.topology import Topology
from harness.worker.pacer import Pacer

pytestmark = pytest.mark.exclusive  # goodput and rates measured on veths: a concurrent test's load moves them

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "sbt"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CI runs as root)")


@pytest.fixture(autouse=True)
def nothing_left_by_this_process():
    yield
    mine = [n for n in leftovers(PREFIX) if namespaces._owner_pid(n, PREFIX) == os.getpid()]
    assert mine == [], f"left behind: {mine}"


# The pre-run goodput probe's cases: (backend, Mbit/s, TDF); tests/test_rootless.py holds a rootless run to the same.
PROBE_CASES = [("tbf", 1.1, 1.0), ("tbf", 18.88, 10.0), ("tbf", 100.0, 1.0), ("userspace", 20.0, 1.0)]
PROBE_TOLERANCE = 0.05


def pair(mbps: float, **kw) -> Topology:
    return Topology(["device", "server"], [("device", "server", LinkSpec(mbps, **kw.pop("link", {})))],
                    prefix=PREFIX, **kw)


def transfer_s(topo: Topology, src: str, dst: str, nbytes: int, pacers: bool = False) -> float:
    """Seconds from the first byte of a tensor frame sent src -> dst until dst's ACK is back (sender's clock)."""
    listener = topo.socket(dst)
    listener.bind((topo.address(dst, src), 0))
    listener.listen()
    back = topo.pacer(dst, src) if pacers else None

    def receive():
        conn, _ = listener.accept()
        with conn:
            frame = wire.recv_frame(wire.nodelay(conn), nbytes)
            if back:
                back.before_send(wire.HEADER.size)
            wire.send_ack(conn, frame.seq)

    receiver = threading.Thread(target=receive)
    receiver.start()
    with topo.socket(src) as conn:
        conn.connect(listener.getsockname())
        wire.nodelay(conn)
        tensor = torch.zeros(nbytes, dtype=torch.uint8)
        start = time.perf_counter()
        if pacers:
            topo.pacer(src, dst).before_send(nbytes)
        wire.send_tensor(conn, tensor, seq=1, tag=0)
        ack = wire.recv_frame(conn, 0)
        elapsed = time.perf_counter() - start
    receiver.join(10)
    listener.close()
    assert ack.kind is wire.Kind.ACK and not receiver.is_alive()
    return elapsed


def goodput_ratio(seconds: float, nbytes: int, mbps: float) -> float:
    return goodput_mbps(nbytes, seconds) / mbps


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie whose parent (not us) has not reaped it yet


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def qdisc_rate(namespace: str, ifname: str) -> int:
    """Bytes/s of the root qdisc a kernel backend put on ``ifname``: netem where the kernel has it, else tbf."""
    with IPRoute(netns=namespace) as ip:
        index = ip.link_lookup(ifname=ifname)[0]
        (qdisc,) = [q for q in ip.get_qdiscs(index=index) if q.get_attr("TCA_KIND") in ("netem", "tbf")]
        options = qdisc.get_attr("TCA_OPTIONS")
        if qdisc.get_attr("TCA_KIND") == "netem":
            return options.get_attr("TCA_NETEM_RATE")["rate"]
        return options.get_attr("TCA_TBF_PARMS")["rate"]


# -- configuration errors (no root needed) -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"bandwidth_mbps": 0}, r"bandwidth_mbps must be a finite number > 0 \(Mbit/s\), got 0"),
    ({"bandwidth_mbps": float("nan")}, "bandwidth_mbps must be"),
    ({"bandwidth_mbps": 1, "delay_ms": -1}, "delay_ms must be a finite number >= 0, got -1"),
    ({"bandwidth_mbps": 1, "jitter_ms": float("inf")}, "jitter_ms must be"),
    ({"bandwidth_mbps": 1, "loss_pct": 100}, r"loss_pct must be in \[0, 100\), got 100"),
])
def test_link_spec_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LinkSpec(**kwargs)


def test_link_spec_from_config():
    cfg = {"name": "wifi", "bandwidth_mbps": 18.88, "delay_ms": 0, "jitter_ms": 0, "loss_pct": 0,
           "compensate_headers": True, "trace": None}
    assert LinkSpec.from_config(cfg) == LinkSpec(18.88)


@pytest.mark.parametrize("endpoints, links, kwargs, message", [
    (["a", "b"], [("a", "c", LinkSpec(1))], {}, "must join two distinct endpoints"),
    (["a", "b"], [("a", "a", LinkSpec(1))], {}, "must join two distinct endpoints"),
    (["a", "b"], [("a", "b", LinkSpec(1)), ("b", "a", LinkSpec(2))], {}, "already linked"),
    (["a", "a"], [], {}, "distinct names"),
    (["a b"], [], {}, "distinct names"),
    (["a", "b"], [], {"tdf": 0}, "tdf must be"),
    (["a", "b"], [], {"prefix": "SB"}, "prefix must match"),
    (["a", "b"], [], {"backend": "dummynet"}, "backend 'dummynet' is not one of"),
])
def test_topology_rejects_bad_configuration(endpoints, links, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Topology(endpoints, links, **kwargs)


def test_header_compensation_and_dilation_set_the_kernel_rate():
    link = LinkSpec(18.88)
    plain = shaping.kernel_rate(link, tdf=2.0, compensate_headers=False)
    assert plain == round(18.88e6 / 8 / 2)  # an integer number of bytes/s, dilated
    assert shaping.kernel_rate(link, tdf=2.0, compensate_headers=True) == round(18.88e6 / 8 / 2 * 1514 / 1448)


# -- the sender's pacer (no root needed) ---------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.slept = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_pacer_serialises_at_its_rate_and_adds_delay_once_per_message():
    clock = FakeClock()
    pacer = Pacer(rate_mbps=8.0, delay_ms=10.0, clock=clock, sleep=clock.sleep)  # 1 MB/s
    assert pacer.before_send(100_000) == pytest.approx(0.1 + 0.01)
    # ready now, but the link is free already: serialisation of the next starts when it is ready
    assert pacer.departure(100_000, ready_at=clock.now) == pytest.approx(clock.now + 0.11)
    # two messages ready together: the second waits for the first's serialisation, not for its delay
    clock.now += 1
    first, second = pacer.departure(50_000, clock.now), pacer.departure(50_000, clock.now)
    assert second - first == pytest.approx(0.05)
    pacer.set_rate(80.0)
    clock.now += 1
    assert pacer.departure(100_000, clock.now) - clock.now == pytest.approx(0.01 + 0.01)


def test_pacer_jitter_is_seeded_bounded_and_never_reorders():
    def departures(seed):
        clock = FakeClock()
        pacer = Pacer(delay_ms=20.0, jitter_ms=5.0, seed=seed, clock=clock, sleep=clock.sleep)
        out = []
        for _ in range(200):
            clock.now += 0.001
            out.append(pacer.departure(1000, clock.now) - clock.now)
        return out

    a, b, c = departures(1), departures(1), departures(2)
    assert a == b and a != c
    assert all(0.015 - 1e-9 <= d for d in a) and max(a) <= 0.025 + 0.001 * 200
    assert len(set(round(d, 6) for d in a)) > 50  # really jittered


def test_pacer_is_idle_when_the_kernel_does_everything():
    pacer = Pacer()
    assert pacer.idle and pacer.before_send(10**9) == 0.0
    with pytest.raises(ValueError, match="does not shape the rate"):
        pacer.set_rate(5)
    with pytest.raises(ValueError, match="rate_mbps must be > 0 or None"):
        Pacer(rate_mbps=0)
    assert Pacer(**Pacer(rate_mbps=3, delay_ms=2, seed=4).config()).config() == Pacer(3, 2, 0, 4).config()


def test_without_root_endpoints_share_loopback_and_the_pacer_shapes(monkeypatch):
    monkeypatch.setattr(shaping, "_probe", lambda: (False, ("userspace",)))
    with pair(40.0) as topo:
        assert (topo.isolated, topo.backend, topo.netns("device")) == (False, "userspace", None)
        assert topo.address("device", "server") == "127.213.0.1"
        ratio = goodput_ratio(transfer_s(topo, "device", "server", 1_000_000, pacers=True), 1_000_000, 40.0)
        assert 0.9 <= ratio <= 1.1, ratio
        out = topo.spawn("device", [sys.executable, "-c", "import socket; print(socket.if_nameindex())"],
                         stdout=subprocess.PIPE, text=True).communicate(timeout=30)[0]
        assert f"{PREFIX}{os.getpid()}l0" not in out  # the root namespace: no veths


# -- probing -------------------------------------------------------------------------------------------------------

def kernel_has(kind: str) -> bool:
    """Independent of the module: can a scratch namespace's veth take this qdisc as root?"""
    name = f"{PREFIX}{os.getpid()}-kind"
    netns.create(name)
    try:
        with IPRoute(netns=name) as ip:
            ip.link("add", ifname="k0", kind="veth", peer={"ifname": "k1"})
            options = {"delay": 1000} if kind == "netem" else {"rate": 10**6, "burst": 3000, "limit": 10**5}
            try:
                ip.tc("add", kind, index=ip.link_lookup(ifname="k0")[0], handle="1:", **options)
            except NetlinkError as err:
                if err.code == errno.ENOENT:
                    return False
                raise
            return True
    finally:
        netns.remove(name)


@needs_root
def test_probe_picks_the_best_backend_the_kernel_has():
    expected = "netem" if kernel_has("netem") else "tbf" if kernel_has("tbf") else "htb"
    assert shaping.probe_backend() == expected
    assert available_backends()[-1] == "userspace"
    out = subprocess.run([sys.executable, "-m", "harness.network", "probe"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out)["backend"] == expected


@needs_root
def test_a_namespace_is_made_without_forking_and_the_caller_stays_in_its_own(monkeypatch):
    # pyroute2's netns.create forks the whole process; a child forked from a large threaded one can miss pyroute2's
    # 2 s answer, and the sweep then lost its kernel links. The harness's way must never fork.
    def no_fork(*args, **kwargs):
        raise AssertionError("a namespace was made by forking")

    monkeypatch.setattr(os, "fork", no_fork)
    own = os.readlink("/proc/thread-self/ns/net")
    name = f"{PREFIX}{os.getpid()}-nofork"
    namespaces.create_namespace(name)
    try:
        assert name in netns.listnetns()
        assert os.readlink("/proc/thread-self/ns/net") == own
        with namespaces.ipr_in(name) as ip:  # a namespace of its own: only its loopback
            assert [link.get_attr("IFLA_IFNAME") for link in ip.get_links()] == ["lo"]
            assert os.readlink("/proc/thread-self/ns/net") == own
        with pytest.raises(OSError):
            namespaces.create_namespace(name)  # taken
    finally:
        netns.remove(name)


# -- shaped links --------------------------------------------------------------------------------------------------

@needs_root
@pytest.mark.parametrize("mbps", [20.0, 50.0])
def test_payload_goodput_matches_the_configured_rate(mbps):
    with pair(mbps) as topo:
        assert topo.backend == shaping.probe_backend()
        nbytes = 4_000_000
        ratio = goodput_ratio(transfer_s(topo, "device", "server", nbytes), nbytes, mbps)
        assert 0.9 <= ratio <= 1.1, f"{mbps} Mbit/s: payload goodput / configured = {ratio:.3f}"
        back = goodput_ratio(transfer_s(topo, "server", "device", 1_000_000), 1_000_000, mbps)
        assert 0.9 <= back <= 1.1, f"reverse direction: {back:.3f}"


@needs_root
@pytest.mark.parametrize("backend", ["htb", "userspace"])
def test_other_backends_shape_too(backend):
    if backend not in available_backends():
        pytest.skip(f"{backend} is not offered here: {available_backends()}")
    with pair(40.0, backend=backend) as topo:
        ratio = goodput_ratio(transfer_s(topo, "device", "server", 2_000_000, pacers=True), 2_000_000, 40.0)
        assert 0.9 <= ratio <= 1.1, f"{backend}: {ratio:.3f}"


@needs_root
def test_set_rate_changes_a_live_link_in_both_directions():
    """One transfer in flight: the receiver's rate follows set_rate from 40 to 8 Mbit/s within the same stream.

    The receiver stops reading at ``switch_at`` until the rate has changed (so that a slow netlink call on a loaded
    machine cannot let the rest through at the old rate); what the socket buffers held meanwhile arrives at once
    when it reads again, so the new rate is measured from ``BUFFERED`` bytes on."""
    total, switch_at = 2_200_000, 1_000_000
    buffered = 400_000  # more than the socket buffers hold at these rates on loopback veths
    arrivals: list[tuple[float, int]] = []  # (receiver clock, bytes so far)
    switched, changed = threading.Event(), threading.Event()
    with pair(40.0) as topo:
        listener = topo.socket("server")
        listener.bind((topo.address("server", "device"), 0))
        listener.listen()

        def receive():
            conn, _ = listener.accept()
            buffer, got = memoryview(bytearray(1 << 16)), 0
            with conn:
                while got < total:
                    got += conn.recv_into(buffer)
                    arrivals.append((time.perf_counter(), got))
                    if got >= switch_at and not switched.is_set():
                        switched.set()
                        changed.wait(30)

        receiver = threading.Thread(target=receive)
        receiver.start()
        with topo.socket("device") as conn:
            conn.connect(listener.getsockname())
            sender = threading.Thread(target=conn.sendall, args=(bytes(total),))
            sender.start()
            assert switched.wait(10)
            topo.set_rate("server", "device", 8.0)
            changed.set()
            receiver.join(20)
            sender.join(5)
            stalled = receiver.is_alive() or sender.is_alive()
        listener.close()
        assert not stalled, f"the transfer stalled: {arrivals[-1][1] if arrivals else 0} of {total} bytes after 20 s"
        for end in ("device", "server"):
            ifname = topo._link("device", "server").ifname[end]
            assert qdisc_rate(topo.netns(end), ifname) == round(8e6 / 8 * 1514 / 1448)
        assert topo.bandwidth_mbps("device", "server") == 8.0

    def mbps_between(lo: int, hi: int, after: float = 0.0) -> float:
        points = [(t, n) for t, n in arrivals if lo <= n <= hi and t >= after]
        (t0, n0), (t1, n1) = points[0], points[-1]
        return goodput_mbps(n1 - n0, t1 - t0)

    before = mbps_between(100_000, switch_at)
    resumed = next(n for _, n in arrivals if n >= switch_at)
    after = mbps_between(resumed + buffered, total)
    assert 0.85 <= before / 40.0 <= 1.15, f"before set_rate: {before:.1f} Mbit/s"
    assert 0.85 <= after / 8.0 <= 1.15, f"after set_rate: {after:.1f} Mbit/s"


@needs_root
def test_delay_is_added_by_the_sender_where_the_kernel_cannot():
    with pair(200.0, link={"delay_ms": 25.0}) as topo:
        kernel_delays = topo.backend == "netem"
        assert topo.sender_delay_ms("device", "server") == (0.0 if kernel_delays else 25.0)
        transfer_s(topo, "device", "server", 1000, pacers=True)  # warm: connection set-up is not measured
        rtt = min(transfer_s(topo, "device", "server", 1000, pacers=True) for _ in range(3))
        assert 0.050 <= rtt < 0.080, f"round trip of a small frame: {rtt * 1e3:.1f} ms, expected ~50 ms"


@needs_root
def test_delays_dilate_and_loss_needs_netem():
    with pair(100.0, link={"delay_ms": 5.0, "jitter_ms": 1.0}, tdf=3.0) as topo:
        if topo.backend != "netem":
            assert topo.pacer_config("device", "server") == {"rate_mbps": None, "delay_ms": 15.0,
                                                             "jitter_ms": 3.0, "seed": 0}
        assert topo.record()["links"][0]["kernel_rate_bytes_per_s"] == round(100e6 / 8 / 3 * 1514 / 1448)
    with pytest.raises(BackendError, match="loss, which needs the netem backend"):
        pair(10.0, link={"loss_pct": 1.0}, backend="tbf" if "tbf" in available_backends() else "userspace").start()


# -- processes in namespaces ---------------------------------------------------------------------------------------

@needs_root
def test_spawned_process_runs_in_its_endpoints_namespace():
    with pair(100.0) as topo:
        proc = topo.spawn("server", [sys.executable, "-c", "import socket; print(socket.if_nameindex())"],
                          stdout=subprocess.PIPE, text=True)
        out = proc.communicate(timeout=30)[0]
        assert topo._link("device", "server").ifname["server"] in out
        assert topo._link("device", "server").ifname["device"] not in out


@needs_root
def test_killed_process_takes_the_topology_down():
    with pair(100.0) as topo:
        names = [topo.netns(e) for e in topo.endpoints]
        victim = topo.spawn("server", ["sleep", "60"])
        bystander = topo.spawn("device", ["sleep", "60"])
        quitter = topo.spawn("device", ["sh", "-c", "exit 3"], critical=False)
        assert quitter.wait(10) == 3
        time.sleep(0.2)
        assert topo.failure is None and set(names) <= set(netns.listnetns())
        os.kill(victim.pid, signal.SIGKILL)
        assert wait_for(lambda: topo.failure is not None)
        assert "SIGKILL" in topo.failure and f"process {victim.pid}" in topo.failure
        assert wait_for(lambda: not set(names) & set(netns.listnetns()))
        assert bystander.poll() is not None
        with pytest.raises(RuntimeError, match="topology is down"):
            topo.set_rate("device", "server", 5.0)
        with pytest.raises(RuntimeError, match="died with signal SIGKILL"):
            topo.check()


@needs_root
def test_exception_inside_the_block_leaves_nothing():
    with pytest.raises(ZeroDivisionError):
        with pair(100.0) as topo:
            names = [topo.netns(e) for e in topo.endpoints]
            sleeper = topo.spawn("device", ["sleep", "60"])
            assert set(names) <= set(netns.listnetns())
            1 / 0
    assert not set(names) & set(netns.listnetns())
    assert sleeper.poll() == -signal.SIGTERM


@needs_root
def test_star_topology_gives_each_link_its_own_subnet():
    links = [("es0", f"es{i}", LinkSpec(100.0)) for i in (1, 2, 3)]
    with Topology(["es0", "es1", "es2", "es3"], links, prefix=PREFIX) as topo:
        hosts = {topo.address("es0", f"es{i}") for i in (1, 2, 3)}
        assert len(hosts) == 3 and topo.address("es2", "es0") == "10.213.0.6"
        with pytest.raises(KeyError, match="no link between 'es1' and 'es2'"):
            topo.address("es1", "es2")
        assert 0.9 <= goodput_ratio(transfer_s(topo, "es0", "es3", 1_000_000), 1_000_000, 100.0) <= 1.1


# -- another process holding a topology ----------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import json, signal, sys, time
    # Ctrl-C as at a terminal, even when the suite was started in the background (nohup, `&`: SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from harness.network.link import LinkSpec
    from harness.network.topology import Topology
    prefix, child_argv = sys.argv[1], sys.argv[2:] or ["sleep", "60"]
    topo = Topology(["device", "server"], [("device", "server", LinkSpec(50.0))], prefix=prefix)
    with topo:
        child = topo.spawn("server", child_argv)
        print(json.dumps({"names": [topo.netns(e) for e in topo.endpoints], "child": child.pid}), flush=True)
        time.sleep(60)
""")


def start_holder(tmp_path: Path, prefix: str, *child_argv: str) -> tuple[subprocess.Popen, dict]:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "holder.err", "w") as err:  # a KeyboardInterrupt traceback lands here, not in pytest's log
        proc = subprocess.Popen([sys.executable, str(script), prefix, *child_argv], stdout=subprocess.PIPE,
                                stderr=err, text=True, env=env)
    line = proc.stdout.readline()
    assert line, f"holder died: rc {proc.wait()}: {(tmp_path / 'holder.err').read_text()}"
    return proc, json.loads(line)


@needs_root
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_a_holder_removes_everything(tmp_path, sig):
    proc, held = start_holder(tmp_path, PREFIX)
    assert set(held["names"]) <= set(netns.listnetns())
    proc.send_signal(sig)
    # Python exits an uncaught KeyboardInterrupt by SIGINT; our SIGTERM becomes SystemExit(143) so finally-blocks run
    assert proc.wait(timeout=20) == (-signal.SIGINT if sig == signal.SIGINT else 128 + signal.SIGTERM)
    assert not set(held["names"]) & set(netns.listnetns())
    assert not [n for n in leftovers(PREFIX) if namespaces._owner_pid(n, PREFIX) == proc.pid]
    assert wait_for(lambda: gone(held["child"]), 5)


@needs_root
def test_second_sigint_during_teardown_does_not_cut_it_short(tmp_path):
    # The child ignores SIGTERM, so teardown waits its grace period before SIGKILL: the second Ctrl-C lands there.
    trapped = tmp_path / "trapped"
    proc, held = start_holder(tmp_path, PREFIX, "sh", "-c", f"trap '' TERM; touch {trapped}; sleep 60")
    assert wait_for(trapped.exists)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == -signal.SIGINT  # one KeyboardInterrupt, after the cleanup
    assert not set(held["names"]) & set(netns.listnetns())
    assert wait_for(lambda: gone(held["child"]), 5)
    assert "Traceback" in (tmp_path / "holder.err").read_text()


@needs_root
def test_stale_objects_of_a_killed_run_are_removed_at_the_next_start(tmp_path):
    proc, held = start_holder(tmp_path, PREFIX)
    proc.kill()
    proc.wait(timeout=10)
    assert set(held["names"]) <= set(netns.listnetns())  # SIGKILL: nobody cleaned up
    assert not gone(held["child"])  # its worker still runs inside the namespace
    with pair(100.0):
        assert not set(held["names"]) & set(netns.listnetns())
    assert wait_for(lambda: gone(held["child"]), 5)


@needs_root
def test_cleanup_command_removes_everything_with_its_prefix(tmp_path):
    proc, held = start_holder(tmp_path, "sbtc")
    try:
        # cleanup also ends dead controllers' MLflow runs: in a store of this test's, never the repository's
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
        out = subprocess.run([sys.executable, "-m", "harness.network", "cleanup", "--prefix", "sbtc"], cwd=ROOT,
                             capture_output=True, text=True, check=True, env=env).stdout
        assert all(name in out for name in held["names"])
        assert leftovers("sbtc") == []
        assert wait_for(lambda: gone(held["child"]), 5)
    finally:
        proc.kill()
        proc.wait(10)


# -- sockets in a namespace, without a fork ------------------------------------------------------------------------

FORKS: list[int] = []
os.register_at_fork(before=lambda: FORKS.append(threading.get_ident()))


def own_namespace() -> str:
    return os.readlink("/proc/thread-self/ns/net")


@needs_root
def test_namespace_sockets_open_by_setns_of_this_thread_without_a_fork_from_any_thread():
    """A forked helper inside a host that turns SIGTERM into SystemExit (a Ray worker) unwinds through the host's
    stack: netlink and TCP sockets in a namespace are opened by a helper thread's setns; the caller never moves."""
    name = f"{PREFIX}{os.getpid()}-setns"
    netns.create(name)
    try:
        before, FORKS[:] = own_namespace(), []
        with namespaces.ipr_in(name) as ip:
            ip.link("add", ifname="sx0", kind="veth", peer={"ifname": "sx1"})
            seen: list[set[str]] = []
            # pyroute2 opens one socket per thread: a watcher thread's teardown must reach the namespace too
            other = threading.Thread(target=lambda: seen.append({ln.get_attr("IFLA_IFNAME") for ln in ip.get_links()}))
            other.start()
            other.join()
            assert seen == [{"lo", "sx0", "sx1"}]
        with namespaces.socket_in(name) as sock:
            sock.bind(("127.0.0.1", 0))
        assert FORKS == [] and own_namespace() == before
        inside = namespaces.call_in(name, own_namespace)  # a helper thread's; this one never moves
        assert inside != before and own_namespace() == before

        def fail() -> None:
            raise RuntimeError("inside")

        with pytest.raises(RuntimeError, match="inside"):
            namespaces.call_in(name, fail)
        assert own_namespace() == before
        with IPRoute() as root:
            assert not root.link_lookup(ifname="sx0")  # created in the namespace, not here
    finally:
        namespaces.remove_namespace(name, PREFIX)


@needs_root
def test_a_missing_namespace_is_refused_not_created():
    name = f"{PREFIX}{os.getpid()}-missing"
    before = own_namespace()
    with pytest.raises(OSError, match=name):
        namespaces.ipr_in(name)
    assert name not in netns.listnetns() and own_namespace() == before


@needs_root
@pytest.mark.parametrize("backend, mbps, tdf", PROBE_CASES)
def test_the_pre_run_probe_reads_the_configured_rate(backend: str, mbps: float, tdf: float) -> None:
    """What every local run records as its link's goodput before the workers start (undilated), within 5 %."""
    if backend not in available_backends():
        pytest.skip(f"{backend} is not offered here: {available_backends()}")
    with pair(mbps, backend=backend, tdf=tdf) as topo:
        measured = probe_link(topo, "device", "server")
    assert abs(measured / mbps - 1) <= PROBE_TOLERANCE, \
        f"{backend} at {mbps:g} Mbit/s, TDF {tdf:g}: probe read {measured:.3f}"
