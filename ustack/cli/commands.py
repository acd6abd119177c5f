"""What each `ustack` subcommand does: `serve` (in `ustack.cli.serve`; across processes,
`ustack.cli.supervisor` and `ustack.cli.worker`), `sandbox` (`ustack.cli.sandbox`),
`connect`, `ladder`, `setup-tun`."""

import argparse
import asyncio
import ipaddress
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

from ustack import link
from ustack.api import Stack, tls
from ustack.cli import sandbox
from ustack.cli.args import (
    CONNECTING_NOTICE,
    DEFAULT_ADDRS,
    DEFAULT_KERNEL_ADDR,
    EXIT_CONNECTION,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    STDIN_CHUNK,
    build_parser,
)
from ustack.cli.common import log, log_faults, make_stack, on_signals, run_loop, warn_kernel_addr
from ustack.cli.serve import serve, server_tls, services_problem
from ustack.cli.supervisor import supervise
from ustack.devices import LinkLost
from ustack.heap import keep_freed_heap
from ustack.tun import TunError

# The link options a --preset sets, with their defaults (given beside it: refused).
_PRESET_SETS = {"loss": 0.0, "dup": 0.0, "reorder": 0.0, "corrupt": 0.0,
                "delay": (0.0, 0.0, 0.0), "distribution": "uniform", "reorder_gap": 0,
                "rate": None, "queue": (1000, None), "gemodel": None}


