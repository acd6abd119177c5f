"""`ustack serve --workers N`: N worker processes on the N queues of one multi-queue TUN.

The supervisor (the process the user started) opens the device's queues
(`TunDevice.open_queues`: the kernel gives each flow to one queue, tun_automq_select_queue
hashing it both ways alike), forks one worker per queue, and keeps every queue's file
descriptor open for the life of the service. A queue is detached only when its last
descriptor closes (tun_detach), and detaching re-hashes every flow over the queues left:
so a worker that dies takes nothing with it but its own connections, and the
supervisor reports it and forks another on the same queue.

Each worker (`ustack.cli.worker`) runs the single-process `serve` on its queue and tells
the supervisor over a pipe what a single process tells the terminal. The supervisor
prints the start-up line once all serve, each worker's counters and their sum on SIGUSR1
and at the end, and stops all on SIGTERM or SIGINT. It runs no event loop: it forks
before any exists and waits on the pipes and a signal wake-up fd with a selector. A
capture (`--pcap FILE`) is written in parts (`FILE.w0`, ...) merged into FILE at the end.
"""

import argparse
import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ustack import conninfo, link, tun
from ustack.cli.args import EXIT_OK, EXIT_USAGE
from ustack.cli.common import format_stats, log, warn_kernel_addr
from ustack.cli.serve import log_connections, serving_line
from ustack.cli.worker import worker_main
from ustack.tun import TunDevice, TunError

REPORT_WAIT = 2.0  # SIGUSR1: how long the supervisor waits for every worker's report
STOP_GRACE = 5.0  # SIGTERM: a worker's linger (1 s) and more, then SIGKILL
FAST_DEATH = 5.0  # a worker that dies this soon after its start ...
MAX_FAST_DEATHS = 5  # ... this many times in a row stops the service (exit 1)
RESTART_PAUSE = 1.0  # before restarting a worker that died fast
EXIT_FAILED = 1  # a worker could not be kept running, or stopped
SUPERVISOR_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGCHLD}


def supervise(args: argparse.Namespace) -> int:
    """`ustack serve --workers N`: open the queues, run the workers, return the exit
    status: 0 after SIGTERM/SIGINT, 2 for what the single process refuses too (a device,
    an address, a capture), 1 when a worker cannot be kept running or stopped."""
    try:
        queues = TunDevice.open_queues(
            args.dev, args.workers, kernel_addr=args.kernel_addr, mtu=args.mtu,
            offload=args.offload, kernel_addr6=args.kernel_addr6 if args.addr6 else None)
    except TunError as e:
        log(str(e))
        return EXIT_USAGE
    capture = None
    supervisor = None
    try:
        problem = tun.route_problem(args.dev, args.addr)
        if problem is not None:
            log(problem)
            return EXIT_USAGE
        if args.pcap is not None:
            capture = link.open_capture(args.pcap)  # locked: a second ustack refuses it
        warn_kernel_addr(args, args.dev, queues[0].created)
        supervisor = Supervisor(args, queues, capture)
        return supervisor.run()
    except link.CaptureError as e:
        log(str(e))
        return EXIT_USAGE
    finally:
        for queue in queues:  # only now may the kernel detach them
            queue.close()
        if capture is not None:
            _merge_capture(args.pcap, capture, supervisor.parts if supervisor else [])


@dataclass(eq=False)
class Worker:
    """One queue and the process serving it (one after another if it dies)."""

    index: int
    queue: TunDevice
    pid: int = 0  # 0: no process now
    pipe: int = -1
    pending: list[bytes] = field(default_factory=list)  # the start of an unfinished line
    started: float = 0.0
    ready: bool = False
    lives: int = 0  # processes started on this queue
    fast_deaths: int = 0
    restart_at: float | None = None
    stats: dict[str, int] = field(default_factory=dict)  # the last counters of this life
    stopped: bool = False  # its last counters came
    report: dict[str, Any] | None = None
    killed: bool = False  # by the supervisor, after STOP_GRACE

    @property
    def who(self) -> str:
        return f"ustack[w{self.index}]"


