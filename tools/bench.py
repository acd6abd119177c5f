#!/usr/bin/env python3
"""Benchmark ustack against the kernel's own TCP, side by side, in one run.

Everything happens inside a private network namespace ``ustack-bench-<random>`` that this
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

Usage (root, Linux, /dev/net/tun, iproute2; ab, wrk, siege and h2load for their
scenarios)::

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
import json
import os
import shutil
import signal
import sys
from pathlib import Path

# The tool's parts (tools/benchkit/) and the package, when run as `python tools/bench.py`.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from benchkit.clients import client_main
from benchkit.common import (
    CHURN_WINDOW,
    DEFAULT_SCENARIOS,
    SCENARIOS,
    STOP_TIMEOUT,
    STORM_WAIT,
    BenchError,
)
from benchkit.report import print_churn, print_closestorm, print_profile, render_table
from benchkit.run import Bench
from benchkit.servers import exit_text, kernel_server_main


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
    p.add_argument("--siege-reps", type=int,
                   help="siege repetitions per user, siege -r (default 100; --quick: 20): a "
                   "count, since siege 4.0.7 with -t can hang at its end")
    p.add_argument("--siege-c", type=int, default=25, help="siege users (default 25)")
    p.add_argument("--h2load-n", type=int,
                   help="h2load --h1 requests (default 20000; --quick: 2000)")
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
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ustack serve's checksum and TSO offloads (IFF_VNET_HDR), on by default as "
        "in ustack serve; --no-offload runs ustack serve --no-offload",
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
        "--workers",
        type=int,
        default=1,
        help="ustack serve --workers N on a multi-queue TUN, and N kernel-socket server "
        "processes sharing each port (SO_REUSEPORT) (default 1)",
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
         "wrk_seconds": 2.0, "siege_reps": 20, "h2load_n": 2000, "idle_conns": 1000,
         "churn_seconds": 2 * CHURN_WINDOW,
         "storm_conns": 1000}
        if args.quick
        else {"mb": 20.0, "conns": 500, "rounds": 10000, "repeat": 3, "ab_n": 4000,
              "wrk_seconds": 5.0, "siege_reps": 100, "h2load_n": 20000,
              "idle_conns": 10000, "churn_seconds": 120.0,
              "storm_conns": 10000}
    )
    for name, value in defaults.items():  # --quick only changes what was not given
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("mb", "conns", "concurrency", "rounds", "repeat", "time_limit", "ab_n", "ab_c",
                 "wrk_seconds", "wrk_c", "siege_reps", "siege_c", "h2load_n", "idle_conns",
                 "storm_conns", "workers"):
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
        return kernel_server_main(args.host, args.spec, args.workers)

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
        + (", offload" if p["offload"] else ", no offload")
        + (f", {p['workers']} workers each side" if p["workers"] > 1 else "")
        + f", {p.get('core', 'python')} core"
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
