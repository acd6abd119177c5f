"""A private network without root: a new user namespace in which this process is root
(its own uid mapped to 0, as `unshare -r` does), with a new network namespace owned by
it. Inside, the process holds CAP_NET_ADMIN over that network only: it may create a TUN
device there and configure it, nothing on the host's network. What `ustack sandbox` and
the pytest plugin's rootless mode stand on.

Two conditions of the system decide whether this works, and `problem` says which one
fails and how to allow it: unprivileged user namespaces (refused by
`user.max_user_namespaces=0`, Debian's `kernel.unprivileged_userns_clone=0`, Ubuntu's
`kernel.apparmor_restrict_unprivileged_userns=1`, or a container's seccomp profile), and
a `/dev/net/tun` an ordinary user may open (mode 0666, as distributions ship it).

A process cannot go back: once in a new user namespace it may not enter the host's
network namespace again (that needs CAP_SYS_ADMIN over the host's). So this is done in a
process of its own (the sandbox's, a forked test's); and `unshare(CLONE_NEWUSER)` needs a
single-threaded process.
"""

from __future__ import annotations

import ctypes
import errno
import os

from ustack import netns

CLONE_NEWUSER = 0x10000000
TUN_PATH = "/dev/net/tun"

_SYSCTLS = (
    # (file, the value that refuses, the sentence)
    ("/proc/sys/user/max_user_namespaces", "0",
     "user namespaces are disabled (user.max_user_namespaces=0); root can allow them: "
     "sysctl -w user.max_user_namespaces=10000"),
    ("/proc/sys/kernel/unprivileged_userns_clone", "0",
     "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0); "
     "root can allow them: sysctl -w kernel.unprivileged_userns_clone=1"),
    ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
     "AppArmor restricts unprivileged user namespaces "
     "(kernel.apparmor_restrict_unprivileged_userns=1); root can allow them: sysctl -w "
     "kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile for python "
     "with 'userns,'"),
)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def tun_problem() -> str | None:
    """Why this user cannot open /dev/net/tun, or None."""
    if not os.path.exists(TUN_PATH):
        return f"{TUN_PATH} is missing: load the tun module (modprobe tun)"
    if not os.access(TUN_PATH, os.R_OK | os.W_OK):
        mode = oct(os.stat(TUN_PATH).st_mode & 0o777)[2:]
        return (f"{TUN_PATH} is mode {mode}, which an ordinary user cannot open; root can "
                f"make it as distributions ship it: chmod 0666 {TUN_PATH}")
    return None


def problem(exc: OSError | None = None) -> str:
    """One sentence: why no user namespace could be made (after `exc` from unshare, if
    given), naming the setting that refuses it and how to allow it."""
    for path, refusing, sentence in _SYSCTLS:
        if _read(path) == refusing:
            return sentence
    if exc is not None and exc.errno == errno.ENOSPC:
        return ("the limit of user namespaces is reached (user.max_user_namespaces); "
                "root can raise it: sysctl -w user.max_user_namespaces=10000")
    detail = f" ({exc.strerror})" if exc is not None and exc.strerror else ""
    return ("unshare(CLONE_NEWUSER) was refused" + detail + ": a seccomp filter or security "
            "module forbids user namespaces here (a container's default profile does: run "
            "it with --security-opt seccomp=unconfined, or run as root)")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def enter() -> None:
    """Move this (single-threaded) process into a new user namespace, as root there
    (this process's uid and gid mapped to 0), and a new network namespace owned by it,
    its loopback up. OSError as unshare(2) gives it (`problem` says why)."""
    uid, gid = os.geteuid(), os.getegid()
    lib = ctypes.CDLL(None, use_errno=True)
    if lib.unshare(CLONE_NEWUSER | netns.CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    # user_namespaces(7): gid_map may be written by an unprivileged process only after
    # setgroups is denied.
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")
    netns.link_up("lo")


def enter_net_as_root() -> None:
    """As root: only a new network namespace (no user namespace is needed), lo up."""
    netns.unshare_net()
    netns.link_up("lo")