class Supervisor:
    """The workers' parent: forks, restarts, sums and stops them (see the module)."""

    def __init__(self, args: argparse.Namespace, queues: list[TunDevice],
                 capture: BinaryIO | None = None) -> None:
        self.args = args
        self.workers = [Worker(i, q) for i, q in enumerate(queues)]
        self.capture = capture  # the locked capture file: the workers close their copy
        self.started = time.monotonic()
        self.retired: Counter[str] = Counter()  # counters of processes that are gone
        self.restarts = 0
        self.serving = False  # the start-up line is out
        self.stop_asked = False
        self.report_asked = False
        self.stopping_until: float | None = None  # SIGTERM sent; SIGKILL after this
        self.report_until: float | None = None
        self.asked: list[Worker] = []  # the workers a SIGUSR1 was passed on to
        self.status = EXIT_OK
        self.parts: list[str] = []  # capture parts, in order of their workers' start


    def run(self) -> int:
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        previous = self._install_signals()
        try:
            for worker in self.workers:
                if not self._spawn(worker):
                    self._fail()
                    break
            while self._live() or self.stopping_until is None:
                self._wait()
                if self.stop_asked and self.stopping_until is None:
                    self._stop_all()  # before reaping: a worker stopped with us is no death
                self._reap()
                self._act()
            self._log_stopped()
            return self.status
        finally:
            for worker in self._live():  # an exception here: no worker outlives us
                os.kill(worker.pid, signal.SIGKILL)
            for worker in self.workers:
                if worker.pipe >= 0:
                    os.close(worker.pipe)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(-1)
            self.selector.close()
            self.wake_r.close()
            self.wake_w.close()

    def _install_signals(self) -> dict[int, Any]:
        self.wake_w.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        signal.set_wakeup_fd(self.wake_w.fileno())

        def on_stop(signum: int, frame: object) -> None:
            self.stop_asked = True

        def on_report(signum: int, frame: object) -> None:
            self.report_asked = True

        handlers = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop,
                    signal.SIGUSR1: on_report,
                    signal.SIGCHLD: lambda signum, frame: None}  # wakes the selector
        return {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}

    def _live(self) -> list[Worker]:
        return [w for w in self.workers if w.pid]

    def _wait(self) -> None:
        now = time.monotonic()
        deadlines = [t for t in (self.stopping_until, self.report_until,
                                 *(w.restart_at for w in self.workers)) if t is not None]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    self.wake_r.recv(4096)
            else:
                self._read(key.data)

    def _act(self) -> None:
        now = time.monotonic()
        if self.stopping_until is not None:
            if now >= self.stopping_until:
                for worker in self._live():
                    log(f"worker {worker.index} (pid {worker.pid}) did not stop within "
                        f"{STOP_GRACE:g} s: killed")
                    worker.killed = True
                    os.kill(worker.pid, signal.SIGKILL)
                    self.status = self.status or EXIT_FAILED
                self.stopping_until = now + STOP_GRACE
            return
        for worker in self.workers:
            if worker.restart_at is not None and now >= worker.restart_at:
                worker.restart_at = None
                if not self._spawn(worker):
                    self._died(worker, "could not be started again")
        if not self.serving and all(w.ready for w in self.workers):
            self._log_serving()
        if self.report_asked and self.report_until is None:
            self._ask_reports()
        waiting = [w for w in self.asked if w.pid and w.report is None]
        if self.report_until is not None and (not waiting or now >= self.report_until):
            self._log_report(waiting)


    def _spawn(self, worker: Worker) -> bool:
        """Fork a worker on `worker`'s queue; False (said) if the system refuses."""
        part = None
        if self.args.pcap is not None:
            part = f"{self.args.pcap}.w{worker.index}" + (
                f".{worker.lives}" if worker.lives else "")
        try:
            read_end, write_end = os.pipe()
        except OSError as e:
            log(f"cannot start worker {worker.index}: {e.strerror or e}")
            return False
        sys.stderr.flush()
        # Until the child has dropped the supervisor's handlers, a signal would run them
        # in the child (a SIGTERM would only set its copy of stop_asked): held back.
        signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
        try:
            pid = os.fork()
        except OSError as e:
            pid = -1
            failure = e
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = EXIT_FAILED
            try:
                os.close(read_end)
                self._forget_in_child(worker)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)
                code = worker_main(self.args, worker.index, worker.queue, write_end, part)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISOR_SIGNALS)
        os.close(write_end)
        if pid < 0:
            os.close(read_end)
            log(f"cannot start worker {worker.index}: {failure.strerror or failure}")
            return False
        if part is not None:
            self.parts.append(part)
        os.set_blocking(read_end, False)
        worker.pid, worker.pipe, worker.pending = pid, read_end, []
        worker.started, worker.ready, worker.stopped = time.monotonic(), False, False
        worker.lives += 1
        worker.stats, worker.report = {}, None
        self.selector.register(read_end, selectors.EVENT_READ, worker)
        return True

    def _forget_in_child(self, worker: Worker) -> None:
        """In a new worker: drop the supervisor's signal handling, descriptors and the
        other queues (the supervisor keeps them attached)."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        # Ctrl-C reaches the whole process group: the supervisor stops the workers.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.selector.close()
        self.wake_r.close()
        self.wake_w.close()
        if self.capture is not None:
            self.capture.close()
        for other in self.workers:
            if other.pipe >= 0:
                os.close(other.pipe)
            if other is not worker:
                other.queue.close()

    def _read(self, worker: Worker) -> None:
        """What the worker's pipe holds: its messages, one JSON object per line."""
        while True:
            try:
                chunk = os.read(worker.pipe, 65536)
            except BlockingIOError:
                return
            if not chunk:  # it closed the pipe: it is exiting
                self.selector.unregister(worker.pipe)
                os.close(worker.pipe)
                worker.pipe = -1
                return
            if b"\n" not in chunk:
                worker.pending.append(chunk)
                continue
            *lines, rest = b"".join([*worker.pending, chunk]).split(b"\n")
            worker.pending = [rest]
            for line in lines:
                self._message(worker, json.loads(line))

    def _message(self, worker: Worker, message: dict[str, Any]) -> None:
        if "stats" in message:
            worker.stats = message["stats"]
        if message.get("ready"):
            worker.ready = True
            if self.serving:
                log(f"worker {worker.index} serving again (pid {worker.pid})")
        if "report" in message:
            worker.report = message["report"]
        if message.get("stopped"):
            worker.stopped = True

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers if w.pid == pid), None)
            if worker is not None:
                self._exited(worker, status)

    def _exited(self, worker: Worker, status: int) -> None:
        if worker.pipe >= 0:
            os.set_blocking(worker.pipe, True)  # whatever it wrote before it went
            self._read(worker)
        pid, worker.pid = worker.pid, 0
        self.retired.update(worker.stats)
        how = f"(pid {pid}) {_exit_text(status)}"
        if self.stopping_until is not None:
            # Stopped as asked: it said so and exited 0, or SIGTERM came before it could.
            clean = os.waitstatus_to_exitcode(status) in (EXIT_OK, -signal.SIGTERM)
            if not clean and not worker.killed:
                log(f"worker {worker.index} {how} while stopping")
                self.status = self.status or EXIT_FAILED
            return
        if not self.serving:
            log(f"worker {worker.index} {how} before it served")
            code = os.waitstatus_to_exitcode(status)
            self._fail(EXIT_USAGE if code == EXIT_USAGE else EXIT_FAILED)
            return
        self._died(worker, how)

    def _died(self, worker: Worker, how: str) -> None:
        """A worker went while serving: start another on its queue, unless it keeps
        dying at once (then the whole service stops)."""
        fast = time.monotonic() - worker.started < FAST_DEATH
        worker.fast_deaths = worker.fast_deaths + 1 if fast else 0
        worker.ready = False
        if worker.fast_deaths >= MAX_FAST_DEATHS:
            log(f"worker {worker.index} {how}, the {MAX_FAST_DEATHS}th time within "
                f"{FAST_DEATH:g} s of its start: stopping every worker")
            self._fail()
            return
        log(f"worker {worker.index} {how}; its connections are lost, starting another on "
            "its queue")
        self.restarts += 1
        worker.restart_at = time.monotonic() + (RESTART_PAUSE if fast else 0.0)

    def _fail(self, status: int = EXIT_FAILED) -> None:
        self.status = self.status or status
        self._stop_all()

    def _stop_all(self) -> None:
        self.stopping_until = time.monotonic() + STOP_GRACE
        self.report_asked, self.report_until = False, None  # no report while stopping
        for worker in self.workers:
            worker.restart_at = None
        for worker in self._live():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)


    def _log_serving(self) -> None:
        self.serving = True
        first = self.workers[0].queue
        pids = " ".join(str(w.pid) for w in self.workers)
        parts = (f"; capture parts {' '.join(self.parts)}, merged into {self.args.pcap} "
                 "on exit" if self.parts else "")
        log(serving_line(self.args, first.mtu, first.offloads, first.offload_refused,
                         first.ipv6_refused, f", {len(self.workers)} workers: pids {pids}{parts}"))

    def _ask_reports(self) -> None:
        self.report_asked = False
        self.report_until = time.monotonic() + REPORT_WAIT
        for worker in self.workers:
            worker.report = None
        self.asked = [w for w in self.workers if w.pid and w.ready]
        for worker in self.asked:
            os.kill(worker.pid, signal.SIGUSR1)

    def _log_report(self, silent: list[Worker]) -> None:
        """SIGUSR1: each worker's counters, their sum, and every worker's connections."""
        self.report_until = None
        rows: list[conninfo.ConnectionInfo] = []
        for worker in self.workers:
            if worker.report is not None:
                log(f"stats; uptime_s={worker.report['uptime_s']}, "
                    + format_stats(worker.stats), worker.who)
                rows += [conninfo.from_dict(r) for r in worker.report["connections"]]
        for worker in silent:
            log(f"worker {worker.index} did not answer within {REPORT_WAIT:g} s: its "
                "counters are its last ones, its connections are not listed")
        total = self._total()
        log(f"stats; uptime_s={int(time.monotonic() - self.started)}, " + format_stats(total))
        rows.sort(key=lambda r: (r.local[1], r.remote))
        log_connections(rows)

    def _log_stopped(self) -> None:
        for worker in self.workers:
            if worker.stopped:
                log("stopped; " + (format_stats(worker.stats) or "nothing counted"),
                    worker.who)
        log("stopped; " + format_stats(self._total()))

    def _total(self) -> dict[str, int]:
        """The counters of every worker, those that died included (up to their last
        report), and `workers` and `worker_restarts`."""
        total = Counter(self.retired)
        for worker in self._live():
            total.update(worker.stats)
        summed = dict(total)
        summed.update(workers=len(self.workers), worker_restarts=self.restarts)
        return summed


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _merge_capture(pcap: str, capture: BinaryIO, parts: list[str]) -> None:
    """The workers' capture parts, merged by time into the file the user named; if that
    fails the parts stay, and one line says so."""
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a half merge helps nobody
    try:
        count = link.merge_parts(pcap, capture, parts)
    except OSError as e:
        log(f"capture: cannot merge {' '.join(parts)} into {pcap}: {e.strerror or e}; "
            "each part is a capture of its own")
        return
    finally:
        signal.signal(signal.SIGINT, interrupt)
    log(f"capture: {count} packets from {len(parts)} parts merged into {pcap}")
