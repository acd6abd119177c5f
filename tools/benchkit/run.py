"""The run: the namespace and TUN, both servers, each scenario on both sides interleaved,
and the report's figures."""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchkit.clients import ClientFailure, churn_windows
from benchkit.common import (
    BACKLOG,
    CHURN_C,
    CHURN_WINDOW,
    DEV,
    H2LOAD_C,
    H2LOAD_M,
    KERNEL_ADDR,
    KERNEL_PORTS,
    MB,
    PREFIX,
    READY_KERNEL,
    READY_USTACK,
    REPO,
    SETUP_TIMEOUT,
    SIEGE_BYTES,
    START_TIMEOUT,
    STORM_QUIET,
    STORM_SETTLE_MAX,
    STORM_WAIT,
    THIS,
    USTACK_ADDR,
    USTACK_PORTS,
    BenchError,
)
from benchkit.servers import STOPPED_PREFIX, Server, child_env, exit_text, parse_counters, run_quiet
from ustack import compiled_core
from ustack.netns import Namespace, NamespaceError


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
        self.netns: Namespace | None = None  # ustack-bench-<random>, made by setup
        self.ustack: Server | None = None
        self.kernel: Server | None = None
        self.ustack_start_error: str | None = None
        self.rows: list[Row] = []

    # -- namespace ---------------------------------------------------------------------

    def nsexec(self, argv: list[str]) -> list[str]:
        assert self.netns is not None
        return self.netns.wrap(argv)

    def ip_json(self, argv: list[str]) -> list[dict]:
        assert self.netns is not None
        r = subprocess.run(
            ["ip", "-j", "-n", self.netns.name, *argv],
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
        try:
            self.netns = Namespace("ustack-bench", timeout=SETUP_TIMEOUT)
        except (NamespaceError, subprocess.TimeoutExpired) as e:
            raise BenchError(str(e)) from e
        if self.args.self_test:
            # The "ustack" half is a second kernel server on 10.77.0.2 (checks the tool).
            run_quiet(self.nsexec(["ip", "addr", "add", f"{USTACK_ADDR}/32", "dev", "lo"]))
        # A persistent TUN owned by the namespace, as scripts/setup_tun.sh makes one; the
        # kernel server can bind 10.77.0.1 before (and even if) ustack attaches.
        # multi_queue for --workers: one queue per ustack worker.
        run_quiet(self.nsexec(["ip", "tuntap", "add", "dev", DEV, "mode", "tun",
                               *(["multi_queue"] if self.args.workers > 1 else [])]))
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
        if self.netns is not None:
            with contextlib.suppress(Exception):
                subprocess.run(
                    self.nsexec(["ip", "link", "del", DEV]),
                    capture_output=True,
                    timeout=SETUP_TIMEOUT,
                    check=False,
                )
            self.netns.close()
            if self.netns.close_error is not None:
                print(f"bench: could not delete namespace {self.netns.name}: "
                      f"{self.netns.close_error}", file=sys.stderr)
            else:
                self.netns = None

    # -- servers -----------------------------------------------------------------------

    def kernel_server_argv(self, host: str, ports: dict[str, int]) -> list[str]:
        spec = ",".join(f"{name}:{port}" for name, port in ports.items())
        return self.nsexec(
            [sys.executable, str(THIS), "--kernel-server", "--host", host, "--spec", spec,
             "--workers", str(self.args.workers)]
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
                    *([] if self.args.offload else ["--no-offload"]),
                    "--dev",
                    DEV,
                    "--addr",
                    USTACK_ADDR,
                    "--kernel-addr",
                    f"{KERNEL_ADDR}/{PREFIX}",
                    "--mtu",
                    str(self.args.mtu),
                    "--workers",
                    str(self.args.workers),
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
            "--siege-reps",
            str(a.siege_reps),
            "--siege-c",
            str(a.siege_c),
            "--h2load-n",
            str(a.h2load_n),
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
        siege = Row("siege", f"siege -b -c {a.siege_c} -r {a.siege_reps} "
                    f"(GET /bytes/{SIEGE_BYTES})", "trans/s", "higher")
        h2load = Row("h2load", f"h2load --h1 -c {H2LOAD_C} -m {H2LOAD_M} -n {a.h2load_n} "
                     "(pipelined)", "req/s", "higher")
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
        rss = Row("rss", "peak RSS of the server processes (VmHWM, summed)", "MB", "lower")
        chosen = set(a.scenarios)
        plan = [
            ("upload", [up], [(up, lambda r: r["value"])]),
            ("download", [down], [(down, lambda r: r["value"])]),
            ("conns", [conns], [(conns, lambda r: r["value"])]),
            ("ab", [ab], [(ab, lambda r: r["value"])]),
            ("wrk", [wrk, wrk99], [(wrk, lambda r: r["value"]),
                                   (wrk99, lambda r: r.get("latency_p99_us", math.nan))]),
            ("siege", [siege], [(siege, lambda r: r["value"])]),
            ("h2load", [h2load], [(h2load, lambda r: r["value"])]),
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
                "workers": a.workers,
                "core": "compiled" if compiled_core() else "python",
                "scenarios": list(a.scenarios),
                "ab_n": a.ab_n,
                "ab_c": a.ab_c,
                "wrk_seconds": a.wrk_seconds,
                "wrk_c": a.wrk_c,
                "siege_reps": a.siege_reps,
                "siege_c": a.siege_c,
                "h2load_n": a.h2load_n,
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
