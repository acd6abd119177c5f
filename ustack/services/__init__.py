"""Small TCP services (echo, discard, chargen, http) as plain asyncio Protocols.

Only the standard ``asyncio.Transport`` interface is used, so the same classes run over
ustack's own transport and over kernel sockets (``loop.create_server``). Every protocol
honours flow control: ``pause_writing`` stops the producer (or, for echo, the reading side)
until ``resume_writing``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ustack.services.basic import ChargenProtocol, DiscardProtocol, EchoProtocol
from ustack.services.http import HttpProtocol

__all__ = [
    "BACKLOG",
    "DEFAULT_PORTS",
    "ChargenProtocol",
    "DiscardProtocol",
    "EchoProtocol",
    "HttpProtocol",
    "parse_service_spec",
    "protocol_factory",
]

DEFAULT_PORTS: dict[str, int] = {"echo": 7, "discard": 9, "chargen": 19, "http": 80}

# The listen backlog the services get: what a kernel server asking for more receives
# (Linux's net.core.somaxconn, 4096 since 5.4), so a crowd of clients connecting at once
# finds the same room as on the kernel.
BACKLOG = 4096


def parse_service_spec(spec: str) -> tuple[str, int]:
    """'echo' -> ('echo', 7); 'http:8080' -> ('http', 8080).

    Raises ValueError for an unknown name or a bad or out-of-range port (1..65535).
    """
    name, sep, port_text = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in DEFAULT_PORTS:
        known = ", ".join(sorted(DEFAULT_PORTS))
        raise ValueError(f"unknown service {name!r} in {spec!r} (expected one of: {known}).")
    if not sep:
        return name, DEFAULT_PORTS[name]
    port_text = port_text.strip()
    # isdecimal() on an ASCII-checked string: no sign, no spaces, no Unicode digits.
    if not (port_text.isascii() and port_text.isdecimal()) or len(port_text) > 5:
        raise ValueError(f"invalid port {port_text!r} in {spec!r} (expected an integer 1..65535).")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} in {spec!r} is out of range (expected 1..65535).")
    return name, port


def protocol_factory(name: str) -> Callable[[], asyncio.Protocol]:
    """Return the protocol class (a zero-argument factory) for a service name."""
    try:
        return _FACTORIES[name]
    except KeyError:
        known = ", ".join(sorted(_FACTORIES))
        raise ValueError(f"unknown service {name!r} (expected one of: {known}).") from None


_FACTORIES: dict[str, Callable[[], asyncio.Protocol]] = {
    "echo": EchoProtocol,
    "discard": DiscardProtocol,
    "chargen": ChargenProtocol,
    "http": HttpProtocol,
}