def preset_problem(args: argparse.Namespace) -> str | None:
    """--preset with an option it sets: one sentence saying so (two settings for one
    thing would leave the user guessing which won); without one, an option that would do
    nothing without another (`link.ignored_settings`)."""
    if getattr(args, "preset", None) is None:
        if not hasattr(args, "delay"):
            return None
        _, jitter, correlation = args.delay
        return link.ignored_settings(args.reorder, jitter, args.distribution, correlation,
                                     args.reorder_gap)
    given = [f"--{name.replace('_', '-')}" for name, default in _PRESET_SETS.items()
             if getattr(args, name, default) != default]
    if given:
        return (f"--preset {args.preset} sets the link's faults and shaping; drop "
                f"{', '.join(given)} or the preset")
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "ladder":
        try:
            return ladder_command(args)
        except BrokenPipeError:
            # `ustack ladder cap.pcap | head`: the reader has what it wanted. Python would
            # flush stdout again at exit and print the same error: point it at nothing.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
    if args.command == "setup-tun":
        return setup_tun(args.setup_args)
    args.kernel_addr_given = args.kernel_addr is not None
    args.kernel_addr = args.kernel_addr or DEFAULT_KERNEL_ADDR
    over_link = getattr(args, "link", None) is not None
    _own_addresses(args, over_link and args.command == "connect")
    problem = None if over_link else _addr_problem(args.addr, args.kernel_addr)
    if over_link and getattr(args, "workers", 1) > 1:
        problem = "--workers N runs on the queues of a TUN; a --link is one stream"
    if problem is None and args.command in ("serve", "sandbox"):
        problem = services_problem(args)
    if problem is None:
        problem = preset_problem(args)
    if problem is not None:
        log(problem)
        return EXIT_USAGE
    if args.command in ("serve", "sandbox"):
        try:
            args.sslcontext = server_tls(args)
        except (tls.TlsSetupError, ValueError) as e:
            log(str(e))
            return EXIT_USAGE
    keep_freed_heap()  # process-wide: the command may, the library does not
    if args.command == "serve" and args.workers > 1:
        return supervise(args)  # forks the workers before any event loop exists
    if args.command == "sandbox":
        return sandbox_command(args)
    command = serve if args.command == "serve" else connect
    try:
        return run_loop(command(args), args.loop)
    except (TunError, link.CaptureError, LinkLost) as e:
        log(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def sandbox_command(args: argparse.Namespace) -> int:
    """`ustack sandbox`: into a network of its own, serve there, run the command."""
    if args.cmd and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    problem = sandbox.enter(args)
    if problem is not None:
        log(f"sandbox: {problem}")
        return EXIT_USAGE
    announcer = sandbox.SandboxAnnouncer(args.cmd)
    try:
        run_loop(serve(args, announcer), args.loop)
    except (TunError, link.CaptureError) as e:
        log(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:  # before the command started (then Ctrl-C is its)
        return EXIT_INTERRUPTED
    return announcer.status


def ladder_command(args: argparse.Namespace) -> int:
    """`ustack ladder FILE`: the renderer of `--trace`, over a capture."""
    from ustack.ladder import CaptureError, Ladder, Tracker, capture_events, svg

    try:
        with open(args.file, "rb") as f:
            events, skipped = capture_events(f, args.us)
    except (OSError, CaptureError) as e:
        log(f"ladder: {getattr(e, 'strerror', None) or e}: {args.file}"
            if isinstance(e, OSError) else f"ladder: {e}")
        return EXIT_USAGE
    counter = Tracker()
    for ev in events:
        counter.feed(ev)
    conns = len(counter.conns)
    if args.conn is not None and args.conn > conns:
        # Before anything is printed: a ladder of everything was not what was asked.
        log(f"ladder: no connection #{args.conn} in {args.file} (it has {conns})")
        return EXIT_USAGE
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    ladder = Ladder(sys.stdout, color=color, width=args.width)
    for ev in events:
        row, new = ladder.tracker.feed(ev)
        if args.conn is None or row.conn.number == args.conn:
            for line in ladder.lines(row, new):
                sys.stdout.write(line + "\n")
    ladder.close()
    if args.svg:
        with open(args.svg, "w", encoding="utf-8") as out:
            out.write(svg(events, args.conn))
    if skipped:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
        log(f"ladder: skipped {sum(skipped.values())} packets ({why})")
    return EXIT_OK


def setup_tun(argv: list[str]) -> int:
    """`ustack setup-tun [--queues N] [NAME] [HOST_CIDR]` / `--down [NAME]`: the script
    that ships in the package (scripts/setup_tun.sh in a checkout runs the same one)."""
    from importlib.resources import as_file, files

    with as_file(files("ustack") / "data" / "setup_tun.sh") as script:
        env = dict(os.environ, USTACK_PROG="ustack setup-tun")
        return subprocess.run(["bash", str(script), *argv], env=env, check=False).returncode


def _own_addresses(args: argparse.Namespace, peer_side: bool) -> None:
    """The defaults of --addr and --addr6: ustack's addresses on a TUN (whose other side
    is the kernel's), or for `connect --link` the other end's of `serve --link`, so the
    two work together as they come."""
    addr, addr6, args.link_local6 = DEFAULT_ADDRS[peer_side]
    args.addr = args.addr or addr
    args.addr6 = (addr6 if args.addr6 is None else args.addr6) or None  # "none": no IPv6
    if getattr(args, "link", None):
        kind, host, port = args.link
        args.dev = f"{kind}:{host}:{port}"


def _addr_problem(addr: str, kernel_addr: str) -> str | None:
    """What makes --addr unusable beside --kernel-addr, or None."""
    iface = ipaddress.IPv4Interface(kernel_addr)
    ours = ipaddress.IPv4Address(addr)
    if ours == iface.ip:
        return f"--addr {addr} is the kernel side's address; pick another"
    net = iface.network
    if net.prefixlen < 31 and ours in (net.network_address, net.broadcast_address):
        which = "network" if ours == net.network_address else "broadcast"
        return f"--addr {addr} is the {which} address of {net}; pick a host address in it"
    return None


async def connect(args: argparse.Namespace) -> int:
    async with make_stack(args) as stack:
        log_faults(stack)
        warn_kernel_addr(args, stack.dev, stack.device_created)
        task = asyncio.ensure_future(_netcat(stack, args.host, args.port, args.timeout))
        on_signals(task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            log("interrupted")
            return EXIT_INTERRUPTED
        except (ConnectionError, TimeoutError, OSError) as e:
            log(f"{args.host}:{args.port}: {_describe(e)}")
            return EXIT_CONNECTION


async def _netcat(stack: Stack, host: str, port: int, timeout: float | None = None) -> int:
    loop = asyncio.get_running_loop()
    notice = loop.call_later(CONNECTING_NOTICE, log, f"connecting to {host}:{port}…")
    async def opened() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        await stack.ready()  # a --link: its stream is open
        return await stack.open_connection(host, port)

    try:
        reader, writer = await asyncio.wait_for(opened(), timeout)  # one --timeout for both
    finally:
        notice.cancel()

    async def upstream() -> None:
        async for chunk in _stdin_chunks():
            writer.write(chunk)
            await writer.drain()
        if not writer.is_closing():
            writer.write_eof()  # half-close: the peer sees our FIN, we keep reading

    async def downstream() -> None:
        out = sys.stdout.buffer
        while chunk := await reader.read(STDIN_CHUNK):
            await loop.run_in_executor(None, _write_all, out, chunk)

    await asyncio.gather(upstream(), downstream())
    # Both directions are done: close, and return once our FIN is acknowledged;
    # TIME-WAIT is not worth waiting out in a short-lived process.
    writer.close()
    await writer.wait_closed()
    return EXIT_OK


def _write_all(out: Any, chunk: bytes) -> None:
    out.write(chunk)
    out.flush()


async def _stdin_chunks() -> AsyncIterator[bytes]:
    """Chunks of stdin read by a daemon thread (regular files, pipes and ttys alike)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
    fd = sys.stdin.fileno() if sys.stdin is not None else -1

    def reader() -> None:
        while True:
            try:
                chunk = os.read(fd, STDIN_CHUNK) if fd >= 0 else b""
            except OSError:
                chunk = b""
            asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()
            if not chunk:
                return

    threading.Thread(target=reader, name="ustack-stdin", daemon=True).start()
    while chunk := await queue.get():
        yield chunk


def _describe(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(e, TimeoutError):
        return "connection timed out"
    return str(e) or type(e).__name__
