"""The two servers: ustack (`python -m ustack serve` over the TUN) and the same service
protocols on kernel sockets (uvloop), each a child process with its ready line."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from benchkit.common import BACKLOG, READY_KERNEL, REPO, SETUP_TIMEOUT, STOP_TIMEOUT, BenchError

PR_SET_PDEATHSIG = 1  # linux/prctl.h

# --------------------------------------------------------------------------------------
# Kernel-socket server: the same service protocols as ustack, on uvloop.
# --------------------------------------------------------------------------------------


def kernel_server_main(host: str, spec: str, workers: int = 1) -> int:
    """The same services on kernel sockets (uvloop). With `workers` > 1, as many
    processes share each port (SO_REUSEPORT: the kernel spreads connections over them),
    the kernel's counterpart of `ustack serve --workers N`; this one stops the others."""
    import asyncio

    import uvloop

    from ustack.services import protocol_factory

    services = []
    for item in spec.split(","):
        name, _, port = item.partition(":")
        services.append((name, int(port)))

    async def serve(ready: Callable[[], object]) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        servers = [
            await loop.create_server(protocol_factory(name), host, port, reuse_address=True,
                                     reuse_port=workers > 1, backlog=BACKLOG)
            for name, port in services
        ]
        ready()
        await stop.wait()
        for srv in servers:
            srv.close()

    children = []
    ready_r, ready_w = os.pipe()
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # Never an orphan listener on the port when this parent is killed.
                ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
                code = uvloop.run(serve(lambda: os.write(ready_w, b"r")))
            finally:
                os._exit(code or 0)
        children.append(pid)
    for _ in children:  # each child listens before the ready line
        os.read(ready_r, 1)
    try:
        uvloop.run(serve(lambda: print(f"{READY_KERNEL} {spec} on {host}", file=sys.stderr,
                                       flush=True)))
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
    return 0


# --------------------------------------------------------------------------------------
# Orchestration: namespace, servers, scenarios, table.
# --------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def exit_text(rc: int | None) -> str:
    if rc is None:
        return "not exited"
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-rc).name}"
    return f"exited with status {rc}"


STOPPED_PREFIX = "ustack: stopped; "  # ustack serve's last line: its counters, k=v, ...


def parse_counters(line: str) -> dict[str, int]:
    """``ustack: stopped; a=1, b=2`` -> {"a": 1, "b": 2} (a counter never counted is absent)."""
    out = {}
    for item in line.removeprefix(STOPPED_PREFIX).split(","):
        name, sep, value = item.strip().partition("=")
        if sep and value.strip().lstrip("-").isdigit():
            out[name] = int(value)
    return out


class Server:
    """A long-running child process whose stderr is drained by a thread."""

    def __init__(self, label: str, argv: list[str], ready: str) -> None:
        self.label = label
        self.argv = argv
        self.ready_text = ready
        self.lines: deque[str] = deque(maxlen=200)
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
        )
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()
        self.exit_code: int | None = None
        self.stop_seconds: float | None = None
        self.exited_early = False  # it had already exited when we came to stop it
        self.killed_after_timeout = False  # SIGTERM was not enough: SIGKILL
        self.peak_rss_mb_at_stop: float | None = None  # VmHWM just before our SIGTERM

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            if line.startswith(self.ready_text):
                self.ready.set()

    def wait_ready(self, timeout: float) -> str | None:
        """None when ready, else a reason."""
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.ready.wait(0.1):
                return None
            if self.proc.poll() is not None:
                self._thread.join(1.0)
                return f"{exit_text(self.proc.returncode)}: {self.last_line()}"
        return f"no '{self.ready_text}' line within {timeout:g} s: {self.last_line()}"

    def last_line(self) -> str:
        for line in reversed(self.lines):
            if line.strip():
                return line.strip()[-200:]
        return "(no output)"

    def last_line_with(self, prefix: str) -> str | None:
        """The last stderr line that starts with ``prefix``, whole (last_line cuts it)."""
        for line in reversed(self.lines):
            if line.startswith(prefix):
                return line
        return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def peak_rss_mb(self) -> float | None:
        """Peak resident memory (VmHWM) of the process, plus its children's (workers)."""
        total = None
        for pid in _tree(self.proc.pid):
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            total = (total or 0) + int(line.split()[1]) / 1024
            except OSError:
                continue
        return total

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the process and its children (workers) so far."""
        total = 0
        for pid in _tree(self.proc.pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                if pid == self.proc.pid:
                    return None
                continue
            # utime, stime, and cutime, cstime: the time of children that have exited.
            total += sum(int(x) for x in fields[11:15])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.exit_code is not None:
            return
        self.exited_early = self.proc.poll() is not None
        if not self.exited_early:
            self.peak_rss_mb_at_stop = self.peak_rss_mb()
            t0 = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
                self.stop_seconds = time.monotonic() - t0
            except subprocess.TimeoutExpired:
                self.killed_after_timeout = True
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.exit_code = self.proc.returncode
        self._thread.join(1.0)


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (the workers), from every process's parent in /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += parents.get(current, [])
    return found


def run_quiet(argv: list[str], timeout: float = SETUP_TIMEOUT) -> None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"`{shlex.join(argv)}` took more than {timeout:g} s") from e
    if r.returncode != 0:
        raise BenchError(f"`{shlex.join(argv)}` failed: {r.stderr.strip() or r.returncode}")
