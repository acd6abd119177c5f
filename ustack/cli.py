"""The `ustack` command: `serve` services, or `connect` like netcat.

Exit status: 0 success; 1 connection error (refused, reset, timed out);
2 usage or environment error (bad arguments, no permission, no TUN, device busy, an
address the kernel cannot reach); 130 `connect` interrupted (Ctrl-C), as shells expect.
"""

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

import ustack
from ustack import conninfo, link, services, tls, tun
from ustack.api import Stack, check_own_addr
from ustack.heap import keep_freed_heap
from ustack.tcp import congestion
from ustack.tcp.config import TcpConfig
from ustack.tun import TunError

EXIT_OK, EXIT_CONNECTION, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_KERNEL_ADDR = "10.77.0.1/24"
CONNECTING_NOTICE = 1.0  # seconds before `connect` says it is still trying
EPILOG = """\
ustack needs CAP_NET_ADMIN (root) to create its TUN device, or a device made for your
user beforehand (scripts/setup_tun.sh). Exit status: 0 success; 1 connection error
(refused, reset, timed out); 2 bad arguments or an environment that cannot work (no
permission, no TUN, device busy, an address the kernel does not route to the device);
130 connect interrupted."""
STDIN_CHUNK = 64 * 1024

# Services over TLS: name -> (the plain service it wraps, default port). TLS stays out
# of `services`; the CLI wraps the plain protocol in TLS.
TLS_SERVICES = {"https": ("http", 443)}


def log(message: str) -> None:
    print(f"ustack: {message}", file=sys.stderr, flush=True)


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address") from None


