"""Network namespaces for one thread: `unshare(CLONE_NEWNET)` and `setns` by system call.

Python 3.11 has neither `os.unshare` nor `os.setns`, so they are called through libc.
Namespaces belong to threads in Linux: these calls move only the calling thread (and
the threads it starts afterwards, which inherit it).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct

CLONE_NEWNET = 0x40000000

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def current_fd() -> int:
    """An fd (O_RDONLY|O_CLOEXEC) on the calling thread's network namespace."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def current_id() -> str:
    """The calling thread's network namespace, e.g. 'net:[4026531840]'."""
    return os.readlink("/proc/thread-self/ns/net")


def unshare_net() -> None:
    """Move the calling thread into a new, empty network namespace."""
    _check(_lib().unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace `fd` refers to."""
    _check(_lib().setns(fd, CLONE_NEWNET), "setns(CLONE_NEWNET)")


def link_up(name: str = "lo") -> None:
    """Bring interface `name` of the calling thread's namespace up (SIOCSIFFLAGS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | _IFF_UP))


def can_unshare_error(exc: OSError) -> bool:
    """True when `exc` means 'not allowed' (seccomp, no CAP_SYS_ADMIN), not a bug."""
    return exc.errno in (errno.EPERM, errno.EACCES, errno.ENOSYS, errno.EINVAL)
