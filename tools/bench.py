#!/usr/bin/env python3
"""Benchmark ustack against the kernel's own TCP, side by side, in one run.

Everything happens inside a private network namespace ``ustack-bench-<pid>`` that this
command creates and always deletes (also on Ctrl-C or SIGTERM). Inside it:

* a TUN device ``ustack0`` (kernel side 10.77.0.1/24, MTU ``--mtu``);
* ``python -m ustack serve echo:7 discard:9 http:80`` answering at 10.77.0.2 over that TUN;
* the *same* service protocols (``ustack.services.protocol_factory``) on kernel sockets,
  driven by uvloop, listening on 10.77.0.1 ports 7007/7009/7080.

The same client code (this file re-executed inside the namespace with ``--client``) then
measures both servers: upload into discard, download of ``GET /bytes/N``, HTTP/1.0
connections per second, 1-byte echo round trips; finally the peak RSS (VmHWM) of both
server processes. Every figure is shown with the ratio ustack/kernel, because the machine
running this is usually shared and noisy: only ratios from the same run compare.

The ``churn`` scenario runs only when named (``--scenarios churn`` or ``--scenarios all``):
it takes ``--churn-seconds`` (120 s) per side. Against a freshly started server it runs
``ab -c 50`` with HTTP/1.0 (a new connection per request, the server closing first, so the
server's TIME-WAIT table fills) in consecutive 15 s windows, and samples the server's
VmRSS every second: it reports the RSS plateau (the peak) and whether requests/s holds up
from the first window to the last. It runs once per side, whatever ``--repeat`` says. On
the kernel side the TIME-WAIT sockets live in the kernel, not in the server's RSS.

The ``closestorm`` scenario also runs only when named (``--scenarios closestorm`` or
``all``), once per side. Against a freshly started server it opens ``--storm-conns``
(10000) connections to echo, proves one in 50 alive with a 1-byte echo, then closes them
all in one tight loop of close() calls (the ``idle`` scenario closes in batches precisely
to avoid this storm) and waits (at most 60 s) until no TCP socket of the namespace is in
FIN-WAIT-1, FIN-WAIT-2, CLOSING or LAST-ACK. It reports the time from the first close()
to that point, the kernel's TCP retransmissions and retransmission timeouts in the
namespace meanwhile (on the ustack side only the clients' sockets are kernel TCP; on the
kernel side the kernel server's count too), the TUN's transmit drops towards ustack
meanwhile, and, from the ``ustack: stopped; ...`` counters line of the ustack server
(stopped at the end of the scenario, once it has gone quiet on the TUN), its
retransmission timeouts and those that timestamps proved spurious (RFC 3522).

Usage (root, Linux, /dev/net/tun, iproute2; ab and wrk for their scenarios)::

    sudo /tmp/venv/bin/python tools/bench.py            # all but churn, closestorm
    sudo /tmp/venv/bin/python tools/bench.py --quick    # smoke run
    sudo /tmp/venv/bin/python tools/bench.py --json     # same figures as JSON
    sudo /tmp/venv/bin/python tools/bench.py --scenarios churn   # 2 x 120 s of churn
    sudo /tmp/venv/bin/python tools/bench.py --scenarios closestorm --storm-conns 3000

No packet ever leaves the namespace: servers bind and clients connect only to 10.77.0.1 and
10.77.0.2, which exist only inside it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import itertools
import json
import math
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()

DEV = "ustack0"  # lives only inside the private namespace, so the name cannot collide
KERNEL_ADDR = "10.77.0.1"
USTACK_ADDR = "10.77.0.2"
PREFIX = 24
USTACK_PORTS = {"echo": 7, "discard": 9, "http": 80}
KERNEL_PORTS = {"echo": 7007, "discard": 7009, "http": 7080}

READY_USTACK = "ustack: serving"
READY_KERNEL = "kernel: serving"
START_TIMEOUT = 20.0  # seconds for a server to print its ready line
STOP_TIMEOUT = 5.0  # seconds after SIGTERM before SIGKILL
SETUP_TIMEOUT = 10.0  # seconds for each `ip` command
MB = 1_000_000
BACKLOG = 1024  # both servers' listen backlog
# The idle scenario closes this many connections at a time, with this pause (seconds)
# between batches: precisely to avoid the close storm that closestorm measures.
IDLE_CLOSE_BATCH = 250
IDLE_CLOSE_PAUSE = 0.1
CHURN_WINDOW = 15.0  # seconds of each ab run in the churn scenario
CHURN_C = 50  # churn's ab concurrency
STORM_SAMPLE = 50  # closestorm proves one connection in this many alive (1-byte echo)
STORM_WAIT = 60.0  # seconds closestorm waits for every close to complete
STORM_POLL = 0.005  # seconds between two looks at the namespace's sockets
STORM_QUIET = 3.0  # ustack is stopped once the TUN has carried nothing for this long ...
STORM_SETTLE_MAX = 20.0  # ... or after this many seconds at most
# /proc/net/tcp states of a close in progress: FIN-WAIT-1, FIN-WAIT-2, CLOSING, LAST-ACK
# (an orphaned FIN-WAIT-2 socket, a time-wait mini-socket by then, shows its sub-state)
CLOSING_STATES = frozenset({"04", "05", "0B", "09"})
SCENARIOS = ("upload", "download", "conns", "ab", "wrk", "echo", "idle", "churn",
             "closestorm")
# churn takes 2 x --churn-seconds (120 s by default) on its own and closestorm stops the
# ustack server for its final counters: only when named
DEFAULT_SCENARIOS = tuple(s for s in SCENARIOS if s not in ("churn", "closestorm"))


class BenchError(Exception):
    """An environment problem: reported as one line, exit status 2."""


# --------------------------------------------------------------------------------------
# Client side: runs inside the namespace (``--client SCENARIO``), prints one JSON object.
# --------------------------------------------------------------------------------------


class ClientFailure(Exception):
    """A scenario that did not complete; the message goes into the table cell."""


def _remaining(t_end: float) -> float:
    left = t_end - time.monotonic()
    if left <= 0:
        raise TimeoutError("time limit reached")
    return left


def client_upload(host: str, port: int, nbytes: int, limit: float) -> dict:
    """Send ``nbytes`` into discard, half-close, wait for the server's close."""
    t_end = time.monotonic() + limit
    chunk = memoryview(bytes(range(256)) * 1024)  # 256 KiB
    sent = 0
    with socket.create_connection((host, port), timeout=min(10.0, limit)) as s:
        t0 = time.perf_counter()
        try:
            while sent < nbytes:
                s.settimeout(min(10.0, _remaining(t_end)))
                sent += s.send(chunk[: min(len(chunk), nbytes - sent)])
            s.shutdown(socket.SHUT_WR)
            while True:
                s.settimeout(min(10.0, _remaining(t_end)))
                if not s.recv(65536):
                    break
        except (TimeoutError, OSError) as e:
            dt = time.perf_counter() - t0
            raise ClientFailure(
                f"{type(e).__name__}: {e}; {sent / MB:.2f} of {nbytes / MB:g} MB sent in {dt:.1f} s"
            ) from e
        dt = time.perf_counter() - t0
    return {"value": nbytes / MB / dt, "seconds": dt, "bytes": nbytes}


