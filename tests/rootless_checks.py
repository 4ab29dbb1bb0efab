"""What a live rootless process must show, checked inside one, under a user namespace without privileges over the
host's network (``unshare --user --map-root-user``). It enters the harness's own user namespace first, as ``run.py``
does, then prints one JSON line:

- ``python -m tests.rootless_checks probe CASES_JSON``: its privilege and backends, the pre-run goodput probe for
  each (backend, Mbit/s, TDF) case, and what a topology left after an exception inside its block;
- ``python -m tests.rootless_checks hold``: holds a topology with a process spawned in it and says what identifies
  them (pids, namespace paths in its own mount namespace and their inodes), until a signal ends it.
"""

from harness.network.userns import enter_if_needed

enter_if_needed()  # while single-threaded: before torch is imported below

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

from pyroute2 import netns  # noqa: E402

from harness.controller.probe import probe_link  # noqa: E402
from harness.network import namespaces, shaping  # noqa: E402
from harness.network.link import LinkSpec  # noqa: E402
from harness.network.topology import Topology  # noqa: E402

PREFIX = "sbrl"


def pair(mbps: float, **kwargs: object) -> Topology:
    return Topology(["device", "server"], [("device", "server", LinkSpec(mbps))], prefix=PREFIX, **kwargs)


def probes(cases: list[list]) -> list[dict]:
    found = []
    for backend, mbps, tdf in cases:
        with pair(mbps, backend=backend, tdf=tdf) as topo:
            found.append({"backend": backend, "mbps": mbps, "tdf": tdf, "privilege": topo.record()["privilege"],
                          "measured": probe_link(topo, "device", "server")})
    return found


def after_an_exception() -> dict:
    try:
        with pair(100.0) as topo:
            names = [topo.netns(e) for e in topo.endpoints]
            sleeper = topo.spawn("device", ["sleep", "60"])
            during = sorted(set(names) & set(netns.listnetns()))
            raise ZeroDivisionError("inside the block")
    except ZeroDivisionError:
        pass
    return {"during": during, "after": sorted(set(names) & set(netns.listnetns())),
            "leftovers": namespaces.leftovers(PREFIX), "sleeper_returncode": sleeper.poll()}


def hold() -> None:
    with pair(50.0) as topo:
        sleeper = topo.spawn("device", ["sleep", "600"])
        paths = [namespaces.namespace_path(topo.netns(e)) for e in topo.endpoints]
        print(json.dumps({"privilege": shaping.privilege(), "child": sleeper.pid, "netns_paths": paths,
                          "netns_inodes": [os.stat(path).st_ino for path in paths],
                          "userns_inode": os.stat("/proc/self/ns/user").st_ino,
                          "namespace_directory": netns.NETNS_RUN_DIR}), flush=True)
        while True:
            signal.pause()


def main() -> None:
    if sys.argv[1] == "hold":
        hold()
        return
    cases = json.loads(sys.argv[2])
    print(json.dumps({"privilege": shaping.privilege(), "backends": list(shaping.available_backends()),
                      "namespace_directory": netns.NETNS_RUN_DIR, "probes": probes(cases),
                      "exception": after_an_exception()}))


if __name__ == "__main__":
    main()
