"""What each `ustack` subcommand does: `serve`, `connect`, `ladder`, `setup-tun`."""

import argparse
import asyncio
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from ustack import compiled_core, conninfo, link, services, tun
from ustack.api import Stack, tls
from ustack.cli.args import (
    CONNECTING_NOTICE,
    DEFAULT_KERNEL_ADDR,
    EXIT_CONNECTION,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    STDIN_CHUNK,
    TLS_SERVICES,
    build_parser,
)
from ustack.heap import keep_freed_heap
from ustack.tcp.config import TcpConfig
from ustack.tun import TunError


def log(message: str) -> None:
    print(f"ustack: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "ladder":
        return ladder_command(args)
    if args.command == "setup-tun":
        return setup_tun(args.setup_args)
    args.kernel_addr_given = args.kernel_addr is not None
    args.kernel_addr = args.kernel_addr or DEFAULT_KERNEL_ADDR
    problem = _addr_problem(args.addr, args.kernel_addr)
    if problem is not None:
        log(problem)
        return EXIT_USAGE
    if args.command == "serve":
        try:
            args.sslcontext = _server_tls(args)
        except (tls.TlsSetupError, ValueError) as e:
            log(str(e))
            return EXIT_USAGE
    command = serve if args.command == "serve" else connect
    keep_freed_heap()  # process-wide: the command may, the library does not
    try:
        return _run(command(args), args.loop)
    except (TunError, link.CaptureError) as e:
        log(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


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


def _run(coro: Coroutine[Any, Any, int], loop_name: str) -> int:
    if loop_name == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def _on_signals(handler: Callable[[], object]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler)


def _server_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server SSLContext that --cert/--key/--self-signed ask for, or None.
    Raises ValueError (or TlsSetupError) with one line for the user."""
    wants_tls = any(name in TLS_SERVICES for name, _ in args.services or ())
    if args.key is not None and args.cert is None:
        raise ValueError("--key needs --cert (the certificate it belongs to)")
    if args.self_signed and args.key is not None:
        raise ValueError("--key goes with --cert, not with --self-signed")
    if not wants_tls:
        if args.cert is not None or args.self_signed:
            raise ValueError("--cert/--self-signed are for https: no https service given")
        return None
    if args.cert is not None:
        return tls.server_context(args.cert, args.key)
    if not args.self_signed:
        raise ValueError("https needs a certificate: give --cert FILE [--key FILE], "
                         "or --self-signed")
    with tempfile.TemporaryDirectory(prefix="ustack-tls-") as tmp:
        # The context keeps the certificate and key in memory; the files can go.
        cert, key = tls.self_signed_certificate(tmp, addresses=[args.addr])
        context = tls.server_context(cert, key)
    log(f"self-signed certificate for {args.addr} (valid 1 day)")
    return context


async def serve(args: argparse.Namespace) -> int:
    specs: list[tuple[str, int]] = args.services or [("echo", 7)]
    ports = [port for _, port in specs]
    twice = sorted({p for p in ports if ports.count(p) > 1})
    if twice:
        names = " and ".join(f"{n}:{p}" for n, p in specs if p == twice[0])
        log(f"two services on port {twice[0]} ({names}): give each its own port")
        return EXIT_USAGE
    stop = asyncio.Event()
    async with _stack(args) as stack:
        _log_faults(stack)
        _warn_kernel_addr(args, stack)
        for name, port in specs:
            if name in TLS_SERVICES:
                plain, _ = TLS_SERVICES[name]
                await stack.create_server(services.protocol_factory(plain), None, port,
                                          backlog=args.backlog, ssl=args.sslcontext)
            else:
                await stack.create_server(services.protocol_factory(name), None, port,
                                          backlog=args.backlog)
        _on_signals(stop.set)
        started = time.monotonic()
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGUSR1, lambda: _report(stack, time.monotonic() - started))
        listing = " ".join(f"{name}:{port}" for name, port in specs)
        core = ", compiled core" if compiled_core() else ""
        log(f"serving {listing} on {stack.addr} (dev {stack.dev}, mtu {stack.mtu}, "
            f"{_offloads(stack)}{core})")
        await stop.wait()
    # After the stack closed: the counts include the resets and the last packets sent.
    log("stopped; " + _format_stats(stack.stats()))
    return EXIT_OK


def _offloads(stack: Stack) -> str:
    """`offloads checksum, TSO`, or why there are none, for the start-up line."""
    if stack.offloads:
        return "offloads " + ", ".join(stack.offloads)
    if stack.offload_refused:
        return f"no offloads: {stack.offload_refused}"
    return "no offloads"


def _report(stack: Stack, uptime: float) -> None:
    """SIGUSR1: the counters, then every connection as `ss -tin` shows them."""
    log(f"stats; uptime_s={int(uptime)}, " + _format_stats(stack.stats()))
    rows = stack.connections()
    log(f"connections: {len(rows)}")
    for line in conninfo.format_table(rows):
        log("  " + line)


def _format_stats(stats: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(stats.items()))


def _warn_kernel_addr(args: argparse.Namespace, stack: Stack) -> None:
    """--kernel-addr configures only a device ustack creates: say so when it was given
    for a device that already existed with other addresses."""
    if not args.kernel_addr_given or stack.device_created:
        return
    have = tun.device_addresses(stack.dev)
    if args.kernel_addr not in have:
        log(f"--kernel-addr {args.kernel_addr} ignored: {stack.dev} already exists with "
            f"{', '.join(have) or 'no IPv4 address'} (delete it to have it made anew)")


def _stack(args: argparse.Namespace) -> Stack:
    """The Stack the options ask for, its fault injector set (installed when it starts)."""
    stack = Stack(args.dev, args.addr, kernel_addr=args.kernel_addr, mtu=args.mtu,
                  pcap=args.pcap, tcp=TcpConfig(congestion=args.congestion),
                  trace=sys.stderr if args.trace else None, offload=args.offload)
    delay_ms, jitter_ms = args.delay
    stack.faults(loss=args.loss, dup=args.dup, reorder=args.reorder, corrupt=args.corrupt,
                 delay_ms=delay_ms, jitter_ms=jitter_ms, seed=args.seed)
    return stack


def _log_faults(stack: Stack) -> None:
    """The line that lets a lossy run be replayed: `ustack: faults loss=0.05 ... seed=N`."""
    if stack.fault_injector is not None:
        log("faults " + stack.fault_injector.describe())


async def connect(args: argparse.Namespace) -> int:
    async with _stack(args) as stack:
        _log_faults(stack)
        _warn_kernel_addr(args, stack)
        task = asyncio.ensure_future(_netcat(stack, args.host, args.port, args.timeout))
        _on_signals(task.cancel)
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
    try:
        reader, writer = await asyncio.wait_for(stack.open_connection(host, port), timeout)
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
