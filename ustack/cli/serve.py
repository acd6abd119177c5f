"""`ustack serve`: services on one stack until SIGTERM or SIGINT; SIGUSR1 prints the
counters and the connections. With `--workers N` each worker process runs this same
`serve` on one queue of the device (`ustack.cli.supervisor`), and its `Announcer` tells the
supervisor instead of the terminal."""

import argparse
import asyncio
import copy
import signal
import ssl
import tempfile
import time
from typing import Any

from ustack import compiled_core, conninfo, services
from ustack.api import Stack, tls
from ustack.cli.args import DEFAULT_ADDRS, EXIT_CONNECTION, EXIT_OK, TLS_SERVICES
from ustack.cli.common import (
    format_stats,
    log,
    log_faults,
    make_stack,
    on_signals,
    warn_kernel_addr,
)
from ustack.services.proxy import PREFIX, proxy_upstream

DEFAULT_SERVICES = [("echo", 7)]


class Announcer:
    """What a serving process says, and where: this one, on its own, logs to stderr.
    (The workers' announcer reports to their supervisor.)"""

    who = "ustack"

    def stack_options(self, args: argparse.Namespace) -> dict[str, Any]:
        """Stack arguments beyond the options' (a worker's queue, capture, trace)."""
        return {}

    def serving(self, args: argparse.Namespace, stack: Stack, stop: asyncio.Event) -> None:
        """The services listen: stop on SIGINT/SIGTERM, report on SIGUSR1, say so."""
        warn_kernel_addr(args, stack.dev, stack.device_created)
        on_signals(stop.set)
        started = time.monotonic()
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGUSR1, lambda: report(stack, time.monotonic() - started))
        log(serving_line(args, stack.mtu, stack.offloads, stack.offload_refused,
                         stack.ipv6_refused))

    def stopped(self, stack: Stack) -> None:
        # After the stack closed: the counts include the resets and the last packets sent.
        log("stopped; " + format_stats(stack.stats()))


async def serve(args: argparse.Namespace, announcer: Announcer | None = None) -> int:
    """Serve `args.services` until stopped; the caller checked them (`services_problem`)."""
    announcer = announcer or Announcer()
    stop = asyncio.Event()
    async with make_stack(args, **announcer.stack_options(args)) as stack:
        log_faults(stack, announcer.who)
        link = getattr(args, "link", None)
        if link is not None and link[0] == "tcp":
            await stack.ready()  # a link this side opens: serve once it is open
        for name, port in args.services or DEFAULT_SERVICES:
            upstream = proxy_upstream(name)
            if upstream is not None:
                # Each proxy its own toxics (their `applied` counts are its own).
                proxy = await stack.create_proxy(port, *upstream,
                                                 toxics=[copy.copy(t) for t in args.toxic],
                                                 seed=args.seed, backlog=args.backlog)
                toxics = "; ".join(t.describe() for t in proxy.toxics) or "none"
                log(f"proxy {service_text(name, port)}, toxics: {toxics}", announcer.who)
            elif name in TLS_SERVICES:
                plain, _ = TLS_SERVICES[name]
                await stack.create_server(services.protocol_factory(plain), None, port,
                                          backlog=args.backlog, ssl=args.sslcontext)
            else:
                await stack.create_server(services.protocol_factory(name), None, port,
                                          backlog=args.backlog)
        announcer.serving(args, stack, stop)
        # Until stopped, or until the link is lost (a --link's stream ended).
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(stack.wait_closed())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()
    announcer.stopped(stack)
    if stack.link_error is not None:
        log(f"link lost: {stack.link_error}", announcer.who)
        # The peer's orderly end of the stream is the service's end; anything else fails.
        return EXIT_OK if getattr(stack.link_error, "orderly", False) else EXIT_CONNECTION
    return EXIT_OK


def services_problem(args: argparse.Namespace) -> str | None:
    """Why the services asked for cannot all run, or None."""
    specs: list[tuple[str, int]] = args.services or DEFAULT_SERVICES
    ports = [port for _, port in specs]
    twice = sorted({p for p in ports if ports.count(p) > 1})
    if twice:
        names = " and ".join(service_text(n, p) for n, p in specs if p == twice[0])
        return f"two services on port {twice[0]} ({names}): give each its own port"
    proxies = any(n.startswith(PREFIX) for n, _ in specs)
    if getattr(args, "toxic", None) and not proxies:
        return "--toxic acts on a proxy's stream: add a proxy:PORT=ADDRESS:PORT service"
    if proxies and getattr(args, "workers", 1) > 1:
        # The device steers a flow to the queue that last wrote it, for a few seconds
        # only (the tun flow table's expiry): an idle upstream leg's answer could reach
        # another worker, which would reset it.
        return ("a proxy opens upstream connections, which must come back to the worker "
                "that opened them: run proxies with --workers 1")
    return None


def listing(args: argparse.Namespace) -> str:
    """`echo:7 http:80`: the services, for the start-up line."""
    return " ".join(service_text(name, port) for name, port in args.services or DEFAULT_SERVICES)


def service_text(name: str, port: int) -> str:
    """`http:80`, `proxy:8080=10.77.0.1:8000`: as the command line takes it."""
    if name.startswith(PREFIX):
        return f"proxy:{port}={name[len(PREFIX):]}"
    return f"{name}:{port}"


def serving_line(args: argparse.Namespace, mtu: int, offloads: tuple[str, ...],
                 offload_refused: str | None, ipv6_refused: str | None,
                 more: str = "") -> str:
    """`serving echo:7 on 10.77.0.2 and fd77::2 (dev ustack0, mtu 1500, offloads ...)`:
    the start-up line, of one process or of the workers' supervisor (`more`)."""
    where = f"{args.addr} and {args.addr6}" if args.addr6 else args.addr
    core = ", compiled core" if compiled_core() else ""
    ipv6 = f", no IPv6: {ipv6_refused}" if ipv6_refused else ""
    return (f"serving {listing(args)} on {where} (dev {args.dev}, mtu {mtu}, "
            f"{offloads_text(offloads, offload_refused)}{core}{ipv6}{more})")


def offloads_text(offloads: tuple[str, ...], refused: str | None) -> str:
    """`offloads checksum, TSO`, or why there are none, for the start-up line."""
    if offloads:
        return "offloads " + ", ".join(offloads)
    if refused:
        return f"no offloads: {refused}"
    return "no offloads"


def report(stack: Stack, uptime: float) -> None:
    """SIGUSR1: the counters, then every connection as `ss -tin` shows them."""
    log(f"stats; uptime_s={int(uptime)}, " + format_stats(stack.stats()))
    log_connections(stack.connections())


def log_connections(rows: list[conninfo.ConnectionInfo]) -> None:
    log(f"connections: {len(rows)}")
    for line in conninfo.format_table(rows):
        log("  " + line)


def server_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
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
    addr = args.addr or DEFAULT_ADDRS[False][0]  # before `main` completes the defaults
    with tempfile.TemporaryDirectory(prefix="ustack-tls-") as tmp:
        # The context keeps the certificate and key in memory; the files can go.
        cert, key = tls.self_signed_certificate(tmp, addresses=[addr])
        context = tls.server_context(cert, key)
    log(f"self-signed certificate for {addr} (valid 1 day)")
    return context
