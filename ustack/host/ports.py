"""Ports: the ephemeral range and a random free port from it (RFC 6056), and the
table of listeners by port and local address."""

import errno
import random
from collections.abc import Callable

from ustack.tcp.listener import Listener

# RFC 6056 §2.1: the IANA dynamic range for ephemeral ports.
EPHEMERAL_PORTS = range(49152, 65536)


def ephemeral_port(rng: random.Random, free: Callable[[int], bool], code: int,
                   scan: bool = False) -> int:
    """A random port of the ephemeral range that `free` accepts (RFC 6056 §3.3.1,
    Algorithm 1: 64 tries); with `scan`, then the first free one in order. Else
    OSError(`code`): EADDRINUSE for a bind, EADDRNOTAVAIL for a connect."""
    for _ in range(64):
        port = rng.choice(EPHEMERAL_PORTS)
        if free(port):
            return port
    if scan:
        for port in EPHEMERAL_PORTS:
            if free(port):
                return port
    raise OSError(code, "no free ephemeral port")


class Listeners:
    """The host's listeners by port: several may share a port on different local
    addresses (one per family, as asyncio's `start_server(host=None)` makes with
    IPV6_V6ONLY; or one per address), never two on the same address (EADDRINUSE, as
    bind(2))."""

    def __init__(self) -> None:
        self._by_port: dict[int, list[Listener]] = {}

    def __contains__(self, port: object) -> bool:
        return port in self._by_port

    def ports(self) -> set[int]:
        return set(self._by_port)

    def add(self, listener: Listener) -> None:
        if any(other.local & listener.local for other in self._by_port.get(listener.port, ())):
            raise OSError(errno.EADDRINUSE, f"port {listener.port} is already listening")
        self._by_port.setdefault(listener.port, []).append(listener)

    def find(self, port: int, local: bytes) -> Listener | None:
        """The listener for a segment to our `local` address and `port`."""
        for listener in self._by_port.get(port, ()):
            if local in listener.local:
                return listener
        return None

    def remove(self, listener: Listener) -> None:
        here = self._by_port.get(listener.port, [])
        if listener in here:
            here.remove(listener)
            if not here:
                del self._by_port[listener.port]