def _own_addr(text: str) -> str:
    try:
        return check_own_addr(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _dev(text: str) -> str:
    # Linux dev_valid_name: 1..15 bytes, no '/', ':' or whitespace, not '.' or '..'.
    if (not text or len(text.encode()) > 15 or text in (".", "..")
            or any(c in "/:" or c.isspace() for c in text)):
        raise argparse.ArgumentTypeError(f"{text!r} is an invalid interface name (1 to 15 "
                                         "characters, no '/', ':' or spaces)")
    return text


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a timeout (seconds > 0)")
    return value


def _positive(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _cidr(text: str) -> str:
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address/prefix") from None
    if "/" not in text:
        iface = ipaddress.IPv4Interface(f"{text}/24")
    return str(iface)


def _port(text: str) -> int:
    if not text.isdecimal() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1..65535)")
    return int(text)


def _mtu(text: str) -> int:
    if not text.isdecimal() or not 576 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not an MTU (576..65535)")
    return int(text)


def _service(text: str) -> tuple[str, int]:
    name, sep, port_text = text.strip().partition(":")
    name = name.strip().lower()
    try:
        if name not in TLS_SERVICES:
            return services.parse_service_spec(text)
        plain, default_port = TLS_SERVICES[name]
        # The port rules are the plain service's.
        return name, services.parse_service_spec(f"{plain}:{port_text}")[1] if sep \
            else default_port
    except ValueError as e:
        message = str(e)
        if "unknown service" in message:
            known = ", ".join(sorted([*services.DEFAULT_PORTS, *TLS_SERVICES]))
            message = f"unknown service {name!r} in {text!r} (expected one of: {known})."
        raise argparse.ArgumentTypeError(message.replace(f"'{plain}:", f"'{name}:")
                                         if name in TLS_SERVICES else message) from None


def _probability(text: str) -> float:
    try:
        return link.parse_probability(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _delay(text: str) -> tuple[float, float]:
    try:
        return link.parse_delay(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seed(text: str) -> int:
    if not text.isdecimal() or int(text) >= 2**64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed (an integer 0..2**64-1)")
    return int(text)


def _backlog(text: str) -> int:
    if not text.isdecimal() or not 0 < int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a backlog (an integer 1..65535)")
    return int(text)


def _pcap_file(text: str) -> str:
    # Fail at once, with the usage line, if the capture cannot be written; but touch
    # nothing: the stack opens (and empties) the file only once everything else is ready.
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: it is a directory")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(f"cannot write {text!r}: permission denied")
    elif not os.path.isdir(os.path.dirname(path)):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: no such directory")
    elif not os.access(os.path.dirname(path), os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: permission denied")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ustack", description="A user-space TCP/IP stack over a Linux TUN device.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ustack {ustack.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def device_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dev", type=_dev, default="ustack0",
                       help="TUN device name (default ustack0); created if missing")
        p.add_argument("--addr", type=_own_addr, default="10.77.0.2",
                       help="ustack's IPv4 address (default 10.77.0.2): the kernel must "
                       "route it to the device")
        p.add_argument("--kernel-addr", type=_cidr, default=None,
                       help="address/prefix of the kernel's side of a device ustack "
                       f"creates (default {DEFAULT_KERNEL_ADDR}); an existing device keeps "
                       "its own")
        p.add_argument("--mtu", type=_mtu, default=None,
                       help="device MTU (default: the device's, 1500 for a new one)")
        p.add_argument("--offload", action="store_true",
                       help="checksum and TSO offloads (IFF_VNET_HDR): 64 KB segments "
                            "both ways, e.g. with --mtu 65535")
        p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                       help="event loop (default uvloop when installed)")
        p.add_argument("--congestion", choices=tuple(congestion.CONTROLLERS), default="cubic",
                       help="congestion control: cubic (RFC 9438, default) or newreno")
        p.add_argument("--trace", action="store_true",
                       help="print a ladder of every segment and state change to stderr")
        link_opts = p.add_argument_group(
            "link", "capture and fault injection between the TUN and the stack; "
            "P is a fraction (0.05) or a percentage (5%), applied in both directions")
        link_opts.add_argument("--pcap", type=_pcap_file, metavar="FILE",
                               help="write every packet crossing the TUN to FILE (pcap)")
        link_opts.add_argument("--loss", type=_probability, default=0.0, metavar="P",
                               help="drop packets with probability P")
        link_opts.add_argument("--dup", type=_probability, default=0.0, metavar="P",
                               help="duplicate packets with probability P")
        link_opts.add_argument("--reorder", type=_probability, default=0.0, metavar="P",
                               help="hold packets back so a later one overtakes them")
        link_opts.add_argument("--corrupt", type=_probability, default=0.0, metavar="P",
                               help="flip one bit of packets with probability P")
        link_opts.add_argument("--delay", type=_delay, default=(0.0, 0.0),
                               metavar="MS[:JITTER_MS]",
                               help="delay every packet by MS milliseconds, +- JITTER_MS")
        link_opts.add_argument("--seed", type=_seed, default=None, metavar="N",
                               help="seed of the fault injector (default: random, logged)")

    serve = sub.add_parser("serve", help="serve echo, discard, chargen, http, https",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    device_options(serve)
    serve.add_argument("--backlog", type=_backlog, default=services.BACKLOG,
                       help="listen backlog: SYN queue and accept queue of each service "
                       f"(default {services.BACKLOG}, what a kernel server gets: Linux's "
                       "somaxconn)")
    tls_opts = serve.add_argument_group(
        "TLS", "the certificate of https (the http service over TLS); one of "
        "--cert or --self-signed is required with https")
    cert_source = tls_opts.add_mutually_exclusive_group()
    cert_source.add_argument("--cert", metavar="FILE",
                             help="certificate chain (PEM); may also hold the key")
    tls_opts.add_argument("--key", metavar="FILE", help="private key (PEM) of --cert")
    cert_source.add_argument("--self-signed", action="store_true",
                             help="make a throwaway self-signed certificate for --addr "
                             "(needs the openssl command)")
    serve.add_argument("services", nargs="*", type=_service, metavar="SERVICE[:PORT]",
                       help="echo (7), discard (9), chargen (19), http (80), https (443); "
                       "default echo:7")

    ladder = sub.add_parser("ladder", help="draw the ladder of every TCP connection in a "
                            "capture (pcap or pcapng; ustack's --pcap or a tcpdump)")
    ladder.add_argument("file", metavar="FILE", help="pcap or pcapng capture")
    ladder.add_argument("--us", metavar="ADDR", type=_ipv4,
                        help="ustack's address (default 10.77.0.2 if present, else the side "
                        "that answered the first SYN)")
    ladder.add_argument("--conn", type=_positive, metavar="N",
                        help="only the N-th connection (numbered as in the full ladder)")
    ladder.add_argument("--svg", metavar="OUT", help="also draw the sequence diagram as SVG")
    ladder.add_argument("--width", type=_positive, default=80,
                        help="terminal columns (default 80)")
    ladder.add_argument("--color", choices=("auto", "always", "never"), default="auto")

    setup = sub.add_parser("setup-tun", add_help=False,
                           help="(root) create a persistent TUN device owned by you, so "
                           "ustack runs without root; --help for its options")
    setup.add_argument("setup_args", nargs=argparse.REMAINDER)

    connect = sub.add_parser("connect", help="open a connection: stdin to it, it to stdout",
                             epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    device_options(connect)
    connect.add_argument("--timeout", type=_timeout, default=None, metavar="SECONDS",
                         help="give up connecting after SECONDS (default: the SYN "
                         "retransmissions run out, about two minutes)")
    connect.add_argument("host", type=_ipv4, metavar="HOST",
                         help="the peer's IPv4 address (no names are resolved), e.g. "
                         "10.77.0.1 for the kernel's side of the device")
    connect.add_argument("port", type=_port, metavar="PORT", help="the peer's port (1..65535)")
    return parser


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
    """`ustack setup-tun [NAME] [HOST_CIDR]` / `--down [NAME]`: the script that ships in
    the package (scripts/setup_tun.sh in a checkout runs the same one)."""
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
        offload = ", offload" if stack.offload else ""
        log(f"serving {listing} on {stack.addr} (dev {stack.dev}, mtu {stack.mtu}{offload})")
        await stop.wait()
    # After the stack closed: the counts include the resets and the last packets sent.
    log("stopped; " + _format_stats(stack.stats()))
    return EXIT_OK


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
