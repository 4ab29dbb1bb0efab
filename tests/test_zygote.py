"""Processes forked by a zygote (``harness.network.zygote``): each is the module it names, run as ``__main__`` in
a session of its own with its own arguments, environment, working directory, streams and namespace, and its exit
comes back as a ``Popen``'s would; the zygote ends with its controller."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.network.zygote import Zygote, ZygoteError
from tests.conftest import ROOT, needs_root
from tests.test_network import pair, wait_for

CHILD = "tests.zygote_child"


@pytest.fixture(scope="module")
def zygote():
    z = Zygote(["json"], {**os.environ, "PYTHONPATH": str(ROOT)})
    yield z
    z.close()


def fork(zygote: Zygote, tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    log = open(tmp_path / "child.log", "w")
    with log:
        return zygote.spawn(CHILD, list(args), {**os.environ, **(env or {})}, str(tmp_path), log.fileno(), log.fileno())


def test_a_child_is_its_module_run_as_main_with_its_own_arguments_environment_directory_and_streams(zygote, tmp_path):
    out = tmp_path / "seen.json"
    proc = fork(zygote, tmp_path, "report", str(out), env={"ZYGOTE_TEST_MARKER": "mine"})
    assert proc.wait(timeout=30) == 0
    seen = json.loads(out.read_text())
    assert seen["argv"] == ["report", str(out)] and seen["marker"] == "mine"
    assert seen["cwd"] == str(tmp_path) and seen["pid"] == proc.pid != zygote.proc.pid
    assert seen["session"] == proc.pid  # its own session: its group is killed with it
    assert seen["stdin"] == ""  # never the controller's terminal
    assert (tmp_path / "child.log").read_text() == "reported\n"


def test_a_script_child_is_what_python_path_starts(zygote, tmp_path):
    script, out = ROOT / "tests" / "zygote_child.py", tmp_path / "seen.json"
    with open(tmp_path / "child.log", "w") as log:
        proc = zygote.spawn(str(script), ["report", str(out)], dict(os.environ), str(tmp_path), log.fileno(),
                            log.fileno(), script=True)
    assert proc.wait(timeout=30) == 0
    seen = json.loads(out.read_text())
    assert seen["argv0"] == str(script) and seen["argv"] == ["report", str(out)]
    assert seen["path0"] == str(script.parent)  # its folder first on the import path, as ``python PATH`` puts it
    assert seen["cwd"] == str(tmp_path) and seen["session"] == proc.pid


def test_a_child_inherits_the_descriptors_it_is_given_at_the_numbers_asked(zygote, tmp_path):
    read_end, write_end = os.pipe()
    log = open(tmp_path / "child.log", "w")
    with log:
        proc = zygote.spawn(CHILD, ["write", "3"], dict(os.environ), str(tmp_path), log.fileno(), log.fileno(),
                            fds={3: write_end})
    os.close(write_end)
    assert proc.wait(timeout=30) == 0
    assert os.read(read_end, 100) == b"through the inherited descriptor"
    os.close(read_end)


def test_exit_codes_signals_and_waits_answer_like_popen(zygote, tmp_path):
    assert fork(zygote, tmp_path, "exit", "3").wait(timeout=30) == 3
    sleeper = fork(zygote, tmp_path, "sleep")
    assert wait_for(lambda: "sleeping" in (tmp_path / "child.log").read_text())
    assert sleeper.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        sleeper.wait(timeout=0.1)
    os.killpg(sleeper.pid, signal.SIGKILL)
    assert sleeper.wait(timeout=30) == -signal.SIGKILL and sleeper.returncode == -signal.SIGKILL


def test_a_child_ends_as_an_interpreter_does(zygote, tmp_path):
    """Non-daemon threads are waited for, then ``atexit`` handlers run (a topology's teardown is one); Ctrl-C raises
    KeyboardInterrupt, and uncaught it ends the process by SIGINT."""
    assert fork(zygote, tmp_path, "atexit").wait(timeout=30) == 0
    assert (tmp_path / "child.log").read_text() == "thread finished\natexit handler ran\n"
    sleeper = fork(zygote, tmp_path, "sleep")
    assert wait_for(lambda: "sleeping" in (tmp_path / "child.log").read_text())
    sleeper.send_signal(signal.SIGINT)
    assert sleeper.wait(timeout=30) == -signal.SIGINT
    assert "KeyboardInterrupt" in (tmp_path / "child.log").read_text()


def test_a_child_that_raises_exits_1_with_its_traceback_in_its_log(zygote, tmp_path):
    assert fork(zygote, tmp_path, "raise").wait(timeout=30) == 1
    assert "ValueError: the child's own error" in (tmp_path / "child.log").read_text()


def test_the_zygote_ends_when_its_controller_dies_and_its_children_live_on(tmp_path):
    holder = tmp_path / "holder.py"
    holder.write_text(textwrap.dedent(f"""
        import json, os, sys, time
        from harness.network.zygote import Zygote
        z = Zygote(["json"], {{**os.environ}})
        log = open({str(tmp_path / 'child.log')!r}, "w")
        child = z.spawn({CHILD!r}, ["sleep"], dict(os.environ), {str(tmp_path)!r}, log.fileno(), log.fileno())
        print(json.dumps({{"zygote": z.proc.pid, "child": child.pid}}), flush=True)
        time.sleep(600)
    """))
    proc = subprocess.Popen([sys.executable, str(holder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    pids = json.loads(proc.stdout.readline())
    try:
        proc.kill()  # the controller killed outright: no handler runs
        proc.wait()
        assert wait_for(lambda: not Path(f"/proc/{pids['zygote']}").exists() or
                        Path(f"/proc/{pids['zygote']}/stat").read_text().split()[2] == "Z")
        assert Path(f"/proc/{pids['child']}").exists()  # its controller's topology would kill it; nobody else does
    finally:
        os.killpg(pids["child"], signal.SIGKILL)


def test_a_closed_zygote_refuses_to_fork_in_one_line(tmp_path):
    z = Zygote(["json"], dict(os.environ))
    z.close()
    with pytest.raises(ZygoteError, match="the zygote"):
        fork(z, tmp_path, "exit", "0")


@needs_root
def test_a_forked_process_runs_in_its_endpoints_namespace_and_goes_with_the_topology(zygote, tmp_path):
    out = tmp_path / "seen.json"
    with pair(100.0) as topo:
        with open(tmp_path / "child.log", "w") as log:
            proc = topo.fork("server", zygote, CHILD, ["report", str(out)], dict(os.environ), str(tmp_path), log)
            sleeper = topo.fork("device", zygote, CHILD, ["sleep"], dict(os.environ), str(tmp_path), log)
        assert proc.wait(timeout=30) == 0
        interfaces = json.loads(out.read_text())["interfaces"]
        assert topo._link("device", "server").ifname["server"] in interfaces
        assert topo._link("device", "server").ifname["device"] not in interfaces
        assert sleeper.poll() is None
    assert sleeper.wait(timeout=10) == -signal.SIGTERM


@needs_root
def test_a_forked_critical_process_that_dies_takes_the_topology_down(zygote, tmp_path):
    with pair(100.0) as topo:
        with open(tmp_path / "child.log", "w") as log:
            victim = topo.fork("server", zygote, CHILD, ["sleep"], dict(os.environ), str(tmp_path), log)
        time.sleep(0.2)
        assert topo.failure is None
        os.kill(victim.pid, signal.SIGKILL)
        assert wait_for(lambda: topo.failure is not None)
        assert "SIGKILL" in topo.failure and f"process {victim.pid}" in topo.failure
