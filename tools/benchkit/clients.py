"""The client side of each scenario: runs inside the namespace (`bench.py --client
SCENARIO`) against one server, prints one JSON object."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import socket
import statistics
import subprocess
import threading
import time

from benchkit.common import (
    CHURN_C,
    CHURN_WINDOW,
    CLOSING_STATES,
    DEV,
    H2LOAD_C,
    H2LOAD_M,
    IDLE_CLOSE_BATCH,
    IDLE_CLOSE_PAUSE,
    MB,
    SETUP_TIMEOUT,
    SIEGE_BYTES,
    STORM_POLL,
    STORM_SAMPLE,
    STORM_WAIT,
)

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
    """Run a load generator (ab, wrk, siege, h2load) bounded in time; its stdout, or
    ClientFailure."""
    if shutil.which(argv[0]) is None:
        package = {"ab": "apache2-utils", "h2load": "nghttp2-client"}.get(argv[0], argv[0])
        raise ClientFailure(f"{argv[0]} is not installed (apt-get install {package})")
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


def client_siege(host: str, port: int, reps: int, users: int, limit: float) -> dict:
    """siege -b (no think time): ``users`` simulated users each fetching a 100 KB body
    (``GET /bytes/100000``) ``reps`` times; its JSON summary. A count, not siege's -t:
    siege 4.0.7 with -t hung at its end against the kernel's server (and ignored
    SIGTERM), one run in three; with -r it never did."""
    out = _run_tool(["siege", "-b", "-c", str(users), "-r", str(reps),
                     f"http://{host}:{port}/bytes/{SIEGE_BYTES}"], limit)
    try:
        stats = json.loads(out[out.index("{"):out.rindex("}") + 1])
        rate = float(stats["transaction_rate"])
        done, failed = int(stats["successful_transactions"]), int(stats["failed_transactions"])
    except (ValueError, KeyError) as e:
        raise ClientFailure(f"no figures in siege's output: {out[-200:]!r}") from e
    if failed or not done:
        raise ClientFailure(f"siege: {failed} failed transactions, {done} successful")
    return {"value": rate, "transactions": done, "users": users, "reps": reps,
            "body_bytes": SIEGE_BYTES}


def client_h2load(host: str, port: int, count: int, limit: float) -> dict:
    """h2load --h1: ``count`` GET / over H2LOAD_C keep-alive connections with H2LOAD_M
    requests pipelined on each."""
    out = _run_tool(["h2load", "--h1", "-c", str(H2LOAD_C), "-m", str(H2LOAD_M),
                     "-n", str(count), "-T", "10", f"http://{host}:{port}/"], limit)
    finished = _field(out, "finished in")
    requests = _field(out, "requests:")
    if finished is None or requests is None:
        raise ClientFailure(f"no figures in h2load's output: {out[-200:]!r}")
    counts = {word: int(n) for n, word in
              (part.split()[:2] for part in requests.replace(",", " ,").split(",")
               if len(part.split()) >= 2)}
    if counts.get("succeeded", 0) < count:
        raise ClientFailure(f"h2load: {requests}")
    rate = float(finished.split(",")[1].split()[0])
    return {"value": rate, "requests": counts["succeeded"], "connections": H2LOAD_C,
            "pipelined": H2LOAD_M}


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
        run = {
            "upload": lambda: client_upload(host, port, args.bytes, limit),
            "download": lambda: client_download(host, port, args.bytes, limit),
            "conns": lambda: client_conns(host, port, args.conns, args.concurrency, limit),
            "echo": lambda: client_echo(host, port, args.rounds, limit),
            "ab": lambda: client_ab(host, port, args.ab_n, args.ab_c, limit),
            "wrk": lambda: client_wrk(host, port, args.wrk_seconds, args.wrk_c, limit),
            "siege": lambda: client_siege(host, port, args.siege_reps, args.siege_c,
                                          limit),
            "h2load": lambda: client_h2load(host, port, args.h2load_n, limit),
            "idle": lambda: client_idle(host, port, args.idle_conns, args.server_pid, limit),
            "churn": lambda: client_churn(host, port, args.churn_seconds, args.server_pid),
            "closestorm": lambda: client_closestorm(host, port, args.storm_conns,
                                                    args.storm_tun, limit),
        }.get(scen)
        if run is None:
            raise ClientFailure(f"unknown scenario {scen}")
        result = run()
    except (ClientFailure, OSError) as e:
        msg = str(e) if isinstance(e, ClientFailure) else f"{type(e).__name__}: {e}"
        print(json.dumps({"error": msg}))
        return 1
    print(json.dumps(result))
    return 0