def _read_http_head(s: socket.socket, t_end: float) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        s.settimeout(min(10.0, _remaining(t_end)))
        data = s.recv(65536)
        if not data:
            raise ClientFailure(f"connection closed before the response head ({len(buf)} B)")
        buf += data
        if len(buf) > 65536:
            raise ClientFailure("response head larger than 64 KiB")
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ClientFailure(f"bad status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def client_download(host: str, port: int, nbytes: int, limit: float) -> dict:
    """GET /bytes/N, read exactly N bytes, check that byte i is i % 256."""
    t_end = time.monotonic() + limit
    bufsize = 1 << 20
    pattern = bytes(range(256)) * (bufsize // 256 + 2)
    buf = bytearray(bufsize)
    view = memoryview(buf)
    got = 0
    req = (f"GET /bytes/{nbytes} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((host, port), timeout=min(10.0, limit)) as s:
        t0 = time.perf_counter()
        try:
            s.sendall(req)
            status, headers, rest = _read_http_head(s, t_end)
            if status != 200:
                raise ClientFailure(f"HTTP status {status}")
            if headers.get("content-length") != str(nbytes):
                raise ClientFailure(f"Content-Length {headers.get('content-length')!r}")

            expected = memoryview(pattern)

            def check(n: int, offset: int) -> None:
                # The n bytes just received sit at the start of buf; startswith is a
                # memcmp (comparing memoryviews goes byte by byte: ~2 ms a MB).
                start = offset % 256
                if not buf.startswith(expected[start : start + n]):
                    raise ClientFailure(f"wrong bytes in the body near offset {offset}")

            if rest:
                rest = rest[:nbytes]
                if rest != pattern[: len(rest)]:
                    raise ClientFailure("wrong bytes at the start of the body")
                got = len(rest)
            while got < nbytes:
                s.settimeout(min(10.0, _remaining(t_end)))
                n = s.recv_into(view, min(bufsize, nbytes - got))
                if n == 0:
                    raise ClientFailure("connection closed early")
                check(n, got)
                got += n
        except (TimeoutError, OSError) as e:
            dt = time.perf_counter() - t0
            raise ClientFailure(
                f"{type(e).__name__}: {e}; {got / MB:.2f} of {nbytes / MB:g} MB received"
                f" in {dt:.1f} s"
            ) from e
        dt = time.perf_counter() - t0
    return {"value": nbytes / MB / dt, "seconds": dt, "bytes": nbytes}


def client_conns(host: str, port: int, count: int, concurrency: int, limit: float) -> dict:
    """``count`` times: connect, HTTP/1.0 GET /, read to EOF, close; ``concurrency`` threads."""
    t_end = time.monotonic() + limit
    req = b"GET / HTTP/1.0\r\n\r\n"
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: list[str] = []

    def one() -> None:
        s = socket.create_connection((host, port), timeout=5.0)
        try:
            s.sendall(req)
            data = b""
            while True:
                part = s.recv(65536)
                if not part:
                    break
                data += part
        finally:
            s.close()
        if not data.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
            raise ClientFailure(f"unexpected response {data[:40]!r}")

    def worker() -> None:
        nonlocal issued
        while True:
            with lock:
                if issued >= count or time.monotonic() >= t_end or len(errors) >= 10:
                    return
                issued += 1
            t = time.perf_counter()
            try:
                one()
            except (OSError, ClientFailure) as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, t_end - time.monotonic() + 10.0))
    dt = time.perf_counter() - t0
    ok = len(latencies)
    if errors:
        raise ClientFailure(f"{len(errors)} of {issued} connections failed, first: {errors[0]}")
    if ok == 0:
        raise ClientFailure("no connection completed")
    result = {
        "value": ok / dt,
        "seconds": dt,
        "connections": ok,
        "concurrency": concurrency,
        "latency_p50_us": statistics.median(latencies) * 1e6,
    }
    if ok < count:
        result["note"] = f"time limit: {ok} of {count} connections in {dt:.1f} s"
    return result


def _percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def client_echo(host: str, port: int, rounds: int, limit: float) -> dict:
    """One connection, TCP_NODELAY, ``rounds`` times: send 1 byte, wait for it back."""
    t_end = time.monotonic() + limit
    samples: list[float] = []
    i = 0
    with socket.create_connection((host, port), timeout=min(10.0, limit)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(5.0)
        try:
            for i in range(10 + rounds):  # the first 10 rounds warm up and are not counted
                if time.monotonic() >= t_end:
                    break
                t = time.perf_counter_ns()
                s.sendall(b"x")
                if s.recv(16) != b"x":
                    raise ClientFailure(f"round {i + 1}: echo returned other bytes")
                if i >= 10:
                    samples.append((time.perf_counter_ns() - t) / 1000)
        except (TimeoutError, OSError) as e:
            raise ClientFailure(
                f"round {i + 1} (10 warm-up rounds first): {type(e).__name__}: {e}"
            ) from e
    if not samples:
        raise ClientFailure("no round completed")
    samples.sort()
    result = {
        "p50_us": _percentile(samples, 50),
        "p99_us": _percentile(samples, 99),
        "mean_us": statistics.fmean(samples),
        "max_us": samples[-1],
        "rounds": len(samples),
    }
    if len(samples) < rounds:
        result["note"] = f"time limit: {len(samples)} of {rounds} rounds"
    return result


def _run_tool(argv: list[str], limit: float) -> str:
    """Run a load generator (ab, wrk) bounded in time; its stdout, or ClientFailure."""
    if shutil.which(argv[0]) is None:
        raise ClientFailure(f"{argv[0]} is not installed (apt-get install "
                            f"{'apache2-utils' if argv[0] == 'ab' else argv[0]})")
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=limit + 10,
                           check=False)
    except subprocess.TimeoutExpired as e:
        raise ClientFailure(f"{argv[0]} ran past {limit + 10:g} s and was killed") from e
    if r.returncode != 0:
        err = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise ClientFailure(f"{argv[0]} exited {r.returncode}: {err[-1] if err else ''}")
    return r.stdout


def _field(text: str, label: str) -> str | None:
    for line in text.splitlines():
        if line.strip().startswith(label):
            return line.strip()[len(label):].strip()
    return None


def client_ab(host: str, port: int, count: int, concurrency: int, limit: float) -> dict:
    """ApacheBench: ``count`` HTTP/1.0 requests, a new connection each, ``concurrency``."""
    # Bounded by the count and by the subprocess timeout (ab's own -t would raise the
    # count to 50,000).
    out = _run_tool(["ab", "-q", "-n", str(count), "-c", str(concurrency), "-s", "10",
                     f"http://{host}:{port}/"], limit)
    done, failed = _field(out, "Complete requests:"), _field(out, "Failed requests:")
    rate = _field(out, "Requests per second:")
    if rate is None or done is None or failed is None:
        raise ClientFailure(f"no figures in ab's output: {out[-200:]!r}")
    if int(failed) or _field(out, "Non-2xx responses:"):
        raise ClientFailure(f"ab: {failed} failed requests, non-2xx: "
                            f"{_field(out, 'Non-2xx responses:') or 0}")
    result = {"value": float(rate.split()[0]), "requests": int(done),
              "concurrency": concurrency}
    if int(done) < count:
        result["note"] = f"time limit: {done} of {count} requests"
    return result


def _wrk_us(text: str) -> float:
    """wrk's latency like 2.95ms, 850.00us, 1.20s, in microseconds."""
    for unit, scale in (("us", 1.0), ("ms", 1e3), ("s", 1e6)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def client_wrk(host: str, port: int, seconds: float, connections: int, limit: float) -> dict:
    """wrk: keep-alive GET / on ``connections`` connections for ``seconds``, one thread."""
    seconds = min(seconds, limit)
    out = _run_tool(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s",
                     "--latency", f"http://{host}:{port}/"], seconds + 10)
    rate = _field(out, "Requests/sec:")
    if rate is None:
        raise ClientFailure(f"no figures in wrk's output: {out[-200:]!r}")
    errors = _field(out, "Socket errors:")
    bad = _field(out, "Non-2xx or 3xx responses:")
    if errors or bad:
        raise ClientFailure(f"wrk: socket errors: {errors or 'none'}; non-2xx: {bad or 0}")
    result: dict = {"value": float(rate), "connections": connections, "seconds": seconds}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            result[f"latency_p{parts[0][:-1]}_us"] = _wrk_us(parts[1])
    return result


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ClientFailure(f"no VmRSS for process {pid}")


def _allow_files(count: int) -> None:
    """Raise RLIMIT_NOFILE so that ``count`` sockets (and some files) can be open."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 100
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise ClientFailure(f"RLIMIT_NOFILE hard limit {hard} < {want} connections")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _open_conns(host: str, port: int, count: int, t_end: float,
                socks: list[socket.socket]) -> None:
    """Append ``count`` connections to ``socks``, one after the other (the caller closes
    them, also those opened before a failure, in its own way)."""
    try:
        for _ in range(count):
            socks.append(socket.create_connection((host, port),
                                                  timeout=min(5.0, _remaining(t_end))))
    except (TimeoutError, OSError) as e:
        raise ClientFailure(f"{len(socks)} of {count} connections established, then "
                            f"{type(e).__name__}: {e}") from e


def _echo_one(socks: list[socket.socket], t_end: float, what: str) -> None:
    """One byte echoed on each of ``socks``: proof that the connection is established."""
    for s in socks:
        s.settimeout(min(5.0, _remaining(t_end)))
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise ClientFailure(f"{what} did not echo")


def client_idle(host: str, port: int, count: int, server_pid: int, limit: float) -> dict:
    """Open ``count`` connections to echo and hold them; the server's RSS growth / count.

    Every connection is proved established by an echo of one byte on a sample of them
    (and all of them, if fewer than 200); the server's RSS is read before the first and
    again once all are held (it runs in this PID namespace)."""
    t_end = time.monotonic() + limit
    _allow_files(count)
    before = _rss_kb(server_pid)
    socks: list[socket.socket] = []
    try:
        _open_conns(host, port, count, t_end, socks)
        _echo_one(socks[::max(1, len(socks) // 200)], t_end, "an idle connection")
        time.sleep(0.5)  # let the server finish what the echoes started
        held = _rss_kb(server_pid)
    finally:
        # Closed a batch at a time, as an idle population ends: ten thousand FINs in one
        # burst measure a close storm (see BENCHMARKS.md; the closestorm scenario), not
        # memory.
        for i in range(0, len(socks), IDLE_CLOSE_BATCH):
            for s in socks[i:i + IDLE_CLOSE_BATCH]:
                s.close()
            time.sleep(IDLE_CLOSE_PAUSE)
    time.sleep(1.0)  # the last closes finish before the next scenario
    return {"value": (held - before) / count, "connections": count,
            "rss_before_kb": before, "rss_held_kb": held}


def _snmp_counter(path: str, section: str, name: str) -> int:
    """A counter of /proc/net/snmp or /proc/net/netstat, which are this network namespace's:
    a line ``Section: Name ...`` of names is followed by one of values."""
    with open(path) as f:
        lines = f.read().splitlines()
    for names, values in itertools.pairwise(lines):
        if names.startswith(f"{section}: ") and values.startswith(f"{section}: "):
            keys = names.split()
            if name in keys:
                return int(values.split()[keys.index(name)])
    raise ClientFailure(f"no {section} {name} in {path}")


def _tun_tx_dropped() -> int:
    """Packets the kernel dropped on their way into the TUN (its queue towards ustack full)."""
    try:
        r = subprocess.run(["ip", "-s", "-j", "link", "show", "dev", DEV], capture_output=True,
                           text=True, timeout=SETUP_TIMEOUT, check=False)
        return int(json.loads(r.stdout)[0]["stats64"]["tx"]["dropped"])
    except (subprocess.TimeoutExpired, ValueError, LookupError, TypeError) as e:
        raise ClientFailure(f"no tx dropped count for {DEV}: {type(e).__name__}: {e}") from e


def _close_counters(tun: bool) -> dict[str, int]:
    """The namespace's kernel TCP retransmissions and timeouts (and TUN drops if ``tun``)."""
    out = {
        "retrans_segs": _snmp_counter("/proc/net/snmp", "Tcp", "RetransSegs"),
        "tcp_timeouts": _snmp_counter("/proc/net/netstat", "TcpExt", "TCPTimeouts"),
        # tail loss probes retransmit without a timeout: they explain the difference
        "tcp_loss_probes": _snmp_counter("/proc/net/netstat", "TcpExt", "TCPLossProbes"),
    }
    if tun:
        out["tun_tx_dropped"] = _tun_tx_dropped()
    return out


def _closing_sockets() -> int:
    """IPv4 TCP sockets of this namespace with a close in progress (CLOSING_STATES)."""
    with open("/proc/net/tcp", "rb") as f:
        lines = f.read().decode("ascii").splitlines()[1:]
    return sum(1 for line in lines if line.split(None, 4)[3] in CLOSING_STATES)


def client_closestorm(host: str, port: int, count: int, tun: bool, limit: float) -> dict:
    """Open ``count`` connections to echo, then close them all at once (a close storm); the
    seconds until no socket of the namespace is still closing, and what it cost in kernel
    TCP retransmissions and timeouts (and in TUN drops, if ``tun``) meanwhile.

    ``limit`` bounds the opening and the echoes; the wait for the closes is STORM_WAIT."""
    t_end = time.monotonic() + limit
    _allow_files(count)
    socks: list[socket.socket] = []
    try:
        _open_conns(host, port, count, t_end, socks)
        _echo_one(socks[::STORM_SAMPLE], t_end, "a connection")
        time.sleep(0.5)  # the echoes' ACKs are sent: the counters below are the closes' own
        before = _close_counters(tun)
    except BaseException:
        for s in socks:
            s.close()
        raise
    # The storm: every FIN at once, no batching (contrast client_idle).
    t0 = time.perf_counter()
    for s in socks:
        s.close()
    loop_s = time.perf_counter() - t0
    socks.clear()
    deadline = time.monotonic() + STORM_WAIT
    polls = 0
    while True:
        t_look = time.perf_counter()
        closing = _closing_sockets()
        polls += 1
        done_s = time.perf_counter() - t0  # the look's end: an upper bound on the time
        if closing == 0:
            break
        if time.monotonic() >= deadline:
            after = _close_counters(tun)
            spent = ", ".join(f"{k} +{after[k] - before[k]}" for k in before)
            raise ClientFailure(f"{closing} sockets still closing {STORM_WAIT:g} s after the "
                                f"first of {count} close() calls ({spent})")
        time.sleep(STORM_POLL)
    look_s = time.perf_counter() - t_look
    after = _close_counters(tun)
    result: dict = {"value": done_s, "connections": count,
                    "echo_checked": len(range(0, count, STORM_SAMPLE)),
                    "close_loop_s": loop_s, "polls": polls, "last_poll_s": look_s}
    result.update({k: after[k] - before[k] for k in before})
    return result


def churn_windows(seconds: float) -> int:
    """How many CHURN_WINDOW-long ab runs make up ``seconds`` (whole windows, at least 1)."""
    return max(1, round(seconds / CHURN_WINDOW))


def _sample_rss(pid: int, stop: threading.Event, out: list[int]) -> None:
    """Append the VmRSS (kB) of ``pid`` every second until ``stop`` is set."""
    while True:
        try:
            out.append(_rss_kb(pid))
        except (OSError, ClientFailure):
            return  # the server is gone: the ab window that follows says why
        if stop.wait(1.0):
            return


def _ab_window(host: str, port: int) -> tuple[float, int, int]:
    """One churn window: (requests/s, complete requests, failed + non-2xx requests)."""
    # -n after -t: ab's -t sets the count to 50,000, which a fast window could reach
    # before its time is up; _run_tool kills an ab still running 10 s after its -t.
    out = _run_tool(["ab", "-q", "-t", f"{CHURN_WINDOW:g}", "-n", "100000000",
                     "-c", str(CHURN_C), "-s", "10", f"http://{host}:{port}/"], CHURN_WINDOW)
    done, failed = _field(out, "Complete requests:"), _field(out, "Failed requests:")
    rate = _field(out, "Requests per second:")
    if rate is None or done is None or failed is None:
        raise ClientFailure(f"no figures in ab's output: {out[-200:]!r}")
    bad = int(failed) + int(_field(out, "Non-2xx responses:") or 0)
    return float(rate.split()[0]), int(done), bad


def client_churn(host: str, port: int, seconds: float, server_pid: int) -> dict:
    """HTTP/1.0 ab -c 50 for ``seconds`` in 15 s windows: the server closes every connection
    first, so its TIME-WAIT table fills; its VmRSS is sampled every second meanwhile.

    A window with failed requests is reported in the result, not fatal: only an ab that
    exits non-zero ends the scenario."""
    samples: list[int] = []
    stop = threading.Event()
    start_kb = _rss_kb(server_pid)
    sampler = threading.Thread(target=_sample_rss, args=(server_pid, stop, samples),
                               daemon=True)
    sampler.start()
    rates: list[float] = []
    window_kb: list[int] = []  # VmRSS right after each window: at 15 s, 30 s, ...
    done = failed = 0
    try:
        for i in range(churn_windows(seconds)):
            try:
                rate, n, bad = _ab_window(host, port)
            except ClientFailure as e:
                raise ClientFailure(f"window {i + 1} ({i * CHURN_WINDOW:g} s in): {e}; "
                                    f"req/s before: {[round(r) for r in rates]}") from e
            rates.append(rate)
            done += n
            failed += bad
            window_kb.append(_rss_kb(server_pid))
    finally:
        stop.set()
        sampler.join(5.0)
    peak_kb = max([start_kb, *samples, *window_kb])
    result = {
        "value": peak_kb / 1024,
        "rss_mb_start": start_kb / 1024,
        "rss_mb_first": window_kb[0] / 1024,
        "rss_mb_last": window_kb[-1] / 1024,
        "rss_mb_windows": [round(kb / 1024, 1) for kb in window_kb],
        "rps_first": rates[0],
        "rps_last": rates[-1],
        "rps_last_over_first": rates[-1] / rates[0] if rates[0] else None,
        "windows": rates,
        "window_seconds": CHURN_WINDOW,
        "concurrency": CHURN_C,
        "failed": failed,
        "requests": done,
        "rss_samples": len(samples),
    }
    if failed:
        result["note"] = f"{failed} of {done} requests failed"
    return result


def client_main(args: argparse.Namespace) -> int:
    scen, host, port, limit = args.client, args.host, args.port, args.time_limit
    try:
        if scen == "upload":
            result = client_upload(host, port, args.bytes, limit)
        elif scen == "download":
            result = client_download(host, port, args.bytes, limit)
        elif scen == "conns":
            result = client_conns(host, port, args.conns, args.concurrency, limit)
        elif scen == "echo":
            result = client_echo(host, port, args.rounds, limit)
        elif scen == "ab":
            result = client_ab(host, port, args.ab_n, args.ab_c, limit)
        elif scen == "wrk":
            result = client_wrk(host, port, args.wrk_seconds, args.wrk_c, limit)
        elif scen == "idle":
            result = client_idle(host, port, args.idle_conns, args.server_pid, limit)
        elif scen == "churn":
            result = client_churn(host, port, args.churn_seconds, args.server_pid)
        elif scen == "closestorm":
            result = client_closestorm(host, port, args.storm_conns, args.storm_tun, limit)
        else:
            raise ClientFailure(f"unknown scenario {scen}")
    except (ClientFailure, OSError) as e:
        msg = str(e) if isinstance(e, ClientFailure) else f"{type(e).__name__}: {e}"
        print(json.dumps({"error": msg}))
        return 1
    print(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------
# Kernel-socket server: the same service protocols as ustack, on uvloop.
# --------------------------------------------------------------------------------------


def kernel_server_main(host: str, spec: str) -> int:
    import asyncio

    import uvloop

    from ustack.services import protocol_factory

    services = []
    for item in spec.split(","):
        name, _, port = item.partition(":")
        services.append((name, int(port)))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        servers = [
            await loop.create_server(protocol_factory(name), host, port, reuse_address=True,
                                     backlog=BACKLOG)
            for name, port in services
        ]
        print(f"{READY_KERNEL} {spec} on {host}", file=sys.stderr, flush=True)
        await stop.wait()
        for srv in servers:
            srv.close()

    uvloop.run(serve())
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
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the process so far."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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


def run_quiet(argv: list[str], timeout: float = SETUP_TIMEOUT) -> None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"`{shlex.join(argv)}` took more than {timeout:g} s") from e
    if r.returncode != 0:
        raise BenchError(f"`{shlex.join(argv)}` failed: {r.stderr.strip() or r.returncode}")


@dataclass
class Cell:
    value: float | None = None
    error: str | None = None
    samples: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


@dataclass
class Row:
    key: str
    label: str
    unit: str
    better: str  # "higher" or "lower"
    ustack: Cell = field(default_factory=Cell)
    kernel: Cell = field(default_factory=Cell)
    note: str = ""  # how to read the row, printed under the table

    def ratio(self) -> float | None:
        u, k = self.ustack.value, self.kernel.value
        if u is None or k is None or k == 0:
            return None
        return u / k


def _ustack_counter(r: dict, key: str) -> int | None:
    """A counter from ustack's stopped line (closestorm); None where there is none to read
    (the kernel side, a self-test)."""
    if "ustack_counters_error" in r:
        raise ClientFailure(r["ustack_counters_error"])
    return r.get(key)


def storm_spurious_pct(r: dict) -> float | None:
    """closestorm: ustack's spurious retransmission timeouts, in % of the connections."""
    n = _ustack_counter(r, "tcp_spurious_rto")
    return None if n is None else 100 * n / r["connections"]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ns = f"ustack-bench-{os.getpid()}"
        self.ns_created = False
        self.ustack: Server | None = None
        self.kernel: Server | None = None
        self.ustack_start_error: str | None = None
        self.rows: list[Row] = []

    # -- namespace ---------------------------------------------------------------------

    def nsexec(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def ip_json(self, argv: list[str]) -> list[dict]:
        r = subprocess.run(
            ["ip", "-j", "-n", self.ns, *argv],
            capture_output=True,
            text=True,
            timeout=SETUP_TIMEOUT,
            check=False,
        )
        if r.returncode != 0:
            raise BenchError(f"`ip -j {shlex.join(argv)}` failed: {r.stderr.strip()}")
        return json.loads(r.stdout or "[]")

    def tun_counters(self) -> dict[str, int] | None:
        """Packets and bytes through the TUN, seen from the kernel (tx = towards ustack)."""
        try:
            link = self.ip_json(["-s", "link", "show", "dev", DEV])[0]
            st = link["stats64"]
        except (BenchError, ValueError, LookupError, subprocess.TimeoutExpired):
            return None
        return {
            "to_ustack_packets": st["tx"]["packets"],
            "to_ustack_bytes": st["tx"]["bytes"],
            "from_ustack_packets": st["rx"]["packets"],
            "from_ustack_bytes": st["rx"]["bytes"],
        }

    def check_ustack_address(self) -> None:
        """The ustack column must not measure the kernel: 10.77.0.2 is no kernel address."""
        for link in self.ip_json(["addr"]):
            for info in link.get("addr_info", []):
                if info.get("local") == USTACK_ADDR:
                    raise BenchError(
                        f"{USTACK_ADDR} is a kernel address on {link.get('ifname')} in the "
                        "namespace: the ustack column would measure the kernel"
                    )

    def setup(self) -> None:
        run_quiet(["ip", "netns", "add", self.ns])
        self.ns_created = True
        run_quiet(self.nsexec(["ip", "link", "set", "lo", "up"]))
        if self.args.self_test:
            # The "ustack" half is a second kernel server on 10.77.0.2 (checks the tool).
            run_quiet(self.nsexec(["ip", "addr", "add", f"{USTACK_ADDR}/32", "dev", "lo"]))
        # A persistent TUN owned by the namespace, as scripts/setup_tun.sh makes one; the
        # kernel server can bind 10.77.0.1 before (and even if) ustack attaches.
        run_quiet(self.nsexec(["ip", "tuntap", "add", "dev", DEV, "mode", "tun"]))
        run_quiet(self.nsexec(["ip", "link", "set", DEV, "mtu", str(self.args.mtu),
                               "txqueuelen", "10000"]))  # as scripts/setup_tun.sh
        run_quiet(self.nsexec(["ip", "addr", "add", f"{KERNEL_ADDR}/{PREFIX}", "dev", DEV]))
        run_quiet(self.nsexec(["ip", "link", "set", DEV, "up"]))

    def teardown(self) -> None:
        for srv in (self.ustack, self.kernel):
            if srv is not None:
                try:
                    srv.stop()
                except Exception as e:  # keep going: the namespace must go
                    print(f"bench: stopping {srv.label}: {e}", file=sys.stderr)
        if self.ns_created:
            with contextlib.suppress(Exception):
                subprocess.run(
                    self.nsexec(["ip", "link", "del", DEV]),
                    capture_output=True,
                    timeout=SETUP_TIMEOUT,
                    check=False,
                )
            r = subprocess.run(
                ["ip", "netns", "del", self.ns],
                capture_output=True,
                text=True,
                timeout=SETUP_TIMEOUT,
                check=False,
            )
            if r.returncode != 0:
                print(
                    f"bench: could not delete namespace {self.ns}: {r.stderr.strip()}",
                    file=sys.stderr,
                )
            else:
                self.ns_created = False

    # -- servers -----------------------------------------------------------------------

    def kernel_server_argv(self, host: str, ports: dict[str, int]) -> list[str]:
        spec = ",".join(f"{name}:{port}" for name, port in ports.items())
        return self.nsexec(
            [sys.executable, str(THIS), "--kernel-server", "--host", host, "--spec", spec]
        )

    def start_servers(self) -> None:
        self.start_kernel()
        self.start_ustack()

    def start_kernel(self) -> None:
        self.kernel = Server(
            "kernel", self.kernel_server_argv(KERNEL_ADDR, KERNEL_PORTS), READY_KERNEL
        )
        why = self.kernel.wait_ready(START_TIMEOUT)
        if why:
            raise BenchError(f"kernel-socket server did not start: {why}")

    def restart(self, side: str) -> None:
        """A fresh server process: the idle and churn scenarios measure RSS, which memory
        the process freed earlier (and keeps) would hide or inflate; closestorm reads the
        ustack server's counters, which earlier scenarios would have added to."""
        srv = self.ustack if side == "ustack" else self.kernel
        if srv is not None:
            srv.stop()
        if side == "kernel":
            self.start_kernel()
        else:
            self.start_ustack()

    def start_ustack(self) -> None:
        if self.args.self_test:
            argv = self.kernel_server_argv(USTACK_ADDR, USTACK_PORTS)
            ready = READY_KERNEL
        else:
            services = [f"{name}:{port}" for name, port in USTACK_PORTS.items()]
            profile = ["-m", "cProfile", "-o", self.args.profile] if self.args.profile else []
            argv = self.nsexec(
                [
                    sys.executable,
                    *profile,
                    "-m",
                    "ustack",
                    "serve",
                    "--backlog",
                    str(BACKLOG),
                    *(["--offload"] if self.args.offload else []),
                    "--dev",
                    DEV,
                    "--addr",
                    USTACK_ADDR,
                    "--kernel-addr",
                    f"{KERNEL_ADDR}/{PREFIX}",
                    "--mtu",
                    str(self.args.mtu),
                    *self.args.ustack_arg,
                    *services,
                ]
            )
            ready = READY_USTACK
        self.ustack = Server("ustack", argv, ready)
        why = self.ustack.wait_ready(START_TIMEOUT)
        if why:
            self.ustack_start_error = f"ustack did not start: {why}"
            print(f"bench: {self.ustack_start_error}", file=sys.stderr)
        elif not self.args.self_test:
            self.check_ustack_address()

    # -- clients -----------------------------------------------------------------------

    def client_timeout(self, scenario: str) -> float:
        """Seconds before a client process is killed: its own bound plus 30 s."""
        if scenario == "churn":  # each ab window is killed 10 s after its -t at the latest
            return churn_windows(self.args.churn_seconds) * (CHURN_WINDOW + 10) + 30
        if scenario == "closestorm":  # opening within the limit, then the wait for closes
            return self.args.time_limit + STORM_WAIT + 30
        return self.args.time_limit + 30

    def run_client(self, scenario: str, host: str, port: int, server_pid: int,
                   tun: bool = False) -> dict:
        """Run one scenario's client in the namespace; ``tun``: it may count TUN drops."""
        a = self.args
        argv = [
            sys.executable,
            str(THIS),
            "--client",
            scenario,
            "--host",
            host,
            "--port",
            str(port),
            "--time-limit",
            str(a.time_limit),
            "--bytes",
            str(int(a.mb * MB)),
            "--conns",
            str(a.conns),
            "--concurrency",
            str(a.concurrency),
            "--rounds",
            str(a.rounds),
            "--ab-n",
            str(a.ab_n),
            "--ab-c",
            str(a.ab_c),
            "--wrk-seconds",
            str(a.wrk_seconds),
            "--wrk-c",
            str(a.wrk_c),
            "--idle-conns",
            str(a.idle_conns),
            "--churn-seconds",
            str(a.churn_seconds),
            "--storm-conns",
            str(a.storm_conns),
            *(["--storm-tun"] if tun else []),
            "--server-pid",
            str(server_pid),
        ]
        timeout = self.client_timeout(scenario)
        try:
            r = subprocess.run(
                self.nsexec(argv),
                cwd=REPO,
                env=child_env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                start_new_session=True,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"client hung past {timeout:g} s and was killed"}
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        if lines:
            with contextlib.suppress(ValueError):
                return json.loads(lines[-1])
        err = r.stderr.strip().splitlines()
        return {"error": f"client exited {r.returncode}: {err[-1] if err else 'no output'}"}

    def measure(self, side: str, scenario: str, key: str, cell: Cell) -> dict | None:
        if side == "ustack":
            srv, host, ports = self.ustack, USTACK_ADDR, USTACK_PORTS
            if self.ustack_start_error:
                cell.error = self.ustack_start_error
                return None
        else:
            srv, host, ports = self.kernel, KERNEL_ADDR, KERNEL_PORTS
        assert srv is not None
        if not srv.alive():
            cell.error = f"{srv.label} {exit_text(srv.proc.returncode)}: {srv.last_line()}"
            return None
        if scenario in ("idle", "churn", "closestorm"):
            self.restart(side)
            srv = self.ustack if side == "ustack" else self.kernel
            if side == "ustack" and self.ustack_start_error:
                cell.error = self.ustack_start_error
                return None
            assert srv is not None
        port = ports[
            "discard" if scenario == "upload"
            else "echo" if scenario in ("echo", "idle", "closestorm") else "http"
        ]
        count_tun = side == "ustack" and not self.args.self_test
        before = self.tun_counters() if count_tun else None
        cpu0 = srv.cpu_seconds()
        res = self.run_client(scenario, host, port, srv.proc.pid, tun=count_tun)
        cpu1 = srv.cpu_seconds()
        if scenario == "closestorm" and count_tun and "error" not in res:
            res.update(self.final_counters(srv))  # stops ustack: closestorm comes last
        after = self.tun_counters() if before is not None else None
        if before is not None and after is not None:
            res["tun"] = {k: after[k] - before[k] for k in before}
        if cpu0 is not None and cpu1 is not None:
            res["server_cpu_s"] = round(cpu1 - cpu0, 3)
        if "error" in res:
            cell.error = res["error"]
            if "tun" in res:
                t = res["tun"]
                cell.error += (
                    f"; TUN meanwhile: {t['to_ustack_packets']} packets to ustack,"
                    f" {t['from_ustack_packets']} from it"
                )
            if not srv.alive():
                cell.error += f"; {srv.label} {exit_text(srv.proc.returncode)}"
            return None
        return res

    def wait_tun_quiet(self) -> float:
        """Seconds until the TUN has carried no packet for STORM_QUIET (at most
        STORM_SETTLE_MAX): the client's sockets have all closed, but ustack may still be
        retransmitting a FIN whose ACK the TUN dropped, and those timeouts belong to the
        storm."""
        t0 = time.monotonic()
        last = self.tun_counters()
        quiet_since = t0
        while time.monotonic() - t0 < STORM_SETTLE_MAX:
            time.sleep(0.25)
            now = self.tun_counters()
            if now is None or now != last:
                last, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= STORM_QUIET:
                break
        return time.monotonic() - t0

    def final_counters(self, srv: Server) -> dict:
        """closestorm, ustack side: stop the (fresh) server once the storm is over and read
        its counters line; tcp_rto and tcp_spurious_rto, or ustack_counters_error."""
        settle = self.wait_tun_quiet()
        srv.stop()
        line = srv.last_line_with(STOPPED_PREFIX)
        out: dict = {"settle_s": round(settle, 2), "ustack_stopped_line": line}
        if line is None:
            out["ustack_counters_error"] = (f"no '{STOPPED_PREFIX.strip()}' line: "
                                            f"{exit_text(srv.exit_code)}, {srv.last_line()}")
            return out
        counters = parse_counters(line)
        out["tcp_rto"] = counters.get("tcp_rto", 0)
        out["tcp_spurious_rto"] = counters.get("tcp_spurious_rto", 0)
        return out

    def scenario(self, scenario: str, rows: list[tuple[Row, Callable[[dict], float | None]]],
                 repeat: int) -> None:
        for _ in range(repeat):
            for side in ("kernel", "ustack"):
                cells = [getattr(row, side) for row, _ in rows]
                if any(c.error for c in cells):
                    continue  # a side that failed once stays failed
                self.progress(f"{scenario} / {side}")
                res = self.measure(side, scenario, rows[0][0].key, cells[0])
                if res is None:
                    for c in cells[1:]:
                        c.error = cells[0].error
                    continue
                for (_row, pick), c in zip(rows, cells, strict=True):
                    c.extra = {k: v for k, v in res.items() if k != "value"}
                    try:
                        c.samples.append(pick(res))  # None: not applicable to this side
                    except ClientFailure as e:  # this figure only is missing
                        c.error = str(e)
        for row, _ in rows:
            for c in (row.ustack, row.kernel):
                values = [v for v in c.samples if v is not None]
                if c.error is None and values:
                    c.value = statistics.median(values)

    def progress(self, text: str) -> None:
        if not self.args.json:
            print(f"  ... {text}", file=sys.stderr, flush=True)

    def run(self) -> None:
        a = self.args
        conc = a.concurrency
        up = Row("upload", f"upload {a.mb:g} MB into discard", "MB/s", "higher")
        down = Row("download", f"download GET /bytes/{int(a.mb * MB)}", "MB/s", "higher")
        conns = Row(
            "conns", f"HTTP/1.0 connections ({a.conns}, {conc} parallel)", "conn/s", "higher"
        )
        p50 = Row("echo_p50", f"echo 1 B round trip p50 ({a.rounds} rounds)", "us", "lower")
        p99 = Row("echo_p99", "echo 1 B round trip p99", "us", "lower")
        ab = Row("ab", f"ab -n {a.ab_n} -c {a.ab_c} (HTTP/1.0, new connection each)",
                 "req/s", "higher")
        wrk = Row("wrk", f"wrk -t1 -c{a.wrk_c} -d{a.wrk_seconds:g}s (keep-alive)", "req/s",
                  "higher")
        wrk99 = Row("wrk_p99", "wrk latency p99", "us", "lower")
        idle = Row("idle", f"{a.idle_conns} idle connections: server RSS each", "KB", "lower")
        churn_s = churn_windows(a.churn_seconds) * CHURN_WINDOW
        churn_rss = Row(
            "churn_rss", f"churn: server RSS peak (ab -c {CHURN_C} HTTP/1.0, {churn_s:g} s)",
            "MB", "lower",
            note="churn RSS: the kernel column is the uvloop server process only; the "
            "kernel's TIME-WAIT sockets live in kernel memory, in no process's RSS",
        )
        churn_first = Row("churn_rps", f"churn: req/s first {CHURN_WINDOW:g} s", "req/s",
                          "higher")
        churn_ratio = Row(
            "churn_rps_ratio",
            f"churn: req/s last {CHURN_WINDOW:g} s / first {CHURN_WINDOW:g} s",
            "ratio", "higher",
        )
        storm = Row("closestorm", f"close storm ({a.storm_conns} conns): all closed after",
                    "s", "lower")
        storm_retrans = Row(
            "closestorm_retrans", "close storm: client retransmissions", "segments", "lower",
            note="close storm retransmissions and timeouts: kernel TCP in the namespace "
            "(RetransSegs, TCPTimeouts) from the first close() to all closed; the ustack "
            "column is the clients' sockets only, the kernel column includes the kernel "
            "server's",
        )
        storm_timeouts = Row("closestorm_timeouts", "close storm: client retransmission "
                             "timeouts", "RTOs", "lower")
        storm_drops = Row(
            "closestorm_tun_drops", "close storm: TUN queue drops", "packets", "lower",
            note="close storm TUN drops: the TUN's tx dropped towards ustack; the kernel "
            "server is reached over loopback (n/a)",
        )
        storm_rto = Row("closestorm_ustack_rto", "close storm: ustack RTOs (tcp_rto)", "RTOs",
                        "lower")
        storm_spurious = Row(
            "closestorm_spurious", "close storm: ustack spurious RTOs (% of conns)", "%",
            "lower",
            note="close storm ustack RTOs: from the counters line of the ustack server, "
            "stopped once the TUN is quiet; spurious: proved so by timestamps (RFC 3522)",
        )
        rss = Row("rss", "peak RSS of the server process (VmHWM)", "MB", "lower")
        chosen = set(a.scenarios)
        plan = [
            ("upload", [up], [(up, lambda r: r["value"])]),
            ("download", [down], [(down, lambda r: r["value"])]),
            ("conns", [conns], [(conns, lambda r: r["value"])]),
            ("ab", [ab], [(ab, lambda r: r["value"])]),
            ("wrk", [wrk, wrk99], [(wrk, lambda r: r["value"]),
                                   (wrk99, lambda r: r.get("latency_p99_us", math.nan))]),
            ("echo", [p50, p99], [(p50, lambda r: r["p50_us"]), (p99, lambda r: r["p99_us"])]),
            ("idle", [idle], [(idle, lambda r: r["value"])]),
            ("churn", [churn_rss, churn_first, churn_ratio],
             [(churn_rss, lambda r: r["value"]), (churn_first, lambda r: r["rps_first"]),
              (churn_ratio, lambda r: r["rps_last_over_first"])]),
            # last: it stops the ustack server for its final counters
            ("closestorm", [storm, storm_retrans, storm_timeouts, storm_drops, storm_rto,
                            storm_spurious],
             [(storm, lambda r: r["value"]), (storm_retrans, lambda r: r["retrans_segs"]),
              (storm_timeouts, lambda r: r["tcp_timeouts"]),
              (storm_drops, lambda r: r.get("tun_tx_dropped")),
              (storm_rto, lambda r: _ustack_counter(r, "tcp_rto")),
              (storm_spurious, storm_spurious_pct)]),
        ]
        self.rows = [row for name, rows, _ in plan if name in chosen for row in rows] + [rss]
        for name, _, picks in plan:
            if name in chosen:
                # churn is long and already made of windows, closestorm ends with the ustack
                # server stopped: once per side
                once = name in ("churn", "closestorm")
                self.scenario(name, picks, 1 if once else a.repeat)

        for side, srv in (("ustack", self.ustack), ("kernel", self.kernel)):
            cell = getattr(rss, side)
            if side == "ustack" and self.ustack_start_error:
                cell.error = self.ustack_start_error
            elif srv is not None and srv.peak_rss_mb_at_stop is not None:
                cell.value = srv.peak_rss_mb_at_stop  # closestorm stopped it: its peak then
            elif srv is None or not srv.alive():
                cell.error = "process not running"
            else:
                cell.value = srv.peak_rss_mb()
                if cell.value is None:
                    cell.error = "no VmHWM in /proc"

    # -- output ------------------------------------------------------------------------

    def report(self) -> dict:
        a = self.args
        out_rows = []
        for row in self.rows:
            out_rows.append(
                {
                    "scenario": row.key,
                    "label": row.label,
                    "unit": row.unit,
                    "better": row.better,
                    "ustack": row.ustack.value,
                    "kernel": row.kernel.value,
                    "ratio_ustack_over_kernel": row.ratio(),
                    "ustack_error": row.ustack.error,
                    "kernel_error": row.kernel.error,
                    "ustack_samples": row.ustack.samples,
                    "kernel_samples": row.kernel.samples,
                    "ustack_detail": row.ustack.extra,
                    "kernel_detail": row.kernel.extra,
                    "note": row.note,
                }
            )
        u = self.ustack
        return {
            "command": shlex.join([sys.executable, *sys.argv]),
            "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "host": {
                "kernel": os.uname().release,
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
            },
            "params": {
                "mb": a.mb,
                "conns": a.conns,
                "concurrency": a.concurrency,
                "rounds": a.rounds,
                "mtu": a.mtu,
                "offload": a.offload,
                "scenarios": list(a.scenarios),
                "ab_n": a.ab_n,
                "ab_c": a.ab_c,
                "wrk_seconds": a.wrk_seconds,
                "wrk_c": a.wrk_c,
                "idle_conns": a.idle_conns,
                "churn_seconds": a.churn_seconds,
                "storm_conns": a.storm_conns,
                "repeat": a.repeat,
                "time_limit": a.time_limit,
                "self_test": a.self_test,
            },
            "ustack_server": "kernel (self-test)" if a.self_test else "python -m ustack serve",
            "kernel_server": "ustack.services protocols on uvloop, kernel sockets",
            "rows": out_rows,
            "ustack_exit": None
            if u is None
            else {
                "status": u.exit_code,
                "exited_before_sigterm": u.exited_early,
                "killed_after_sigterm_timeout": u.killed_after_timeout,
                "seconds_after_sigterm": u.stop_seconds,
                "last_line": u.last_line(),
            },
        }


def fmt(v: float | None) -> str:
    if v is None:  # a figure that does not apply to this side (no TUN, no ustack counters)
        return "n/a"
    if isinstance(v, int):  # a count
        return str(v)
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def render_table(rep: dict) -> str:
    """A Markdown table; long failure reasons become numbered notes under it."""
    header = ["scenario", "unit", "ustack", "kernel", "ustack/kernel", "better"]
    body = []
    notes: list[str] = []

    def cell(value: float | None, error: str | None) -> str:
        if not error:
            return fmt(value)
        if error in notes:
            n = notes.index(error) + 1
        else:
            notes.append(error)
            n = len(notes)
        return f"FAILED ({error[:40]}{'...' if len(error) > 40 else ''}) [{n}]"

    for r in rep["rows"]:
        ratio = r["ratio_ustack_over_kernel"]
        body.append(
            [
                r["label"],
                r["unit"],
                cell(r["ustack"], r["ustack_error"]),
                cell(r["kernel"], r["kernel_error"]),
                "-" if ratio is None else f"{ratio:.3f}",
                r["better"],
            ]
        )
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    out += [f"[{i}] {text}" for i, text in enumerate(notes, 1)]
    out += [f"note: {r['note']}" for r in rep["rows"] if r.get("note")]
    return "\n".join(out)


def side_details(rep: dict, scenario: str) -> list[tuple[str, dict, dict]]:
    """(side, its detail, the row) for each side of `scenario`'s row that ran cleanly."""
    row = next((r for r in rep["rows"] if r["scenario"] == scenario), None)
    if row is None:
        return []
    return [(side, row[f"{side}_detail"], row) for side in ("ustack", "kernel")
            if not row[f"{side}_error"] and row[f"{side}_detail"]]


def print_churn(rep: dict) -> None:
    """The churn scenario's windows, side by side: the table has only first and last."""
    for side, d, _row in side_details(rep, "churn_rss"):
        print(
            f"churn {side}: req/s per {d['window_seconds']:g} s window "
            f"{[round(x) for x in d['windows']]}; RSS MB at start {d['rss_mb_start']:.1f}, "
            f"after each window {d['rss_mb_windows']}; {d['requests']} requests, "
            f"{d['failed']} failed"
        )


def print_closestorm(rep: dict) -> None:
    """The close storm's details per side, and ustack's whole counters line."""
    for side, d, row in side_details(rep, "closestorm"):
        text = (f"closestorm {side}: {d['connections']} close() calls in "
                f"{d['close_loop_s'] * 1000:.0f} ms, all closed after {row[side]:.2f} s "
                f"({d['polls']} looks at /proc/net/tcp, the last {d['last_poll_s'] * 1000:.0f}"
                f" ms); kernel TCP: {d['retrans_segs']} retransmissions, {d['tcp_timeouts']}"
                f" timeouts, {d['tcp_loss_probes']} tail loss probes")
        if "tun_tx_dropped" in d:
            text += f"; TUN drops {d['tun_tx_dropped']}"
        if "tcp_rto" in d:
            text += (f"; ustack tcp_rto {d['tcp_rto']}, tcp_spurious_rto "
                     f"{d['tcp_spurious_rto']} (stopped {d['settle_s']:g} s after the"
                     " client, the TUN quiet)")
        print(text)
        if d.get("ustack_stopped_line"):
            print(f"closestorm ustack server's last line: {d['ustack_stopped_line']}")


# Where a profiled function's own time belongs, by its file (built-ins count for their
# callers' files): the layers of ARCHITECTURE.md.
LAYERS = (
    ("TUN device I/O", ("ustack/tun.py",)),
    ("IPv4 and TCP headers, checksums", ("ustack/ip.py", "ustack/tcp/segment.py",
                                         "ustack/tcp/options.py", "ustack/checksum.py",
                                         "ustack/vnet.py", "ustack/host/network.py")),
    ("TCP core and host", ("ustack/tcp/", "ustack/host/")),
    ("driver and asyncio API", ("ustack/aio.py", "ustack/api/")),
    ("application (HTTP, echo)", ("ustack/services/", "httptools")),
    ("event loop (uvloop, waiting included)", ("asyncio/runners.py", "uvloop", "asyncio/")),
)


_STARTUP = ("compile", "builtins.exec", "marshal", "_imp.", "posix.stat", "__build_class__")


def profile_layers(stats: dict) -> dict[str, float]:
    """Own time per layer; the start-up (imports, compiling) is left out."""
    def layer_of(filename: str) -> str | None:
        if "importlib" in filename or filename.startswith("<"):
            return None
        for name, parts in LAYERS:
            if any(part in filename for part in parts):
                return name
        return "other"

    totals: dict[str, float] = {}
    for (filename, _, func), (_, _, own, _, callers) in stats.items():
        if filename == "~":  # a built-in: its time goes to whoever called it
            called = sum(c[2] for c in callers.values()) or 1.0
            for (cfile, _, _), c in callers.items():
                layer = layer_of(cfile)
                if layer is not None and not any(w in func for w in _STARTUP):
                    totals[layer] = totals.get(layer, 0.0) + own * c[2] / called
            continue
        layer = layer_of(filename)
        if layer is not None:
            totals[layer] = totals.get(layer, 0.0) + own
    return totals


def print_profile(path: str, top: int = 25) -> None:
    """Where ustack serve spent its time (cProfile): per layer, then the top functions."""
    import io
    import pstats

    if not os.path.exists(path):
        print(f"no profile in {path}: ustack serve did not exit normally")
        return
    stats = pstats.Stats(path)
    layers = profile_layers(stats.stats)  # type: ignore[attr-defined]
    total = sum(layers.values()) or 1.0
    print(f"\nustack serve profile ({path}): {total:.2f} s of own time (under cProfile)")
    for name, seconds in sorted(layers.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds / total * 100:5.1f} %  {name}")
    out = io.StringIO()
    pstats.Stats(path, stream=out).sort_stats("tottime").print_stats(top)
    print(f"top {top} functions by own time:")
    print(out.getvalue().split("\n", 4)[-1].rstrip())


def check_environment() -> None:
    if sys.platform != "linux":
        raise BenchError("this benchmark needs Linux (TUN devices and network namespaces)")
    if os.geteuid() != 0:
        raise BenchError(
            "this benchmark must run as root (it creates a network namespace "
            "and a TUN device): try sudo"
        )
    if not os.path.exists("/dev/net/tun"):
        raise BenchError("/dev/net/tun is missing: load the tun module (modprobe tun)")
    if shutil.which("ip") is None:
        raise BenchError("the `ip` command (iproute2) is not installed")


def _scenarios(text: str) -> tuple[str, ...]:
    if text.strip() == "all":
        return SCENARIOS
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or '(none)'}: choose from "
            f"{','.join(SCENARIOS)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="ustack vs the kernel's TCP, side by side in a private network namespace.",
    )
    p.add_argument(
        "--mb",
        type=float,
        help="megabytes (10^6 B) for upload and download (default 20; --quick: 2)",
    )
    p.add_argument(
        "--conns",
        type=int,
        help="connections for the connections/s scenario (default 500; --quick: 100)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="parallel client threads for connections/s (default 4)",
    )
    p.add_argument("--rounds", type=int, help="echo round trips (default 10000; --quick: 200)")
    p.add_argument("--ab-n", type=int, help="ab requests (default 4000; --quick: 500)")
    p.add_argument("--ab-c", type=int, default=20, help="ab concurrency (default 20)")
    p.add_argument("--wrk-seconds", type=float,
                   help="wrk duration in seconds (default 5; --quick: 2)")
    p.add_argument("--wrk-c", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument("--idle-conns", type=int,
                   help="concurrent idle connections (default 10000; --quick: 1000)")
    p.add_argument("--churn-seconds", type=float,
                   help=f"length of the churn scenario per side, in whole "
                   f"{CHURN_WINDOW:g} s windows (default 120; --quick: 30)")
    p.add_argument("--storm-conns", type=int,
                   help="connections the closestorm scenario opens, then closes all at once "
                   "(default 10000; --quick: 1000)")
    p.add_argument(
        "--scenarios",
        type=_scenarios,
        default=DEFAULT_SCENARIOS,
        help=f"comma-separated subset of {','.join(SCENARIOS)}, or 'all' (default: all "
        "but churn, which takes 2 x --churn-seconds, and closestorm, which opens "
        "--storm-conns connections, closes them all in one loop, waits up to "
        f"{STORM_WAIT:g} s for the closes and stops the ustack server for its counters: "
        "name them to run them)",
    )
    p.add_argument(
        "--offload",
        action="store_true",
        help="run ustack serve with --offload (IFF_VNET_HDR, checksum and TSO offloads)",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="run ustack serve under cProfile, write FILE, print its top functions",
    )
    p.add_argument(
        "--mtu",
        type=int,
        default=1500,
        help="MTU of the TUN device, also passed to ustack serve (default 1500)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        help="run every scenario N times per side, interleaved, and report the median "
        "(default 3; --quick: 1)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=30.0,
        help="seconds each scenario may take per side (default 30; connections/s "
        "stops at min(this, 20))",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 2 MB, 100 connections, 200 rounds"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--self-test",
        action="store_true",
        help="replace ustack by a second kernel-socket server (checks the tool: "
        "ratios should be near 1)",
    )
    p.add_argument(
        "--ustack-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `ustack serve` (repeatable)",
    )
    # internal modes (the tool re-executes itself inside the namespace)
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--kernel-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--host", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    p.add_argument("--server-pid", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--storm-tun", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = (
        {"mb": 2.0, "conns": 100, "rounds": 200, "repeat": 1, "ab_n": 500,
         "wrk_seconds": 2.0, "idle_conns": 1000, "churn_seconds": 2 * CHURN_WINDOW,
         "storm_conns": 1000}
        if args.quick
        else {"mb": 20.0, "conns": 500, "rounds": 10000, "repeat": 3, "ab_n": 4000,
              "wrk_seconds": 5.0, "idle_conns": 10000, "churn_seconds": 120.0,
              "storm_conns": 10000}
    )
    for name, value in defaults.items():  # --quick only changes what was not given
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("mb", "conns", "concurrency", "rounds", "repeat", "time_limit", "ab_n", "ab_c",
                 "wrk_seconds", "wrk_c", "idle_conns", "storm_conns"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if not 576 <= args.mtu <= 65535:
        p.error("--mtu must be between 576 and 65535")
    if args.churn_seconds < CHURN_WINDOW:
        p.error(f"--churn-seconds must be at least one window ({CHURN_WINDOW:g} s)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client:
        if args.client == "conns":
            args.time_limit = min(args.time_limit, 20.0)
        return client_main(args)
    if args.kernel_server:
        return kernel_server_main(args.host, args.spec)

    try:
        check_environment()
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    bench = Bench(args)
    status = 0
    try:
        bench.setup()
        bench.start_servers()
        bench.run()
        # stop the servers now so the report includes ustack's exit after SIGTERM
        for srv in (bench.ustack, bench.kernel):
            if srv is not None:
                srv.stop()
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print("bench: interrupted, cleaning up", file=sys.stderr)
        status = 130
    finally:
        bench.teardown()
    if status:
        return status

    rep = bench.report()
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    p = rep["params"]
    print(
        f"ustack benchmark  {rep['date']}  Linux {rep['host']['kernel']}, "
        f"{rep['host']['cpus']} CPUs, Python {rep['host']['python']}, MTU {p['mtu']}"
        + (", offload" if p["offload"] else "")
        + ("  [SELF-TEST: both sides are kernel servers]" if p["self_test"] else "")
    )
    print(render_table(rep))
    for r in rep["rows"]:
        t = r["ustack_detail"].get("tun")
        if not t or r["scenario"] in ("echo_p99", "churn_rps", "churn_rps_ratio") or (
            r["scenario"].startswith("closestorm_")
        ):
            continue
        ti, to = t["to_ustack_packets"], t["from_ustack_packets"]
        cpu_u = r["ustack_detail"].get("server_cpu_s")
        cpu_k = r["kernel_detail"].get("server_cpu_s")
        cpu = (
            ""
            if cpu_u is None or cpu_k is None
            else f"; server process CPU s: ustack {cpu_u:.2f}, kernel {cpu_k:.2f}"
        )
        name = r["scenario"].removesuffix("_p50").removesuffix("_rss")
        print(
            f"{name} (last run): TUN {ti} packets to ustack"
            f" (avg {t['to_ustack_bytes'] / max(ti, 1):.0f} B), {to} from ustack"
            f" (avg {t['from_ustack_bytes'] / max(to, 1):.0f} B){cpu}"
        )
    print_churn(rep)
    print_closestorm(rep)
    if args.profile:
        print_profile(args.profile)
    ex = rep["ustack_exit"]
    if ex is not None and not args.self_test:
        if ex["exited_before_sigterm"]:
            print(
                f"ustack serve {exit_text(ex['status'])} before the benchmark stopped it "
                f"(last stderr line: {ex['last_line']})"
            )
        elif ex["killed_after_sigterm_timeout"]:
            print(
                f"ustack serve did not exit within {STOP_TIMEOUT:g} s of SIGTERM and was killed"
                f" (last stderr line: {ex['last_line']})"
            )
        elif ex["status"] == 0 and ex["seconds_after_sigterm"] is not None:
            print(
                f"ustack serve exited 0, {ex['seconds_after_sigterm']:.2f} s after SIGTERM;"
                f" its last line: {ex['last_line']}"
            )
        else:
            print(
                f"ustack serve exit status {ex['status']} after SIGTERM "
                f"(last stderr line: {ex['last_line']})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
