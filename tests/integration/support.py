"""Helpers for the integration tests: private network namespaces and ustack processes.

Every packet of these tests stays inside namespaces made here (``ustk-<random>``); the
processes started in them are remembered and ended by PID in teardown.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ustack.netns import Namespace, stop_process  # noqa: F401  (the tests' too)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NSCLIENT = HERE / "nsclient.py"

USTACK_ADDR = "10.77.0.2"
KERNEL_ADDR = "10.77.0.1"
READY_MARK = "ustack: serving"
# The command that runs ustack: the interpreter running the tests (the venv's), unless
# USTACK_TEST_CMD names another (e.g. "/usr/local/bin/ustack" to test an installed copy).
USTACK = shlex.split(os.environ.get("USTACK_TEST_CMD", "")) or [sys.executable, "-m", "ustack"]


def require_tools(*names: str) -> None:
    """Skip unless every named command is on PATH; fail instead under USTACK_REQUIRE_NETNS=1
    (CI, where scripts/test.sh has installed them)."""
    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return
    reason = f"missing command(s): {', '.join(missing)}"
    if os.environ.get("USTACK_REQUIRE_NETNS", "") not in ("", "0"):
        pytest.fail(f"{reason} (USTACK_REQUIRE_NETNS=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def pattern_sha256(n: int) -> str:
    """SHA-256 of what ``GET /bytes/n`` must return: byte i is ``i % 256``."""
    block = bytes(range(256)) * 4096  # 1 MiB, a whole number of 256-byte periods
    h = hashlib.sha256()
    full, rest = divmod(n, len(block))
    for _ in range(full):
        h.update(block)
    h.update(block[:rest])
    return h.hexdigest()


def curl_bytes(ns: Netns, dst: Path, n: int, max_time: float = 100) -> None:
    """GET /bytes/N from ustack's HTTP with curl into `dst`; checks status, size, SHA-256."""
    done = ns.run(
        ["curl", "-sS", "--fail", "--max-time", str(max_time), "-o", str(dst),
         "-w", "%{http_code} %{size_download}", f"http://{USTACK_ADDR}/bytes/{n}"],
        timeout=max_time + 20,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == f"200 {n}"
    assert file_sha256(dst) == pattern_sha256(n)


def random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their SHA-256."""
    data = os.urandom(size)
    path.write_bytes(data)
    return sha256(data)


def nc_echo(ns: Namespace, path: Path, size: int, timeout: float = 60) -> None:
    """Send ``size`` random bytes (written to ``path``) through ustack's echo service
    with ``nc`` in ``ns``, and check what comes back by SHA-256."""
    want = random_file(path, size)
    with path.open("rb") as stdin:
        done = ns.run(["nc", "-N", USTACK_ADDR, "7"], stdin=stdin, timeout=timeout)
    assert done.returncode == 0, done.stderr.decode()
    assert len(done.stdout) == size and sha256(done.stdout) == want


def readline(proc: subprocess.Popen, timeout: float, stream: str = "stdout") -> bytes:
    """The next line of ``proc.stdout`` (or ``stderr``), waiting at most ``timeout`` s."""
    pipe = getattr(proc, stream)
    ready, _, _ = select.select([pipe], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output from {proc.args} within {timeout} s")
    return pipe.readline()


class Netns(Namespace):
    """The package's private namespace (`ustack.netns.Namespace`, ``ustk-<random>``) with
    the tests' client (`nsclient.py`) at hand."""

    def __init__(self, prefix: str = "ustk") -> None:
        super().__init__(prefix, timeout=10)

    def client(self, *args: str, timeout: float, **kw) -> subprocess.CompletedProcess:
        """Run tests/integration/nsclient.py inside the namespace."""
        return self.run([sys.executable, str(NSCLIENT), *args], timeout=timeout, **kw)

    def client_json(self, *args: str, timeout: float) -> dict:
        done = self.client(*args, timeout=timeout)
        assert done.returncode == 0, (
            f"nsclient {' '.join(args)} exited {done.returncode}: {done.stderr.decode()!r}"
        )
        return json.loads(done.stdout)


class UstackServer:
    """``ustack serve`` running in a namespace, with its stderr in a file."""

    def __init__(
        self, ns: Netns, services: Sequence[str], log: Path, args=(), prefix=()
    ) -> None:
        self.ns = ns
        self.log = log
        self._log_file = log.open("wb")
        self.cmd = [*prefix, *USTACK, "serve", *args, *services]
        self.proc = ns.popen(self.cmd, stdout=subprocess.DEVNULL, stderr=self._log_file)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_MARK in self.stderr():
                return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{' '.join(self.cmd)} exited {self.proc.returncode} before it was "
                    f"ready; stderr:\n{self.stderr()}"
                )
            time.sleep(0.05)
        raise AssertionError(
            f"{' '.join(self.cmd)} printed no {READY_MARK!r} line within {timeout} s; "
            f"stderr:\n{self.stderr()}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 3.0) -> tuple[int | None, float]:
        """Send ``sig``; return (exit status or None if still running, seconds taken)."""
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                return None, time.monotonic() - start
        return self.proc.returncode, time.monotonic() - start

    def close(self) -> None:
        self._log_file.close()


class Hop:
    """A forwarding hop: clients in their own namespace reach ustack (and a kernel server)
    through a router namespace, as across a real network.

        client ns  c0 10.0.1.2 ──veth── r0 10.0.1.1  router ns (ip_forward=1)
                                                   ustack0 10.77.0.1/24 ── ustack 10.77.0.2

    The router holds ustack's TUN and any kernel server the test compares with (on
    ``ROUTER_ADDR``); the client's default route is the router. ``shape()`` puts a ``tc``
    qdisc on the router's side towards the client.
    """

    CLIENT_ADDR = "10.0.1.2"
    ROUTER_ADDR = "10.0.1.1"

    def __init__(self, client: Netns, router: Netns) -> None:
        self.client = client
        self.router = router
        # Made inside the client namespace, its peer moved straight to the router's:
        # the veth pair never exists in the namespace the tests run in.
        client.ip("link", "add", "c0", "type", "veth", "peer", "name", "r0",
                  "netns", router.name)
        client.ip("addr", "add", f"{self.CLIENT_ADDR}/24", "dev", "c0")
        client.ip("link", "set", "c0", "up")
        client.ip("route", "add", "default", "via", self.ROUTER_ADDR)
        router.ip("addr", "add", f"{self.ROUTER_ADDR}/24", "dev", "r0")
        router.ip("link", "set", "r0", "up")
        done = router.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], timeout=10)
        assert done.returncode == 0, done.stderr.decode()

    def shape(self, *qdisc: str) -> None:
        """``tc qdisc add dev r0 root QDISC...`` (the router's side towards the client)."""
        done = self.router.run(["tc", "qdisc", "add", "dev", "r0", "root", *qdisc], timeout=10)
        assert done.returncode == 0, done.stderr.decode()


def kernel_tcp_counters(ns: Netns) -> dict[str, int]:
    """The kernel's TCP counters in ``ns``, named as nstat names them (TcpRetransSegs,
    TcpExtListenOverflows, ...)."""
    done = ns.run(["cat", "/proc/net/snmp", "/proc/net/netstat"], timeout=10)
    lines = done.stdout.decode().splitlines()
    table: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        prefix = names.split(":", 1)[0]
        if prefix in ("Tcp", "TcpExt"):
            for name, value in zip(names.split()[1:], values.split()[1:], strict=True):
                table[f"{prefix}{name}"] = int(value)
    return table
