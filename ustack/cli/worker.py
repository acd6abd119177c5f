"""A worker of `ustack serve --workers N` (`ustack.cli.supervisor` runs them): the
single-process `serve` on one queue of the device, its `Announcer` telling the
supervisor over a pipe, one JSON object per line, what a single process tells the
terminal: `ready` once it serves, its counters every `TICK` seconds (what the supervisor
sums for a worker that dies), a `report` with its connections on SIGUSR1, its last
counters when it stops. Its `--trace` lines start with `[wI]`."""

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import select
import signal
import sys
import time
from typing import Any, TextIO

from ustack import conninfo, link
from ustack.api import Stack
from ustack.cli.args import EXIT_USAGE
from ustack.cli.common import log, on_signals, run_loop
from ustack.cli.serve import Announcer, serve
from ustack.tun import TunDevice, TunError

TICK = 1.0  # seconds between a worker's counters: what is lost of a worker killed
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_main(args: argparse.Namespace, index: int, queue: TunDevice, pipe: int,
                 pcap: str | None) -> int:
    """The worker's life, in the forked child: serve on `queue`, report over `pipe`,
    capture into `pcap` (its part); the exit status."""
    _die_with_parent()
    announcer = WorkerAnnouncer(index, queue, pipe, pcap)
    try:
        return run_loop(serve(args, announcer), args.loop)
    except (TunError, link.CaptureError) as e:
        log(str(e), announcer.who)
        return EXIT_USAGE


def _die_with_parent() -> None:
    """SIGTERM this worker when the supervisor dies, even by SIGKILL (prctl
    PR_SET_PDEATHSIG): no worker outlives it holding the device."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)


class WorkerAnnouncer(Announcer):
    """A worker's `serve` tells its supervisor (over the pipe) what the single process
    tells the terminal."""

    def __init__(self, index: int, queue: TunDevice, pipe: int, pcap: str | None) -> None:
        self.who = f"ustack[w{index}]"
        self.index = index
        self.queue = queue
        self.pipe = pipe
        self.pcap = pcap
        self.started = time.monotonic()
        self.stop: asyncio.Event | None = None

    def stack_options(self, args: argparse.Namespace) -> dict[str, Any]:
        options: dict[str, Any] = dict(device=self.queue, pcap=self.pcap)
        if args.trace:
            options["trace"] = Prefixed(sys.stderr, f"[w{self.index}] ")
        return options

    def serving(self, args: argparse.Namespace, stack: Stack, stop: asyncio.Event) -> None:
        self.stop = stop
        loop = asyncio.get_running_loop()
        on_signals(stop.set, (signal.SIGTERM,))
        loop.add_signal_handler(signal.SIGUSR1, self._report, stack)
        self._send({"ready": True, "stats": stack.stats()})
        loop.call_later(TICK, self._tick, stack)

    def stopped(self, stack: Stack) -> None:
        self._send({"stopped": True, "stats": stack.stats()})
        os.close(self.pipe)
        self.pipe = -1

    def _tick(self, stack: Stack) -> None:
        if self.pipe >= 0:
            self._send({"stats": stack.stats()}, wait=False)
            asyncio.get_running_loop().call_later(TICK, self._tick, stack)

    def _report(self, stack: Stack) -> None:
        rows = [conninfo.as_dict(r) for r in stack.connections()]
        self._send({"stats": stack.stats(), "report": {
            "uptime_s": int(time.monotonic() - self.started), "connections": rows}})

    def _send(self, message: dict[str, Any], wait: bool = True) -> None:
        """One line to the supervisor. `wait=False` (the ticks): only if the pipe takes
        it whole at once (a write of up to PIPE_BUF bytes is all or nothing), else it is
        skipped, so that a supervisor slow to read never stalls this worker's timers."""
        data = memoryview(json.dumps(message).encode() + b"\n")
        if not wait and len(data) > select.PIPE_BUF:
            return
        try:
            os.set_blocking(self.pipe, wait)
            while data:
                data = data[os.write(self.pipe, data):]
        except BlockingIOError:
            pass  # the next tick says the same, newer
        except OSError:  # the supervisor is gone: so are we
            if self.stop is not None:
                self.stop.set()


class Prefixed:
    """A text stream that starts each line with `prefix` (a worker's `--trace`)."""

    def __init__(self, out: TextIO, prefix: str) -> None:
        self.out = out
        self.prefix = prefix
        self._at_start = True

    def write(self, text: str) -> int:
        lines = text.split("\n")
        pieces = []
        for i, line in enumerate(lines):
            if line and self._at_start:
                pieces.append(self.prefix)
            pieces.append(line)
            if i < len(lines) - 1:
                pieces.append("\n")
                self._at_start = True
            elif line:
                self._at_start = False
        self.out.write("".join(pieces))
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return self.out.isatty()
