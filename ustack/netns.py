"""Private network namespaces, the one helper the plugin, the tests, the benchmarks and
the demo share, in two forms:

- for one thread of this process (the pytest plugin): `unshare_net` and `setns` by
  system call (Python 3.11 has neither `os.unshare` nor `os.setns`, so they are called
  through libc; namespaces belong to threads in Linux: these calls move only the calling
  thread and the threads it starts afterwards);
- for processes (the integration tests, `tools/bench.py`, `tools/lossbench.py`):
  `Namespace`, a named namespace (`ip netns add`) with its loopback up, in which
  commands run (`ip netns exec`) and which ends them and is deleted on `close`.

Nothing here touches the initial namespace: every address and device lives in the
namespace made for it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import signal
import socket
import struct
import subprocess
from collections.abc import Sequence
from typing import Any

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


class NamespaceError(RuntimeError):
    """`ip netns add` (or a setup command) failed: the message is iproute2's."""


def stop_process(proc: subprocess.Popen[Any], grace: float = 3.0) -> int | None:
    """SIGTERM, then SIGKILL after `grace` seconds; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


class Namespace:
    """A named network namespace for processes: `ip netns add <prefix>-<random>`, its
    loopback up. Commands run inside it (`run`, `popen`: `ip netns exec`); `ip` configures
    it (`ip -n`). `close` ends the processes `popen` started (by PID: SIGTERM, then
    SIGKILL) and deletes the namespace, with everything in it (devices, addresses).
    A context manager; `close` may be called more than once."""

    close_error: str | None = None  # why the namespace could not be deleted, if so

    def __init__(self, prefix: str = "ustack", timeout: float = 20.0) -> None:
        self.name = f"{prefix}-{secrets.token_hex(4)}"
        self.timeout = timeout  # for each `ip` command
        self.procs: list[subprocess.Popen[Any]] = []
        self._created = False
        done = subprocess.run(["ip", "netns", "add", self.name], capture_output=True,
                              text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise NamespaceError(f"ip netns add {self.name}: {done.stderr.strip()}")
        self._created = True
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        """`cmd` as a command line that runs inside the namespace."""
        return ["ip", "netns", "exec", self.name, *map(str, cmd)]

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`ip -n <name> ARGS`; with `check`, NamespaceError when it fails."""
        done = subprocess.run(["ip", "-n", self.name, *args], capture_output=True, text=True,
                              timeout=self.timeout, check=False)
        if check and done.returncode != 0:
            raise NamespaceError(f"ip {' '.join(args)}: {done.stderr.strip()}")
        return done

    def run(self, cmd: Sequence[str], *, timeout: float,
            **kw: Any) -> subprocess.CompletedProcess[Any]:
        """`subprocess.run` inside the namespace; output captured and no stdin unless
        the caller says otherwise."""
        if "stdout" not in kw and "capture_output" not in kw:
            kw["stdout"] = subprocess.PIPE
        if "stderr" not in kw and "capture_output" not in kw:
            kw["stderr"] = subprocess.PIPE
        if "stdin" not in kw and "input" not in kw:
            kw["stdin"] = subprocess.DEVNULL
        return subprocess.run(self.wrap(cmd), timeout=timeout, **kw)

    def popen(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a process inside the namespace; `close` ends it."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.wrap(cmd), **kw)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """End the processes and delete the namespace. A failure to delete it does not
        raise (a caller cleaning up several must get to all of them): it is kept in
        `close_error`, and a later `close` tries again."""
        for proc in self.procs:
            stop_process(proc)
        for proc in self.procs:
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    stream.close()
        self.procs.clear()
        if self._created:
            try:
                done = subprocess.run(["ip", "netns", "del", self.name], capture_output=True,
                                      text=True, timeout=self.timeout, check=False)
            except subprocess.TimeoutExpired:
                self.close_error = f"ip netns del {self.name}: timed out"
                return
            if done.returncode != 0:
                self.close_error = f"ip netns del {self.name}: {done.stderr.strip()}"
                return
            self._created = False
            self.close_error = None
