"""What the `ustack` subcommands share: the log line, the event loop, signals, and the
Stack the device and link options ask for."""

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from ustack import tun
from ustack.api import Stack
from ustack.devices.stream import DEFAULT_MTU as STREAM_MTU
from ustack.devices.stream import StreamLink
from ustack.tcp.config import TcpConfig


def log(message: str, who: str = "ustack") -> None:
    """One line on stderr: `ustack: message` (a worker of `serve --workers` says
    `ustack[w1]:`)."""
    print(f"{who}: {message}", file=sys.stderr, flush=True)


def run_loop(coro: Coroutine[Any, Any, int], loop_name: str) -> int:
    """Run the command on the loop `--loop` names (uvloop where installed)."""
    if loop_name == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def on_signals(handler: Callable[[], object],
               signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, handler)


def make_stack(args: argparse.Namespace, **given: Any) -> Stack:
    """The Stack the options ask for, its fault injector set (installed when it starts);
    `given` overrides Stack arguments (a worker's device queue, capture and trace)."""
    options: dict[str, Any] = dict(
        kernel_addr=args.kernel_addr, mtu=args.mtu, pcap=args.pcap, addr6=args.addr6,
        kernel_addr6=args.kernel_addr6 if args.addr6 else None,
        link_local6=args.link_local6, tcp=TcpConfig(congestion=args.congestion),
        trace=sys.stderr if args.trace else None, offload=args.offload)
    link = getattr(args, "link", None)
    if link is not None:  # no TUN: packets over a kernel TCP connection
        kind, host, port = link
        opener = StreamLink.listen if kind == "tcp-listen" else StreamLink.connect
        options["device"] = opener(host, port, mtu=args.mtu or STREAM_MTU)
    options.update(given)
    stack = Stack(args.dev, args.addr, **options)
    if args.preset is not None:  # alone (`commands.preset_problem`)
        stack.preset(args.preset, seed=args.seed)
    delay_ms, jitter_ms, correlation = args.delay
    if args.preset is None:
        stack.faults(loss=args.loss, dup=args.dup, reorder=args.reorder,
                     corrupt=args.corrupt, delay_ms=delay_ms, jitter_ms=jitter_ms,
                     seed=args.seed, distribution=args.distribution,
                     correlation=correlation, reorder_gap=args.reorder_gap)
    if args.rate is not None or args.gemodel is not None:
        packets, nbytes = args.queue
        stack.shape(args.rate, queue=packets, queue_bytes=nbytes, gemodel=args.gemodel,
                    seed=args.seed)
    for rule in args.rule:
        stack.rule(rule)
    return stack


def log_faults(stack: Stack, who: str = "ustack") -> None:
    """The line that lets a lossy run be replayed: `ustack: faults loss=0.05 ... seed=N`."""
    if stack.fault_injector is not None:
        log("faults " + stack.fault_injector.describe(), who)
    if stack.shaper is not None:
        log("shaping " + stack.shaper.describe(), who)
    for rule in stack.rules:
        log("rule " + rule.describe(), who)


def warn_kernel_addr(args: argparse.Namespace, dev: str, created: bool) -> None:
    """--kernel-addr configures only a device ustack creates: say so when it was given
    for a device that already existed with other addresses."""
    if not args.kernel_addr_given or created:
        return
    have = tun.device_addresses(dev)
    if args.kernel_addr not in have:
        log(f"--kernel-addr {args.kernel_addr} ignored: {dev} already exists with "
            f"{', '.join(have) or 'no IPv4 address'} (delete it to have it made anew)")


def format_stats(stats: dict[str, int]) -> str:
    """`name=value, ...` sorted by name: the body of the `stats;` and `stopped;` lines."""
    return ", ".join(f"{k}={v}" for k, v in sorted(stats.items()))
