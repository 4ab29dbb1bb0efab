"""A user namespace of the harness's own, so that an ordinary user builds namespaces, veths and kernel qdiscs.

Where this process cannot make a network namespace the way the harness does (``create_namespace``: unshare the
network, bind-mount it under the namespace directory), :func:`enter_if_needed` moves it into a fresh user namespace
(its uid and gid mapped to 0) with a private mount namespace, and mounts a tmpfs of its own as the namespace
directory. It keeps the host's network namespace: MLflow servers, Ray and real boards stay reachable, and the
endpoints' namespaces it makes later are owned by its user namespace, where it is root. They vanish with it.

The kernel lets only a single-threaded process enter a user namespace, so entry points call this before anything
starts a thread (torch, MLflow). The decision is handed down in the environment (:data:`DECISION_ENV`), valid only
on the same host in the same mount namespace: workers, a local Ray cluster or a re-executed job adopt it, a SLURM
job that inherited its login node's environment decides afresh. A process started some other way (a submitit job:
torch is imported before the job's function runs) re-executes itself through ``python -m harness.network.userns``
(:func:`reexec_if_undecided`). A refusal is one line saying why and which setting allows user namespaces
(:func:`refusal`); the run then shapes in userspace.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import json
import os
import re
import sys
import tempfile
from typing import Sequence

from pyroute2 import netns

from harness.network.namespaces import DEFAULT_PREFIX, create_namespace, use_namespace_directory

DECISION_ENV = "SPLITBENCH_USERNS"  # JSON: host, mount namespace, namespace directory or None, refusal or None
REEXEC_ENV = "SPLITBENCH_USERNS_REEXEC"  # the pid re-executed once: never again, whatever its environment says
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 1 << 18
MNT_DETACH = 2
MAX_USER_NAMESPACES = "/proc/sys/user/max_user_namespaces"

_libc = ctypes.CDLL(None, use_errno=True)
_refusal: str | None = None
_adopted = False


def refusal() -> str | None:
    """Why this process (or the one that decided for it) could not enter a user namespace; None otherwise."""
    return _refusal


def in_initial_user_namespace() -> bool:
    """True in the host's own user namespace, the only one that maps every uid onto itself."""
    with open("/proc/self/uid_map") as f:
        return f.read().split() == ["0", "0", "4294967295"]


def thread_count() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"^Threads:\s+(\d+)", f.read(), re.M).group(1))


def enter_if_needed() -> None:
    """Enter a user namespace of the harness's own where this process cannot make network namespaces as it is.

    Call it first thing in an entry point, while the process is single-threaded. Does nothing where the decision
    was already made for this process (:func:`adopt`) or where it can make namespaces as it is (root, or a user
    namespace the user entered), or once it runs threads (then the backend probe alone decides).
    """
    global _refusal
    if adopt() or thread_count() > 1:
        return
    directory = None
    if can_make_namespaces() is not None:
        # Tried whole in a child first: a user namespace entered but not set up (AppArmor lets Ubuntu's users make
        # one without capabilities in it) could not be left, and its unmapped uid could not even create a file.
        problem = can_make_namespaces(in_own_user_namespace=True)
        if problem is None:
            directory = _enter()
        else:
            _refusal = _why_refused(problem)
    os.environ[DECISION_ENV] = json.dumps({**_here(), "directory": directory, "refusal": _refusal})
    adopt()


def adopt() -> bool:
    """Take the decision handed down in the environment where it was made on this host in this mount namespace;
    False where there is none to take (none, or another host's or mount namespace's)."""
    global _refusal, _adopted
    if _adopted:
        return True
    try:
        decision = json.loads(os.environ.get(DECISION_ENV, "null"))
    except ValueError:
        return False
    if not isinstance(decision, dict) or {k: decision.get(k) for k in _here()} != _here():
        return False
    _adopted, _refusal = True, decision.get("refusal")
    directory = decision.get("directory")
    if directory:
        use_namespace_directory(directory)
        if directory == namespace_directory(os.getpid()):  # entered by this pid before an exec: ours to remove
            atexit.register(_remove_directory, directory, os.getpid())
    return True


def reexec_if_undecided() -> None:
    """In a process no entry point decided for and that cannot make namespaces as it is (a submitit job, whose
    Python imported torch before the job's function ran): run its command line again, through
    ``python -m harness.network.userns``, which decides while single-threaded. Call it before the job does
    anything; returns where there is nothing to do."""
    if adopt() or os.environ.get(REEXEC_ENV) == str(os.getpid()) or can_make_namespaces() is None:
        return
    os.environ[REEXEC_ENV] = str(os.getpid())  # exec keeps the pid
    os.execv(sys.executable, [sys.executable, "-m", "harness.network.userns", *sys.orig_argv])


