"""The `ustack` command line: its parser, and argument types that turn bad input into
one clear sentence (exit status 2) rather than a traceback."""

import argparse
import ipaddress
import os
from typing import Any

import ustack
from ustack import link, services
from ustack.api import check_own_addr, check_own_addr6
from ustack.link.presets import PRESETS
from ustack.link.rules import parse_rule
from ustack.link.shaper import parse_gemodel, parse_queue, parse_rate
from ustack.services.proxy import parse_proxy_spec
from ustack.services.toxics import parse_toxic
from ustack.tcp import congestion
from ustack.tun import MAX_QUEUES

EXIT_OK, EXIT_CONNECTION, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_KERNEL_ADDR = "10.77.0.1/24"
# ustack's own addresses: on a TUN, and for `connect --link` (the other end of a `serve
# --link`, whose addresses are the first pair).
DEFAULT_ADDRS = {False: ("10.77.0.2", "fd77::2", "fe80::2"),
                 True: ("10.77.0.1", "fd77::1", "fe80::1")}
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


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _own_addr(text: str) -> str:
    try:
        return check_own_addr(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _own_addr6(text: str) -> str:
    if text.lower() == "none":
        return ""  # no IPv6 (None is "not given": the default for the command)
    try:
        return check_own_addr6(text, "--addr6") or ""
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _cidr6(text: str) -> str | None:
    if text.lower() == "none":
        return None
    try:
        iface = ipaddress.IPv6Interface(text if "/" in text else f"{text}/64")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv6 address/prefix") from None
    return str(iface)


def _link(text: str) -> tuple[str, str, int]:
    """`tcp-listen:HOST:PORT` or `tcp:HOST:PORT` (an IPv6 HOST in brackets)."""
    kind, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if kind not in ("tcp-listen", "tcp") or not host or not port.isdigit() or not (
            0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(f"{text!r}: give tcp-listen:HOST:PORT or "
                                         "tcp:HOST:PORT, e.g. tcp-listen:127.0.0.1:9000")
    return kind, host, int(port)


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
    if name == "proxy":
        try:
            return parse_proxy_spec(text.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
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


def _via(parse: Any) -> Any:
    """An argparse type from a parser that raises ValueError with the message."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


_probability = _via(link.parse_probability)
_delay = _via(link.parse_delay)


def _gap(text: str) -> int:
    if not text.isdecimal() or int(text) > 1_000_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a gap: a whole number of packets")
    return int(text)


def _seed(text: str) -> int:
    if not text.isdecimal() or int(text) >= 2**64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed (an integer 0..2**64-1)")
    return int(text)


def _backlog(text: str) -> int:
    if not text.isdecimal() or not 0 < int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a backlog (an integer 1..65535)")
    return int(text)


def _workers(text: str) -> int:
    # One worker per queue of the device: the kernel takes up to MAX_TAP_QUEUES.
    if not text.isdecimal() or not 0 < int(text) <= MAX_QUEUES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of workers (an integer 1..{MAX_QUEUES})")
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
    core = " (compiled core)" if ustack.compiled_core() else ""
    parser.add_argument("--version", action="version",
                        version=f"ustack {ustack.__version__}{core}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def device_options(p: argparse.ArgumentParser, links: bool = False) -> None:
        p.add_argument("--dev", type=_dev, default="ustack0",
                       help="TUN device name (default ustack0); created if missing")
        if links:
            p.add_argument("--link", type=_link, metavar="tcp-listen:HOST:PORT|tcp:HOST:PORT",
                           help="no TUN: IP packets back to back over a kernel TCP "
                           "connection, listening for one peer or connecting to it (no "
                           "root needed; MTU 16000 unless --mtu)")
        p.add_argument("--addr", type=_own_addr, default=None,
                       help="ustack's IPv4 address (default 10.77.0.2; 10.77.0.1 for "
                       "connect over --link): the kernel must route it to the device")
        p.add_argument("--kernel-addr", type=_cidr, default=None,
                       help="address/prefix of the kernel's side of a device ustack "
                       f"creates (default {DEFAULT_KERNEL_ADDR}); an existing device keeps "
                       "its own")
        p.add_argument("--addr6", type=_own_addr6, default=None, metavar="ADDR6",
                       help="ustack's IPv6 address (default fd77::2, fd77::1 for connect "
                       "over --link; it answers fe80::2 or fe80::1 on the link too); none: "
                       "no IPv6. serve answers both families")
        p.add_argument("--kernel-addr6", type=_cidr6, default="fd77::1/64",
                       metavar="CIDR6", help="IPv6 address/prefix of the kernel's side "
                       "of a device ustack creates (default fd77::1/64); none: none")
        p.add_argument("--mtu", type=_mtu, default=None,
                       help="device MTU (default: the device's, 1500 for a new one)")
        p.add_argument("--offload", action=argparse.BooleanOptionalAction, default=True,
                       help="checksum and TSO offloads (IFF_VNET_HDR): 64 KB segments "
                            "both ways, on by default where the device takes them; "
                            "--no-offload: one wire segment per packet")
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
        link_opts.add_argument("--reorder-gap", type=_gap, default=0, metavar="G",
                               help="with --reorder: at most one packet in G held back "
                               "(netem's reorder P gap G)")
        link_opts.add_argument("--delay", type=_delay, default=(0.0, 0.0, 0.0),
                               metavar="MS[:JITTER_MS[:CORRELATION]]",
                               help="delay every packet by MS milliseconds, +- JITTER_MS, "
                               "each packet's jitter correlated with the last's (netem's "
                               "delay D J C%%)")
        link_opts.add_argument("--distribution", choices=link.DISTRIBUTIONS,
                               default="uniform", help="of the jitter: uniform (default), "
                               "normal, pareto or paretonormal, as netem's")
        link_opts.add_argument("--preset", choices=tuple(PRESETS), default=None,
                               help="a named link, its faults and shaping together: "
                               + "; ".join(f"{p.name}: {p.about}" for p in PRESETS.values())
                               + " (alone: not with the other fault or shaping options)")
        link_opts.add_argument("--seed", type=_seed, default=None, metavar="N",
                               help="seed of the fault injector (default: random, logged)")
        link_opts.add_argument("--rate", type=_via(parse_rate), default=None,
                               metavar="RATE", help="shape each direction to RATE (50mbit, "
                               "1gbit; IP bytes) behind a FIFO queue (--queue)")
        link_opts.add_argument("--queue", type=_via(parse_queue), default=(1000, None),
                               metavar="N|Nkb", help="the shaper's queue: N packets "
                               "(default 1000) or N bytes (150000b, 64kb); tail drop")
        link_opts.add_argument("--gemodel", type=_via(parse_gemodel), default=None,
                               metavar="P,R[,1-H[,1-K]]", help="bursty loss by the "
                               "Gilbert-Elliott model, as netem's loss gemodel")
        link_opts.add_argument("--rule", type=_via(parse_rule), action="append", default=[],
                               metavar="RULE", help="a fault that knows TCP, e.g. 'drop "
                               "flags=SA count=2 port=80', 'corrupt offset=100000', "
                               "'blackhole after=1000000' (repeatable)")

    def service_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--toxic", type=_via(parse_toxic), action="append", default=[],
                       metavar="TOXIC", help="a toxic on every proxy's stream, e.g. "
                       "'latency latency=50', 'bandwidth rate=1000' (KB/s), 'limit_data "
                       "bytes=100000', 'reset_peer timeout=100', 'timeout timeout=0' "
                       "(repeatable; ustack.services.toxics lists them)")
        p.add_argument("--backlog", type=_backlog, default=services.BACKLOG,
                       help="listen backlog: SYN queue and accept queue of each service "
                       f"(default {services.BACKLOG}, what a kernel server gets: Linux's "
                       "somaxconn)")
        tls_opts = p.add_argument_group(
            "TLS", "the certificate of https (the http service over TLS); one of "
            "--cert or --self-signed is required with https")
        cert_source = tls_opts.add_mutually_exclusive_group()
        cert_source.add_argument("--cert", metavar="FILE",
                                 help="certificate chain (PEM); may also hold the key")
        tls_opts.add_argument("--key", metavar="FILE", help="private key (PEM) of --cert")
        cert_source.add_argument("--self-signed", action="store_true",
                                 help="make a throwaway self-signed certificate for --addr "
                                 "(needs the openssl command)")

    serve = sub.add_parser("serve", help="serve echo, discard, chargen, http, https",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    device_options(serve, links=True)
    service_options(serve)
    serve.add_argument("--workers", type=_workers, default=1, metavar="N",
                       help="N worker processes, one per queue of a multi-queue TUN "
                       "(the kernel hands each flow to one queue), under a supervisor that "
                       "restarts a worker that dies; default 1: one process")
    serve.add_argument("services", nargs="*", type=_service, metavar="SERVICE[:PORT]",
                       help="echo (7), discard (9), chargen (19), http (80), https (443), "
                       "proxy:PORT=ADDRESS:PORT (to a server, with --toxic); default echo:7")

    sandbox = sub.add_parser(
        "sandbox", help="a private network of its own, no root needed: ustack serving in "
        "it and a command run inside (default: your shell)",
        usage="ustack sandbox [options] [--serve SERVICE[:PORT] ...] [-- CMD ...]",
        description="A new network namespace (and, without root, a new user namespace in "
        "which you are root over it alone) with ustack serving on a TUN inside; CMD runs "
        "there with the same view and everything goes when it exits. The exit status is "
        "CMD's. Example: ustack sandbox --trace --serve echo:7 http:80 -- curl "
        "http://10.77.0.2/", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    device_options(sandbox)
    service_options(sandbox)
    sandbox.add_argument("--serve", dest="services", nargs="+", type=_service, default=[],
                         metavar="SERVICE[:PORT]", help="the services (as serve's; default "
                         "echo:7)")
    sandbox.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD",
                         help="what runs inside (default: $SHELL)")
    sandbox.set_defaults(workers=1)

    ladder = sub.add_parser("ladder", help="draw the ladder of every TCP connection in a "
                            "capture (pcap or pcapng; ustack's --pcap or a tcpdump)")
    ladder.add_argument("file", metavar="FILE", help="pcap or pcapng capture")
    ladder.add_argument("--us", metavar="ADDR", type=_ip,
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
    device_options(connect, links=True)
    connect.add_argument("--timeout", type=_timeout, default=None, metavar="SECONDS",
                         help="give up connecting after SECONDS (default: the SYN "
                         "retransmissions run out, about two minutes)")
    connect.add_argument("host", type=_ip, metavar="HOST",
                         help="the peer's IPv4 or IPv6 address (no names are resolved), "
                         "e.g. 10.77.0.1 or fd77::1 for the kernel's side of the device")
    connect.add_argument("port", type=_port, metavar="PORT", help="the peer's port (1..65535)")
    return parser


