"""What every part of the benchmark shares: addresses, ports, timeouts, scenario names."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
THIS = REPO / "tools" / "bench.py"  # the command, re-run inside the namespace

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
SCENARIOS = ("upload", "download", "conns", "ab", "wrk", "siege", "h2load", "echo", "idle",
             "churn", "closestorm")
SIEGE_BYTES = 100_000  # the body each siege transaction fetches (GET /bytes/N)
H2LOAD_C = 100  # h2load --h1 connections ...
H2LOAD_M = 10  # ... and requests in flight on each (HTTP/1.1 pipelining)
# churn takes 2 x --churn-seconds (120 s by default) on its own and closestorm stops the
# ustack server for its final counters: only when named
DEFAULT_SCENARIOS = tuple(s for s in SCENARIOS if s not in ("churn", "closestorm"))


class BenchError(Exception):
    """An environment problem: reported as one line, exit status 2."""