def _here() -> dict[str, object]:
    """Where a decision holds: this host, this mount namespace (a private one is shared only with descendants)."""
    return {"host": os.uname().nodename, "mount_namespace": os.stat("/proc/self/ns/mnt").st_ino}


def can_make_namespaces(in_own_user_namespace: bool = False) -> OSError | None:
    """None if this process can make a network namespace the way the harness does (or can once it entered a user
    namespace of its own), else why not. Tried in a forked child while single-threaded (a thread, even joined, can
    keep the process from entering a user namespace for a moment); in this process, with the helper thread
    ``create_namespace`` uses, once it runs threads anyway."""
    if thread_count() > 1:
        if in_own_user_namespace:
            raise RuntimeError("a threaded process cannot try a user namespace: fork only while single-threaded")
        try:
            _scratch_namespace()
        except OSError as err:
            return err
        return None
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        code = 0
        try:
            if in_own_user_namespace:
                directory = _enter()
                use_namespace_directory(directory)
                try:
                    _scratch_namespace()
                finally:
                    _remove_directory(directory, os.getpid())  # its mount dies with the child, the folder would not
            else:
                _scratch_namespace()
        except BaseException as err:  # noqa: BLE001 - told to the parent, whatever it is
            number = err.errno if isinstance(err, OSError) and err.errno else errno.EIO
            os.write(write_end, json.dumps([number, str(err)]).encode()[:4000])
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        told = pipe.read()
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    number, message = json.loads(told) if told else (errno.EIO, f"the trial exited with status {status}")
    return OSError(number, message)


def _scratch_namespace() -> None:
    scratch = f"{DEFAULT_PREFIX}{os.getpid()}-userns-probe"
    create_namespace(scratch)
    netns.remove(scratch)


def _enter() -> str:
    """Enter the user and mount namespaces; returns the namespace directory mounted in them."""
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(CLONE_NEWUSER | CLONE_NEWNS)")
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"0 {uid} 1"),
                       ("/proc/self/gid_map", f"0 {gid} 1")):
        with open(path, "w") as f:  # setgroups first: an unprivileged process may map its gid only then
            f.write(text)
    # Private: nothing mounted here propagates back to the mount namespace it was copied from.
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    directory = namespace_directory(os.getpid())
    os.makedirs(directory, mode=0o700, exist_ok=True)  # a killed run with this pid may have left it, empty
    _check(_libc.mount(b"tmpfs", directory.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       b"mode=0755,size=1m"), f"mounting a tmpfs on {directory}")
    return directory  # used, and removed at exit, once adopted


def namespace_directory(owner: int) -> str:
    """Where a rootless process ``owner`` binds its namespaces: a tmpfs seen only in its mount namespace, mounted
    on an empty folder of the host's temporary directory (its name carries the owner's pid, for stale cleanup)."""
    return os.path.join(tempfile.gettempdir(), f"{DEFAULT_PREFIX}{owner}-netns")


def _remove_directory(directory: str, owner: int) -> None:
    if os.getpid() != owner:
        return  # a forked child owns nothing
    _libc.umount2(directory.encode(), MNT_DETACH)
    try:
        os.rmdir(directory)
    except OSError:
        pass  # stale cleanup removes it later


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _why_refused(err: OSError) -> str:
    """One line: why no user namespace, and which setting allows one."""
    if err.errno == errno.ENOSPC:
        try:
            with open(MAX_USER_NAMESPACES) as f:
                limit = f.read().strip()
        except OSError:
            limit = "?"
        why = (f"the limit on user namespaces is reached (user.max_user_namespaces = {limit}); a larger "
               "user.max_user_namespaces allows them")
    elif err.errno == errno.EPERM:
        why = ("unprivileged user namespaces are refused here; kernel.apparmor_restrict_unprivileged_userns=0 "
               "(Ubuntu), kernel.unprivileged_userns_clone=1 (older Debian) or a container seccomp profile that "
               "allows unshare allows them")
    else:
        why = f"making one failed: {err.strerror or err}"
    return f"cannot make network namespaces without root: {why}"


def main(argv: Sequence[str]) -> None:
    """``python -m harness.network.userns COMMAND [ARG...]``: decide (and enter where needed), then become COMMAND,
    which inherits the decision: a job re-executed by :func:`reexec_if_undecided`, or a Ray node
    (``python -m harness.network.userns ray start --head --block``) whose workers run jobs."""
    if not argv:
        sys.exit("usage: python -m harness.network.userns COMMAND [ARG...]")
    enter_if_needed()
    os.execvp(argv[0], list(argv))


adopt()  # a descendant of a process that decided (a worker's parent, a Ray node, an exec): its namespace directory

if __name__ == "__main__":
    main(sys.argv[1:])
