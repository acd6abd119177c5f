"""Addresses as text, either family: the one place that turns the 4 or 16 bytes a
header carries into what people read (`10.77.0.2`, `fd77::2`), and an endpoint into
`10.77.0.2:80` or `[fd77::2]:80` (RFC 3986 §3.2.2's brackets, as curl and ss write it)."""

import socket


def ntop(addr: bytes) -> str:
    """`addr` (4 or 16 bytes, as in the IP header) as text (inet_ntop)."""
    return socket.inet_ntop(socket.AF_INET6 if len(addr) == 16 else socket.AF_INET, addr)


def pton(text: str) -> bytes:
    """The 4 or 16 bytes of an address given as text (inet_pton); ValueError if none."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, text)
        except OSError:
            continue
    raise ValueError(f"{text!r} is not an IP address")


def is_link_local(addr: bytes) -> bool:
    """fe80::/10 (RFC 4291 §2.5.6), of 16 packed bytes; never an IPv4 address."""
    return len(addr) == 16 and addr[0] == 0xFE and addr[1] & 0xC0 == 0x80


def endpoint(addr: str, port: int) -> str:
    """`10.77.0.2:80`, or `[fd77::2]:80` for an IPv6 address."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def scope_id(interface: str | None) -> int:
    """The zone index of a link-local address on `interface` (if_nametoindex: what an
    AF_INET6 socket's 4-tuple carries, `fe80::1%ustack0`), or 0 without one."""
    if not interface:
        return 0
    try:
        return socket.if_nametoindex(interface)
    except OSError:
        return 0


def parse_endpoint(text: str) -> tuple[str, int]:
    """`10.77.0.1:8000` or `[fd77::1]:8000` as (address, port); ValueError saying why."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets, [fd77::1]:8000")
    if not sep or not port_text.isdecimal() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not ADDRESS:PORT (a port 1..65535)")
    pton(host)  # raises for what is not an address
    return host, int(port_text)
