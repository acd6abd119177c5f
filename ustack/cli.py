"""The `ustack` command: `serve` services, or `connect` like netcat.

Exit status: 0 success; 1 connection error (refused, reset, timed out);
2 usage or environment error (bad arguments, no permission, no TUN, device busy).
"""

import argparse
import asyncio
import ipaddress
import os
import signal
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from ustack import link, services, tls
from ustack.api import Stack
from ustack.tcp import congestion
from ustack.tcp.config import TcpConfig
from ustack.tun import TunError

EXIT_OK, EXIT_CONNECTION, EXIT_USAGE = 0, 1, 2
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
    # Fail at once, with the usage line, if the capture cannot be written (the stack
    # opens it again when it starts).
    try:
        with open(text, "wb"):
            pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {e.strerror or e}") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ustack", description="A user-space TCP/IP stack over a Linux TUN device.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def device_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dev", default="ustack0", help="TUN device name (default ustack0)")
        p.add_argument("--addr", type=_ipv4, default="10.77.0.2",
                       help="ustack's IPv4 address (default 10.77.0.2)")
        p.add_argument("--kernel-addr", type=_cidr, default="10.77.0.1/24",
                       help="kernel side of a TUN that ustack creates (default 10.77.0.1/24)")
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

    serve = sub.add_parser("serve", help="serve echo, discard, chargen, http, https")
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

    connect = sub.add_parser("connect", help="open a connection: stdin to it, it to stdout")
    device_options(connect)
    connect.add_argument("host", type=_ipv4, metavar="HOST")
    connect.add_argument("port", type=_port, metavar="PORT")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.addr == args.kernel_addr.split("/")[0]:
        log(f"--addr {args.addr} is the kernel side's address; pick another")
        return EXIT_USAGE
    if args.command == "serve":
        try:
            args.sslcontext = _server_tls(args)
        except (tls.TlsSetupError, ValueError) as e:
            log(str(e))
            return EXIT_USAGE
    command = serve if args.command == "serve" else connect
    try:
        return _run(command(args), args.loop)
    except TunError as e:
        log(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_CONNECTION


def _run(coro: Coroutine[Any, Any, int], loop_name: str) -> int:
    if loop_name == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def _on_signals(handler: Callable[[], None]) -> None:
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
    if len(set(ports)) != len(ports):
        log("two services on one port: give each its own port")
        return EXIT_USAGE
    stop = asyncio.Event()
    async with _stack(args) as stack:
        _log_faults(stack)
        for name, port in specs:
            if name in TLS_SERVICES:
                plain, _ = TLS_SERVICES[name]
                await stack.create_server(services.protocol_factory(plain), None, port,
                                          backlog=args.backlog, ssl=args.sslcontext)
            else:
                await stack.create_server(services.protocol_factory(name), None, port,
                                          backlog=args.backlog)
        _on_signals(stop.set)
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGUSR1, lambda: log("stats; " + _format_stats(stack.stats())))
        listing = " ".join(f"{name}:{port}" for name, port in specs)
        offload = ", offload" if stack.offload else ""
        log(f"serving {listing} on {stack.addr} (dev {stack.dev}, mtu {stack.mtu}{offload})")
        await stop.wait()
    # After the stack closed: the counts include the resets and the last packets sent.
    log("stopped; " + _format_stats(stack.stats()))
    return EXIT_OK


def _format_stats(stats: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(stats.items()))


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
        task = asyncio.ensure_future(_netcat(stack, args.host, args.port))
        _on_signals(task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            log("interrupted")
            return EXIT_CONNECTION
        except (ConnectionError, TimeoutError, OSError) as e:
            log(f"{args.host}:{args.port}: {_describe(e)}")
            return EXIT_CONNECTION


async def _netcat(stack: Stack, host: str, port: int) -> int:
    reader, writer = await stack.open_connection(host, port)
    loop = asyncio.get_running_loop()

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


async def _stdin_chunks():  # type: ignore[no-untyped-def]
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
