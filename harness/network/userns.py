"""A user namespace of the harness's own, so that an ordinary user builds namespaces, veths and kernel qdiscs.

Where this process cannot make a network namespace the way the harness does (``create_namespace``: unshare the
network, bind-mount it under the namespace directory), :func:`enter_if_needed` moves it into a fresh user namespace
(its uid and gid mapped to 0) with a private mount namespace, and mounts a tmpfs of its own as the namespace
directory. It keeps the host's network namespace: MLflow servers, Ray and real boards stay reachable, and the
endpoints' namespaces it makes later are owned by its user namespace, where it is root. They vanish with it.

The kernel lets only a single-threaded process enter a user namespace, so entry points call this before anything
starts a thread (torch, MLflow). Descendants (workers, a local Ray cluster) inherit both namespaces and learn the
namespace directory from the environment; a process that could not enter leaves one line saying why
(:func:`refusal`).
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import os
import re
import tempfile

from pyroute2 import netns

from harness.network.namespaces import DEFAULT_PREFIX, NETNS_DIR_ENV, create_namespace, use_namespace_directory

REFUSAL_ENV = "SPLITBENCH_USERNS_REFUSED"  # the one line, for descendants of a process whose entry was refused
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 1 << 18
MNT_DETACH = 2
MAX_USER_NAMESPACES = "/proc/sys/user/max_user_namespaces"

_libc = ctypes.CDLL(None, use_errno=True)
_refusal: str | None = None


def refusal() -> str | None:
    """Why this process (or the one that started it) could not enter a user namespace; None if it did not try."""
    return _refusal or os.environ.get(REFUSAL_ENV)


def in_initial_user_namespace() -> bool:
    """True in the host's own user namespace, the only one that maps every uid onto itself."""
    with open("/proc/self/uid_map") as f:
        return f.read().split() == ["0", "0", "4294967295"]


def thread_count() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"^Threads:\s+(\d+)", f.read(), re.M).group(1))


def enter_if_needed() -> None:
    """Enter a user namespace of the harness's own where this process cannot make network namespaces as it is.

    Call it once, first thing in an entry point, while the process is single-threaded. Does nothing where an
    ancestor already decided (its environment says so) or where this process can make namespaces (root, or a user
    namespace the user entered). A refusal is kept as one line (:func:`refusal`); the run then shapes in userspace.
    """
    global _refusal
    if NETNS_DIR_ENV in os.environ or REFUSAL_ENV in os.environ:
        return
    if thread_count() > 1:  # too late to enter; forking to probe would be unsafe too: the backend probe decides
        return
    if make_namespace_problem() is None:
        return
    try:
        _enter()
    except OSError as err:
        _refusal = _why_refused(err)
    else:
        problem = make_namespace_problem()
        if problem is not None:
            _refusal = f"a user namespace was entered, but no network namespace can be made in it: {problem}"
    if _refusal is not None:
        os.environ[REFUSAL_ENV] = _refusal


def make_namespace_problem() -> str | None:
    """None if this process can make a network namespace the way the harness does, else why not. Tried in a forked
    child, so that this process stays single-threaded and untouched; only call it while single-threaded."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        code = 0
        try:
            scratch = f"{DEFAULT_PREFIX}{os.getpid()}-userns-probe"
            create_namespace(scratch)
            netns.remove(scratch)
        except BaseException as err:  # noqa: BLE001 - told to the parent, whatever it is
            os.write(write_end, str(err).encode(errors="replace")[:1000])
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(child, 0)
    return None if os.waitstatus_to_exitcode(status) == 0 else message or f"probe exited with status {status}"


def _enter() -> None:
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
    use_namespace_directory(directory)
    os.environ[NETNS_DIR_ENV] = directory
    atexit.register(_remove_directory, directory, os.getpid())


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
    elif err.errno == errno.EINVAL and thread_count() > 1:
        why = "the process already runs threads; the entry point must enter the user namespace before it starts any"
    else:
        why = f"entering one failed: {err}"
    return f"cannot make network namespaces without root: {why}"
